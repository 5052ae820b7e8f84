//! The pipeline's eval stage (every configured evaluation, with the non-learned baselines on
//! the same users) and `RUN/pipeline/report.{json,md}`.

use candle_core::DType;

use super::PipelineJob;
use crate::data::Dataset;
use crate::eval::baselines::{run_baselines, sasrec_path, BaselineJob, BaselineReport, NO_SASREC};
use crate::eval::run::{evaluate_run, paper_row, EvalJob, EvalReport};
use crate::eval::slices::slices_markdown;
use crate::util::{atomic_write, write_json};

/// Runs every evaluation of the config (resuming one a Ctrl-C left), and the baselines on each
/// one's users; returns the files written, relative to the run.
pub fn eval_stage(job: &PipelineJob) -> anyhow::Result<Vec<String>> {
    let run = &job.run;
    let mut outputs = Vec::new();
    for c in &job.config.eval {
        let e = EvalJob {
            config: c.clone(),
            resume: has_partial(run, c),
            quiet: job.quiet,
            ..Default::default()
        };
        let r = evaluate_run(run, &e, &job.device, DType::F32)?;
        outputs.push(format!("eval/{}.json", r.label));
        outputs.push(format!("eval/{}.predictions.jsonl", r.label));
        if job.config.baselines {
            let d = run.open(&Default::default())?;
            // A time-limited evaluation that stopped early ranked fewer users than the
            // baselines do: no user-by-user comparison then.
            let whole = r.users >= r.planned_users;
            let preds = whole.then(|| std::path::PathBuf::from(&r.predictions));
            // The run's SASRec (the behavior or teacher stage's), when it has one.
            let sasrec = sasrec_path(run, None);
            let b = run_baselines(
                run,
                &d,
                &BaselineJob {
                    split: c.split,
                    limit: c.limit,
                    seed: c.seed,
                    against: preds.as_deref(),
                    sasrec: sasrec.as_deref(),
                },
            )?;
            outputs.push(format!("eval/{}.json", b.label));
        }
    }
    Ok(outputs)
}

/// An interrupted evaluation of this config left in the run.
fn has_partial(run: &crate::run::RunDir, c: &crate::eval::run::EvalConfig) -> bool {
    let Ok(dir) = std::fs::read_dir(run.eval_dir()) else {
        return false;
    };
    let prefix = format!("{}-", c.split.name());
    dir.flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.ends_with(".predictions.jsonl.partial")
            && c.label
                .as_ref()
                .map_or(n.starts_with(&prefix), |l| n.starts_with(l.as_str()))
    })
}

fn read<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// `RUN/pipeline/report.{json,md}`: stage times, every evaluation beside its baselines and, on
/// the dataset it was published on, the paper's row.
pub fn write(job: &PipelineJob, times: &[(String, f64, &str)]) -> anyhow::Result<()> {
    let (c, run) = (&job.config, &job.run);
    let ds = Dataset::load_lcrec(std::path::Path::new(&c.data))?;
    let about = if job.data_overridden {
        format!(
            "Config `{}` run on `{}` (--data; the config was written for another dataset).",
            c.name, c.data
        )
    } else {
        c.description.clone()
    };
    let mut md = format!(
        "# llmbs pipeline: {} ({})\n\n{about}\n\nData: `{}`: {} ({} users, {} items).\n\n| stage | seconds | |\n|---|---:|---|\n",
        c.name,
        run.root().display(),
        c.data,
        ds.name,
        ds.users.len(),
        ds.items.len()
    );
    let mut total = 0.0;
    let mut rows = Vec::new();
    for (name, secs, how) in times {
        // Skipped stages report the time they took when they ran.
        let secs = match *how {
            "skipped" => read::<super::Sidecar>(&run.pipeline_dir().join(format!("{name}.json")))
                .map_or(0.0, |x| x.seconds),
            _ => *secs,
        };
        total += secs;
        md.push_str(&format!("| {name} | {secs:.0} | {how} |\n"));
        rows.push(serde_json::json!({"stage": name, "seconds": secs, "status": how}));
    }
    md.push_str(&format!("| total | {total:.0} | |\n"));
    let (evals, baselines) = results(job);
    for r in &evals {
        md.push_str(&format!("\n## {}\n\n| model | R@1 | R@5 | R@10 | N@5 | N@10 | coverage@10 |\n|---|---:|---:|---:|---:|---:|---:|\n", r.label));
        md.push_str(&format!(
            "| {} {} {} |\n",
            r.checkpoint,
            r.metrics.to_markdown_row(),
            r.coverage10.items
        ));
        md.push_str(&baselines_markdown(r, &baselines));
        if !r.slices.is_empty() {
            md.push('\n');
            md.push_str(&slices_markdown(&r.slices));
        }
        md.push_str(&sasrec_markdown(r, &baselines));
    }
    if let Some(p) = paper_row(&ds) {
        md.push_str(&format!(
            "\nPaper Table 2 (LLM-BS, LLaMA-7B, all test users): R@5 {:.4}, R@10 {:.4}, N@5 {:.4}, N@10 {:.4}\n",
            p[0], p[1], p[2], p[3]
        ));
    }
    write_json(
        &run.pipeline_dir().join("report.json"),
        &serde_json::json!({"name": c.name, "run": run.root().display().to_string(),
            "stages": rows, "total_seconds": total, "eval": evals, "baselines": baselines}),
    )?;
    atomic_write(&run.pipeline_dir().join("report.md"), md.as_bytes())?;
    if !job.quiet {
        println!("{md}");
        println!(
            "pipeline: report in {}",
            run.pipeline_dir().join("report.md").display()
        );
    }
    Ok(())
}

