//! Batched, trie-constrained beam search over the backbone's KV cache (paper 3.4.3): many users
//! per batch, `beam` hypotheses each, only real items come out, each at most once.
//!
//! Scores are sums of full-vocabulary log-probabilities (log-softmax over every token, then
//! masked to the trie's children), without length normalisation: exactly the teacher-forced
//! log-likelihood of the item's ID given the prompt.

use candle_core::{DType, Device, Tensor, D};

use super::trie::{Trie, ROOT};
use crate::llm::{Llama, Mode, Positions};

/// One user's result: (item, score) best first, distinct items.
pub type Ranked = Vec<(u32, f32)>;

/// What a hypothesis' score sums.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// The log-probability of every ID token: the item's teacher-forced log-likelihood.
    #[default]
    All,
    /// Only tokens the trie leaves a choice for: a forced token (its node's only child) adds
    /// nothing, so an item is not penalised for tokens no other item could have taken.
    Choices,
}

/// What each step's log-probabilities are normalised over.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// The whole vocabulary (a model trained with the full-vocabulary cross-entropy).
    #[default]
    Vocab,
    /// The item-ID tokens only (a model trained with the item-vocabulary loss,
    /// `TrainConfig::item_loss`): the head's text rows are never computed.
    Ids,
}

#[derive(Debug, Clone, Copy)]
struct Hyp {
    user: usize,
    row: usize, // cache row holding this hypothesis' past
    node: u32,
    score: f32,
}

/// Row-wise log-softmax over the full vocabulary, of which only the token range `cols` (the
/// ID tokens, contiguous at the end of the vocabulary) is copied to the host: [rows][cols.len()].
fn log_probs(
    model: &Llama,
    hidden: &Tensor,
    cols: &std::ops::Range<u32>,
    norm: Normalize,
) -> candle_core::Result<Vec<Vec<f32>>> {
    if norm == Normalize::Ids {
        let (a, n) = (cols.start as usize, (cols.end - cols.start) as usize);
        let w = model.lm_head().narrow(0, a, n)?;
        let logits = hidden.matmul(&w.t()?)?.to_dtype(DType::F32)?; // [rows, ids]
        if logits.device().is_cpu() && logits.is_contiguous() {
            return cpu_log_probs(&logits, &(0..n as u32));
        }
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        return lp.to_device(&Device::Cpu)?.to_vec2();
    }
    let logits = model.logits(hidden)?; // [rows, vocab] f32
    if logits.device().is_cpu() && logits.dtype() == DType::F32 && logits.is_contiguous() {
        return cpu_log_probs(&logits, cols);
    }
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let lp = lp.narrow(1, cols.start as usize, (cols.end - cols.start) as usize)?;
    lp.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.to_vec2()
}

/// [`log_probs`] on the CPU in one parallel pass per row (max, log-sum-exp, then only `cols`
/// written out): candle's composed log-softmax makes six single-threaded passes over the full
/// `[rows, vocab]` logits and keeps them all, at every step of the search.
fn cpu_log_probs(
    logits: &Tensor,
    cols: &std::ops::Range<u32>,
) -> candle_core::Result<Vec<Vec<f32>>> {
    use rayon::prelude::*;
    let (_, vocab) = logits.dims2()?;
    let (a, b) = (cols.start as usize, cols.end as usize);
    if b > vocab || a > b {
        candle_core::bail!("log_probs: columns {a}..{b} outside the vocabulary of {vocab}");
    }
    let (s, l) = logits.storage_and_layout();
    let data = match (&*s, l.contiguous_offsets()) {
        (candle_core::Storage::Cpu(c), Some((x, y))) => &c.as_slice::<f32>()?[x..y],
        _ => candle_core::bail!("log_probs: expected contiguous CPU logits"),
    };
    Ok(data
        .par_chunks(vocab.max(1))
        .map(|row| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + row.iter().map(|&x| (x - m).exp()).sum::<f32>().ln();
            row[a..b].iter().map(|&x| x - lse).collect()
        })
        .collect())
}

