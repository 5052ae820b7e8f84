//! Training the behavior encoders (paper 3.2, Eq. 3) on the training split only: seeded batches
//! and negatives, Adam, validation by full ranking with early stopping on NDCG@10, the best
//! epoch's weights kept, then full validation and test figures.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::batch::{din_batches, din_samples, sasrec_batches, sasrec_windows, DinBatch, Window};
use super::eval::{evaluate, evaluate_with, Evaluation};
use super::init::{restore, seeded_init, snapshot, Init};
use super::{
    BehaviorConfig, BehaviorError, Din, DinConfig, DinLoss, EncoderKind, Ranker, SasRec,
    SasRecConfig,
};
use crate::data::{Sample, Split};
use crate::metrics::Metrics;

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (weighted by examples).
    pub loss: f64,
    /// Next-item examples (DIN samples, SASRec target positions) trained on.
    pub examples: usize,
    pub seconds: f64,
    pub examples_per_s: f64,
    /// Validation on the (sub)set of users chosen by `valid_users`, when validated (primary
    /// protocol: history items ranked too).
    pub valid: Option<Metrics>,
    pub valid_seconds: Option<f64>,
}

/// Progress hooks (the command draws progress bars; tests stay silent).
pub trait Observer {
    fn epoch_start(&mut self, _epoch: usize, _examples: usize) {}
    fn batch_done(&mut self, _examples: usize, _loss: f64) {}
    fn epoch_end(&mut self, _log: &EpochLog) {}
    fn note(&mut self, _msg: &str) {}
    /// The final full ranking of `users` validation and test users begins.
    fn ranking_start(&mut self, _users: usize) {}
    /// `users` more users ranked.
    fn ranked(&mut self, _users: usize) {}
    fn ranking_end(&mut self) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// The trained table and every figure of a run.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Item embeddings of the kept weights, `[n_items, dim]` (f32, CPU).
    pub table: Tensor,
    pub log: Vec<EpochLog>,
    /// The epoch whose weights were kept (the last one when never validated).
    pub best_epoch: usize,
    /// Why training ended.
    pub stop: String,
    pub train_seconds: f64,
    /// All users, with the kept weights.
    pub valid: Evaluation,
    pub test: Evaluation,
    pub final_eval_seconds: f64,
    pub train_examples: usize,
    pub parameters: usize,
    /// The kept weights by variable name (`RUN/behavior/<encoder>/model.safetensors`; a
    /// distillation teacher rebuilds the model from them).
    pub weights: Vec<(String, Tensor)>,
}

enum Model {
    Din(Din),
    Sasrec(SasRec),
}

impl Model {
    fn ranker(&self) -> &dyn Ranker {
        match self {
            Model::Din(m) => m,
            Model::Sasrec(m) => m,
        }
    }
}

/// The model's examples for one epoch, batched.
enum Batches {
    Din(Vec<DinBatch>),
    Sasrec(Vec<super::batch::SeqBatch>),
}

/// Builds the model named by `cfg` with seeded weights.
fn build(
    cfg: &BehaviorConfig,
    n_items: usize,
    device: &Device,
) -> Result<(VarMap, Model), BehaviorError> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
    let model = match cfg.encoder {
        EncoderKind::Din => Model::Din(Din::new(
            DinConfig {
                n_items,
                dim: cfg.dim,
                att_hidden: cfg.att_hidden,
                dropout: cfg.dropout,
            },
            vb,
        )?),
        EncoderKind::Sasrec => Model::Sasrec(SasRec::new(
            SasRecConfig {
                n_items,
                dim: cfg.dim,
                max_len: cfg.max_history,
                blocks: cfg.blocks,
                heads: cfg.heads,
                dropout: cfg.dropout,
                history_bias: cfg.history_bias,
            },
            vb,
        )?),
    };
    seeded_init(&vm, cfg.seed, init_rule)?;
    Ok((vm, model))
}

/// How each variable starts: norms 1, biases 0, PReLU slopes 0.25, DIN's attention output bias
/// 1 (so an untrained DIN sum-pools the history), matrices and tables Xavier-uniform.
pub fn init_rule(name: &str, _dims: &[usize]) -> Init {
    if name.ends_with("gamma") || name == "att.b2" {
        Init::Const(1.0)
    } else if name.ends_with("prelu") {
        Init::Const(0.25)
    } else if name.ends_with("beta") || name.ends_with("bias") || name.ends_with("b1") {
        Init::Const(0.0)
    } else {
        Init::Xavier
    }
}

