//! `llmbs pipeline --config configs/<name>.json`: data -> embed -> behavior -> index ->
//! train initial -> train anneal -> eval into `runs/<name>/` (DESIGN "Pipeline"). Each stage
//! records a hash of its inputs and arguments in `RUN/pipeline/<stage>.json`; a stage whose
//! hash matches and whose outputs exist is skipped, and a changed stage reruns everything after.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, SplitConfig, Stats};
use crate::util::{atomic_write, write_json};

/// Stage names, in order.
pub const STAGES: [&str; 7] = [
    "data",
    "embed",
    "behavior",
    "index",
    "train_initial",
    "train_anneal",
    "eval",
];

/// A pipeline config: where the data and model are, and each stage's extra command-line flags
/// (exactly those of `llmbs <command> --help`; the pipeline supplies the paths).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Run name: outputs go to `runs/<name>/`.
    pub name: String,
    /// One line on what the config is for.
    #[serde(default)]
    pub description: String,
    /// Dataset directory (LC-Rec JSON), relative to the working directory.
    pub data: String,
    /// Backbone for `embed` and the initial stage (`default`, a .gguf, a HF directory, a Hub id).
    pub model: String,
    #[serde(default)]
    pub embed: Vec<String>,
    #[serde(default)]
    pub behavior: Vec<String>,
    #[serde(default)]
    pub index: Vec<String>,
    #[serde(default)]
    pub train_initial: Vec<String>,
    /// `null` switches the anneal stage off (the paper's "w/o AAT" ablation).
    pub train_anneal: Option<Vec<String>>,
    #[serde(default)]
    pub eval: Vec<String>,
}

/// The configs compiled into the binary, by name.
pub const EMBEDDED: [(&str, &str); 3] = [
    (
        "beauty-smoke",
        include_str!("../../configs/beauty-smoke.json"),
    ),
    ("beauty", include_str!("../../configs/beauty.json")),
    ("tiny", include_str!("../../configs/tiny.json")),
];

#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// A config file, or the name of an embedded one (beauty-smoke, beauty, tiny)
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
    /// anneal=off; repeatable. Stages they leave unchanged are reused from runs/<name>.
    #[arg(long)]
    pub ablation: Vec<String>,
    /// Device for every stage (auto, cpu, cuda[:N])
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Reads a config file, or an embedded config by name; errors name the file and key.
pub fn load_config(s: &str) -> anyhow::Result<PipelineConfig> {
    let (text, name) = match EMBEDDED.iter().find(|(n, _)| *n == s) {
        Some((n, t)) => (t.to_string(), format!("configs/{n}.json (embedded)")),
        None => (
            std::fs::read_to_string(s).with_context(|| {
                format!("reading pipeline config {s} (embedded: beauty-smoke, beauty, tiny)")
            })?,
            s.to_string(),
        ),
    };
    serde_json::from_str(&text).with_context(|| format!("parsing pipeline config {name}"))
}

/// Applies `--ablation` switches; returns the run-name suffix.
pub fn apply_ablations(c: &mut PipelineConfig, ablations: &[String]) -> anyhow::Result<String> {
    let mut tags = Vec::new();
    for a in ablations {
        match a.split_once('=') {
            Some(("index", m)) if ["random", "semantic", "behavior", "unit"].contains(&m) => {
                c.index.extend(["--mode".to_string(), m.to_string()]);
                tags.push(format!("index-{m}"));
            }
            Some(("gct", "off")) => {
                c.train_initial
                    .extend(["--lambda-s", "0", "--lambda-b", "0"].map(String::from));
                tags.push("gct-off".into());
            }
            Some(("anneal", "off")) => {
                c.train_anneal = None;
                tags.push("anneal-off".into());
            }
            _ => anyhow::bail!(
                "--ablation {a}: expected index=random|semantic|behavior|unit, gct=off or anneal=off"
            ),
        }
    }
    Ok(if tags.is_empty() {
        String::new()
    } else {
        format!("-{}", tags.join("-"))
    })
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

/// The identity of a dataset directory: file names, sizes and modification times.
fn data_fingerprint(dir: &Path) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let m = e.metadata()?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        parts.push(format!(
            "{}:{}:{mtime}",
            e.file_name().to_string_lossy(),
            m.len()
        ));
    }
    parts.sort();
    Ok(parts.join(","))
}

