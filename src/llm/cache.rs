//! A batched key/value cache for incremental decoding; beam search reorders it by beam index.

use candle_core::{Result, Tensor};

/// Per-layer keys and values, each `[b, n_kv_heads, t, head_dim]`, plus which cached positions
/// are real (`[b, t]`, 1 = attend), since right-padded prompts leave holes.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) valid: Option<Tensor>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            valid: None,
        }
    }

    /// Cached sequence length (0 when empty).
    pub fn len(&self) -> usize {
        self.valid
            .as_ref()
            .and_then(|v| v.dims2().ok())
            .map(|(_, t)| t)
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key validity mask `[b, t]` (u8), if anything is cached.
    pub fn valid(&self) -> Option<&Tensor> {
        self.valid.as_ref()
    }

    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Selects (and repeats) batch rows: row i of the result is row `index[i]` of this cache.
    /// Beam search calls it with each surviving beam's parent.
    pub fn reorder(&mut self, index: &Tensor) -> Result<()> {
        for slot in self.layers.iter_mut() {
            if let Some((k, v)) = slot {
                *slot = Some((k.index_select(index, 0)?, v.index_select(index, 0)?));
            }
        }
        if let Some(valid) = &self.valid {
            self.valid = Some(valid.index_select(index, 0)?);
        }
        Ok(())
    }
}
