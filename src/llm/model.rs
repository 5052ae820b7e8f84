//! The Llama decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU), our own so that it
//! gives every position's hidden state, logits only where asked, a batched KV cache and
//! LoRA hooks (DESIGN "Backbone"; paper Eq. 2 uses its hidden states, 3.4 trains it).

mod attention;
mod segments;
mod weights;

use attention::Attention;
pub use segments::LayerCtx;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::behavior_input::BehaviorInput;
use super::cache::KvCache;
use super::config::LlamaConfig;
use super::kernels;
use super::lora::{LoraConfig, Proj};
use super::ops;

/// Which kernels a forward uses: `Train` uses ops with a backward pass (ours in `ops` on the
/// CPU, composed candle ops elsewhere: candle's fused softmax, RMSNorm and RoPE kernels have
/// none); `Infer` may use candle's fused inference kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Infer,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Infer => candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32),
            Mode::Train => ops::norm::rms_norm(x, &self.weight, self.eps),
        }
    }
}

/// RoPE tables for the HF ("rotate half") layout: cos/sin `[max_pos, head_dim / 2]`.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &LlamaConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let hd = cfg.head_dim();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, hd / 2), dev)?;
        let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = pos.matmul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// cos/sin for the given positions: `[t, hd/2]` for a shared offset, `[b, t, hd/2]` per row.
    fn tables(&self, pos: &Positions) -> Result<(Tensor, Tensor)> {
        match pos {
            Positions::Offset(o, t) => {
                Ok((self.cos.narrow(0, *o, *t)?, self.sin.narrow(0, *o, *t)?))
            }
            Positions::PerRow(p) => {
                let (b, t) = p.dims2()?;
                let flat = p.flatten_all()?;
                let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, ()))?;
                let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, ()))?;
                Ok((cos, sin))
            }
        }
    }

    /// x: [b, h, t, hd] -> [b, h, t, hd]
    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Infer => candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin),
            Mode::Train => {
                if let Some(y) = ops::rope::rope(x, cos, sin)? {
                    return Ok(y);
                }
                // rope_slow composed by hand so per-row positions ([b, t, hd/2]) work too.
                let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
                let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
                let (cos, sin) = if cos.rank() == 2 {
                    (
                        cos.unsqueeze(0)?.unsqueeze(0)?,
                        sin.unsqueeze(0)?.unsqueeze(0)?,
                    )
                } else {
                    (cos.unsqueeze(1)?, sin.unsqueeze(1)?)
                };
                let half = x.dim(D::Minus1)? / 2;
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?
            }
        }
    }
}

