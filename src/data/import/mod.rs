//! `llmbs data import`: raw dumps (Amazon Reviews 2014/2018/2023, RecBole atomic files, CSV/TSV)
//! to the native LC-Rec directory, with the standard preprocessing and a record of it.
//!
//! The steps follow LC-Rec/LETTER's `amazon18_data_process.py`: interactions in chronological
//! order per user with repeats dropped (keeping the earliest), interactions with items that have
//! no text dropped, then iterative k-core on users and items (5 by default), then dense ids by
//! first occurrence. `--repeats keep` gives S3-Rec's `data_process.py` (which keeps repeats);
//! on `reviews_Beauty_5` both give the 22,363 users, 12,101 items and 198,502 interactions of
//! the papers' Beauty.

mod amazon;
mod delimited;
mod filter;
pub mod pylit;
mod source;
mod table;
mod write;

use std::path::{Path, PathBuf};

pub use delimited::Columns;
pub use filter::{FilterOptions, MissingText, Repeats, StepCount};
pub use source::SourceRecord;

use delimited::Dialect;
use source::{plain_name, Source};
use table::Table;

/// The raw formats `llmbs data import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    /// Amazon Reviews 2014/2018: reviews_<Cat>[_5].json[.gz] + meta_<Cat>.json[.gz].
    Amazon,
    /// Amazon Reviews 2023: <Cat>.jsonl[.gz] + meta_<Cat>.jsonl[.gz].
    Amazon2023,
    /// RecBole atomic files: <name>.inter + <name>.item.
    Recbole,
    /// Delimited text: an interactions file, then an optional item table.
    Csv,
}

/// Everything that can go wrong in an import; each names the file and the line or column.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: line {line}{}: {msg}", path.display(), column.as_ref().map(|c| format!(", column {c}")).unwrap_or_default())]
    Line {
        path: PathBuf,
        line: u64,
        column: Option<String>,
        msg: String,
    },
    #[error("{}: no column \"{column}\" (the header has: {})", path.display(), header.join(", "))]
    MissingColumn {
        path: PathBuf,
        column: String,
        header: Vec<String>,
    },
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    #[error("{msg}")]
    Usage { msg: String },
    #[error("no interactions left after \"{step}\"{}", before.as_ref().map(|b| format!(" (before it: {} users, {} items, {} interactions)", b.users, b.items, b.interactions)).unwrap_or_default())]
    EmptyResult {
        step: String,
        before: Option<StepCount>,
    },
    #[error("{}: already exists (--force replaces it)", path.display())]
    OutExists { path: PathBuf },
}

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    pub format: ImportFormat,
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    /// The dataset name (`<Name>.inter.json`); default from the interactions file's name.
    pub name: Option<String>,
    /// Replace an existing `out`.
    pub force: bool,
    pub filters: FilterOptions,
    /// `None`: drop items without text when an item file is given, else give them placeholders.
    pub missing_text: Option<MissingText>,
    pub columns: Columns,
}

/// What an import did: the counts after each step and the files read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportSummary {
    pub name: String,
    pub steps: Vec<StepCount>,
    pub sources: Vec<SourceRecord>,
}

/// A time as an integer, or a decimal number floored (RecBole's `timestamp:float`).
pub fn parse_time(bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?.trim();
    if let Ok(t) = s.parse::<i64>() {
        return Some(t);
    }
    let f: f64 = s.parse().ok()?;
    (f.is_finite() && f.abs() < 9.2e18).then(|| f.floor() as i64)
}

/// Splits the inputs into the interactions file and the optional item file.
fn roles(
    format: ImportFormat,
    inputs: &[PathBuf],
) -> Result<(PathBuf, Option<PathBuf>), ImportError> {
    let usage = |msg: String| ImportError::Usage { msg };
    let mut inter = Vec::new();
    let mut items = Vec::new();
    for (k, p) in inputs.iter().enumerate() {
        let name = plain_name(p);
        let is_items = match format {
            ImportFormat::Amazon | ImportFormat::Amazon2023 => name.starts_with("meta_"),
            ImportFormat::Csv => k > 0,
            ImportFormat::Recbole if name.ends_with(".inter") => false,
            ImportFormat::Recbole if name.ends_with(".item") => true,
            ImportFormat::Recbole => {
                return Err(usage(format!(
                    "{}: a RecBole input is <name>.inter or <name>.item",
                    p.display()
                )))
            }
        };
        if is_items {
            items.push(p.clone());
        } else {
            inter.push(p.clone());
        }
    }
    let what = match format {
        ImportFormat::Amazon | ImportFormat::Amazon2023 => {
            "a review file and at most one meta_ file"
        }
        ImportFormat::Recbole => "one .inter file and at most one .item file",
        ImportFormat::Csv => "an interactions file, then at most one item table",
    };
    if inter.len() != 1 || items.len() > 1 {
        let got: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(usage(format!("expected {what}; got: {}", got.join(" "))));
    }
    Ok((inter.remove(0), items.pop()))
}

/// The default dataset name: `reviews_Beauty_5.json.gz` → Beauty, `All_Beauty.jsonl` →
/// All_Beauty, `ml-1m.inter` → ml-1m, `events.csv` → events.
fn default_name(format: ImportFormat, inter: &Path) -> String {
    let plain = plain_name(inter);
    let stem = match plain.rsplit_once('.') {
        Some((stem, _)) => stem,
        None => &plain,
    };
    match format {
        ImportFormat::Amazon => {
            let s = stem.strip_prefix("reviews_").unwrap_or(stem);
            s.strip_suffix("_5").unwrap_or(s).to_string()
        }
        _ => stem.to_string(),
    }
}