/// `RUN/pipeline/<stage>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub stage: String,
    pub hash: String,
    pub argv: Vec<String>,
    pub seconds: f64,
    pub outputs: Vec<String>,
    pub reused_from: Option<String>,
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct One<T: clap::Args> {
    #[command(flatten)]
    args: T,
}

/// Parses a stage's argv as its command would, naming the stage on error.
fn parse<T: clap::Args>(stage: &str, argv: &[String]) -> anyhow::Result<T> {
    One::<T>::try_parse_from(argv)
        .map(|o| o.args)
        .map_err(|e| anyhow::anyhow!("pipeline stage {stage}: bad flags {argv:?}: {e}"))
}

struct Stage {
    name: &'static str,
    argv: Vec<String>,
    outputs: Vec<PathBuf>,
}

fn s<T: AsRef<std::ffi::OsStr> + ?Sized>(p: &T) -> String {
    Path::new(p).display().to_string()
}

fn plan(c: &PipelineConfig, run: &Path, ds_name: &str, device: &str) -> Vec<Stage> {
    let data = c.data.clone();
    let emb = run.join("embeddings");
    let idx = run.join("index").join(format!("{ds_name}.index.json"));
    let dev = ["--device".to_string(), device.to_string()];
    let with = |base: Vec<String>, extra: &[String], dev_too: bool| -> Vec<String> {
        let mut v = base;
        v.extend(extra.iter().cloned());
        if dev_too {
            v.extend(dev.iter().cloned());
        }
        v
    };
    let mut out = vec![
        Stage {
            name: "data",
            argv: vec!["--data".into(), data.clone()],
            outputs: vec![run.join("data/stats.json")],
        },
        Stage {
            name: "embed",
            argv: with(
                vec![
                    "--data".into(),
                    data.clone(),
                    "--model".into(),
                    c.model.clone(),
                    "--out".into(),
                    s(&emb.join("semantic.safetensors")),
                ],
                &c.embed,
                true,
            ),
            outputs: vec![emb.join("semantic.safetensors")],
        },
        Stage {
            name: "behavior",
            argv: with(
                vec![
                    "--data".into(),
                    data.clone(),
                    "--out".into(),
                    s(&emb.join("behavior.safetensors")),
                ],
                &c.behavior,
                true,
            ),
            outputs: vec![emb.join("behavior.safetensors")],
        },
        Stage {
            name: "index",
            argv: with(
                vec![
                    "--data".into(),
                    data.clone(),
                    "--semantic".into(),
                    s(&emb.join("semantic.safetensors")),
                    "--behavior".into(),
                    s(&emb.join("behavior.safetensors")),
                    "--out".into(),
                    s(&idx),
                ],
                &c.index,
                false,
            ),
            outputs: vec![idx.clone()],
        },
        Stage {
            name: "train_initial",
            argv: with(
                vec![
                    "--stage".into(),
                    "initial".into(),
                    "--run".into(),
                    s(run),
                    "--data".into(),
                    data.clone(),
                    "--model".into(),
                    c.model.clone(),
                ],
                &c.train_initial,
                true,
            ),
            outputs: vec![
                run.join("checkpoints/initial/state.json"),
                run.join("train/initial/report.json"),
            ],
        },
    ];
    if let Some(a) = &c.train_anneal {
        out.push(Stage {
            name: "train_anneal",
            argv: with(
                vec![
                    "--stage".into(),
                    "anneal".into(),
                    "--run".into(),
                    s(run),
                    "--data".into(),
                    data.clone(),
                ],
                a,
                true,
            ),
            outputs: vec![
                run.join("checkpoints/anneal/state.json"),
                run.join("train/anneal/report.json"),
            ],
        });
    }
    out.push(Stage {
        name: "eval",
        argv: with(
            vec!["--run".into(), s(run), "--data".into(), data],
            &c.eval,
            true,
        ),
        outputs: vec![
            run.join("eval/report.json"),
            run.join("eval/predictions.jsonl"),
        ],
    });
    out
}

