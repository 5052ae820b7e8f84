//! The output directory: the LC-Rec pair with dense ids, the id maps and `import.json`, written
//! into a temporary directory beside `--out` and renamed into place only when complete.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::filter::Filtered;
use super::source::io_err;
use super::table::Table;
use super::ImportError;

/// Dense ids: users in first-seen order (those left with interactions), items in the order
/// they first occur walking those users' sequences (as LC-Rec's `convert_inters2dict` numbers
/// them), so user 0's first item is item 0.
pub struct Dense {
    /// Source user id per dense user.
    pub users: Vec<u32>,
    /// Source item id per dense item.
    pub items: Vec<u32>,
    /// Dense item per source item (`u32::MAX`: not kept).
    pub item_of: Vec<u32>,
}

impl Dense {
    pub fn new(filtered: &Filtered, n_items: usize) -> Dense {
        let mut item_of = vec![u32::MAX; n_items];
        let mut items = Vec::new();
        let mut users = Vec::new();
        for (u, seq) in (0u32..).zip(&filtered.sequences) {
            if seq.is_empty() {
                continue;
            }
            users.push(u);
            for &i in seq {
                if item_of[i as usize] == u32::MAX {
                    item_of[i as usize] = items.len() as u32;
                    items.push(i);
                }
            }
        }
        Dense {
            users,
            items,
            item_of,
        }
    }
}

/// Removes the temporary directory unless the import got as far as renaming it.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            // Best effort: a leftover hidden directory is harmless, a masked error is not.
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// `--out` must not exist, unless it is to be replaced.
pub fn check_out(out: &Path, force: bool) -> Result<(), ImportError> {
    if out.exists() && !force {
        return Err(ImportError::OutExists {
            path: out.to_path_buf(),
        });
    }
    Ok(())
}

/// A hidden sibling of `out` named with `tag` and the process id.
fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let parent = out.parent().unwrap_or(Path::new(""));
    parent.join(format!(".{name}.{tag}-{}", std::process::id()))
}

/// One item's LC-Rec fields; empty brand and description are left out, as LC-Rec's files do.
struct ItemEntry<'a> {
    title: &'a str,
    categories: &'a str,
    brand: &'a str,
    description: &'a str,
    id_field: &'a str,
    id: &'a str,
}

impl Serialize for ItemEntry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("title", self.title)?;
        m.serialize_entry("categories", self.categories)?;
        if !self.brand.is_empty() {
            m.serialize_entry("brand", self.brand)?;
        }
        if !self.description.is_empty() {
            m.serialize_entry("description", self.description)?;
        }
        m.serialize_entry(self.id_field, self.id)?;
        m.end()
    }
}

/// The whole item file as one ordered map, "0".."n-1".
struct ItemFile<'a> {
    table: &'a Table,
    dense: &'a Dense,
    id_field: &'a str,
}

impl Serialize for ItemFile<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.dense.items.len()))?;
        for (d, &i) in self.dense.items.iter().enumerate() {
            let id = self.table.items.name(i);
            let text = self.table.text(i).filter(|t| t.usable());
            let placeholder;
            let entry = match text {
                Some(t) => ItemEntry {
                    title: &t.title,
                    categories: &t.categories,
                    brand: &t.brand,
                    description: &t.description,
                    id_field: self.id_field,
                    id,
                },
                None => {
                    placeholder = format!("Item {id}");
                    let t = self.table.text(i);
                    ItemEntry {
                        title: &placeholder,
                        categories: "",
                        brand: t.map_or("", |t| &t.brand),
                        description: t.map_or("", |t| &t.description),
                        id_field: self.id_field,
                        id,
                    }
                }
            };
            m.serialize_entry(&d.to_string(), &entry)?;
        }
        m.end()
    }
}

fn write_file(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), ImportError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 16, file);
    f(&mut w).map_err(io_err(path))?;
    w.flush().map_err(io_err(path))
}

/// Writes `{"0": [0, 1, ...], ...}` on one line, as LC-Rec's `json.dump` does.
fn write_inter(w: &mut impl Write, filtered: &Filtered, dense: &Dense) -> std::io::Result<()> {
    w.write_all(b"{")?;
    for (d, &u) in dense.users.iter().enumerate() {
        if d > 0 {
            w.write_all(b", ")?;
        }
        write!(w, "\"{d}\": [")?;
        for (k, &i) in filtered.sequences[u as usize].iter().enumerate() {
            let sep = if k > 0 { ", " } else { "" };
            write!(w, "{sep}{}", dense.item_of[i as usize])?;
        }
        w.write_all(b"]")?;
    }
    w.write_all(b"}\n")
}

/// `source<TAB>dense` lines, LC-Rec's `.user2id` / `.item2id` layout.
fn write_map<'a>(w: &mut impl Write, names: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
    for (d, name) in names.enumerate() {
        writeln!(w, "{name}\t{d}")?;
    }
    Ok(())
}

/// Everything that goes into the output directory.
pub struct Output<'a> {
    pub name: &'a str,
    pub table: &'a Table,
    pub filtered: &'a Filtered,
    pub dense: &'a Dense,
    /// The item file's field for the source id (`asin`, `parent_asin`, the id column's name).
    pub id_field: &'a str,
    /// `import.json`'s content.
    pub record: &'a serde_json::Value,
}

/// Writes the dataset into a temporary sibling of `out`, then renames it to `out` (replacing an
/// existing `out` only when `force`).
pub fn write(out: &Path, force: bool, o: &Output) -> Result<(), ImportError> {
    check_out(out, force)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = sibling(out, "import");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let mut guard = TempDir(Some(tmp.clone()));
    let name = o.name;
    write_file(&tmp.join(format!("{name}.inter.json")), |w| {
        write_inter(w, o.filtered, o.dense)
    })?;
    write_file(&tmp.join(format!("{name}.item.json")), |w| {
        let items = ItemFile {
            table: o.table,
            dense: o.dense,
            id_field: o.id_field,
        };
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut *w, fmt);
        items.serialize(&mut ser).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })?;
    write_file(&tmp.join(format!("{name}.user2id")), |w| {
        write_map(w, o.dense.users.iter().map(|&u| o.table.users.name(u)))
    })?;
    write_file(&tmp.join(format!("{name}.item2id")), |w| {
        write_map(w, o.dense.items.iter().map(|&i| o.table.items.name(i)))
    })?;
    write_file(&tmp.join("import.json"), |w| {
        serde_json::to_writer_pretty(&mut *w, o.record).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })?;
    let old = sibling(out, "replaced");
    let replacing = out.exists();
    if replacing {
        fs::rename(out, &old).map_err(io_err(out))?;
    }
    if let Err(e) = fs::rename(&tmp, out) {
        if replacing {
            // Put the previous dataset back rather than leave no `--out` at all.
            let _ = fs::rename(&old, out);
        }
        return Err(io_err(out)(e));
    }
    guard.0 = None;
    if replacing {
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}
