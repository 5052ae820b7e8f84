//! Non-learned baselines on the very split and users an evaluation ranks, so a report compares
//! like with like: the most popular training items, and "popular in the newest item's
//! cluster" (walking the history from the newest item back, the most popular items sharing its
//! first semantic or behavior ID token, history items skipped, until 10), and the run's trained
//! SASRec ranking the whole catalogue as the evaluation's beam does (history items included).
//! Every row is also split by the target's training popularity ([`super::slices`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::paired::{model_ranks, paired, PairedDiff};
use super::run::{select_users, SplitName};
use super::slices::{slice_metrics, slice_paired, Popularity, SliceDiff, SliceMetrics};
use crate::behavior::Ranker;
use crate::data::Sample;
use crate::metrics::{rank_of, MetricAccumulator, Metrics};
use crate::run::{RunData, RunDir};
use crate::util::{atomic_write, write_json};

/// How many items each baseline ranks.
const TOP: usize = 10;

/// `eval/baselines-<split>[-<N>u-seed<S>][-vs-<evaluation label>].json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineReport {
    pub label: String,
    pub dataset: String,
    pub split: SplitName,
    pub users: usize,
    pub limit: Option<usize>,
    pub seed: u64,
    /// Baseline name and its metrics, in a fixed order ([`SASREC_ROW`] last, when ranked).
    pub rows: Vec<(String, Metrics)>,
    /// Each row's figures by the target's training popularity, in the order of `rows`.
    #[serde(default)]
    pub slices: Vec<Vec<SliceMetrics>>,
    /// The SASRec model file of the [`SASREC_ROW`] row; None: the run has none (see
    /// [`NO_SASREC`]).
    #[serde(default)]
    pub sasrec: Option<String>,
    /// A model's evaluation of the same users, compared user by user with each baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<Against>,
}

/// The model side of [`BaselineReport::against`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Against {
    /// The evaluation's label (its predictions file's name): the report shows this comparison
    /// under that evaluation only. Empty in reports written before it was recorded.
    #[serde(default)]
    pub eval_label: String,
    /// The evaluation's predictions file.
    pub predictions: String,
    /// Model minus each baseline, in the order of `rows`.
    pub rows: Vec<PairedDiff>,
    /// Model minus each baseline per popularity slice, in the order of `rows`.
    #[serde(default)]
    pub slices: Vec<Vec<SliceDiff>>,
}

/// The name of the SASRec row.
pub const SASREC_ROW: &str = "SASRec";

/// What a report says where the run has no SASRec.
pub const NO_SASREC: &str = "No SASRec row: this run has no trained SASRec (RUN/behavior/sasrec/model.safetensors). Get one with the pipeline config's `teacher` section (`\"teacher\": {\"encoder\": \"sasrec\"}`, trained by the `teacher` stage), `behavior.encoder: sasrec`, or `llmbs baselines --sasrec PATH`.";

/// The SASRec a run's baselines rank: `given`, else the run's own when it has one.
pub fn sasrec_path(run: &RunDir, given: Option<&Path>) -> Option<PathBuf> {
    let own = run
        .behavior_report_dir(crate::behavior::EncoderKind::Sasrec.name())
        .join(crate::behavior::job::MODEL_FILE);
    given
        .map(Path::to_path_buf)
        .or(own.is_file().then_some(own))
}

/// What `llmbs baselines` ranks: the split and seeded user sample of an evaluation, the
/// evaluation's predictions to compare with, and the SASRec to rank (see [`sasrec_path`]).
#[derive(Debug, Clone, Copy)]
pub struct BaselineJob<'a> {
    pub split: SplitName,
    pub limit: Option<usize>,
    pub seed: u64,
    pub against: Option<&'a Path>,
    pub sasrec: Option<&'a Path>,
}

/// Items by training popularity (each user's training part), most popular first; ties go to
/// the lower item index.
fn popularity(train: &[Vec<u32>], n_items: usize) -> Vec<u32> {
    let mut count = vec![0usize; n_items];
    for seq in train {
        for &i in seq {
            count[i as usize] += 1;
        }
    }
    let mut ranked: Vec<u32> = (0..n_items as u32).collect();
    ranked.sort_by_key(|&i| (std::cmp::Reverse(count[i as usize]), i));
    ranked
}

