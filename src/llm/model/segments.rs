//! The decoder one segment at a time (embedding, each layer, the final norm), which
//! [`Llama::forward_hidden`] chains and activation checkpointing recomputes layer by layer.

use candle_core::{DType, Result, Tensor};

use super::{kernels, ops, AttnMask, KvCache, Llama, Mode, Positions, State};

/// The per-forward state every decoder layer shares (RoPE tables, attention mask, mode); made
/// by [`Llama::layer_ctx`].
pub struct LayerCtx {
    pub(super) cs: (Tensor, Tensor),
    pub(super) mask: AttnMask,
    pub(super) st: State,
}

impl Llama {
    /// Token embeddings: ids [b, t] (u32) -> [b, t, d] (in training, the gather whose backward
    /// is a scatter-add parallel over ids). With [`Llama::layer_ctx`], [`Llama::layer_forward`]
    /// and [`Llama::final_norm`] this is [`Llama::forward_hidden`] one segment at a time (what
    /// activation checkpointing recomputes).
    /// With a behavior input, each position where a history item's ID ends also gets its
    /// projected behavior vector; items are found within `ids` alone, so a chunk must not
    /// split an ID (beam search never shares a prefix past the first ID token).
    pub fn embed(&self, ids: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = ops::embed::embedding(&self.embed_tokens, ids, mode == Mode::Train)?;
        match self
            .behavior
            .as_ref()
            .map(|b| b.extra(ids))
            .transpose()?
            .flatten()
        {
            Some(e) => {
                let e = e.to_dtype(x.dtype())?;
                x + e
            }
            None => Ok(x),
        }
    }

    /// What every layer of a cache-free forward over `[b, t]` tokens at positions `0..t` needs.
    /// `valid`: optional `[b, t]` real-token marks, as in [`Llama::forward_hidden`].
    pub fn layer_ctx(
        &self,
        b: usize,
        t: usize,
        valid: Option<&Tensor>,
        mode: Mode,
    ) -> Result<LayerCtx> {
        let valid = valid.map(|v| v.to_dtype(DType::U8)).transpose()?;
        self.ctx(b, t, 0, &Positions::Offset(0, t), valid, mode)
    }

    /// Decoder layer `i`: x [b, t, d] -> [b, t, d].
    pub fn layer_forward(&self, i: usize, x: &Tensor, ctx: &LayerCtx) -> Result<Tensor> {
        self.block_forward(i, x, ctx, None)
    }

    /// The final RMSNorm: [b, t, d] -> [b, t, d].
    pub fn final_norm(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.norm.forward(x, mode)
    }

    pub(super) fn ctx(
        &self,
        b: usize,
        t: usize,
        past: usize,
        positions: &Positions,
        key_valid: Option<Tensor>,
        mode: Mode,
    ) -> Result<LayerCtx> {
        let cs = self.rope.tables(positions)?;
        // The fused masked softmax: always on the CPU, only for training on CUDA (inference
        // there keeps candle's kernels).
        let dev = self.device();
        let fused = kernels::causal_softmax_supported(dev, self.dtype())
            && (dev.is_cpu() || mode == Mode::Train);
        let mask = AttnMask {
            additive: if fused {
                None
            } else {
                self.mask(b, t, past, key_valid.as_ref())?
            },
            valid: match key_valid {
                Some(v) => v,
                None => Tensor::ones((b, past + t), DType::U8, self.device())?,
            },
            past,
        };
        let st = State {
            mode,
            adapter: self.adapter_enabled,
        };
        Ok(LayerCtx { cs, mask, st })
    }

    /// One decoder layer, appending to `cache` when given.
    pub(super) fn block_forward(
        &self,
        i: usize,
        x: &Tensor,
        ctx: &LayerCtx,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let layer = self.layers.get(i).ok_or_else(|| {
            candle_core::Error::Msg(format!("layer {i} of a {}-layer model", self.layers.len()))
        })?;
        let c = cache.map(|c| (c, i));
        layer.forward(x, &self.rope, &ctx.cs, &ctx.mask, c, &ctx.st)
    }
}
