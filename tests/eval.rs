//! Beam-search exactness and consistency on a tiny random model.

mod common;

use candle_core::{DType, Device};
use llmbs::data::Sample;
use llmbs::eval::{
    beam_search, beam_search_norm, beam_search_with, evaluate, score_all_items, Normalize, Scoring,
    Search, Trie,
};
use llmbs::llm::{init::random_model, Llama, LlamaConfig};

/// A catalogue of `n` items with 3-token IDs over tokens 40..63 (and a few 2- and 4-token IDs).
fn catalogue(n: usize) -> Vec<Vec<u32>> {
    let mut ids = Vec::new();
    'outer: for a in 40u32..48 {
        for b in 48u32..56 {
            for c in 56u32..64 {
                if ids.len() == n {
                    break 'outer;
                }
                ids.push(vec![a, b, c]);
            }
        }
    }
    // IDs of unequal length, none a prefix of another.
    ids.push(vec![47, 33]);
    ids.push(vec![46, 34, 35, 36]);
    ids
}

fn search(beam: usize, batch: usize) -> Search {
    Search {
        beam,
        batch,
        scoring: Scoring::All,
        normalize: Normalize::Vocab,
    }
}

fn model(seed: u64) -> Llama {
    random_model(&LlamaConfig::tiny(64), seed, DType::F32, &Device::Cpu)
        .unwrap()
        .1
}

#[test]
fn full_beam_equals_teacher_forced_ranking() {
    let m = model(11);
    let ids = catalogue(30);
    let trie = Trie::new(&ids).unwrap();
    for prompt in [vec![1u32, 5, 9, 2], vec![7u32, 7, 3, 12, 30, 18]] {
        let exact = score_all_items(&m, &prompt, &ids).unwrap();
        let got = beam_search(&m, std::slice::from_ref(&prompt), &trie, ids.len())
            .unwrap()
            .remove(0);
        assert_eq!(got.len(), ids.len());
        common::assert_same_ranking(&got, &exact);
    }
}

#[test]
fn choice_scoring_adds_nothing_for_forced_tokens() {
    // Distinct first tokens, every later token forced: an item's score is its first token's
    // log-probability alone (the whole-ID log-likelihood of the one-token prefix).
    let m = model(13);
    let ids: Vec<Vec<u32>> = (0..12u32).map(|i| vec![40 + i, 52 + i, 20]).collect();
    let firsts: Vec<Vec<u32>> = ids.iter().map(|id| id[..1].to_vec()).collect();
    let trie = Trie::new(&ids).unwrap();
    let prompt = vec![3u32, 1, 4, 1, 5];
    let want = score_all_items(&m, &prompt, &firsts).unwrap();
    let got = beam_search_with(
        &m,
        std::slice::from_ref(&prompt),
        &trie,
        12,
        Scoring::Choices,
    )
    .unwrap()
    .remove(0);
    assert_eq!(got.len(), 12);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        assert!((g.1 - w.1).abs() < 1e-4, "{g:?} vs {w:?}");
    }
    // Summing every token ranks by the whole ID instead, which differs here.
    let all = beam_search(&m, std::slice::from_ref(&prompt), &trie, 12).unwrap();
    assert!(all[0]
        .iter()
        .zip(&got)
        .any(|(a, c)| (a.1 - c.1).abs() > 1e-3));
}

