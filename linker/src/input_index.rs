//! `kiln run --cache`'s index of unchanged inputs: for a list of input
//! paths, the build id their bytes hashed to and each file's path and
//! identity (device, inode, size, mtime, ctime) when it was hashed. A later run
//! whose inputs all still have those identities takes the build id from
//! the index instead of mapping and hashing every input (~2 M instructions
//! of a Lua hit's ~6 M).
//!
//! What this trusts is what `image_file`'s in-process "hashed once" rule
//! trusts (`linker/src/image_file/verified.rs`), kept across processes:
//! every write through the kernel sets a file's ctime to the current time,
//! and ctime cannot be set back, so an unchanged identity means unchanged
//! bytes — unless the bytes change bypassing the file system, or the clock
//! is stepped back across a write. A file is recorded only if its ctime was
//! at least [`RACY`] older than the clock read before its `stat` (a write
//! in the same timestamp tick could otherwise keep the ctime). The index
//! lives in the cache directory (checked private) and is only a shortcut to
//! a name: the entry it names is opened and checked as on any hit — its
//! content hash skipped, by the same rule, if the index also holds the
//! entry's identity and hash from a run that checked it
//! ([`kiln_linker::image_file::ImageFile::open_stamped`]).

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How much older than the clock a recorded file's ctime must be.
const RACY: Duration = Duration::from_secs(2);

/// First line of an index file (bump when the layout or the meaning of the
/// recorded build id changes).
const MAGIC: &str = "kiln input index 3";

/// An input file's identity, taken before its bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    words: [i64; 7],
    settled: bool,
}

impl Stamp {
    /// The identity of the file `meta` describes; `now` is the clock read
    /// before the `stat` that gave `meta`.
    pub(crate) fn new(meta: &std::fs::Metadata, now: Duration) -> Stamp {
        let as_i64 = |v: u64| i64::from_ne_bytes(v.to_ne_bytes());
        let words = [
            as_i64(meta.dev()),
            as_i64(meta.ino()),
            as_i64(meta.size()),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ];
        let settled = u64::try_from(meta.ctime()).is_ok_and(|secs| {
            let nanos = u32::try_from(meta.ctime_nsec()).unwrap_or(0);
            Duration::new(secs, nanos).saturating_add(RACY) < now
        });
        Stamp { words, settled }
    }

    /// The identity of the file at `path` now (following symlinks, as
    /// opening it does).
    fn of_path(path: &Path) -> Option<Stamp> {
        let now = now();
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp::new(&meta, now))
    }
}

/// The wall clock (coarse: it only needs to be compared with ctimes).
pub(crate) fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// The index file for this list of input paths (as given: the build id
/// covers the names too). The name is only a place: the index holds the
/// paths and [`lookup`] compares them, so two lists that share a name
/// replace each other's index and are misses, never each other's hits.
/// (Not BLAKE3: on a hit it would be the only hash, and its CPU-feature
/// detection alone is three `cpuid`s, each a trap of ~10-25 µs on a VM.)
fn index_path(dir: &Path, paths: &[PathBuf]) -> PathBuf {
    use std::hash::Hasher as _;
    let mut h = rustc_hash::FxHasher::default();
    h.write(MAGIC.as_bytes());
    for p in paths {
        let bytes = p.as_os_str().as_encoded_bytes();
        h.write_usize(bytes.len());
        h.write(bytes);
    }
    dir.join(format!("{:016x}.inputs", h.finish()))
}

/// Whether `word` is `path`'s bytes in hex, as [`path_word`] writes them.
fn is_path_word(word: &[u8], path: &Path) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = path.as_os_str().as_encoded_bytes();
    word.len() == 2 * bytes.len()
        && word
            .chunks_exact(2)
            .zip(bytes)
            .all(|(w, &b)| w[0] == HEX[usize::from(b >> 4)] && w[1] == HEX[usize::from(b & 15)])
}

/// A decimal `i64` as [`record`] writes it (`-` and digits only).
fn parse_i64(word: &[u8]) -> Option<i64> {
    let (negative, digits) = match word.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, word),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if negative {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
    }
    Some(v)
}

/// A path as one word of an index line: its bytes in hex.
fn path_word(path: &Path) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut hex = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 15)]));
    }
    hex
}

/// What the index recorded for a list of inputs that are all unchanged.
pub(crate) struct Recorded {
    /// The build id, in hex (64 digits, checked).
    pub(crate) id: String,
    /// The inputs' identities.
    pub(crate) stamps: Vec<Stamp>,
    /// The entry's identity and content hash when a run checked it.
    pub(crate) entry: Option<kiln_linker::image_file::ImageStamp>,
}

