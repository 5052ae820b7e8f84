//! Behavior encoders (DIN, SASRec) on tiny synthetic data: shapes, learning a predictable next
//! item, no leakage of validation/test targets into training, determinism, and the exported
//! table and report of `llmbs behavior`.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use llmbs::behavior::batch::{din_samples, sasrec_windows};
use llmbs::behavior::eval::{cooccurring, TopK};
use llmbs::behavior::init::seeded_init;
use llmbs::behavior::{
    cooccurrence_check, train, BehaviorConfig, Din, DinConfig, EncoderKind, Ranker, SasRec,
    SasRecConfig, Silent, TrainOutcome,
};
use llmbs::data::{Dataset, Split, SplitConfig};

/// Users walk a cycle of `n` items: the next item is always the last one + 1 (mod n).
fn cycle_world(n: u32, users: u32) -> Vec<Vec<u32>> {
    (0..users)
        .map(|u| {
            let start = (u * 7) % n;
            let len = 6 + u % 5;
            (0..len).map(|j| (start + j) % n).collect()
        })
        .collect()
}

fn split_of(seqs: &[Vec<u32>]) -> Split {
    Split::leave_one_out(seqs, &SplitConfig { max_history: 20 }).unwrap()
}

fn small_cfg(encoder: EncoderKind) -> BehaviorConfig {
    let mut cfg = BehaviorConfig::new(encoder);
    cfg.dim = 16;
    cfg.epochs = 30;
    cfg.batch_size = 32;
    cfg.lr = 1e-2;
    cfg.valid_users = 0;
    cfg.patience = 1000;
    cfg.att_hidden = 8;
    cfg.blocks = 1;
    cfg.dropout = 0.1;
    cfg.negatives = 8;
    cfg
}

fn fit(seqs: &[Vec<u32>], n: usize, cfg: &BehaviorConfig) -> TrainOutcome {
    train(&split_of(seqs), n, cfg, &Device::Cpu, &mut Silent).unwrap()
}

fn table_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn din_shapes_and_batched_scoring_match_forward() {
    let (n, d) = (13usize, 8usize);
    let vm = VarMap::new();
    let din = Din::new(
        DinConfig {
            n_items: n,
            dim: d,
            att_hidden: 5,
            dropout: 0.0,
        },
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    seeded_init(&vm, 7, |_, _| llmbs::behavior::init::Init::Uniform(0.5)).unwrap();
    let dev = Device::Cpu;
    let hist = Tensor::new(&[[1u32, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]], &dev).unwrap();
    let mask = Tensor::new(
        &[[1f32, 1., 1., 0.], [1., 1., 0., 0.], [1., 1., 1., 1.]],
        &dev,
    )
    .unwrap();
    let cands = Tensor::new(&[[3u32, 0, 12], [1, 1, 2], [9, 10, 11]], &dev).unwrap();
    let s = din.forward(&hist, &mask, &cands, None).unwrap();
    assert_eq!(s.dims(), [3, 3]);
    // Every item as a candidate through forward = the chunked full-catalogue scorer.
    let all: Vec<u32> = (0..n as u32).collect();
    let cands_all = Tensor::new(all.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .repeat((3, 1))
        .unwrap();
    let want: Vec<Vec<f32>> = din
        .forward(&hist, &mask, &cands_all, None)
        .unwrap()
        .to_vec2()
        .unwrap();
    let hs: [&[u32]; 3] = [&[1, 2, 3], &[4, 5], &[6, 7, 8, 9]];
    let got = din.score_all(&hs).unwrap();
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.len(), n);
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
    let top = din.top_k(&hs, 4).unwrap();
    assert!(top.iter().all(|t| t.len() == 4));
    assert_eq!(top[0], TopK::of(&want[0], 4));
    assert_eq!(din.item_table().unwrap().dims(), [n, d]);
}

#[test]
fn sasrec_shapes() {
    let (n, d) = (11usize, 8usize);
    let vm = VarMap::new();
    let cfg = SasRecConfig {
        n_items: n,
        dim: d,
        max_len: 6,
        blocks: 2,
        heads: 2,
        dropout: 0.2,
        history_bias: true,
    };
    let m = SasRec::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    seeded_init(&vm, 3, llmbs::behavior::train::init_rule).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3, 4, 0], [5, 6, 0, 0, 0]], &Device::Cpu).unwrap();
    let h = m.forward(&ids, None).unwrap();
    assert_eq!(h.dims(), [2, 5, d]);
    assert_eq!(m.logits(&h.get(0).unwrap()).unwrap().dims(), [5, n]);
    // Causal: padding after a sequence does not change its real positions.
    let short = m
        .forward(&Tensor::new(&[[5u32, 6]], &Device::Cpu).unwrap(), None)
        .unwrap();
    let a: Vec<f32> = table_vec(&short.get(0).unwrap());
    let b: Vec<f32> = table_vec(&h.get(1).unwrap().narrow(0, 0, 2).unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
    let hs: [&[u32]; 3] = [&[1, 2, 3, 4], &[5, 6], &[1, 2, 3, 4, 5, 6, 7, 8]];
    assert_eq!(m.user_states(&hs).unwrap().dims(), [3, d]);
    let top = m.top_k(&hs, 5).unwrap();
    assert!(top.iter().all(|t| t.len() == 5));
    assert_eq!(m.item_table().unwrap().dims(), [n, d]);
}

