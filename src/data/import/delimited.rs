//! Delimited text with a header: CSV/TSV (named columns, quoting) and RecBole atomic files
//! (`<name>.inter` / `<name>.item`, tab-separated, typed headers `field:type`, no quoting).

use std::path::Path;

use csv::{ByteRecord, ReaderBuilder};

use super::source::{utf8, Source};
use super::table::{strip_tags, ItemText, Table};
use super::{parse_time, ImportError};

/// Column names; `None` means the default name (shown in `--help`), which for the text columns
/// may be absent, while a name given explicitly must exist.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Columns {
    pub user: Option<String>,
    pub item: Option<String>,
    pub time: Option<String>,
    pub rating: Option<String>,
    pub title: Option<String>,
    pub categories: Option<String>,
    pub brand: Option<String>,
    pub description: Option<String>,
    /// Field separator; default from the extension (`.tsv`/`.tab`: tab, `.csv`: comma), else
    /// sniffed from the header line.
    pub delimiter: Option<char>,
}

/// The dialect: RecBole's typed header and lack of quoting, or CSV's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Csv,
    Recbole,
}

fn or<'a>(name: &'a Option<String>, default: &'a str) -> &'a str {
    name.as_deref().unwrap_or(default)
}

/// An open delimited file with its header names (RecBole types stripped).
struct Delimited<'s> {
    path: &'s Path,
    reader: csv::Reader<&'s mut dyn std::io::BufRead>,
    header: Vec<String>,
}

fn csv_error(path: &Path, e: csv::Error) -> ImportError {
    let line = e.position().map_or(0, csv::Position::line);
    match e.into_kind() {
        csv::ErrorKind::Io(source) => ImportError::Io {
            path: path.to_path_buf(),
            source,
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => ImportError::Line {
            path: path.to_path_buf(),
            line,
            column: None,
            msg: format!("{len} fields, the header has {expected_len}"),
        },
        other => ImportError::Line {
            path: path.to_path_buf(),
            line,
            column: None,
            msg: format!("{other:?}"),
        },
    }
}

impl<'s> Delimited<'s> {
    fn open(
        src: &'s mut Source,
        dialect: Dialect,
        delimiter: Option<char>,
    ) -> Result<Self, ImportError> {
        let (path, reader) = src.parts();
        let name = super::source::plain_name(path).to_ascii_lowercase();
        let delimiter = match (dialect, delimiter) {
            (_, Some(d)) => Some(d),
            (Dialect::Recbole, None) => Some('\t'),
            _ if name.ends_with(".tsv") || name.ends_with(".tab") => Some('\t'),
            _ if name.ends_with(".csv") => Some(','),
            _ => None,
        };
        let delimiter = match delimiter {
            Some(d) => d,
            None => {
                // Sniff: a tab in the header line means TSV.
                let buf = reader.fill_buf().map_err(super::source::io_err(path))?;
                let first = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
                if first.contains(&b'\t') {
                    '\t'
                } else {
                    ','
                }
            }
        };
        let delim = u8::try_from(delimiter).map_err(|_| ImportError::Usage {
            msg: format!("--delimiter must be one ASCII character, not '{delimiter}'"),
        })?;
        let mut reader = ReaderBuilder::new()
            .delimiter(delim)
            .quoting(dialect == Dialect::Csv)
            .has_headers(true)
            .buffer_capacity(1 << 18)
            .from_reader(reader);
        let raw = reader
            .byte_headers()
            .map_err(|e| csv_error(path, e))?
            .clone();
        let mut header = Vec::with_capacity(raw.len());
        for field in raw.iter() {
            let name = utf8(path, 1, None, field)?
                .trim_start_matches('\u{feff}')
                .trim();
            let name = match dialect {
                Dialect::Recbole => name.split(':').next().unwrap_or(name),
                Dialect::Csv => name,
            };
            header.push(name.to_string());
        }
        if header.iter().all(String::is_empty) {
            return Err(ImportError::Input {
                path: path.to_path_buf(),
                msg: "no header line".into(),
            });
        }
        Ok(Delimited {
            path,
            reader,
            header,
        })
    }

    fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn require(&self, name: &str) -> Result<usize, ImportError> {
        self.column(name).ok_or_else(|| ImportError::MissingColumn {
            path: self.path.to_path_buf(),
            column: name.to_string(),
            header: self.header.clone(),
        })
    }

    /// Calls `f(line, record)` for each data record.
    fn each(
        &mut self,
        mut f: impl FnMut(u64, &ByteRecord) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        let mut rec = ByteRecord::new();
        loop {
            match self.reader.read_byte_record(&mut rec) {
                Ok(false) => return Ok(()),
                Ok(true) => f(rec.position().map_or(0, csv::Position::line), &rec)?,
                Err(e) => return Err(csv_error(self.path, e)),
            }
        }
    }
}

/// A field's text, or an error naming the line and column.
fn field<'r>(
    path: &Path,
    line: u64,
    rec: &'r ByteRecord,
    col: usize,
    name: &str,
) -> Result<&'r str, ImportError> {
    utf8(path, line, Some(name), rec.get(col).unwrap_or(&[]))
}