/// Mean BCE-with-logits, stable form `relu(x) - x y + log(1 + exp(-|x|))`; `y` is 1 in column 0.
fn bce_first_positive(scores: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c) = scores.dims2()?;
    let y: Vec<f32> = (0..b * c)
        .map(|i| if i % c == 0 { 1.0 } else { 0.0 })
        .collect();
    let y = Tensor::from_vec(y, (b, c), scores.device())?;
    let soft = ((scores.abs()?.neg()?.exp()? + 1.0)?).log()?;
    ((scores.relu()? - (scores * y)?)? + soft)?.mean_all()
}

/// One batch's loss (a scalar tensor).
fn batch_loss(
    model: &Model,
    cfg: &BehaviorConfig,
    batches: &Batches,
    i: usize,
    rng: &mut StdRng,
) -> candle_core::Result<(Tensor, usize)> {
    match (model, batches) {
        (Model::Din(m), Batches::Din(bs)) => {
            let b = &bs[i];
            let dev = m.device();
            let hist = Tensor::from_slice(&b.hist, (b.size, b.t), dev)?;
            let mask = Tensor::from_slice(&b.mask, (b.size, b.t), dev)?;
            let cands = Tensor::from_slice(&b.cands, (b.size, b.c), dev)?;
            let scores = m.forward(&hist, &mask, &cands, Some(rng))?; // [b, c]
            let loss = match cfg.din_loss {
                DinLoss::Bce => bce_first_positive(&scores)?,
                DinLoss::Softmax => candle_nn::ops::log_softmax(&scores, D::Minus1)?
                    .narrow(1, 0, 1)?
                    .mean_all()?
                    .neg()?,
            };
            Ok((loss, b.size))
        }
        (Model::Sasrec(m), Batches::Sasrec(bs)) => {
            let b = &bs[i];
            Ok((m.loss(b, Some(rng))?, b.targets.len()))
        }
        _ => candle_core::bail!("batches do not match the model"),
    }
}

/// The training examples behind an encoder: DIN's samples or SASRec's windows.
enum Examples {
    Din(Vec<Sample>),
    Sasrec(Vec<Window>),
}

impl Examples {
    fn count(&self) -> usize {
        match self {
            Examples::Din(s) => s.len(),
            Examples::Sasrec(w) => w.iter().map(|w| w.targets.len()).sum(),
        }
    }

    fn batches(&self, cfg: &BehaviorConfig, n_items: usize, rng: &mut StdRng) -> Batches {
        match self {
            Examples::Din(s) => {
                Batches::Din(din_batches(s, n_items, cfg.negatives, cfg.batch_size, rng))
            }
            Examples::Sasrec(w) => Batches::Sasrec(sasrec_batches(w, cfg.batch_size, rng)),
        }
    }
}

impl Batches {
    fn len(&self) -> usize {
        match self {
            Batches::Din(b) => b.len(),
            Batches::Sasrec(b) => b.len(),
        }
    }
}

/// A seeded, fixed subset of the validation samples (all when `n` is 0 or too large), in user order.
fn valid_subset(valid: &[Sample], n: usize, seed: u64) -> Vec<Sample> {
    if n == 0 || n >= valid.len() {
        return valid.to_vec();
    }
    let mut idx: Vec<usize> = (0..valid.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x05ee_d0f7_a11d));
    idx.truncate(n);
    idx.sort_unstable();
    idx.into_iter().map(|i| valid[i].clone()).collect()
}

