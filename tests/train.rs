//! The trainer on a tiny random model and a tiny synthetic catalogue: the loss goes down and
//! the model then generates the memorised next ID; gradients reach the GCT projectors and the
//! new token rows; a resumed run follows the uninterrupted loss curve; training samples never
//! hold validation or test targets.

mod common;

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use llmbs::data::{Dataset, Item, SplitConfig};
use llmbs::eval::{beam_search, Trie};
use llmbs::llm::{init::random_model, LlamaConfig};
use llmbs::tasks::build::{Encoded, TaskBuilder, TaskKind, TaskMix, TextLimits};
use llmbs::tasks::Prompts;
use llmbs::train::loss::Gct;
use llmbs::train::mixed::MixedPrecision;
use llmbs::train::optim::{AdamW, AdamWConfig};
use llmbs::train::setup::{params, restore, seed_new_modules, varmap_vars};
use llmbs::train::step::{StepConfig, Trainer};

const VOCAB: usize = 48;
const CON: u32 = 47;
const N_ITEMS: usize = 6;

fn item_id(i: usize) -> Vec<u32> {
    common::toy_item_id(i)
}

/// SRT samples of the cycle 0 -> 1 -> ... -> 5 -> 0: each item's two predecessors and itself,
/// then the next item.
fn cycle_samples(gct: bool) -> Vec<Encoded> {
    (0..N_ITEMS)
        .map(|i| {
            let hist: Vec<usize> = (0..3).map(|k| (i + N_ITEMS - 2 + k) % N_ITEMS).collect();
            common::toy_srt(&hist, (i + 1) % N_ITEMS, gct)
        })
        .collect()
}

/// The first item beam search (beam 4, trie over the catalogue) gives for each sample's prompt.
fn first_ids(model: &llmbs::llm::Llama, samples: &[Encoded]) -> Vec<u32> {
    let ids: Vec<Vec<u32>> = (0..N_ITEMS).map(item_id).collect();
    let trie = Trie::new(&ids).unwrap();
    let prompts: Vec<Vec<u32>> = samples
        .iter()
        .map(|s| s.input[..s.prompt_len].to_vec())
        .collect();
    beam_search(model, &prompts, &trie, 4)
        .unwrap()
        .iter()
        .map(|r| r[0].0)
        .collect()
}

/// AdamW with the usual betas and eps.
fn adamw(weight_decay: f64, p: &llmbs::train::optim::Params) -> AdamW {
    let cfg = AdamWConfig {
        weight_decay,
        ..AdamWConfig::default()
    };
    AdamW::new(cfg, p).unwrap()
}

/// The loss of each of `n` further steps on `samples`.
fn losses(t: &mut Trainer, samples: &[Encoded], n: usize) -> Vec<f64> {
    let stop = AtomicBool::new(false);
    (0..n)
        .map(|_| t.train_step(samples, &stop).unwrap().unwrap().loss)
        .collect()
}

fn step_cfg(lr: f64, total: usize) -> StepConfig {
    common::toy_step(lr, total, 4)
}

struct Parts {
    trainer: Trainer,
    model_vm: VarMap,
    gct_vm: VarMap,
}

fn trainer(seed: u64, lr: f64, total: usize) -> Parts {
    let dev = Device::Cpu;
    let (model_vm, model) =
        random_model(&LlamaConfig::tiny(VOCAB), seed, DType::F32, &dev).unwrap();
    let gct_vm = VarMap::new();
    // Fixed exogenous tables (as read from files in a real run).
    let table = |d: usize| {
        let v: Vec<f32> = (0..N_ITEMS * d)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) / 11.0)
            .collect();
        Tensor::from_vec(v, (N_ITEMS, d), &dev).unwrap()
    };
    let (zs, zb) = (table(8), table(4));
    let gct = Gct::new(
        32,
        zs,
        zb,
        0.5,
        3,
        VarBuilder::from_varmap(&gct_vm, DType::F32, &dev),
    )
    .unwrap();
    seed_new_modules(&gct_vm, 9).unwrap();
    let p = params(vec![
        varmap_vars(&model_vm, ""),
        varmap_vars(&gct_vm, "gct."),
    ]);
    let opt = adamw(0.01, &p);
    Parts {
        trainer: Trainer {
            model,
            params: p,
            gct: Some(gct),
            opt,
            cfg: step_cfg(lr, total),
            step: 0,
            mixed: None,
            dp: None,
            teacher: None,
        },
        model_vm,
        gct_vm,
    }
}

