//! Dual-source item indices (paper 3.2): hierarchical k-means recovers planted clusters, IDs
//! are unique and prefix-free under forced collisions, builds are deterministic, every mode
//! has its shape, and external indexes (LETTER's, and broken ones) load or fail clearly.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use llmbs::data::{Dataset, SplitConfig};
use llmbs::index::kmeans::{self, KMeansConfig};
use llmbs::index::{self, IndexConfig, IndexError, ItemIndex, Mode, Table};

fn beauty_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/beauty")
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

fn no_progress(_: u64) {}

/// `groups` tight, far-apart blobs of `per` points each, in `dim` dimensions; point i is in
/// blob `i % groups`. Blob `g` sits at `scale * e_g` plus a small sub-offset `sub(g)`.
fn blobs(groups: usize, per: usize, dim: usize, centre: impl Fn(usize) -> Vec<f32>) -> Table {
    let mut data = Vec::new();
    let mut state = 7u64;
    for i in 0..groups * per {
        let c = centre(i % groups);
        for v in c {
            // Tiny deterministic jitter, far below the gaps between blobs.
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            data.push(v + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1e-3);
        }
    }
    Table {
        rows: groups * per,
        dim,
        data,
    }
}

fn config(mode: Mode, k: usize, ls: usize, lb: usize) -> IndexConfig {
    IndexConfig {
        mode,
        k,
        levels_semantic: ls,
        levels_behavior: lb,
        ..IndexConfig::default()
    }
}

/// Items grouped by the token at `pos`: the set of partitions, as sorted item lists.
fn partition(index: &ItemIndex, pos: usize) -> HashSet<Vec<usize>> {
    let mut by: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, id) in index.ids.iter().enumerate() {
        by.entry(id[pos]).or_default().push(i);
    }
    by.into_values().collect()
}

#[test]
fn separated_clusters_are_recovered_exactly() {
    // 4 super-clusters, each of 4 sub-clusters of 10 points: level 1 must find the super
    // clusters, level 2 (within each) the sub-clusters.
    let (sup, sub, per, dim) = (4, 4, 10, 16);
    let centre = |g: usize| {
        let mut c = vec![0f32; dim];
        c[g / sub] = 10.0; // super-cluster g / sub ...
        c[4 + g % sub + 4 * (g / sub) % 12] += 1.0; // ... its sub-cluster g % sub
        c
    };
    for balanced in [true, false] {
        let table = blobs(sup * sub, per, dim, centre);
        let mut cfg = config(Mode::Semantic, 4, 2, 0);
        cfg.normalize = false;
        cfg.kmeans.balanced = balanced;
        let (index, report) =
            index::build(&cfg, keys(table.rows), Some(table), None, &no_progress).unwrap();
        let truth_super: HashSet<Vec<usize>> = (0..sup)
            .map(|s| {
                (0..sup * sub * per)
                    .filter(|i| (i % (sup * sub)) / sub == s)
                    .collect()
            })
            .collect();
        assert_eq!(partition(&index, 0), truth_super, "balanced={balanced}");
        // (s1, s2) pairs identify the 16 sub-clusters exactly, so 16 leaves of 10.
        let mut leaves: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
        for (i, id) in index.ids.iter().enumerate() {
            leaves.entry((id[0], id[1])).or_default().push(i);
        }
        let truth_sub: HashSet<Vec<usize>> = (0..sup * sub)
            .map(|g| {
                (0..sup * sub * per)
                    .filter(|i| i % (sup * sub) == g)
                    .collect()
            })
            .collect();
        assert_eq!(leaves.into_values().collect::<HashSet<_>>(), truth_sub);
        // 10 items per leaf share their ID: disambiguated, unique.
        assert_eq!(report.disambiguation.distinct_before, 16);
        assert_eq!(report.disambiguation.largest_group, 10);
        assert!(index.is_unique());
        assert_eq!(index.prefix_conflicts(), 0);
    }
}