/// Trains the encoder `cfg.encoder` on `split.train` (never on validation or test targets),
/// selects the epoch by validation NDCG@10, and reports full-ranking validation and test
/// metrics of the kept weights. Deterministic for a seed on CPU.
/// One pass over an epoch's batches; the epoch's log entry without validation.
fn run_epoch(
    model: &Model,
    cfg: &BehaviorConfig,
    batches: &Batches,
    epoch: usize,
    opt: &mut AdamW,
    drop_rng: &mut StdRng,
    obs: &mut dyn Observer,
) -> Result<EpochLog, BehaviorError> {
    let t0 = Instant::now();
    let (mut loss_sum, mut seen) = (0f64, 0usize);
    for i in 0..batches.len() {
        let (loss, n) = batch_loss(model, cfg, batches, i, drop_rng)?;
        opt.backward_step(&loss)?;
        let l = f64::from(loss.to_scalar::<f32>()?);
        if !l.is_finite() {
            return Err(BehaviorError::Diverged(l, epoch));
        }
        loss_sum += l * n as f64;
        seen += n;
        obs.batch_done(n, l);
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(EpochLog {
        epoch,
        loss: loss_sum / seen.max(1) as f64,
        examples: seen,
        seconds,
        examples_per_s: seen as f64 / seconds.max(1e-9),
        valid: None,
        valid_seconds: None,
    })
}

/// The best model's full ranking of every validation and test user.
fn final_ranking(
    ranker: &dyn Ranker,
    split: &Split,
    obs: &mut dyn Observer,
) -> candle_core::Result<(Evaluation, Evaluation)> {
    obs.ranking_start(split.valid.len() + split.test.len());
    let valid = evaluate_with(ranker, &split.valid, &mut |n| obs.ranked(n))?;
    let test = evaluate_with(ranker, &split.test, &mut |n| obs.ranked(n))?;
    obs.ranking_end();
    Ok((valid, test))
}

/// The encoder's training examples from `split`'s training sequences, after checking that
/// the configuration is valid and that there is something to rank and to learn from.
fn training_examples(
    split: &Split,
    n_items: usize,
    cfg: &BehaviorConfig,
) -> Result<Examples, BehaviorError> {
    cfg.validate()?;
    if n_items < 2 {
        return Err(BehaviorError::Config(format!(
            "{n_items} items: ranking needs at least 2"
        )));
    }
    let examples = match cfg.encoder {
        EncoderKind::Din => Examples::Din(din_samples(split, cfg.max_history)),
        EncoderKind::Sasrec => Examples::Sasrec(sasrec_windows(split, cfg.max_history)),
    };
    if examples.count() == 0 {
        return Err(BehaviorError::NoTrainingData);
    }
    Ok(examples)
}

pub fn train(
    split: &Split,
    n_items: usize,
    cfg: &BehaviorConfig,
    device: &Device,
    obs: &mut dyn Observer,
) -> Result<TrainOutcome, BehaviorError> {
    let examples = training_examples(split, n_items, cfg)?;
    let n_examples = examples.count();
    let (vm, model) = build(cfg, n_items, device)?;
    let parameters = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut data_rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let mut drop_rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(2));
    let valid_sub = valid_subset(&split.valid, cfg.valid_users, cfg.seed);
    let start = Instant::now();
    let mut log = Vec::new();
    let (mut best, mut best_epoch, mut since_best) = (f64::NEG_INFINITY, 0usize, 0usize);
    let mut best_weights = None;
    let mut stop = format!("reached {} epochs", cfg.epochs);
    for epoch in 1..=cfg.epochs {
        let batches = examples.batches(cfg, n_items, &mut data_rng);
        obs.epoch_start(epoch, n_examples);
        let mut entry = run_epoch(&model, cfg, &batches, epoch, &mut opt, &mut drop_rng, obs)?;
        let mut stop_now = false;
        if cfg.eval_every > 0 && (epoch % cfg.eval_every == 0 || epoch == cfg.epochs) {
            obs.note(&format!(
                "epoch {epoch}: validating on {} users",
                valid_sub.len()
            ));
            let tv = Instant::now();
            let m = evaluate(model.ranker(), &valid_sub)?.all_items;
            entry.valid_seconds = Some(tv.elapsed().as_secs_f64());
            let score = m.ndcg.get(&10).copied().unwrap_or(0.0);
            entry.valid = Some(m);
            if score > best {
                best = score;
                best_epoch = epoch;
                since_best = 0;
                best_weights = Some(snapshot(&vm)?);
            } else {
                since_best += 1;
                if since_best >= cfg.patience {
                    stop = format!(
                        "no better validation NDCG@10 in {since_best} validations (patience {})",
                        cfg.patience
                    );
                    stop_now = true;
                }
            }
        } else if cfg.eval_every == 0 {
            best_epoch = epoch;
        }
        obs.epoch_end(&entry);
        log.push(entry);
        if stop_now {
            break;
        }
        if let Some(max) = cfg.max_minutes {
            if start.elapsed().as_secs_f64() >= max * 60.0 && epoch < cfg.epochs {
                stop = format!("time limit of {max} minutes after epoch {epoch}");
                break;
            }
        }
    }
    let train_seconds = start.elapsed().as_secs_f64();
    if let Some(w) = &best_weights {
        restore(&vm, w)?;
    }
    obs.note(&format!(
        "best epoch {best_epoch}; full validation and test ranking"
    ));
    let t1 = Instant::now();
    let (valid, test) = final_ranking(model.ranker(), split, obs)?;
    let final_eval_seconds = t1.elapsed().as_secs_f64();
    let table = model.ranker().item_table()?.to_device(&Device::Cpu)?;
    let weights = snapshot(&vm)?;
    Ok(TrainOutcome {
        table,
        log,
        best_epoch,
        stop,
        train_seconds,
        valid,
        test,
        final_eval_seconds,
        train_examples: n_examples,
        parameters,
        weights,
    })
}