#[test]
fn loss_goes_down_and_the_memorised_next_id_is_generated() {
    let mut parts = trainer(1, 1e-2, 80);
    let t = &mut parts.trainer;
    let samples = cycle_samples(true);
    let stop = AtomicBool::new(false);
    let mut losses = Vec::new();
    for _ in 0..80 {
        losses.push(t.train_step(&samples, &stop).unwrap().unwrap());
    }
    let (first, last) = (losses[0].ce, losses.last().unwrap().ce);
    assert!(last < 0.1 * first, "ce {first} -> {last}");
    assert!(
        losses.last().unwrap().gct_s < losses[0].gct_s,
        "GCT semantic term did not fall"
    );
    for (i, top) in first_ids(&t.model, &samples).iter().enumerate() {
        assert_eq!(*top as usize, (i + 1) % N_ITEMS, "user {i}");
    }
}

#[test]
fn gradients_reach_the_projectors_and_the_new_token_rows() {
    let mut parts = trainer(2, 1e-3, 10);
    let before_proj = varmap_vars(&parts.gct_vm, "")
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect::<Vec<_>>();
    let emb = |vm: &VarMap| {
        varmap_vars(vm, "")
            .into_iter()
            .find(|(n, _)| n == "model.embed_tokens.weight")
            .unwrap()
            .1
            .as_tensor()
            .copy()
            .unwrap()
    };
    let e0 = emb(&parts.model_vm);
    let stop = AtomicBool::new(false);
    parts
        .trainer
        .train_step(&cycle_samples(true), &stop)
        .unwrap()
        .unwrap();
    for ((n, b), (_, v)) in before_proj.iter().zip(varmap_vars(&parts.gct_vm, "")) {
        let d = (b - v.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d > 0.0, "projector {n} did not move");
    }
    let e1 = emb(&parts.model_vm);
    let moved = |row: u32| {
        let d = (e0.get(row as usize).unwrap() - e1.get(row as usize).unwrap()).unwrap();
        d.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(
        moved(30) > 0.0 && moved(40) > 0.0,
        "ID token rows did not move"
    );
    assert!(moved(CON) > 0.0, "[CON] row did not move");
}

#[test]
fn a_resumed_run_follows_the_uninterrupted_loss_curve() {
    let samples = cycle_samples(true);
    let mut straight = trainer(3, 5e-3, 6);
    let full = losses(&mut straight.trainer, &samples, 6);

    let dir = tempfile::tempdir().unwrap();
    let mut first = trainer(3, 5e-3, 6);
    losses(&mut first.trainer, &samples, 3);
    let model_path = dir.path().join("model.safetensors");
    let proj_path = dir.path().join("projectors.safetensors");
    let opt_path = dir.path().join("optimizer.safetensors");
    first.model_vm.save(&model_path).unwrap();
    first.gct_vm.save(&proj_path).unwrap();
    first
        .trainer
        .opt
        .save(&first.trainer.params, &opt_path)
        .unwrap();

    // A fresh process: other random weights, then everything restored from the files.
    let mut resumed = trainer(99, 5e-3, 6);
    restore(&varmap_vars(&resumed.model_vm, ""), &model_path, |n| {
        n.to_string()
    })
    .unwrap();
    restore(&varmap_vars(&resumed.gct_vm, ""), &proj_path, |n| {
        n.to_string()
    })
    .unwrap();
    resumed
        .trainer
        .opt
        .load(&resumed.trainer.params, &opt_path)
        .unwrap();
    resumed.trainer.step = 3;
    let rest = losses(&mut resumed.trainer, &samples, 3);
    for (a, b) in full[3..].iter().zip(&rest) {
        assert!(
            (a - b).abs() < 1e-6,
            "straight {:?} vs resumed {rest:?}",
            &full[3..]
        );
    }
}

#[test]
fn a_raised_stop_leaves_the_parameters_untouched() {
    let mut parts = trainer(4, 1e-2, 5);
    let before = varmap_vars(&parts.model_vm, "")[0]
        .1
        .as_tensor()
        .copy()
        .unwrap();
    let stop = AtomicBool::new(true);
    assert!(parts
        .trainer
        .train_step(&cycle_samples(true), &stop)
        .unwrap()
        .is_none());
    let after = varmap_vars(&parts.model_vm, "")[0]
        .1
        .as_tensor()
        .copy()
        .unwrap();
    let d: f32 = (before - after)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(d, 0.0);
    assert_eq!(parts.trainer.step, 0);
}

/// A word-level tokenizer over the synthetic item texts, the prompt words and the ID tokens.
fn word_tokenizer(extra: &[String]) -> tokenizers::Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let mut vocab: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    vocab.insert("[UNK]".into(), 0);
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    let added: Vec<tokenizers::AddedToken> = extra
        .iter()
        .map(|t| tokenizers::AddedToken::from(t.clone(), true))
        .collect();
    tok.add_special_tokens(added).unwrap();
    tok
}

