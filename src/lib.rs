//! llmbs: the LLM-BS generative recommender (paper "LLM-BS", published as EAGER-LLM, WWW 2025)
//! on candle. One module per pipeline stage; `main.rs` only parses the command line.

pub mod behavior;
pub mod bench;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod embed;
pub mod eval;
pub mod index;
pub mod llm;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod run;
pub mod tasks;
pub mod train;
pub mod util;
