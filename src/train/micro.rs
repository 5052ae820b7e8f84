//! One micro-batch's forward and backward: the Eq. 7 loss (paper 3.4.1), with plain autograd
//! or with activation checkpointing per decoder layer.
//!
//! Checkpointing (why this shape): candle has no checkpoint primitive, so the backward is done
//! segment by segment. The forward runs the layers on detached inputs, keeping only each
//! layer's input `[b, t, d]`; the head (final norm, LM head, cross-entropy, GCT) is
//! differentiated with the last hidden state as a leaf, which gives its parameters' gradients
//! and the gradient at that leaf. Then, from the last layer down, each layer is recomputed from
//! its saved input (a fresh leaf) and `sum(out * grad_out)` is differentiated: its gradient is
//! the layer's parameter gradients and the gradient at the layer's input. Only one layer's
//! intermediates are alive at a time; the cost is a second forward of every layer. Dropout
//! masks are the same in the recomputation because each layer's adapters are reseeded.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use rand::rngs::StdRng;

use super::batch::MicroBatch;
use super::loss::{response_ce, CeMode, Gct};
use super::optim::Params;
use super::settings::StepConfig;
use crate::llm::{Llama, Mode};
use crate::tasks::build::Encoded;

/// What a step's loss is divided by: the response tokens and GCT samples of the whole
/// effective batch (every rank sees the whole batch, so no rank needs to ask the others).
#[derive(Debug, Clone, Copy)]
pub struct Norms {
    pub resp_tokens: usize,
    pub n_gct: usize,
}

impl Norms {
    pub fn of(samples: &[Encoded]) -> Self {
        Self {
            resp_tokens: samples.iter().map(|s| s.loss_tokens()).sum(),
            n_gct: samples.iter().filter(|s| s.gct_item.is_some()).count(),
        }
    }
}

/// Loss sums (not yet divided) and token counts of some micro-batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    /// One-hot cross-entropy of the response tokens.
    pub ce: f64,
    /// The cross-entropy that trains (with distillation: of the mixed targets; else `ce`).
    pub mixed: f64,
    pub gs: f64,
    pub gb: f64,
    pub tokens: usize,
    pub padded: usize,
}

impl Sums {
    pub fn add(&mut self, o: Sums) {
        self.ce += o.ce;
        self.mixed += o.mixed;
        self.gs += o.gs;
        self.gb += o.gb;
        self.tokens += o.tokens;
        self.padded += o.padded;
    }
}

/// Gradients of `Params`, summed over micro-batches (and backward segments).
pub struct GradAcc {
    pub grads: Vec<Option<Tensor>>,
}

impl GradAcc {
    pub fn new(n: usize) -> Self {
        Self {
            grads: vec![None; n],
        }
    }