/// The baseline rows beside evaluation `r` and the paired comparison made with its own
/// predictions: picked by its label, since evaluations of one split and sample (adapter on and
/// off) share everything else; without a comparison, the baselines of its split and sample.
fn baselines_markdown(r: &EvalReport, baselines: &[BaselineReport]) -> String {
    let own = |b: &&BaselineReport| b.against.as_ref().is_some_and(|a| a.eval_label == r.label);
    let same = |b: &&BaselineReport| {
        b.split == r.split && b.limit == r.config.limit && b.seed == r.config.seed
    };
    let Some(b) = baselines
        .iter()
        .find(own)
        .or_else(|| baselines.iter().find(same))
    else {
        return String::new();
    };
    let mut md = String::new();
    for (name, m) in &b.rows {
        md.push_str(&format!("| {name} {} - |\n", m.to_markdown_row()));
    }
    if let Some(a) = b.against.as_ref().filter(|a| a.eval_label == r.label) {
        md.push_str(&format!(
            "\nThe model of `{}` minus each baseline, user by user (paired standard errors):\n\n{}",
            a.predictions,
            a.paired_markdown()
        ));
    }
    md
}

/// The model minus SASRec per popularity slice, from the comparison made with `r`'s own
/// predictions, or the line saying the run has no SASRec.
fn sasrec_markdown(r: &EvalReport, baselines: &[BaselineReport]) -> String {
    let own = baselines.iter().find_map(|b| {
        let a = b.against.as_ref().filter(|a| a.eval_label == r.label)?;
        b.sasrec_diff_markdown(a)
    });
    match own {
        Some(md) => md,
        // Without baselines there is nothing to say about one of them.
        None if !baselines.is_empty() && baselines.iter().all(|b| b.sasrec.is_none()) => {
            format!("\n{NO_SASREC}\n")
        }
        None => String::new(),
    }
}

/// The eval stage's reports, as its sidecar lists them.
fn results(job: &PipelineJob) -> (Vec<EvalReport>, Vec<BaselineReport>) {
    let run = &job.run;
    let Some(side) = read::<super::Sidecar>(&run.pipeline_dir().join("eval.json")) else {
        return (Vec::new(), Vec::new());
    };
    let (mut evals, mut base) = (Vec::new(), Vec::new());
    for o in side.outputs.iter().filter(|o| o.ends_with(".json")) {
        let p = run.join(o);
        if let Some(r) = read::<EvalReport>(&p) {
            evals.push(r);
        } else if let Some(b) = read::<BaselineReport>(&p) {
            base.push(b);
        }
    }
    (evals, base)
}
