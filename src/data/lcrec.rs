//! The LC-Rec/LETTER JSON format: `<Name>.inter.json`, `<Name>.item.json`, `<Name>.index.json`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::text::{clean, item_text};
use super::{sort_item_keys, DataError, Dataset, Item, Location, MIN_INTERACTIONS};

/// A JSON object's entries in file order, duplicates kept: serde_json (with `preserve_order`)
/// would silently keep only the last of two equal keys, hiding a corrupt file.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(EntriesVisitor)
    }
}

/// Reads a top-level JSON object as `(key, value)` pairs in file order, rejecting an empty
/// file, an empty object and duplicate keys.
pub(crate) fn read_entries(path: &Path) -> Result<Vec<(String, Value)>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let Entries(entries) = serde_json::from_slice(&bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "wrong shape",
            _ => "malformed JSON",
        };
        // serde's message ends with its own " at line L column C"; we print those separately.
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let msg = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        DataError::Json {
            path: path.to_path_buf(),
            what,
            line: e.line(),
            column: e.column(),
            msg,
        }
    })?;
    if entries.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    if let Some((key, _)) = entries.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(DataError::Duplicate {
            path: path.to_path_buf(),
            at: Location::Key(key.clone()),
        });
    }
    Ok(entries)
}

/// JSON type names for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn shape(path: &Path, key: &str, msg: String) -> DataError {
    DataError::Shape {
        path: path.to_path_buf(),
        at: Location::Key(key.to_string()),
        msg,
    }
}

/// A text field that may be missing, a string, or a list of strings (joined with `sep`, as
/// some Amazon dumps store categories and descriptions as lists).
fn text_field(
    path: &Path,
    key: &str,
    obj: &serde_json::Map<String, Value>,
    field: &str,
    sep: &str,
) -> Result<String, DataError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(clean(s)),
        Some(Value::Array(parts)) => {
            let mut cleaned = Vec::with_capacity(parts.len());
            for part in parts {
                let Value::String(s) = part else {
                    return Err(shape(
                        path,
                        key,
                        format!(
                            "field \"{field}\" has {} in its list, expected strings",
                            kind(part)
                        ),
                    ));
                };
                let s = clean(s);
                if !s.is_empty() {
                    cleaned.push(s);
                }
            }
            Ok(cleaned.join(sep))
        }
        Some(other) => Err(shape(
            path,
            key,
            format!("field \"{field}\" is {}, expected a string", kind(other)),
        )),
    }
}

/// Reads an item file (`{"<id>": {"title": .., "categories": .., "brand"?: .., "description"?: ..}}`)
/// into items ordered by [`sort_item_keys`].
pub(crate) fn read_items(path: &Path) -> Result<Vec<Item>, DataError> {
    let mut by_key: HashMap<String, Item> = HashMap::new();
    for (key, value) in read_entries(path)? {
        let Value::Object(obj) = &value else {
            return Err(shape(
                path,
                &key,
                format!("item is {}, expected an object", kind(&value)),
            ));
        };
        let title = text_field(path, &key, obj, "title", " ")?;
        let categories = text_field(path, &key, obj, "categories", ",")?;
        if title.is_empty() && categories.is_empty() {
            return Err(DataError::EmptyText {
                path: path.to_path_buf(),
                at: Location::Key(key),
            });
        }
        let optional = |field| -> Result<Option<String>, DataError> {
            let s = text_field(path, &key, obj, field, " ")?;
            Ok((!s.is_empty()).then_some(s))
        };
        let brand = optional("brand")?;
        let description = optional("description")?;
        let text = item_text(
            &title,
            &categories,
            brand.as_deref(),
            description.as_deref(),
        );
        let item = Item {
            id: key.clone(),
            title,
            categories,
            brand,
            description,
            text,
        };
        by_key.insert(key, item);
    }
    let mut keys: Vec<String> = by_key.keys().cloned().collect();
    sort_item_keys(&mut keys);
    Ok(keys.into_iter().filter_map(|k| by_key.remove(&k)).collect())
}