/// Token positions of a forward chunk.
#[derive(Debug, Clone)]
pub enum Positions {
    /// Every row starts at the same position: (offset, chunk length).
    Offset(usize, usize),
    /// Per-row positions `[b, t]` (u32), e.g. decoding after right-padded prompts.
    PerRow(Tensor),
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

impl Mlp {
    fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Proj::new(d, i, vb.pp("gate_proj"))?,
            up_proj: Proj::new(d, i, vb.pp("up_proj"))?,
            down_proj: Proj::new(i, d, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor, st: &State) -> Result<Tensor> {
        let projs = [&self.gate_proj, &self.up_proj, &self.down_proj];
        if st.train() && !(st.adapter && projs.iter().any(|p| p.has_lora())) {
            let [g, u, d] = projs.map(|p| p.weight());
            if let Some(y) = ops::mlp::mlp(x, g, u, d)? {
                return Ok(y);
            }
        }
        let g = self.gate_proj.forward_with(x, st.adapter, st.train())?;
        let u = self.up_proj.forward_with(x, st.adapter, st.train())?;
        // On CUDA our kernels serve training only (inference keeps candle's).
        let y = match st.train() || g.device().is_cpu() {
            true => kernels::silu_mul(&g, &u)?,
            false => (candle_nn::ops::silu(&g)? * &u)?,
        };
        self.down_proj.forward_with(&y, st.adapter, st.train())
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// One decoder layer, x [b, t, d] -> [b, t, d]. Each half (norm, sub-layer, residual) is
    /// a single fused op where one applies (llm::ops), else composed.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        cs: &(Tensor, Tensor),
        mask: &AttnMask,
        cache: Option<(&mut KvCache, usize)>,
        st: &State,
    ) -> Result<Tensor> {
        let (ln1, ln2) = (&self.input_layernorm, &self.post_attention_layernorm);
        // Training only: inference keeps its kernels, so a model gives the same logits bit for
        // bit whether its weights are variables or tensors, with or without a zero adapter.
        let fused = match st.train() && cache.is_none() && mask.past == 0 {
            true => self.self_attn.sublayer(x, ln1, cs, mask, st)?,
            false => None,
        };
        let x = match fused {
            Some(x) => x,
            None => {
                let h = ln1.forward(x, st.mode)?;
                let h = self.self_attn.forward(&h, rope, cs, mask, cache, st)?;
                kernels::add(x, &h)?
            }
        };
        let projs = [&self.mlp.gate_proj, &self.mlp.up_proj, &self.mlp.down_proj];
        if st.train() && !(st.adapter && projs.iter().any(|p| p.has_lora())) {
            let w = projs.map(|p| p.weight());
            if let Some(y) = ops::mlp::mlp_sublayer(&x, (&ln2.weight, ln2.eps), w)? {
                return Ok(y);
            }
        }
        let h = ln2.forward(&x, st.mode)?;
        let h = self.mlp.forward(&h, st)?;
        kernels::add(&x, &h)
    }
}

struct State {
    mode: Mode,
    adapter: bool,
}

/// What a chunk's attention may see: `past` cached positions then `t` new ones (causal), keys
/// marked in `valid` ([b, past + t], u8); `additive` is the same as a `[b|1, 1, t, kv]` bias for
/// devices without the fused kernel.
struct AttnMask {
    additive: Option<Tensor>,
    valid: Tensor,
    past: usize,
}

impl State {
    fn train(&self) -> bool {
        self.mode == Mode::Train
    }
}

/// A Llama-family decoder. `vb` names follow the Hugging Face checkpoint keys.
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor, // [vocab, d]
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor, // [vocab, d], the embedding itself when tied
    rope: Rope,
    adapter_enabled: bool,
    /// Behavior vectors added at the end of each history item's ID (`llm::behavior_input`).
    behavior: Option<BehaviorInput>,
}

impl Llama {
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let embed_tokens = vb
            .pp("model.embed_tokens")
            .get((cfg.vocab_size, d), "weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let vbl = vb.pp("model.layers");
        for i in 0..cfg.num_hidden_layers {
            let vb = vbl.pp(i);
            layers.push(Block {
                input_layernorm: RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
                self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
                post_attention_layernorm: RmsNorm::new(
                    d,
                    cfg.rms_norm_eps,
                    vb.pp("post_attention_layernorm"),
                )?,
                mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            });
        }
        let norm = RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            vb.pp("lm_head").get((cfg.vocab_size, d), "weight")?
        };
        let rope = Rope::new(cfg, vb.dtype(), vb.device())?;
        let behavior = BehaviorInput::from_vb(&vb)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            adapter_enabled: true,
            behavior,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The behavior input, when the model has one (`llm::behavior_input`).
    pub fn behavior_input(&self) -> Option<&BehaviorInput> {
        self.behavior.as_ref()
    }

