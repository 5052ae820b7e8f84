//! Training fit to a time budget (issue 32): a schedule written in steps and cut by a clock
//! gives every CPU a different, unfinished recipe, so a stage with a budget first times a few
//! steps, a slice of its validation and a checkpoint write on a throwaway trainer, then picks
//! the step count whose warmup, whole cosine and validations end inside the budget.
//!
//! The probe's trainer is assembled from the same backbone as the real one and dropped: the
//! real run starts from the same weights, plan and seeds as a fixed-step run of the chosen
//! length (tested bit for bit).

use std::time::Instant;

use candle_core::{DType, Device};

use super::assemble::{assemble, Backbone};
use super::hooks::{SavedParts, StageHooks, ValidSet};
use super::run::{step_samples, Hooks, TrainState};
use super::samples::{stage_samples, task_builder, valid_set};
pub use super::schedule::{choose, plan_steps, refit, refit_checks, Check, Probe};
use crate::config::train::{Budget, Fit, TrainConfig};
use crate::run::{RunData, RunDir};

/// Slack of the time guard over the budget: past it a run stops and says by how much.
pub const OVERRUN_GUARD: f64 = 1.2;

/// When a whole job must end, and how many users it ranks by beam search after the stage
/// (their time is reserved from the stage's budget at the probe's beam speed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadline {
    pub at: std::time::SystemTime,
    pub users_after: usize,
}

/// Share of the reserved beam-search time added for the baselines, reports and spread (the
/// baselines and reports are small: 1.4 s of runs/smoke-l4's 95 s eval stage, session 15; the
/// rest is for steps and beams that run slower than the probe timed).
const RESERVE_SLACK: f64 = 1.15;

/// The config with the fit's schedule and the overrun guard.
pub fn apply(c: &TrainConfig, fit: Fit) -> TrainConfig {
    apply_until(c, fit, None)
}

/// [`apply`] under a deadline: `until` is the seconds from the stage's start to the deadline
/// less the evaluation's reserve. The guard then stops there at the latest: steps that run
/// slower than the probe timed (a busier minute) must not push the job past its promise, as
/// the 1.2x slack alone let them (session 14: a 15.5-minute stage whose guard sat at 18.6).
pub fn apply_until(c: &TrainConfig, fit: Fit, until: Option<f64>) -> TrainConfig {
    let mut c = c.clone();
    c.steps = fit.steps;
    c.eval_every = fit.eval_every;
    if c.max_minutes.is_none() {
        let end = (fit.budget_seconds * OVERRUN_GUARD).min(until.unwrap_or(f64::INFINITY));
        // The guard counts from the loop's start, after the time already spent.
        let left = end - fit.elapsed_seconds - fit.setup_seconds;
        c.max_minutes = Some(left.max(60.0) / 60.0);
    }
    c.fit = Some(fit);
    c
}

/// A resumed stage keeps the schedule its probe chose: `asked` with the saved fit, steps and
/// validation spacing, when both ask for the same budget.
pub fn adopt_fit(saved: &TrainConfig, asked: &TrainConfig) -> TrainConfig {
    let mut c = asked.clone();
    if saved.fit.is_some() && saved.budget == asked.budget {
        c.steps = saved.steps;
        c.eval_every = saved.eval_every;
        c.fit = saved.fit.clone();
        if c.max_minutes.is_none() {
            c.max_minutes = saved.max_minutes;
        }
    }
    c
}

/// The stage's share of the clock, in seconds from its start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageClock {
    /// The budget's minutes, or less where a deadline leaves less after the beam search that
    /// follows.
    pub seconds: f64,
    /// The seconds reserved for that beam search (None without a deadline).
    pub reserved: Option<f64>,
    /// The deadline less the reserve (None without a deadline): the overrun guard's limit.
    pub until: Option<f64>,
}

