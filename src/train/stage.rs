//! One training stage, from a run directory to its checkpoints and report (paper 3.4.1, the
//! initial stage with GCT; 3.4.2, the Annealing Adapter): what `llmbs train`, `llmbs pipeline`
//! and the tests call. Reruns lose nothing: a stage that exists needs `Start::Resume` (which
//! refuses settings that differ from the saved ones) or `Start::Overwrite`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device};

use super::assemble::{assemble, backbone, Assembled, Backbone};
use super::hooks::{SavedParts, StageHooks};
use super::report::{plot_log, read_log, TrainReport};
use super::run::{fit, Ended, TrainState};
use super::samples::{stage_samples, task_builder, valid_set};
use crate::config::train::{Stage, TrainConfig};
use crate::device::device_name;
use crate::run::{OpenOptions, RunData, RunDir, StageRecord};
use crate::tasks::Prompts;
use crate::util::{atomic_write, write_json};

/// How a stage treats what a run already holds of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Refuses to touch an existing stage.
    Fresh,
    /// Continues the latest checkpoint; the settings must be the saved ones.
    Resume,
    /// Deletes the stage's checkpoints and logs first.
    Overwrite,
}

/// A stage to train.
#[derive(Debug, Clone)]
pub struct StageJob {
    pub config: TrainConfig,
    /// Dataset directory: needed by a fresh initial stage; later ones use the recorded one.
    pub data: Option<PathBuf>,
    /// Initial: the backbone (`default`). Anneal: the run's best initial checkpoint.
    pub model: Option<String>,
    /// Item index; default: the run's only `index/*.index.json` (later stages: the recorded one).
    pub index: Option<PathBuf>,
    /// Prompt file; default: the embedded one (later stages: the recorded prompts).
    pub prompts: Option<PathBuf>,
    pub start: Start,
    /// No progress bar (tests).
    pub quiet: bool,
    /// How the compute dtype was chosen (`--dtype auto`'s probe); None: as given.
    pub dtype_choice: Option<crate::device::DtypeChoice>,
    /// When the whole job must end (a pipeline's `--deadline-minutes`): a stage with a budget
    /// shrinks it to what is left after the beam search that follows it.
    pub deadline: Option<super::budget::Deadline>,
}

/// Settings that only bound one invocation, so a resumed run may change them (memory and
/// communication settings do not change what is trained).
const RUNTIME_KEYS: [&str; 3] = ["max_minutes", "checkpoint_activations", "dp_reduce"];

/// The keys whose values differ between two configs, as `key: saved -> asked`. A saved stage
/// fit to a budget compares with its chosen schedule when `asked` has the same budget.
pub fn config_diff(saved: &TrainConfig, asked: &TrainConfig) -> anyhow::Result<Vec<String>> {
    let asked = &super::budget::adopt_fit(saved, asked);
    let (a, b) = (serde_json::to_value(saved)?, serde_json::to_value(asked)?);
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        anyhow::bail!("train config is not a JSON object");
    };
    Ok(a.iter()
        .filter(|(k, _)| !RUNTIME_KEYS.contains(&k.as_str()))
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} -> {}", b.get(k).cloned().unwrap_or_default()))
        .collect())
}

/// The anneal stage trains the initial model with the softmax it was trained with: after an
/// initial stage with the item-vocabulary loss the anneal stage uses it too (said once).
fn inherit_item_loss(run: &RunDir, job: &StageJob) -> anyhow::Result<StageJob> {
    let mut job = job.clone();
    if job.config.stage == Stage::Anneal && !job.config.item_loss {
        if let Some(rec) = run.record(Stage::Initial)? {
            if rec.train.item_loss {
                eprintln!(
                    "item_loss: on, as the initial stage of {} trained",
                    run.root().display()
                );
                job.config.item_loss = true;
            }
        }
    }
    Ok(job)
}

/// The saved state of the stage's latest complete checkpoint.
pub fn saved_state(run: &RunDir, stage: Stage) -> anyhow::Result<(PathBuf, TrainState)> {
    let ckpt = run.checkpoint_dir(stage);
    let dir = run
        .latest_checkpoint(stage, "state.json")
        .with_context(|| format!("--resume: no complete checkpoint at {}", ckpt.display()))?;
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let state: TrainState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    Ok((dir, state))
}

