//! The LLM backbone: a Llama decoder in candle, its loaders (HF directory, Hub, GGUF), its
//! tokenizer, KV cache and LoRA hooks (DESIGN "Backbone").

pub mod behavior_input;
pub mod cache;
pub mod config;
pub mod gguf;
pub mod init;
pub mod kernels;
pub mod load;
pub mod lora;
pub mod model;
pub mod ops;
pub mod peft;
pub mod save;
pub mod switch;
pub mod synthetic;
pub mod tokenizer;
pub mod vocab;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use load::{Loaded, ModelSource};
pub use lora::LoraConfig;
pub use model::{LayerCtx, Llama, Mode, Positions};

/// Errors of the backbone stage; each names the file (and key) it is about.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
