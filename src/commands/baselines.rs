//! `llmbs baselines`: most popular and popular-in-the-newest-item's-cluster on a run's own split
//! and user sample, the rows every evaluation is compared with.

use std::path::PathBuf;

use crate::eval::baselines::run_baselines;
use crate::eval::run::SplitName;
use crate::run::{OpenOptions, RunDir};

#[derive(clap::Args, Debug)]
pub struct BaselinesArgs {
    /// Run directory: its recorded data, split and index; reports go to RUN/eval/
    #[arg(long)]
    pub run: PathBuf,
    /// Dataset directory, only for a run that has not trained
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = SplitName::Test)]
    pub split: SplitName,
    /// The seeded sample of N users `llmbs eval --limit N --seed S` ranks (all users without it)
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// An evaluation of the same users (`RUN/eval/<label>.predictions.jsonl`): adds the model
    /// minus each baseline, user by user, with paired standard errors
    #[arg(long)]
    pub against: Option<PathBuf>,
}

pub fn run(a: BaselinesArgs) -> anyhow::Result<()> {
    let run = RunDir::new(&a.run);
    let d = run.open(&OpenOptions {
        data: a.data.as_deref(),
        ..Default::default()
    })?;
    let r = run_baselines(&run, &d, a.split, a.limit, a.seed, a.against.as_deref())?;
    println!("{}", r.markdown());
    Ok(())
}
