//! Evaluating a run (paper 3.4.3, 4.1.2): the run's model on its own split, prompts and IDs,
//! beam search over every chosen user, `eval/<label>.{json,md}` and
//! `eval/<label>.predictions.jsonl`, where the label names the split, model, adapter and user
//! sample so differently configured evaluations never overwrite each other.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use rand::seq::SliceRandom;
use rand::SeedableRng;

pub use super::config::{default_label, normalize_for, EvalConfig, SplitName};
use super::partial::{partial_path, Partial};
pub use super::report::{Coverage, EvalReport};
use super::slices::{slice_metrics, Popularity};
use super::{evaluate, prompt_ids, Normalize, Prediction, Ranked, Scoring};
use crate::data::{Dataset, Sample};
use crate::device::device_name;
use crate::metrics::{coverage, rank_of, MetricAccumulator, Metrics};
use crate::run::model::{load_run_model, resolve, trained_record, RunModel};
use crate::run::{OpenOptions, RunDir};
use crate::util::{atomic_write, atomic_write_with, progress_bar, write_json};

/// The paper's Table 2 rows (R@5, R@10, N@5, N@10), by dataset name and size (users, items):
/// a published row belongs to that dataset only.
const PAPER_ROWS: &[(&str, usize, usize, [f64; 4])] =
    &[("Beauty", 22_363, 12_101, [0.0548, 0.0830, 0.0369, 0.0459])];

/// The paper's row for `ds`, if it is the dataset the row was published on.
pub fn paper_row(ds: &Dataset) -> Option<[f64; 4]> {
    PAPER_ROWS
        .iter()
        .find(|(n, u, i, _)| *n == ds.name && *u == ds.users.len() && *i == ds.items.len())
        .map(|r| r.3)
}

/// An evaluation of a run.
#[derive(Debug, Clone, Default)]
pub struct EvalJob {
    pub config: EvalConfig,
    /// Overrides of the run's recorded data, index and prompts (only where it has none).
    pub data: Option<PathBuf>,
    pub index: Option<PathBuf>,
    pub prompts: Option<PathBuf>,
    /// Continue an interrupted evaluation of the same label and settings.
    pub resume: bool,
    /// Replace an interrupted evaluation's partial predictions.
    pub overwrite: bool,
    pub quiet: bool,
}

/// The users of a split an evaluation covers: all, or a seeded sample of `limit` (user order).
pub fn select_users(samples: &[Sample], limit: Option<usize>, seed: u64) -> Vec<Sample> {
    select_users_ordered(samples, limit, seed).0
}

/// [`select_users`] and the seeded order of its users (positions in the returned list): the
/// split's seeded shuffle, whose first N are `--limit N`'s users. A time budget ranks users in
/// this order, so the users it reaches are `select_users(samples, Some(done), seed)`, the
/// users `llmbs baselines --limit <done> --seed S` scores, with or without `--limit`.
pub fn select_users_ordered(
    samples: &[Sample],
    limit: Option<usize>,
    seed: u64,
) -> (Vec<Sample>, Vec<usize>) {
    // Shuffling positions draws the same permutation as shuffling the samples themselves.
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let Some(n) = limit else {
        return (samples.to_vec(), order);
    };
    order.truncate(n);
    let mut listed = order.clone();
    listed.sort_by_key(|&p| samples[p].user);
    let mut at = vec![0; samples.len()];
    for (i, &p) in listed.iter().enumerate() {
        at[p] = i;
    }
    let chosen = listed.iter().map(|&p| samples[p].clone()).collect();
    (chosen, order.iter().map(|&p| at[p]).collect())
}

