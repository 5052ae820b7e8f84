//! `llmbs data import` on small files written here in the real layouts (CSV with an item table,
//! Amazon 2014 with a gzipped review file and the Python-literal meta, Amazon 2023, RecBole),
//! k-core counts against a hand-worked example, and the result read by `data stats`, the
//! dataset loader and the tiny pipeline.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{llmbs, s};
use llmbs::data::import::{import, Columns, FilterOptions, ImportConfig, ImportFormat, Repeats};
use llmbs::data::Dataset;
use serde_json::{json, Value};

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn write_gz(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(content.as_bytes()).unwrap();
    gz.finish().unwrap();
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn config(format: ImportFormat, inputs: Vec<PathBuf>, out: &Path, k: usize) -> ImportConfig {
    ImportConfig {
        format,
        inputs,
        out: out.to_path_buf(),
        name: None,
        force: false,
        filters: FilterOptions {
            user_core: k,
            item_core: k,
            ..FilterOptions::default()
        },
        missing_text: None,
        columns: Columns::default(),
    }
}

/// Steps as (name, users, items, interactions).
fn steps(dir: &Path) -> Vec<(String, u64, u64, u64)> {
    let record = read_json(&dir.join("import.json"));
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["users"].as_u64().unwrap(),
                s["items"].as_u64().unwrap(),
                s["interactions"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The hand-worked example, rows out of time order. With k = 3:
/// u1: a(10) b(20) c(30) d(40) a(50, a repeat)  u2: a(5) c(7) b(7, tie: file order)
/// u3: a b c   u4: a d e   u5: b e        item e has no text.
/// Repeats dropped: 15. Items without text (e) dropped: u4 = a d, u5 = b; 13 left.
/// k-core round 1: users u4 (2) and u5 (1) are below 3, item d (u1, u4) is below 3; all go.
/// Round 2: nothing below 3. Left: u1 a b c, u2 a c b, u3 a b c: 3 users, 3 items, 9.
const HAND_CSV: &str = "user_id,item_id,timestamp\n\
u1,b,20\nu1,a,10\nu2,a,5\nu1,c,30\nu2,c,7\nu2,b,7\nu3,a,1\nu3,b,2\nu3,c,3\n\
u4,a,1\nu4,d,2\nu4,e,3\nu5,b,1\nu5,e,2\nu1,d,40\nu1,a,50\n";

const HAND_ITEMS: &str = "item_id,title,categories,brand,description\n\
a,\"Cream, Vanilla\",Beauty|Skin,Acme,\"Soft &amp; <b>smooth</b>\"\n\
b,Lipstick,Beauty,,\n\
c,,\"Beauty,Makeup\",,\n\
d,Nail polish,Beauty,,\n\
e,,,,\n\
z,Never bought,Beauty,,\n";

#[test]
fn csv_hand_worked_kcore() {
    let tmp = tempfile::tempdir().unwrap();
    let inter = write(tmp.path(), "events.csv", HAND_CSV);
    let items = write(tmp.path(), "items.csv", HAND_ITEMS);
    let out = tmp.path().join("out");
    let summary = import(&config(ImportFormat::Csv, vec![inter, items], &out, 3)).unwrap();
    assert_eq!(summary.name, "events");
    let expected = [
        ("read", 5, 5, 16),
        ("repeats dropped", 5, 5, 15),
        ("items without text dropped", 5, 4, 13),
        ("3-core users, 3-core items", 3, 3, 9),
    ];
    let got = steps(&out);
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!((g.0.as_str(), g.1, g.2, g.3), e);
    }
    let record = read_json(&out.join("import.json"));
    assert_eq!(record["kcore_rounds"], 1);
    assert_eq!(record["item_records"]["not_in_interactions"], 1);
    assert_eq!(record["sources"][0]["role"], "interactions");
    assert_eq!(record["sources"][0]["bytes"], HAND_CSV.len());
    assert_eq!(record["sources"][1]["gzip"], false);
    assert_eq!(record["sources"][0]["sha256"].as_str().unwrap().len(), 64);
    // Dense ids: users by first appearance, items by first appearance in those sequences.
    assert_eq!(
        read_json(&out.join("events.inter.json")),
        json!({"0": [0, 1, 2], "1": [0, 2, 1], "2": [0, 1, 2]})
    );
    let item_json = read_json(&out.join("events.item.json"));
    assert_eq!(
        item_json["0"],
        json!({"title": "Cream, Vanilla", "categories": "Beauty|Skin", "brand": "Acme",
               "description": "Soft &amp; smooth", "item_id": "a"})
    );
    assert_eq!(
        item_json["2"],
        json!({"title": "", "categories": "Beauty,Makeup", "item_id": "c"})
    );
    let users = std::fs::read_to_string(out.join("events.user2id")).unwrap();
    assert_eq!(users, "u1\t0\nu2\t1\nu3\t2\n");
    let items = std::fs::read_to_string(out.join("events.item2id")).unwrap();
    assert_eq!(items, "a\t0\nb\t1\nc\t2\n");

    // The dataset loader reads it, entities unescaped once.
    let ds = Dataset::load_lcrec(&out).unwrap();
    assert_eq!(
        (ds.users.len(), ds.items.len(), ds.interactions()),
        (3, 3, 9)
    );
    assert_eq!(ds.items[0].description.as_deref(), Some("Soft & smooth"));
    let (ok, stdout, err) = llmbs(&["data", "stats", "--data", s(&out), "--json"]);
    assert!(ok, "{err}");
    let stats: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (stats["users"].as_u64(), stats["interactions"].as_u64()),
        (Some(3), Some(9))
    );
    // No temporary directory is left beside --out.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn csv_keeping_repeats_and_placeholders() {
    let tmp = tempfile::tempdir().unwrap();
    let inter = write(tmp.path(), "events.csv", HAND_CSV);
    let out = tmp.path().join("out");
    let mut cfg = config(ImportFormat::Csv, vec![inter], &out, 3);
    cfg.filters.repeats = Repeats::Keep;
    import(&cfg).unwrap();
    // No item table: every item gets a placeholder, none is dropped; u1 keeps a twice.
    // Round 1 drops u5 and items d, e; round 2 drops u4 (a only): u1 a b c a, u2, u3.
    let got = steps(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1], ("3-core users, 3-core items".into(), 3, 3, 10));
    let ds = Dataset::load_lcrec(&out).unwrap();
    assert_eq!(ds.sequences[0], [0, 1, 2, 0]);
    assert_eq!(ds.items[1].title, "Item b");
    let record = read_json(&out.join("import.json"));
    assert_eq!(record["kcore_rounds"], 2);
    assert_eq!(record["filters"]["missing_text"], "placeholder");
    assert_eq!(record["placeholder_items"], 3);
}

