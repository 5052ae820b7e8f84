//! Data loading, item text, leave-one-out split and bad-input errors, on real Beauty and on
//! small datasets written here.

use std::path::{Path, PathBuf};

use llmbs::data::{DataError, Dataset, Location, Sample, Split, SplitConfig, Stats};

fn beauty_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/beauty")
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn sample(user: u32, history: &[u32], target: u32) -> Sample {
    Sample {
        user,
        history: history.to_vec(),
        target,
    }
}

#[test]
fn beauty_loads_with_paper_counts() {
    let ds = Dataset::load_lcrec(&beauty_dir()).unwrap();
    assert_eq!(ds.name, "Beauty");
    assert_eq!(ds.users.len(), 22_363);
    assert_eq!(ds.items.len(), 12_101);
    assert_eq!(ds.interactions(), 198_502);
    // `Beauty.letter-index.json` is not `Beauty.index.json`.
    assert!(ds.index.is_none());
    // Keys are 0..12100, so dense indices equal the source ids.
    assert_eq!(ds.item_index("123"), Some(123));
    assert_eq!(ds.items[12_100].id, "12100");
    assert_eq!(ds.users[..3], ["0", "1", "2"]);
    assert_eq!(ds.sequences[0], [0, 1, 2, 3, 4]);

    let split = ds.split(&SplitConfig::default()).unwrap();
    let stats = Stats::new(&ds, &split);
    assert_eq!(format!("{:.5}", stats.sparsity), "0.99927");
    assert_eq!((stats.min_seq_len, stats.max_seq_len), (5, 204));
    assert_eq!(format!("{:.2}", stats.mean_seq_len), "8.88");
    assert_eq!((stats.valid, stats.test), (22_363, 22_363));
    assert_eq!(stats.train_samples, 198_502 - 3 * 22_363);
    assert_eq!(split.train_samples(20).len(), stats.train_samples);
    assert_eq!(split.valid[0], sample(0, &[0, 1, 2], 3));
    assert_eq!(split.test[0], sample(0, &[0, 1, 2, 3], 4));
    assert!(split.test.iter().all(|s| s.history.len() <= 20));
}

#[test]
fn beauty_text_is_clean() {
    let ds = Dataset::load_lcrec(&beauty_dir()).unwrap();
    for item in &ds.items {
        for escape in ["&amp;", "&quot;", "&#39;", "&#9733;", "&reg;"] {
            assert!(!item.text.contains(escape), "{}: {}", item.id, item.text);
        }
        assert!(!item.text.contains('\n') && !item.text.contains("  "));
        assert_eq!(item.text.trim(), item.text);
        assert!(item.text.starts_with(&item.title));
    }
    let at = |id: &str| &ds.items[ds.item_index(id).unwrap() as usize];
    assert_eq!(
        at("0").text,
        "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce. Categories: Beauty,Makeup,Nails,Nail Polish"
    );
    assert_eq!(
        at("9372").title,
        "TheraNeem Cream - Original Organix South 2 oz Cream Vanilla"
    );
    assert_eq!(
        at("7").title,
        "Freeman Facial Charcoal & Black Sugar Polish Mask 6 oz."
    );
    assert!(at("2268").title.contains("\"Nature's Liquid Gold\""));
    assert!(ds
        .items
        .iter()
        .all(|i| i.brand.is_none() && i.description.is_none()));
}

const TOY_ITEMS: &str = r#"{
  "10": {"title": "Ten &amp; Co", "categories": "A,B", "brand": "Acme", "description": "Big\n  and &quot;bold&quot;."},
  "2": {"title": "Two", "categories": "A"},
  "1": {"title": "One&#39;s", "categories": ["A", "C"]},
  "3": {"title": "", "categories": "C"},
  "4": {"title": "Four", "categories": "", "brand": ""},
  "5": {"title": "Five", "categories": "A"},
  "6": {"title": "Six", "categories": "A"},
  "7": {"title": "Seven", "categories": "A"}
}"#;