/// 12 users with disjoint items: user u owns items 6u..6u+5, bought in order; item i's title
/// is the single word `Title{i}x` (no title a prefix of another).
fn toy_catalogue(users: usize) -> Dataset {
    let items: Vec<Item> = (0..users * 6)
        .map(|i| Item {
            id: format!("{i}"),
            title: format!("Title{i}x"),
            categories: "Beauty".into(),
            brand: None,
            description: None,
            text: format!("Title{i}x. Categories: Beauty"),
        })
        .collect();
    let seqs: Vec<Vec<u32>> = (0..users as u32)
        .map(|u| (6 * u..6 * u + 6).collect())
        .collect();
    Dataset::from_parts(
        "Toy".into(),
        (0..users).map(|u| format!("u{u}")).collect(),
        seqs,
        items,
        None,
    )
    .unwrap()
}

/// One ID token `<a_i>` per item, a word tokenizer over them and `extra`, and the ID token ids.
fn toy_ids(
    ds: &Dataset,
    extra: &[String],
) -> (Vec<Vec<String>>, tokenizers::Tokenizer, Vec<Vec<u32>>) {
    let id_tokens: Vec<Vec<String>> = (0..ds.items.len())
        .map(|i| vec![format!("<a_{i}>")])
        .collect();
    let all: Vec<String> = id_tokens.iter().flatten().chain(extra).cloned().collect();
    let tok = word_tokenizer(&all);
    let vocab = tok.get_vocab(true);
    let id_ids = id_tokens
        .iter()
        .map(|v| v.iter().map(|t| vocab[t]).collect())
        .collect();
    (id_tokens, tok, id_ids)
}

#[test]
fn training_tasks_never_hold_validation_or_test_targets() {
    let users = 12;
    let ds = toy_catalogue(users);
    let split = ds.split(&SplitConfig::default()).unwrap();
    let (id_tokens, tok, id_ids) = toy_ids(&ds, &["[CON]".to_string()]);
    let vocab = tok.get_vocab(true);
    let samples = split.train_samples(20);
    let prompts = Prompts::embedded().unwrap();
    let b = TaskBuilder {
        ds: &ds,
        id_tokens: &id_tokens,
        id_ids: &id_ids,
        prompts: &prompts,
        tok: &tok,
        samples: &samples,
        text_items: (0..ds.items.len() as u32).collect(),
        limits: TextLimits::default(),
        con_id: Some(vocab["[CON]"]),
        eos_id: Some(0),
        srt_windows: None,
    };
    let held: HashSet<u32> = split
        .valid
        .iter()
        .chain(&split.test)
        .map(|s| id_ids[s.target as usize][0])
        .collect();
    let plan = b.plan(&TaskMix::default(), 2000, 7).unwrap();
    let mut kinds = HashSet::new();
    for p in &plan {
        let e = b.encode(p).unwrap();
        kinds.insert(e.kind);
        if matches!(
            e.kind,
            TaskKind::Srt | TaskKind::HistText2Id | TaskKind::HistId2Text
        ) {
            assert!(
                !e.input.iter().any(|t| held.contains(t)),
                "{:?} holds a held-out target",
                e.kind
            );
            if let Some(g) = e.gct_item {
                assert!(!held.contains(&id_ids[g as usize][0]));
                assert_eq!(*e.input.last().unwrap(), vocab["[CON]"]);
            }
        }
        assert!(e.response_len > 0 && e.prompt_len > 0);
    }
    assert_eq!(kinds.len(), 5, "every task appears: {kinds:?}");
    // Every training prefix is planned before any repeats.
    let srt: Vec<usize> = plan
        .iter()
        .filter(|p| p.kind == TaskKind::Srt)
        .map(|p| p.row)
        .collect();
    let first: HashSet<usize> = srt.iter().take(samples.len()).copied().collect();
    assert_eq!(first.len(), samples.len().min(srt.len()));
    // The same seed gives the same plan.
    assert_eq!(plan, b.plan(&TaskMix::default(), 2000, 7).unwrap());

    // Dense SRT: one window per user here (4 training items < 20), and the tokens that carry
    // loss over one pass of the windows are exactly the targets of every training prefix.
    let dense = TaskBuilder {
        srt_windows: Some(llmbs::tasks::dense::srt_windows(&samples, 20)),
        ..b.clone()
    };
    assert_eq!(dense.rows(TaskKind::Srt), users);
    let mut trained: Vec<u32> = Vec::new();
    for p in dense.plan(&TaskMix::srt_only(), users, 3).unwrap() {
        let e = dense.encode(&p).unwrap();
        assert!(!e.input.iter().any(|t| held.contains(t)));
        let mut pos = e.history_loss.clone();
        pos.extend(e.prompt_len - 1..e.prompt_len + e.response_len - 1);
        trained.extend(pos.iter().map(|&q| e.input[q + 1]));
        assert_eq!(e.loss_tokens(), pos.len());
    }
    let mut want: Vec<u32> = samples
        .iter()
        .map(|s| id_ids[s.target as usize][0])
        .collect();
    trained.sort();
    want.sort();
    assert_eq!(trained, want);
}