#[test]
fn balanced_kmeans_respects_capacity() {
    // Skewed data: 90% of the points in one blob; no cluster may exceed ceil(n / k).
    let (n, dim, k) = (1000, 8, 16);
    let mut data = Vec::with_capacity(n * dim);
    for i in 0..n {
        for d in 0..dim {
            let base = if i % 10 == 0 { (i % 7) as f32 } else { 0.0 };
            data.push(base + ((i * 31 + d * 17) % 97) as f32 / 970.0);
        }
    }
    let cfg = KMeansConfig::default();
    let c = kmeans::kmeans(&data, dim, k, &cfg, 1, 2);
    let mut counts = vec![0usize; k];
    c.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert!(counts.iter().all(|&x| x <= n.div_ceil(k)), "{counts:?}");
    let unbalanced = kmeans::kmeans(
        &data,
        dim,
        k,
        &KMeansConfig {
            balanced: false,
            ..cfg
        },
        1,
        2,
    );
    assert!(unbalanced.labels.iter().all(|&l| (l as usize) < k));
}

#[test]
fn ids_stay_unique_under_forced_collisions() {
    // 600 items but only 3 distinct embeddings: k-means cannot separate them.
    let (n, dim) = (600, 8);
    let table = blobs(3, n / 3, dim, |g| {
        let mut c = vec![0f32; dim];
        c[g] = 1.0;
        c
    });
    let mut table = table;
    for row in table.data.chunks_exact_mut(dim) {
        for v in row.iter_mut() {
            *v = v.round(); // exact duplicates
        }
    }
    for balanced in [true, false] {
        let mut cfg = config(Mode::Unit, 4, 2, 2);
        cfg.kmeans.balanced = balanced;
        let (index, report) = index::build(
            &cfg,
            keys(n),
            Some(table.clone()),
            Some(table.clone()),
            &no_progress,
        )
        .unwrap();
        let d = &report.disambiguation;
        assert!(index.is_unique(), "balanced={balanced}");
        assert_eq!(d.distinct_after, n);
        assert_eq!(index.prefix_conflicts(), 0);
        assert_eq!(d.collisions, n - d.distinct_before);
        let with_d = index.ids.iter().filter(|id| id.len() == 5).count();
        assert_eq!(with_d, d.items_disambiguated);
        assert!(index.ids.iter().all(|id| id.len() == 4 || id.len() == 5));
        if !balanced {
            // Plain k-means puts identical points together: 3 leaves of 200.
            assert_eq!(d.distinct_before, 3);
            assert_eq!(d.largest_group, 200);
            assert_eq!(d.items_disambiguated, n);
            assert!(index.vocab.contains(&"<d_199>".to_string()));
        }
        for id in &index.ids {
            if id.len() == 5 {
                assert!(index.vocab[id[4] as usize].starts_with("<d_"));
            }
        }
    }
}

#[test]
fn builds_are_deterministic() {
    let sem = index::synthetic::gaussian_mixture(5000, 12, 40, 0.7, 1);
    let beh = index::synthetic::gaussian_mixture(5000, 6, 25, 0.7, 2);
    let run = |seed: u64, threads: usize| {
        let mut cfg = config(Mode::Unit, 16, 2, 2);
        cfg.seed = seed;
        cfg.threads = threads;
        index::build(
            &cfg,
            keys(5000),
            Some(sem.clone()),
            Some(beh.clone()),
            &no_progress,
        )
        .unwrap()
        .0
    };
    let a = run(3, 1);
    assert_eq!(a, run(3, 1));
    assert_eq!(a, run(3, 4), "thread count must not change the result");
    assert_ne!(a, run(4, 1));
    assert!(a.is_unique());
}

