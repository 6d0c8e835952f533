//! Image files whose content hash this process has already checked, so
//! that loading the same unchanged file again does not hash it again (the
//! BLAKE3 of Lua's 250 KB image is ~48 µs, more than half of what
//! `dlopen(RTLD_NOW)` of the same code takes).
//!
//! A file is remembered by its identity as `fstat` reports it: device,
//! inode, size, modification time and status-change time (ctime), with the
//! content hash its header held when the whole file was hashed. A later
//! load of a file with the same identity and the same header hash skips
//! the hash; the header and every table are still checked. Why this is
//! sound:
//!
//! - Every write to a file through the kernel (`write`, `truncate`, a write
//!   through a shared mapping, `utimensat`) sets its ctime to the current
//!   time, and ctime cannot be set back by anyone but the clock's owner.
//!   Replacing the file by a rename gives another inode.
//! - A write made in the same clock tick as the check could leave ctime
//!   unchanged (timestamps are coarse: a jiffy, or up to 2 s on FAT). So a
//!   file is remembered only if its ctime is at least [`RACY`] older than
//!   the clock read before the `fstat` (git's "racily clean" rule): any
//!   later write then gives a ctime at least that clock value, which
//!   differs.
//!
//! What this trusts beyond the hash check: that nothing changes the file's
//! bytes without going through the kernel's file operations (a raw block
//! device write, memory corruption of the page cache) after it was hashed
//! once in this process, and that the real-time clock is not stepped back
//! across such a write. The hash guards against damage at rest, not against
//! an attacker (see [`super::load`]'s safety section); an attacker able to
//! write the file could equally recompute its hash.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::Duration;

/// How much older than the clock a file's ctime must be to be remembered:
/// the coarsest timestamp granularity of the file systems Linux supports
/// (FAT's 2 s), so that a write in the same tick as the check cannot keep
/// the ctime it had.
pub(crate) const RACY: Duration = Duration::from_secs(2);

/// At most this many files are remembered (then the table starts afresh).
const CAPACITY: usize = 4096;

/// A file's identity as `fstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Whether the ctime was old enough, when the identity was taken, for
    /// the file to be remembered ([`RACY`]).
    settled: bool,
}

impl Identity {
    /// The identity of `meta` (the file's metadata, taken after `now`, the
    /// real-time clock), settled if its ctime is at least `racy` older than
    /// `now`.
    pub(crate) fn new(meta: &std::fs::Metadata, now: Duration, racy: Duration) -> Identity {
        let ctime = (meta.ctime(), meta.ctime_nsec());
        let settled = u64::try_from(ctime.0).is_ok_and(|secs| {
            let c = Duration::new(secs, u32::try_from(ctime.1).unwrap_or(0));
            c.saturating_add(racy) < now
        });
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime,
            settled,
        }
    }

    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// (device, inode): which file this is, whatever its state.
    pub(crate) fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// Whether the ctime was old enough for the file to be remembered.
    pub(crate) fn is_settled(&self) -> bool {
        self.settled
    }

    /// The identity as seven words (device, inode, size, mtime s/ns, ctime
    /// s/ns), to keep across processes; `None` if it is not settled (too
    /// fresh to be trusted later).
    pub(crate) fn to_words(self) -> Option<[i64; 7]> {
        let w = |v: u64| i64::from_ne_bytes(v.to_ne_bytes());
        self.settled.then(|| {
            let (m, c) = (self.mtime, self.ctime);
            [w(self.dev), w(self.ino), w(self.size), m.0, m.1, c.0, c.1]
        })
    }

    /// A settled identity from [`Identity::to_words`].
    pub(crate) fn from_words(words: [i64; 7]) -> Identity {
        let u = |v: i64| u64::from_ne_bytes(v.to_ne_bytes());
        Identity {
            dev: u(words[0]),
            ino: u(words[1]),
            size: u(words[2]),
            mtime: (words[3], words[4]),
            ctime: (words[5], words[6]),
            settled: true,
        }
    }
}

/// The real-time clock as the kernel stamps files with it (the coarse
/// clock: a file's ctime is never below it once this returns).
pub(crate) fn now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 {
        // No clock: nothing is old enough to remember.
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// (device, inode) → the identity and content hash it was verified with.
type Table = HashMap<(u64, u64), (Identity, [u8; 32])>;

static VERIFIED: Mutex<Option<Table>> = Mutex::new(None);

/// Whether a file with identity `id` and header content hash `hash` was
/// hashed whole in this process and found to match.
pub(crate) fn is_verified(id: &Identity, hash: &[u8; 32]) -> bool {
    let table = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
    table
        .as_ref()
        .and_then(|t| t.get(&(id.dev, id.ino)))
        .is_some_and(|(known, h)| known == id && h == hash)
}

/// Whether a file with identity `id` was hashed whole in this process
/// (whatever its header says now): a load of it will most likely not read
/// the whole file.
pub(crate) fn is_known(id: &Identity) -> bool {
    let table = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
    table
        .as_ref()
        .and_then(|t| t.get(&(id.dev, id.ino)))
        .is_some_and(|(known, _)| known == id)
}

/// Remembers that the file `id` was hashed whole and matched `hash` (if its
/// ctime is old enough: [`Identity::new`]); forgets what was remembered
/// about the inode otherwise.
pub(crate) fn remember(id: Identity, hash: [u8; 32]) {
    let mut table = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
    let t = table.get_or_insert_with(HashMap::new);
    if !id.settled {
        t.remove(&(id.dev, id.ino));
        return;
    }
    if t.len() >= CAPACITY {
        t.clear();
    }
    t.insert((id.dev, id.ino), (id, hash));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn identity(f: &std::fs::File, racy: Duration) -> Identity {
        let now = now();
        Identity::new(&f.metadata().unwrap(), now, racy)
    }

    /// A file rewritten in place (same size, same inode) after it was
    /// remembered no longer matches: its ctime moved.
    #[test]
    fn a_file_rewritten_in_place_is_no_longer_verified() {
        let dir = std::env::temp_dir().join(format!("kiln-verified-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.kimg");
        std::fs::write(&path, [1u8; 64]).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // Wait until the file's ctime is older than the coarse clock (a
        // tick is at most 10 ms), then remember it with no margin.
        std::thread::sleep(Duration::from_millis(30));
        let id = identity(&f, Duration::ZERO);
        assert!(id.settled, "{id:?}");
        remember(id, [7; 32]);
        assert!(is_verified(&identity(&f, Duration::ZERO), &[7; 32]));
        assert!(!is_verified(&identity(&f, Duration::ZERO), &[8; 32]));
        // Rewrite one byte in place, in the same tick if it can.
        f.seek(std::io::SeekFrom::Start(10)).unwrap();
        f.write_all(&[2]).unwrap();
        let after = identity(&f, Duration::ZERO);
        assert_eq!((after.ino, after.size), (id.ino, id.size));
        assert!(
            !is_verified(&after, &[7; 32]),
            "a rewritten file still counts as verified"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file changed within [`RACY`] of the check is not remembered.
    #[test]
    fn a_fresh_file_is_not_remembered() {
        let dir = std::env::temp_dir().join(format!("kiln-verified-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.kimg");
        std::fs::write(&path, [1u8; 64]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let id = identity(&f, RACY);
        assert!(!id.settled);
        remember(id, [7; 32]);
        assert!(!is_verified(&id, &[7; 32]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
