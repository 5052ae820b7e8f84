//! The training log and report as types: each line of `train/<stage>/log.jsonl` is a step or a
//! validation, and `report.{json,md}` summarise a stage (throughput, loss, validations, best).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::plot::{svg, Series};
use super::run::{Ended, TrainState, ValidRecord};
use super::step::StepStats;
use crate::config::train::TrainConfig;

/// One line of `log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogLine {
    Step(StepStats),
    Valid(ValidRecord),
}

/// The lines of a log; a line that is neither kind (a torn tail after a kill) is skipped.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<LogLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// `train/<stage>/report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub stage: String,
    pub ended: Ended,
    pub steps: usize,
    pub total_steps: usize,
    pub seconds: f64,
    pub trainable_parameters: usize,
    /// Median over steps of tokens / step time (forward + backward + AdamW).
    pub median_tokens_per_s: f64,
    pub loss_first_10_steps: f64,
    pub loss_last_10_steps: f64,
    pub best: Option<ValidRecord>,
    pub validations: Vec<ValidRecord>,
    pub device: String,
    pub compute_dtype: String,
    pub master_dtype: String,
    pub model: String,
    pub index: String,
    pub config: TrainConfig,
    /// Peak host (and CUDA) memory of the process, loading included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory: Option<crate::memory::PeakMemory>,
    /// Wall time of this invocation of the stage: loading, the budget's probe, the steps,
    /// validations and saves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_seconds: Option<f64>,
}

impl TrainReport {
    /// Summarises a finished (or stopped) stage from its state and log.
    pub fn new(
        state: &TrainState,
        log: &[LogLine],
        ended: Ended,
        trainable_parameters: usize,
        device: String,
        compute_dtype: String,
    ) -> Self {
        let steps: Vec<&StepStats> = log
            .iter()
            .filter_map(|l| match l {
                LogLine::Step(s) => Some(s),
                LogLine::Valid(_) => None,
            })
            .collect();
        let mut tps: Vec<f64> = steps
            .iter()
            .map(|s| s.tokens as f64 / s.seconds.max(1e-9))
            .collect();
        tps.sort_by(|a, b| a.total_cmp(b));
        let mean_loss =
            |vs: &[&StepStats]| vs.iter().map(|s| s.loss).sum::<f64>() / vs.len().max(1) as f64;
        let k = steps.len().min(10);
        Self {
            stage: state.stage.clone(),
            ended,
            steps: state.step,
            total_steps: state.total_steps,
            seconds: state.seconds,
            trainable_parameters,
            median_tokens_per_s: tps.get(tps.len() / 2).copied().unwrap_or(0.0),
            loss_first_10_steps: mean_loss(&steps[..k]),
            loss_last_10_steps: mean_loss(&steps[steps.len() - k..]),
            best: state.best.clone(),
            validations: state.validations.clone(),
            device,
            compute_dtype,
            master_dtype: "f32".into(),
            model: state.model.clone(),
            index: state.index.clone(),
            config: state.config.clone(),
            peak_memory: None,
            stage_seconds: None,
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# llmbs train --stage {}\n\n{} of {} steps ({:?}) in {:.0} s on {} ({} compute, f32 weights); {} trainable parameters; median {:.0} tokens/s (forward+backward+AdamW).\n\nLoss: {:.4} (mean of the first 10 steps) -> {:.4} (last 10).\n\n{}| step | valid CE | R@10 | N@10 | N@10 s.e. | coverage@10 | users |\n|---:|---:|---:|---:|---:|---:|---:|\n",
            self.stage,
            self.steps,
            self.total_steps,
            self.ended,
            self.seconds,
            self.device,
            self.compute_dtype,
            self.trainable_parameters,
            self.median_tokens_per_s,
            self.loss_first_10_steps,
            self.loss_last_10_steps,
            self.peak_memory
                .map(|p| format!("Peak memory: {}.\n\n", p.describe()))
                .unwrap_or_default()
                + &self.budget_line().unwrap_or_default()
        );
        let fmt = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        for r in &self.validations {
            md.push_str(&format!(
                "| {} | {:.4} | {} | {} | {} | {} | {} |\n",
                r.step,
                r.valid_loss,
                fmt(r.recall10),
                fmt(r.ndcg10),
                fmt(r.ndcg10_se),
                r.coverage10.map_or_else(|| "-".into(), |c| c.to_string()),
                r.users
            ));
        }
        if let Some(b) = &self.best {
            md.push_str(&format!(
                "\nBest: step {} (kept in checkpoints/{}-best).\n",
                b.step, self.stage
            ));
        }
        md
    }
}

