//! The training loop shared by both stages: planned samples in, steps, JSONL log, progress bar,
//! validation with best-model keeping, resumable checkpoints, Ctrl-C and time limits.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::step::Trainer;
use crate::config::train::TrainConfig;
use crate::tasks::build::{Encoded, Planned, TaskBuilder};

/// One validation point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidRecord {
    pub step: usize,
    pub valid_loss: f64,
    /// Beam-search metrics on the validation sample (None when `valid_users` is 0).
    pub recall10: Option<f64>,
    pub ndcg10: Option<f64>,
    /// Distinct items over the users' top-10 lists: a model that learned one fixed list shows
    /// ~10 here whatever its recall (absent in logs written before it existed).
    #[serde(default)]
    pub coverage10: Option<usize>,
    /// Standard error of NDCG@10 over the sample's users: how much of a difference between two
    /// validations is noise.
    #[serde(default)]
    pub ndcg10_se: Option<f64>,
    pub users: usize,
    pub seconds: f64,
}

impl ValidRecord {
    /// Higher is better: NDCG@10, then Recall@10, then lower loss.
    fn better_than(&self, other: &ValidRecord) -> bool {
        let key = |r: &ValidRecord| {
            (
                r.ndcg10.unwrap_or(0.0),
                r.recall10.unwrap_or(0.0),
                -r.valid_loss,
            )
        };
        key(self) > key(other)
    }
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub stage: String,
    pub step: usize,
    pub total_steps: usize,
    pub best: Option<ValidRecord>,
    pub validations: Vec<ValidRecord>,
    pub seconds: f64,
    pub config: TrainConfig,
    pub model: String,
    pub index: String,
}

impl TrainState {
    /// The state before step 0 of a stage with config `c`, from backbone `model` and item
    /// index `index` (as recorded in `state.json`).
    pub fn fresh(c: &TrainConfig, model: String, index: String) -> Self {
        Self {
            stage: c.stage.name().to_string(),
            step: 0,
            total_steps: c.steps,
            best: None,
            validations: Vec::new(),
            seconds: 0.0,
            config: c.clone(),
            model,
            index,
        }
    }
}

/// Stage-specific work the loop calls back into.
pub trait Hooks {
    fn validate(&mut self, t: &Trainer) -> anyhow::Result<ValidRecord>;
    /// Writes the resumable checkpoint (and, with `best`, the best model as well).
    fn save(&mut self, t: &Trainer, state: &TrainState, best: bool) -> anyhow::Result<()>;
}

/// How a `fit` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ended {
    Finished,
    Interrupted,
    TimeLimit,
}

/// Encodes the samples of step `step` (0-based).
pub fn step_samples(
    plan: &[Planned],
    builder: &TaskBuilder,
    step: usize,
    batch: usize,
) -> anyhow::Result<Vec<Encoded>> {
    plan.iter()
        .skip(step * batch)
        .take(batch)
        .map(|p| builder.encode(p))
        .collect()
}

/// Keeps the log lines up to `step` (a resumed run rewrites what came after its checkpoint).
pub fn truncate_log(path: &Path, step: usize) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    crate::util::atomic_write(path, body.as_bytes())
}