#[test]
fn each_mode_has_its_shape() {
    let n = 3000;
    let sem = index::synthetic::gaussian_mixture(n, 10, 30, 0.5, 5);
    let beh = index::synthetic::gaussian_mixture(n, 6, 30, 0.5, 6);
    let cases = [
        (Mode::Unit, vec!["s1", "s2", "b1", "b2"], vec![0, 2]),
        (
            Mode::BehaviorFirst,
            vec!["b1", "b2", "s1", "s2"],
            vec![0, 2],
        ),
        (Mode::Semantic, vec!["s1", "s2", "s3", "s4"], vec![0]),
        (Mode::Behavior, vec!["b1", "b2", "b3", "b4"], vec![0]),
        (Mode::Random, vec!["r1", "r2", "r3", "r4"], vec![0]),
    ];
    let k = 8;
    for (mode, levels, starts) in cases {
        let cfg = config(mode, k, 2, 2);
        let (s, b) = match mode {
            Mode::Semantic => (Some(sem.clone()), None),
            Mode::Behavior => (None, Some(beh.clone())),
            Mode::Random => (None, None),
            Mode::Unit | Mode::BehaviorFirst => (Some(sem.clone()), Some(beh.clone())),
        };
        let (index, _) = index::build(&cfg, keys(n), s, b, &no_progress).unwrap();
        assert_eq!(index.levels, levels, "{mode:?}");
        assert_eq!(index.source_starts, starts, "{mode:?}");
        assert!(index.is_unique(), "{mode:?}");
        assert_eq!(index.prefix_conflicts(), 0, "{mode:?}");
        for i in 0..n {
            let toks = index.id_strings(i);
            assert!(toks.len() == 4 || toks.len() == 5, "{mode:?}: {toks:?}");
            for (t, level) in toks.iter().zip(&levels) {
                let code: usize = t
                    .strip_prefix(&format!("<{level}_"))
                    .and_then(|r| r.strip_suffix('>'))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("{mode:?}: token {t} at level {level}"));
                assert!(code < k);
            }
        }
        // Balanced: level 1 uses all k tokens, no cluster above ceil(n / k).
        let stats = index::index_stats(&index, &index.clone().disambiguate());
        assert_eq!(stats.levels[0].tokens_used, k, "{mode:?}");
        if mode != Mode::Random {
            assert!(stats.levels[0].largest_token <= n.div_ceil(k), "{mode:?}");
        }
    }
    // A mode without its table is a config error, not a panic.
    let err = index::build(
        &config(Mode::Unit, 8, 2, 2),
        keys(n),
        Some(sem),
        None,
        &no_progress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("behavior table"), "{err}");
}

#[test]
fn small_nodes_spread_over_the_levels_left() {
    use llmbs::index::build::children;
    assert_eq!(children(12_101, 256, 2), 256);
    assert_eq!(children(47, 256, 1), 47);
    assert_eq!(children(47, 256, 3), 4);
    assert_eq!(children(12, 256, 2), 4);
    assert_eq!(children(8, 256, 3), 2);
    assert_eq!(children(1, 256, 3), 1);
    // Semantic mode on a Beauty-sized catalogue: every level carries information.
    let n = 4000;
    let t = index::synthetic::gaussian_mixture(n, 8, 50, 0.5, 3);
    let (index, report) = index::build(
        &config(Mode::Semantic, 64, 2, 2),
        keys(n),
        Some(t),
        None,
        &no_progress,
    )
    .unwrap();
    let stats = index::index_stats(&index, &report.disambiguation);
    assert!(
        stats.levels.iter().all(|l| l.tokens_used > 1),
        "{:?}",
        stats.levels
    );
    assert_eq!(stats.levels[3].prefix_groups, n);
    assert_eq!(report.disambiguation.collisions, 0);
}

#[test]
fn small_nodes_and_odd_sizes() {
    // Fewer items than k: each item its own level-1 child; one item; k larger than n.
    for n in [1, 2, 5, 17] {
        let t = index::synthetic::gaussian_mixture(n, 4, 3, 0.3, 9);
        for balanced in [true, false] {
            let mut cfg = config(Mode::Semantic, 256, 1, 1);
            cfg.kmeans.balanced = balanced;
            let (index, _) =
                index::build(&cfg, keys(n), Some(t.clone()), None, &no_progress).unwrap();
            assert!(index.is_unique());
            assert_eq!(index.len(), n);
        }
    }
}