/// What the run holds of the stage, handled as `job.start` says: the checkpoint to resume
/// from and its state, or nothing.
fn begin(run: &RunDir, job: &StageJob) -> anyhow::Result<Option<(PathBuf, TrainState)>> {
    let stage = job.config.stage;
    let name = stage.name();
    match job.start {
        Start::Resume => {
            let (dir, state) = saved_state(run, stage)?;
            let diff = config_diff(&state.config, &job.config)?;
            if !diff.is_empty() {
                anyhow::bail!(
                    "--resume continues {} as it was configured, but these settings differ: {}. \
                     Drop them to continue, or start over with --overwrite (a longer schedule \
                     is a new run: --model {} in another run directory)",
                    dir.display(),
                    diff.join("; "),
                    run.best_dir(stage).display()
                );
            }
            Ok(Some((dir, state)))
        }
        Start::Overwrite => {
            for d in run.stage_outputs(stage) {
                if d.exists() {
                    std::fs::remove_dir_all(&d)
                        .with_context(|| format!("--overwrite: removing {}", d.display()))?;
                }
            }
            Ok(None)
        }
        Start::Fresh => {
            let there: Vec<String> = run
                .stage_outputs(stage)
                .iter()
                .filter(|d| d.exists())
                .map(|d| d.display().to_string())
                .collect();
            if !there.is_empty() {
                anyhow::bail!(
                    "{} already holds a {name} stage ({}): continue it with --resume, or \
                     replace it with --overwrite",
                    run.root().display(),
                    there.join(", ")
                );
            }
            Ok(None)
        }
    }
}

/// The data the stage trains on: a fresh initial stage defines it; a resumed or anneal stage
/// reads what the initial stage recorded (and refuses other choices).
fn inputs(run: &RunDir, job: &StageJob, resumed: bool) -> anyhow::Result<RunData> {
    let c = &job.config;
    if c.stage == Stage::Initial && !resumed {
        let data = job
            .data
            .as_deref()
            .context("the initial stage needs --data (the dataset directory)")?;
        let index = match &job.index {
            Some(p) => p.clone(),
            None => run.find_index()?,
        };
        let prompts = match &job.prompts {
            Some(p) => Prompts::load(p)?,
            None => Prompts::embedded()?,
        };
        return RunData::load(data, &index, prompts, c.max_history, None);
    }
    let opt = OpenOptions {
        data: job.data.as_deref(),
        index: job.index.as_deref(),
        prompts: job.prompts.as_deref(),
    };
    let d = run.open(&opt)?;
    if d.trained.is_none() {
        anyhow::bail!(
            "{}: no initial stage recorded ({}): train `--stage initial` first",
            run.root().display(),
            run.record_path(Stage::Initial).display()
        );
    }
    if d.max_history != c.max_history {
        anyhow::bail!(
            "max_history {}: the initial stage of {} used {} (both stages and eval share one split)",
            c.max_history,
            run.root().display(),
            d.max_history
        );
    }
    Ok(d)
}

/// The backbone a stage starts from.
fn source(run: &RunDir, job: &StageJob, resume: Option<&Path>) -> anyhow::Result<String> {
    Ok(match (resume, job.config.stage, &job.model) {
        // A resumed initial run reloads its own checkpoint, a complete HF directory.
        (Some(d), Stage::Initial, _) => d.display().to_string(),
        (_, _, Some(m)) => m.clone(),
        (_, Stage::Initial, None) => "default".to_string(),
        (_, Stage::Anneal, None) => run
            .best_checkpoint(Stage::Initial, "model.safetensors")
            .with_context(|| {
                format!(
                    "no initial checkpoint in {}/checkpoints: run `llmbs train --stage initial` first",
                    run.root().display()
                )
            })?
            .display()
            .to_string(),
    })
}

fn check_dtype(device: &Device, dtype: DType) -> anyhow::Result<()> {
    match dtype {
        DType::F32 => Ok(()),
        DType::BF16 if device.is_cpu() && !crate::llm::ops::bf16_matmul_available() => {
            eprintln!(
                "bf16 on a CPU without AVX512-BF16: correct but slower than f32 (--dtype auto chooses)"
            );
            Ok(())
        }
        DType::BF16 => Ok(()),
        other => anyhow::bail!(
            "dtype {other:?}: training computes in f32 or bf16 (f16 would need loss scaling)"
        ),
    }
}