/// Trains from `trainer.step` to `cfg.steps`.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    trainer: &mut Trainer,
    plan: &[Planned],
    builder: &TaskBuilder,
    cfg: &TrainConfig,
    state: &mut TrainState,
    hooks: &mut dyn Hooks,
    log_path: &Path,
    stop: &AtomicBool,
    quiet: bool,
) -> anyhow::Result<Ended> {
    let start = Instant::now();
    let base_seconds = state.seconds;
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    truncate_log(log_path, trainer.step)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let pb = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        crate::util::progress_bar(cfg.steps as u64, "steps")
    };
    pb.set_position(trainer.step as u64);
    // A resumed run starts mid-bar: without this the jump counts as speed and the ETA lies.
    pb.reset_eta();
    let mut ended = Ended::Finished;
    let mut total = cfg.steps;
    let mut eval_every = cfg.eval_every;
    // A budget's refit may lengthen the schedule to what the plan holds.
    let most = plan.len() / cfg.batch_size.max(1);
    let mut refit = Refit::new(cfg, trainer.step);
    while trainer.step < total {
        let samples = step_samples(plan, builder, trainer.step, cfg.batch_size)?;
        let Some(stats) = trainer.train_step(&samples, stop)? else {
            ended = Ended::Interrupted;
            break;
        };
        writeln!(log, "{}", serde_json::to_string(&stats)?)
            .with_context(|| format!("writing {}", log_path.display()))?;
        pb.set_position(stats.step as u64);
        pb.set_message(format!(
            "loss {:.4} ce {:.4} {:.0} tok/s",
            stats.loss,
            stats.ce,
            stats.tokens as f64 / stats.seconds.max(1e-9)
        ));
        state.step = trainer.step;
        state.seconds = base_seconds + start.elapsed().as_secs_f64();
        let was = total;
        if let Some(steps) = refit.observe(trainer.step, stats.seconds, most, state) {
            total = steps;
            eval_every = state.config.eval_every;
            trainer.cfg.total = steps;
            pb.set_length(steps as u64);
            pb.println(format!(
                "budget: at step {}, the steps ran at {:.2} s; the schedule now ends at step \
                 {steps} (was {was})",
                trainer.step,
                state
                    .config
                    .fit
                    .as_ref()
                    .and_then(|f| f.refit)
                    .map_or(0.0, |r| r.step_seconds),
            ));
        }
        let last = trainer.step == total;
        let over_time = cfg
            .max_minutes
            .is_some_and(|m| start.elapsed().as_secs_f64() > m * 60.0);
        if trainer.step.is_multiple_of(eval_every) || last || over_time {
            let rec = hooks.validate(trainer)?;
            writeln!(log, "{}", serde_json::to_string(&rec)?)?;
            pb.println(format!(
                "step {}: valid loss {:.4}{}",
                rec.step,
                rec.valid_loss,
                match (rec.recall10, rec.ndcg10) {
                    (Some(r), Some(n)) => format!(
                        ", R@10 {r:.4}, N@10 {n:.4}, coverage@10 {} items ({} users)",
                        rec.coverage10.unwrap_or(0),
                        rec.users
                    ),
                    _ => String::new(),
                }
            ));
            let best = state.best.as_ref().is_none_or(|b| rec.better_than(b));
            if best {
                state.best = Some(rec.clone());
            }
            state.validations.push(rec);
            hooks.save(trainer, state, best)?;
        } else if trainer.step.is_multiple_of(cfg.save_every) {
            hooks.save(trainer, state, false)?;
        }
        if over_time && !last {
            ended = Ended::TimeLimit;
            break;
        }
    }
    pb.finish_and_clear();
    if ended == Ended::Interrupted {
        // Parameters only change at step ends: the state after the last full step is saved.
        state.seconds = base_seconds + start.elapsed().as_secs_f64();
        hooks.save(trainer, state, false)?;
    }
    if stop.load(Ordering::SeqCst) {
        ended = Ended::Interrupted;
    }
    Ok(ended)
}

/// The checks of a budget's schedule against its real steps (`train::schedule::refit`): mean
/// step time from the third step of this invocation on.
struct Refit {
    /// The steps still to check at, ascending.
    at: Vec<usize>,
    first: usize,
    seconds: f64,
}

impl Refit {
    fn new(cfg: &TrainConfig, step: usize) -> Self {
        // A resumed run keeps the schedule its checkpoint recorded and checks only the steps
        // after its start, on the steps it times itself.
        let at = cfg
            .fit
            .as_ref()
            .filter(|_| cfg.budget.as_ref().is_some_and(|b| b.refit))
            .map(|f| super::schedule::refit_checks(f, cfg.warmup_steps))
            .unwrap_or_default()
            .into_iter()
            .filter(|&at| at > step + 2 && at < cfg.steps)
            .collect();
        Self {
            at,
            first: step + 2,
            seconds: 0.0,
        }
    }