/// Amazon 2014: six users who each reviewed I0..I4 (30), U6 with 4 reviews (below 5) and I5
/// reviewed once (by U0): the default 5-core keeps 6 users, 5 items, 30 interactions.
fn amazon_2014_reviews() -> String {
    let mut lines = Vec::new();
    let mut t = 1_300_000_000u64;
    for u in 0..7 {
        let n = if u == 6 { 4 } else { 5 };
        for i in 0..n {
            t += 86_400;
            lines.push(format!(
                r#"{{"reviewerID": "U{u}", "asin": "I{i}", "reviewerName": "x", "helpful": [0, 0], "reviewText": "Nice \"stuff\"", "overall": 5.0, "summary": "ok", "unixReviewTime": {t}, "reviewTime": "01 1, 2011"}}"#
            ));
        }
    }
    lines.push(
        r#"{"reviewerID": "U0", "asin": "I5", "overall": 4.0, "unixReviewTime": 1}"#.to_string(),
    );
    lines.join("\n") + "\n"
}

const META_2014: &str = r#"{'asin': 'I0', 'title': "Girls' Lip Gloss", 'categories': [['Beauty', 'Makeup', 'Lips'], ['Toys']], 'brand': 'Caf\xe9', 'description': 'Shiny.\nReally.', 'salesRank': {'Beauty': 12}, 'price': 3.5}
{'asin': 'I1', 'title': 'Cream &amp; Lotion', 'categories': [['Beauty', 'Skin Care']], 'imUrl': 'http://x'}
{'asin': 'I2', 'title': 'Mascara', 'categories': [['Beauty']], 'related': {'also_bought': ['I3', 'I4']}}
{'asin': 'I3', 'title': 'Brush', 'categories': [['Beauty', 'Tools & Accessories']]}
{'asin': 'I4', 'categories': [['Beauty', 'Fragrance']]}
{'asin': 'NOPE', 'title': 'Not reviewed', 'categories': [['Beauty']]}
"#;

