//! Training fit to a time budget (issue 32): the probe leaves no trace (a budget run trains
//! bit for bit as the fixed-step run of the steps it chose), the probe's figures and the chosen
//! schedule are recorded in the stage's config and report, and a rerun keeps them.

mod common;

use llmbs::config::train::Budget;
use llmbs::pipeline::{run_pipeline, STAGES};
use llmbs::run::RunDir;
use llmbs::train::Stage;

fn trained(run: &llmbs::run::RunDir) -> Vec<serde_json::Value> {
    common::trained_log(run)
}

fn report(run: &RunDir) -> serde_json::Value {
    let p = run.train_dir(Stage::Initial).join("report.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn a_budget_run_trains_as_the_fixed_step_run_of_its_chosen_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let to = STAGES.iter().position(|s| *s == "train_initial");
    let mut job = common::tiny_pipeline(&tmp.path().join("a"));
    job.to = to;
    let mut budget = Budget::minutes(0.3);
    budget.validations = 2;
    // The refit follows the real steps' time, which no test can fix (its own test is in
    // train::run).
    budget.refit = false;
    job.config.train_initial.budget = Some(budget);
    run_pipeline(&job).unwrap();

    let rec = job.run.record(Stage::Initial).unwrap().unwrap();
    let fit = rec.train.fit.clone().expect("the record holds the fit");
    assert_eq!(rec.train.steps, fit.steps);
    assert_eq!(fit.eval_every, fit.steps.div_ceil(2));
    assert!(fit.steps > rec.train.warmup_steps, "{fit:?}");
    assert!(fit.step_seconds > 0.0 && fit.save_seconds > 0.0 && fit.validation_seconds > 0.0);
    assert!(fit.planned_seconds <= fit.budget_seconds, "{fit:?}");
    let r = report(&job.run);
    assert_eq!(r["ended"], "Finished");
    assert_eq!(r["steps"], fit.steps);
    assert!(r["stage_seconds"].as_f64().is_some());
    let md = std::fs::read_to_string(job.run.train_dir(Stage::Initial).join("report.md")).unwrap();
    assert!(md.contains("the probe timed 10 steps"), "{md}");
    // The probe's scratch checkpoint is gone.
    assert!(!job
        .run
        .train_dir(Stage::Initial)
        .join("budget-probe")
        .exists());

    let mut fixed = common::tiny_pipeline(&tmp.path().join("b"));
    fixed.to = to;
    fixed.config.train_initial.steps = fit.steps;
    fixed.config.train_initial.eval_every = fit.eval_every;
    run_pipeline(&fixed).unwrap();
    assert_eq!(trained(&job.run), trained(&fixed.run));

    // The pipeline again: the stage is up to date and keeps its fit (no second probe).
    let before = trained(&job.run);
    run_pipeline(&job).unwrap();
    assert_eq!(trained(&job.run), before);
    let again = job.run.record(Stage::Initial).unwrap().unwrap();
    assert_eq!(again.train.fit, Some(fit));
}

#[test]
fn a_budget_too_small_for_the_warmup_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = common::tiny_pipeline(tmp.path());
    job.to = STAGES.iter().position(|s| *s == "train_initial");
    job.config.train_initial.warmup_steps = 1_000_000;
    job.config.train_initial.budget = Some(Budget::minutes(0.02));
    let e = format!("{:#}", run_pipeline(&job).unwrap_err());
    assert!(e.contains("budget.minutes"), "{e}");
    // Nothing of the stage was left behind.
    assert!(job.run.record(Stage::Initial).unwrap().is_none());
}

#[test]
fn budget_flags_replace_steps_and_are_refused_beside_them() {
    let (ok, _, err) = common::llmbs(&[
        "train",
        "--stage",
        "initial",
        "--run",
        "/nonexistent",
        "--steps",
        "10",
        "--budget-minutes",
        "5",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--budget-minutes") && err.contains("--steps"),
        "{err}"
    );
}

#[test]
fn a_pipeline_deadline_cuts_the_budget_and_reserves_the_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = common::tiny_pipeline(tmp.path());
    job.config.train_initial.budget = Some(Budget::minutes(5.0));
    job.config.train_initial.valid_users = 0;
    // Far below the budget's 5 minutes: the deadline decides.
    job.deadline = Some(std::time::SystemTime::now() + std::time::Duration::from_secs(40));
    run_pipeline(&job).unwrap();
    let fit = job
        .run
        .record(Stage::Initial)
        .unwrap()
        .unwrap()
        .train
        .fit
        .unwrap();
    assert!(fit.budget_seconds < 40.0, "{fit:?}");
    assert!(
        fit.deadline_reserved_seconds.is_some_and(|r| r > 0.0),
        "{fit:?}"
    );
    assert!(fit.planned_seconds <= fit.budget_seconds, "{fit:?}");
}