impl TrainReport {
    /// How the stage met its time budget: the probe's figures, the schedule and the wall time,
    /// with the overrun when the guard stopped it.
    pub fn budget_line(&self) -> Option<String> {
        let f = self.config.fit.as_ref()?;
        let took = self
            .stage_seconds
            .map(|s| {
                format!(
                    "; the stage took {:.1} min ({:+.0} s against the budget)",
                    s / 60.0,
                    s - f.budget_seconds
                )
            })
            .unwrap_or_default();
        let planned = f.refit.map_or(f.steps, |r| r.steps);
        let how = match self.ended {
            Ended::TimeLimit => format!(
                "**stopped by the time guard at step {} of {planned}** (the steps ran slower than the probe's {:.2} s)",
                self.steps, f.step_seconds
            ),
            _ => format!("{} of the {planned} planned steps ran", self.steps),
        };
        let how = match f.refit {
            Some(r) => format!(
                "refit at step {}: the steps ran at {:.2} s, so the schedule ends at step {} instead of {}; {how}",
                r.at_step,
                r.step_seconds,
                r.steps,
                match r.from_steps {
                    0 => f.steps,
                    n => n,
                }
            ),
            None => how,
        };
        Some(format!(
            "Budget {:.1} min: the probe timed {} steps at {:.2} s ({:.2}-{:.2}), a validation at ~{:.0} s, a save at ~{:.1} s, {:.0} s spent before it; {} steps chosen (validation every {}), planned {:.1} min; {how}{took}.\n\n",
            f.budget_seconds / 60.0,
            f.timed_steps,
            f.step_seconds,
            f.step_seconds_min,
            f.step_seconds_max,
            f.validation_seconds,
            f.save_seconds,
            f.elapsed_seconds,
            f.steps,
            f.eval_every,
            f.planned_seconds / 60.0,
        ))
    }
}

/// The loss and validation curves of a log as an SVG.
pub fn plot_log(log: &[LogLine], out: &Path) -> anyhow::Result<()> {
    let (mut loss, mut ce, mut vloss, mut r10, mut n10) = (vec![], vec![], vec![], vec![], vec![]);
    for line in log {
        match line {
            LogLine::Step(s) => {
                loss.push((s.step as f64, s.loss));
                ce.push((s.step as f64, s.ce));
            }
            LogLine::Valid(v) => {
                let x = v.step as f64;
                vloss.push((x, v.valid_loss));
                r10.extend(v.recall10.map(|r| (x, r)));
                n10.extend(v.ndcg10.map(|n| (x, n)));
            }
        }
    }
    let series = |name, color, points| Series {
        name,
        color,
        points,
    };
    let body = svg(&[
        (
            "training loss",
            vec![
                series("loss (CE + GCT)", "#1f77b4", loss),
                series("response CE", "#ff7f0e", ce),
                series("validation CE", "#2ca02c", vloss),
            ],
        ),
        (
            "validation (beam search)",
            vec![
                series("Recall@10", "#d62728", r10),
                series("NDCG@10", "#9467bd", n10),
            ],
        ),
    ]);
    crate::util::atomic_write(out, body.as_bytes())
}
