//! Ctrl-C after a training stage is honoured, not swallowed: with the process's interrupt flag
//! raised, an evaluation stops after its first batch keeping what it did (resumable), and a
//! pipeline stops before its next stage. One test in its own binary: the flag is per process.

mod common;

use candle_core::{DType, Device};
use common::tiny_pipeline;
use llmbs::eval::run::{evaluate_run, EvalConfig, EvalJob};
use llmbs::pipeline::run_pipeline;

#[test]
fn ctrl_c_stops_evaluation_and_pipeline_after_training() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = tiny_pipeline(tmp.path());
    job.to = Some(5);
    let run = job.run.clone();
    // Everything up to and including both training stages, which install the handler.
    run_pipeline(&job).unwrap();
    llmbs::util::interrupt_flag()
        .unwrap()
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let e = EvalJob {
        config: EvalConfig {
            limit: Some(8),
            beam: 10,
            batch: 2,
            label: Some("interrupted".into()),
            ..Default::default()
        },
        quiet: true,
        ..Default::default()
    };
    let err = evaluate_run(&run, &e, &Device::Cpu, DType::F32).unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    let partial = run.eval_dir().join("interrupted.predictions.jsonl.partial");
    let kept = std::fs::read_to_string(&partial).unwrap();
    assert_eq!(
        kept.lines().count(),
        1 + 2,
        "header and the first batch: {kept}"
    );

    job.to = None;
    let err = run_pipeline(&job).unwrap_err();
    assert!(format!("{err:#}").contains("interrupted"), "{err:#}");
    assert!(!run.pipeline_dir().join("eval.json").exists());
}
