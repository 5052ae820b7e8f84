//! The subcommands: each has its clap arguments and a `run` that reads and writes files.

pub mod behavior;
pub mod bench;
pub mod data;
pub mod embed;
pub mod eval;
pub mod index;
pub mod inspect;