/// Beam search for every prompt (token ids). Returns, per prompt, up to `beam` distinct items
/// with their scores, best first.
pub fn beam_search(
    model: &Llama,
    prompts: &[Vec<u32>],
    trie: &Trie,
    beam: usize,
) -> candle_core::Result<Vec<Ranked>> {
    beam_search_with(model, prompts, trie, beam, Scoring::All)
}

/// [`beam_search_with`] over the full vocabulary (the models trained without the item loss).
pub fn beam_search_with(
    model: &Llama,
    prompts: &[Vec<u32>],
    trie: &Trie,
    beam: usize,
    scoring: Scoring,
) -> candle_core::Result<Vec<Ranked>> {
    beam_search_norm(model, prompts, trie, beam, scoring, Normalize::Vocab)
}

/// The prompts prefilled into `cache`: each prompt's length and the log-probabilities of the
/// ID tokens after its last position.
fn prefill(
    model: &Llama,
    prompts: &[Vec<u32>],
    cache: &mut crate::llm::KvCache,
    cols: &std::ops::Range<u32>,
    norm: Normalize,
) -> candle_core::Result<(Vec<usize>, Vec<Vec<f32>>)> {
    let dev = model.device().clone();
    let u = prompts.len();
    let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    // Tokens every prompt of the batch starts with (the instruction text) are prefilled once
    // and shared; each prompt keeps at least its last token for its own logits.
    // The shared part stops before the first ID token, so no item's ID is split between two
    // chunks (a behavior input finds items within a chunk: `llm::behavior_input`).
    let first_id = prompts[0].iter().position(|t| cols.contains(t));
    let shared = common_prefix(prompts)
        .min(lens.iter().copied().min().unwrap_or(1).saturating_sub(1))
        .min(first_id.unwrap_or(usize::MAX));
    if shared > 0 {
        let prefix = Tensor::new(&prompts[0][..shared], &dev)?.unsqueeze(0)?;
        model.forward_hidden(&prefix, None, None, Some(&mut *cache), Mode::Infer)?;
        cache.reorder(&Tensor::zeros(u, DType::U32, &dev)?)?;
    }
    let t = lens.iter().map(|l| l - shared).max().unwrap_or(1).max(1);
    let mut ids = vec![0u32; u * t];
    let mut valid = vec![0u8; u * t];
    for (r, p) in prompts.iter().enumerate() {
        let rest = &p[shared..];
        ids[r * t..r * t + rest.len()].copy_from_slice(rest);
        valid[r * t..r * t + rest.len()]
            .iter_mut()
            .for_each(|v| *v = 1);
    }
    let ids = Tensor::from_vec(ids, (u, t), &dev)?;
    let valid = Tensor::from_vec(valid, (u, t), &dev)?;
    // The prompt is prefilled once per user, not once per beam; only its last position pays
    // for the LM head.
    let hidden = model.forward_hidden(&ids, None, Some(&valid), Some(cache), Mode::Infer)?;
    let last: Vec<(usize, usize)> = lens
        .iter()
        .enumerate()
        .map(|(r, &l)| (r, (l - shared).max(1) - 1))
        .collect();
    let lp = log_probs(model, &Llama::gather(&hidden, &last)?, cols, norm)?;
    Ok((lens, lp))
}