#[test]
fn amazon_2014_gzip_and_python_meta() {
    let tmp = tempfile::tempdir().unwrap();
    let reviews = write_gz(
        tmp.path(),
        "reviews_Beauty_5.json.gz",
        &amazon_2014_reviews(),
    );
    let meta = write(tmp.path(), "meta_Beauty.json", META_2014);
    let out = tmp.path().join("beauty");
    let (ok, stdout, err) = llmbs(&[
        "data",
        "import",
        "--from",
        "amazon",
        s(&meta),
        s(&reviews),
        "--out",
        s(&out),
    ]);
    assert!(ok, "{stdout}\n{err}");
    assert!(stdout.contains("5-core users, 5-core items"), "{stdout}");
    let got = steps(&out);
    assert_eq!(got[0], ("read".into(), 7, 6, 35));
    // I5 has no meta record: dropped with its one interaction before the k-core.
    assert_eq!(got[2], ("items without text dropped".into(), 7, 5, 34));
    assert_eq!(got[3], ("5-core users, 5-core items".into(), 6, 5, 30));
    let record = read_json(&out.join("import.json"));
    assert_eq!(record["sources"][0]["gzip"], true);
    assert_eq!(record["name"], "Beauty");
    let ds = Dataset::load_lcrec(&out).unwrap();
    assert_eq!(ds.name, "Beauty");
    assert_eq!(ds.sequences[0], [0, 1, 2, 3, 4]);
    let items = read_json(&out.join("Beauty.item.json"));
    assert_eq!(
        items["0"],
        json!({"title": "Girls' Lip Gloss", "categories": "Beauty,Makeup,Lips",
               "brand": "Café", "description": "Shiny. Really.", "asin": "I0"})
    );
    assert_eq!(ds.items[1].title, "Cream & Lotion");
    assert_eq!(ds.items[4].categories, "Beauty,Fragrance");
    let (ok, stdout, err) = llmbs(&["data", "stats", "--data", s(&out)]);
    assert!(ok && stdout.contains("| Beauty "), "{stdout}\n{err}");
}

