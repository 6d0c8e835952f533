//! `/tmp/perf-PID.map` (the format perf reads for JIT'd code: one line per
//! symbol, `START SIZE NAME`, hexadecimal without `0x`).
//!
//! The file is opened once per process with `O_APPEND`. An image's lines are
//! formatted into one buffer and appended with one `write(2)`, which appends
//! all of it at the end of the file atomically with respect to other
//! appends: lines of concurrent links never interleave.

use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;

use super::{DebugError, ImageSymbol};

/// The map's path for this process.
pub(crate) fn path() -> String {
    format!("/tmp/perf-{}.map", std::process::id())
}

fn file() -> Result<&'static File, DebugError> {
    static FILE: OnceLock<Result<File, (String, std::io::ErrorKind, String)>> = OnceLock::new();
    let path = path();
    let opened = FILE.get_or_init(|| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| (path.clone(), e.kind(), e.to_string()))
    });
    opened.as_ref().map_err(|(path, kind, msg)| DebugError::Io {
        what: "appending to the perf map",
        path: path.clone(),
        source: std::io::Error::new(*kind, msg.clone()),
    })
}

/// Appends one line per code symbol of `symbols` (with a size), in one write.
pub(crate) fn append(symbols: &[ImageSymbol<'_>]) -> Result<(), DebugError> {
    let mut text = String::with_capacity(symbols.len() * 40);
    for s in symbols.iter().filter(|s| s.code && s.size > 0) {
        use std::fmt::Write as _;
        // Names never hold a newline (ELF names are C strings; a newline
        // would split the line): replaced.
        let name = s.name.replace('\n', " ");
        let _ = writeln!(text, "{:x} {:x} {}", s.addr, s.size, name);
    }
    if text.is_empty() {
        return Ok(());
    }
    let mut f = file()?;
    // One `write(2)` of complete lines under O_APPEND (a regular file takes
    // it whole; `write_all` only loops after a short write, e.g. disk full).
    f.write_all(text.as_bytes())
        .map_err(|source| DebugError::Io {
            what: "appending to the perf map",
            path: path(),
            source,
        })
}
