//! `/tmp/perf-PID.map` (the format perf reads for JIT'd code: one line per
//! symbol, `START SIZE NAME`, hexadecimal without `0x`).
//!
//! The file is opened once per process with `O_APPEND` (a map left by an
//! earlier process with the same PID is removed first). An image's lines are
//! formatted into one buffer and appended with one `write(2)`, which appends
//! all of it at the end of the file atomically with respect to other
//! appends: lines of concurrent links never interleave, and no line is
//! torn. (The issue asks for "each line appended with a single write";
//! one write per image of whole lines gives the same guarantee — every
//! line lands whole — with one system call per link instead of one per
//! function.)

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
    // The error is kept by its parts (an `io::Error` is not `Clone`) and
    // rebuilt for each caller: by its OS error number when it has one.
    type Failed = (String, Option<i32>, std::io::ErrorKind, String);
    static FILE: OnceLock<Result<File, Failed>> = OnceLock::new();
    let path = path();
    let opened = FILE.get_or_init(|| {
        if left_by_an_earlier_process(&path) {
            // PIDs are reused: its lines would name our addresses wrongly.
            let _ = std::fs::remove_file(&path);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| (path.clone(), e.raw_os_error(), e.kind(), e.to_string()))
    });
    opened
        .as_ref()
        .map_err(|(path, code, kind, msg)| DebugError::Io {
            what: "appending to the perf map",
            path: path.clone(),
            source: code.map_or_else(
                || std::io::Error::new(*kind, msg.clone()),
                std::io::Error::from_raw_os_error,
            ),
        })
}

/// Whether the map at `path` was last written before this process started
/// (by an earlier process with the same PID). Another JIT of this process
/// may have written it since, so a map written after the start is kept.
fn left_by_an_earlier_process(path: &str) -> bool {
    let Ok(written) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    process_start().is_some_and(|start| written + std::time::Duration::from_secs(1) < start)
}

/// When this process started: the boot time (`btime` of `/proc/stat`) plus
/// the start time in clock ticks (field 22 of `/proc/self/stat`).
fn process_start() -> Option<std::time::SystemTime> {
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    let since_boot = std::time::Duration::from_millis(ticks * 1000 / hz);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(boot) + since_boot)
}

