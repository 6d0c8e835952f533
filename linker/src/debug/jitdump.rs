//! `jit-PID.dump`: the jitdump format that `perf inject --jit` reads
//! (linux `tools/perf/Documentation/jitdump-specification.txt`): a header,
//! then one `JIT_CODE_LOAD` record per function with its code bytes, each
//! preceded by a `JIT_CODE_DEBUG_INFO` record (its line table) when the
//! inputs have DWARF line tables.
//!
//! The file goes to `$JITDUMPDIR` (default `/tmp`). It is mapped
//! executable once, right after its header is written: `perf record` sees
//! that mmap and `perf inject --jit` finds the file through it. Timestamps
//! are `CLOCK_MONOTONIC`, as `perf record -k mono` expects.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use super::lines::LineRow;
use super::{DebugError, ImageSymbol};

/// `JiTD`.
pub(crate) const MAGIC: u32 = 0x4A69_5444;
/// Format version.
pub(crate) const VERSION: u32 = 1;
/// Bytes of the file header.
pub(crate) const HEADER_SIZE: u32 = 40;
/// `EM_X86_64`.
pub(crate) const ELF_MACH_X86_64: u32 = 62;
/// Record id of a code load.
pub(crate) const JIT_CODE_LOAD: u32 = 0;
/// Record id of a function's line table.
pub(crate) const JIT_CODE_DEBUG_INFO: u32 = 2;

struct Dump {
    file: File,
    path: String,
    next_index: u64,
}

static DUMP: Mutex<Option<Dump>> = Mutex::new(None);

/// The dump's path for this process.
pub(crate) fn path() -> String {
    let dir = std::env::var("JITDUMPDIR").unwrap_or_else(|_| "/tmp".into());
    format!("{dir}/jit-{}.dump", std::process::id())
}

fn timestamp() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

fn open() -> Result<Dump, DebugError> {
    let path = path();
    let io = |source| DebugError::Io {
        what: "writing the jitdump",
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    let mut h = Vec::with_capacity(HEADER_SIZE as usize);
    for v in [
        MAGIC,
        VERSION,
        HEADER_SIZE,
        ELF_MACH_X86_64,
        0,
        std::process::id(),
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&timestamp().to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    file.write_all(&h).map_err(io)?;
    // The marker perf looks for: the file mapped executable, once, kept
    // mapped for the life of the process.
    // SAFETY: a fresh private mapping of an open file; nothing reads or
    // writes through it, and it is never unmapped (perf only needs the
    // mmap event).
    let p = unsafe {
        use std::os::fd::AsRawFd;
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(Dump {
        file,
        path,
        next_index: 0,
    })
}

/// Appends a `JIT_CODE_LOAD` record per function of `symbols` (with a
/// size), with its code read from memory, after a `JIT_CODE_DEBUG_INFO`
/// record of the `lines` (sorted by address) inside it, in one write.
pub(crate) fn append(symbols: &[ImageSymbol<'_>], lines: &[LineRow]) -> Result<(), DebugError> {
    let mut guard = DUMP.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(open()?);
    }
    let Some(dump) = guard.as_mut() else {
        return Ok(());
    };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let pid = std::process::id();
    let mut buf = Vec::new();
    for s in symbols.iter().filter(|s| s.code && s.size > 0) {
        // SAFETY: the symbol lies in a finalized image (or stub block) whose
        // memory is mapped readable (RX or R) and stays mapped during this
        // call: the caller holds the image.
        let code = unsafe { std::slice::from_raw_parts(s.addr as *const u8, s.size as usize) };
        let first = lines.partition_point(|r| r.addr < s.addr);
        let end = lines.partition_point(|r| r.addr < s.addr + s.size);
        if first < end {
            debug_info(&mut buf, s.addr, &lines[first..end]);
        }
        let total = 16 + 40 + s.name_len() + 1 + code.len();
        buf.extend_from_slice(&JIT_CODE_LOAD.to_le_bytes());
        buf.extend_from_slice(&(total as u32).to_le_bytes());
        buf.extend_from_slice(&timestamp().to_le_bytes());
        buf.extend_from_slice(&pid.to_le_bytes());
        buf.extend_from_slice(&tid.to_le_bytes());
        for v in [s.addr, s.addr, s.size, dump.next_index] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        dump.next_index += 1;
        s.push_name(&mut buf);
        buf.push(0);
        buf.extend_from_slice(code);
    }
    if buf.is_empty() {
        return Ok(());
    }
    dump.file.write_all(&buf).map_err(|source| DebugError::Io {
        what: "writing the jitdump",
        path: dump.path.clone(),
        source,
    })
}

/// A `JIT_CODE_DEBUG_INFO` record: the line rows of the function at `addr`.
fn debug_info(buf: &mut Vec<u8>, addr: u64, rows: &[LineRow]) {
    let entries: usize = rows.iter().map(|r| 16 + r.file.len() + 1).sum();
    let total = 16 + 16 + entries;
    buf.extend_from_slice(&JIT_CODE_DEBUG_INFO.to_le_bytes());
    buf.extend_from_slice(&(total as u32).to_le_bytes());
    buf.extend_from_slice(&timestamp().to_le_bytes());
    buf.extend_from_slice(&addr.to_le_bytes());
    buf.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for r in rows {
        buf.extend_from_slice(&r.addr.to_le_bytes());
        buf.extend_from_slice(&r.line.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes()); // discriminator
        buf.extend_from_slice(r.file.as_bytes());
        buf.push(0);
    }
}