/// Dense indices: "1"→0, "2"→1, ..., "7"→6, "10"→7 (numeric, not lexicographic, order).
const TOY_INTER: &str = r#"{"u1": [10, 2, 3, 4], "u0": ["2", 3, 10], "u2": [1, 2, 3, 4, 5, 6, 7]}"#;

fn toy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Toy.inter.json", TOY_INTER);
    write(dir.path(), "Toy.item.json", TOY_ITEMS);
    dir
}

fn check_toy_split(ds: &Dataset) {
    assert_eq!(ds.users, ["u1", "u0", "u2"]);
    assert_eq!(
        ds.sequences,
        [vec![7, 1, 2, 3], vec![1, 2, 7], vec![0, 1, 2, 3, 4, 5, 6]]
    );
    let split = ds.split(&SplitConfig { max_history: 3 }).unwrap();
    assert_eq!(
        split,
        Split {
            train: vec![vec![7, 1], vec![1], vec![0, 1, 2, 3, 4]],
            valid: vec![
                sample(0, &[7, 1], 2),
                sample(1, &[1], 2),
                sample(2, &[2, 3, 4], 5),
            ],
            test: vec![
                sample(0, &[7, 1, 2], 3),
                sample(1, &[1, 2], 7),
                sample(2, &[3, 4, 5], 6),
            ],
        }
    );
    assert_eq!(
        split.train_samples(3),
        [
            sample(0, &[7], 1),
            sample(2, &[0], 1),
            sample(2, &[0, 1], 2),
            sample(2, &[0, 1, 2], 3),
            sample(2, &[1, 2, 3], 4),
        ]
    );
    assert_eq!(split.num_train_samples(), 5);
    let stats = Stats::new(ds, &split);
    assert_eq!((stats.users, stats.items, stats.interactions), (3, 8, 14));
    assert!((stats.sparsity - (1.0 - 14.0 / 24.0)).abs() < 1e-12);
    assert_eq!((stats.min_seq_len, stats.max_seq_len), (3, 7));
    assert_eq!((stats.train_samples, stats.valid, stats.test), (5, 3, 3));
}

#[test]
fn toy_lcrec_split_and_text() {
    let dir = toy_dir();
    write(dir.path(), "Toy.letter-index.json", "not json at all");
    write(
        dir.path(),
        "Toy.index.json",
        r#"{"1": ["<a_1>", "<b_2>"], "10": ["<a_3>"]}"#,
    );
    let ds = Dataset::load_lcrec(dir.path()).unwrap();
    assert_eq!(ds.name, "Toy");
    let ids: Vec<&str> = ds.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7", "10"]);
    check_toy_split(&ds);

    let ten = &ds.items[7];
    assert_eq!(ten.title, "Ten & Co");
    assert_eq!(ten.brand.as_deref(), Some("Acme"));
    assert_eq!(
        ten.text,
        "Ten & Co. Categories: A,B. Brand: Acme. Big and \"bold\"."
    );
    assert_eq!(ds.items[0].text, "One's. Categories: A,C");
    assert_eq!(ds.items[2].text, ". Categories: C");
    assert_eq!(ds.items[3].brand, None);
    let index = ds.index.as_ref().unwrap();
    assert_eq!(index["1"], ["<a_1>", "<b_2>"]);
    assert_eq!(index.len(), 2);
}

#[test]
fn toy_sequence_file() {
    let dir = tempfile::tempdir().unwrap();
    let seq = write(
        dir.path(),
        "Toy.txt",
        "u1 10 2 3 4\n\n   \nu0\t2 3  10\r\nu2 1 2 3 4 5 6 7\n",
    );
    // Without item text, items are the ids seen (here also "1".."7" and "10").
    let bare = Dataset::load_sequences(&seq, None).unwrap();
    assert_eq!(bare.name, "Toy");
    assert_eq!(bare.items.len(), 8);
    assert!(bare.items.iter().all(|i| i.text.is_empty()));
    check_toy_split(&bare);

    let items = write(dir.path(), "Toy.item.json", TOY_ITEMS);
    let ds = Dataset::load_sequences(&seq, Some(&items)).unwrap();
    check_toy_split(&ds);
    assert_eq!(ds.items[1].text, "Two. Categories: A");
}

