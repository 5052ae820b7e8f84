//! `llmbs baselines`: most popular, popular-in-the-newest-item's-cluster and the run's SASRec
//! on a run's own split and user sample, the rows every evaluation is compared with.

use std::path::PathBuf;

use crate::eval::baselines::{run_baselines, sasrec_path, BaselineJob};
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
    /// A trained SASRec (its `model.safetensors` with `report.json` beside it, or their
    /// directory) ranked as another baseline row; default: the run's own
    /// `RUN/behavior/sasrec/model.safetensors` when there
    #[arg(long)]
    pub sasrec: Option<PathBuf>,
}

pub fn run(a: BaselinesArgs) -> anyhow::Result<()> {
    let run = RunDir::new(&a.run);
    let d = run.open(&OpenOptions {
        data: a.data.as_deref(),
        ..Default::default()
    })?;
    let sasrec = sasrec_path(&run, a.sasrec.as_deref());
    let job = BaselineJob {
        split: a.split,
        limit: a.limit,
        seed: a.seed,
        against: a.against.as_deref(),
        sasrec: sasrec.as_deref(),
    };
    let r = run_baselines(&run, &d, &job)?;
    println!("{}", r.markdown());
    Ok(())
}