/// Trains one stage into `run` and writes `train/<stage>/{config.json, log.jsonl, curves.svg,
/// report.json, report.md}`. An interrupted stage saves its last full step and returns an
/// error naming `--resume`.
pub fn run_stage(
    run: &RunDir,
    job: &StageJob,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<TrainReport> {
    run_stage_on(run, job, std::slice::from_ref(device), false, dtype)?
        .context("a single-device stage always reports")
}

/// [`run_stage`] data-parallel, one rank per device (`devices[0]` holds rank 0; several
/// machines: `docs/scale.md`). None in a process without global rank 0, which trains and
/// writes nothing.
pub fn run_stage_parallel(
    run: &RunDir,
    job: &StageJob,
    devices: &[Device],
    dtype: DType,
) -> anyhow::Result<Option<TrainReport>> {
    run_stage_on(run, job, devices, true, dtype)
}

fn run_stage_on(
    run: &RunDir,
    job: &StageJob,
    devices: &[Device],
    parallel: bool,
    dtype: DType,
) -> anyhow::Result<Option<TrainReport>> {
    let started = std::time::Instant::now();
    let device = devices.first().context("no device")?;
    check_dtype(device, dtype)?;
    let mut job = inherit_item_loss(run, job)?;
    job.config.validate()?;
    if job.config.budget.is_some() && parallel {
        anyhow::bail!("budget: fit to a time budget on one device (the probe times one rank)");
    }
    if parallel && devices.len() > 1 && job.config.distill.is_some() {
        anyhow::bail!("distill: the teacher runs on rank 0 only; train with one device");
    }
    let prev = begin(run, &job)?;
    if let Some((_, st)) = &prev {
        job.config = super::budget::adopt_fit(&st.config, &job.config);
    }
    let resume_dir = prev.as_ref().map(|p| p.0.clone());
    let d = inputs(run, &job, prev.is_some())?;
    let src = source(run, &job, resume_dir.as_deref())?;
    let c = &job.config;
    let bb = backbone(
        &src,
        &d.tokens,
        &d.ds,
        c,
        prev.is_none().then_some(run),
        device,
        dtype,
    )?;
    if prev.is_none() && c.budget.is_some() {
        let at = (started, job.deadline);
        job.config = super::budget::fit_budget(run, &d, &bb, c, device, dtype, at)?;
    }
    let (job, c) = (&job, &job.config);
    let mut parts = assemble(
        &bb,
        d.ds.items.len(),
        run,
        c,
        resume_dir.as_deref(),
        dtype,
        device,
    )?;
    parts.trainer.step = prev.as_ref().map_or(0, |p| p.1.step);
    if parallel {
        parts
            .trainer
            .enable_data_parallel(devices, c.dp_reduce.dtype())?;
        let world = parts.trainer.dp.as_ref().map_or(1, |p| p.world());
        eprintln!(
            "data parallel: {world} ranks ({} here), gradients summed in {:?}",
            devices.len(),
            c.dp_reduce
        );
        if parts.trainer.dp.as_ref().is_some_and(|p| !p.is_leader()) {
            follow_stage(&d, &bb, parts, c)?;
            return Ok(None);
        }
    }
    run.write_record(&StageRecord {
        data: d.data_dir.clone(),
        index: d.index_path.clone(),
        model: job.model.clone().unwrap_or_else(|| src.clone()),
        prompts: d.prompts.clone(),
        train: c.clone(),
        compute: Some(job.dtype_choice.clone().unwrap_or_else(|| {
            let name = format!("{dtype:?}").to_lowercase();
            crate::device::DtypeChoice {
                asked: name.clone(),
                chosen: name,
                f32_gflops: None,
                bf16_gflops: None,
                bf16_kernel: None,
            }
        })),
    })?;
    let state = prev.map(|p| p.1);
    train_loop(run, job, &d, &bb, parts, state, device, (dtype, started)).map(Some)
}

/// The steps of a process without global rank 0 (another machine's ranks): the plan every
/// process builds alike, no validation, no files.
fn follow_stage(
    d: &RunData,
    bb: &Backbone,
    mut parts: Assembled,
    c: &TrainConfig,
) -> anyhow::Result<()> {
    let samples = stage_samples(d, c);
    let builder = task_builder(d, bb, &samples, c);
    let plan = builder.plan(&c.mix, c.steps * c.batch_size, c.seed)?;
    let stop = crate::util::interrupt_flag()?;
    super::parallel::follow(&mut parts.trainer, &plan, &builder, c.batch_size, stop)
}

/// The state a stage starts from: a resumed checkpoint's (taking this run's step count and
/// config) or a fresh one.
fn start_state(
    prev: Option<TrainState>,
    c: &TrainConfig,
    bb: &Backbone,
    d: &RunData,
) -> TrainState {
    let mut state = prev.unwrap_or_else(|| {
        TrainState::fresh(c, bb.src.describe(), d.index_path.display().to_string())
    });
    state.total_steps = c.steps;
    state.config = c.clone();
    state
}

/// Tasks, validation, hooks and the loop of [`run_stage`], then the report.
#[allow(clippy::too_many_arguments)]
fn train_loop(
    run: &RunDir,
    job: &StageJob,
    d: &RunData,
    bb: &Backbone,
    mut parts: Assembled,
    prev: Option<TrainState>,
    device: &Device,
    (dtype, started): (DType, std::time::Instant),
) -> anyhow::Result<TrainReport> {
    let c = &job.config;
    let stage = c.stage.name();
    let samples = stage_samples(d, c);
    let builder = task_builder(d, bb, &samples, c);
    // Longer than the schedule where a budget's refit may lengthen it; the same first steps.
    let planned = super::schedule::plan_steps(c.steps, c.budget.as_ref());
    let plan = builder.plan(&c.mix, planned * c.batch_size, c.seed)?;
    let valid = valid_set(d, &builder, &bb.items, c)?;
    let out_dir = run.train_dir(c.stage);
    let mut state = start_state(prev, c, bb, d);
    let saved = SavedParts {
        weights: &parts.weights,
        lora: parts.lora.as_ref(),
        gct: parts.gct.as_ref(),
    };
    let mut hooks = StageHooks::new(
        c,
        bb,
        saved,
        valid,
        run.checkpoint_dir(c.stage),
        run.best_dir(c.stage),
    );
    hooks.ranks_dir = Some(out_dir.clone());
    let stop = crate::util::interrupt_flag()?;
    eprintln!(
        "train {stage}: {} trainable parameters ({:?}), {} steps x {} samples (micro-batch {}), {} task samples from {} rows, GCT {}, {} on {}",
        parts.n_params,
        c.tune,
        c.steps,
        c.batch_size,
        c.micro_batch,
        c.steps * c.batch_size,
        samples.len(),
        if builder.con_id.is_some() { "on" } else { "off" },
        bb.src.describe(),
        device_name(device)
    );
    let log_path = out_dir.join("log.jsonl");
    // The probe's steps are not the stage's.
    crate::llm::ops::timing::take();
    let fit_started = std::time::Instant::now();
    let ended = fit(
        &mut parts.trainer,
        &plan,
        &builder,
        c,
        &mut state,
        &mut hooks,
        &log_path,
        stop,
        job.quiet,
    )?;
    parts.trainer.release_data_parallel()?;
    crate::llm::ops::timing::eprint("train", fit_started.elapsed().as_secs_f64());
    let log = read_log(&log_path)?;
    plot_log(&log, &out_dir.join("curves.svg"))?;
    let compute = format!("{dtype:?}").to_lowercase();
    let mut report = TrainReport::new(
        &state,
        &log,
        ended,
        parts.n_params,
        device_name(device),
        compute,
    );
    report.peak_memory = Some(crate::memory::peak(device));
    report.stage_seconds = Some(started.elapsed().as_secs_f64());
    write_json(&out_dir.join("report.json"), &report)?;
    let md = report.markdown();
    atomic_write(&out_dir.join("report.md"), md.as_bytes())?;
    if !job.quiet {
        println!("{md}");
    }
    if ended == Ended::Interrupted {
        anyhow::bail!(
            "interrupted: checkpoint at step {} in {} (continue with --resume)",
            state.step,
            run.checkpoint_dir(c.stage).display()
        );
    }
    Ok(report)
}
