//! Semantic item embeddings Z^s (paper Eq. 2): the mean of the backbone's last hidden state over
//! each item text's tokens, padding excluded; plus the file format every embedding table uses.

pub mod job;
pub mod neighbors;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::llm::{tokenizer::encode, Llama, LlmError, Mode};

/// The tensor name inside every llmbs embedding safetensors file.
pub const TENSOR_NAME: &str = "embeddings";

/// How texts are batched for the forward pass.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    /// Sequences per forward.
    pub batch_size: usize,
    /// Texts longer than this many tokens are truncated (their mean covers the first tokens).
    pub max_tokens: usize,
    /// Pool the hidden state after the first K decoder layers (then the final norm) instead of
    /// the last: the depth the recipe trains (4 of 30) costs 1/7 of the full forward, and on a
    /// slow CPU that time goes to training instead. None: every layer (paper Eq. 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            max_tokens: 256,
            layers: None,
        }
    }
}

impl EmbedConfig {
    /// The defaults as a JSON object with every key a config file may set, optional ones
    /// included (they are skipped when serialised unset), for laying a file's section over.
    pub fn overlay_base(&self) -> serde_json::Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            o.entry("layers").or_insert(serde_json::Value::Null);
        }
        Ok(v)
    }
}

/// Tokenizes every text (no special tokens), truncated to `max_tokens`.
pub fn tokenize_all(
    tok: &Tokenizer,
    texts: &[String],
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>, LlmError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut ids = encode(tok, t)?;
            if ids.is_empty() {
                return Err(LlmError::Format(format!("text #{i} has no tokens")));
            }
            ids.truncate(max_tokens);
            Ok(ids)
        })
        .collect()
}

/// Mean-pooled last hidden states of token sequences, in input order: [n, d] (f32).
/// Sequences are processed in length-sorted batches so little compute goes to padding;
/// `on_batch` is called with the number of sequences finished (for progress bars).
pub fn mean_pool(
    model: &Llama,
    seqs: &[Vec<u32>],
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> candle_core::Result<Tensor> {
    let dev = model.device().clone();
    let d = model.config().hidden_size;
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| (seqs[i].len(), i));
    let mut out = vec![0f32; seqs.len() * d];
    for chunk in order.chunks(batch_size.max(1)) {
        let t = chunk.iter().map(|&i| seqs[i].len()).max().unwrap_or(1);
        let b = chunk.len();
        let mut ids = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        for (r, &i) in chunk.iter().enumerate() {
            ids[r * t..r * t + seqs[i].len()].copy_from_slice(&seqs[i]);
            mask[r * t..r * t + seqs[i].len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
        }
        let ids = Tensor::from_vec(ids, (b, t), &dev)?;
        let mask = Tensor::from_vec(mask, (b, t, 1), &dev)?;
        // Right padding needs no key mask: causality keeps real positions from seeing it.
        let h = model.forward_hidden(&ids, None, None, None, Mode::Infer)?;
        let h = h.to_dtype(DType::F32)?;
        let sum = h.broadcast_mul(&mask)?.sum(1)?; // [b, d]
        let len = mask.sum(1)?; // [b, 1]
        let mean = sum.broadcast_div(&len)?.to_device(&Device::Cpu)?;
        let rows: Vec<Vec<f32>> = mean.to_vec2()?;
        for (r, &i) in chunk.iter().enumerate() {
            out[i * d..(i + 1) * d].copy_from_slice(&rows[r]);
        }
        on_batch(b);
    }
    Tensor::from_vec(out, (seqs.len(), d), &Device::Cpu)
}

/// Writes `[n, d]` embeddings to a safetensors file atomically.
pub fn save_table(path: &Path, table: &Tensor) -> anyhow::Result<()> {
    use anyhow::Context;
    let table = table.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    crate::util::atomic_write_with(path, |tmp| {
        let map: HashMap<String, Tensor> = [(TENSOR_NAME.to_string(), table)].into_iter().collect();
        candle_core::safetensors::save(&map, tmp)
            .with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Reads an embedding table `[n, d]` (f32, CPU) and checks its row count when given.
pub fn load_table(path: &Path, expect_rows: Option<usize>) -> anyhow::Result<Tensor> {
    use anyhow::Context;
    let mut map = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading embeddings {}", path.display()))?;
    let t = map
        .remove(TENSOR_NAME)
        .with_context(|| format!("{}: no tensor named '{TENSOR_NAME}'", path.display()))?;
    let (n, _) = t
        .dims2()
        .with_context(|| format!("{}: '{TENSOR_NAME}' is not a 2-D table", path.display()))?;
    if let Some(rows) = expect_rows {
        if n != rows {
            anyhow::bail!(
                "{}: {n} rows, but the dataset has {rows} items",
                path.display()
            );
        }
    }
    Ok(t.to_dtype(DType::F32)?)
}
