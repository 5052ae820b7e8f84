//! One behavior-encoder job (paper 3.2, Eq. 3): train DIN (or the SASRec baseline) on a
//! dataset's training split, write the item table Z^b with its sidecar, and the full-ranking
//! report beside the published rows of the same dataset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use serde::Serialize;

use super::{BehaviorConfig, Cooccurrence, EncoderKind, EpochLog, Observer};
use crate::data::{Dataset, SplitConfig};
use crate::device::device_name;
use crate::metrics::Metrics;
use crate::util::{atomic_write, progress_bar, write_json};

/// A behavior stage to run.
#[derive(Debug, Clone)]
pub struct BehaviorJob {
    pub data: PathBuf,
    /// The item table (`RUN/embeddings/behavior.safetensors`); a `.json` sidecar goes beside it.
    pub out: PathBuf,
    /// Where `report.json` and `report.md` go.
    pub report_dir: PathBuf,
    pub config: BehaviorConfig,
    /// Neighbours per item in the co-occurrence check.
    pub neighbors: usize,
    /// The command line, for the report.
    pub command: String,
}

/// The trained encoder's weights in its report directory (what a distillation teacher loads).
pub const MODEL_FILE: &str = "model.safetensors";

/// A published full-ranking row (../shared/data/README.md): it belongs to the dataset it was
/// published on, so reports show it only for that dataset (name and size).
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub method: &'static str,
    pub recall5: f64,
    pub recall10: f64,
    pub ndcg5: f64,
    pub ndcg10: f64,
}

/// The dataset (name, users, items) the published rows below were measured on.
pub const REFERENCE_DATASET: (&str, usize, usize) = ("Beauty", 22_363, 12_101);

/// SASRec rows of the data README (Beauty, full ranking over all 12,101 items).
pub const REFERENCES: [Reference; 2] = [
    Reference {
        method: "SASRec (original loss), published",
        recall5: 0.0387,
        recall10: 0.0605,
        ndcg5: 0.0249,
        ndcg10: 0.0318,
    },
    Reference {
        method: "SASRec with full cross-entropy, published",
        recall5: 0.0538,
        recall10: 0.0851,
        ndcg5: 0.0320,
        ndcg10: 0.0421,
    },
];

/// How the figures were measured, written into every report.
pub const PROTOCOL: &str = "leave-one-out (test = last item, validation = second to last); \
full ranking over all catalogue items; primary figures do NOT exclude history items from the \
ranking (the 'history excluded' rows drop them first, as S3-Rec-style full-sort evaluation \
does); ties go to the lower item index; one target per user; Recall@K and NDCG@K of \
llmbs::metrics";

/// `report.json`.
#[derive(Debug, Serialize)]
pub struct BehaviorReport {
    pub kind: &'static str,
    pub encoder: EncoderKind,
    pub command: String,
    pub data: String,
    pub dataset: String,
    pub users: usize,
    pub items: usize,
    pub train_examples: usize,
    pub parameters: usize,
    pub device: String,
    pub table: String,
    pub dim: usize,
    pub config: BehaviorConfig,
    pub protocol: &'static str,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stop: String,
    pub train_seconds: f64,
    pub final_eval_seconds: f64,
    pub total_seconds: f64,
    /// Primary protocol (history items ranked too).
    pub valid: Metrics,
    pub test: Metrics,
    /// The same rankings with each user's history items removed first.
    pub valid_history_excluded: Metrics,
    pub test_history_excluded: Metrics,
    pub cooccurrence: Cooccurrence,
    pub references: Vec<Reference>,
    pub epochs: Vec<EpochLog>,
    pub llmbs_version: &'static str,
}

/// The published rows that apply to `ds` (none for another dataset).
pub fn references_for(ds: &Dataset) -> Vec<Reference> {
    let (name, users, items) = REFERENCE_DATASET;
    if ds.name == name && ds.users.len() == users && ds.items.len() == items {
        REFERENCES.to_vec()
    } else {
        Vec::new()
    }
}

/// Progress bars per epoch (examples, loss, examples/s), one summary line per epoch, and a bar
/// over the final full ranking.
#[derive(Default)]
struct Bars {
    bar: Option<indicatif::ProgressBar>,
    epoch: usize,
    loss: f64,
    seen: usize,
}

impl Observer for Bars {
    fn epoch_start(&mut self, epoch: usize, examples: usize) {
        self.bar = Some(progress_bar(examples as u64, "examples"));
        self.epoch = epoch;
        (self.loss, self.seen) = (0.0, 0);
    }

