//! Wall time per fused op and phase when `LLMBS_OP_TIMES` is set (`llmbs bench` prints it):
//! where a training step's time goes, without a profiler.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

static TABLE: Mutex<BTreeMap<&'static str, (f64, u64)>> = Mutex::new(BTreeMap::new());

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LLMBS_OP_TIMES").is_some())
}

/// Adds the time until it drops to `name`'s total.
pub struct Scope(Option<(&'static str, Instant)>);

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((name, t)) = self.0.take() {
            if let Ok(mut m) = TABLE.lock() {
                let e = m.entry(name).or_insert((0.0, 0));
                e.0 += t.elapsed().as_secs_f64();
                e.1 += 1;
            }
        }
    }
}

/// Times the rest of the enclosing block under `name` (a no-op unless enabled).
pub fn scope(name: &'static str) -> Scope {
    Scope(enabled().then(|| (name, Instant::now())))
}

/// The totals so far (seconds, calls) by name, and clears them.
pub fn take() -> BTreeMap<&'static str, (f64, u64)> {
    TABLE
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default()
}

/// Prints the totals so far to stderr, largest first, with each one's share of `whole`
/// seconds, and clears them (nothing unless enabled): a training stage's breakdown.
pub fn eprint(label: &str, whole: f64) {
    let mut rows: Vec<_> = take().into_iter().collect();
    if rows.is_empty() {
        return;
    }
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    eprintln!("{label}: op times over {whole:.1} s (LLMBS_OP_TIMES)");
    for (name, (s, n)) in rows {
        let share = 100.0 * s / whole.max(1e-9);
        eprintln!("  {name:<28} {s:>9.2} s {share:>5.1}% {n:>8} calls");
    }
}