fn run_stage(name: &str, argv: &[String], run: &Path, data: &Path) -> anyhow::Result<()> {
    use crate::commands as c;
    match name {
        "data" => {
            let ds = Dataset::load_lcrec(data)?;
            let split = ds.split(&SplitConfig::default())?;
            write_json(&run.join("data/stats.json"), &Stats::new(&ds, &split))
        }
        "embed" => c::embed::run(parse(name, argv)?),
        "behavior" => c::behavior::run(parse(name, argv)?),
        "index" => c::index::run(parse(name, argv)?),
        "train_initial" | "train_anneal" => c::train::run(parse(name, argv)?),
        "eval" => c::eval::run(parse(name, argv)?),
        other => anyhow::bail!("unknown stage {other}"),
    }
}

fn read_sidecar(path: &Path) -> Option<Sidecar> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Copies (hard-links when possible) a finished stage's outputs from another run.
fn reuse(from_run: &Path, run: &Path, st: &Stage, hash: &str) -> anyhow::Result<bool> {
    let Some(side) = read_sidecar(&from_run.join("pipeline").join(format!("{}.json", st.name)))
    else {
        return Ok(false);
    };
    if side.hash != hash {
        return Ok(false);
    }
    // A training stage's outputs are whole directories (checkpoints, best model, logs): every
    // file under them travels, not only the marker files.
    let dirs: Vec<PathBuf> = match st.name {
        "train_initial" | "train_anneal" => {
            let stage = st.name.trim_start_matches("train_");
            vec![
                PathBuf::from("checkpoints").join(stage),
                PathBuf::from("checkpoints").join(format!("{stage}-best")),
                PathBuf::from("train").join(stage),
            ]
        }
        _ => Vec::new(),
    };
    for out in &st.outputs {
        let rel = out.strip_prefix(run).unwrap_or(out);
        if !from_run.join(rel).is_file() {
            return Ok(false);
        }
    }
    let mut files: Vec<PathBuf> = st
        .outputs
        .iter()
        .map(|o| o.strip_prefix(run).unwrap_or(o).to_path_buf())
        .collect();
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(from_run.join(&d)) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    files.push(d.join(e.file_name()));
                }
            }
        }
    }
    for rel in files {
        let (src, out) = (from_run.join(&rel), run.join(&rel));
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d)?;
        }
        let _ = std::fs::remove_file(&out);
        if std::fs::hard_link(&src, &out).is_err() {
            std::fs::copy(&src, &out).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(true)
}

