//! Training (paper 3.4): the initial stage (multi-task instruction tuning with GCT, 3.4.1) and
//! the anneal stage (the switchable LoRA Annealing Adapter on high-grade SRT data, 3.4.2).

pub mod assemble;
pub mod batch;
pub mod budget;
pub mod checkpoint;
pub mod dist;
pub mod distill;
pub mod hooks;
pub mod loss;
pub mod micro;
pub mod mixed;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod report;
pub mod run;
pub mod samples;
pub mod scale;
pub mod schedule;
pub mod settings;
pub mod setup;
pub mod stage;
pub mod step;

pub use stage::{run_stage, StageJob, Start};

// The stage's typed config lives below the run directory that records it (`crate::config`).
pub use crate::config::train::{AnnealSelect, IdInit, ReduceDType, Stage, TrainConfig, Tune};