/// The default label: `<split>-<model>-<adapter>[-<N>u][-<M>min][-seed<S>][-t<K>][-choices]`
/// (the last two only where they differ from the defaults).
/// One line of the predictions file: user, target, its rank, the top items with scores and
/// titles.
fn prediction_line(ds: &Dataset, s: &Sample, r: &Ranked) -> anyhow::Result<serde_json::Value> {
    let list: Vec<u32> = r.iter().map(|x| x.0).collect();
    let p = Prediction {
        user: ds.users[s.user as usize].clone(),
        target: ds.items[s.target as usize].id.clone(),
        rank: rank_of(&list, s.target, list.len()),
        top: r
            .iter()
            .map(|&(i, sc)| (ds.items[i as usize].id.clone(), sc))
            .collect(),
    };
    let mut v = serde_json::to_value(&p)?;
    v["top_titles"] = r
        .iter()
        .map(|&(i, _)| ds.items[i as usize].title.clone())
        .collect();
    Ok(v)
}

/// The rankings already in a partial file, by sample position.
fn done_from_partial(
    ds: &Dataset,
    samples: &[Sample],
    lines: &[serde_json::Value],
    file: &std::path::Path,
) -> anyhow::Result<Vec<Option<Ranked>>> {
    let mut done: Vec<Option<Ranked>> = vec![None; samples.len()];
    let by_user: HashMap<&str, usize> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (ds.users[s.user as usize].as_str(), i))
        .collect();
    for v in lines {
        let p: Prediction = serde_json::from_value(v.clone())
            .with_context(|| format!("{}: {v}", file.display()))?;
        let top = p
            .top
            .iter()
            .map(|(id, sc)| ds.item_index(id).map(|x| (x, *sc)))
            .collect::<Option<Vec<_>>>();
        let (Some(&i), Some(top)) = (by_user.get(p.user.as_str()), top) else {
            anyhow::bail!(
                "{}: user {} or one of its items is not in this evaluation",
                file.display(),
                p.user
            );
        };
        done[i] = Some(top);
    }
    Ok(done)
}