pub fn run(a: PipelineArgs) -> anyhow::Result<()> {
    let mut c = load_config(&a.config)?;
    if let Some(d) = &a.data {
        c.data = s(d);
    }
    if let Some(m) = &a.model {
        c.model = m.clone();
    }
    let base_run = a
        .run
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&c.name));
    let suffix = apply_ablations(&mut c, &a.ablation)?;
    // An ablation runs beside its base run (`<run>-<ablations>`) and reuses its unchanged stages.
    let mut run_name = base_run.as_os_str().to_owned();
    run_name.push(&suffix);
    let run = PathBuf::from(run_name);
    std::fs::create_dir_all(run.join("pipeline"))
        .with_context(|| format!("creating {}", run.display()))?;
    write_json(&run.join("config.json"), &c)?;
    let data = PathBuf::from(&c.data);
    let ds_name = Dataset::load_lcrec(&data)?.name;
    let stages = plan(&c, &run, &ds_name, &a.device);
    let from = a
        .from
        .as_deref()
        .and_then(|f| STAGES.iter().position(|s| *s == f));
    let to =
        a.to.as_deref()
            .and_then(|f| STAGES.iter().position(|s| *s == f));
    let mut upstream = format!("{}|{}", env!("CARGO_PKG_VERSION"), data_fingerprint(&data)?);
    let mut forced = false;
    let mut times: Vec<(String, f64, &str)> = Vec::new();
    for st in &stages {
        let pos = STAGES.iter().position(|s| *s == st.name).unwrap_or(0);
        if to.is_some_and(|t| pos > t) {
            break;
        }
        // The run directory is part of every argv; hash without it so reuse across runs works.
        let portable: Vec<String> = st.argv.iter().map(|x| x.replace(&s(&run), "RUN")).collect();
        let hash = format!(
            "{:016x}",
            fnv(format!("{upstream}|{}|{}", st.name, portable.join("\u{1f}")).as_bytes())
        );
        upstream = hash.clone();
        let side_path = run.join("pipeline").join(format!("{}.json", st.name));
        forced |= from.is_some_and(|f| pos >= f);
        let done = !forced
            && read_sidecar(&side_path).is_some_and(|x| x.hash == hash)
            && st.outputs.iter().all(|o| o.is_file());
        if done {
            eprintln!("pipeline: {} up to date (skipped)", st.name);
            times.push((st.name.into(), 0.0, "skipped"));
            continue;
        }
        let start = Instant::now();
        let reused = !forced && base_run != run && reuse(&base_run, &run, st, &hash)?;
        if reused {
            eprintln!("pipeline: {} reused from {}", st.name, base_run.display());
        } else {
            eprintln!("pipeline: {} ({})", st.name, st.argv.join(" "));
            run_stage(st.name, &st.argv, &run, &data)
                .with_context(|| format!("pipeline stage {}", st.name))?;
        }
        let seconds = start.elapsed().as_secs_f64();
        times.push((
            st.name.into(),
            seconds,
            if reused { "reused" } else { "ran" },
        ));
        write_json(
            &side_path,
            &Sidecar {
                stage: st.name.into(),
                hash,
                argv: st.argv.clone(),
                seconds,
                outputs: st.outputs.iter().map(s).collect(),
                reused_from: reused.then(|| s(&base_run)),
            },
        )?;
        // A stage that ran changes what later stages read.
        forced = forced || !reused;
    }
    report(&run, &c, &times)
}

fn report(run: &Path, c: &PipelineConfig, times: &[(String, f64, &str)]) -> anyhow::Result<()> {
    let eval: Option<serde_json::Value> = std::fs::read_to_string(run.join("eval/report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut md = format!(
        "# llmbs pipeline: {} ({})\n\n{}\n\n| stage | seconds | |\n|---|---:|---|\n",
        c.name,
        s(run),
        c.description
    );
    // Recorded times of skipped stages come from their sidecars.
    let mut total = 0.0;
    let mut rows = Vec::new();
    for (name, secs, how) in times {
        let secs = if *how == "skipped" {
            read_sidecar(&run.join("pipeline").join(format!("{name}.json")))
                .map(|x| x.seconds)
                .unwrap_or(0.0)
        } else {
            *secs
        };
        total += secs;
        md.push_str(&format!("| {name} | {secs:.0} | {how} |\n"));
        rows.push(serde_json::json!({"stage": name, "seconds": secs, "status": how}));
    }
    md.push_str(&format!("| total | {total:.0} | |\n"));
    if let Ok(t) = std::fs::read_to_string(run.join("eval/report.md")) {
        md.push('\n');
        md.push_str(&t);
    }
    write_json(
        &run.join("pipeline/report.json"),
        &serde_json::json!({"name": c.name, "run": s(run), "stages": rows, "total_seconds": total, "eval": eval}),
    )?;
    atomic_write(&run.join("pipeline/report.md"), md.as_bytes())?;
    println!("{md}");
    println!(
        "pipeline: report in {}",
        run.join("pipeline/report.md").display()
    );
    Ok(())
}
