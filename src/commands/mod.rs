//! The subcommands: each turns its clap arguments into a typed config and calls one library
//! function.

pub mod baselines;
pub mod behavior;
pub mod bench;
pub mod data;
pub mod data_import;
pub mod embed;
pub mod eval;
pub mod index;
pub mod inspect;
pub mod merge;
pub mod paired;
pub mod pipeline;
pub mod ppl;
pub mod recommend;
pub mod text_table;
pub mod train;

use crate::run::model::{AdapterChoice, ModelChoice};

/// The `--model` / `--adapter` pair of the commands that decode with a run's model (`eval`,
/// `recommend`, `ppl`).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Backbone; default: RUN/checkpoints/initial-best (else initial, or their .old); a run
    /// without one is an error (`--model default` evaluates the untrained backbone)
    #[arg(long)]
    pub model: Option<String>,
    /// auto (the run's anneal adapter when it has one), on (it must), off, or a PEFT adapter
    /// directory
    #[arg(long, default_value = "auto")]
    pub adapter: String,
}

impl ModelArgs {
    pub fn choice(&self) -> ModelChoice {
        ModelChoice {
            model: self.model.clone(),
            adapter: self.adapter.parse().unwrap_or(AdapterChoice::Auto),
        }
    }
}
