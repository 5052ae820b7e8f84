//! The run directory through the library, as the pipeline and commands call it: a tiny
//! pipeline in-process, then a stage replaced with `Start::Overwrite`, a trained run refusing
//! other prompts, and the recorded settings a later stage reads.

mod common;

use candle_core::{DType, Device};
use common::tiny_pipeline;
use llmbs::eval::run::{evaluate_run, select_users, EvalConfig, EvalJob};
use llmbs::pipeline::run_pipeline;
use llmbs::run::model::AdapterChoice;
use llmbs::run::OpenOptions;
use llmbs::train::stage::saved_state;
use llmbs::train::{run_stage, Stage, StageJob, Start, TrainConfig};

#[test]
fn stages_are_replaced_only_when_asked_and_read_the_recorded_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tiny_pipeline(tmp.path());
    run_pipeline(&job).unwrap();
    let run = job.run;
    let (_, state) = saved_state(&run, Stage::Initial).unwrap();
    assert_eq!(state.step, 3);

    // The anneal stage reads the data, index and prompts the initial stage recorded: no paths.
    let mut anneal = state.config.clone();
    anneal.stage = Stage::Anneal;
    let over = serde_json::json!({"steps": 1, "eval_every": 1, "valid_users": 2, "batch_size": 4,
        "micro_batch": 4, "max_history": 5, "tune": "lora", "lambda_s": 0.0, "lambda_b": 0.0,
        "mix": {"srt": 1.0, "id2text": 0.0, "text2id": 0.0, "hist_text2id": 0.0, "hist_id2text": 0.0}});
    let cfg = TrainConfig::resolve(&TrainConfig::new(Stage::Anneal), None, &over).unwrap();
    let job = StageJob {
        config: cfg.clone(),
        data: None,
        model: None,
        index: None,
        prompts: None,
        start: Start::Fresh,
        quiet: true,
        dtype_choice: None,
        deadline: None,
    };
    let err = run_stage(&run, &job, &Device::Cpu, DType::F32).unwrap_err();
    assert!(format!("{err:#}").contains("--overwrite"), "{err:#}");
    let job = StageJob {
        start: Start::Overwrite,
        ..job
    };
    let rep = run_stage(&run, &job, &Device::Cpu, DType::F32).unwrap();
    assert_eq!((rep.steps, rep.config.steps), (1, 1));
    // The replaced stage's log holds only the new run.
    let log = std::fs::read_to_string(run.train_dir(Stage::Anneal).join("log.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"lr\"")).count(),
        1,
        "{log}"
    );

    // A split other than the initial stage's is refused (eval reads that one too).
    let mut other = cfg.clone();
    other.max_history = 20;
    let bad = StageJob {
        config: other,
        ..job.clone()
    };
    let err = run_stage(&run, &bad, &Device::Cpu, DType::F32).unwrap_err();
    assert!(format!("{err:#}").contains("max_history 20"), "{err:#}");

    // A trained run keeps its prompts: another prompt file is refused by name.
    let prompts = tmp.path().join("prompts.json");
    std::fs::write(&prompts, llmbs::tasks::DEFAULT_PROMPTS).unwrap();
    let opened = run.open(&OpenOptions {
        prompts: Some(&prompts),
        ..Default::default()
    });
    assert!(opened.is_err_and(|e| e.to_string().contains("prompts.json")));
    let e = EvalJob {
        config: EvalConfig {
            limit: Some(4),
            beam: 10,
            template: 2,
            ..Default::default()
        },
        quiet: true,
        ..Default::default()
    };
    let r = evaluate_run(&run, &e, &Device::Cpu, DType::F32).unwrap();
    let recorded = run.record(Stage::Initial).unwrap().unwrap().prompts;
    assert_eq!(r.prompt, recorded.srt[2]);
    assert_eq!(r.max_history, 5);
}

