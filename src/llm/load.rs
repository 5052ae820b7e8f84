//! Model sources: a Hugging Face directory (safetensors streamed shard by shard, tensor by
//! tensor), a Hub repo id (hf-hub), a llama GGUF file, or a synthetic shape (`synthetic:NAME`).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use super::config::LlamaConfig;
use super::model::Llama;
use super::{gguf, synthetic, tokenizer, LlmError};

/// File name of the default model inside the model cache.
pub const DEFAULT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where a backbone comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    HfDir(PathBuf),
    Hub(String),
    Gguf(PathBuf),
    /// Random weights of a known shape (`llm::synthetic::NAMES`), made on the device.
    Synthetic(String),
}

/// The model cache folder: `$LLMBS_CACHE` or `~/.cache/llmbs`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LLMBS_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("llmbs")
}

/// Path of the default model (SmolLM2-135M-Instruct Q4_1 GGUF, from `scripts/fetch-model.sh`).
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_GGUF)
}

impl ModelSource {
    /// `default` -> the fetched SmolLM2 GGUF; an existing `.gguf` file; an existing directory;
    /// otherwise an `org/name` Hub id.
    pub fn parse(s: &str) -> Result<Self, LlmError> {
        if let Some(name) = s.strip_prefix("synthetic:") {
            synthetic::config(name)?;
            return Ok(Self::Synthetic(name.to_string()));
        }
        if s == "default" {
            let p = default_model_path();
            if !p.is_file() {
                return Err(LlmError::Io(format!(
                    "default model {} not found: run scripts/fetch-model.sh first (or pass --model)",
                    p.display()
                )));
            }
            return Ok(Self::Gguf(p));
        }
        let p = Path::new(s);
        if p.is_file() {
            return if s.ends_with(".gguf") {
                Ok(Self::Gguf(p.to_path_buf()))
            } else {
                Err(LlmError::Unsupported(format!(
                    "{s}: a model file must be .gguf; for safetensors pass the model's directory"
                )))
            };
        }
        if p.is_dir() {
            return Ok(Self::HfDir(p.to_path_buf()));
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() == 2 && parts.iter().all(|x| !x.is_empty()) && !s.ends_with(".gguf") {
            return Ok(Self::Hub(s.to_string()));
        }
        Err(LlmError::Io(format!(
            "{s}: no such model file or directory (and not an 'org/name' Hub id)"
        )))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::HfDir(p) => format!("hf-dir:{}", p.display()),
            Self::Hub(id) => format!("hub:{id}"),
            Self::Gguf(p) => format!("gguf:{}", p.display()),
            Self::Synthetic(n) => format!("synthetic:{n}"),
        }
    }
}

/// A backbone's config, weights (HF names) and tokenizer, before the model is built; later
/// stages extend the vocabulary here.
pub struct Loaded {
    pub cfg: LlamaConfig,
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
}

impl Loaded {
    /// Every weight in `dtype`.
    pub fn load(src: &ModelSource, device: &Device, dtype: DType) -> Result<Self, LlmError> {
        Self::load_with(src, device, dtype, &|_| false)
    }

    /// Weights for which `keep_f32(name)` holds in f32 (what will train), the others in
    /// `dtype` (frozen weights never exist in f32 when `dtype` is bf16). Safetensors shards are
    /// read one tensor at a time, so host memory holds at most one tensor of the file.
    pub fn load_with(
        src: &ModelSource,
        device: &Device,
        dtype: DType,
        keep_f32: &dyn Fn(&str) -> bool,
    ) -> Result<Self, LlmError> {
        let dtype_of = |name: &str| if keep_f32(name) { DType::F32 } else { dtype };
        match src {
            ModelSource::Gguf(p) => {
                // GGUF models are small and quantized: dequantize in f32 (the trainable
                // weights' precision), then cast the rest.
                let (cfg, mut weights, vocab) = gguf::load_gguf(p, device, DType::F32)?;
                for (name, t) in weights.iter_mut() {
                    *t = t.to_dtype(dtype_of(name))?;
                }
                let tokenizer = tokenizer::from_gguf_vocab(vocab, &p.display().to_string())?;
                Ok(Self {
                    cfg,
                    weights,
                    tokenizer,
                    source: src.clone(),
                })
            }
            ModelSource::HfDir(d) => {
                let files = HfFiles::in_dir(d)?;
                Self::from_files(&files, device, &dtype_of, src)
            }
            ModelSource::Hub(id) => {
                let files = HfFiles::from_hub(id)?;
                Self::from_files(&files, device, &dtype_of, src)
            }
            ModelSource::Synthetic(name) => {
                let cfg = synthetic::config(name)?;
                let weights = synthetic::weights(&cfg, synthetic::SEED, device, &dtype_of)?;
                Ok(Self {
                    tokenizer: synthetic::tokenizer(cfg.vocab_size)?,
                    cfg,
                    weights,
                    source: src.clone(),
                })
            }
        }
    }