    fn batch_done(&mut self, examples: usize, loss: f64) {
        self.loss += loss * examples as f64;
        self.seen += examples;
        if let Some(bar) = &self.bar {
            bar.inc(examples as u64);
            bar.set_message(format!(
                "epoch {} loss {:.4}",
                self.epoch,
                self.loss / self.seen.max(1) as f64
            ));
        }
    }

    fn epoch_end(&mut self, log: &EpochLog) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let valid = match (&log.valid, log.valid_seconds) {
            (Some(m), Some(s)) => format!(
                "; valid R@10 {:.4} N@10 {:.4} ({} users, {s:.1}s)",
                m.recall.get(&10).copied().unwrap_or(0.0),
                m.ndcg.get(&10).copied().unwrap_or(0.0),
                m.users
            ),
            _ => String::new(),
        };
        eprintln!(
            "epoch {}: loss {:.4}, {:.0} examples/s, {:.1}s{valid}",
            log.epoch, log.loss, log.examples_per_s, log.seconds
        );
    }

    fn note(&mut self, msg: &str) {
        eprintln!("{msg}");
    }

    fn ranking_start(&mut self, users: usize) {
        self.bar = Some(progress_bar(users as u64, "users ranked"));
    }

    fn ranked(&mut self, users: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(users as u64);
        }
    }

    fn ranking_end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Trains the encoder and writes the table, its sidecar and the report.
pub fn run_job(job: &BehaviorJob, device: &Device) -> anyhow::Result<BehaviorReport> {
    let total = Instant::now();
    let cfg = &job.config;
    cfg.validate()?;
    let ds = Dataset::load_lcrec(&job.data)?;
    let split = ds
        .split(&SplitConfig {
            max_history: cfg.max_history,
        })
        .with_context(|| format!("splitting {}", job.data.display()))?;
    let n_items = ds.items.len();
    eprintln!(
        "{}: {} users, {n_items} items; training {} on {} ({} training examples)",
        ds.name,
        ds.users.len(),
        cfg.encoder.name(),
        device_name(device),
        split.num_train_samples()
    );
    let out = super::train(&split, n_items, cfg, device, &mut Bars::default())
        .with_context(|| format!("training {} on {}", cfg.encoder.name(), job.data.display()))?;
    eprintln!(
        "co-occurrence check of the item table ({} neighbours)",
        job.neighbors
    );
    let co = super::cooccurrence_check(&out.table, &split.train, job.neighbors)?;
    crate::embed::save_table(&job.out, &out.table)
        .with_context(|| format!("writing the item table {}", job.out.display()))?;
    std::fs::create_dir_all(&job.report_dir)
        .with_context(|| format!("creating {}", job.report_dir.display()))?;
    let model_path = job.report_dir.join(MODEL_FILE);
    let weights: std::collections::HashMap<String, candle_core::Tensor> =
        out.weights.iter().cloned().collect();
    crate::util::atomic_write_with(&model_path, |tmp| {
        candle_core::safetensors::save(&weights, tmp)?;
        Ok(())
    })
    .with_context(|| format!("writing {}", model_path.display()))?;
    let report = BehaviorReport {
        kind: "behavior",
        encoder: cfg.encoder,
        command: job.command.clone(),
        data: job.data.display().to_string(),
        dataset: ds.name.clone(),
        users: ds.users.len(),
        items: n_items,
        train_examples: out.train_examples,
        parameters: out.parameters,
        device: device_name(device),
        table: job.out.display().to_string(),
        dim: out.table.dim(1)?,
        config: cfg.clone(),
        protocol: PROTOCOL,
        best_epoch: out.best_epoch,
        epochs_run: out.log.len(),
        stop: out.stop.clone(),
        train_seconds: out.train_seconds,
        final_eval_seconds: out.final_eval_seconds,
        total_seconds: total.elapsed().as_secs_f64(),
        valid: out.valid.all_items.clone(),
        test: out.test.all_items.clone(),
        valid_history_excluded: out.valid.history_excluded.clone(),
        test_history_excluded: out.test.history_excluded.clone(),
        cooccurrence: co,
        references: references_for(&ds),
        epochs: out.log.clone(),
        llmbs_version: env!("CARGO_PKG_VERSION"),
    };
    write_outputs(job, &report)?;
    Ok(report)
}