/// Evaluates `run` as `job` says; writes the report and predictions and returns the report.
pub fn evaluate_run(
    run: &RunDir,
    job: &EvalJob,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<EvalReport> {
    let c = &job.config;
    c.validate()?;
    let d = run.open(&OpenOptions {
        data: job.data.as_deref(),
        index: job.index.as_deref(),
        prompts: job.prompts.as_deref(),
    })?;
    let resolved = resolve(Some(run), &c.model)?;
    let label = c
        .label
        .clone()
        .unwrap_or_else(|| default_label(c, &resolved.model_name, &resolved.adapter_name));
    // Scores normalised as the evaluated model's own stage trained.
    let trained = trained_record(run, &resolved, d.trained.as_ref())?;
    let rm = load_run_model(resolved, d.tokens.clone(), c.vocab_seed, device, dtype)?;
    let split = match c.split {
        SplitName::Test => &d.split.test,
        SplitName::Valid => &d.split.valid,
    };
    let (samples, order) = select_users_ordered(split, c.limit, c.seed);
    let normalize = normalize_for(c, trained.as_ref());
    let prompts = prompt_ids(
        &samples,
        &rm.items,
        &d.prompts,
        c.template,
        &rm.loaded.tokenizer,
    )?;
    let mean_prompt =
        prompts.iter().map(|p| p.len()).sum::<usize>() as f64 / prompts.len().max(1) as f64;
    eprintln!(
        "evaluating {} {} users as '{label}', beam {}, batch {}, {} on {} (mean prompt {mean_prompt:.0} tokens)",
        samples.len(),
        c.split.name(),
        c.beam,
        c.batch,
        rm.desc,
        device_name(device)
    );
    let preds_path = run.eval_dir().join(format!("{label}.predictions.jsonl"));
    let template = d.prompts.srt[c.template % d.prompts.srt.len()].clone();
    // What must match for a resumed evaluation to be the same evaluation.
    let settings = serde_json::json!({
        "split": c.split, "users": samples.len(), "limit": c.limit, "seed": c.seed,
        "beam": c.beam, "scoring": c.scoring, "normalize": normalize, "model": rm.desc, "index": d.index_path.display().to_string(),
        "prompt": template, "dtype": format!("{dtype:?}").to_lowercase(),
        "max_history": d.max_history,
    });
    let r = rank_users(
        job,
        &rm,
        &d.ds,
        (&samples, &prompts, &order),
        normalize,
        &preds_path,
        &settings,
    )?;
    let planned = samples.len();
    // Users a time budget did not reach leave the evaluation (a random sample remains).
    let (samples, ranked): (Vec<Sample>, Vec<Ranked>) = samples
        .into_iter()
        .zip(r.ranked)
        .filter_map(|(s, x)| x.map(|x| (s, x)))
        .unzip();
    write_predictions(&preds_path, &d.ds, &samples, &ranked)?;
    // Only now that the predictions are whole does the partial file go.
    r.partial.finish()?;
    let (seconds, resumed) = (r.seconds, r.resumed);
    let report = EvalReport {
        label: label.clone(),
        dataset: d.ds.name.clone(),
        split: c.split,
        users: samples.len(),
        planned_users: planned,
        all_users: c.limit.is_none() && samples.len() == planned,
        metrics: Metrics::default(),
        slices: Vec::new(),
        coverage10: Coverage::default(),
        seconds,
        users_per_s: (samples.len() - resumed) as f64 / seconds.max(1e-9),
        resumed_users: resumed,
        resume_settings: settings,
        config: c.clone(),
        model: rm.src.describe(),
        checkpoint: rm.desc.clone(),
        index: d.index_path.display().to_string(),
        prompt: template,
        max_history: d.max_history,
        mean_prompt_tokens: mean_prompt,
        device: device_name(device),
        dtype: format!("{dtype:?}").to_lowercase(),
        scoring: describe_scoring(c.scoring, normalize),
        paper_table2: paper_row(&d.ds),
        predictions: preds_path.display().to_string(),
    };
    let pop = Popularity::new(&d.split.train, d.ds.items.len());
    finish(run, report, (&samples, &ranked), &pop, job.quiet)
}

/// The report's words for how a beam's score is formed.
fn describe_scoring(scoring: Scoring, normalize: Normalize) -> String {
    format!(
        "{}; log-probabilities normalised over {}",
        match scoring {
            Scoring::All => "sum of the log-probabilities of every ID token, no length normalisation",
            Scoring::Choices => "sum of the log-probabilities of the ID tokens the trie leaves a choice for (forced tokens add nothing)",
        },
        match normalize {
            Normalize::Vocab => "the full vocabulary",
            Normalize::Ids => "the item-ID tokens (the model trained with the item-vocabulary loss)",
        }
    )
}

/// What [`rank_users`] returns: each planned user's ranking (None: not reached within
/// `--max-minutes`), the seconds of beam search, how many users an interrupted run's partial
/// file held, and the partial file (removed once the predictions are written).
struct Ranking {
    ranked: Vec<Option<Ranked>>,
    seconds: f64,
    resumed: usize,
    partial: Partial,
}

/// Beam search over the users not already in an interrupted run's partial file, appending each
/// batch to it. With a time budget the users go in their seeded `order` (see
/// [`select_users_ordered`]), in rounds of 8 batches (each round sorted by prompt length
/// inside), so the users done when it stops are a random sample, not the shortest prompts, and
/// the first ones of `--limit N --seed S`'s order.
fn rank_users(
    job: &EvalJob,
    rm: &RunModel,
    ds: &Dataset,
    (samples, prompts, order): (&[Sample], &[Vec<u32>], &[usize]),
    normalize: Normalize,
    preds_path: &std::path::Path,
    settings: &serde_json::Value,
) -> anyhow::Result<Ranking> {
    let c = &job.config;
    let stop = crate::util::interrupt_flag()?;
    let partial_file = partial_path(preds_path);
    if partial_file.exists() && !job.resume && !job.overwrite {
        anyhow::bail!(
            "{} holds an interrupted evaluation: continue it with --resume, or start over with --overwrite",
            partial_file.display()
        );
    }
    let (mut partial, done_lines) = Partial::open(preds_path, settings, job.resume)?;
    let mut done = done_from_partial(ds, samples, &done_lines, &partial_file)?;
    let todo: Vec<usize> = match c.max_minutes {
        Some(_) => order.to_vec(),
        None => (0..samples.len()).collect(),
    };
    let todo: Vec<usize> = todo.into_iter().filter(|&i| done[i].is_none()).collect();
    let resumed = samples.len() - todo.len();
    if !done_lines.is_empty() {
        eprintln!(
            "resuming: {resumed} users from {}, {} to go",
            partial_file.display(),
            todo.len()
        );
    }
    let round = match c.max_minutes {
        Some(_) => c.batch * 8,
        None => todo.len().max(1),
    };
    let pb = if job.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        progress_bar(todo.len() as u64, "users")
    };
    let search = super::Search {
        beam: c.beam,
        batch: c.batch,
        scoring: c.scoring,
        normalize,
    };
    let mut seconds = 0.0;
    for users in todo.chunks(round) {
        let round_samples: Vec<Sample> = users.iter().map(|&i| samples[i].clone()).collect();
        let round_prompts: Vec<Vec<u32>> = users.iter().map(|&i| prompts[i].clone()).collect();
        let out = evaluate(
            &rm.model,
            &round_prompts,
            &round_samples,
            &rm.items,
            search,
            |idx, ranked| {
                pb.inc(idx.len() as u64);
                let lines = idx
                    .iter()
                    .zip(ranked)
                    .map(|(&i, r)| prediction_line(ds, &round_samples[i], r))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                partial.append(&lines)?;
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    anyhow::bail!(
                        "interrupted: {} holds the users done so far (continue with --resume)",
                        partial_file.display()
                    );
                }
                Ok(())
            },
        )?;
        seconds += out.seconds;
        for (&i, r) in users.iter().zip(out.ranked) {
            done[i] = Some(r);
        }
        if c.max_minutes.is_some_and(|m| seconds >= m * 60.0) {
            break;
        }
    }
    pb.finish_and_clear();
    Ok(Ranking {
        ranked: done,
        seconds,
        resumed,
        partial,
    })
}