#[test]
fn amazon_2023_parent_asin_and_ms_times() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reviews = String::new();
    // Three users, three products; P1 comes as two variants (asin V1a, V1b) of one parent.
    for (u, order) in [("A", [0, 1, 2]), ("B", [2, 1, 0]), ("C", [1, 0, 2])] {
        for (k, p) in order.iter().enumerate() {
            let asin = if *p == 1 && u == "B" { "V1b" } else { "V1a" };
            let ts = 1_588_687_728_000u64 + (k as u64) * 1000;
            reviews.push_str(&format!(
                r#"{{"rating": 5.0, "title": "t", "text": "x", "images": [], "asin": "{asin}", "parent_asin": "P{p}", "user_id": "{u}", "timestamp": {ts}, "helpful_vote": 0, "verified_purchase": true}}"#
            ));
            reviews.push('\n');
        }
    }
    let reviews = write_gz(tmp.path(), "All_Beauty.jsonl.gz", &reviews);
    let meta = write(
        tmp.path(),
        "meta_All_Beauty.jsonl",
        r#"{"main_category": "All Beauty", "title": "Serum", "average_rating": 4.8, "features": [], "description": ["Light.", "Fresh."], "price": null, "store": "Howard", "categories": [], "details": {"Brand": "H"}, "parent_asin": "P0", "bought_together": null}
{"main_category": "All Beauty", "title": "Gel", "categories": ["Beauty", "Hair"], "store": null, "details": {"Brand": "G"}, "description": [], "parent_asin": "P1"}
{"main_category": "All Beauty", "title": "Soap", "categories": [], "description": [], "parent_asin": "P2"}
"#,
    );
    let out = tmp.path().join("out");
    import(&config(
        ImportFormat::Amazon2023,
        vec![reviews, meta],
        &out,
        3,
    ))
    .unwrap();
    let ds = Dataset::load_lcrec(&out).unwrap();
    assert_eq!(ds.name, "All_Beauty");
    assert_eq!(
        (ds.users.len(), ds.items.len(), ds.interactions()),
        (3, 3, 9)
    );
    assert_eq!(ds.sequences, [vec![0, 1, 2], vec![2, 1, 0], vec![1, 0, 2]]);
    let items = read_json(&out.join("All_Beauty.item.json"));
    assert_eq!(
        items["0"],
        json!({"title": "Serum", "categories": "All Beauty", "brand": "Howard",
               "description": "Light. Fresh.", "parent_asin": "P0"})
    );
    assert_eq!(items["1"]["categories"], "Beauty,Hair");
    assert_eq!(items["1"]["brand"], "G");
}

#[test]
fn recbole_atomic_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inter = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    for (u, items) in [
        ("1", ["10", "20", "30"]),
        ("2", ["30", "20", "10"]),
        ("3", ["20", "10", "30"]),
    ] {
        for (k, i) in items.iter().enumerate() {
            inter.push_str(&format!("{u}\t{i}\t{}.0\t{}.5\n", 3 + k, 100 + k));
        }
    }
    inter.push_str("4\t10\t1.0\t1.0\n");
    let inter = write(tmp.path(), "ml.inter", &inter);
    let items = write(
        tmp.path(),
        "ml.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n\
         10\tThe \"Quoted\" Film\t1999\tDrama\n20\tB\t2000\tComedy\n30\tC\t2001\tAction Drama\n",
    );
    let out = tmp.path().join("out");
    let mut cfg = config(ImportFormat::Recbole, vec![items, inter], &out, 0);
    cfg.filters.min_rating = Some(3.0);
    cfg.columns.title = Some("movie_title".into());
    cfg.columns.categories = Some("genre".into());
    import(&cfg).unwrap();
    let got = steps(&out);
    assert_eq!(got[0], ("read".into(), 4, 3, 10));
    assert_eq!(got[1], ("rating >= 3".into(), 3, 3, 9));
    let ds = Dataset::load_lcrec(&out).unwrap();
    assert_eq!(ds.name, "ml");
    assert_eq!(ds.items[0].title, "The \"Quoted\" Film");
    assert_eq!(ds.items[2].categories, "Action Drama");
}

