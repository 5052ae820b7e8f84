//! Typed configs of the stages that the run directory records and later stages read back
//! (DESIGN "The run directory is one type"): they sit below both `run` and the stages.

pub mod train;