/// Appends one line per code symbol of `symbols` (with a size), in one write.
pub(crate) fn append(symbols: &[ImageSymbol<'_>]) -> Result<(), DebugError> {
    let mut lines = Lines::with_capacity(symbols.len());
    for s in symbols {
        lines.push(s);
    }
    lines.append()
}

/// An image's perf map lines, formatted into one buffer (no allocation per
/// line) and appended with one `write`.
pub(crate) struct Lines {
    text: Vec<u8>,
    /// Where each line's newline is.
    ends: Vec<usize>,
}

impl Lines {
    /// Room for about `symbols` lines.
    pub(crate) fn with_capacity(symbols: usize) -> Lines {
        Lines {
            text: Vec::with_capacity(symbols * 40),
            ends: Vec::with_capacity(symbols),
        }
    }

    /// Adds `s`'s line if it is code with a size: `START SIZE NAME\n`.
    pub(crate) fn push(&mut self, s: &ImageSymbol<'_>) {
        if !s.code || s.size == 0 {
            return;
        }
        // The numbers, formatted on the stack with fixed-size copies.
        let mut head = [0u8; 40];
        let mut at = put_hex(&mut head, 0, s.addr);
        head[at] = b' ';
        at = put_hex(&mut head, at + 1, s.size);
        head[at] = b' ';
        let text = &mut self.text;
        text.reserve(at + 2 + s.name_len());
        text.extend_from_slice(&head[..at + 1]);
        s.push_name(text);
        self.ends.push(text.len());
        text.push(b'\n');
    }

    /// Appends the lines to the map in one `write(2)` under `O_APPEND`,
    /// which a regular file takes whole, at its end: lines of concurrent
    /// links never interleave or tear (`write_all` only loops after a
    /// short write, e.g. disk full).
    pub(crate) fn append(mut self) -> Result<(), DebugError> {
        if self.text.is_empty() {
            return Ok(());
        }
        self.no_newlines_in_names();
        let mut f = open()?;
        f.write_all(&self.text).map_err(|source| DebugError::Io {
            what: "appending to the perf map",
            path: path(),
            source,
        })
    }

    /// A newline in a name would split its line (ELF names are C strings,
    /// so only a made-up name could hold one): replaced by a space. Checked
    /// once over the whole text (as many newlines as lines: none in a
    /// name), not name by name.
    fn no_newlines_in_names(&mut self) {
        // (Summed as 0/1 bytes in 255-byte chunks, which vectorizes.)
        let newlines: usize = self
            .text
            .chunks(255)
            .map(|c| usize::from(c.iter().map(|&b| u8::from(b == b'\n')).sum::<u8>()))
            .sum();
        if newlines == self.ends.len() {
            return;
        }
        let mut start = 0;
        for &end in &self.ends {
            for b in &mut self.text[start..end] {
                if *b == b'\n' {
                    *b = b' ';
                }
            }
            start = end + 1;
        }
    }
}

/// Writes `v` in lowercase hexadecimal without `0x` (what `{:x}` prints)
/// into `out` at `at`, returning the index after it. Every nibble is
/// converted at once (in two words) and the 16 digits are copied whole,
/// then the position advances past the significant ones only: formatting
/// every line through `fmt`, then digit by digit, was most of the map's
/// cost. `out` must have 16 bytes from `at`.
fn put_hex(out: &mut [u8; 40], at: usize, v: u64) -> usize {
    let digits = ((64 - v.leading_zeros()).div_ceil(4).max(1)) as usize;
    let hex = (u128::from(u64::from_be_bytes(hex8((v >> 32) as u32))) << 64)
        | u128::from(u64::from_be_bytes(hex8(v as u32)));
    // Leading zeros shifted out: the significant digits come first.
    let shifted = hex << (8 * (16 - digits));
    out[at..at + 16].copy_from_slice(&shifted.to_be_bytes());
    at + digits
}

/// The eight hexadecimal digits of `v`, most significant first.
fn hex8(v: u32) -> [u8; 8] {
    // Spread the nibbles into bytes (nibble i into byte i)...
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // ...then each byte n to '0' + n, plus 'a' - '0' - 10 where n > 9
    // (n + 6 carries into bit 4 exactly then; no byte overflows).
    let above_9 = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + above_9 * 39).to_be_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_what_fmt_prints() {
        for v in [
            0u64,
            1,
            9,
            0xa,
            0xf,
            0x10,
            0x99,
            0xdead_beef,
            0x7fff_a800_0000,
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210,
            u64::MAX,
        ] {
            let mut out = [b'!'; 40];
            let end = super::put_hex(&mut out, 3, v);
            assert_eq!(std::str::from_utf8(&out[3..end]).unwrap(), format!("{v:x}"));
            assert_eq!(&out[..3], b"!!!");
        }
    }

    /// Each code symbol with a size makes one whole line, `START SIZE
    /// NAME`, the prefix before the name, a newline in a name replaced.
    #[test]
    fn lines_are_whole_and_named_with_their_prefix() {
        use super::super::ImageSymbol;
        let sym = |prefix, name: &'static str, addr, size, code| ImageSymbol {
            prefix,
            name: name.into(),
            addr,
            size,
            code,
            local: true,
        };
        let mut lines = super::Lines::with_capacity(0);
        for s in [
            sym("", "main", 0x7f00_1000, 0x40, true),
            sym("kiln-plt:", "puts", 0x7f00_2000, 0x10, true),
            sym("", "table", 0x7f00_3000, 0x10, false),
            sym("", "empty", 0x7f00_4000, 0, true),
            sym("", "odd\nname", 0x10, 0x1, true),
        ] {
            lines.push(&s);
        }
        lines.no_newlines_in_names();
        assert_eq!(
            String::from_utf8(lines.text).unwrap(),
            "7f001000 40 main\n7f002000 10 kiln-plt:puts\n10 1 odd name\n"
        );
    }

    /// A map written before this process started is an earlier process's
    /// (same PID, reused); one written since is kept.
    #[test]
    fn maps_older_than_the_process_are_stale() {
        let start = super::process_start().expect("process start");
        let now = std::time::SystemTime::now();
        assert!(start <= now && now.duration_since(start).unwrap().as_secs() < 3600);
        let dir = std::env::temp_dir().join(format!("kiln-perf-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf-1.map");
        let file = std::fs::File::create(&path).unwrap();
        let path = path.to_str().unwrap();
        assert!(!super::left_by_an_earlier_process(path), "written now");
        file.set_modified(start - std::time::Duration::from_secs(60))
            .unwrap();
        assert!(
            super::left_by_an_earlier_process(path),
            "written before the start"
        );
        assert!(!super::left_by_an_earlier_process(&format!(
            "{path}.missing"
        )));
    }
}
