//! Small shared helpers: atomic file output and progress bars.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary sibling a file is written to before it is renamed into place.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes through `f` into a temporary file next to `path`, then renames it into place, so a
/// crash or a failed writer never leaves a half-written `path` behind.
pub fn atomic_write_with<F>(path: &Path, f: F) -> anyhow::Result<()>
where
    F: FnOnce(&Path) -> anyhow::Result<()>,
{
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
    }
    let tmp = tmp_path(path);
    let res = f(&tmp);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    atomic_write_with(path, |tmp| {
        let mut f =
            std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        Ok(())
    })
}

/// Serialises `value` as pretty JSON into `path` atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    atomic_write(path, &bytes)
}

/// Overlays the JSON object `over` onto `base`, key by key (objects recursively); a key that
/// `base` lacks is refused by its dotted name.
pub fn overlay(
    base: &mut serde_json::Value,
    over: &serde_json::Value,
    at: &str,
) -> anyhow::Result<()> {
    let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) else {
        anyhow::bail!(
            "{}: expected a JSON object",
            if at.is_empty() { "settings" } else { at }
        );
    };
    for (k, v) in o {
        let key = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match b.get_mut(k) {
            None => anyhow::bail!("unknown key '{key}'"),
            Some(slot) if slot.is_object() && v.is_object() => overlay(slot, v, &key)?,
            Some(slot) => *slot = v.clone(),
        }
    }
    Ok(())
}

/// A progress bar with rate and ETA, in the style every long llmbs command uses.
pub fn progress_bar(len: u64, unit: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let pb = indicatif::ProgressBar::new(len);
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        pb.set_style(style);
    }
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::term_like_with_hz(
            Box::new(LogLines::new(
                std::time::Duration::from_secs(LOG_PROGRESS_SECS),
                std::io::stderr(),
            )),
            1,
        ));
    }
    pb
}

/// Fixes `RAYON_NUM_THREADS` to candle's default when it is unset. Why: candle looks the thread
/// count up on every matmul and parallel op, and without the variable that means parsing
/// `/proc/cpuinfo` each time; a perf profile of `llmbs eval` on 2 cores put 3-5% of all time
/// there. The value is what candle would have used, so nothing else changes.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// The process-wide Ctrl-C flag, installed by the first long job that asks for it. The first
/// Ctrl-C raises it: training stops after its current step with a checkpoint, an evaluation
/// after its current batch (resumable), a pipeline before its next stage. A second Ctrl-C ends
/// the process at once (exit 130), so no stage can swallow it.
pub fn interrupt_flag() -> anyhow::Result<&'static std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FLAG: AtomicBool = AtomicBool::new(false);
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        ctrlc::set_handler(|| {
            if FLAG.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted twice: stopping now");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: stopping at the next safe point (Ctrl-C again to stop now)");
        })
        .map_err(|e| e.to_string())
    });
    match installed {
        Ok(()) => Ok(&FLAG),
        Err(e) => anyhow::bail!("installing the Ctrl-C handler: {e}"),
    }
}

/// An error when Ctrl-C has been pressed since the flag was last cleared.
pub fn check_interrupt() -> anyhow::Result<()> {
    if interrupt_flag()?.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

/// Seconds between progress lines when stderr is a file or a pipe.
pub const LOG_PROGRESS_SECS: u64 = 30;

/// indicatif draws nothing when stderr is not a terminal, so an hour-long job logged to a file
/// would say nothing until it ends. This target writes the bar as a plain line at most once per
/// `every` (and on the first draw); lines printed above the bar (`pb.println`) always go out.
pub struct LogLines<W: Write + Send> {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, String, W)>,
}

impl<W: Write + Send> LogLines<W> {
    pub fn new(every: std::time::Duration, out: W) -> Self {
        Self {
            every,
            state: std::sync::Mutex::new((None, String::new(), out)),
        }
    }

    /// The writer, for tests.
    pub fn into_inner(self) -> Option<W> {
        self.state.into_inner().ok().map(|s| s.2)
    }
}

impl<W: Write + Send> std::fmt::Debug for LogLines<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLines")
            .field("every", &self.every)
            .finish()
    }
}

impl<W: Write + Send> indicatif::TermLike for LogLines<W> {
    fn width(&self) -> u16 {
        160
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        if let Ok(mut st) = self.state.lock() {
            st.1.push_str(s);
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        let Ok(mut st) = self.state.lock() else {
            return Ok(());
        };
        let buf = std::mem::take(&mut st.1);
        let lines: Vec<&str> = buf.lines().filter(|l| !l.trim().is_empty()).collect();
        let Some((bar, above)) = lines.split_last() else {
            return Ok(());
        };
        for l in above {
            writeln!(st.2, "{}", l.trim_end())?;
        }
        if st.0.is_none_or(|t| t.elapsed() >= self.every) {
            writeln!(st.2, "{}", bar.trim_end())?;
            st.0 = Some(std::time::Instant::now());
        }
        st.2.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_rate_limit_the_bar_but_not_printed_lines() {
        use indicatif::TermLike;
        let t = LogLines::new(std::time::Duration::from_secs(3600), Vec::new());
        t.write_str("bar 1/10").unwrap();
        t.flush().unwrap();
        t.write_str("bar 2/10").unwrap();
        t.flush().unwrap();
        t.write_line("valid R@10 0.05").unwrap();
        t.write_str("bar 3/10").unwrap();
        t.flush().unwrap();
        let out = String::from_utf8(t.into_inner().unwrap()).unwrap();
        assert_eq!(out, "bar 1/10\nvalid R@10 0.05\n");
    }

    #[test]
    fn failed_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let res = atomic_write_with(&path, |tmp| {
            std::fs::write(tmp, b"partial")?;
            anyhow::bail!("boom")
        });
        assert!(res.is_err());
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.txt");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
    }
}
