//! External item indexes in the LC-Rec format (paper 3.2 compares against such IDs), e.g.
//! LETTER's RQ-VAE IDs: validated against the dataset, collisions disambiguated explicitly.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::ids::{Disambiguation, ItemIndex};
use super::IndexError;
use crate::data::Dataset;

/// What loading an external index found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalReport {
    pub path: PathBuf,
    pub disambiguation: Disambiguation,
    /// A few colliding groups, as item keys (at most 5).
    pub examples: Vec<Vec<String>>,
}

impl fmt::Display for ExternalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.disambiguation;
        write!(
            f,
            "{}: {} items, {} distinct IDs: {} collisions in {} groups (largest {}); {} items given a <d_i> token",
            self.path.display(),
            d.items,
            d.distinct_before,
            d.collisions,
            d.groups,
            d.largest_group,
            d.items_disambiguated
        )?;
        if d.prefix_conflicts > 0 {
            write!(f, "; {} IDs are prefixes of other IDs", d.prefix_conflicts)?;
        }
        Ok(())
    }
}

/// The top-level entries of a JSON object in file order, duplicates kept.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object {\"<item key>\": [\"<token>\", ...]}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(e) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(e);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Name of a token position: the common `X` of tokens `<X_n>`, else `l{pos + 1}`.
fn position_name(tokens: &mut dyn Iterator<Item = &str>, pos: usize) -> String {
    let prefix = |t: &str| -> Option<String> {
        let inner = t.strip_prefix('<')?.strip_suffix('>')?;
        let (p, num) = inner.rsplit_once('_')?;
        (!p.is_empty() && !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.to_string())
    };
    let mut common: Option<String> = None;
    for t in tokens {
        match (prefix(t), &common) {
            (Some(p), None) => common = Some(p),
            (Some(p), Some(c)) if &p == c => {}
            _ => return format!("l{}", pos + 1),
        }
    }
    common.unwrap_or_else(|| format!("l{}", pos + 1))
}

/// Reads an index `{"<item key>": ["<tok>", ...]}` for `ds`, disambiguating collisions with a
/// `<d_i>` token. Errors name the file and the key: malformed JSON, unknown or duplicate item
/// keys, dataset items without an entry, empty or non-string token lists.
pub fn load_external(path: &Path, ds: &Dataset) -> Result<(ItemIndex, ExternalReport), IndexError> {
    load_external_with(path, ds, false)
}

/// As [`load_external`]; with `strict`, collisions (and IDs that are prefixes of other IDs)
/// are an error instead of being disambiguated.
pub fn load_external_with(
    path: &Path,
    ds: &Dataset,
    strict: bool,
) -> Result<(ItemIndex, ExternalReport), IndexError> {
    let p = || path.to_path_buf();
    let text =
        std::fs::read_to_string(path).map_err(|source| IndexError::Io { path: p(), source })?;
    let entries = serde_json::from_str::<Entries>(&text).map_err(|e| IndexError::Json {
        path: p(),
        what: if e.is_data() {
            "wrong shape"
        } else {
            "malformed JSON"
        },
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    let n = ds.items.len();
    let raw = item_tokens(path, entries, ds)?;
    let mut vocab: Vec<String> = Vec::new();
    let mut lookup: HashMap<&str, u32> = HashMap::new();
    let mut ids = Vec::with_capacity(n);
    for toks in &raw {
        let id: Vec<u32> = toks
            .iter()
            .map(|t| {
                *lookup.entry(t.as_str()).or_insert_with(|| {
                    vocab.push(t.clone());
                    vocab.len() as u32 - 1
                })
            })
            .collect();
        ids.push(id);
    }
    let depth = raw.iter().map(Vec::len).max().unwrap_or(0);
    let levels = (0..depth)
        .map(|j| {
            position_name(
                &mut raw.iter().filter_map(|t| t.get(j).map(String::as_str)),
                j,
            )
        })
        .collect();
    let mut index = ItemIndex {
        keys: ds.items.iter().map(|it| it.id.clone()).collect(),
        levels,
        source_starts: vec![0],
        vocab,
        ids,
    };
    let examples = colliding_examples(&index, 5);
    if strict {
        let distinct = index.distinct();
        if distinct < n {
            return Err(IndexError::Collisions {
                path: p(),
                collisions: n - distinct,
                example: examples.first().cloned().unwrap_or_default(),
            });
        }
        let prefix = index.prefix_conflicts();
        if prefix > 0 {
            return Err(IndexError::PrefixConflicts {
                path: p(),
                count: prefix,
            });
        }
    }
    let disambiguation = index.disambiguate();
    Ok((
        index,
        ExternalReport {
            path: p(),
            disambiguation,
            examples,
        },
    ))
}

/// Each item's token list, in dataset order; unknown, duplicate, missing or malformed
/// entries are errors naming the file and key.
fn item_tokens(
    path: &Path,
    entries: Entries,
    ds: &Dataset,
) -> Result<Vec<Vec<String>>, IndexError> {
    let p = || path.to_path_buf();
    let mut raw: Vec<Option<Vec<String>>> = vec![None; ds.items.len()];
    for (key, value) in entries.0 {
        let entry = |msg: String| IndexError::Entry {
            path: p(),
            key: key.clone(),
            msg,
        };
        let Some(item) = ds.item_index(&key) else {
            return Err(IndexError::UnknownItem {
                path: p(),
                key,
                dataset: ds.name.clone(),
            });
        };
        let serde_json::Value::Array(list) = value else {
            return Err(entry(format!("expected a list of tokens, found {value}")));
        };
        if list.is_empty() {
            return Err(entry("empty token list".into()));
        }
        let mut toks = Vec::with_capacity(list.len());
        for (j, t) in list.into_iter().enumerate() {
            match t {
                serde_json::Value::String(s) if !s.trim().is_empty() => toks.push(s),
                other => {
                    return Err(entry(format!(
                        "token {j} is {other}, expected a non-empty string"
                    )))
                }
            }
        }
        let slot = &mut raw[item as usize];
        if slot.is_some() {
            return Err(IndexError::DuplicateKey { path: p(), key });
        }
        *slot = Some(toks);
    }
    let missing: Vec<&str> = raw
        .iter()
        .zip(&ds.items)
        .filter(|(r, _)| r.is_none())
        .map(|(_, it)| it.id.as_str())
        .collect();
    if let Some(first) = missing.first() {
        return Err(IndexError::MissingItems {
            path: p(),
            count: missing.len(),
            first: first.to_string(),
        });
    }
    Ok(raw.into_iter().flatten().collect())
}

/// Up to `max` groups of items that share an ID, as item keys, in dataset order.
fn colliding_examples(index: &ItemIndex, max: usize) -> Vec<Vec<String>> {
    let mut first: HashMap<&[u32], usize> = HashMap::new();
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, id) in index.ids.iter().enumerate() {
        let f = *first.entry(id.as_slice()).or_insert(i);
        if f != i {
            let g = *group_of.entry(f).or_insert_with(|| {
                groups.push(vec![f]);
                groups.len() - 1
            });
            groups[g].push(i);
        }
    }
    groups
        .into_iter()
        .take(max)
        .map(|g| g.into_iter().map(|i| index.keys[i].clone()).collect())
        .collect()
}