#[test]
fn bad_input_names_file_and_place() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let err = |cfg: &ImportConfig| import(cfg).unwrap_err().to_string();

    let bad_json = write(tmp.path(), "reviews_X.json", "{\"reviewerID\": \"u\", \"asin\": \"a\", \"unixReviewTime\": 1}\n{\"reviewerID\": \"u\",, }\n");
    let e = err(&config(ImportFormat::Amazon, vec![bad_json], &out, 5));
    assert!(e.contains("reviews_X.json: line 2, column 20"), "{e}");

    let meta = write(
        tmp.path(),
        "meta_X.json",
        "{'asin': 'a', 'title': 'ok'}\n{'asin': 'a' 'title': 'x'}\n",
    );
    let good = write(
        tmp.path(),
        "reviews_Y.json",
        "{\"reviewerID\": \"u\", \"asin\": \"a\", \"unixReviewTime\": 1}\n",
    );
    let e = err(&config(ImportFormat::Amazon, vec![good, meta], &out, 5));
    assert!(
        e.contains("meta_X.json: line 2, column 14: malformed Python literal"),
        "{e}"
    );

    let missing = write(tmp.path(), "m.csv", "user,item_id,timestamp\nu,a,1\n");
    let e = err(&config(ImportFormat::Csv, vec![missing], &out, 5));
    assert!(
        e.contains("m.csv: no column \"user_id\" (the header has: user, item_id, timestamp)"),
        "{e}"
    );

    let bad_time = write(
        tmp.path(),
        "t.tsv",
        "user_id\titem_id\ttimestamp\nu\ta\t1\nu\tb\tsoon\n",
    );
    let e = err(&config(ImportFormat::Csv, vec![bad_time], &out, 5));
    assert!(
        e.contains("t.tsv: line 3, column \"timestamp\": \"soon\" is not a number"),
        "{e}"
    );

    // The hand-worked example is empty under the default 5-core.
    let hand = write(tmp.path(), "events.csv", HAND_CSV);
    let e = err(&config(ImportFormat::Csv, vec![hand.clone()], &out, 5));
    assert!(
        e.contains("no interactions left after \"5-core users, 5-core items\""),
        "{e}"
    );

    let (ok, _, stderr) = llmbs(&[
        "data",
        "import",
        "--from",
        "parquet",
        s(&hand),
        "--out",
        s(&out),
    ]);
    assert!(
        !ok && stderr.contains("possible values: amazon, amazon2023, recbole, csv"),
        "{stderr}"
    );
    // Nothing was written by any failed import.
    assert!(!out.exists());
    let hidden = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(hidden, 0);

    // An existing --out is refused, and replaced with --force.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("old.txt"), "x").unwrap();
    let mut cfg = config(ImportFormat::Csv, vec![hand], &out, 3);
    assert!(err(&cfg).contains("already exists"));
    cfg.force = true;
    import(&cfg).unwrap();
    assert!(!out.join("old.txt").exists() && out.join("events.inter.json").exists());
}

/// 40 users over 30 items (each user 6 of them, in a pattern), imported from CSV and run
/// through the tiny pipeline: the imported directory loads as every stage reads it.
#[test]
fn imported_dataset_runs_the_tiny_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inter = String::from("user,product,ts\n");
    for u in 0..40 {
        for k in 0..6 {
            inter.push_str(&format!("user{u},p{},{}\n", (u * 7 + k * 5) % 30, 1000 + k));
        }
    }
    let mut items = String::from("product,name,cats\n");
    for i in 0..30 {
        items.push_str(&format!(
            "p{i},Product number {i},\"Beauty,Group {}\"\n",
            i % 4
        ));
    }
    let inter = write(tmp.path(), "shop.csv", &inter);
    let items = write(tmp.path(), "products.csv", &items);
    let data = tmp.path().join("data");
    let (ok, stdout, err) = llmbs(&[
        "data",
        "import",
        "--from",
        "csv",
        s(&inter),
        s(&items),
        "--out",
        s(&data),
        "--user-col",
        "user",
        "--item-col",
        "product",
        "--time-col",
        "ts",
        "--title-col",
        "name",
        "--categories-col",
        "cats",
    ]);
    assert!(ok, "{stdout}\n{err}");
    let model = tmp.path().join("model");
    common::tiny_model(&model);
    let run = tmp.path().join("run");
    let (ok, stdout, err) = llmbs(&[
        "pipeline",
        "--config",
        "tiny",
        "--data",
        s(&data),
        "--model",
        s(&model),
        "--run",
        s(&run),
        "--device",
        "cpu",
    ]);
    assert!(ok, "pipeline failed:\n{stdout}\n{err}");
    assert!(run.join("index/shop.index.json").exists());
}