/// The final predictions file, one line per user in sample order.
fn write_predictions(
    path: &std::path::Path,
    ds: &Dataset,
    samples: &[Sample],
    ranked: &[Ranked],
) -> anyhow::Result<()> {
    atomic_write_with(path, |tmp| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        for (s, r) in samples.iter().zip(ranked) {
            writeln!(f, "{}", prediction_line(ds, s, r)?)?;
        }
        f.flush()?;
        Ok(())
    })
}

/// Fills in the metrics and coverage, writes `eval/<label>.{json,md}`.
fn finish(
    run: &RunDir,
    mut report: EvalReport,
    (samples, ranked): (&[Sample], &[Ranked]),
    pop: &Popularity,
    quiet: bool,
) -> anyhow::Result<EvalReport> {
    let mut acc = MetricAccumulator::default();
    let lists: Vec<Vec<u32>> = ranked
        .iter()
        .map(|r| r.iter().map(|x| x.0).collect())
        .collect();
    for (s, l) in samples.iter().zip(&lists) {
        acc.add(l, s.target);
    }
    let n_items = pop.count.len();
    let (items, fraction) = coverage(lists.iter().map(|l| l.as_slice()), 10, n_items);
    report.metrics = acc.finish();
    let ranks: Vec<Option<usize>> = samples
        .iter()
        .zip(&lists)
        .map(|(s, l)| rank_of(l, s.target, l.len()))
        .collect();
    report.slices = slice_metrics(pop, samples, &ranks);
    report.coverage10 = Coverage { items, fraction };
    let label = &report.label;
    write_json(&run.eval_dir().join(format!("{label}.json")), &report)?;
    let md = report.markdown();
    atomic_write(&run.eval_dir().join(format!("{label}.md")), md.as_bytes())?;
    if !quiet {
        println!("{md}");
    }
    Ok(report)
}