/// A two-user, five-item dataset in a temporary directory.
fn tiny_dataset(dir: &Path) -> Dataset {
    std::fs::write(
        dir.join("Tiny.inter.json"),
        r#"{"0": ["a", "b", "c", "d"], "1": ["b", "c", "e"]}"#,
    )
    .unwrap();
    let item = |cat: &str| format!(r#"{{"title": "t", "categories": "Beauty,{cat},x"}}"#);
    std::fs::write(
        dir.join("Tiny.item.json"),
        format!(
            r#"{{"a": {}, "b": {}, "c": {}, "d": {}, "e": {}}}"#,
            item("Makeup"),
            item("Makeup"),
            item("Hair"),
            item("Hair"),
            item("Hair")
        ),
    )
    .unwrap();
    Dataset::load_lcrec(dir).unwrap()
}

#[test]
fn external_index_collisions_are_disambiguated() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let path = dir.path().join("x.index.json");
    std::fs::write(
        &path,
        r#"{"a": ["<a_1>", "<b_1>"], "b": ["<a_1>", "<b_2>"], "c": ["<a_2>", "<b_1>"],
            "d": ["<a_1>", "<b_1>"], "e": ["<a_1>", "<b_1>"]}"#,
    )
    .unwrap();
    let (index, report) = index::load_external(&path, &ds).unwrap();
    let d = &report.disambiguation;
    assert_eq!((d.items, d.distinct_before, d.distinct_after), (5, 3, 5));
    assert_eq!(
        (
            d.collisions,
            d.groups,
            d.items_disambiguated,
            d.largest_group
        ),
        (2, 1, 3, 3)
    );
    assert_eq!(report.examples, vec![vec!["a", "d", "e"]]);
    assert_eq!(index.keys, ["a", "b", "c", "d", "e"]);
    assert_eq!(index.id_strings(0), ["<a_1>", "<b_1>", "<d_0>"]);
    assert_eq!(index.id_strings(1), ["<a_1>", "<b_2>"]);
    assert_eq!(index.id_strings(4), ["<a_1>", "<b_1>", "<d_2>"]);
    assert_eq!(index.levels, ["a", "b"]);
    assert!(index.is_unique());
    assert!(
        report.to_string().contains("2 collisions in 1 groups"),
        "{report}"
    );

    let err = index::load_external_with(&path, &ds, true).unwrap_err();
    assert!(
        matches!(err, IndexError::Collisions { collisions: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("x.index.json"), "{err}");

    // The written file reads back to the same index, now without collisions.
    let out = dir.path().join("out/x.index.json");
    index.write(&out).unwrap();
    let (again, report2) = index::load_external_with(&out, &ds, true).unwrap();
    assert_eq!(
        again.ids.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 2, 2, 3, 3]
    );
    assert_eq!(
        (0..5).map(|i| again.id_strings(i)).collect::<Vec<_>>(),
        (0..5).map(|i| index.id_strings(i)).collect::<Vec<_>>()
    );
    assert_eq!(report2.disambiguation.collisions, 0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(json["b"], serde_json::json!(["<a_1>", "<b_2>"]));

    // A <d_j> that would recreate an existing ID is skipped.
    std::fs::write(
        &path,
        r#"{"a": ["<x_1>"], "b": ["<x_1>"], "c": ["<x_1>", "<d_0>"], "d": ["<x_2>"], "e": ["<x_3>"]}"#,
    )
    .unwrap();
    let (index, report) = index::load_external(&path, &ds).unwrap();
    assert!(index.is_unique());
    assert_eq!(index.id_strings(0), ["<x_1>", "<d_1>"]);
    assert_eq!(index.id_strings(1), ["<x_1>", "<d_2>"]);
    assert_eq!(report.disambiguation.prefix_conflicts, 0);
}

#[test]
fn external_index_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let path = dir.path().join("bad.index.json");
    let all = r#""a": ["<a_1>"], "b": ["<a_2>"], "c": ["<a_3>"], "d": ["<a_4>"]"#;
    let cases = [
        (
            format!("{{{all}, \"e\": [\"<a_5>\"], \"zz\": [\"<a_6>\"]}}"),
            "key \"zz\": not an item",
        ),
        (
            format!("{{{all}}}"),
            "1 dataset items without an ID, the first \"e\"",
        ),
        (
            format!("{{{all}, \"e\": []}}"),
            "key \"e\": empty token list",
        ),
        (
            format!("{{{all}, \"e\": [\"<a_1>\", 3]}}"),
            "key \"e\": token 1 is 3",
        ),
        (
            format!("{{{all}, \"e\": \"<a_5>\"}}"),
            "key \"e\": expected a list",
        ),
        (
            format!("{{{all}, \"e\": [\"<a_5>\"], \"a\": [\"<a_9>\"]}}"),
            "key \"a\" appears more than once",
        ),
        (format!("{{{all}, \"e\": [\"<a_5>\"]"), "malformed JSON"),
        ("[1, 2]".to_string(), "wrong shape"),
    ];
    for (text, want) in cases {
        std::fs::write(&path, &text).unwrap();
        let err = index::load_external(&path, &ds).unwrap_err().to_string();
        assert!(err.contains(want), "{text}\n -> {err}");
        assert!(err.contains("bad.index.json"), "{err}");
    }
    let err = index::load_external(&dir.path().join("nope.json"), &ds).unwrap_err();
    assert!(matches!(err, IndexError::Io { .. }));
}