/// The table's sidecar and `report.{json,md}`.
fn write_outputs(job: &BehaviorJob, report: &BehaviorReport) -> anyhow::Result<()> {
    let json_path = job.report_dir.join("report.json");
    let sidecar = job.out.with_extension("json");
    write_json(
        &sidecar,
        &serde_json::json!({
            "kind": "behavior",
            "encoder": report.encoder,
            "n_items": report.items,
            "dim": report.dim,
            "data": report.data,
            "seed": report.config.seed,
            "best_epoch": report.best_epoch,
            "report": json_path.display().to_string(),
            "llmbs_version": report.llmbs_version,
        }),
    )
    .with_context(|| format!("writing {}", sidecar.display()))?;
    write_json(&json_path, report).with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = job.report_dir.join("report.md");
    atomic_write(&md_path, markdown(report).as_bytes())
        .with_context(|| format!("writing {}", md_path.display()))?;
    let r10 = |m: &Metrics| m.recall.get(&10).copied().unwrap_or(0.0);
    let n10 = |m: &Metrics| m.ndcg.get(&10).copied().unwrap_or(0.0);
    eprintln!(
        "{}: test R@10 {:.4} N@10 {:.4}; valid R@10 {:.4} N@10 {:.4}; best epoch {}; trained {:.0}s -> {} and {}",
        report.encoder.name(),
        r10(&report.test),
        n10(&report.test),
        r10(&report.valid),
        n10(&report.valid),
        report.best_epoch,
        report.train_seconds,
        job.out.display(),
        md_path.display()
    );
    Ok(())
}

/// `report.md`: the figures beside the published rows, the co-occurrence check, the epochs.
pub fn markdown(r: &BehaviorReport) -> String {
    let mut s = format!(
        "# Behavior encoder: {} on {}\n\n`{}`\n\n",
        r.encoder.name(),
        r.dataset,
        r.command
    );
    s += &format!(
        "{} users, {} items, {} training examples, {} parameters, device {}. Best epoch {} of {} run ({}). \
         Training {:.0}s (with per-epoch validation), final ranking {:.0}s, total {:.0}s.\n\n",
        r.users, r.items, r.train_examples, r.parameters, r.device, r.best_epoch, r.epochs_run, r.stop,
        r.train_seconds, r.final_eval_seconds, r.total_seconds
    );
    s += &format!("Protocol: {}.\n\n", r.protocol);
    s += "| rows | R@1 | R@5 | R@10 | N@5 | N@10 |\n| --- | --- | --- | --- | --- | --- |\n";
    let row = |name: &str, m: &Metrics| {
        let g = |map: &std::collections::BTreeMap<usize, f64>, k| {
            map.get(&k).map_or("-".into(), |v| format!("{v:.4}"))
        };
        format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            g(&m.recall, 1),
            g(&m.recall, 5),
            g(&m.recall, 10),
            g(&m.ndcg, 5),
            g(&m.ndcg, 10)
        )
    };
    s += &row(
        &format!("{} validation ({} users)", r.encoder.name(), r.valid.users),
        &r.valid,
    );
    s += &row(
        &format!("{} test ({} users)", r.encoder.name(), r.test.users),
        &r.test,
    );
    s += &row(
        &format!("{} validation, history excluded", r.encoder.name()),
        &r.valid_history_excluded,
    );
    s += &row(
        &format!("{} test, history excluded", r.encoder.name()),
        &r.test_history_excluded,
    );
    for p in &r.references {
        s += &format!(
            "| {} | - | {:.4} | {:.4} | {:.4} | {:.4} |\n",
            p.method, p.recall5, p.recall10, p.ndcg5, p.ndcg10
        );
    }
    let c = &r.cooccurrence;
    s += &format!(
        "\nBehavior check: the {} nearest neighbours (cosine) of an item share a training sequence with it \
         at rate {:.4}; random item pairs at {:.4} (lift {:.1}x; {} of {} items occur in training).\n\n",
        c.k, c.neighbor_rate, c.random_rate, c.lift, c.items_in_training, c.items
    );
    s += "| epoch | loss | examples/s | seconds | valid R@10 | valid N@10 |\n| --- | --- | --- | --- | --- | --- |\n";
    for e in &r.epochs {
        let (r10, n10) = e.valid.as_ref().map_or(("-".into(), "-".into()), |m| {
            (
                format!("{:.4}", m.recall.get(&10).copied().unwrap_or(0.0)),
                format!("{:.4}", m.ndcg.get(&10).copied().unwrap_or(0.0)),
            )
        });
        s += &format!(
            "| {} | {:.4} | {:.0} | {:.1} | {r10} | {n10} |\n",
            e.epoch, e.loss, e.examples_per_s, e.seconds
        );
    }
    s
}
