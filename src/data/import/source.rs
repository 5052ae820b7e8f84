//! Input files: plain or gzipped (told by the magic bytes, not the name), read once, hashed as
//! they stream past so the import record names exactly the bytes that were read.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ImportError;

/// One source file as the import record lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRecord {
    /// The path as given on the command line.
    pub path: String,
    /// What the file was read as: "interactions" or "items".
    pub role: &'static str,
    pub bytes: u64,
    pub sha256: String,
    /// Whether the file was gzipped.
    pub gzip: bool,
}

#[derive(Default)]
struct HashState {
    hasher: Sha256,
    bytes: u64,
}

/// Passes bytes through while feeding them to SHA-256.
struct Hashing {
    inner: File,
    state: Rc<RefCell<HashState>>,
}

impl Read for Hashing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.state.borrow_mut();
        st.hasher.update(&buf[..n]);
        st.bytes += n as u64;
        Ok(n)
    }
}

/// Large buffers: the readers are bound by per-line parsing, not by syscalls.
const BUF: usize = 1 << 18;

/// An open input: a buffered (decompressed) reader plus the running hash of the raw bytes.
pub struct Source {
    pub path: PathBuf,
    role: &'static str,
    gzip: bool,
    reader: Box<dyn BufRead>,
    state: Rc<RefCell<HashState>>,
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Source {
    pub fn open(path: &Path, role: &'static str) -> Result<Source, ImportError> {
        let file = File::open(path).map_err(io_err(path))?;
        let state = Rc::new(RefCell::new(HashState::default()));
        let mut raw = BufReader::with_capacity(
            BUF,
            Hashing {
                inner: file,
                state: state.clone(),
            },
        );
        let gzip = raw
            .fill_buf()
            .map_err(io_err(path))?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::with_capacity(BUF, MultiGzDecoder::new(raw)))
        } else {
            Box::new(raw)
        };
        Ok(Source {
            path: path.to_path_buf(),
            role,
            gzip,
            reader,
            state,
        })
    }

    /// The path and the reader, borrowed apart so a parser can hold both.
    pub fn parts(&mut self) -> (&Path, &mut dyn BufRead) {
        (&self.path, &mut *self.reader)
    }

    /// Calls `f(line_number, line)` for every line (1-based; `\r\n` or `\n` stripped; blank
    /// lines skipped, as a trailing newline at the end of a dump is not a record).
    pub fn for_each_line(
        &mut self,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        let mut buf = Vec::with_capacity(1 << 12);
        let mut line = 0u64;
        loop {
            buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut buf)
                .map_err(io_err(&self.path))?;
            if n == 0 {
                return Ok(());
            }
            line += 1;
            let mut text = buf.as_slice();
            while let [rest @ .., b'\n' | b'\r'] = text {
                text = rest;
            }
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            f(line, text)?;
        }
    }

    /// Reads whatever is left (a reader may stop at a trailer) and returns the record of the
    /// whole file.
    pub fn finish(mut self) -> Result<SourceRecord, ImportError> {
        io::copy(&mut self.reader, &mut io::sink()).map_err(io_err(&self.path))?;
        drop(self.reader);
        let mut st = self.state.take();
        // A gzip decoder can stop before bytes after its last member; hash those too.
        let mut file = File::open(&self.path).map_err(io_err(&self.path))?;
        file.seek(SeekFrom::Start(st.bytes))
            .map_err(io_err(&self.path))?;
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).map_err(io_err(&self.path))?;
        st.hasher.update(&rest);
        st.bytes += rest.len() as u64;
        let digest = st.hasher.finalize();
        Ok(SourceRecord {
            path: self.path.display().to_string(),
            role: self.role,
            bytes: st.bytes,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
            gzip: self.gzip,
        })
    }
}

/// The file name without `.gz`, for telling a file's kind by its extension.
pub fn plain_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_suffix(".gz") {
        Some(stem) => stem.to_string(),
        None => name,
    }
}

/// UTF-8 text of a line or field, or an error naming where it is.
pub fn utf8<'a>(
    path: &Path,
    line: u64,
    column: Option<&str>,
    bytes: &'a [u8],
) -> Result<&'a str, ImportError> {
    std::str::from_utf8(bytes).map_err(|e| ImportError::Line {
        path: path.to_path_buf(),
        line,
        column: column.map(str::to_string),
        msg: format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
    })
}