/// [`beam_search`] with a choice of what the scores sum and what they are normalised over.
pub fn beam_search_norm(
    model: &Llama,
    prompts: &[Vec<u32>],
    trie: &Trie,
    beam: usize,
    scoring: Scoring,
    norm: Normalize,
) -> candle_core::Result<Vec<Ranked>> {
    let dev = model.device().clone();
    let u = prompts.len();
    if u == 0 {
        return Ok(Vec::new());
    }
    let mut cache = model.new_cache();
    let cols = trie.token_range();
    let off = cols.start as usize;
    let (lens, mut lp) = prefill(model, prompts, &mut cache, &cols, norm)?;
    let mut live: Vec<Hyp> = (0..u)
        .map(|user| Hyp {
            user,
            row: user,
            node: ROOT,
            score: 0.0,
        })
        .collect();
    let mut finished: Vec<Ranked> = vec![Vec::new(); u];
    let mut step = 0usize;
    loop {
        // Expand every live hypothesis along its trie edges; keep the best `beam` per user.
        let mut per_user: Vec<Vec<(f32, usize, u32, u32)>> = vec![Vec::new(); u]; // (score, hyp, token, child)
        for (h, hyp) in live.iter().enumerate() {
            let edges = trie.children(hyp.node);
            let forced = scoring == Scoring::Choices && edges.len() == 1;
            for &(tok, child) in edges {
                let gain = if forced {
                    0.0
                } else {
                    lp[hyp.row][tok as usize - off]
                };
                per_user[hyp.user].push((hyp.score + gain, h, tok, child));
            }
        }
        let mut next: Vec<(Hyp, u32)> = Vec::new(); // (new hypothesis with parent row, token)
        for (user, mut cands) in per_user.into_iter().enumerate() {
            // Deterministic order: score, then parent, then token.
            cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            cands.truncate(beam);
            for (score, h, tok, child) in cands {
                match trie.item(child) {
                    Some(item) => finished[user].push((item, score)),
                    None => next.push((
                        Hyp {
                            user,
                            row: live[h].row,
                            node: child,
                            score,
                        },
                        tok,
                    )),
                }
            }
        }
        if next.is_empty() {
            break;
        }
        step += 1;
        let parents: Vec<u32> = next.iter().map(|(h, _)| h.row as u32).collect();
        cache.reorder(&Tensor::from_vec(parents, next.len(), &dev)?)?;
        let toks: Vec<u32> = next.iter().map(|(_, tok)| *tok).collect();
        let pos: Vec<u32> = next
            .iter()
            .map(|(h, _)| (lens[h.user] + step - 1) as u32)
            .collect();
        let n = next.len();
        let toks = Tensor::from_vec(toks, (n, 1), &dev)?;
        let pos = Tensor::from_vec(pos, (n, 1), &dev)?;
        let h = model.forward_hidden(
            &toks,
            Some(Positions::PerRow(pos)),
            None,
            Some(&mut cache),
            Mode::Infer,
        )?;
        lp = log_probs(model, &h.squeeze(1)?, &cols, norm)?;
        live = next
            .into_iter()
            .enumerate()
            .map(|(row, (h, _))| Hyp { row, ..h })
            .collect();
    }
    for f in finished.iter_mut() {
        f.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        f.truncate(beam);
    }
    Ok(finished)
}

/// Length of the token prefix all prompts share.
fn common_prefix(prompts: &[Vec<u32>]) -> usize {
    let first = &prompts[0];
    prompts[1..].iter().fold(first.len(), |n, p| {
        n.min(first.iter().zip(p).take_while(|(a, b)| a == b).count())
    })
}

/// Teacher-forced log-likelihood of every item's full ID after `prompt` (the exact ranking that
/// beam search approximates; used by tests and for small catalogues). Returns all items, best first.
pub fn score_all_items(
    model: &Llama,
    prompt: &[u32],
    ids: &[Vec<u32>],
) -> candle_core::Result<Ranked> {
    let dev = model.device().clone();
    let mut out = Vec::with_capacity(ids.len());
    for (item, id) in ids.iter().enumerate() {
        let mut seq = prompt.to_vec();
        seq.extend_from_slice(id);
        let x = Tensor::new(seq.as_slice(), &dev)?.unsqueeze(0)?;
        let h = model
            .forward_hidden(&x, None, None, None, Mode::Infer)?
            .squeeze(0)?;
        let rows = h.narrow(0, prompt.len() - 1, id.len())?;
        let all = 0..model.config().vocab_size as u32;
        let lp = log_probs(model, &rows, &all, Normalize::Vocab)?;
        let score: f32 = id
            .iter()
            .enumerate()
            .map(|(k, &tok)| lp[k][tok as usize])
            .sum();
        out.push((item as u32, score));
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_log_probs_equal_log_softmax_on_the_kept_columns() {
        let (rows, vocab) = (5, 300);
        let v: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 7919) % 1013) as f32 / 40.0 - 12.0)
            .collect();
        let logits = Tensor::from_vec(v, (rows, vocab), &Device::Cpu).unwrap();
        let cols = 250u32..300;
        let got = cpu_log_probs(&logits, &cols).unwrap();
        let want: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .narrow(1, 250, 50)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        assert!(cpu_log_probs(&logits, &(250..301)).is_err());
    }
}
