//! Grouped-query attention of the decoder: the fused CPU sub-layer (llm::ops::attn) where it
//! applies, else the projections, RoPE, the masked softmax and the two attention matmuls.

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use super::{AttnMask, Mode, RmsNorm, Rope, State};
use crate::llm::cache::KvCache;
use crate::llm::config::LlamaConfig;
use crate::llm::kernels;
use crate::llm::lora::Proj;
use crate::llm::ops;

#[derive(Debug, Clone)]
pub(super) struct Attention {
    pub(super) q_proj: Proj,
    pub(super) k_proj: Proj,
    pub(super) v_proj: Proj,
    pub(super) o_proj: Proj,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Attention {
    pub(super) fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let hd = cfg.head_dim();
        let (h, kv) = (cfg.num_attention_heads, cfg.num_kv_heads());
        Ok(Self {
            q_proj: Proj::new(d, h * hd, vb.pp("q_proj"))?,
            k_proj: Proj::new(d, kv * hd, vb.pp("k_proj"))?,
            v_proj: Proj::new(d, kv * hd, vb.pp("v_proj"))?,
            o_proj: Proj::new(h * hd, d, vb.pp("o_proj"))?,
            n_heads: h,
            n_kv: kv,
            head_dim: hd,
        })
    }

    /// `x + o(attention(..(norm(x))))` as one fused op (no cache, no active adapter), or None.
    pub(super) fn sublayer(
        &self,
        x: &Tensor,
        norm: &RmsNorm,
        cs: &(Tensor, Tensor),
        mask: &AttnMask,
        st: &State,
    ) -> Result<Option<Tensor>> {
        let projs = [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj];
        if st.adapter && projs.iter().any(|p| p.has_lora()) {
            return Ok(None);
        }
        let shape = ops::attn::AttnShape {
            n_heads: self.n_heads,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
        };
        let (w, n) = (projs.map(|p| p.weight()), (&norm.weight, norm.eps));
        ops::attn::attention_sublayer(x, n, w, (&cs.0, &cs.1), Some(&mask.valid), shape)
    }

    /// x: [b, t, d]; mask: additive `[b|1, 1, t, kv]`; returns [b, t, d].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        cs: &(Tensor, Tensor),
        mask: &AttnMask,
        cache: Option<(&mut KvCache, usize)>,
        st: &State,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        let shape = ops::attn::AttnShape {
            n_heads: h,
            n_kv: kv,
            head_dim: hd,
        };
        let projs = [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj];
        let plain = !(st.adapter && projs.iter().any(|p| p.has_lora()));
        // The fused ops serve training only (see Block::forward).
        let no_cache = st.train() && cache.is_none() && mask.past == 0;
        let csr = (&cs.0, &cs.1);
        if no_cache && plain {
            let w = projs.map(|p| p.weight());
            if let Some(y) = ops::attn::attention_block(x, w, csr, Some(&mask.valid), shape)? {
                return Ok(y);
            }
        }
        let q = self.q_proj.forward_with(x, st.adapter, st.train())?;
        let k = self.k_proj.forward_with(x, st.adapter, st.train())?;
        let v = self.v_proj.forward_with(x, st.adapter, st.train())?;
        if no_cache {
            if let Some(y) = ops::attn::attention(&q, &k, &v, csr, Some(&mask.valid), shape)? {
                return self.o_proj.forward_with(&y, st.adapter, st.train());
            }
        }
        let q = q.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, t, kv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, t, kv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = rope.apply(&q, &cs.0, &cs.1, st.mode)?;
        let k = rope.apply(&k, &cs.0, &cs.1, st.mode)?;
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let kv_len = k.dim(2)?;
        // GQA without copying K/V: the n_rep query heads of one KV head are adjacent, so fold
        // them into the row dimension of one matmul per KV head.
        let n_rep = h / kv;
        let q = q.reshape((b, kv, n_rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = q.matmul(&k.t()?)?; // [b, kv, n_rep*t, kv_len]
        let fused = match &mask.additive {
            None => kernels::causal_softmax(&att, scale, t, mask.past, &mask.valid)?,
            Some(_) => None,
        };
        let att = match fused {
            Some(p) => p,
            None => {
                let att = (att * scale)?;
                let att = match &mask.additive {
                    Some(m) => att
                        .reshape((b, kv, n_rep, t, kv_len))?
                        .broadcast_add(&m.unsqueeze(1)?)?
                        .reshape((b, kv, n_rep * t, kv_len))?,
                    None => att,
                };
                match st.mode {
                    Mode::Infer => candle_nn::ops::softmax_last_dim(&att)?,
                    Mode::Train => candle_nn::ops::softmax(&att, D::Minus1)?,
                }
            }
        };
        let y = att.matmul(&v)?; // [b, kv, n_rep*t, hd]
        let y = y
            .reshape((b, h, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, h * hd))?;
        self.o_proj.forward_with(&y, st.adapter, st.train())
    }
}
