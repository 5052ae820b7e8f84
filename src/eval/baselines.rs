//! Non-learned baselines on the very split and users an evaluation ranks, so a report compares
//! like with like: the most popular training items, and "popular in the newest item's
//! cluster" (walking the history from the newest item back, the most popular items sharing its
//! first semantic or behavior ID token, history items skipped, until 10).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::paired::{model_ranks, paired, PairedDiff, MARKDOWN_HEADER};
use super::run::{select_users, SplitName};
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
    /// Baseline name and its metrics, in a fixed order.
    pub rows: Vec<(String, Metrics)>,
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

/// A model's predictions (`llmbs eval`'s `.predictions.jsonl` of exactly `samples`) minus
/// each baseline (its lists for `samples`), user by user.
fn against_model(
    d: &RunData,
    lists: &[(String, Vec<Vec<u32>>)],
    samples: &[Sample],
    predictions: &std::path::Path,
) -> anyhow::Result<Against> {
    let model = model_ranks(predictions, &d.ds, samples)?;
    let rows = lists
        .iter()
        .map(|(name, lists)| {
            let base: Vec<Option<usize>> = lists
                .iter()
                .zip(samples)
                .map(|(l, s)| rank_of(l, s.target, TOP))
                .collect();
            paired(name, &model, &base)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Against {
        eval_label: eval_label(predictions),
        predictions: predictions.display().to_string(),
        rows,
    })
}

/// The label of the evaluation that wrote `eval/<label>.predictions.jsonl`.
pub fn eval_label(predictions: &std::path::Path) -> String {
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
    split: SplitName,
    limit: Option<usize>,
    seed: u64,
    model: Option<&std::path::Path>,
) -> anyhow::Result<BaselineReport> {
    let all = match split {
        SplitName::Test => &d.split.test,
        SplitName::Valid => &d.split.valid,
    };
    let samples = select_users(all, limit, seed);
    let lists = baseline_lists(d, &samples);
    let mut label = format!("baselines-{}", split.name());
    if let Some(n) = limit {
        label.push_str(&format!("-{n}u-seed{seed}"));
    }
    if let Some(p) = model {
        label.push_str(&format!("-vs-{}", eval_label(p)));
    }
    let report = BaselineReport {
        label: label.clone(),
        dataset: d.ds.name.clone(),
        split,
        users: samples.len(),
        limit,
        seed,
        rows: baseline_rows(&lists, &samples),
        against: model
            .map(|p| against_model(d, &lists, &samples, p))
            .transpose()?,
    };
    write_json(&run.eval_dir().join(format!("{label}.json")), &report)?;
    atomic_write(
        &run.eval_dir().join(format!("{label}.md")),
        report.markdown().as_bytes(),
    )?;
    Ok(report)
}

impl BaselineReport {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Baselines: {} ({} split, {} users{})\n\n",
            self.dataset,
            self.split.name(),
            self.users,
            self.limit.map_or(String::new(), |_| format!(
                ", seeded sample, seed {}",
                self.seed
            ))
        );
        if let Some((_, m)) = self.rows.first() {
            let head = m.markdown_header();
            let mut lines = head.lines();
            let (names, rule) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            md.push_str(&format!("| baseline {names}\n| --- {rule}\n"));
        }
        for (name, m) in &self.rows {
            md.push_str(&format!("| {name} {}\n", m.to_markdown_row()));
        }
        if let Some(a) = &self.against {
            md.push_str(&format!(
                "\nThe model of `{}` minus each baseline, user by user (paired standard errors):\n\n{}",
                a.predictions, a.paired_markdown()
            ));
        }
        md
    }
}

impl Against {
    /// The paired table, one row a baseline.
    pub fn paired_markdown(&self) -> String {
        let mut md = MARKDOWN_HEADER.to_string();
        for r in &self.rows {
            md.push_str(&r.markdown_row());
            md.push('\n');
        }
        md
    }
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
