//! One indexing job (paper 3.2, Figure 5 modes): the dual-source IDs from the semantic and
//! behavior tables (or an external index checked and disambiguated), written in the LC-Rec
//! format with `stats.json` beside it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::{BuildReport, ExternalReport, IndexConfig, IndexStats, ItemIndex, Signal, Table};
use crate::data::{Dataset, SplitConfig};

/// What to index and where to.
#[derive(Debug, Clone, Default)]
pub struct IndexJob {
    /// Dataset directory: item keys and the coherence checks.
    pub data: Option<PathBuf>,
    pub semantic: Option<PathBuf>,
    pub behavior: Option<PathBuf>,
    /// The index file (`RUN/index/<Name>.index.json`).
    pub out: PathBuf,
    /// Statistics file (default: `stats.json` beside `out`).
    pub stats: Option<PathBuf>,
    pub config: IndexConfig,
    /// Load this index instead of building one (needs `data`).
    pub external: Option<PathBuf>,
    /// With `external`: refuse colliding IDs instead of disambiguating them.
    pub strict: bool,
    /// Benchmarks: this many synthetic items of this width instead of tables.
    pub synthetic: Option<(usize, usize)>,
}

/// The content of `stats.json`.
#[derive(Serialize)]
pub struct StatsFile<'a> {
    pub index: &'a Path,
    pub inputs: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<&'a IndexConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<&'a BuildReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<&'a ExternalReport>,
    #[serde(flatten)]
    pub stats: &'a IndexStats,
}

/// The statistics of a finished job and where they were written.
pub struct Indexed {
    pub stats: IndexStats,
    pub stats_path: PathBuf,
    /// `stats.json`'s content.
    pub file: serde_json::Value,
}

/// Builds (or loads) the index and writes it with its statistics.
pub fn run_job(job: &IndexJob) -> anyhow::Result<Indexed> {
    let ds = match &job.data {
        Some(dir) => Some(
            Dataset::load_lcrec(dir)
                .with_context(|| format!("loading dataset {}", dir.display()))?,
        ),
        None => None,
    };
    let stats_path = job
        .stats
        .clone()
        .unwrap_or_else(|| job.out.with_file_name("stats.json"));
    let inputs = serde_json::json!({
        "semantic": job.semantic, "behavior": job.behavior, "data": job.data,
        "external": job.external, "synthetic": job.synthetic.map(|s| s.0),
    });
    let (index, mut stats, config, build, external) = if let Some(path) = &job.external {
        let ds = ds
            .as_ref()
            .context("--external needs --data (the item keys to check against)")?;
        let (index, report) = super::load_external_with(path, ds, job.strict)?;
        eprintln!("{report}");
        let stats = super::index_stats(&index, &report.disambiguation);
        (index, stats, None, None, Some(report))
    } else {
        let (index, report) = build(job, ds.as_ref())?;
        let stats = super::index_stats(&index, &report.disambiguation);
        (index, stats, Some(&job.config), Some(report), None)
    };
    if let Some(ds) = &ds {
        let split = ds
            .split(&SplitConfig::default())
            .with_context(|| format!("splitting dataset {}", ds.name))?;
        stats.coherence = super::coherence(&index, ds, &split.train);
    }
    index
        .write(&job.out)
        .with_context(|| format!("writing index {}", job.out.display()))?;
    let file = StatsFile {
        index: &job.out,
        inputs,
        config,
        build: build.as_ref(),
        external: external.as_ref(),
        stats: &stats,
    };
    crate::util::write_json(&stats_path, &file)
        .with_context(|| format!("writing {}", stats_path.display()))?;
    let file = serde_json::to_value(&file)?;
    Ok(Indexed {
        stats,
        stats_path,
        file,
    })
}

/// Reads (or, for benchmarks, generates) the tables the mode needs and builds the index.
fn build(job: &IndexJob, ds: Option<&Dataset>) -> anyhow::Result<(ItemIndex, BuildReport)> {
    let cfg = &job.config;
    let needs = |s: Signal| cfg.layout().iter().any(|&(sig, _)| sig == s);
    let (semantic, behavior, n) = if let Some((n, dim)) = job.synthetic {
        let centres = ((n as f64).sqrt() as usize).max(16);
        let sem = needs(Signal::Semantic)
            .then(|| super::synthetic::gaussian_mixture(n, dim, centres, 0.5, cfg.seed ^ 0x5E));
        let beh = needs(Signal::Behavior)
            .then(|| super::synthetic::gaussian_mixture(n, dim, centres, 0.5, cfg.seed ^ 0xBE));
        (sem, beh, n)
    } else {
        let expect = ds.map(|d| d.items.len());
        let load = |path: &Option<PathBuf>, flag: &str| -> anyhow::Result<Table> {
            let path = path
                .as_ref()
                .with_context(|| format!("mode {} needs {flag}", cfg.mode.name()))?;
            let t = crate::embed::load_table(path, expect)?;
            Table::from_tensor(&t).with_context(|| format!("reading {}", path.display()))
        };
        let sem = needs(Signal::Semantic)
            .then(|| load(&job.semantic, "--semantic"))
            .transpose()?;
        let beh = needs(Signal::Behavior)
            .then(|| load(&job.behavior, "--behavior"))
            .transpose()?;
        let n = match (expect, &sem, &beh) {
            (Some(n), _, _) => n,
            (None, Some(t), _) | (None, None, Some(t)) => t.rows,
            (None, None, None) => {
                anyhow::bail!("mode random needs --data (or a table) to know the items")
            }
        };
        (sem, beh, n)
    };
    let keys: Vec<String> = match ds {
        Some(ds) => ds.items.iter().map(|it| it.id.clone()).collect(),
        None => (0..n).map(|i| i.to_string()).collect(),
    };
    if let (Some(s), Some(b)) = (&semantic, &behavior) {
        anyhow::ensure!(
            s.rows == b.rows,
            "the semantic table has {} rows but the behavior table {}",
            s.rows,
            b.rows
        );
    }
    let kmeans_levels: usize = cfg
        .layout()
        .iter()
        .filter(|(s, _)| *s != Signal::Random)
        .map(|&(_, l)| l)
        .sum();
    let pb = crate::util::progress_bar((n * kmeans_levels) as u64, "item-levels");
    let on = |d: u64| pb.inc(d);
    let res = super::build(cfg, keys, semantic, behavior, &on);
    pb.finish_and_clear();
    let (index, report) = res?;
    Ok((index, report))
}