#[test]
fn a_time_budget_evaluates_a_random_sample_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tiny_pipeline(tmp.path());
    run_pipeline(&job).unwrap();
    let run = job.run;
    let eval = |max_minutes: Option<f64>| {
        let e = EvalJob {
            config: EvalConfig {
                beam: 10,
                batch: 2,
                seed: 3,
                max_minutes,
                ..Default::default()
            },
            quiet: true,
            ..Default::default()
        };
        evaluate_run(&run, &e, &Device::Cpu, DType::F32).unwrap()
    };
    let full = eval(None);
    assert!(full.all_users && full.users == full.planned_users);

    // A budget that the first round (8 batches of 2) passes: 16 users, a seeded random sample.
    let cut = eval(Some(1e-9));
    assert_eq!((cut.users, cut.planned_users), (16, full.users));
    assert!(!cut.all_users);
    assert!(cut.label.ends_with("min-seed3"), "{}", cut.label);
    let preds = std::fs::read_to_string(&cut.predictions).unwrap();
    let users: Vec<String> = preds
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["user"].to_string())
        .collect();
    assert_eq!(users.len(), 16);
    let all = std::fs::read_to_string(&full.predictions).unwrap();
    let first16: Vec<String> = all
        .lines()
        .take(16)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["user"].to_string())
        .collect();
    assert_ne!(
        users, first16,
        "a time budget must not favour the first users"
    );
    // They are exactly the users of `--limit 16 --seed 3`, so `llmbs baselines --limit 16 --seed
    // 3` scores the same users (scripts/gpu-quality-run.sh relies on it).
    let d = run.open(&OpenOptions::default()).unwrap();
    let mut sample: Vec<String> = select_users(&d.split.test, Some(16), 3)
        .iter()
        .map(|s| serde_json::Value::from(d.ds.users[s.user as usize].clone()).to_string())
        .collect();
    let mut got = users.clone();
    sample.sort();
    got.sort();
    assert_eq!(got, sample);
    assert!(
        std::fs::read_to_string(run.eval_dir().join(format!("{}.md", cut.label)))
            .unwrap()
            .contains("16 of 40 planned users")
    );

    // A budget never reached: every user, the same rankings as without one.
    let whole = eval(Some(1e3));
    assert_eq!(whole.users, full.users);
    let lines = |p: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (a, b) = (lines(&full.predictions), lines(&whole.predictions));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x["user"], &x["rank"]), (&y["user"], &y["rank"]));
    }

    // `--limit 24 --max-minutes`: the users ranked are the first of the seeded order that
    // `--limit 24 --seed 3` (and so `llmbs baselines --limit 24 --seed 3`) takes, i.e. exactly
    // `--limit 16 --seed 3`'s users, in the baselines' order.
    let e = EvalJob {
        config: EvalConfig {
            beam: 10,
            batch: 2,
            seed: 3,
            limit: Some(24),
            max_minutes: Some(1e-9),
            ..Default::default()
        },
        quiet: true,
        ..Default::default()
    };
    let cut = evaluate_run(&run, &e, &Device::Cpu, DType::F32).unwrap();
    assert_eq!((cut.users, cut.planned_users), (16, 24));
    let got: Vec<String> = lines(&cut.predictions)
        .iter()
        .map(|l| l["user"].as_str().unwrap().to_string())
        .collect();
    let names = |n: usize| -> Vec<String> {
        select_users(&d.split.test, Some(n), 3)
            .iter()
            .map(|s| d.ds.users[s.user as usize].clone())
            .collect()
    };
    assert_eq!(got, names(16), "not the first 16 of the seeded order");
    let limit24 = names(24);
    assert!(got.iter().all(|u| limit24.contains(u)));
}

/// The `beauty` config's two evaluations of one split and sample (adapter on, then off): each
/// has its own paired comparison with the baselines, and the report shows each under its own
/// heading (not the last evaluation's under both).
#[test]
fn each_evaluation_reports_its_own_paired_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = tiny_pipeline(tmp.path());
    let on = job.config.eval[0].clone();
    let mut off = on.clone();
    off.model.adapter = AdapterChoice::Off;
    job.config.eval = vec![on, off];
    job.config.baselines = true;
    run_pipeline(&job).unwrap();
    let dir = job.run.pipeline_dir();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let evals = report["eval"].as_array().unwrap();
    assert_eq!(evals.len(), 2);
    let baselines = report["baselines"].as_array().unwrap();
    for e in evals {
        let (label, preds) = (e["label"].as_str().unwrap(), &e["predictions"]);
        let own = baselines
            .iter()
            .filter(|b| &b["against"]["predictions"] == preds)
            .count();
        assert_eq!(own, 1, "{label}: {own} comparisons with its predictions");
        let section = md
            .split("\n## ")
            .find(|s| s.starts_with(&format!("{label}\n")))
            .unwrap_or_else(|| panic!("no section {label} in\n{md}"));
        let named = format!("`{}`", preds.as_str().unwrap());
        assert!(section.contains(&named), "{label}: section\n{section}");
    }
}

