//! `llmbs index`: dual-source item IDs (paper 3.2, Figure 5 modes) from the semantic and
//! behavior tables, or an external index (e.g. LETTER's) checked and disambiguated; writes the
//! LC-Rec index file and `stats.json` beside it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::data::{Dataset, SplitConfig};
use crate::index::{
    self, BuildReport, ExternalReport, IndexConfig, IndexStats, ItemIndex, KMeansConfig, Mode,
    Signal, Table,
};

#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    /// Semantic table Z^s (.safetensors with tensor "embeddings", [items, d])
    #[arg(long)]
    pub semantic: Option<PathBuf>,
    /// Behavior table Z^b (.safetensors with tensor "embeddings", [items, d])
    #[arg(long)]
    pub behavior: Option<PathBuf>,
    /// Output index file in the LC-Rec format, e.g. runs/beauty/index/Beauty.index.json
    #[arg(long)]
    pub out: PathBuf,
    /// Statistics file [default: stats.json beside --out]
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Dataset directory (LC-Rec JSON): item keys, and the coherence checks
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Children per node, i.e. tokens per level
    #[arg(long, default_value_t = 256)]
    pub k: usize,
    /// Levels from the semantic table (unit mode; other modes use the sum of both counts)
    #[arg(long, default_value_t = 2)]
    pub levels_semantic: usize,
    /// Levels from the behavior table (unit mode; other modes use the sum of both counts)
    #[arg(long, default_value_t = 2)]
    pub levels_behavior: usize,
    /// Where the tokens come from (paper Figure 5)
    #[arg(long, value_enum, default_value_t = Mode::Unit)]
    pub mode: Mode,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Cluster the raw rows instead of L2-normalised ones
    #[arg(long)]
    pub no_normalize: bool,
    /// Subtract each table's column means before normalising
    #[arg(long)]
    pub center: bool,
    /// Plain k-means, without the cap of ceil(n / k) items per cluster
    #[arg(long)]
    pub unbalanced: bool,
    /// Lloyd iterations at most per k-means run
    #[arg(long, default_value_t = 25)]
    pub max_iters: usize,
    /// Worker threads (0 = every core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Load this index (LC-Rec format, e.g. Beauty.letter-index.json) instead of building one;
    /// needs --data; collisions get a <d_i> token
    #[arg(long, conflicts_with_all = ["semantic", "behavior", "synthetic"])]
    pub external: Option<PathBuf>,
    /// With --external: refuse an index with colliding IDs instead of disambiguating it
    #[arg(long, requires = "external")]
    pub strict: bool,
    /// Benchmarks: index N synthetic items (Gaussian mixtures) instead of reading tables
    #[arg(long, hide = true, conflicts_with_all = ["semantic", "behavior", "data"])]
    pub synthetic: Option<usize>,
    /// Benchmarks: row width of the synthetic tables
    #[arg(long, hide = true, default_value_t = 64)]
    pub dim: usize,
    /// Print the statistics as JSON
    #[arg(long)]
    pub json: bool,
}

/// The content of `stats.json`.
#[derive(Serialize)]
struct StatsFile<'a> {
    index: &'a Path,
    inputs: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<&'a IndexConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    build: Option<&'a BuildReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external: Option<&'a ExternalReport>,
    #[serde(flatten)]
    stats: &'a IndexStats,
}

pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let ds = match &args.data {
        Some(dir) => Some(
            Dataset::load_lcrec(dir)
                .with_context(|| format!("loading dataset {}", dir.display()))?,
        ),
        None => None,
    };
    let stats_path = args
        .stats
        .clone()
        .unwrap_or_else(|| args.out.with_file_name("stats.json"));
    let inputs = serde_json::json!({
        "semantic": args.semantic, "behavior": args.behavior, "data": args.data,
        "external": args.external, "synthetic": args.synthetic,
    });
    let (index, mut stats, config, build, external) = if let Some(path) = &args.external {
        let ds = ds
            .as_ref()
            .context("--external needs --data (the item keys to check against)")?;
        let (index, report) = index::load_external_with(path, ds, args.strict)?;
        eprintln!("{report}");
        let stats = index::index_stats(&index, &report.disambiguation);
        (index, stats, None, None, Some(report))
    } else {
        let cfg = IndexConfig {
            mode: args.mode,
            k: args.k,
            levels_semantic: args.levels_semantic,
            levels_behavior: args.levels_behavior,
            seed: args.seed,
            center: args.center,
            normalize: !args.no_normalize,
            kmeans: KMeansConfig {
                max_iters: args.max_iters,
                balanced: !args.unbalanced,
                ..KMeansConfig::default()
            },
            threads: args.threads,
        };
        let (index, report) = build_from_args(&args, &cfg, ds.as_ref())?;
        let stats = index::index_stats(&index, &report.disambiguation);
        (index, stats, Some(cfg), Some(report), None)
    };
    if let Some(ds) = &ds {
        let split = ds
            .split(&SplitConfig::default())
            .with_context(|| format!("splitting dataset {}", ds.name))?;
        stats.coherence = index::coherence(&index, ds, &split.train);
    }
    index
        .write(&args.out)
        .with_context(|| format!("writing index {}", args.out.display()))?;
    let file = StatsFile {
        index: &args.out,
        inputs,
        config: config.as_ref(),
        build: build.as_ref(),
        external: external.as_ref(),
        stats: &stats,
    };
    crate::util::write_json(&stats_path, &file)
        .with_context(|| format!("writing {}", stats_path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&file)?);
    } else {
        print_summary(&stats, &args.out, &stats_path, t0.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Reads (or, for benchmarks, generates) the tables the mode needs and builds the index.
fn build_from_args(
    args: &IndexArgs,
    cfg: &IndexConfig,
    ds: Option<&Dataset>,
) -> anyhow::Result<(ItemIndex, BuildReport)> {
    let needs = |s: Signal| cfg.layout().iter().any(|&(sig, _)| sig == s);
    let (semantic, behavior, n) = if let Some(n) = args.synthetic {
        let centres = ((n as f64).sqrt() as usize).max(16);
        let sem = needs(Signal::Semantic).then(|| {
            index::synthetic::gaussian_mixture(n, args.dim, centres, 0.5, cfg.seed ^ 0x5E)
        });
        let beh = needs(Signal::Behavior).then(|| {
            index::synthetic::gaussian_mixture(n, args.dim, centres, 0.5, cfg.seed ^ 0xBE)
        });
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
            .then(|| load(&args.semantic, "--semantic"))
            .transpose()?;
        let beh = needs(Signal::Behavior)
            .then(|| load(&args.behavior, "--behavior"))
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
    let res = index::build(cfg, keys, semantic, behavior, &on);
    pb.finish_and_clear();
    let (index, report) = res?;
    Ok((index, report))
}

fn print_summary(stats: &IndexStats, out: &Path, stats_path: &Path, seconds: f64) {
    println!(
        "{} items: {} distinct IDs before disambiguation, {} after; largest leaf {}; {} items in {} groups got a <d_i> token",
        stats.items,
        stats.distinct_ids_before,
        stats.distinct_ids_after,
        stats.largest_leaf,
        stats.items_disambiguated,
        stats.collision_groups
    );
    for l in &stats.levels {
        println!(
            "  {:>4}: {:>4} tokens used (largest {:>6} items), {:>8} prefixes (largest {:>6})",
            l.level, l.tokens_used, l.largest_token, l.prefix_groups, l.largest_prefix_group
        );
    }
    println!(
        "  vocabulary: {} new tokens; ID length {}..={}",
        stats.vocab_size, stats.id_length_min, stats.id_length_max
    );
    for c in &stats.coherence {
        println!(
            "  coherence of {} ({} clusters): same 2nd-level category {:.4} vs random {:.4} ({:.2}x); same path {:.4} vs {:.4} ({:.2}x); co-occur in training {:.5} vs {:.5} ({:.2}x)",
            c.level,
            c.clusters,
            c.category2.within,
            c.category2.random,
            c.category2.lift,
            c.category_path.within,
            c.category_path.random,
            c.category_path.lift,
            c.cooccurrence.within,
            c.cooccurrence.random,
            c.cooccurrence.lift
        );
    }
    println!(
        "wrote {} and {} in {seconds:.1}s",
        out.display(),
        stats_path.display()
    );
}
