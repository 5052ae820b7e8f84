//! Amazon Reviews: 2014/2018 (`reviews_<Cat>[_5].json`, `meta_<Cat>.json`, the 2014 meta in
//! Python-literal syntax) and 2023 (`<Cat>.jsonl`, `meta_<Cat>.jsonl`, items by `parent_asin`,
//! millisecond timestamps). One record per line, gzipped or not.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::pylit;
use super::source::{utf8, Source};
use super::table::{strip_tags, ItemText, Table};
use super::ImportError;

/// A 2014/2018 review line; other fields (the review text) are skipped unparsed.
#[derive(Deserialize)]
struct Review2014<'a> {
    #[serde(rename = "reviewerID", borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    asin: Cow<'a, str>,
    #[serde(default)]
    overall: Option<f64>,
    #[serde(rename = "unixReviewTime", deserialize_with = "time")]
    time: i64,
}

/// A 2023 review line: the item is the parent ASIN (variants of one product share it).
#[derive(Deserialize)]
struct Review2023<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    parent_asin: Cow<'a, str>,
    #[serde(default)]
    rating: Option<f64>,
    #[serde(deserialize_with = "time")]
    timestamp: i64,
}

/// A time given as an integer, a float (floored) or a numeric string.
fn time<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct TimeVisitor;
    impl Visitor<'_> for TimeVisitor {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a timestamp (a number)")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("timestamp too large"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            Ok(v.floor() as i64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            super::parse_time(v.as_bytes()).ok_or_else(|| E::custom("timestamp is not a number"))
        }
    }
    d.deserialize_any(TimeVisitor)
}

/// serde_json's message without its own " at line L column C" (a record is one line).
fn json_error(path: &Path, line: u64, e: &serde_json::Error) -> ImportError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    ImportError::Line {
        path: path.to_path_buf(),
        line,
        column: Some(e.column().to_string()),
        msg: full.strip_suffix(&suffix).unwrap_or(&full).to_string(),
    }
}

/// Reads a review file into `table`; `v2023` picks the 2023 field names.
pub fn read_reviews(
    src: &mut Source,
    table: &mut Table,
    v2023: bool,
    min_rating: Option<f64>,
) -> Result<(), ImportError> {
    let path = src.path.clone();
    let keep = |rating: Option<f64>, line: u64| -> Result<bool, ImportError> {
        match (min_rating, rating) {
            (None, _) => Ok(true),
            (Some(min), Some(r)) => Ok(r >= min),
            (Some(_), None) => Err(ImportError::Line {
                path: path.clone(),
                line,
                column: None,
                msg: "no rating, and --min-rating needs one".into(),
            }),
        }
    };
    let err = |line, e: &serde_json::Error| json_error(&path, line, e);
    src.for_each_line(|line, bytes| {
        if v2023 {
            let r: Review2023 = serde_json::from_slice(bytes).map_err(|e| err(line, &e))?;
            let k = keep(r.rating, line)?;
            table.push(&r.user_id, &r.parent_asin, r.timestamp, k);
        } else {
            let r: Review2014 = serde_json::from_slice(bytes).map_err(|e| err(line, &e))?;
            let k = keep(r.overall, line)?;
            table.push(&r.user, &r.asin, r.time, k);
        }
        Ok(())
    })
}

/// Parses a meta line: JSON (2018, 2023), else a Python literal (2014).
fn parse_meta(path: &Path, line: u64, bytes: &[u8]) -> Result<Value, ImportError> {
    let json_err = match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let text = utf8(path, line, None, bytes)?;
    let looks_python = text.trim_start().starts_with("{'") || text.contains("': ");
    if !looks_python {
        return Err(json_error(path, line, &json_err));
    }
    pylit::parse(text).map_err(|e| ImportError::Line {
        path: path.to_path_buf(),
        line,
        column: Some(e.column.to_string()),
        msg: format!("malformed Python literal: {}", e.msg),
    })
}

/// A string, or a list of strings joined by `sep` (lists stop at a `</span>` entry: the 2018
/// scrape appended HTML fragments to some category lists, which LC-Rec's script also cuts).
fn joined(v: Option<&Value>, sep: &str) -> String {
    match v {
        Some(Value::String(s)) => strip_tags(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(Value::as_str)
            .take_while(|s| !s.contains("</span>"))
            .map(strip_tags)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(sep),
        _ => String::new(),
    }
}

/// The item text fields of one meta record, whichever release it comes from.
fn meta_text(obj: &serde_json::Map<String, Value>) -> ItemText {
    // 2014: `categories` is a list of category paths; the first is the product's own (the
    // LC-Rec Beauty files carry exactly it). 2018: `category`, one path. 2023: `categories`,
    // one path, often empty, then `main_category` stands in.
    let categories = match obj.get("categories") {
        Some(Value::Array(paths)) if paths.first().is_some_and(Value::is_array) => {
            joined(paths.first(), ",")
        }
        other => joined(other, ","),
    };
    let categories = [
        categories,
        joined(obj.get("category"), ","),
        joined(obj.get("main_category"), ","),
        joined(obj.get("main_cat"), ","),
    ]
    .into_iter()
    .find(|c| !c.is_empty())
    .unwrap_or_default();
    let brand = [
        obj.get("brand"),
        obj.get("store"),
        obj.get("details").and_then(|d| d.get("Brand")),
    ]
    .into_iter()
    .map(|v| joined(v, " "))
    // 2018 brands sometimes carry the page's "by" line prefix.
    .map(|b| b.strip_prefix("by ").unwrap_or(&b).trim().to_string())
    .find(|b| !b.is_empty())
    .unwrap_or_default();
    ItemText {
        title: joined(obj.get("title"), " "),
        categories,
        brand,
        description: joined(obj.get("description"), " "),
    }
}

/// Reads a meta file: the text of every item the interactions mention, keyed by `asin` (2014,
/// 2018) or `parent_asin` (2023).
pub fn read_meta(src: &mut Source, table: &mut Table, v2023: bool) -> Result<(), ImportError> {
    let key = if v2023 { "parent_asin" } else { "asin" };
    let path = src.path.clone();
    src.for_each_line(|line, bytes| {
        let at = |msg: String| ImportError::Line {
            path: path.clone(),
            line,
            column: None,
            msg,
        };
        let Value::Object(obj) = parse_meta(&path, line, bytes)? else {
            return Err(at("a meta record must be an object".into()));
        };
        let Some(id) = obj.get(key).and_then(Value::as_str) else {
            return Err(at(format!("no \"{key}\" string in the record")));
        };
        table.describe(id, meta_text(&obj));
        Ok(())
    })
}