/// What was recorded for `paths` in `dir`, if every input still has the
/// identity it had when it was hashed. Any doubt (no index, another
/// layout, a changed file, a file too fresh) answers `None`.
pub(crate) fn lookup(dir: &Path, paths: &[PathBuf]) -> Option<Recorded> {
    // Room for a typical index at once: one `read`, not a doubling series.
    // Bytes, split and parsed by hand: this runs on every hit.
    let mut text = Vec::with_capacity(16 * 1024);
    std::fs::File::open(index_path(dir, paths))
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut text)
        .ok()?;
    let mut lines = text.strip_suffix(b"\n")?.split(|&b| b == b'\n');
    if lines.next()? != MAGIC.as_bytes() {
        return None;
    }
    let id = lines.next()?;
    if id.len() != 64 || !id.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let entry = match lines.next()? {
        b"-" => None,
        line => Some(kiln_linker::image_file::ImageStamp::from_text(
            std::str::from_utf8(line).ok()?,
        )?),
    };
    let mut stamps = Vec::with_capacity(paths.len());
    for (path, line) in paths.iter().zip(lines.by_ref()) {
        let mut words = [0i64; 7];
        let mut fields = line.split(|&b| b == b' ');
        for w in &mut words {
            *w = parse_i64(fields.next()?)?;
        }
        if !is_path_word(fields.next()?, path) || fields.next().is_some() {
            return None;
        }
        let now = Stamp::of_path(path)?;
        if !now.settled || now.words != words {
            return None;
        }
        stamps.push(now);
    }
    (stamps.len() == paths.len() && lines.next().is_none()).then(|| Recorded {
        // 64 ASCII hex digits (checked above).
        id: String::from_utf8_lossy(id).into_owned(),
        stamps,
        entry,
    })
}

/// Records that `paths`, with the identities `stamps` taken before their
/// bytes were hashed, hash to build id `id` (hex), and the entry's `entry`
/// stamp if it has one. Nothing is recorded if any input was too fresh;
/// failing to write is not an error (the index is only a shortcut).
pub(crate) fn record(
    dir: &Path,
    paths: &[PathBuf],
    stamps: &[Stamp],
    id: &str,
    entry: Option<kiln_linker::image_file::ImageStamp>,
) {
    if stamps.len() != paths.len() || stamps.iter().any(|s| !s.settled) {
        return;
    }
    let entry = entry.map_or_else(|| "-".to_string(), |e| e.to_text());
    let mut text = format!("{MAGIC}\n{id}\n{entry}\n");
    for (s, path) in stamps.iter().zip(paths) {
        let mut line: Vec<String> = s.words.iter().map(i64::to_string).collect();
        line.push(path_word(path));
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    let path = index_path(dir, paths);
    if let Err(e) = crate::image_cli::write_atomically(&path, text.as_bytes(), 0o600) {
        eprintln!("kiln: warning: cannot record the cache's input index: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-input-index-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_fresh_input_is_not_recorded_and_damaged_indexes_are_ignored() {
        let d = dir("fresh");
        let a = d.join("a.o");
        std::fs::write(&a, b"aaaa").unwrap();
        let paths = vec![a.clone()];
        let fresh = Stamp::new(&std::fs::metadata(&a).unwrap(), now());
        assert!(!fresh.settled);
        record(&d, &paths, &[fresh], &"cd".repeat(32), None);
        assert!(!index_path(&d, &paths).exists());
        // A name that is not a build id is never returned.
        std::fs::write(index_path(&d, &paths), format!("{MAGIC}\n../x\n-\n")).unwrap();
        assert!(lookup(&d, &paths).is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_index_is_only_for_the_paths_it_was_recorded_for() {
        let d = dir("paths");
        let a = d.join("a.o");
        let b = d.join("b.o");
        std::fs::write(&a, b"aaaa").unwrap();
        // Same file, another name: the same identity (device, inode, times).
        std::fs::hard_link(&a, &b).unwrap();
        // Past the racy window, so both are recordable.
        std::thread::sleep(RACY + Duration::from_millis(100));
        let (pa, pb) = (vec![a.clone()], vec![b.clone()]);
        let stamp = Stamp::of_path(&a).unwrap();
        assert!(stamp.settled);
        record(&d, &pa, &[stamp], &"cd".repeat(32), None);
        assert!(lookup(&d, &pa).is_some_and(|r| r.id == "cd".repeat(32)));
        // Another list whose index file has the same name (as if the names
        // collided): it must not take the first list's build id.
        std::fs::copy(index_path(&d, &pa), index_path(&d, &pb)).unwrap();
        assert!(lookup(&d, &pb).is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn words_read_back_as_written() {
        for v in [0, 7, -7, i64::MAX, i64::MIN] {
            assert_eq!(parse_i64(v.to_string().as_bytes()), Some(v));
        }
        for bad in ["", "-", "1a", "+1", "9223372036854775808", " 1"] {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad:?}");
        }
        let p = Path::new("obj/l\u{e9}x 1.o");
        assert!(is_path_word(path_word(p).as_bytes(), p));
        assert!(!is_path_word(
            path_word(p).as_bytes(),
            Path::new("obj/lex 1.o")
        ));
        assert!(!is_path_word(b"", p));
    }
}