    fn from_files(
        f: &HfFiles,
        device: &Device,
        dtype_of: &dyn Fn(&str) -> DType,
        src: &ModelSource,
    ) -> Result<Self, LlmError> {
        let text = std::fs::read_to_string(&f.config)
            .map_err(|e| LlmError::Io(format!("{}: {e}", f.config.display())))?;
        let mut raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LlmError::Format(format!("{}: {e}", f.config.display())))?;
        // transformers 5 writes `rope_parameters.rope_theta` instead of a top-level `rope_theta`;
        // without this the default theta would be used silently.
        let nested = raw
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .cloned();
        if let (Some(theta), Some(obj)) = (nested, raw.as_object_mut()) {
            obj.entry("rope_theta").or_insert(theta);
        }
        let cfg: LlamaConfig = serde_json::from_value(raw)
            .map_err(|e| LlmError::Format(format!("{}: {e}", f.config.display())))?;
        let tokenizer = Tokenizer::from_file(&f.tokenizer)
            .map_err(|e| LlmError::Format(format!("{}: {e}", f.tokenizer.display())))?;
        let mut weights = HashMap::new();
        for shard in &f.weights {
            read_safetensors(shard, device, dtype_of, &mut weights)?;
        }
        Ok(Self {
            cfg,
            weights,
            tokenizer,
            source: src.clone(),
        })
    }

    /// Keeps the first `k` decoder layers (then the final norm and the head), the pruning of
    /// SLMRec (ICLR 2025): the weights of later layers are dropped and the config says
    /// `num_hidden_layers = k`, so a checkpoint saved from it is a `k`-layer Hugging Face model.
    /// `k` equal to the layer count changes nothing.
    pub fn keep_layers(&mut self, k: usize) -> Result<(), LlmError> {
        let n = self.cfg.num_hidden_layers;
        if k == 0 || k > n {
            return Err(LlmError::Format(format!(
                "layers {k}: {} has {n} decoder layers (keep 1..={n})",
                self.source.describe()
            )));
        }
        self.weights.retain(|name, _| {
            match name
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => i < k,
                None => true,
            }
        });
        self.cfg.num_hidden_layers = k;
        Ok(())
    }

    /// Builds the decoder from the weights (a `VarBuilder` over the tensor map).
    pub fn build(&self, device: &Device) -> candle_core::Result<Llama> {
        let dtype = self
            .weights
            .get("model.embed_tokens.weight")
            .map(|t| t.dtype())
            .unwrap_or(DType::F32);
        let vb = VarBuilder::from_tensors(self.weights.clone(), dtype, device);
        Llama::new(&self.cfg, vb)
    }
}

