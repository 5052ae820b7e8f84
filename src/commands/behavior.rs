//! `llmbs behavior`: trains the behavior encoder (DIN, paper 3.2 Eq. 3) or the SASRec baseline
//! on the training split, exports the item table Z^b and writes a full-ranking report.

use std::path::{Path, PathBuf};

use candle_core::DType;

use crate::behavior::job::{run_job, BehaviorJob};
use crate::behavior::{BehaviorConfig, DinLoss, EncoderKind};
use crate::data::DEFAULT_MAX_HISTORY;
use crate::device::DeviceArgs;

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

pub fn run(args: BehaviorArgs) -> anyhow::Result<()> {
    let (device, dtype) = args.dev.resolve()?;
    if dtype != DType::F32 {
        anyhow::bail!(
            "--dtype {}: the behavior encoders train in f32",
            args.dev.dtype
        );
    }
    let job = BehaviorJob {
        data: args.data.clone(),
        out: args.out.clone(),
        report_dir: args.report_dir(),
        config: args.config(),
        neighbors: args.neighbors,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    run_job(&job, &device)?;
    Ok(())
}
