//! Perplexity of plain text: how much of its language ability a model keeps after being taught
//! item IDs (paper 3.4.2's reason for a switchable adapter), measured on held-out item texts.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::llm::{Llama, Mode};

/// Most next-token rows sent through the LM head at once: bounds the `[rows, vocab]` logits.
const MAX_HEAD_ROWS: usize = 2048;

/// Token-weighted perplexity over a set of texts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PplReport {
    /// Texts with at least one target token.
    pub texts: usize,
    /// Target tokens: every token of a text but its first.
    pub tokens: usize,
    /// Mean next-token negative log-likelihood (nats per token).
    pub nll: f64,
    /// `exp(nll)`.
    pub ppl: f64,
    pub seconds: f64,
}

/// Perplexity of `token_lists`: each list is one text (with BOS first when the model has one);
/// every token after the first is a target predicted from the ones before it, so BOS is never
/// scored. Lists are length-sorted into right-padded batches of `batch`; padding sits after
/// every real position, so causality keeps it out of the scores.
pub fn perplexity(
    model: &Llama,
    token_lists: &[Vec<u32>],
    batch: usize,
) -> anyhow::Result<PplReport> {
    let start = Instant::now();
    let mut order: Vec<usize> = (0..token_lists.len())
        .filter(|&i| token_lists[i].len() >= 2)
        .collect();
    order.sort_by_key(|&i| (token_lists[i].len(), i));
    let dev = model.device();
    let mut total = 0f64;
    let mut tokens = 0usize;
    for chunk in order.chunks(batch.max(1)) {
        let t = chunk
            .iter()
            .map(|&i| token_lists[i].len())
            .max()
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut at = Vec::new();
        let mut targets = Vec::new();
        for (r, &i) in chunk.iter().enumerate() {
            let seq = &token_lists[i];
            ids.extend_from_slice(seq);
            ids.resize(ids.len() + t - seq.len(), 0);
            for p in 0..seq.len() - 1 {
                at.push((r, p));
                targets.push(seq[p + 1]);
            }
        }
        let ids = Tensor::from_vec(ids, (chunk.len(), t), dev)?;
        let hidden = model
            .forward_hidden(&ids, None, None, None, Mode::Infer)
            .context("ppl: forward")?;
        for (at, tg) in at.chunks(MAX_HEAD_ROWS).zip(targets.chunks(MAX_HEAD_ROWS)) {
            let logits = model.logits(&Llama::gather(&hidden, at)?)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let tg = Tensor::from_slice(tg, (tg.len(), 1), dev)?;
            let picked = logp.gather(&tg, 1)?.to_dtype(DType::F64)?;
            total -= picked.sum_all()?.to_scalar::<f64>()?;
        }
        tokens += targets.len();
    }
    let nll = if tokens > 0 {
        total / tokens as f64
    } else {
        f64::NAN
    };
    Ok(PplReport {
        texts: order.len(),
        tokens,
        nll,
        ppl: nll.exp(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