/// Reads an interactions file into `table`.
pub fn read_interactions(
    src: &mut Source,
    dialect: Dialect,
    cols: &Columns,
    table: &mut Table,
    min_rating: Option<f64>,
) -> Result<(), ImportError> {
    let path = src.path.clone();
    let mut d = Delimited::open(src, dialect, cols.delimiter)?;
    let names = [
        or(&cols.user, "user_id"),
        or(&cols.item, "item_id"),
        or(&cols.time, "timestamp"),
    ];
    let [user, item, time] = [
        d.require(names[0])?,
        d.require(names[1])?,
        d.require(names[2])?,
    ];
    let rating_name = or(&cols.rating, "rating");
    let rating = match min_rating {
        Some(min) => Some((d.require(rating_name)?, min)),
        None => None,
    };
    let bad = |line, column: &str, msg: String| ImportError::Line {
        path: path.clone(),
        line,
        column: Some(format!("\"{column}\"")),
        msg,
    };
    d.each(|line, rec| {
        let u = field(&path, line, rec, user, names[0])?;
        let i = field(&path, line, rec, item, names[1])?;
        let t = rec.get(time).unwrap_or(&[]);
        let Some(t) = parse_time(t) else {
            let shown = String::from_utf8_lossy(t);
            return Err(bad(line, names[2], format!("\"{shown}\" is not a number")));
        };
        if u.is_empty() || i.is_empty() {
            let which = if u.is_empty() { names[0] } else { names[1] };
            return Err(bad(line, which, "empty id".into()));
        }
        let keep = match rating {
            None => true,
            Some((col, min)) => {
                let r = field(&path, line, rec, col, rating_name)?;
                let r: f64 = r
                    .trim()
                    .parse()
                    .map_err(|_| bad(line, rating_name, format!("\"{r}\" is not a number")))?;
                r >= min
            }
        };
        table.push(u, i, t, keep);
        Ok(())
    })
}

/// Reads an item table: the id column has the interactions' item column name; the text columns
/// found become the item's title, categories, brand and description.
pub fn read_items(
    src: &mut Source,
    dialect: Dialect,
    cols: &Columns,
    table: &mut Table,
) -> Result<(), ImportError> {
    let path = src.path.clone();
    let mut d = Delimited::open(src, dialect, cols.delimiter)?;
    let id_name = or(&cols.item, "item_id");
    let id = d.require(id_name)?;
    let text_col = |given: &Option<String>, default: &str| -> Result<Option<usize>, ImportError> {
        match given {
            Some(name) => d.require(name).map(Some),
            None => Ok(d.column(default)),
        }
    };
    let title = text_col(&cols.title, "title")?;
    let categories = text_col(&cols.categories, "categories")?;
    let brand = text_col(&cols.brand, "brand")?;
    let description = text_col(&cols.description, "description")?;
    if title.is_none() && categories.is_none() {
        return Err(ImportError::MissingColumn {
            path: path.clone(),
            column: format!(
                "{}\" or \"{}",
                or(&cols.title, "title"),
                or(&cols.categories, "categories")
            ),
            header: d.header.clone(),
        });
    }
    let header = d.header.clone();
    d.each(|line, rec| {
        let text = |col: Option<usize>| -> Result<String, ImportError> {
            match col {
                Some(c) => Ok(strip_tags(field(&path, line, rec, c, &header[c])?)),
                None => Ok(String::new()),
            }
        };
        let item = ItemText {
            title: text(title)?,
            categories: text(categories)?,
            brand: text(brand)?,
            description: text(description)?,
        };
        let key = field(&path, line, rec, id, id_name)?;
        table.describe(key, item);
        Ok(())
    })
}