/// Each item's first ID token starting with `prefix` (e.g. `<s1_`), if every item has one.
fn first_token<'a>(tokens: &'a [Vec<String>], prefix: &str) -> Option<Vec<&'a str>> {
    tokens
        .iter()
        .map(|id| {
            id.iter()
                .find(|t| t.starts_with(prefix))
                .map(|t| t.as_str())
        })
        .collect()
}

/// The cluster baseline's list for one history.
fn by_cluster(s: &Sample, groups: &HashMap<&str, Vec<u32>>, key: &[&str]) -> Vec<u32> {
    let mut seen: std::collections::HashSet<u32> = s.history.iter().copied().collect();
    let mut out = Vec::with_capacity(TOP);
    for &h in s.history.iter().rev() {
        for &it in groups
            .get(key[h as usize])
            .map(|v| v.as_slice())
            .unwrap_or_default()
        {
            if seen.insert(it) {
                out.push(it);
                if out.len() == TOP {
                    return out;
                }
            }
        }
    }
    out
}

/// Each baseline's top-10 list for every sample, in a fixed order.
fn baseline_lists(d: &RunData, samples: &[Sample]) -> Vec<(String, Vec<Vec<u32>>)> {
    let ranked = popularity(&d.split.train, d.ds.items.len());
    let top = ranked[..TOP.min(ranked.len())].to_vec();
    let mut out = vec![("most popular".to_string(), vec![top; samples.len()])];
    for (prefix, name) in [
        ("<s1_", "popular in the newest item's <s1> cluster"),
        ("<b1_", "popular in the newest item's <b1> cluster"),
    ] {
        let Some(key) = first_token(&d.tokens, prefix) else {
            continue;
        };
        let mut groups: HashMap<&str, Vec<u32>> = HashMap::new();
        for &it in &ranked {
            groups.entry(key[it as usize]).or_default().push(it);
        }
        let lists = samples
            .iter()
            .map(|s| by_cluster(s, &groups, &key))
            .collect();
        out.push((name.to_string(), lists));
    }
    out
}

/// The run's SASRec's top-10 list for every sample: the whole catalogue ranked after the
/// sample's history (the evaluation's history, capped as its prompts are), history items
/// included as the evaluation's beam includes them.
fn sasrec_lists(path: &Path, d: &RunData, samples: &[Sample]) -> anyhow::Result<Vec<Vec<u32>>> {
    let model = crate::behavior::saved::load_sasrec(path, d.ds.items.len())?;
    let histories: Vec<&[u32]> = samples.iter().map(|s| s.history.as_slice()).collect();
    Ok(model.top_k(&histories, TOP)?)
}

/// The baselines' metrics, from their lists for `samples`.
fn baseline_rows(lists: &[(String, Vec<Vec<u32>>)], samples: &[Sample]) -> Vec<(String, Metrics)> {
    lists
        .iter()
        .map(|(name, lists)| {
            let mut acc = MetricAccumulator::default();
            for (l, s) in lists.iter().zip(samples) {
                acc.add(l, s.target);
            }
            (name.clone(), acc.finish())
        })
        .collect()
}

/// Each sample's target's rank in its list (None: not in the top 10).
fn ranks(lists: &[Vec<u32>], samples: &[Sample]) -> Vec<Option<usize>> {
    lists
        .iter()
        .zip(samples)
        .map(|(l, s)| rank_of(l, s.target, TOP))
        .collect()
}

/// A model's predictions (`llmbs eval`'s `.predictions.jsonl` of exactly `samples`) minus
/// each baseline (its ranks of `samples`' targets), user by user, overall and per slice.
fn against_model(
    d: &RunData,
    base: &[(String, Vec<Option<usize>>)],
    (samples, pop): (&[Sample], &Popularity),
    predictions: &Path,
) -> anyhow::Result<Against> {
    let model = model_ranks(predictions, &d.ds, samples)?;
    let rows = base
        .iter()
        .map(|(name, r)| paired(name, &model, r))
        .collect::<anyhow::Result<_>>()?;
    let slices = base
        .iter()
        .map(|(_, r)| slice_paired(pop, samples, &model, r))
        .collect::<anyhow::Result<_>>()?;
    Ok(Against {
        eval_label: eval_label(predictions),
        predictions: predictions.display().to_string(),
        rows,
        slices,
    })
}