/// Loads `inter` (and `items`, default the toy items) as an LC-Rec dir named Bad.
fn lcrec_err(inter: &str, items: Option<&str>) -> DataError {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Bad.inter.json", inter);
    write(dir.path(), "Bad.item.json", items.unwrap_or(TOY_ITEMS));
    Dataset::load_lcrec(dir.path()).unwrap_err()
}

fn seq_err(lines: &str, items: Option<&str>) -> DataError {
    let dir = tempfile::tempdir().unwrap();
    let seq = write(dir.path(), "Bad.txt", lines);
    let items = items.map(|s| write(dir.path(), "Bad.item.json", s));
    Dataset::load_sequences(&seq, items.as_deref()).unwrap_err()
}

fn says(err: &DataError, needles: &[&str]) {
    let msg = err.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
}

fn key(k: &str) -> Location {
    Location::Key(k.to_string())
}

#[test]
fn malformed_json() {
    let err = lcrec_err("{\"u0\": [1, 2, 3],\n \"u1\": [1 2]}", None);
    assert!(
        matches!(
            err,
            DataError::Json {
                what: "malformed JSON",
                line: 2,
                ..
            }
        ),
        "{err:?}"
    );
    says(&err, &["Bad.inter.json", "malformed JSON", "line 2 column"]);
    let err = lcrec_err(r#"{"u0": [1, 2, 3]}"#, Some("{\"1\": {\"title\": \"x\""));
    says(&err, &["Bad.item.json", "malformed JSON", "line 1"]);
}

#[test]
fn wrong_shape() {
    let err = lcrec_err(r#"{"u0": [1, 2, 3], "u1": {"a": 1}}"#, None);
    assert!(
        matches!(&err, DataError::Shape { at, .. } if *at == key("u1")),
        "{err:?}"
    );
    says(
        &err,
        &[
            "Bad.inter.json",
            "key \"u1\"",
            "expected a list of item ids",
        ],
    );
    let err = lcrec_err(r#"{"u0": [1, 2, [3]]}"#, None);
    says(
        &err,
        &["Bad.inter.json", "key \"u0\"", "element 2 is a list"],
    );
    let err = lcrec_err("[[1, 2, 3]]", None);
    assert!(
        matches!(
            err,
            DataError::Json {
                what: "wrong shape",
                ..
            }
        ),
        "{err:?}"
    );
    says(&err, &["Bad.inter.json", "wrong shape", "line 1"]);
    let err = lcrec_err(r#"{"u0": [1, 2, 3]}"#, Some(r#"{"1": "One"}"#));
    says(&err, &["Bad.item.json", "key \"1\"", "expected an object"]);
    let err = lcrec_err(r#"{"u0": [1, 2, 3]}"#, Some(r#"{"1": {"title": 5}}"#));
    says(
        &err,
        &["Bad.item.json", "key \"1\"", "\"title\" is a number"],
    );
}

#[test]
fn unknown_item() {
    let err = lcrec_err(r#"{"u0": [1, 2, 3], "u1": [1, 99, 2]}"#, None);
    assert!(
        matches!(&err, DataError::UnknownItem { at, item, .. } if *at == key("u1") && item == "99")
    );
    says(
        &err,
        &["Bad.inter.json", "key \"u1\"", "\"99\"", "Bad.item.json"],
    );
    let err = seq_err("a 1 2 3\nb 1 2 99\n", Some(TOY_ITEMS));
    says(
        &err,
        &["Bad.txt", "line 2", "user \"b\"", "\"99\"", "Bad.item.json"],
    );
}

#[test]
fn user_too_short() {
    let err = lcrec_err(r#"{"u0": [1, 2, 3], "u1": [1, 2]}"#, None);
    assert!(matches!(&err, DataError::TooShort { at, len: 2, .. } if *at == key("u1")));
    says(
        &err,
        &[
            "Bad.inter.json",
            "key \"u1\"",
            "2 interactions",
            "at least 3",
        ],
    );
    let err = seq_err("a 1 2 3\n\nb\n", None);
    assert!(matches!(&err, DataError::TooShort { len: 0, .. }));
    says(&err, &["Bad.txt", "line 3", "user \"b\""]);
}

#[test]
fn duplicate_keys() {
    let err = lcrec_err(
        r#"{"u0": [1, 2, 3], "u1": [2, 3, 4], "u0": [5, 6, 7]}"#,
        None,
    );
    assert!(
        matches!(&err, DataError::Duplicate { at, .. } if *at == key("u0")),
        "{err:?}"
    );
    says(&err, &["Bad.inter.json", "key \"u0\"", "more than once"]);
    let items = r#"{"1": {"title": "a"}, "2": {"title": "b"}, "1": {"title": "c"}}"#;
    let err = lcrec_err(r#"{"u0": [1, 2, 1]}"#, Some(items));
    says(&err, &["Bad.item.json", "key \"1\"", "more than once"]);
    let err = seq_err("a 1 2 3\nb 1 2 3\n\na 4 5 6\n", None);
    assert!(matches!(
        &err,
        DataError::Duplicate {
            at: Location::Line { line: 4, .. },
            ..
        }
    ));
    says(&err, &["Bad.txt", "line 4", "user \"a\"", "more than once"]);
}

#[test]
fn empty_inputs() {
    for inter in ["", "  \n", "{}"] {
        let err = lcrec_err(inter, None);
        assert!(matches!(err, DataError::Empty { .. }), "{inter:?}: {err:?}");
        says(&err, &["Bad.inter.json", "no entries"]);
    }
    let err = lcrec_err(r#"{"u0": [1, 2, 3]}"#, Some("{ }"));
    says(&err, &["Bad.item.json", "no entries"]);
    let err = seq_err("\n  \n", None);
    says(&err, &["Bad.txt", "no entries"]);
}

#[test]
fn empty_item_text() {
    let items = r#"{"1": {"title": "a"}, "2": {"title": " &nbsp; ", "categories": "\n"}, "3": {"title": "c"}}"#;
    let err = lcrec_err(r#"{"u0": [1, 2, 3]}"#, Some(items));
    assert!(
        matches!(&err, DataError::EmptyText { at, .. } if *at == key("2")),
        "{err:?}"
    );
    says(&err, &["Bad.item.json", "key \"2\"", "empty text"]);
}

#[test]
fn directory_layout_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Toy.item.json", TOY_ITEMS);
    let err = Dataset::load_lcrec(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::NoInterFile { .. }), "{err:?}");

    write(dir.path(), "Toy.inter.json", TOY_INTER);
    write(dir.path(), "Other.inter.json", TOY_INTER);
    let err = Dataset::load_lcrec(dir.path()).unwrap_err();
    says(
        &err,
        &["Other.inter.json", "Toy.inter.json", "more than one"],
    );

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Toy.inter.json", TOY_INTER);
    let err = Dataset::load_lcrec(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::MissingItemFile { .. }), "{err:?}");
    says(&err, &["Toy.item.json", "missing"]);

    let err = Dataset::load_lcrec(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
}

#[test]
fn bad_index_shape() {
    let dir = toy_dir();
    write(dir.path(), "Toy.index.json", r#"{"1": "<a_1>"}"#);
    let err = Dataset::load_lcrec(dir.path()).unwrap_err();
    says(
        &err,
        &["Toy.index.json", "key \"1\"", "expected a list of tokens"],
    );
}

#[test]
fn split_rejects_short_hand_built_sequences() {
    let err = Split::leave_one_out(&[vec![1, 2, 3], vec![4, 5]], &SplitConfig::default());
    assert!(matches!(
        err,
        Err(DataError::SequenceTooShort { user: 1, len: 2 })
    ));
}