/// The stage's budget under an optional deadline (one reading of the clock for the budget and
/// the guard alike).
pub fn budget_seconds(
    budget: &Budget,
    deadline: Option<Deadline>,
    started: Instant,
    beam_user_seconds: f64,
) -> StageClock {
    let own = budget.minutes * 60.0;
    let Some(dl) = deadline else {
        return StageClock {
            seconds: own,
            reserved: None,
            until: None,
        };
    };
    let now = std::time::SystemTime::now();
    let left = dl.at.duration_since(now).map_or(0.0, |d| d.as_secs_f64());
    let reserved = dl.users_after as f64 * beam_user_seconds * RESERVE_SLACK;
    let until = started.elapsed().as_secs_f64() + left - reserved;
    StageClock {
        seconds: own.min(until),
        reserved: Some(reserved),
        until: Some(until),
    }
}

/// Times the stage on a throwaway trainer over `bb` and chooses its schedule; `at.0` is the
/// stage's start (loading counts against the budget), `at.1` the job's deadline if any.
pub fn fit_budget(
    run: &RunDir,
    d: &RunData,
    bb: &Backbone,
    c: &TrainConfig,
    device: &Device,
    dtype: DType,
    at: (Instant, Option<Deadline>),
) -> anyhow::Result<TrainConfig> {
    let Some(budget) = &c.budget else {
        return Ok(c.clone());
    };
    let (started, deadline) = at;
    let probe = measure(run, d, bb, c, budget, device, dtype)?;
    let elapsed = started.elapsed().as_secs_f64();
    let clock = budget_seconds(budget, deadline, started, probe.beam_user_seconds);
    let (seconds, reserved) = (clock.seconds, clock.reserved);
    if let (Some(r), Some(dl)) = (reserved, deadline) {
        eprintln!(
            "deadline: {:.0} s reserved for {} users of beam search after the stage ({:.3} s \
             each); the stage's budget is {:.1} min",
            r,
            dl.users_after,
            probe.beam_user_seconds,
            seconds / 60.0
        );
    }
    let mut fit = choose(
        budget,
        seconds,
        &probe,
        elapsed,
        c.warmup_steps,
        c.save_every,
    )?;
    fit.deadline_reserved_seconds = reserved;
    eprintln!(
        "budget {:.1} min: {} probe steps at {:.2} s ({:.2}-{:.2}), validation ~{:.0} s, save \
         ~{:.1} s, {:.0} s spent -> {} steps (validation every {}), planned {:.1} min",
        budget.minutes,
        fit.timed_steps,
        fit.step_seconds,
        fit.step_seconds_min,
        fit.step_seconds_max,
        fit.validation_seconds,
        fit.save_seconds,
        fit.elapsed_seconds,
        fit.steps,
        fit.eval_every,
        fit.planned_seconds / 60.0
    );
    Ok(apply_until(c, fit, clock.until))
}