    /// Adds every parameter's gradient found in `g`.
    pub fn add(&mut self, g: &GradStore, params: &Params) -> Result<()> {
        for (acc, var) in self.grads.iter_mut().zip(&params.vars) {
            if let Some(gi) = g.get(var.as_tensor()) {
                *acc = Some(match acc.take() {
                    Some(a) => (a + gi)?,
                    None => gi.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The Eq. 7 loss of one micro-batch given its final hidden states `hidden` [b, t, d]: summed
/// response cross-entropy over the effective batch's response tokens, plus the GCT terms
/// weighted by lambda over its GCT samples. Returns the loss and the micro-batch's sums.
pub fn micro_loss(
    model: &Llama,
    gct: Option<&Gct>,
    hidden: &Tensor,
    mb: &MicroBatch,
    norms: Norms,
    c: &StepConfig,
    rng: &mut StdRng,
) -> Result<(Tensor, Sums)> {
    let mode = CeMode {
        id_rows: c.id_rows,
        soft: (!mb.soft.is_empty()).then_some((mb.soft.as_slice(), c.distill_alpha)),
    };
    let ce = response_ce(model, hidden, &mb.at, &mb.targets, &mode)?;
    let ce_sum = ce.loss;
    let mut sums = Sums {
        ce: ce.hard,
        mixed: ce_sum.to_scalar::<f32>()? as f64,
        tokens: mb.tokens,
        padded: mb.padded,
        ..Sums::default()
    };
    let mut loss = (ce_sum / norms.resp_tokens.max(1) as f64)?;
    if let (Some(gct), false) = (gct, mb.con_at.is_empty()) {
        let h = Llama::gather(hidden, &mb.con_at)?;
        let gl = gct.loss(&h, &mb.con_items, rng)?;
        sums.gs = gl.sem.to_scalar::<f32>()? as f64;
        sums.gb = gl.beh.to_scalar::<f32>()? as f64;
        let w = norms.n_gct.max(1) as f64;
        loss = ((loss + (gl.sem * (c.lambda_s / w))?)? + (gl.beh * (c.lambda_b / w))?)?;
    }
    Ok((loss, sums))
}

/// Forward and backward of one micro-batch through candle's autograd in one piece.
#[allow(clippy::too_many_arguments)]
pub fn plain_grads(
    model: &Llama,
    gct: Option<&Gct>,
    mb: &MicroBatch,
    norms: Norms,
    c: &StepConfig,
    rng: &mut StdRng,
    params: &Params,
    acc: &mut GradAcc,
) -> Result<Sums> {
    let hidden = model.forward_hidden(&mb.ids, None, None, None, Mode::Train)?; // [b, t, d]
    let (loss, sums) = micro_loss(model, gct, &hidden, mb, norms, c, rng)?;
    acc.add(&loss.backward()?, params)?;
    Ok(sums)
}

/// Forward and backward of one micro-batch with per-layer activation checkpointing (module
/// docs). `dropout_seed` must be what the model's adapters were seeded with for this
/// micro-batch. `on_layer(i, acc)` runs once layer `i`'s gradients of this micro-batch are in
/// `acc` (the data-parallel reducer sends that layer's bucket from there).
#[allow(clippy::too_many_arguments)]
pub fn checkpointed_grads(
    model: &mut Llama,
    gct: Option<&Gct>,
    mb: &MicroBatch,
    norms: Norms,
    c: &StepConfig,
    rng: &mut StdRng,
    dropout_seed: u64,
    params: &Params,
    acc: &mut GradAcc,
    on_layer: &mut dyn FnMut(usize, &mut GradAcc) -> Result<()>,
) -> Result<Sums> {
    let (b, t) = mb.ids.dims2()?;
    let ctx = model.layer_ctx(b, t, None, Mode::Train)?;
    let n = model.num_layers();
    // The embedding keeps its (small) graph: index_select into the table.
    let x0 = model.embed(&mb.ids, Mode::Train)?; // [b, t, d]
    let mut inputs = Vec::with_capacity(n);
    let mut x = x0.detach();
    for i in 0..n {
        let out = model.layer_forward(i, &x, &ctx)?.detach();
        inputs.push(x);
        x = out;
    }
    let last = Var::from_tensor(&x)?;
    drop(x);
    let hidden = model.final_norm(last.as_tensor(), Mode::Train)?;
    let (loss, sums) = micro_loss(model, gct, &hidden, mb, norms, c, rng)?;
    let g = loss.backward()?;
    acc.add(&g, params)?;
    let mut grad = input_grad(&g, &last)?;
    drop((g, loss, hidden, last));
    for i in (0..n).rev() {
        model.seed_layer_dropout(i, dropout_seed);
        let input = inputs
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no input".into()))?;
        let leaf = Var::from_tensor(&input)?;
        drop(input);
        let out = model.layer_forward(i, leaf.as_tensor(), &ctx)?;
        let g = (out * &grad)?.sum_all()?.backward()?;
        acc.add(&g, params)?;
        grad = input_grad(&g, &leaf)?;
        drop(g);
        on_layer(i, acc)?;
    }
    if x0.track_op() {
        acc.add(&(x0 * grad)?.sum_all()?.backward()?, params)?;
    }
    Ok(sums)
}

/// The gradient reaching the leaf `v` (zeros when nothing reached it).
fn input_grad(g: &GradStore, v: &Var) -> Result<Tensor> {
    match g.get(v.as_tensor()) {
        Some(t) => Ok(t.detach()),
        None => v.as_tensor().zeros_like(),
    }
}
