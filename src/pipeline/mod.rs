//! `llmbs pipeline`: data -> embed -> behavior -> index -> train initial -> train anneal ->
//! eval into one run directory (DESIGN "Pipeline"), each stage through the same library call
//! its command makes. Each stage records a hash of its typed settings and of everything
//! upstream in `RUN/pipeline/<stage>.json`; a stage whose hash matches and whose outputs exist
//! is skipped (or linked from another run that has it), and a stage that reruns reruns
//! everything after it.

pub mod config;
mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

pub use config::{apply_ablations, load_config, PipelineConfig};

use crate::data::{Dataset, SplitConfig, Stats};
use crate::run::RunDir;
use crate::train::{StageJob, Start};
use crate::util::write_json;

/// Stage names, in order.
pub const STAGES: [&str; 8] = [
    "data",
    "embed",
    "behavior",
    "index",
    "teacher",
    "train_initial",
    "train_anneal",
    "eval",
];

/// A pipeline to run.
pub struct PipelineJob {
    pub config: PipelineConfig,
    /// The run directory.
    pub run: RunDir,
    /// Other runs whose finished stages may be linked (an ablation's base run, `reuse`).
    pub reuse_from: Vec<RunDir>,
    /// Rerun this stage (index into `STAGES`) and every later one.
    pub from: Option<usize>,
    /// Stop after this stage.
    pub to: Option<usize>,
    /// `--data` replaced the config's dataset (its description is about another one).
    pub data_overridden: bool,
    pub device: Device,
    /// No progress bars or printed reports (tests).
    pub quiet: bool,
    /// When the whole pipeline must end (`--deadline-minutes`): the initial stage's budget is
    /// cut to what is left after the evaluations' beam search.
    pub deadline: Option<std::time::SystemTime>,
}

/// Users the eval stage ranks by beam search (each evaluation's limit, else the split).
fn eval_users(c: &PipelineConfig, data: &Path) -> anyhow::Result<usize> {
    let ds = Dataset::load_lcrec(data)?;
    Ok(c.eval
        .iter()
        .map(|e| e.limit.unwrap_or(ds.users.len()).min(ds.users.len()))
        .sum())
}

/// `RUN/pipeline/<stage>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub stage: String,
    pub hash: String,
    /// The stage's typed settings as hashed.
    pub settings: serde_json::Value,
    pub seconds: f64,
    /// Files the stage wrote, relative to the run.
    pub outputs: Vec<String>,
    pub reused_from: Option<String>,
}

/// FNV-1a, 64 bits: stable across runs and platforms (std's hasher is not).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The identity of a dataset directory: file names, sizes and content hashes. Not
/// modification times: a copy of the same files (a fresh machine, a restored share) must
/// reuse the stages built from them.
fn data_fingerprint(dir: &Path) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let bytes =
            std::fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
        parts.push(format!(
            "{}:{}:{:016x}",
            e.file_name().to_string_lossy(),
            bytes.len(),
            fnv(&bytes)
        ));
    }
    parts.sort();
    Ok(parts.join(","))
}

/// What a stage is configured with (hashed; the backbone where it reads one).
fn settings(c: &PipelineConfig, stage: &str) -> anyhow::Result<serde_json::Value> {
    use serde_json::json;
    Ok(match stage {
        "data" => json!({}),
        "embed" => json!({"model": c.model, "embed": c.embed}),
        "behavior" => serde_json::to_value(&c.behavior)?,
        "teacher" => serde_json::to_value(&c.teacher)?,
        "index" => serde_json::to_value(&c.index)?,
        // The dtype joins the settings only where it is not the default (older runs' hashes hold).
        "train_initial" => {
            let mut v = json!({"model": c.model, "train": c.train_initial});
            if c.dtype != "f32" {
                v["dtype"] = json!(c.dtype);
            }
            // The prompts' content, not their path, is what trains.
            if let Some(p) = &c.prompts {
                let text = std::fs::read(p).with_context(|| format!("reading prompts {p}"))?;
                v["prompts"] = json!(format!("{}:{:016x}", text.len(), fnv(&text)));
            }
            v
        }
        "train_anneal" if c.dtype != "f32" => json!({"train": c.train_anneal, "dtype": c.dtype}),
        "train_anneal" => serde_json::to_value(&c.train_anneal)?,
        _ => json!({"eval": c.eval, "baselines": c.baselines}),
    })
}

