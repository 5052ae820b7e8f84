//! The subcommands: each has its clap arguments and a `run` that reads and writes files.

pub mod behavior;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod embed;
pub mod eval;
pub mod index;
pub mod inspect;
pub mod merge;
pub mod pipeline;
pub mod ppl;
pub mod recommend;
pub mod train;