/// The label of the evaluation that wrote `eval/<label>.predictions.jsonl`.
pub fn eval_label(predictions: &Path) -> String {
    let name = predictions
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_suffix(".predictions.jsonl") {
        Some(l) => l.to_string(),
        None => name,
    }
}

/// The baselines on a run's split and user sample (as `llmbs eval --limit N --seed S` picks
/// them); writes `eval/<label>.{json,md}`, where a comparison with a model's predictions
/// `eval/<E>.predictions.jsonl` adds `-vs-<E>` to the label: evaluations of the same split and
/// sample (adapter on and off) each keep their own comparison.
pub fn run_baselines(
    run: &RunDir,
    d: &RunData,
    job: &BaselineJob,
) -> anyhow::Result<BaselineReport> {
    let all = match job.split {
        SplitName::Test => &d.split.test,
        SplitName::Valid => &d.split.valid,
    };
    let samples = select_users(all, job.limit, job.seed);
    let mut lists = baseline_lists(d, &samples);
    if let Some(p) = job.sasrec {
        let l = sasrec_lists(p, d, &samples)
            .with_context(|| format!("the SASRec baseline {}", p.display()))?;
        lists.push((SASREC_ROW.to_string(), l));
    }
    let pop = Popularity::new(&d.split.train, d.ds.items.len());
    let base: Vec<(String, Vec<Option<usize>>)> = lists
        .iter()
        .map(|(n, l)| (n.clone(), ranks(l, &samples)))
        .collect();
    let mut label = format!("baselines-{}", job.split.name());
    if let Some(n) = job.limit {
        label.push_str(&format!("-{n}u-seed{}", job.seed));
    }
    if let Some(p) = job.against {
        label.push_str(&format!("-vs-{}", eval_label(p)));
    }
    let report = BaselineReport {
        label: label.clone(),
        dataset: d.ds.name.clone(),
        split: job.split,
        users: samples.len(),
        limit: job.limit,
        seed: job.seed,
        rows: baseline_rows(&lists, &samples),
        slices: base
            .iter()
            .map(|(_, r)| slice_metrics(&pop, &samples, r))
            .collect(),
        sasrec: job.sasrec.map(|p| p.display().to_string()),
        against: job
            .against
            .map(|p| against_model(d, &base, (&samples, &pop), p))
            .transpose()?,
    };
    write_json(&run.eval_dir().join(format!("{label}.json")), &report)?;
    atomic_write(
        &run.eval_dir().join(format!("{label}.md")),
        report.markdown().as_bytes(),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comparison_is_named_after_its_evaluation() {
        let p = std::path::Path::new("run/eval/test-initial-best-off-8u-seed0.predictions.jsonl");
        assert_eq!(eval_label(p), "test-initial-best-off-8u-seed0");
    }

    #[test]
    fn popularity_and_cluster_lists_by_hand() {
        // Item 2 appears 3 times, 0 twice, 1 and 3 once: 2, 0, 1, 3 (ties to the lower index).
        let train = vec![vec![2, 0, 2], vec![0, 2, 1, 3]];
        assert_eq!(popularity(&train, 4), vec![2, 0, 1, 3]);
        let key = ["a", "b", "a", "b"];
        let mut groups: HashMap<&str, Vec<u32>> = HashMap::new();
        for it in [2u32, 0, 1, 3] {
            groups.entry(key[it as usize]).or_default().push(it);
        }
        // Newest item 1 is in cluster b (1, 3): 3 (1 is history); then item 0's cluster a: 2.
        let s = Sample {
            user: 0,
            history: vec![0, 1],
            target: 2,
        };
        assert_eq!(by_cluster(&s, &groups, &key), vec![3, 2]);
    }
}