/// The probe: setup, `probe_steps` steps, a validation slice scaled to the whole pass, and one
/// checkpoint write into a scratch directory that is removed after.
#[allow(clippy::too_many_arguments)]
fn measure(
    run: &RunDir,
    d: &RunData,
    bb: &Backbone,
    c: &TrainConfig,
    budget: &Budget,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<Probe> {
    let t0 = Instant::now();
    let mut pc = c.clone();
    pc.steps = budget.probe_steps;
    let mut parts = assemble(bb, d.ds.items.len(), run, &pc, None, dtype, device)?;
    let samples = stage_samples(d, c);
    let builder = task_builder(d, bb, &samples, c);
    let plan = builder.plan(&c.mix, budget.probe_steps * c.batch_size, c.seed)?;
    // Users for timing the beam search even where validation ranks none (a deadline needs
    // the speed of the evaluation that follows); the times are scaled to the real pass.
    let probe_users = 2 * c.valid_batch.max(1);
    let mut vc = c.clone();
    vc.valid_users = c.valid_users.max(64);
    let valid = valid_set(d, &builder, &bb.items, &vc)?;
    let (ce_samples, beam_users) = (c.valid_users.max(64), c.valid_users);
    let setup_seconds = t0.elapsed().as_secs_f64();
    let stop = crate::util::interrupt_flag()?;
    let mut times = Vec::with_capacity(budget.probe_steps);
    for step in 0..budget.probe_steps {
        let batch = step_samples(&plan, &builder, step, c.batch_size)?;
        let t = Instant::now();
        if parts.trainer.train_step(&batch, stop)?.is_none() {
            anyhow::bail!("interrupted during the budget's probe");
        }
        times.push(t.elapsed().as_secs_f64());
    }
    let timed = &times[2..];
    let mean = timed.iter().sum::<f64>() / timed.len() as f64;
    // The CE part scales with the samples, the beam search with the users.
    let k = valid.encoded.len().min(2 * c.micro_batch.max(1) * 2);
    let t = Instant::now();
    parts.trainer.response_loss(&valid.encoded[..k])?;
    let ce = t.elapsed().as_secs_f64() * ce_samples as f64 / k.max(1) as f64;
    let scratch = run.train_dir(c.stage).join("budget-probe");
    let hooks_over = |picked: &[usize]| {
        StageHooks::new(
            c,
            bb,
            SavedParts::of(&parts),
            probe_slice(&valid, picked),
            scratch.join("ckpt"),
            scratch.join("best"),
        )
    };
    // A first batch warms the decoder's buffers; the timed users come from the middle of the
    // length order, as the real pass batches users of similar length (random users padded to
    // their batch's longest made the estimate ~1.5x slow).
    let (warm, timed_users) =
        median_length_users(&valid.prompts, c.valid_batch.max(1), probe_users);
    hooks_over(&warm).validate(&parts.trainer)?;
    let mut hooks = hooks_over(&timed_users);
    let t = Instant::now();
    hooks.validate(&parts.trainer)?;
    let users = timed_users.len();
    let beam_user_seconds = t.elapsed().as_secs_f64() / users.max(1) as f64;
    let beam = beam_user_seconds * beam_users as f64;
    let mut state = TrainState::fresh(&pc, bb.src.describe(), d.index_path.display().to_string());
    state.step = parts.trainer.step;
    let t = Instant::now();
    hooks.save(&parts.trainer, &state, true)?;
    let save_seconds = t.elapsed().as_secs_f64();
    drop(hooks);
    std::fs::remove_dir_all(&scratch)
        .map_err(|e| anyhow::anyhow!("removing {}: {e}", scratch.display()))?;
    Ok(Probe {
        step_seconds: mean,
        step_seconds_min: timed.iter().copied().fold(f64::INFINITY, f64::min),
        step_seconds_max: timed.iter().copied().fold(0.0, f64::max),
        timed_steps: timed.len(),
        setup_seconds,
        validation_seconds: ce + beam,
        save_seconds,
        beam_user_seconds,
    })
}

/// For timing the beam search: `warm` users (the shortest prompts) to warm up on, then `n`
/// users around the median prompt length, in the order the real pass would batch them.
fn median_length_users(prompts: &[Vec<u32>], warm: usize, n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (prompts[i].len(), i));
    let n = n.min(order.len());
    let start = (order.len() - n) / 2;
    let timed = order[start..start + n].to_vec();
    let warm = order[..warm.min(start)].to_vec();
    (warm, timed)
}