#[test]
fn fused_cross_entropy_matches_candle() {
    let dev = Device::Cpu;
    let vals: Vec<f32> = (0..3 * 37)
        .map(|i| ((i * 17 % 23) as f32 - 11.0) * 0.7)
        .collect();
    let x = Var::from_vec(vals, (3, 37), &dev).unwrap();
    let t = Tensor::new(&[4u32, 0, 36], &dev).unwrap();
    let ours = llmbs::behavior::ce::full_cross_entropy_sum(x.as_tensor(), &t).unwrap();
    let theirs = (candle_nn::loss::cross_entropy(x.as_tensor(), &t).unwrap() * 3.0).unwrap();
    let (a, b) = (
        ours.to_scalar::<f32>().unwrap(),
        theirs.to_scalar::<f32>().unwrap(),
    );
    assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    let ga = table_vec(ours.backward().unwrap().get(&x).unwrap());
    let gb = table_vec(theirs.backward().unwrap().get(&x).unwrap());
    assert!(ga.iter().zip(&gb).all(|(p, q)| (p - q).abs() < 1e-5));
}

#[test]
fn top_k_ties_nan_and_cooccurrence() {
    assert_eq!(TopK::of(&[0.5, 2.0, f32::NAN, 2.0, 1.0], 3), [1, 3, 4]);
    assert_eq!(TopK::of(&[1.0, 1.0, 1.0], 5), [0, 1, 2]);
    let adj = cooccurring(&[vec![0, 1, 1], vec![2, 3], vec![1, 0]], 5);
    assert_eq!(adj, vec![vec![1], vec![0], vec![3], vec![2], vec![]]);
    // Items 0 and 1 are close, 2 and 3 close, 4 alone.
    let table = Tensor::new(
        &[
            [1f32, 0.0],
            [0.9, 0.1],
            [0.0, 1.0],
            [0.1, 0.9],
            [-1.0, -1.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let co = cooccurrence_check(&table, &[vec![0, 1], vec![2, 3]], 1).unwrap();
    // Neighbours 0→1, 1→0, 2→3, 3→2 co-occur; 4's neighbour does not: 4/5.
    assert!((co.neighbor_rate - 0.8).abs() < 1e-12);
    // Each of items 0..3 co-occurs with 1 of 4 others, item 4 with none: (4 * 1/4) / 5.
    assert!((co.random_rate - 0.2).abs() < 1e-12);
    assert_eq!(co.items_in_training, 4);
}

#[test]
fn sasrec_learns_a_predictable_next_item() {
    let seqs = cycle_world(30, 200);
    let mut cfg = small_cfg(EncoderKind::Sasrec);
    cfg.epochs = 25;
    let out = fit(&seqs, 30, &cfg);
    let first = out.log.first().unwrap().loss;
    let last = out.log.last().unwrap().loss;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert!(out.test.all_items.recall[&1] >= 0.9, "test {:?}", out.test);
    assert_eq!(out.table.dims(), [30, 16]);
}

#[test]
fn din_learns_a_predictable_next_item() {
    let seqs = cycle_world(30, 200);
    let out = fit(&seqs, 30, &small_cfg(EncoderKind::Din));
    let first = out.log.first().unwrap().loss;
    let last = out.log.last().unwrap().loss;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    // DIN (sampled-negative BCE) does not yet put the predictable item first as reliably as
    // SASRec's full cross-entropy: it reaches R@1 0.6 / R@10 0.97 here (random: 1/30, 1/3).
    // Issue 5 stays open on this; the bar below is what it does today.
    assert!(out.test.all_items.recall[&1] >= 0.5, "test {:?}", out.test);
    assert!(out.test.all_items.recall[&10] >= 0.9, "test {:?}", out.test);
    assert_eq!(out.table.dims(), [30, 16]);
}

/// The same training parts as `cycle_world(20, 60)`, but every user's validation and test
/// targets are items of their own (20 + 2u and 20 + 2u + 1) that never occur in training;
/// `shift` moves them to other such items.
fn leaky_world(shift: u32) -> (Vec<Vec<u32>>, usize) {
    let users = 60;
    let base = cycle_world(20, users);
    let n = 20 + 2 * users as usize + 2;
    let seqs = base
        .into_iter()
        .zip(0u32..)
        .map(|(mut s, u)| {
            let own = 20 + (2 * u + shift) % (2 * users);
            s.truncate(s.len() - 2);
            s.extend([
                own,
                if own.is_multiple_of(2) {
                    own + 1
                } else {
                    own - 1
                },
            ]);
            s
        })
        .collect();
    (seqs, n)
}

#[test]
fn training_never_sees_validation_or_test_targets() {
    let (seqs, n) = leaky_world(0);
    let split = split_of(&seqs);
    let held_out = |i: u32| i >= 20;
    // The examples each encoder trains on hold no validation or test target, as input or target.
    let samples = din_samples(&split, 20);
    assert_eq!(samples.len(), split.num_train_samples());
    assert!(samples
        .iter()
        .all(|s| !held_out(s.target) && !s.history.iter().any(|&i| held_out(i))));
    let windows = sasrec_windows(&split, 20);
    assert_eq!(
        windows.iter().map(|w| w.targets.len()).sum::<usize>(),
        split.num_train_samples()
    );
    assert!(windows
        .iter()
        .all(|w| !w.inputs.iter().chain(&w.targets).any(|&i| held_out(i))));
    // Windows cover every training target exactly once, also when histories are cut.
    let short = sasrec_windows(&split, 3);
    assert_eq!(
        short.iter().map(|w| w.targets.len()).sum::<usize>(),
        split.num_train_samples()
    );
    assert!(short.iter().all(|w| w.inputs.len() <= 3));
    // And the trained weights do not depend on them: other validation/test targets, same table.
    let (other, n2) = leaky_world(7);
    assert_eq!(n, n2);
    assert_ne!(seqs, other);
    for enc in [EncoderKind::Din, EncoderKind::Sasrec] {
        let mut cfg = small_cfg(enc);
        cfg.epochs = 3;
        cfg.eval_every = 0; // no model selection: the last epoch's weights
        let a = table_vec(&fit(&seqs, n, &cfg).table);
        let b = table_vec(&fit(&other, n, &cfg).table);
        assert_eq!(a, b, "{enc:?}");
        // The check has teeth: a different training part gives a different table.
        let (mut changed, _) = leaky_world(0);
        changed[0][0] = 19 - changed[0][0];
        assert_ne!(a, table_vec(&fit(&changed, n, &cfg).table), "{enc:?}");
    }
}

#[test]
fn same_seed_same_metrics() {
    let seqs = cycle_world(25, 80);
    for enc in [EncoderKind::Din, EncoderKind::Sasrec] {
        let mut cfg = small_cfg(enc);
        cfg.epochs = 3;
        let a = fit(&seqs, 25, &cfg);
        let b = fit(&seqs, 25, &cfg);
        assert_eq!(a.valid, b.valid, "{enc:?}");
        assert_eq!(a.test, b.test, "{enc:?}");
        assert_eq!(a.best_epoch, b.best_epoch);
        let losses = |o: &TrainOutcome| o.log.iter().map(|e| e.loss).collect::<Vec<_>>();
        assert_eq!(losses(&a), losses(&b));
        assert_eq!(table_vec(&a.table), table_vec(&b.table));
        cfg.seed += 1;
        assert_ne!(
            table_vec(&a.table),
            table_vec(&fit(&seqs, 25, &cfg).table),
            "{enc:?}"
        );
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: llmbs::commands::behavior::BehaviorArgs,
}

fn write_lcrec(dir: &Path, seqs: &[Vec<u32>], n: usize) {
    let inter: serde_json::Map<String, serde_json::Value> = seqs
        .iter()
        .enumerate()
        .map(|(u, s)| (u.to_string(), serde_json::json!(s)))
        .collect();
    let items: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            (
                i.to_string(),
                serde_json::json!({"title": format!("item {i}"), "categories": "A,B"}),
            )
        })
        .collect();
    std::fs::write(
        dir.join("Syn.inter.json"),
        serde_json::to_string(&inter).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("Syn.item.json"),
        serde_json::to_string(&items).unwrap(),
    )
    .unwrap();
}

#[test]
fn command_exports_table_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_lcrec(&data, &cycle_world(20, 60), 20);
    let out = tmp.path().join("run/embeddings/behavior.safetensors");
    for enc in ["din", "sasrec"] {
        let cli = Cli::parse_from([
            "behavior",
            "--data",
            data.to_str().unwrap(),
            "--encoder",
            enc,
            "--out",
            out.to_str().unwrap(),
            "--dim",
            "12",
            "--epochs",
            "2",
            "--batch",
            "16",
            "--device",
            "cpu",
        ]);
        llmbs::commands::behavior::run(cli.args).unwrap();
        let table = llmbs::embed::load_table(&out, Some(20)).unwrap();
        assert_eq!(table.dims(), [20, 12]);
        let dir = tmp.path().join("run/behavior").join(enc);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(report["encoder"], enc);
        assert_eq!(report["items"], 20);
        for split in ["valid", "test"] {
            assert_eq!(report[split]["users"], 60);
            assert!(report[split]["recall"]["10"].is_number());
            assert!(report[split]["ndcg"]["5"].is_number());
        }
        // The published rows belong to Beauty, not to this synthetic dataset.
        assert_eq!(report["references"].as_array().unwrap().len(), 0);
        assert!(report["cooccurrence"]["neighbor_rate"].is_number());
        assert!(report["cooccurrence"]["random_rate"].is_number());
        assert!(report["best_epoch"].as_u64().unwrap() >= 1);
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(!md.contains("published"), "{md}");
        // Only finished files: no temporaries left beside the outputs.
        for d in [dir.clone(), tmp.path().join("run/embeddings")] {
            for e in std::fs::read_dir(d).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                assert!(!name.contains(".tmp"), "{name}");
            }
        }
    }
}

#[test]
fn published_rows_show_only_for_the_dataset_they_were_published_on() {
    let beauty = Dataset::load_lcrec(Path::new("../shared/data/beauty")).unwrap();
    assert_eq!(llmbs::behavior::job::references_for(&beauty).len(), 2);
    // Same name, other data (a slice of it): none.
    let slice = Dataset::from_parts(
        beauty.name.clone(),
        beauty.users[..100].to_vec(),
        beauty.sequences[..100].to_vec(),
        beauty.items.clone(),
        None,
    )
    .unwrap();
    assert!(llmbs::behavior::job::references_for(&slice).is_empty());
}
