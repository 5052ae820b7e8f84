//! Dual-source item indices (paper 3.2 and its Figure 5 modes): hierarchical k-means over the
//! semantic table Z^s and the behavior table Z^b gives every item a few new tokens,
//! `<s1_i> <s2_j> <b1_k> <b2_l>`, plus `<d_n>` where items would otherwise share an ID.

pub mod build;
pub mod external;
pub mod ids;
pub mod job;
pub mod kmeans;
pub mod stats;
pub mod synthetic;
pub mod tokens;
pub mod trie;

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use external::{load_external, load_external_with, ExternalReport};
pub use ids::{disambiguation_token, Disambiguation, ItemIndex};
pub use kmeans::KMeansConfig;
pub use stats::{coherence, index_stats, Coherence, IndexStats, LevelStats, PairRate};

/// Everything that can go wrong building or loading an index; file errors name the file and
/// the item key.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what} at line {line} column {column}: {msg}", path.display())]
    Json {
        path: PathBuf,
        what: &'static str,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{}: key \"{key}\": {msg}", path.display())]
    Entry {
        path: PathBuf,
        key: String,
        msg: String,
    },
    #[error("{}: key \"{key}\": not an item of dataset {dataset}", path.display())]
    UnknownItem {
        path: PathBuf,
        key: String,
        dataset: String,
    },
    #[error("{}: key \"{key}\" appears more than once", path.display())]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{}: {count} dataset items without an ID, the first \"{first}\"", path.display())]
    MissingItems {
        path: PathBuf,
        count: usize,
        first: String,
    },
    #[error("{}: {collisions} ID collisions, e.g. items {example:?} share an ID (strict mode)", path.display())]
    Collisions {
        path: PathBuf,
        collisions: usize,
        example: Vec<String>,
    },
    #[error("{}: {count} IDs are proper prefixes of other IDs (strict mode)", path.display())]
    PrefixConflicts { path: PathBuf, count: usize },
    #[error("{what}: {msg}")]
    Table { what: String, msg: String },
    #[error("index config: {0}")]
    Config(String),
}

/// Which signals the ID tokens come from (paper Figure 5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Semantic levels from Z^s, then behavior levels from Z^b (the paper's order).
    #[default]
    Unit,
    /// Behavior levels first, then semantic ones: with k = 256 over ~12k items the second
    /// semantic token already splits the catalogue to single items, so in the paper's order the
    /// behavior tokens are forced and beam pruning never sees behavior; this order lets it.
    #[serde(rename = "behavior-first")]
    #[value(name = "behavior-first")]
    BehaviorFirst,
    /// Every level from Z^s.
    Semantic,
    /// Every level from Z^b.
    Behavior,
    /// Uniformly random, conflict-free tokens.
    Random,
}

impl Mode {
    /// The mode's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Unit => "unit",
            Mode::BehaviorFirst => "behavior-first",
            Mode::Semantic => "semantic",
            Mode::Behavior => "behavior",
            Mode::Random => "random",
        }
    }
}

/// How an index is built; written into `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexConfig {
    pub mode: Mode,
    /// Children per node (tokens per level).
    pub k: usize,
    pub levels_semantic: usize,
    pub levels_behavior: usize,
    pub seed: u64,
    /// Subtract the column means first (before any normalisation).
    pub center: bool,
    /// L2-normalise every embedding row first.
    pub normalize: bool,
    pub kmeans: KMeansConfig,
    /// Worker threads; 0 = every available core.
    pub threads: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            mode: Mode::Unit,
            k: 256,
            levels_semantic: 2,
            levels_behavior: 2,
            seed: 42,
            center: false,
            normalize: true,
            kmeans: KMeansConfig::default(),
            threads: 0,
        }
    }
}

/// One source of the ID: its token prefix, which table, how many levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Semantic,
    Behavior,
    Random,
}

impl Signal {
    /// The level-name prefix: `s`, `b` or `r`.
    pub fn prefix(self) -> &'static str {
        match self {
            Signal::Semantic => "s",
            Signal::Behavior => "b",
            Signal::Random => "r",
        }
    }
}

impl IndexConfig {
    /// The sources of the ID in order, with their level counts (sources with none left out).
    pub fn layout(&self) -> Vec<(Signal, usize)> {
        let all = self.levels_semantic + self.levels_behavior;
        let layout = match self.mode {
            Mode::Unit => vec![
                (Signal::Semantic, self.levels_semantic),
                (Signal::Behavior, self.levels_behavior),
            ],
            Mode::BehaviorFirst => vec![
                (Signal::Behavior, self.levels_behavior),
                (Signal::Semantic, self.levels_semantic),
            ],
            Mode::Semantic => vec![(Signal::Semantic, all)],
            Mode::Behavior => vec![(Signal::Behavior, all)],
            Mode::Random => vec![(Signal::Random, all)],
        };
        layout.into_iter().filter(|&(_, l)| l > 0).collect()
    }

