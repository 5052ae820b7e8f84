//! `llmbs data ...`: inspect a dataset and its leave-one-out split.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::text_table::{grouped, table};
use crate::data::{Dataset, SplitConfig, Stats, DEFAULT_MAX_HISTORY};

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Print the dataset's Table 1 row (users, items, interactions, sparsity) and split sizes.
    Stats(StatsArgs),
    /// Turn raw files (Amazon Reviews, RecBole atomic, CSV/TSV) into a dataset directory:
    /// chronological order, repeats dropped, 5-core; records what it did in DIR/import.json.
    Import(Box<super::data_import::ImportArgs>),
}

/// Input format of `--data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A directory is LC-Rec JSON, a file is a sequence file.
    Auto,
    /// LC-Rec/LETTER directory: <Name>.inter.json, <Name>.item.json, optional <Name>.index.json.
    Lcrec,
    /// Plain sequence file: one `user item item ...` line per user.
    Seq,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// LC-Rec dataset directory, or a sequence file (with --format seq or auto).
    #[arg(long)]
    pub data: PathBuf,
    /// Input format; `auto` reads a directory as LC-Rec and a file as a sequence file.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Item JSON (LC-Rec item format) giving text to a sequence file's items.
    #[arg(long)]
    pub items: Option<PathBuf>,
    /// Keep only this many most recent items in each history.
    #[arg(long, default_value_t = DEFAULT_MAX_HISTORY, value_parser = positive)]
    pub max_history: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Stats(args) => stats(&args),
        DataCommand::Import(args) => super::data_import::run(&args),
    }
}

/// Loads `--data` in the format asked for (or guessed from whether it is a directory).
pub fn load(data: &Path, format: Format, items: Option<&Path>) -> anyhow::Result<Dataset> {
    let format = match format {
        Format::Auto if data.is_dir() => Format::Lcrec,
        Format::Auto => Format::Seq,
        other => other,
    };
    if format == Format::Lcrec && items.is_some() {
        anyhow::bail!("--items only applies to a sequence file (--format seq)");
    }
    let ds = match format {
        Format::Seq => Dataset::load_sequences(data, items)?,
        _ => Dataset::load_lcrec(data)?,
    };
    Ok(ds)
}

/// Stats output: the dataset statistics plus the history cap they were computed with.
#[derive(Serialize)]
struct StatsReport {
    #[serde(flatten)]
    stats: Stats,
    max_history: usize,
}

/// A history cap of 0 would leave every sample without context, so it is refused up front.
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let ds = load(&args.data, args.format, args.items.as_deref())
        .with_context(|| format!("loading {}", args.data.display()))?;
    let cfg = SplitConfig {
        max_history: args.max_history,
    };
    let split = ds.split(&cfg)?;
    let stats = Stats::new(&ds, &split);
    if args.json {
        let report = StatsReport {
            stats,
            max_history: cfg.max_history,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let s = &stats;
    print!(
        "{}",
        table(&[
            vec![
                "Dataset".into(),
                "#Users".into(),
                "#Items".into(),
                "#Interactions".into(),
                "Sparsity".into()
            ],
            vec![
                s.dataset.clone(),
                grouped(s.users),
                grouped(s.items),
                grouped(s.interactions),
                format!("{:.5}", s.sparsity)
            ],
        ])
    );
    println!();
    print!(
        "{}",
        table(&[
            vec![
                "Sequence length".into(),
                "min".into(),
                "max".into(),
                "mean".into()
            ],
            vec![
                String::new(),
                s.min_seq_len.to_string(),
                s.max_seq_len.to_string(),
                format!("{:.2}", s.mean_seq_len)
            ],
        ])
    );
    println!();
    print!(
        "{}",
        table(&[
            vec![
                format!("Split (max history {})", cfg.max_history),
                "samples".into()
            ],
            vec!["train (every prefix)".into(), grouped(s.train_samples)],
            vec!["valid".into(), grouped(s.valid)],
            vec!["test".into(), grouped(s.test)],
        ])
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(198502), "198,502");
        assert_eq!(grouped(1234567), "1,234,567");
    }
}
