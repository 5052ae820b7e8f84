//! Closed-form checks of Recall@K and NDCG@K for leave-one-out, one target per user.

use llmbs::metrics::{coverage, rank_of, MetricAccumulator, Metrics};

const EPS: f64 = 1e-12;

fn one(ranked: &[u32], target: u32) -> Metrics {
    let mut acc = MetricAccumulator::default();
    acc.add(ranked, target);
    acc.finish()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < EPS, "{a} != {b}");
}

/// Asserts Recall@1/5/10 and NDCG@5/10 in that order.
fn expect(m: &Metrics, recall: [f64; 3], ndcg: [f64; 2]) {
    assert_eq!(m.recall.keys().copied().collect::<Vec<_>>(), [1, 5, 10]);
    assert_eq!(m.ndcg.keys().copied().collect::<Vec<_>>(), [5, 10]);
    for (got, want) in m.recall.values().zip(recall) {
        close(*got, want);
    }
    for (got, want) in m.ndcg.values().zip(ndcg) {
        close(*got, want);
    }
}

#[test]
fn hit_at_rank_one() {
    let m = one(&[7, 1, 2, 3], 7);
    assert_eq!(m.users, 1);
    expect(&m, [1.0, 1.0, 1.0], [1.0, 1.0]);
}

#[test]
fn hit_at_rank_three() {
    // NDCG = 1 / log2(3 + 1) = 0.5.
    let m = one(&[5, 6, 7, 8, 9, 10], 7);
    expect(&m, [0.0, 1.0, 1.0], [0.5, 0.5]);
}

#[test]
fn miss() {
    let m = one(&[1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12], 7);
    expect(&m, [0.0, 0.0, 0.0], [0.0, 0.0]);
    expect(&one(&[], 7), [0.0, 0.0, 0.0], [0.0, 0.0]);
}

#[test]
fn duplicates_before_the_target_shift_nothing() {
    // Raw position 5, but only two distinct items precede it: rank 3.
    let m = one(&[5, 5, 6, 5, 6, 7], 7);
    expect(&m, [0.0, 1.0, 1.0], [0.5, 0.5]);
    // Eleven copies of one item do not push the target out of the top 5.
    let mut ranked = vec![1; 11];
    ranked.push(2);
    let m = one(&ranked, 2);
    let n = 1.0 / 3f64.log2();
    expect(&m, [0.0, 1.0, 1.0], [n, n]);
}

#[test]
fn only_exact_match_counts() {
    expect(&one(&[70, 17, 77, 71], 7), [0.0, 0.0, 0.0], [0.0, 0.0]);
}

#[test]
fn target_beyond_k() {
    // Rank 6: outside the top 5, inside the top 10.
    let m = one(&[1, 2, 3, 4, 5, 7], 7);
    expect(&m, [0.0, 0.0, 1.0], [0.0, 1.0 / 7f64.log2()]);
    // Rank 11: outside everything.
    let ranked: Vec<u32> = (100..110).chain([7]).collect();
    expect(&one(&ranked, 7), [0.0, 0.0, 0.0], [0.0, 0.0]);
}

#[test]
fn averages_over_users() {
    let mut acc = MetricAccumulator::default();
    acc.add(&[7, 1, 2], 7); // rank 1
    acc.add(&[1, 2, 7], 7); // rank 3
    acc.add(&[1, 2, 3], 7); // miss
    acc.add(&[1, 2, 3, 4, 5, 7], 7); // rank 6
    let m = acc.finish();
    assert_eq!(m.users, 4);
    let n6 = 1.0 / 7f64.log2();
    expect(
        &m,
        [0.25, 0.5, 0.75],
        [(1.0 + 0.5) / 4.0, (1.0 + 0.5 + n6) / 4.0],
    );
}

#[test]
fn merge_equals_one_pass() {
    let mut all = MetricAccumulator::default();
    let mut a = MetricAccumulator::default();
    let mut b = MetricAccumulator::default();
    for (i, target) in [3u32, 9, 1, 4].into_iter().enumerate() {
        let ranked = [1, 2, 3, 4, 5, 6];
        all.add(&ranked, target);
        if i % 2 == 0 {
            a.add(&ranked, target)
        } else {
            b.add(&ranked, target)
        }
    }
    assert!(a.merge(&b));
    assert_eq!(a.finish(), all.finish());
    assert!(!a.merge(&MetricAccumulator::new(&[1], &[1])));
}