#[test]
fn held_out_item_text_is_in_no_prompt_or_response() {
    let ds = toy_catalogue(12);
    let split = ds.split(&SplitConfig::default()).unwrap();
    // Every title word is a token of its own, so a title in any input shows as its id.
    let titles: Vec<String> = ds.items.iter().map(|it| it.title.clone()).collect();
    let (id_tokens, tok, id_ids) = toy_ids(&ds, &titles);
    let vocab = tok.get_vocab(true);
    let samples = split.train_samples(20);
    let prompts = Prompts::embedded().unwrap();
    // A quarter of the items held out, among them targets and history items of training
    // samples.
    let heldout = llmbs::tasks::heldout::heldout_items(ds.items.len(), 0.25, 5);
    assert!(samples.iter().any(|s| heldout.contains(&s.target)));
    let b = TaskBuilder {
        ds: &ds,
        id_tokens: &id_tokens,
        id_ids: &id_ids,
        prompts: &prompts,
        tok: &tok,
        samples: &samples,
        text_items: llmbs::tasks::build::text_items(ds.items.len(), &heldout),
        limits: TextLimits::default(),
        con_id: None,
        eos_id: Some(0),
        srt_windows: None,
    };
    let hidden: HashSet<u32> = heldout
        .iter()
        .map(|&i| vocab[&titles[i as usize]])
        .collect();
    let mut kinds = HashSet::new();
    for p in b.plan(&TaskMix::default(), 3000, 11).unwrap() {
        let e = b.encode(&p).unwrap();
        kinds.insert(e.kind);
        assert!(
            !e.input.iter().any(|t| hidden.contains(t)),
            "{:?} shows a held-out item's title",
            e.kind
        );
    }
    assert_eq!(kinds.len(), 5, "every task appears: {kinds:?}");
}

#[test]
fn annealing_trains_only_the_adapter_and_switches_off_to_the_base() {
    let mut t = lora_trainer(0.0);
    assert!(t.params.names.iter().all(|n| n.contains("lora_")));
    // The frozen base (plain tensors, not variables) and its logits; a fresh adapter (B = 0)
    // changes nothing.
    let snapshot = t.model.weights();
    let ids = Tensor::new(&[[1u32, 2, 30, 40, 3]], &Device::Cpu).unwrap();
    let base_logits = t
        .model
        .forward_logits(&ids, llmbs::llm::Mode::Infer)
        .unwrap();
    let samples = cycle_samples(false);
    let stop = AtomicBool::new(false);
    let first = t.train_step(&samples, &stop).unwrap().unwrap().ce;
    let mut last = first;
    for _ in 0..4 {
        last = t.train_step(&samples, &stop).unwrap().unwrap().ce;
    }
    assert!(
        last < first,
        "adapter training did not lower the loss: {first} -> {last}"
    );
    for (n, w) in t.model.weights() {
        let d: f32 = (&w - &snapshot[&n])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "base weight {n} changed");
    }
    let on = t
        .model
        .forward_logits(&ids, llmbs::llm::Mode::Infer)
        .unwrap();
    t.model.set_adapter_enabled(false);
    let off = t
        .model
        .forward_logits(&ids, llmbs::llm::Mode::Infer)
        .unwrap();
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    assert_eq!(
        diff(&off, &base_logits),
        0.0,
        "adapter off must be the base model"
    );
    assert!(
        diff(&on, &base_logits) > 1e-3,
        "the trained adapter changes nothing"
    );
}

/// A frozen tiny base with a fresh LoRA adapter (dropout `p`) as the only trainable part.
fn lora_trainer(p: f32) -> Trainer {
    let (model, lora_vm) = common::toy_lora_model(VOCAB, p);
    let params = params(vec![varmap_vars(&lora_vm, "")]);
    let opt = adamw(0.0, &params);
    Trainer {
        model,
        params,
        gct: None,
        opt,
        cfg: step_cfg(1e-2, 5),
        step: 0,
        mixed: None,
        dp: None,
        teacher: None,
    }
}