fn check_name(name: &str) -> Result<(), ImportError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ImportError::Usage {
            msg: format!("dataset name \"{name}\": use letters, digits, '_', '-' or '.' (--name)"),
        })
    }
}

/// Reads one file in its role, returning its record.
fn read(
    cfg: &ImportConfig,
    path: &Path,
    items: bool,
    table: &mut Table,
) -> Result<SourceRecord, ImportError> {
    let role = if items { "items" } else { "interactions" };
    let mut src = Source::open(path, role)?;
    let min = cfg.filters.min_rating;
    let v2023 = cfg.format == ImportFormat::Amazon2023;
    match (cfg.format, items) {
        (ImportFormat::Amazon | ImportFormat::Amazon2023, false) => {
            amazon::read_reviews(&mut src, table, v2023, min)?
        }
        (ImportFormat::Amazon | ImportFormat::Amazon2023, true) => {
            amazon::read_meta(&mut src, table, v2023)?
        }
        (ImportFormat::Recbole | ImportFormat::Csv, _) => {
            let dialect = match cfg.format {
                ImportFormat::Recbole => Dialect::Recbole,
                _ => Dialect::Csv,
            };
            if items {
                delimited::read_items(&mut src, dialect, &cfg.columns, table)?
            } else {
                delimited::read_interactions(&mut src, dialect, &cfg.columns, table, min)?
            }
        }
    }
    if !items && table.read == 0 {
        return Err(ImportError::Input {
            path: path.to_path_buf(),
            msg: "no interactions".into(),
        });
    }
    src.finish()
}

/// Runs the import: reads, filters, writes `cfg.out` atomically. Nothing is written unless
/// every step succeeds.
pub fn import(cfg: &ImportConfig) -> Result<ImportSummary, ImportError> {
    write::check_out(&cfg.out, cfg.force)?;
    let (inter, item_file) = roles(cfg.format, &cfg.inputs)?;
    let name = match &cfg.name {
        Some(n) => n.clone(),
        None => default_name(cfg.format, &inter),
    };
    check_name(&name)?;
    let mut filters = cfg.filters.clone();
    filters.missing_text = cfg.missing_text.unwrap_or(match item_file {
        Some(_) => MissingText::Drop,
        None => MissingText::Placeholder,
    });
    let mut table = Table::default();
    let mut sources = vec![read(cfg, &inter, false, &mut table)?];
    if let Some(items) = &item_file {
        sources.push(read(cfg, items, true, &mut table)?);
    }
    let filtered = filter::apply(&mut table, &filters)?;
    let dense = write::Dense::new(&filtered, table.items.len());
    let placeholders = dense
        .items
        .iter()
        .filter(|&&i| !table.text(i).is_some_and(|t| t.usable()))
        .count();
    let id_field = match cfg.format {
        ImportFormat::Amazon => "asin".to_string(),
        ImportFormat::Amazon2023 => "parent_asin".to_string(),
        _ => cfg.columns.item.clone().unwrap_or_else(|| "item_id".into()),
    };
    let record = serde_json::json!({
        "llmbs_version": env!("CARGO_PKG_VERSION"),
        "format": cfg.format,
        "name": name,
        "sources": sources,
        "filters": filters,
        "columns": matches!(cfg.format, ImportFormat::Csv | ImportFormat::Recbole).then_some(&cfg.columns),
        "steps": filtered.steps,
        "kcore_rounds": filtered.kcore_rounds,
        "item_records": {
            "not_in_interactions": table.unused_item_records,
            "duplicates_ignored": table.duplicate_item_records,
        },
        "placeholder_items": placeholders,
        "order": "chronological per user; equal times keep file order",
        "ids": "users by first appearance in the interactions file, items by first appearance in those users' sequences",
        "files": {
            "interactions": format!("{name}.inter.json"),
            "items": format!("{name}.item.json"),
            "user_map": format!("{name}.user2id"),
            "item_map": format!("{name}.item2id"),
        },
    });
    let output = write::Output {
        name: &name,
        table: &table,
        filtered: &filtered,
        dense: &dense,
        id_field: &id_field,
        record: &record,
    };
    write::write(&cfg.out, cfg.force, &output)?;
    Ok(ImportSummary {
        name,
        steps: filtered.steps,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_roles() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            default_name(ImportFormat::Amazon, &p("d/reviews_Beauty_5.json.gz")),
            "Beauty"
        );
        assert_eq!(
            default_name(ImportFormat::Amazon2023, &p("All_Beauty.jsonl")),
            "All_Beauty"
        );
        assert_eq!(
            default_name(ImportFormat::Recbole, &p("ml-1m.inter")),
            "ml-1m"
        );
        let (i, m) = roles(
            ImportFormat::Amazon,
            &[p("meta_B.json.gz"), p("reviews_B.json")],
        )
        .unwrap();
        assert_eq!((i, m), (p("reviews_B.json"), Some(p("meta_B.json.gz"))));
        assert!(roles(ImportFormat::Recbole, &[p("x.user")]).is_err());
        assert!(roles(ImportFormat::Csv, &[p("a"), p("b"), p("c")]).is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(b" 1588687728923 "), Some(1588687728923));
        assert_eq!(parse_time(b"1.5e3"), Some(1500));
        assert_eq!(parse_time(b"x"), None);
    }
}