    pub fn embed_weight(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// The output head [vocab, d] (the embedding itself when tied).
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// Attaches LoRA adapters (PEFT naming under `vb`: `model.layers.{i}.self_attn.q_proj.lora_A.weight`
    /// etc.) to the projections named in `cfg.target_modules`.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, vb: VarBuilder) -> Result<()> {
        let vbl = vb.pp("model.layers");
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let vb = vbl.pp(i);
            for (group, name, proj) in layer.projs_mut() {
                if cfg.target_modules.iter().any(|m| m == name) {
                    proj.attach_lora(cfg, vb.pp(group).pp(name))?;
                }
            }
        }
        Ok(())
    }

    /// Switches the LoRA branches on or off (the paper's switchable Annealing Adapter).
    pub fn set_adapter_enabled(&mut self, on: bool) {
        self.adapter_enabled = on;
    }

    /// Seeds every adapter's dropout (each projection from its own stream of `seed`).
    pub fn seed_dropout(&mut self, seed: u64) {
        for i in 0..self.layers.len() {
            self.seed_layer_dropout(i, seed);
        }
    }

    /// Seeds layer `i`'s adapters as [`Llama::seed_dropout`] with `seed` would: recomputing
    /// a layer after reseeding it draws the same dropout masks again (activation checkpointing).
    pub fn seed_layer_dropout(&mut self, i: usize, seed: u64) {
        if let Some(layer) = self.layers.get_mut(i) {
            for (j, (_, _, proj)) in layer.projs_mut().into_iter().enumerate() {
                let k = (i * 8 + j) as u64;
                proj.seed_dropout(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            }
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Final hidden states (after the last RMSNorm) of every position.
    ///
    /// ids: [b, t] (u32). `positions` default to `0..t` (or continue after `cache`).
    /// `valid`: optional `[b, t]` (u8) marking real tokens; padded keys are never attended to.
    /// Without `valid`, right padding is still harmless to real positions (causality), which is
    /// what training and embedding rely on. Returns [b, t, d].
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        positions: Option<Positions>,
        valid: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let positions = positions.unwrap_or(Positions::Offset(past, t));
        let key_valid = match (&mut cache, valid) {
            (Some(c), v) => {
                let v = match v {
                    Some(v) => v.to_dtype(DType::U8)?,
                    None => Tensor::ones((b, t), DType::U8, ids.device())?,
                };
                let all = match &c.valid {
                    Some(prev) => Tensor::cat(&[prev, &v], 1)?,
                    None => v,
                };
                c.valid = Some(all.clone());
                Some(all)
            }
            (None, v) => v.map(|v| v.to_dtype(DType::U8)).transpose()?,
        };
        let ctx = self.ctx(b, t, past, &positions, key_valid, mode)?;
        let mut x = self.embed(ids, mode)?; // [b, t, d]
        for i in 0..self.layers.len() {
            x = self.block_forward(i, &x, &ctx, cache.as_deref_mut())?;
        }
        self.final_norm(&x, mode)
    }

    /// Additive mask `[b|1, 1, t, past + t]`: causal within the chunk, all of the past visible,
    /// invalid keys hidden. `None` when nothing needs masking (a single new token, no padding).
    fn mask(
        &self,
        b: usize,
        t: usize,
        past: usize,
        valid: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let dev = self.device();
        let kv = past + t;
        let neg = f32::NEG_INFINITY;
        let causal = if t > 1 {
            let m: Vec<f32> = (0..t)
                .flat_map(|i| (0..kv).map(move |j| if j > past + i { neg } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (1, 1, t, kv), dev)?)
        } else {
            None
        };
        let pad = match valid {
            Some(v) => {
                let zeros = Tensor::zeros((b, kv), DType::F32, dev)?;
                let negs = Tensor::full(neg, (b, kv), dev)?;
                Some(v.where_cond(&zeros, &negs)?.reshape((b, 1, 1, kv))?)
            }
            None => None,
        };
        let m = match (causal, pad) {
            (Some(c), Some(p)) => Some(c.broadcast_add(&p)?),
            (Some(c), None) => Some(c),
            (None, Some(p)) => Some(p),
            (None, None) => None,
        };
        m.map(|m| m.to_dtype(self.dtype())).transpose()
    }

    /// hidden: [n, d] -> logits [n, vocab] (f32). Only the rows asked for pay for the head.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        hidden.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)
    }

    /// Hidden states of the given rows: `hidden` [b, t, d], `(row, pos)` pairs -> [n, d].
    pub fn gather(hidden: &Tensor, at: &[(usize, usize)]) -> Result<Tensor> {
        let (b, t, d) = hidden.dims3()?;
        let flat = hidden.reshape((b * t, d))?;
        let idx: Vec<u32> = at.iter().map(|&(r, p)| (r * t + p) as u32).collect();
        let idx = Tensor::from_vec(idx, at.len(), hidden.device())?;
        flat.index_select(&idx, 0)
    }

    /// Last-position logits of each row given its real length: [b, vocab].
    pub fn last_logits(&self, hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let at: Vec<(usize, usize)> = lengths
            .iter()
            .enumerate()
            .map(|(r, &l)| (r, l.saturating_sub(1)))
            .collect();
        self.logits(&Self::gather(hidden, &at)?)
    }

    /// All-position logits [b, t, vocab] (tests and parity checks).
    pub fn forward_logits(&self, ids: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.forward_hidden(ids, None, None, None, mode)?;
        let (b, t, d) = h.dims3()?;
        self.logits(&h.reshape((b * t, d))?)?.reshape((b, t, ()))
    }
}