/// The files a stage leaves, relative to the run (the eval stage's come from its sidecar).
fn fixed_outputs(stage: &str, ds_name: &str) -> Vec<String> {
    let v: Vec<String> = match stage {
        "data" => vec!["data/stats.json".into()],
        "embed" => vec!["embeddings/semantic.safetensors".into()],
        "behavior" => vec!["embeddings/behavior.safetensors".into()],
        "index" => vec![format!("index/{ds_name}.index.json")],
        "train_initial" | "train_anneal" => {
            let s = stage.trim_start_matches("train_");
            vec![
                format!("checkpoints/{s}/state.json"),
                format!("train/{s}/report.json"),
            ]
        }
        _ => Vec::new(),
    };
    v
}

fn read_sidecar(path: &Path) -> Option<Sidecar> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Directories whose files belong to a stage beside its outputs, linked with them on reuse: a
/// training stage's checkpoints and logs, and the behavior stage's model and report (the SASRec
/// baseline row and the distillation teacher read `behavior/sasrec/model.safetensors`).
fn stage_dirs(c: &PipelineConfig, stage: &str) -> Vec<String> {
    match stage {
        "behavior" => vec![format!("behavior/{}", c.behavior.encoder.name())],
        _ => match stage.strip_prefix("train_") {
            Some(s) => vec![
                format!("checkpoints/{s}"),
                format!("checkpoints/{s}-best"),
                format!("train/{s}"),
            ],
            None => Vec::new(),
        },
    }
}

/// Links (or copies) a finished stage's outputs and the files of its `dirs` from `from` into
/// `run`; None when `from` has no finished stage with this hash.
fn reuse(
    from: &RunDir,
    run: &RunDir,
    stage: &str,
    hash: &str,
    dirs: &[String],
) -> anyhow::Result<Option<Sidecar>> {
    let Some(side) = read_sidecar(&from.pipeline_dir().join(format!("{stage}.json"))) else {
        return Ok(None);
    };
    if side.hash != hash || !side.outputs.iter().all(|o| from.join(o).is_file()) {
        return Ok(None);
    }
    let mut files: Vec<PathBuf> = side.outputs.iter().map(PathBuf::from).collect();
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(from.join(d)) {
            for e in entries.flatten().filter(|e| e.path().is_file()) {
                files.push(Path::new(d).join(e.file_name()));
            }
        }
    }
    for rel in files {
        let (src, out) = (from.join(&rel), run.join(&rel));
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d)?;
        }
        let _ = std::fs::remove_file(&out);
        if std::fs::hard_link(&src, &out).is_err() {
            std::fs::copy(&src, &out).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(Some(side))
}

/// A training stage the pipeline runs: a checkpoint of the same settings and prompts left by
/// an interrupted pipeline is resumed; anything else of the stage is replaced.
fn train_start(
    run: &RunDir,
    c: &crate::train::TrainConfig,
    prompts: Option<&Path>,
) -> anyhow::Result<Start> {
    let asked = match prompts {
        Some(p) => crate::tasks::Prompts::load(p)?,
        None => crate::tasks::Prompts::embedded()?,
    };
    let same_prompts = run.record(c.stage)?.is_none_or(|r| r.prompts == asked);
    Ok(match crate::train::stage::saved_state(run, c.stage) {
        Ok((_, st))
            if same_prompts
                && crate::train::stage::config_diff(&st.config, c).is_ok_and(|d| d.is_empty()) =>
        {
            Start::Resume
        }
        _ => Start::Overwrite,
    })
}

