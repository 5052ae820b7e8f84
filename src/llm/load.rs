//! Model sources: a Hugging Face directory, a Hub repo id (hf-hub), or a llama GGUF file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use super::config::LlamaConfig;
use super::model::Llama;
use super::{gguf, tokenizer, LlmError};

/// File name of the default model inside the model cache.
pub const DEFAULT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where a backbone comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    HfDir(PathBuf),
    Hub(String),
    Gguf(PathBuf),
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
    pub fn load(src: &ModelSource, device: &Device, dtype: DType) -> Result<Self, LlmError> {
        match src {
            ModelSource::Gguf(p) => {
                let (cfg, weights, vocab) = gguf::load_gguf(p, device, dtype)?;
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
                Self::from_files(&files, device, dtype, src)
            }
            ModelSource::Hub(id) => {
                let files = HfFiles::from_hub(id)?;
                Self::from_files(&files, device, dtype, src)
            }
        }
    }

    fn from_files(
        f: &HfFiles,
        device: &Device,
        dtype: DType,
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
            let part = candle_core::safetensors::load(shard, device)
                .map_err(|e| LlmError::Format(format!("{}: {e}", shard.display())))?;
            for (k, v) in part {
                let v = v
                    .to_dtype(dtype)
                    .map_err(|e| LlmError::Format(format!("{}: {k}: {e}", shard.display())))?;
                weights.insert(k, v);
            }
        }
        Ok(Self {
            cfg,
            weights,
            tokenizer,
            source: src.clone(),
        })
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
