//! Behavior knowledge in the input (issue 33, lever a; `llm::behavior_input`): a zero
//! projection changes nothing, a learned one changes the logits only from the first completed
//! history ID on, beam search with a shared prompt prefix that cuts into an ID ranks as the
//! teacher-forced full forward does, the tensors survive a checkpoint in any dtype, and the
//! tiny pipeline trains the projection and evaluates with it.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use llmbs::eval::{beam_search, score_all_items, Trie};
use llmbs::llm::behavior_input::{BehaviorInput, ITEMS, PROJ, TABLE};
use llmbs::llm::{init::random_model, Llama, LlamaConfig, Loaded, Mode, ModelSource};
use llmbs::pipeline::run_pipeline;
use llmbs::train::Stage;
use rand::{Rng, SeedableRng};

/// 3-token IDs, one token per level: 40..48, 48..56, 56..64.
fn catalogue(n: usize) -> Vec<Vec<u32>> {
    (0..n as u32)
        .map(|i| vec![40 + i / 64, 48 + (i / 8) % 8, 56 + i % 8])
        .collect()
}

fn seeded(shape: (usize, usize), seed: u64, scale: f32) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-scale..scale))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The plain random model and the same weights with a behavior input whose projection is
/// `proj_scale`-uniform (0: zero).
fn models(ids: &[Vec<u32>], proj_scale: f32) -> (Llama, Llama, HashMap<String, Tensor>) {
    let cfg = LlamaConfig::tiny(64);
    let (_, plain) = random_model(&cfg, 21, DType::F32, &Device::Cpu).unwrap();
    let zb = seeded((ids.len(), 6), 5, 1.0);
    let mut w = plain.weights();
    let mut b = BehaviorInput::fresh_tensors(&zb, ids, cfg.hidden_size, &Device::Cpu).unwrap();
    if proj_scale > 0.0 {
        b.insert(PROJ.into(), seeded((6, cfg.hidden_size), 9, proj_scale));
    }
    w.extend(b);
    let with = Llama::new(
        &cfg,
        VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert!(with.behavior_input().is_some() && plain.behavior_input().is_none());
    (plain, with, w)
}

fn logits(m: &Llama, ids: &[u32]) -> Tensor {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward_logits(&x, Mode::Infer)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

#[test]
fn a_zero_projection_changes_nothing_and_a_learned_one_acts_from_the_first_item_on() {
    let ids = catalogue(20);
    // text, item 3 (positions 2..5, complete at 4), text, item 9, text
    let mut prompt = vec![1u32, 5];
    prompt.extend(&ids[3]);
    prompt.push(7);
    prompt.extend(&ids[9]);
    prompt.push(2);
    let (plain, zero, _) = models(&ids, 0.0);
    assert_eq!(
        common::max_diff(&logits(&plain, &prompt), &logits(&zero, &prompt)),
        0.0
    );
    let (plain, with, _) = models(&ids, 0.5);
    let (a, b) = (logits(&plain, &prompt), logits(&with, &prompt));
    let before = 4; // positions 0..4 precede the first completed ID
    let d_before = common::max_diff(
        &a.narrow(0, 0, before).unwrap(),
        &b.narrow(0, 0, before).unwrap(),
    );
    assert_eq!(d_before, 0.0);
    let n = prompt.len() - before;
    let d_after = common::max_diff(
        &a.narrow(0, before, n).unwrap(),
        &b.narrow(0, before, n).unwrap(),
    );
    assert!(d_after > 1e-3, "{d_after}");
}

#[test]
fn beam_search_with_a_prefix_that_cuts_into_an_id_equals_the_full_forward() {
    let ids = catalogue(24);
    let trie = Trie::new(&ids).unwrap();
    let (_, m, _) = models(&ids, 0.5);
    // Both prompts start with the same text and the same first two ID tokens (ids 0 and 1
    // share 40, 48): a shared prefill of those would split the first history item.
    let mut p0 = vec![5u32, 6];
    p0.extend(&ids[0]);
    p0.extend([3, 9]);
    let mut p1 = vec![5u32, 6];
    p1.extend(&ids[1]);
    p1.extend([3, 9, 4]);
    let prompts = vec![p0, p1];
    let batched = beam_search(&m, &prompts, &trie, ids.len()).unwrap();
    for (p, got) in prompts.iter().zip(&batched) {
        common::assert_same_ranking(got, &score_all_items(&m, p, &ids).unwrap());
    }
}

#[test]
fn the_behavior_tensors_survive_a_checkpoint_in_bf16_and_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    common::tiny_model(&model_dir);
    let src = ModelSource::HfDir(model_dir);
    let mut l = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
    let n = 12;
    let ids: Vec<Vec<u32>> = (0..n as u32).map(|i| vec![100 + i, 200 + i]).collect();
    let d = l.cfg.hidden_size;
    let mut b =
        BehaviorInput::fresh_tensors(&seeded((n, 4), 1, 1.0), &ids, d, &Device::Cpu).unwrap();
    b.insert(PROJ.into(), seeded((4, d), 2, 0.5));
    l.weights.extend(b);
    let out = tmp.path().join("saved");
    let before = l.build(&Device::Cpu).unwrap();
    llmbs::llm::save::save_hf_dir(&out, &l.cfg, &l.tokenizer, &before.weights()).unwrap();
    let prompt = [1u32, 100, 200, 7, 103, 203];
    for dtype in [DType::F32, DType::BF16] {
        let back = Loaded::load(&ModelSource::HfDir(out.clone()), &Device::Cpu, dtype).unwrap();
        assert_eq!(back.weights[ITEMS].dtype(), DType::U32);
        assert_eq!(
            back.weights[ITEMS].to_vec2::<u32>().unwrap()[5],
            vec![105, 205]
        );
        assert_eq!(back.weights[TABLE].dims(), &[n, 4]);
        let m = back.build(&Device::Cpu).unwrap();
        assert!(m.behavior_input().is_some());
        if dtype == DType::F32 {
            let diff = common::max_diff(&logits(&before, &prompt), &logits(&m, &prompt));
            assert_eq!(diff, 0.0);
        }
    }
}

#[test]
fn the_tiny_pipeline_trains_the_projection_and_evaluates_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = common::tiny_pipeline(tmp.path());
    job.config.train_initial.behavior_input = true;
    job.config.train_initial.lr_new = Some(3e-3);
    // bf16 compute: the table enters cast, the item IDs stay u32, the projection trains in f32.
    job.config.dtype = "bf16".into();
    run_pipeline(&job).unwrap();
    let run = &job.run;
    let best = run.best_dir(Stage::Initial);
    let saved =
        candle_core::safetensors::load(best.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(saved[ITEMS].dtype(), DType::U32);
    assert_eq!(saved[PROJ].dtype(), DType::F32);
    let proj = saved[PROJ].abs().unwrap().sum_all().unwrap();
    assert!(
        proj.to_scalar::<f32>().unwrap() > 0.0,
        "the projection never moved"
    );
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.train_dir(Stage::Initial).join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["train"]["behavior_input"], true);
    assert!(std::fs::read_dir(run.eval_dir())
        .unwrap()
        .flatten()
        .any(|e| e
            .file_name()
            .to_string_lossy()
            .ends_with(".predictions.jsonl")));
    // The anneal stage is refused the option: it keeps the initial model's.
    let mut c = llmbs::config::train::TrainConfig::new(Stage::Anneal);
    c.behavior_input = true;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("behavior_input"), "{e}");
}
