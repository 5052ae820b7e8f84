//! Kernel tests that need a CPU unit this machine lacks say that they did not run: a
//! `SKIPPED:` line on stderr and, where `LLMBS_SKIP_LOG` names a file, the same line appended
//! to it (`scripts/test.sh` prints that file after the run, since the test harness hides a
//! passing test's stderr). An early `return` alone would report them as passed.

use std::io::Write;

/// A CPU unit a kernel test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// AVX512-F/BW/BF16 (the bf16 GEMM of `bgemm`).
    Avx512Bf16,
    /// AMX-TILE and AMX-BF16 with the kernel's tile state (`amx`, which also needs AVX512-BF16).
    Amx,
}

impl Unit {
    fn available(self) -> bool {
        match self {
            Unit::Avx512Bf16 => super::bf16_matmul_available(),
            Unit::Amx => super::amx_available(),
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Unit::Avx512Bf16 => "CPU lacks avx512bf16",
            Unit::Amx => "CPU lacks amx (AMX-BF16 with tile state), or LLMBS_NO_AMX is set",
        }
    }
}

/// True where the CPU lacks `unit`, after saying that `test` is skipped; the caller returns.
pub(crate) fn skip_unless(unit: Unit, test: &str) -> bool {
    if unit.available() {
        return false;
    }
    let line = format!("SKIPPED: {test}: {}", unit.reason());
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("LLMBS_SKIP_LOG") {
        if let Err(e) = append(std::path::Path::new(&log), &line) {
            eprintln!("LLMBS_SKIP_LOG {}: {e}", log.to_string_lossy());
        }
    }
    true
}

fn append(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line: test threads append at once, and a line split in two writes can
    // interleave with another's.
    f.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_line_names_the_test_and_the_missing_unit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.log");
        append(&log, "SKIPPED: a: CPU lacks amx").unwrap();
        append(&log, "SKIPPED: b: CPU lacks avx512bf16").unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 2);
        // The answer follows the CPU, and AMX needs AVX512-BF16 for its packing.
        // (`available`, not `skip_unless`: this test skips nothing and must not say so.)
        assert_eq!(
            Unit::Avx512Bf16.available(),
            super::super::bf16_matmul_available()
        );
        if !Unit::Avx512Bf16.available() {
            assert!(!Unit::Amx.available());
        }
    }
}