/// Runs one stage; returns the files it wrote (relative to the run).
fn run_one(job: &PipelineJob, stage: &str, ds_name: &str) -> anyhow::Result<Vec<String>> {
    let (c, run, dev) = (&job.config, &job.run, &job.device);
    let data = PathBuf::from(&c.data);
    let index = run.index_path(ds_name);
    match stage {
        "data" => {
            let ds = Dataset::load_lcrec(&data)?;
            let split = ds.split(&SplitConfig::default())?;
            write_json(&run.stats_path(), &Stats::new(&ds, &split))?;
        }
        "embed" => {
            let e = crate::embed::job::EmbedJob {
                data,
                model: c.model.clone(),
                out: run.semantic_path(),
                config: c.embed.clone(),
                limit: None,
            };
            crate::embed::job::embed_catalogue(&e, dev, DType::F32)?;
        }
        "behavior" => {
            let b = crate::behavior::job::BehaviorJob {
                data,
                out: run.behavior_path(),
                report_dir: run.behavior_report_dir(c.behavior.encoder.name()),
                config: c.behavior.clone(),
                neighbors: 10,
                command: format!("llmbs pipeline (config {})", c.name),
            };
            crate::behavior::job::run_job(&b, dev)?;
        }
        "teacher" => {
            let t = c.teacher.as_ref().context("no teacher stage")?;
            let enc = t.encoder.name();
            let b = crate::behavior::job::BehaviorJob {
                data,
                out: run.join(format!("embeddings/behavior-{enc}.safetensors")),
                report_dir: run.behavior_report_dir(enc),
                config: t.clone(),
                neighbors: 10,
                command: format!("llmbs pipeline (config {}, teacher)", c.name),
            };
            crate::behavior::job::run_job(&b, dev)?;
            let m = crate::behavior::job::MODEL_FILE;
            return Ok(vec![
                format!("behavior/{enc}/{m}"),
                format!("behavior/{enc}/report.json"),
            ]);
        }
        "index" => {
            let i = crate::index::job::IndexJob {
                data: Some(data),
                semantic: Some(run.semantic_path()),
                behavior: Some(run.behavior_path()),
                out: index,
                config: c.index.clone(),
                ..Default::default()
            };
            crate::index::job::run_job(&i)?;
        }
        "train_initial" | "train_anneal" => {
            let (cfg, initial) = match stage {
                "train_initial" => (&c.train_initial, true),
                _ => (c.train_anneal.as_ref().context("no anneal stage")?, false),
            };
            let prompts = initial
                .then(|| c.prompts.as_ref().map(PathBuf::from))
                .flatten();
            let deadline = match job.deadline.filter(|_| initial) {
                Some(at) => Some(crate::train::budget::Deadline {
                    at,
                    users_after: eval_users(c, &data)?,
                }),
                None => None,
            };
            let t = StageJob {
                config: cfg.clone(),
                data: initial.then_some(data),
                model: initial.then(|| c.model.clone()),
                index: initial.then_some(index),
                start: train_start(run, cfg, prompts.as_deref())?,
                prompts,
                quiet: job.quiet,
                dtype_choice: None,
                // Only the initial stage is fit to the deadline: it is the one with a budget
                // in the CPU configs, and the anneal stage's own budget stays as written.
                deadline,
            };
            let (dtype, choice) = crate::device::train_dtype(&c.dtype, dev)?;
            let t = StageJob {
                dtype_choice: Some(choice),
                ..t
            };
            crate::train::run_stage(run, &t, dev, dtype)?;
        }
        _ => return report::eval_stage(job),
    }
    Ok(fixed_outputs(stage, ds_name))
}