/// An anneal stage trained with the item-vocabulary loss (the initial stage without it): the
/// evaluation with its adapter normalises over the item-ID tokens, the one without over the
/// vocabulary, each as its own model trained.
#[test]
fn eval_normalises_as_the_stage_of_the_model_it_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = tiny_pipeline(tmp.path());
    assert!(!job.config.train_initial.item_loss);
    job.config.train_anneal.as_mut().unwrap().item_loss = true;
    let on = job.config.eval[0].clone();
    let mut off = on.clone();
    off.model.adapter = AdapterChoice::Off;
    job.config.eval = vec![on, off];
    job.config.baselines = false;
    run_pipeline(&job).unwrap();
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(job.run.pipeline_dir().join("report.json")).unwrap(),
    )
    .unwrap();
    let norms: Vec<&str> = report["eval"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resume_settings"]["normalize"].as_str().unwrap())
        .collect();
    assert_eq!(norms, ["ids", "vocab"]);
}

/// A run with a SASRec (the `teacher` stage's): the baselines rank it on the evaluation's own
/// users as one more row, with the model's paired difference overall and per popularity slice,
/// and the pipeline report says in which slices the model is ahead; `llmbs baselines --sasrec`
/// with the same model file ranks the same way.
#[test]
fn the_runs_sasrec_is_a_baseline_row_with_per_slice_differences() {
    use llmbs::behavior::{BehaviorConfig, EncoderKind};
    use llmbs::eval::baselines::{run_baselines, BaselineJob, BaselineReport, SASREC_ROW};
    let tmp = tempfile::tempdir().unwrap();
    let mut job = tiny_pipeline(tmp.path());
    job.config.teacher = Some(BehaviorConfig {
        epochs: 1,
        dim: 16,
        ..BehaviorConfig::new(EncoderKind::Sasrec)
    });
    job.config.baselines = true;
    run_pipeline(&job).unwrap();
    let eval = job.run.eval_dir();
    let label = "test-initial-best-anneal-best-8u-seed0";
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let report = read(eval.join(format!("{label}.json")));
    let slices = report["slices"].as_array().unwrap();
    let names: Vec<&str> = slices
        .iter()
        .map(|s| s["slice"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["head", "torso", "tail", "rare"]);
    // Head, torso and tail partition the users.
    let thirds: u64 = slices[..3]
        .iter()
        .map(|s| s["users"].as_u64().unwrap())
        .sum();
    assert_eq!(thirds, 8, "{report}");
    let path = eval.join(format!("baselines-test-8u-seed0-vs-{label}.json"));
    let b: BaselineReport = serde_json::from_value(read(path)).unwrap();
    let (name, sasrec) = b.rows.last().unwrap();
    assert_eq!(name, SASREC_ROW);
    let a = b.against.as_ref().unwrap();
    assert_eq!((a.rows.len(), a.slices.len(), b.slices.len()), (4, 4, 4));
    let model_r10 = report["metrics"]["recall"]["10"].as_f64().unwrap();
    let diff = a.rows[3].recall10_diff;
    assert!((model_r10 - sasrec.recall[&10] - diff).abs() < 1e-12);
    assert!(b
        .sasrec
        .as_deref()
        .unwrap()
        .ends_with("behavior/sasrec/model.safetensors"));
    let md = std::fs::read_to_string(job.run.pipeline_dir().join("report.md")).unwrap();
    assert!(
        md.contains("| SASRec |")
            && md.contains("The model minus SASRec by the target's training popularity")
            && md.contains("The model is ahead of SASRec beyond 2 s.e. in")
            && md.contains("| rare |")
            && !md.contains("No SASRec row"),
        "{md}"
    );
    // The same model given by path ranks the same users the same way.
    let d = job.run.open(&OpenOptions::default()).unwrap();
    let file = std::path::PathBuf::from(b.sasrec.clone().unwrap());
    let again = BaselineJob {
        split: b.split,
        limit: b.limit,
        seed: b.seed,
        against: None,
        sasrec: Some(&file),
    };
    let r = run_baselines(&job.run, &d, &again).unwrap();
    assert_eq!(r.rows.last(), b.rows.last());
    assert!(
        r.markdown().contains("| SASRec | head |"),
        "{}",
        r.markdown()
    );
}