    fn validate(&self) -> Result<(), IndexError> {
        if self.k < 2 || self.k > u32::MAX as usize {
            return Err(IndexError::Config(format!(
                "k = {} (need at least 2)",
                self.k
            )));
        }
        if self.levels_semantic + self.levels_behavior == 0 {
            return Err(IndexError::Config(
                "no levels (levels-semantic + levels-behavior = 0)".into(),
            ));
        }
        if self.kmeans.max_iters == 0 {
            return Err(IndexError::Config("kmeans.max_iters = 0".into()));
        }
        Ok(())
    }

    /// The thread count to use.
    pub fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// A row-major `[rows, dim]` f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Table {
    /// Copies a 2-D tensor (any float dtype, any device) into a table.
    pub fn from_tensor(t: &candle_core::Tensor) -> candle_core::Result<Table> {
        let (rows, dim) = t.dims2()?;
        let data = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Table { rows, dim, data })
    }

    /// Checks the shape against `rows` items and that every value is finite.
    fn check(&self, what: &str, rows: usize) -> Result<(), IndexError> {
        let err = |msg: String| IndexError::Table {
            what: what.to_string(),
            msg,
        };
        if self.rows != rows {
            return Err(err(format!(
                "{} rows, but there are {rows} items",
                self.rows
            )));
        }
        if self.dim == 0 || self.data.len() != self.rows * self.dim {
            return Err(err(format!(
                "bad shape [{}, {}] for {} values",
                self.rows,
                self.dim,
                self.data.len()
            )));
        }
        if let Some(p) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(err(format!("non-finite value in row {}", p / self.dim)));
        }
        Ok(())
    }
}

/// How one source was clustered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    pub source: String,
    pub levels: usize,
    pub dim: usize,
    pub seconds: f64,
    /// Per level (k-means sources only).
    pub per_level: Vec<build::LevelReport>,
}

/// What [`build`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    pub sources: Vec<SourceReport>,
    pub disambiguation: Disambiguation,
    pub seconds: f64,
}

/// Builds the item index for `keys` (dataset order) from the tables the mode needs (rows in
/// the same order): per source hierarchical k-means (or random codes), tokens named by level,
/// then disambiguation so every ID is unique. `progress` gets the items finished per node.
pub fn build(
    cfg: &IndexConfig,
    keys: Vec<String>,
    mut semantic: Option<Table>,
    mut behavior: Option<Table>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(ItemIndex, BuildReport), IndexError> {
    cfg.validate()?;
    let start = Instant::now();
    let n = keys.len();
    let threads = cfg.threads();
    let layout = cfg.layout();
    let total: usize = layout.iter().map(|&(_, l)| l).sum();
    let mut codes = vec![0u32; n * total];
    let (mut levels, mut starts, mut sources) = (Vec::new(), Vec::new(), Vec::new());
    for (si, &(signal, nl)) in layout.iter().enumerate() {
        let t0 = Instant::now();
        let seed = kmeans::mix_seed(cfg.seed, si as u64 + 101);
        let (part, dim, per_level) = match signal {
            Signal::Random => (build::random_codes(n, nl, cfg.k, seed), 0, Vec::new()),
            Signal::Semantic | Signal::Behavior => {
                let (slot, what) = if signal == Signal::Semantic {
                    (&mut semantic, "semantic table")
                } else {
                    (&mut behavior, "behavior table")
                };
                let table = slot.as_mut().ok_or_else(|| {
                    IndexError::Config(format!("mode {} needs the {what}", cfg.mode.name()))
                })?;
                table.check(what, n)?;
                if cfg.center {
                    kmeans::center_columns(&mut table.data, table.dim);
                }
                if cfg.normalize {
                    kmeans::normalize_rows(&mut table.data, table.dim);
                }
                let (part, per_level) = build::hierarchical_kmeans(
                    &table.data,
                    table.dim,
                    nl,
                    cfg.k,
                    &cfg.kmeans,
                    seed,
                    threads,
                    progress,
                );
                (part, table.dim, per_level)
            }
        };
        let offset = levels.len();
        starts.push(offset);
        for l in 0..nl {
            levels.push(format!("{}{}", signal.prefix(), l + 1));
        }
        for (row, src) in codes.chunks_exact_mut(total).zip(part.chunks_exact(nl)) {
            row[offset..offset + nl].copy_from_slice(src);
        }
        sources.push(SourceReport {
            source: signal.prefix().to_string(),
            levels: nl,
            dim,
            seconds: t0.elapsed().as_secs_f64(),
            per_level,
        });
    }
    let mut index = ItemIndex::from_codes(keys, levels, starts, &codes);
    drop(codes);
    let disambiguation = index.disambiguate();
    Ok((
        index,
        BuildReport {
            sources,
            disambiguation,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}