/// One tensor's entry in a safetensors header.
#[derive(serde::Deserialize)]
struct StEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn st_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// Reads the tensors of one safetensors file into `out`, one at a time in file order (header,
/// then a seek and a read per tensor): host memory never holds more than one tensor, unlike
/// reading or mapping the whole shard. Each tensor goes to `device` in `dtype_of(name)`.
pub fn read_safetensors(
    path: &Path,
    device: &Device,
    dtype_of: &dyn Fn(&str) -> DType,
    out: &mut HashMap<String, Tensor>,
) -> Result<(), LlmError> {
    let at = path.display();
    let io = |e: std::io::Error| LlmError::Io(format!("{at}: {e}"));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 {
        return Err(LlmError::Format(format!(
            "{at}: header of {n} bytes: not safetensors"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let mut raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| LlmError::Format(format!("{at}: safetensors header: {e}")))?;
    raw.remove("__metadata__");
    let mut entries: Vec<(String, StEntry)> = raw
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_value(v)
                .map(|e| (k.clone(), e))
                .map_err(|e| LlmError::Format(format!("{at}: {k}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|(_, e)| e.data_offsets[0]);
    let mut buf = Vec::new();
    for (name, e) in entries {
        let bad = |why: String| LlmError::Format(format!("{at}: {name}: {why}"));
        let dt = st_dtype(&e.dtype).ok_or_else(|| bad(format!("dtype {} unsupported", e.dtype)))?;
        let [lo, hi] = e.data_offsets;
        let want = e.shape.iter().product::<usize>() * dt.size_in_bytes();
        if hi < lo || (hi - lo) as usize != want {
            return Err(bad(format!(
                "{} bytes for shape {:?} {}",
                hi.saturating_sub(lo),
                e.shape,
                e.dtype
            )));
        }
        file.seek(SeekFrom::Start(8 + n + lo)).map_err(io)?;
        buf.resize(want, 0);
        file.read_exact(&mut buf).map_err(io)?;
        let t = Tensor::from_raw_buffer(&buf, dt, &e.shape, &Device::Cpu)
            .and_then(|t| t.to_device(device))
            // Integer tensors (the behavior input's item IDs) keep their dtype.
            .and_then(|t| match dt.is_float() {
                true => t.to_dtype(dtype_of(&name)),
                false => Ok(t),
            })
            .map_err(|e| bad(e.to_string()))?;
        out.insert(name, t);
    }
    Ok(())
}

/// The files of a Hugging Face model: config, tokenizer and one or more safetensors shards.
struct HfFiles {
    config: PathBuf,
    tokenizer: PathBuf,
    weights: Vec<PathBuf>,
}

fn shard_names(index: &Path) -> Result<Vec<String>, LlmError> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| LlmError::Io(format!("{}: {e}", index.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LlmError::Format(format!("{}: {e}", index.display())))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LlmError::Format(format!("{}: no 'weight_map' object", index.display())))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

impl HfFiles {
    fn in_dir(d: &Path) -> Result<Self, LlmError> {
        let need = |name: &str| {
            let p = d.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LlmError::Io(format!("{}: missing {name}", d.display())))
            }
        };
        let config = need("config.json")?;
        let tokenizer = need("tokenizer.json")?;
        let single = d.join("model.safetensors");
        let index = d.join("model.safetensors.index.json");
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_names(&index)?
                .into_iter()
                .map(|n| d.join(n))
                .collect()
        } else {
            return Err(LlmError::Io(format!(
                "{}: neither model.safetensors nor model.safetensors.index.json",
                d.display()
            )));
        };
        Ok(Self {
            config,
            tokenizer,
            weights,
        })
    }

    fn from_hub(id: &str) -> Result<Self, LlmError> {
        let hub = |e: hf_hub::api::sync::ApiError| {
            LlmError::Io(format!(
                "Hugging Face Hub '{id}': {e} (no network? download the model elsewhere and pass its directory)"
            ))
        };
        let api = hf_hub::api::sync::Api::new().map_err(hub)?;
        let repo = api.model(id.to_string());
        let config = repo.get("config.json").map_err(hub)?;
        let tokenizer = repo.get("tokenizer.json").map_err(hub)?;
        let weights = match repo.get("model.safetensors") {
            Ok(p) => vec![p],
            Err(_) => {
                let index = repo.get("model.safetensors.index.json").map_err(hub)?;
                let mut v = Vec::new();
                for n in shard_names(&index)? {
                    v.push(repo.get(&n).map_err(hub)?);
                }
                v
            }
        };
        Ok(Self {
            config,
            tokenizer,
            weights,
        })
    }
}

#[cfg(test)]
mod tests;