#[test]
fn adapter_dropout_is_seeded() {
    let samples = cycle_samples(false);
    let run = |p: f32| losses(&mut lora_trainer(p), &samples, 4);
    let (a, b) = (run(0.3), run(0.3));
    assert_eq!(a, b, "same seed, different losses");
    // Dropout is really applied: without it the curve differs.
    let c = run(0.0);
    assert_ne!(a[1..], c[1..]);
}

/// bf16 compute over the f32 variables of `t` (every base variable trains).
fn mixed(t: &Trainer, vm: &VarMap) -> MixedPrecision {
    let trainable = llmbs::train::setup::named(&varmap_vars(vm, ""), "");
    MixedPrecision::new(DType::BF16, &t.model, &trainable, None).unwrap()
}

#[test]
fn bf16_compute_follows_the_f32_loss_curve_and_keeps_f32_weights() {
    let samples = cycle_samples(true);
    let mut full = trainer(1, 1e-2, 80);
    let mut half = trainer(1, 1e-2, 80);
    half.trainer.mixed = Some(mixed(&half.trainer, &half.model_vm));
    let a = losses(&mut full.trainer, &samples, 40);
    let b = losses(&mut half.trainer, &samples, 40);
    // bf16 keeps ~3 significant digits: the curves agree early and both learn the cycle.
    for k in 0..5 {
        assert!(
            (a[k] - b[k]).abs() < 0.03 * a[k],
            "step {k}: f32 {} bf16 {}",
            a[k],
            b[k]
        );
    }
    assert!(b[39] < 0.2 * b[0], "bf16 loss {} -> {}", b[0], b[39]);
    assert!(
        a.iter().zip(&b).any(|(x, y)| x != y),
        "the bf16 run is bitwise the f32 run: nothing computed in bf16"
    );
    // The variables (master weights, checkpoints, optimizer) stay f32 and moved.
    let fresh = trainer(1, 1e-2, 80);
    for ((n, v), (_, v0)) in varmap_vars(&half.model_vm, "")
        .iter()
        .zip(varmap_vars(&fresh.model_vm, "").iter())
    {
        assert_eq!(v.dtype(), DType::F32, "{n}");
        let d = common::max_diff(v.as_tensor(), v0.as_tensor());
        assert!(d > 0.0, "{n} did not train");
    }
    // The model validation uses (the bf16 compute model) generates the memorised next IDs.
    let top = first_ids(&half.trainer.model, &samples);
    let right = (0..N_ITEMS)
        .filter(|&i| top[i] as usize == (i + 1) % N_ITEMS)
        .count();
    assert!(
        right >= N_ITEMS - 1,
        "{right} of {N_ITEMS} next IDs right: {top:?}"
    );
}

#[test]
fn bf16_compute_trains_an_adapter_and_f16_is_refused() {
    let samples = cycle_samples(false);
    let mut t = lora_trainer(0.0);
    let base: std::collections::HashMap<String, Tensor> = t
        .model
        .weights()
        .into_iter()
        .map(|(k, w)| (k, w.copy().unwrap()))
        .collect();
    let lora: std::collections::HashMap<String, Tensor> = t
        .params
        .names
        .iter()
        .cloned()
        .zip(t.params.vars.iter().map(|v| v.as_tensor().clone()))
        .collect();
    let lc = llmbs::llm::LoraConfig {
        lora_dropout: 0.0,
        ..Default::default()
    };
    let none = std::collections::HashMap::new();
    assert!(MixedPrecision::new(DType::F16, &t.model, &none, None).is_err());
    t.mixed = Some(MixedPrecision::new(DType::BF16, &t.model, &none, Some((lc, lora))).unwrap());
    t.cfg.total = 30;
    let l = losses(&mut t, &samples, 30);
    assert!(l[29] < 0.5 * l[0], "adapter loss {} -> {}", l[0], l[29]);
    // The trainer's model is now the bf16 compute model: its frozen weights are the base's,
    // rounded to bf16 once.
    let f32 = |w: &Tensor| w.to_dtype(DType::F32).unwrap();
    for (k, w) in t.model.weights() {
        assert_eq!(w.dtype(), DType::BF16, "{k}");
        let want = f32(&base[&k].to_dtype(DType::BF16).unwrap());
        assert_eq!(common::max_diff(&f32(&w), &want), 0.0, "frozen {k} moved");
    }
    for v in &t.params.vars {
        assert_eq!(v.dtype(), DType::F32);
    }
}
