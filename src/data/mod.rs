//! Datasets: LC-Rec/LETTER JSON and plain sequence files, item text, leave-one-out split, stats,
//! and the import of raw dumps into the LC-Rec layout.

pub mod import;
mod lcrec;
mod seqfile;
mod split;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

pub use split::{Sample, Split, SplitConfig, Stats, DEFAULT_MAX_HISTORY};
pub use text::ITEM_TEXT_TEMPLATE;

/// Fewest interactions a user needs: one for training, one validation and one test target.
pub const MIN_INTERACTIONS: usize = 3;

/// Where in an input file a problem sits: a JSON key, or a line of a text file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A top-level key of a JSON object (a user or an item id).
    Key(String),
    /// A 1-based line of a text file, with the user key found there.
    Line { line: usize, user: String },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Key(key) => write!(f, "key \"{key}\""),
            Location::Line { line, user } => write!(f, "line {line} (user \"{user}\")"),
        }
    }
}

/// Everything that can be wrong with input data; each names the file and the key or line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `what` is "malformed JSON" for syntax errors, "wrong shape" for a valid document of the
    /// wrong kind (e.g. a list where an object belongs).
    #[error("{}: {what} at line {line} column {column}: {msg}", path.display())]
    Json {
        path: PathBuf,
        what: &'static str,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{}: {at}: {msg}", path.display())]
    Shape {
        path: PathBuf,
        at: Location,
        msg: String,
    },
    #[error("{}: {at}: appears more than once", path.display())]
    Duplicate { path: PathBuf, at: Location },
    #[error("{}: {at}: item \"{item}\" is not in {}", path.display(), items.display())]
    UnknownItem {
        path: PathBuf,
        at: Location,
        item: String,
        items: PathBuf,
    },
    #[error(
        "{}: {at}: {len} interactions, leave-one-out needs at least {MIN_INTERACTIONS}",
        path.display()
    )]
    TooShort {
        path: PathBuf,
        at: Location,
        len: usize,
    },
    #[error("{}: {at}: empty text (no title and no categories)", path.display())]
    EmptyText { path: PathBuf, at: Location },
    #[error("{}: no entries", path.display())]
    Empty { path: PathBuf },
    #[error("{}: no *.inter.json file in this directory", dir.display())]
    NoInterFile { dir: PathBuf },
    #[error("{}: more than one *.inter.json file: {}", dir.display(), found.join(", "))]
    ManyInterFiles { dir: PathBuf, found: Vec<String> },
    #[error("{}: item file missing (it goes with {})", path.display(), inter.display())]
    MissingItemFile { path: PathBuf, inter: PathBuf },
    #[error(
        "user index {user}: {len} interactions, leave-one-out needs at least {MIN_INTERACTIONS}"
    )]
    SequenceTooShort { user: usize, len: usize },
    #[error("dataset {dataset}: {msg}")]
    Invalid { dataset: String, msg: String },
}

/// One catalogue item with its cleaned text fields.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// The key in the source data (e.g. "123"), never the dense index.
    pub id: String,
    /// HTML-unescaped, whitespace-normalised title.
    pub title: String,
    pub categories: String,
    pub brand: Option<String>,
    pub description: Option<String>,
    /// The text the LLM sees, built by [`text::item_text`].
    pub text: String,
}

/// A loaded dataset: users, their item sequences and the item catalogue, all densely indexed.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Taken from the file name (`Beauty.inter.json` → "Beauty").
    pub name: String,
    /// User keys, in file order; position = user index.
    pub users: Vec<String>,
    /// Per user: dense item indices, oldest first.
    pub sequences: Vec<Vec<u32>>,
    /// Position = dense item index.
    pub items: Vec<Item>,
    /// `<Name>.index.json` as found, keyed by original item id; validated by the index stage.
    pub index: Option<BTreeMap<String, Vec<String>>>,
    lookup: HashMap<String, u32>,
}

impl Dataset {
    /// Loads an LC-Rec/LETTER directory: exactly one `<Name>.inter.json`, the matching
    /// `<Name>.item.json` (required) and `<Name>.index.json` (optional).
    pub fn load_lcrec(dir: &Path) -> Result<Dataset, DataError> {
        lcrec::load(dir)
    }

    /// Loads a plain sequence file (`user item item ...` per line). Item text comes from
    /// `items_json` (LC-Rec item format) when given; otherwise the items are the ids seen, with
    /// empty text.
    pub fn load_sequences(path: &Path, items_json: Option<&Path>) -> Result<Dataset, DataError> {
        seqfile::load(path, items_json)
    }

    /// Assembles a dataset, checking that every sequence is long enough to split and refers only
    /// to catalogue items, and that item ids are unique.
    pub fn from_parts(
        name: String,
        users: Vec<String>,
        sequences: Vec<Vec<u32>>,
        items: Vec<Item>,
        index: Option<BTreeMap<String, Vec<String>>>,
    ) -> Result<Dataset, DataError> {
        let invalid = |msg: String| DataError::Invalid {
            dataset: name.clone(),
            msg,
        };
        if users.len() != sequences.len() {
            return Err(invalid(format!(
                "{} users but {} sequences",
                users.len(),
                sequences.len()
            )));
        }
        if u32::try_from(users.len()).is_err() {
            return Err(invalid(format!("{} users do not fit u32", users.len())));
        }
        let n_items = u32::try_from(items.len())
            .map_err(|_| invalid(format!("{} items do not fit u32", items.len())))?;
        let mut lookup = HashMap::with_capacity(items.len());
        for (i, item) in (0..n_items).zip(&items) {
            if lookup.insert(item.id.clone(), i).is_some() {
                return Err(invalid(format!("duplicate item id \"{}\"", item.id)));
            }
        }
        for (user, seq) in users.iter().zip(&sequences) {
            if seq.len() < MIN_INTERACTIONS {
                return Err(invalid(format!(
                    "user \"{user}\" has {} interactions, leave-one-out needs at least {MIN_INTERACTIONS}",
                    seq.len()
                )));
            }
            if let Some(bad) = seq.iter().find(|&&i| i >= n_items) {
                return Err(invalid(format!(
                    "user \"{user}\" has item index {bad}, only {n_items} items"
                )));
            }
        }
        Ok(Dataset {
            name,
            users,
            sequences,
            items,
            index,
            lookup,
        })
    }

    /// The dense index of the item whose original key is `id`.
    pub fn item_index(&self, id: &str) -> Option<u32> {
        self.lookup.get(id).copied()
    }

    /// Total number of interactions over all users.
    pub fn interactions(&self) -> usize {
        self.sequences.iter().map(Vec::len).sum()
    }

    /// Leave-one-out split of every user's sequence (see [`Split`]).
    pub fn split(&self, cfg: &SplitConfig) -> Result<Split, DataError> {
        Split::leave_one_out(&self.sequences, cfg)
    }
}

/// Orders item keys for dense indexing: numerically when every key is an integer (so "10"
/// follows "9" and indices match the source ids), else lexicographically.
pub(crate) fn sort_item_keys(keys: &mut [String]) {
    let numeric: Option<Vec<u64>> = keys.iter().map(|k| k.parse::<u64>().ok()).collect();
    if numeric.is_some() {
        // Tie-break on the string so "07" and "7" still get a fixed order.
        keys.sort_by(|a, b| {
            let na = a.parse::<u64>().unwrap_or(0);
            let nb = b.parse::<u64>().unwrap_or(0);
            na.cmp(&nb).then_with(|| a.cmp(b))
        });
    } else {
        keys.sort();
    }
}
