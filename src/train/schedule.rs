//! The arithmetic of a time budget's schedule (issue 32): the steps that fit a budget at a
//! step time, from the probe's or, once the run is under way, from its real steps. Pure, so
//! the training loop (`train::run`) and the probe (`train::budget`) share it without a cycle.

use crate::config::train::{Budget, Fit};

/// What the probe measured, before the schedule is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub step_seconds: f64,
    pub step_seconds_min: f64,
    pub step_seconds_max: f64,
    pub timed_steps: usize,
    pub setup_seconds: f64,
    pub validation_seconds: f64,
    pub save_seconds: f64,
    /// Beam search of one user (the validation's beam and batch).
    pub beam_user_seconds: f64,
}

/// The schedule that fits `budget_seconds` (the budget's minutes, or a deadline's share)
/// after `elapsed` seconds are spent: the most steps whose time, periodic saves (every
/// `save_every`), validations and a second setup stay inside it less the margin. An error when
/// not even the warmup fits.
pub fn choose(
    budget: &Budget,
    budget_seconds: f64,
    probe: &Probe,
    elapsed: f64,
    warmup: usize,
    save_every: usize,
) -> anyhow::Result<Fit> {
    let per_validation = match budget.count_validation {
        true => probe.validation_seconds,
        false => 0.0,
    } + probe.save_seconds;
    let fixed = elapsed + probe.setup_seconds + budget.validations as f64 * per_validation;
    let usable = budget_seconds * (1.0 - budget.margin) - fixed;
    let per_step = probe.step_seconds + probe.save_seconds / save_every.max(1) as f64;
    let steps = (usable / per_step).floor().max(0.0) as usize;
    let least = (warmup + 1).max(budget.validations);
    if steps < least {
        anyhow::bail!(
            "train config: budget.minutes: {:.1} minutes fit {steps} steps of {:.2} s on this \
             machine ({:.0} s already spent, {:.0} s per validation and save); at least {least} \
             are needed (warmup {warmup}): give the stage more minutes",
            budget_seconds / 60.0,
            probe.step_seconds,
            elapsed,
            per_validation
        );
    }
    let eval_every = steps.div_ceil(budget.validations);
    let planned_seconds = fixed
        + steps as f64 * probe.step_seconds
        + (steps / save_every.max(1)) as f64 * probe.save_seconds;
    Ok(Fit {
        budget_seconds,
        elapsed_seconds: elapsed,
        timed_steps: probe.timed_steps,
        step_seconds: probe.step_seconds,
        step_seconds_min: probe.step_seconds_min,
        step_seconds_max: probe.step_seconds_max,
        setup_seconds: probe.setup_seconds,
        validation_seconds: probe.validation_seconds,
        save_seconds: probe.save_seconds,
        steps,
        eval_every,
        planned_seconds,
        deadline_reserved_seconds: None,
        refit: None,
    })
}

/// The steps at which a fit schedule is checked against its real steps: an eighth of the way
/// (not before the warmup and ten more steps are timed; the probe's steps are the plan's first
/// batches only, and a busier minute slows them all: session 15's quickstart ran 12% slower
/// than its probe and hit the guard at step 888 of 929), and half way, on a mean over many
/// more steps (session 15's second quickstart ran faster after its first check and ended 106 s
/// under its budget).
pub fn refit_checks(fit: &Fit, warmup: usize) -> Vec<usize> {
    let first = (fit.steps / 8).max(warmup + 10);
    let mut at = vec![first];
    if fit.steps / 2 > first {
        at.push(fit.steps / 2);
    }
    at
}

/// The steps a budget's plan of samples holds: half again what the probe chose when the
/// schedule may be refit, so that a refit can lengthen it (the plan is one seeded stream, so
/// its first steps are the same whatever its length). A quarter was too little: session 17's
/// probe timed 1.13 s a step where the steps ran at 0.84 s, and the capped schedule left 14 of
/// its 110 minutes unused.
pub fn plan_steps(steps: usize, budget: Option<&Budget>) -> usize {
    match budget.is_some_and(|b| b.refit) {
        true => steps + steps / 2,
        false => steps,
    }
}

/// Where a running schedule stands at a check: `done` steps took `step_seconds` each on
/// average, the schedule ends at `current`, and the plan holds `most`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check {
    pub done: usize,
    pub step_seconds: f64,
    pub current: usize,
    pub most: usize,
}

/// The step count that fits the budget at the real steps' mean time: the probe's arithmetic
/// ([`choose`]) with that step time, between `done + 1` and the plan's `most`. None: the
/// running schedule already ends there.
pub fn refit(budget: &Budget, fit: &Fit, check: Check, save_every: usize) -> Option<usize> {
    let probe = Probe {
        step_seconds: check.step_seconds,
        step_seconds_min: fit.step_seconds_min,
        step_seconds_max: fit.step_seconds_max,
        timed_steps: fit.timed_steps,
        setup_seconds: fit.setup_seconds,
        validation_seconds: fit.validation_seconds,
        save_seconds: fit.save_seconds,
        beam_user_seconds: 0.0,
    };
    let steps = choose(
        budget,
        fit.budget_seconds,
        &probe,
        fit.elapsed_seconds,
        0,
        save_every,
    )
    .map_or(0, |f| f.steps)
    .min(check.most)
    .max(check.done + 1);
    (steps != check.current).then_some(steps)
}

/// The probe the budget and loop tests share: 1 s steps, a 30 s validation, a 2 s save.
#[cfg(test)]
pub(crate) fn test_probe() -> Probe {
    Probe {
        step_seconds: 1.0,
        step_seconds_min: 0.9,
        step_seconds_max: 1.2,
        timed_steps: 10,
        setup_seconds: 5.0,
        validation_seconds: 30.0,
        save_seconds: 2.0,
        beam_user_seconds: 0.1,
    }
}
