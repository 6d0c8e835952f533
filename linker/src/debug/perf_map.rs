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

/// The map, opened (created) on first use.
pub(crate) fn open() -> Result<&'static File, DebugError> {
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
    let mut text: Vec<u8> = Vec::with_capacity(symbols.len() * 48);
    for s in symbols.iter().filter(|s| s.code && s.size > 0) {
        push_hex(&mut text, s.addr);
        text.push(b' ');
        push_hex(&mut text, s.size);
        text.push(b' ');
        // A newline would split the line (ELF names are C strings, so
        // only a made-up name could hold one): replaced.
        let name = s.name.as_bytes();
        if name.contains(&b'\n') {
            text.extend(name.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
        } else {
            text.extend_from_slice(name);
        }
        text.push(b'\n');
    }
    if text.is_empty() {
        return Ok(());
    }
    let mut f = open()?;
    // One `write(2)` of complete lines under O_APPEND (a regular file takes
    // it whole; `write_all` only loops after a short write, e.g. disk full).
    f.write_all(&text).map_err(|source| DebugError::Io {
        what: "appending to the perf map",
        path: path(),
        source,
    })
}

/// `v` in lowercase hexadecimal without `0x` (what `{:x}` prints; done by
/// hand: formatting every line through `fmt` was most of the map's cost).
fn push_hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(DIGITS[((v >> (i * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_what_fmt_prints() {
        for v in [0u64, 1, 0xf, 0x10, 0xdead_beef, 0x7fff_a800_0000, u64::MAX] {
            let mut out = Vec::new();
            super::push_hex(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{v:x}"));
        }
    }
}
