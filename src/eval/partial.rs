//! Resumable evaluation: predictions are appended to `<predictions>.partial` batch by batch,
//! so an interrupted `llmbs eval` (the whole Beauty test set is an hour-scale job on a CPU)
//! loses at most one batch, and `--resume` continues where it stopped.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The key of the first line, which holds the settings the file was written with.
const HEADER: &str = "llmbs_eval_partial";

/// An open partial-predictions file.
pub struct Partial {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

/// `final_path` with `.partial` appended.
pub fn partial_path(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

impl Partial {
    /// Opens the partial file next to `final_path`. With `resume`, an existing file must have
    /// been written with the same `settings`; its complete lines are returned and appended to.
    /// Without `resume` any earlier partial file is replaced.
    pub fn open(
        final_path: &Path,
        settings: &serde_json::Value,
        resume: bool,
    ) -> anyhow::Result<(Self, Vec<serde_json::Value>)> {
        let path = partial_path(final_path);
        let mut done = Vec::new();
        if resume && path.exists() {
            let f = std::fs::File::open(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let lines: Vec<String> = std::io::BufReader::new(f)
                .lines()
                .collect::<Result<_, _>>()
                .with_context(|| format!("reading {}", path.display()))?;
            let head: serde_json::Value = lines
                .first()
                .and_then(|l| serde_json::from_str(l).ok())
                .with_context(|| format!("{}: line 1 is not a header", path.display()))?;
            if head.get(HEADER) != Some(settings) {
                anyhow::bail!(
                    "{} was written with other settings ({}), not these ({settings}): remove it, or run without --resume",
                    path.display(),
                    head.get(HEADER).cloned().unwrap_or_default()
                );
            }
            for (i, l) in lines.iter().enumerate().skip(1) {
                match serde_json::from_str::<serde_json::Value>(l) {
                    Ok(v) => done.push(v),
                    // A kill during a write leaves a torn last line: that batch is redone.
                    Err(_) if i + 1 == lines.len() => break,
                    Err(e) => anyhow::bail!("{} line {}: {e}", path.display(), i + 1),
                }
            }
            // Rewrite without a torn tail, then append.
            let mut body = serde_json::json!({ HEADER: settings }).to_string();
            body.push('\n');
            for v in &done {
                body.push_str(&v.to_string());
                body.push('\n');
            }
            crate::util::atomic_write(&path, body.as_bytes())?;
        } else {
            let mut head = serde_json::json!({ HEADER: settings }).to_string();
            head.push('\n');
            crate::util::atomic_write(&path, head.as_bytes())?;
        }
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok((
            Self {
                path,
                out: std::io::BufWriter::new(f),
            },
            done,
        ))
    }

    /// Appends `lines` and flushes, so they survive a kill.
    pub fn append(&mut self, lines: &[serde_json::Value]) -> anyhow::Result<()> {
        for v in lines {
            writeln!(self.out, "{v}")
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        self.out
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Removes the file once the final predictions are in place.
    pub fn finish(self) -> anyhow::Result<()> {
        drop(self.out);
        std::fs::remove_file(&self.path)
            .with_context(|| format!("removing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_complete_lines_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("predictions.jsonl");
        let settings = serde_json::json!({"split": "test", "users": 3});
        let (mut p, done) = Partial::open(&fin, &settings, true).unwrap();
        assert!(done.is_empty());
        p.append(&[
            serde_json::json!({"user": "a"}),
            serde_json::json!({"user": "b"}),
        ])
        .unwrap();
        drop(p);
        // A kill in the middle of the next line.
        let path = partial_path(&fin);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"user\": \"c\", \"to");
        std::fs::write(&path, text).unwrap();
        let (mut p, done) = Partial::open(&fin, &settings, true).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done[1]["user"], "b");
        p.append(&[serde_json::json!({"user": "c"})]).unwrap();
        drop(p);
        let (p, done) = Partial::open(&fin, &settings, true).unwrap();
        assert_eq!(done.len(), 3);
        p.finish().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn resume_refuses_other_settings_and_a_fresh_run_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("predictions.jsonl");
        let a = serde_json::json!({"split": "test"});
        let (mut p, _) = Partial::open(&fin, &a, false).unwrap();
        p.append(&[serde_json::json!({"user": "a"})]).unwrap();
        drop(p);
        let b = serde_json::json!({"split": "valid"});
        let err = Partial::open(&fin, &b, true).err().unwrap().to_string();
        assert!(
            err.contains("other settings") && err.contains(".partial"),
            "{err}"
        );
        let (_, done) = Partial::open(&fin, &a, false).unwrap();
        assert!(done.is_empty());
        let (_, done) = Partial::open(&fin, &a, true).unwrap();
        assert!(done.is_empty());
    }
}