/// The validation set restricted to the users at `picked` (one CE sample is enough: the CE is
/// timed apart).
fn probe_slice(v: &ValidSet, picked: &[usize]) -> ValidSet {
    ValidSet {
        encoded: v.encoded[..1.min(v.encoded.len())].to_vec(),
        samples: picked.iter().map(|&i| v.samples[i].clone()).collect(),
        prompts: picked.iter().map(|&i| v.prompts[i].clone()).collect(),
        names: picked
            .iter()
            .filter_map(|&i| v.names.get(i).cloned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::train::schedule::test_probe as probe;

    #[test]
    fn the_beam_probe_times_users_of_median_prompt_length_after_a_warm_batch() {
        let prompts: Vec<Vec<u32>> = [5, 1, 9, 3, 7, 2, 8].iter().map(|&n| vec![0; n]).collect();
        // Length order: 1 (1), 5 (2), 3 (3), 0 (5), 4 (7), 6 (8), 2 (9).
        let (warm, timed) = median_length_users(&prompts, 1, 3);
        assert_eq!(timed, vec![3, 0, 4]);
        assert_eq!(warm, vec![1]);
        // Fewer users than asked: all of them timed, none left to warm up on.
        let (warm, timed) = median_length_users(&prompts[..2], 8, 16);
        assert_eq!(timed, vec![1, 0]);
        assert!(warm.is_empty());
    }

    #[test]
    fn the_chosen_schedule_ends_inside_the_budget() {
        let b = Budget::minutes(10.0);
        let f = choose(&b, 600.0, &probe(), 25.0, 20, 50).unwrap();
        // 600 * 0.96 = 576; fixed 25 + 5 + (30 + 2) = 62; per step 1 + 2/50 = 1.04.
        assert_eq!(f.steps, ((576.0 - 62.0) / 1.04f64).floor() as usize);
        assert_eq!(f.eval_every, f.steps);
        assert!(f.planned_seconds <= 576.0 + 1e-9, "{}", f.planned_seconds);
        // One step more would not fit.
        let over = 62.0 + (f.steps + 1) as f64 * 1.04;
        assert!(over > 576.0);
    }

    #[test]
    fn validations_outside_the_budget_leave_more_steps() {
        let mut b = Budget::minutes(10.0);
        b.validations = 4;
        let inside = choose(&b, 600.0, &probe(), 25.0, 20, 50).unwrap();
        b.count_validation = false;
        let outside = choose(&b, 600.0, &probe(), 25.0, 20, 50).unwrap();
        assert!(outside.steps > inside.steps);
        assert_eq!(inside.eval_every, inside.steps.div_ceil(4));
    }

    #[test]
    fn a_refit_fits_the_schedule_to_the_real_step_time_within_the_plan() {
        let b = Budget::minutes(10.0);
        let fit = choose(&b, 600.0, &probe(), 25.0, 20, 50).unwrap();
        let most = plan_steps(fit.steps, Some(&b));
        let check = |step_seconds, done| Check {
            done,
            step_seconds,
            current: fit.steps,
            most,
        };
        assert_eq!(refit(&b, &fit, check(probe().step_seconds, 100), 50), None);
        // 12% slower steps: the steps the same budget holds at that speed.
        let at = |s: f64| {
            let mut p = probe();
            p.step_seconds = s;
            choose(&b, 600.0, &p, 25.0, 20, 50).unwrap().steps
        };
        let slow = 1.12 * probe().step_seconds;
        assert!(at(slow) < fit.steps, "{} {}", at(slow), fit.steps);
        assert_eq!(refit(&b, &fit, check(slow, 100), 50), Some(at(slow)));
        // 5% faster: longer; twice as fast: only as long as the plan of samples.
        let fast = 0.95 * probe().step_seconds;
        assert!(at(fast) > fit.steps && at(fast) < most);
        assert_eq!(refit(&b, &fit, check(fast, 100), 50), Some(at(fast)));
        assert_eq!(
            refit(&b, &fit, check(0.5 * probe().step_seconds, 100), 50),
            Some(most)
        );
        // Never behind the steps already done.
        assert_eq!(refit(&b, &fit, check(100.0, 100), 50), Some(101));
        assert_eq!(
            refit_checks(&fit, 20),
            vec![(fit.steps / 8).max(30), fit.steps / 2]
        );
        // Without a refit the plan is the schedule.
        let mut off = b.clone();
        off.refit = false;
        assert_eq!(plan_steps(fit.steps, Some(&off)), fit.steps);
        assert_eq!(plan_steps(fit.steps, None), fit.steps);
    }

    #[test]
    fn a_budget_below_the_warmup_is_an_error_naming_the_key() {
        let e = choose(&Budget::minutes(1.0), 60.0, &probe(), 40.0, 20, 50).unwrap_err();
        assert!(e.to_string().contains("budget.minutes"), "{e}");
    }

    #[test]
    fn a_deadline_cuts_the_budget_to_what_the_beam_search_after_it_leaves() {
        let b = Budget::minutes(10.0);
        let started = Instant::now();
        let free = budget_seconds(&b, None, started, 0.1);
        assert_eq!(
            (free.seconds, free.reserved, free.until),
            (600.0, None, None)
        );
        // 300 s left, 1,000 users at 0.1 s after the stage: 300 - 115 s.
        let dl = Deadline {
            at: std::time::SystemTime::now() + std::time::Duration::from_secs(300),
            users_after: 1000,
        };
        let cut = budget_seconds(&b, Some(dl), started, 0.1);
        assert!((cut.reserved.unwrap() - 115.0).abs() < 1e-9);
        assert!((cut.seconds - 185.0).abs() < 1.0, "{cut:?}");
        // The guard's limit is the same reading: here the budget itself.
        assert_eq!(cut.until, Some(cut.seconds));
        // A far deadline leaves the budget as it is.
        let far = Deadline {
            at: std::time::SystemTime::now() + std::time::Duration::from_secs(10_000),
            ..dl
        };
        let far = budget_seconds(&b, Some(far), started, 0.1);
        assert_eq!(far.seconds, 600.0);
        assert!(far.until.unwrap() > 9_000.0, "{far:?}");
    }

    #[test]
    fn under_a_deadline_the_guard_stops_at_the_deadline_not_at_the_budgets_slack() {
        let c = TrainConfig::new(crate::config::train::Stage::Initial);
        let fit = choose(&Budget::minutes(10.0), 600.0, &probe(), 25.0, 20, 50).unwrap();
        // Without a deadline: 1.2 x 600 - 25 spent - 5 setup.
        let free = apply(&c, fit.clone()).max_minutes.unwrap();
        assert!((free - (720.0 - 30.0) / 60.0).abs() < 1e-9, "{free}");
        // A deadline 640 s after the stage's start (its reserve already taken off) stops the
        // loop there, not at 720.
        let cut = apply_until(&c, fit.clone(), Some(640.0))
            .max_minutes
            .unwrap();
        assert!((cut - (640.0 - 30.0) / 60.0).abs() < 1e-9, "{cut}");
        // A far deadline leaves the slack as it is; a guard the user set is kept.
        assert_eq!(
            apply_until(&c, fit.clone(), Some(5_000.0)).max_minutes,
            Some(free)
        );
        let mut own = c.clone();
        own.max_minutes = Some(3.0);
        assert_eq!(apply_until(&own, fit, Some(640.0)).max_minutes, Some(3.0));
    }

    #[test]
    fn a_resumed_stage_keeps_its_fit_and_a_new_budget_does_not() {
        let mut saved = TrainConfig::new(crate::config::train::Stage::Initial);
        saved.budget = Some(Budget::minutes(10.0));
        let fit = choose(
            saved.budget.as_ref().unwrap(),
            600.0,
            &probe(),
            25.0,
            20,
            50,
        )
        .unwrap();
        let saved = apply(&saved, fit);
        let mut asked = TrainConfig::new(crate::config::train::Stage::Initial);
        asked.budget = Some(Budget::minutes(10.0));
        let a = adopt_fit(&saved, &asked);
        assert_eq!((a.steps, a.eval_every), (saved.steps, saved.eval_every));
        assert!(crate::train::stage::config_diff(&saved, &asked)
            .unwrap()
            .is_empty());
        asked.budget = Some(Budget::minutes(20.0));
        assert!(!crate::train::stage::config_diff(&saved, &asked)
            .unwrap()
            .is_empty());
    }
}
