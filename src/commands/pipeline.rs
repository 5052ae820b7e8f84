//! `llmbs pipeline --config NAME|FILE`: flags into a `PipelineJob`, then
//! `pipeline::run_pipeline` (DESIGN "Pipeline").

use std::path::PathBuf;

use crate::device::parse_device;
use crate::pipeline::{apply_ablations, load_config, run_dirs, run_pipeline, PipelineJob, STAGES};
use crate::run::RunDir;

#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// A config file, or the name of an embedded one (beauty-smoke, beauty, beauty-cpu,
    /// beauty-cpu-dense, beauty-cpu-prefix, tiny)
    #[arg(long, default_value = "beauty-smoke")]
    pub config: String,
    /// Override the config's dataset directory
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Override the config's backbone
    #[arg(long)]
    pub model: Option<String>,
    /// Run directory (default: runs/<name>); with --ablation, <run>-<ablations> beside it
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Rerun this stage and every later one, whatever their hashes say
    #[arg(long, value_parser = STAGES)]
    pub from: Option<String>,
    /// Stop after this stage
    #[arg(long, value_parser = STAGES)]
    pub to: Option<String>,
    /// Ablations (paper Table 4, Figure 5): index=random|semantic|behavior|unit, gct=off,
    /// anneal=off; repeatable. Stages they leave unchanged are reused from the base run.
    #[arg(long)]
    pub ablation: Vec<String>,
    /// Device for every stage (auto, cpu, cuda[:N])
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The whole pipeline ends within this many minutes (from --since): the initial stage's
    /// time budget shrinks to what is left after the evaluations' predicted beam search
    #[arg(long)]
    pub deadline_minutes: Option<f64>,
    /// Start of the --deadline-minutes clock, Unix seconds (default: now; scripts/quickstart.sh
    /// passes its own start, so the build counts)
    #[arg(long, requires = "deadline_minutes")]
    pub since: Option<u64>,
}

pub fn run(a: PipelineArgs) -> anyhow::Result<()> {
    let mut c = load_config(&a.config)?;
    if let Some(d) = &a.data {
        c.data = d.display().to_string();
    }
    if let Some(m) = &a.model {
        c.model = m.clone();
    }
    let suffix = apply_ablations(&mut c, &a.ablation)?;
    let (run, base) = run_dirs(&c, a.run.as_deref(), &suffix);
    let mut reuse_from = vec![base];
    reuse_from.extend(c.reuse.as_ref().map(RunDir::new));
    let stage = |s: &Option<String>| {
        s.as_deref()
            .and_then(|f| STAGES.iter().position(|x| *x == f))
    };
    let job = PipelineJob {
        from: stage(&a.from),
        to: stage(&a.to),
        data_overridden: a.data.is_some(),
        device: parse_device(&a.device)?,
        config: c,
        run,
        reuse_from,
        quiet: false,
        deadline: a.deadline_minutes.map(|m| {
            let since = a.since.map_or_else(std::time::SystemTime::now, |s| {
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)
            });
            since + std::time::Duration::from_secs_f64(m.max(0.0) * 60.0)
        }),
    };
    run_pipeline(&job)
}