/// Runs the pipeline; writes `RUN/pipeline/report.{json,md}`.
pub fn run_pipeline(job: &PipelineJob) -> anyhow::Result<()> {
    let (c, run) = (&job.config, &job.run);
    std::fs::create_dir_all(run.pipeline_dir())
        .with_context(|| format!("creating {}", run.root().display()))?;
    write_json(&run.config_path(), c)?;
    let data = PathBuf::from(&c.data);
    let ds_name = Dataset::load_lcrec(&data)?.name;
    let mut upstream = format!("{}|{}", env!("CARGO_PKG_VERSION"), data_fingerprint(&data)?);
    let mut forced = false;
    let mut times: Vec<(String, f64, &str)> = Vec::new();
    for (pos, stage) in STAGES.iter().enumerate() {
        if job.to.is_some_and(|t| pos > t) {
            break;
        }
        if (*stage == "train_anneal" && c.train_anneal.is_none())
            || (*stage == "teacher" && c.teacher.is_none())
        {
            continue;
        }
        crate::util::check_interrupt().with_context(|| format!("before pipeline stage {stage}"))?;
        let set = settings(c, stage)?;
        let hash = format!(
            "{:016x}",
            fnv(format!("{upstream}|{stage}|{set}").as_bytes())
        );
        upstream = hash.clone();
        let side_path = run.pipeline_dir().join(format!("{stage}.json"));
        forced |= job.from.is_some_and(|f| pos >= f);
        let done = !forced
            && read_sidecar(&side_path)
                .is_some_and(|x| x.hash == hash && x.outputs.iter().all(|o| run.join(o).is_file()));
        if done {
            eprintln!("pipeline: {stage} up to date (skipped)");
            times.push((stage.to_string(), 0.0, "skipped"));
            continue;
        }
        let start = Instant::now();
        let mut reused = None;
        for from in job.reuse_from.iter().filter(|f| *f != run && !forced) {
            if let Some(side) = reuse(from, run, stage, &hash, &stage_dirs(c, stage))? {
                eprintln!("pipeline: {stage} reused from {}", from.root().display());
                reused = Some((from.root().display().to_string(), side.outputs));
                break;
            }
        }
        let outputs = match &reused {
            Some((_, outs)) => outs.clone(),
            None => {
                eprintln!("pipeline: {stage}");
                run_one(job, stage, &ds_name).with_context(|| format!("pipeline stage {stage}"))?
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        times.push((
            stage.to_string(),
            seconds,
            if reused.is_some() { "reused" } else { "ran" },
        ));
        let side = Sidecar {
            stage: stage.to_string(),
            hash,
            settings: set,
            seconds,
            outputs,
            reused_from: reused.map(|r| r.0),
        };
        write_json(&side_path, &side)?;
        // A stage that ran changes what later stages read.
        forced = forced || side.reused_from.is_none();
    }
    report::write(job, &times)
}

/// The run directory of a config: `--run`, else `runs/<name>`; ablations go beside it.
pub fn run_dirs(c: &PipelineConfig, run: Option<&Path>, suffix: &str) -> (RunDir, RunDir) {
    let base = run
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("runs").join(&c.name));
    let mut name = base.as_os_str().to_owned();
    name.push(suffix);
    (RunDir::new(PathBuf::from(name)), RunDir::new(base))
}

#[cfg(test)]
mod tests {
    use super::data_fingerprint;

    #[test]
    fn fingerprint_follows_content_not_copy_or_mtime() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(a.path().join("x.inter.json"), b"{\"1\": [1, 2]}").unwrap();
        std::fs::write(a.path().join("x.item.json"), b"{}").unwrap();
        let fa = data_fingerprint(a.path()).unwrap();
        // A later copy of the same bytes (new mtimes, other directory) is the same dataset.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for f in ["x.inter.json", "x.item.json"] {
            std::fs::copy(a.path().join(f), b.path().join(f)).unwrap();
        }
        assert_eq!(fa, data_fingerprint(b.path()).unwrap());
        // The same size with other bytes is another dataset.
        std::fs::write(b.path().join("x.inter.json"), b"{\"1\": [2, 1]}").unwrap();
        assert_ne!(fa, data_fingerprint(b.path()).unwrap());
    }
}