/// Maps one user's item keys to dense indices, checking the length first.
pub(crate) fn resolve_sequence(
    path: &Path,
    at: impl Fn() -> Location,
    keys: &[String],
    lookup: &HashMap<&str, u32>,
    items_path: &Path,
) -> Result<Vec<u32>, DataError> {
    if keys.len() < MIN_INTERACTIONS {
        return Err(DataError::TooShort {
            path: path.to_path_buf(),
            at: at(),
            len: keys.len(),
        });
    }
    keys.iter()
        .map(|k| {
            lookup
                .get(k.as_str())
                .copied()
                .ok_or_else(|| DataError::UnknownItem {
                    path: path.to_path_buf(),
                    at: at(),
                    item: k.clone(),
                    items: items_path.to_path_buf(),
                })
        })
        .collect()
}

/// Item key → dense index for `items`.
pub(crate) fn key_lookup(items: &[Item]) -> HashMap<&str, u32> {
    (0u32..)
        .zip(items)
        .map(|(i, item)| (item.id.as_str(), i))
        .collect()
}

/// Reads an interaction file: `{"<user>": [item, ...]}` with ids as numbers or strings.
fn read_interactions(path: &Path) -> Result<Vec<(String, Vec<String>)>, DataError> {
    read_entries(path)?
        .into_iter()
        .map(|(user, value)| {
            let Value::Array(list) = value else {
                return Err(shape(
                    path,
                    &user,
                    format!("value is {}, expected a list of item ids", kind(&value)),
                ));
            };
            let keys = list
                .iter()
                .enumerate()
                .map(|(pos, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) if n.is_u64() => Ok(n.to_string()),
                    other => Err(shape(
                        path,
                        &user,
                        format!("element {pos} is {}, expected an item id", kind(other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((user, keys))
        })
        .collect()
}

/// Reads an index file: `{"<item>": ["<a_1>", ...]}`. Only the shape is checked here.
fn read_index(path: &Path) -> Result<BTreeMap<String, Vec<String>>, DataError> {
    let mut index = BTreeMap::new();
    for (key, value) in read_entries(path)? {
        let tokens = match &value {
            Value::Array(list) => list
                .iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(shape(
                        path,
                        &key,
                        format!("token is {}, expected a string", kind(other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            other => {
                return Err(shape(
                    path,
                    &key,
                    format!("value is {}, expected a list of tokens", kind(other)),
                ))
            }
        };
        index.insert(key, tokens);
    }
    Ok(index)
}

/// Finds the single `<Name>.inter.json` in `dir` and returns its name part.
fn find_name(dir: &Path) -> Result<String, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let file_name = entry.map_err(io)?.file_name();
        if let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix(".inter.json"))
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    match names.len() {
        0 => Err(DataError::NoInterFile {
            dir: dir.to_path_buf(),
        }),
        1 => Ok(names.remove(0)),
        _ => Err(DataError::ManyInterFiles {
            dir: dir.to_path_buf(),
            found: names.iter().map(|n| format!("{n}.inter.json")).collect(),
        }),
    }
}

pub(crate) fn load(dir: &Path) -> Result<Dataset, DataError> {
    let name = find_name(dir)?;
    let inter_path = dir.join(format!("{name}.inter.json"));
    let item_path = dir.join(format!("{name}.item.json"));
    // Only the exact `<Name>.index.json`: sibling files like `Beauty.letter-index.json` are
    // alternative indices the user must ask for by name.
    let index_path: PathBuf = dir.join(format!("{name}.index.json"));
    if !item_path.is_file() {
        return Err(DataError::MissingItemFile {
            path: item_path,
            inter: inter_path,
        });
    }
    let items = read_items(&item_path)?;
    let interactions = read_interactions(&inter_path)?;
    let lookup = key_lookup(&items);
    let mut users = Vec::with_capacity(interactions.len());
    let mut sequences = Vec::with_capacity(interactions.len());
    for (user, keys) in interactions {
        let seq = resolve_sequence(
            &inter_path,
            || Location::Key(user.clone()),
            &keys,
            &lookup,
            &item_path,
        )?;
        users.push(user);
        sequences.push(seq);
    }
    let index = if index_path.is_file() {
        Some(read_index(&index_path)?)
    } else {
        None
    };
    Dataset::from_parts(name, users, sequences, items, index)
}