#[test]
fn small_beam_gives_valid_distinct_items() {
    let m = model(12);
    let ids = catalogue(60);
    let trie = Trie::new(&ids).unwrap();
    let prompts = vec![vec![1u32, 2, 3], vec![9u32, 8, 7, 6, 5]];
    for r in beam_search(&m, &prompts, &trie, 5).unwrap() {
        assert_eq!(r.len(), 5);
        let mut seen: Vec<u32> = r.iter().map(|x| x.0).collect();
        assert!(seen.iter().all(|&i| (i as usize) < ids.len()));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 5);
        assert!(r.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}

#[test]
fn batched_equals_one_user_at_a_time() {
    let m = model(13);
    let ids = catalogue(40);
    let trie = Trie::new(&ids).unwrap();
    let no_shared: Vec<Vec<u32>> = vec![
        vec![1, 2, 3],
        vec![9, 8, 7, 6, 5, 4, 3],
        vec![30],
        vec![11, 12, 13, 14],
    ];
    // Prompts sharing an instruction prefix (prefilled once and shared), one of them entirely.
    let shared: Vec<Vec<u32>> = vec![
        vec![5, 6, 7, 8, 1, 2],
        vec![5, 6, 7, 8, 9, 10, 11],
        vec![5, 6, 7, 8],
    ];
    for prompts in [no_shared, shared] {
        let batched = beam_search(&m, &prompts, &trie, 8).unwrap();
        for (p, b) in prompts.iter().zip(&batched) {
            let single = beam_search(&m, std::slice::from_ref(p), &trie, 8)
                .unwrap()
                .remove(0);
            let bi: Vec<u32> = b.iter().map(|x| x.0).collect();
            let si: Vec<u32> = single.iter().map(|x| x.0).collect();
            assert_eq!(bi, si);
            for (x, y) in b.iter().zip(&single) {
                assert!((x.1 - y.1).abs() < 1e-4);
            }
        }
    }
}

/// With a model that always puts the target first, the metrics wiring reports perfect scores.
#[test]
fn target_ranked_first_scores_one() {
    let m = model(14);
    let ids = catalogue(20);
    let items = llmbs::eval::ItemIds {
        tokens: ids
            .iter()
            .map(|v| v.iter().map(|t| t.to_string()).collect())
            .collect(),
        ids: ids.clone(),
        trie: Trie::new(&ids).unwrap(),
    };
    let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4, 5]];
    // The target of each sample is whatever the model ranks first.
    let tops: Vec<u32> = beam_search(&m, &prompts, &items.trie, 4)
        .unwrap()
        .iter()
        .map(|r| r[0].0)
        .collect();
    let samples: Vec<Sample> = tops
        .iter()
        .enumerate()
        .map(|(u, &t)| Sample {
            user: u as u32,
            history: vec![],
            target: t,
        })
        .collect();
    let out = evaluate(&m, &prompts, &samples, &items, search(4, 2), |_, _| Ok(())).unwrap();
    assert_eq!(out.metrics.users, 2);
    assert_eq!(out.metrics.recall[&1], 1.0);
    assert_eq!(out.metrics.ndcg[&5], 1.0);
    // And a target outside the catalogue's top-4 for both users scores zero.
    let miss: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            target: 10_000,
            ..s.clone()
        })
        .collect();
    let out = evaluate(&m, &prompts, &miss, &items, search(4, 2), |_, _| Ok(())).unwrap();
    assert_eq!(out.metrics.recall[&10], 0.0);
}

/// After the item-vocabulary loss the scores are log-probabilities over the ID tokens only:
/// the full beam then ranks every item by its teacher-forced log-likelihood under the softmax
/// over the trie's token range (computed here by hand).
#[test]
fn id_normalised_beam_equals_the_id_softmax_likelihood() {
    use candle_core::{Tensor, D};
    let m = model(14);
    let ids = catalogue(20);
    let trie = Trie::new(&ids).unwrap();
    let r = trie.token_range();
    let prompt = vec![2u32, 6, 1, 8];
    let got = beam_search_norm(
        &m,
        std::slice::from_ref(&prompt),
        &trie,
        ids.len(),
        Scoring::All,
        Normalize::Ids,
    )
    .unwrap()
    .remove(0);
    let head = m.lm_head().narrow(0, r.start as usize, r.len()).unwrap();
    let mut want: Vec<(u32, f32)> = ids
        .iter()
        .enumerate()
        .map(|(item, id)| {
            let mut seq = prompt.clone();
            seq.extend(id);
            let x = Tensor::new(seq.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let h = m
                .forward_hidden(&x, None, None, None, llmbs::llm::Mode::Infer)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .narrow(0, prompt.len() - 1, id.len())
                .unwrap();
            let lp = candle_nn::ops::log_softmax(&h.matmul(&head.t().unwrap()).unwrap(), D::Minus1)
                .unwrap();
            let lp: Vec<Vec<f32>> = lp.to_vec2().unwrap();
            let score = id
                .iter()
                .enumerate()
                .map(|(k, &t)| lp[k][(t - r.start) as usize])
                .sum();
            (item as u32, score)
        })
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        assert!((g.1 - w.1).abs() < 1e-3, "{g:?} vs {w:?}");
    }
    // Over the whole vocabulary the scores are lower (text tokens take mass).
    let full = beam_search(&m, std::slice::from_ref(&prompt), &trie, 5).unwrap();
    assert!(full[0][0].1 < got[0].1);
}
