//! `llmbs behavior`: trains the behavior encoder (DIN, paper 3.2 Eq. 3) or the SASRec baseline
//! on the training split, exports the item table Z^b and writes a full-ranking report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::DType;
use serde::Serialize;

use crate::behavior::{
    self, BehaviorConfig, Cooccurrence, DinLoss, EncoderKind, EpochLog, Observer,
};
use crate::data::{Dataset, SplitConfig, DEFAULT_MAX_HISTORY};
use crate::device::{device_name, DeviceArgs};
use crate::metrics::Metrics;
use crate::util::{atomic_write, progress_bar, write_json};

#[derive(clap::Args, Debug)]
pub struct BehaviorArgs {
    /// Dataset directory (LC-Rec JSON format)
    #[arg(long)]
    pub data: PathBuf,
    /// din (the paper's behavior encoder) or sasrec (the ID-only baseline)
    #[arg(long, value_enum, default_value_t = EncoderKind::Din)]
    pub encoder: EncoderKind,
    /// Output item table, e.g. runs/NAME/embeddings/behavior.safetensors (a .json sidecar goes
    /// beside it; the report goes to runs/NAME/behavior/<encoder>/)
    #[arg(long)]
    pub out: PathBuf,
    /// Item embedding size d_b
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Most epochs (default 200; early stopping usually ends sooner)
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size: DIN samples (default 256) or SASRec sequences (default 128)
    #[arg(long)]
    pub batch: Option<usize>,
    /// Adam learning rate
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep this many most recent items of each history (and SASRec's positions)
    #[arg(long, default_value_t = DEFAULT_MAX_HISTORY)]
    pub max_history: usize,
    /// Validations without a better NDCG@10 before stopping (default: DIN 5, SASRec 10)
    #[arg(long)]
    pub patience: Option<usize>,
    /// Validate every N epochs; 0 never (keeps the last epoch)
    #[arg(long, default_value_t = 1)]
    pub eval_every: usize,
    /// Users validated during training (a fixed seeded subset; 0 = all). Default: DIN 2000,
    /// SASRec all. The report's validation figures always cover all users.
    #[arg(long)]
    pub valid_users: Option<usize>,
    /// Stop training after the epoch that passes this many minutes
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// DIN: uniformly sampled negatives per positive
    #[arg(long, default_value_t = 4)]
    pub negatives: usize,
    /// DIN: bce (1 positive vs its negatives, labelled) or softmax (sampled softmax)
    #[arg(long, value_enum, default_value_t = DinLoss::Bce)]
    pub din_loss: DinLoss,
    /// DIN: hidden units of the activation unit
    #[arg(long, default_value_t = 36)]
    pub att_hidden: usize,
    /// SASRec: transformer blocks
    #[arg(long, default_value_t = 2)]
    pub blocks: usize,
    /// SASRec: attention heads
    #[arg(long, default_value_t = 1)]
    pub heads: usize,
    /// SASRec: dropout rate
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f32,
    /// SASRec: learn one extra score for items already in the user's history (a repeat bias;
    /// all items are still ranked); `--history-bias false` gives plain SASRec
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub history_bias: bool,
    /// Where report.json and report.md go (default: <run>/behavior/<encoder>/)
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Neighbours per item in the co-occurrence check
    #[arg(long, default_value_t = 10)]
    pub neighbors: usize,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

impl BehaviorArgs {
    /// The training config: the encoder's defaults with the flags applied.
    pub fn config(&self) -> BehaviorConfig {
        let mut cfg = BehaviorConfig::new(self.encoder);
        cfg.dim = self.dim;
        cfg.lr = self.lr;
        cfg.seed = self.seed;
        cfg.max_history = self.max_history;
        cfg.eval_every = self.eval_every;
        cfg.max_minutes = self.max_minutes;
        cfg.negatives = self.negatives;
        cfg.din_loss = self.din_loss;
        cfg.att_hidden = self.att_hidden;
        cfg.blocks = self.blocks;
        cfg.heads = self.heads;
        cfg.dropout = self.dropout;
        cfg.history_bias = self.history_bias && self.encoder == EncoderKind::Sasrec;
        if let Some(v) = self.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = self.batch {
            cfg.batch_size = v;
        }
        if let Some(v) = self.patience {
            cfg.patience = v;
        }
        if let Some(v) = self.valid_users {
            cfg.valid_users = v;
        }
        cfg
    }

    /// `--report-dir`, or `<run>/behavior/<encoder>` where `<run>` is the directory above
    /// `embeddings/` holding `--out` (else `--out`'s own directory).
    pub fn report_dir(&self) -> PathBuf {
        if let Some(d) = &self.report_dir {
            return d.clone();
        }
        let parent = self.out.parent().unwrap_or(Path::new(""));
        let run = if parent.file_name().is_some_and(|n| n == "embeddings") {
            parent.parent().unwrap_or(Path::new(""))
        } else {
            parent
        };
        run.join("behavior").join(self.encoder.name())
    }
}

/// A published full-ranking row on the same Beauty split (../shared/data/README.md).
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub method: &'static str,
    pub recall5: f64,
    pub recall10: f64,
    pub ndcg5: f64,
    pub ndcg10: f64,
}

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

/// Progress bars per epoch (examples, loss, examples/s) and one summary line per epoch.
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
}