    /// After step `step` (1-based count) took `seconds`: at a check, the new step count when
    /// it changes (the plan holds at most `most`), recorded in `state`'s config, so a
    /// checkpoint resumes with it.
    fn observe(
        &mut self,
        step: usize,
        seconds: f64,
        most: usize,
        state: &mut TrainState,
    ) -> Option<usize> {
        if step > self.first {
            self.seconds += seconds;
        }
        if self.at.first().is_none_or(|&at| step < at) {
            return None;
        }
        self.at.retain(|&at| at > step);
        let cfg = &state.config;
        let (budget, mut fit) = (cfg.budget.clone()?, cfg.fit.clone()?);
        let check = super::schedule::Check {
            done: step,
            step_seconds: self.seconds / (step - self.first).max(1) as f64,
            current: cfg.steps,
            most,
        };
        let steps = super::schedule::refit(&budget, &fit, check, cfg.save_every)?;
        fit.refit = Some(crate::config::train::Refit {
            at_step: step,
            step_seconds: check.step_seconds,
            steps,
            from_steps: cfg.steps,
        });
        // One validation stays one, after the last step.
        state.config.eval_every = steps.div_ceil(budget.validations.max(1));
        state.config.steps = steps;
        state.config.fit = Some(fit);
        state.total_steps = steps;
        Some(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::train::{Budget, Stage};
    use crate::train::schedule::{
        choose, plan_steps, refit, refit_checks, test_probe, Check, Probe,
    };

    fn config(probe: &Probe, refit: bool) -> TrainConfig {
        let mut b = Budget::minutes(10.0);
        b.refit = refit;
        let mut c = TrainConfig::new(Stage::Initial);
        c.warmup_steps = 20;
        let fit = choose(&b, 600.0, probe, 25.0, c.warmup_steps, c.save_every).unwrap();
        c.budget = Some(b);
        // What `train::budget::apply` does with a fit (that module imports this one).
        c.steps = fit.steps;
        c.eval_every = fit.eval_every;
        c.fit = Some(fit);
        c
    }

    fn state(c: &TrainConfig) -> TrainState {
        TrainState::fresh(c, String::new(), String::new())
    }

    #[test]
    fn the_loop_refits_at_its_checks_both_ways_and_records_it_for_a_resume() {
        let probe = test_probe();
        let c = config(&probe, true);
        let fit = c.fit.clone().unwrap();
        let checks = refit_checks(&fit, c.warmup_steps);
        let (at, half) = (checks[0], checks[1]);
        assert_eq!(half, fit.steps / 2);
        let most = plan_steps(c.steps, c.budget.as_ref());
        assert_eq!(most, c.steps + c.steps / 2);
        // Steps 25% slower than the probe's; the first two of the run (warm-up) much slower.
        let mut r = Refit::new(&c, 0);
        let mut st = state(&c);
        for step in 1..at {
            let s = if step <= 2 { 9.0 } else { 1.25 };
            assert_eq!(r.observe(step, s, most, &mut st), None, "step {step}");
        }
        let n = r.observe(at, 1.25, most, &mut st).expect("a refit");
        let check = |done, step_seconds, current| Check {
            done,
            step_seconds,
            current,
            most,
        };
        let b = c.budget.as_ref().unwrap();
        assert_eq!(
            Some(n),
            refit(b, &fit, check(at, 1.25, c.steps), c.save_every)
        );
        assert!(n < c.steps, "{n} {}", c.steps);
        assert_eq!((st.config.steps, st.total_steps), (n, n));
        assert_eq!(st.config.eval_every, n);
        let rec = st.config.fit.as_ref().unwrap().refit.unwrap();
        assert_eq!(
            (rec.at_step, rec.step_seconds, rec.steps, rec.from_steps),
            (at, 1.25, n, c.steps)
        );
        // No check between the two, however slow the steps.
        assert_eq!(r.observe(at + 1, 100.0, most, &mut st), None);
        // A run resumed after the first check keeps its schedule and checks half way, on its
        // own steps: faster ones lengthen the schedule, at most to what the plan holds.
        let resumed = st.config.clone();
        let mut again = Refit::new(&resumed, at + 5);
        let mut st2 = state(&resumed);
        for step in at + 6..half {
            assert_eq!(
                again.observe(step, 0.8, most, &mut st2),
                None,
                "step {step}"
            );
        }
        let longer = again.observe(half, 0.8, most, &mut st2).expect("a refit");
        assert!(
            longer > c.steps && longer <= most,
            "{longer} {} {most}",
            c.steps
        );
        assert_eq!(
            Some(longer),
            refit(b, &fit, check(half, 0.8, n), c.save_every)
        );
        assert_eq!(
            st2.config.fit.as_ref().unwrap().refit.unwrap().from_steps,
            n
        );
        assert_eq!(again.observe(half + 1, 0.1, most, &mut st2), None);

        // Steps at the probe's speed keep the schedule; so does `budget.refit: false`.
        for (c, s) in [(config(&probe, true), 1.0), (config(&probe, false), 1.25)] {
            let mut r = Refit::new(&c, 0);
            let mut st = state(&c);
            assert!((1..=half + 1).all(|k| r.observe(k, s, most, &mut st).is_none()));
            assert_eq!(st.config.steps, c.steps);
        }
    }
}
