//! `llmbs index`: dual-source item IDs (paper 3.2, Figure 5 modes) from the semantic and
//! behavior tables, or an external index (e.g. LETTER's) checked and disambiguated; writes the
//! LC-Rec index file and `stats.json` beside it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::index::job::{run_job, IndexJob};
use crate::index::{IndexConfig, IndexStats, KMeansConfig, Mode};

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

pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let job = IndexJob {
        data: args.data.clone(),
        semantic: args.semantic.clone(),
        behavior: args.behavior.clone(),
        out: args.out.clone(),
        stats: args.stats.clone(),
        config: IndexConfig {
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
        },
        external: args.external.clone(),
        strict: args.strict,
        synthetic: args.synthetic.map(|n| (n, args.dim)),
    };
    let done = run_job(&job)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done.file)?);
    } else {
        print_summary(
            &done.stats,
            &args.out,
            &done.stats_path,
            t0.elapsed().as_secs_f64(),
        );
    }
    Ok(())
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