#[test]
fn coherence_counts_pairs_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let split = ds.split(&SplitConfig::default()).unwrap();
    // Training parts: user 0 [a, b], user 1 [b] -> the only co-occurring pair is (a, b).
    let index = ItemIndex::from_codes(
        ds.items.iter().map(|it| it.id.clone()).collect(),
        vec!["s1".into(), "b1".into()],
        vec![0, 1],
        // a, b share s1 (both Makeup); c, d, e share s1 (all Hair). b1: {a, c}, {b, d, e}.
        &[0, 0, 0, 1, 1, 0, 1, 1, 1, 1],
    );
    let coh = index::coherence(&index, &ds, &split.train);
    assert_eq!(coh.len(), 2);
    let s = &coh[0];
    assert_eq!(s.level, "s1");
    assert_eq!(s.category2.within_pairs, 1 + 3);
    assert_eq!(s.category2.within, 1.0);
    assert!((s.category2.random - 4.0 / 10.0).abs() < 1e-12);
    assert!((s.cooccurrence.within - 1.0 / 4.0).abs() < 1e-12);
    assert!((s.cooccurrence.random - 1.0 / 10.0).abs() < 1e-12);
    let b = &coh[1];
    assert_eq!(b.category2.within_pairs, 1 + 3);
    assert!((b.category2.within - 1.0 / 4.0).abs() < 1e-12); // only (d, e)
    assert_eq!(b.cooccurrence.within, 0.0);
}

#[test]
fn letter_index_has_13_collisions() {
    let dir = beauty_dir();
    let ds = Dataset::load_lcrec(&dir).unwrap();
    let path = dir.join("Beauty.letter-index.json");
    let (index, report) = index::load_external(&path, &ds).unwrap();
    let d = &report.disambiguation;
    assert_eq!(d.items, 12_101);
    assert_eq!(d.distinct_before, 12_088);
    assert_eq!(d.collisions, 13);
    assert_eq!(d.groups, 11);
    assert_eq!(d.items_disambiguated, 24);
    assert_eq!(d.largest_group, 3);
    assert_eq!(d.distinct_after, 12_101);
    assert!(index.is_unique());
    assert_eq!(index.prefix_conflicts(), 0);
    assert_eq!(index.levels, ["a", "b", "c", "d"]);
    assert_eq!(
        index.id_strings(0),
        ["<a_183>", "<b_70>", "<c_232>", "<d_6>"]
    );
    assert!(matches!(
        index::load_external_with(&path, &ds, true),
        Err(IndexError::Collisions { collisions: 13, .. })
    ));
}

#[test]
fn command_writes_index_and_stats() {
    use llmbs::commands::index::{run, IndexArgs};
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let table = candle_core::Tensor::from_vec(
        (0..20).map(|v| ((v * 7) % 5) as f32).collect::<Vec<f32>>(),
        (5, 4),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let emb = dir.path().join("emb.safetensors");
    llmbs::embed::save_table(&emb, &table).unwrap();
    let out = dir.path().join("index/Tiny.index.json");
    let args = IndexArgs {
        semantic: Some(emb.clone()),
        behavior: Some(emb),
        out: out.clone(),
        stats: None,
        data: Some(dir.path().to_path_buf()),
        k: 2,
        levels_semantic: 2,
        levels_behavior: 1,
        mode: Mode::Unit,
        seed: 1,
        no_normalize: false,
        center: false,
        unbalanced: true,
        max_iters: 25,
        threads: 1,
        external: None,
        strict: false,
        synthetic: None,
        dim: 64,
        json: false,
    };
    run(args).unwrap();
    let (index, report) = index::load_external_with(&out, &ds, true).unwrap();
    // Written IDs reload as they were: levels s1 s2 b1, plus "d" where items were disambiguated.
    assert_eq!(index.levels[..3], ["s1", "s2", "b1"]);
    assert_eq!(report.disambiguation.collisions, 0);
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("index/stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats["items"], 5);
    assert_eq!(stats["distinct_ids_after"], 5);
    assert_eq!(stats["config"]["mode"], "unit");
    assert_eq!(stats["coherence"].as_array().unwrap().len(), 2);
    assert_eq!(stats["levels"][0]["level"], "s1");
    assert_eq!(stats["levels"][2]["level"], "b1");
}
