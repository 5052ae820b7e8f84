//! The plain sequence format (S3-Rec's `Beauty.txt`): one `user item item ...` line per user.

use std::collections::HashSet;
use std::path::Path;

use super::lcrec::{key_lookup, read_items, resolve_sequence};
use super::{sort_item_keys, DataError, Dataset, Item, Location};

/// One parsed line: its 1-based number, the user key and the item keys.
struct Line {
    number: usize,
    user: String,
    items: Vec<String>,
}

fn read_lines(path: &Path) -> Result<Vec<Line>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let mut fields = raw.split_whitespace();
        let Some(user) = fields.next() else {
            continue;
        };
        if !seen.insert(user.to_string()) {
            return Err(DataError::Duplicate {
                path: path.to_path_buf(),
                at: Location::Line {
                    line: number,
                    user: user.to_string(),
                },
            });
        }
        lines.push(Line {
            number,
            user: user.to_string(),
            items: fields.map(str::to_string).collect(),
        });
    }
    if lines.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(lines)
}

/// Items named only by their ids: no text is known, so every text field stays empty.
fn bare_items(lines: &[Line]) -> Vec<Item> {
    let seen: HashSet<&str> = lines
        .iter()
        .flat_map(|l| l.items.iter().map(String::as_str))
        .collect();
    let mut keys: Vec<String> = seen.into_iter().map(str::to_string).collect();
    sort_item_keys(&mut keys);
    keys.into_iter()
        .map(|id| Item {
            id,
            title: String::new(),
            categories: String::new(),
            brand: None,
            description: None,
            text: String::new(),
        })
        .collect()
}

pub(crate) fn load(path: &Path, items_json: Option<&Path>) -> Result<Dataset, DataError> {
    let lines = read_lines(path)?;
    let items = match items_json {
        Some(items_path) => read_items(items_path)?,
        None => bare_items(&lines),
    };
    // Without an item file every id is known by construction, so the "items file" an
    // unknown-item error could name is the sequence file itself.
    let items_path = items_json.unwrap_or(path);
    let lookup = key_lookup(&items);
    let mut users = Vec::with_capacity(lines.len());
    let mut sequences = Vec::with_capacity(lines.len());
    for line in lines {
        let at = || Location::Line {
            line: line.number,
            user: line.user.clone(),
        };
        sequences.push(resolve_sequence(
            path,
            at,
            &line.items,
            &lookup,
            items_path,
        )?);
        users.push(line.user);
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Dataset::from_parts(name, users, sequences, items, None)
}