pub fn run(args: BehaviorArgs) -> anyhow::Result<()> {
    let total = Instant::now();
    let (device, dtype) = args.dev.resolve()?;
    if dtype != DType::F32 {
        anyhow::bail!(
            "--dtype {}: the behavior encoders train in f32",
            args.dev.dtype
        );
    }
    let cfg = args.config();
    cfg.validate()?;
    let ds = Dataset::load_lcrec(&args.data)?;
    let split = ds
        .split(&SplitConfig {
            max_history: args.max_history,
        })
        .with_context(|| format!("splitting {}", args.data.display()))?;
    let n_items = ds.items.len();
    eprintln!(
        "{}: {} users, {n_items} items; training {} on {} ({} training examples)",
        ds.name,
        ds.users.len(),
        cfg.encoder.name(),
        device_name(&device),
        split.num_train_samples()
    );
    let mut bars = Bars {
        bar: None,
        epoch: 0,
        loss: 0.0,
        seen: 0,
    };
    let out = behavior::train(&split, n_items, &cfg, &device, &mut bars)
        .with_context(|| format!("training {} on {}", cfg.encoder.name(), args.data.display()))?;
    eprintln!(
        "co-occurrence check of the item table ({} neighbours)",
        args.neighbors
    );
    let co = behavior::cooccurrence_check(&out.table, &split.train, args.neighbors)?;
    crate::embed::save_table(&args.out, &out.table)
        .with_context(|| format!("writing the item table {}", args.out.display()))?;
    let report = BehaviorReport {
        kind: "behavior",
        encoder: cfg.encoder,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        data: args.data.display().to_string(),
        dataset: ds.name.clone(),
        users: ds.users.len(),
        items: n_items,
        train_examples: out.train_examples,
        parameters: out.parameters,
        device: device_name(&device),
        table: args.out.display().to_string(),
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
        references: REFERENCES.to_vec(),
        epochs: out.log.clone(),
        llmbs_version: env!("CARGO_PKG_VERSION"),
    };
    let sidecar = args.out.with_extension("json");
    write_json(
        &sidecar,
        &serde_json::json!({
            "kind": "behavior",
            "encoder": cfg.encoder,
            "n_items": n_items,
            "dim": report.dim,
            "data": report.data,
            "seed": cfg.seed,
            "best_epoch": out.best_epoch,
            "report": args.report_dir().join("report.json").display().to_string(),
            "llmbs_version": report.llmbs_version,
        }),
    )
    .with_context(|| format!("writing {}", sidecar.display()))?;
    let dir = args.report_dir();
    let json_path = dir.join("report.json");
    write_json(&json_path, &report).with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = dir.join("report.md");
    atomic_write(&md_path, markdown(&report).as_bytes())
        .with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!(
        "{}: test R@10 {:.4} N@10 {:.4}; valid R@10 {:.4} N@10 {:.4}; best epoch {}; trained {:.0}s -> {} and {}",
        cfg.encoder.name(),
        report.test.recall.get(&10).copied().unwrap_or(0.0),
        report.test.ndcg.get(&10).copied().unwrap_or(0.0),
        report.valid.recall.get(&10).copied().unwrap_or(0.0),
        report.valid.ndcg.get(&10).copied().unwrap_or(0.0),
        report.best_epoch,
        report.train_seconds,
        args.out.display(),
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