#[test]
fn empty_accumulator_is_zero_not_nan() {
    let m = MetricAccumulator::default().finish();
    assert_eq!(m.users, 0);
    assert!(m.recall.values().chain(m.ndcg.values()).all(|&v| v == 0.0));
}

#[test]
fn configurable_ks() {
    let mut acc = MetricAccumulator::new(&[20, 2, 2, 0], &[3]);
    acc.add(&[1, 2, 3, 4], 3);
    let m = acc.finish();
    assert_eq!(m.recall.keys().copied().collect::<Vec<_>>(), [2, 20]);
    close(m.recall[&2], 0.0);
    close(m.recall[&20], 1.0);
    close(m.ndcg[&3], 0.5);
}

#[test]
fn rank_helper() {
    assert_eq!(rank_of(&[4, 4, 5, 6], 6, 10), Some(3));
    assert_eq!(rank_of(&[4, 4, 5, 6], 6, 2), None);
    assert_eq!(rank_of(&[6], 6, 0), None);
}

#[test]
fn markdown_and_json() {
    let m = one(&[5, 6, 7], 7);
    assert_eq!(
        m.markdown_header(),
        "| R@1 | R@5 | R@10 | N@5 | N@10 |\n| --- | --- | --- | --- | --- |"
    );
    assert_eq!(
        m.to_markdown_row(),
        "| 0.0000 | 1.0000 | 1.0000 | 0.5000 | 0.5000 |"
    );
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
}

#[test]
fn coverage_counts_distinct_items_of_the_top_k_lists() {
    let lists: Vec<Vec<u32>> = vec![vec![1, 2, 2, 3, 9], vec![3, 4, 1], vec![]];
    // Top-3 after dropping repeats: {1, 2, 3}, {3, 4, 1}: four items of a 10-item catalogue.
    let (n, frac) = coverage(lists.iter().map(|l| l.as_slice()), 3, 10);
    assert_eq!(n, 4);
    close(frac, 0.4);
    // One list for everyone covers K items.
    let same = vec![vec![5u32, 6, 7]; 50];
    assert_eq!(coverage(same.iter().map(|l| l.as_slice()), 10, 100).0, 3);
}

#[test]
fn ndcg_standard_error_by_hand() {
    // Ranks 1, miss, 3, miss at K = 10: gains 1, 0, 0.5, 0; mean 0.375; sample variance
    // (0.625^2 + 0.375^2 + 0.125^2 + 0.375^2) / 3 = 0.229167; s.e. sqrt(0.229167 / 4).
    let lists: [&[u32]; 4] = [&[7, 1], &[1, 2], &[1, 2, 7], &[]];
    let se = llmbs::metrics::ndcg_standard_error(lists.iter().map(|l| (*l, 7u32)), 10);
    assert!((se - (0.6875f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12, "{se}");
    assert_eq!(
        llmbs::metrics::ndcg_standard_error([(&[7u32][..], 7u32)], 10),
        0.0
    );
}

#[test]
fn the_default_selection_sample_resolves_the_level_the_model_aims_for() {
    // 6% of users hit at rank 2 (NDCG@10 ~0.038, TIGER's level): the standard error the best
    // checkpoint is chosen under, on the default sample and on the old 200 users.
    let se = |n: usize| {
        let hit: &[u32] = &[0, 7];
        let miss: &[u32] = &[0, 1];
        let lists = (0..n).map(|u| (if u % 50 < 3 { hit } else { miss }, 7u32));
        llmbs::metrics::ndcg_standard_error(lists, 10)
    };
    let default = llmbs::train::TrainConfig::new(llmbs::train::Stage::Initial).valid_users;
    assert!(se(default) < 0.005, "{default} users: {}", se(default));
    assert!(se(200) > 0.01, "{}", se(200));
}
