//! The GDB JIT interface (GDB manual, "JIT Compilation Interface"): a
//! doubly linked list of in-memory object files hanging off
//! `__jit_debug_descriptor`; after each change the process calls
//! `__jit_debug_register_code`, on which GDB (and LLDB) keep a breakpoint,
//! and the debugger reads the entry named by `relevant_entry`.
//!
//! The two symbols come from `csrc/gdb_jit.c` as weak definitions, so a
//! process with another JIT defining them too keeps one pair. Every change
//! kiln makes is under [`LOCK`], one per process; another JIT sharing the
//! descriptor in the same executable must not change the list while kiln
//! does (LLVM's ORC, for one, takes its own lock: two such JITs in one
//! process would have to agree on one — kiln does not try to guess it).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// `struct jit_code_entry`.
#[repr(C)]
struct JitCodeEntry {
    next_entry: *mut JitCodeEntry,
    prev_entry: *mut JitCodeEntry,
    symfile_addr: *const u8,
    symfile_size: u64,
}

/// `struct jit_descriptor`.
#[repr(C)]
struct JitDescriptor {
    version: u32,
    action_flag: u32,
    relevant_entry: *mut JitCodeEntry,
    first_entry: *mut JitCodeEntry,
}

const JIT_NOACTION: u32 = 0;
const JIT_REGISTER_FN: u32 = 1;
const JIT_UNREGISTER_FN: u32 = 2;

unsafe extern "C" {
    /// `&__jit_debug_descriptor` (the pair the final link kept).
    fn kiln_gdb_jit_descriptor() -> *mut JitDescriptor;
    /// Calls `__jit_debug_register_code`.
    fn kiln_gdb_jit_notify();
}

/// Serializes every change to the descriptor's list in this process.
static LOCK: Mutex<()> = Mutex::new(());

/// Registrations so far, and nanoseconds spent in them (the notification
/// included: a debugger reads the object while the process waits).
static REGISTERED: AtomicU64 = AtomicU64::new(0);
static REGISTER_NANOS: AtomicU64 = AtomicU64::new(0);

/// CPU nanoseconds the debugger used during registrations, when measured
/// (see [`tracer_clock`]).
static TRACER_NANOS: AtomicU64 = AtomicU64::new(0);

/// With `KILN_GDB_TRACER_CPU=1` (a benchmark aid): the CPU-time clock of
/// the process tracing this one (`TracerPid`, read once), so that each
/// registration can count the CPU time the debugger spent on it — unlike
/// wall time, not inflated by other load on the machine.
fn tracer_clock() -> Option<libc::clockid_t> {
    static CLOCK: std::sync::OnceLock<Option<libc::clockid_t>> = std::sync::OnceLock::new();
    *CLOCK.get_or_init(|| {
        if std::env::var_os("KILN_GDB_TRACER_CPU").is_none_or(|v| v != "1") {
            return None;
        }
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let pid: libc::pid_t = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))?
            .trim()
            .parse()
            .ok()?;
        // The process CPU clock of `pid` (Linux's MAKE_PROCESS_CPUCLOCK
        // with CPUCLOCK_SCHED), as `clock_getcpuclockid` would give.
        (pid != 0).then_some(((!pid) << 3) | 2)
    })
}

/// Nanoseconds on `clock` now (0 if it cannot be read).
fn clock_nanos(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; a bad clock id only
    // makes the call fail.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The debugger's CPU time of each registration, in order, when measured
/// (for the median: the first registrations also pay the debugger's
/// one-time work, which a mean over few links spreads thin).
static TRACER_EACH: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// CPU time the debugger spent on registrations, if measured
/// (`KILN_GDB_TRACER_CPU=1` and a debugger attached).
pub(crate) fn tracer_time() -> Option<std::time::Duration> {
    tracer_clock()?;
    Some(std::time::Duration::from_nanos(
        TRACER_NANOS.load(Ordering::Relaxed),
    ))
}

/// The median of the debugger's CPU time per registration, if measured.
pub(crate) fn tracer_median() -> Option<std::time::Duration> {
    tracer_clock()?;
    let mut each = TRACER_EACH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if each.is_empty() {
        return None;
    }
    let mid = each.len() / 2;
    let (_, &mut median, _) = each.select_nth_unstable(mid);
    Some(std::time::Duration::from_nanos(median))
}

/// (registrations, total time spent registering) in this process.
pub(crate) fn registration_time() -> (u64, std::time::Duration) {
    (
        REGISTERED.load(Ordering::Relaxed),
        std::time::Duration::from_nanos(REGISTER_NANOS.load(Ordering::Relaxed)),
    )
}

/// One registered debug object. Dropping it unregisters it.
pub(crate) struct Entry {
    /// Boxed: the descriptor's list points at it.
    entry: Box<JitCodeEntry>,
    /// The ELF object `entry.symfile_addr` points into.
    object: Box<[u8]>,
}

// SAFETY: the raw pointers inside `entry` are only read or written under
// `LOCK` (list links) or point into `object`, which this value owns and
// never changes.
unsafe impl Send for Entry {}
// SAFETY: as for `Send`: no `&self` method touches the pointers.
unsafe impl Sync for Entry {}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("gdb::Entry")
            .field("object_bytes", &self.object.len())
            .finish()
    }
}

impl Entry {
    /// Links `object` at the head of the list and tells the debugger.
    pub(crate) fn register(object: Vec<u8>) -> Entry {
        let object = object.into_boxed_slice();
        let mut entry = Box::new(JitCodeEntry {
            next_entry: std::ptr::null_mut(),
            prev_entry: std::ptr::null_mut(),
            symfile_addr: object.as_ptr(),
            symfile_size: object.len() as u64,
        });
        let start = std::time::Instant::now();
        let tracer = tracer_clock().map(|c| (c, clock_nanos(c)));
        let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the descriptor is a static of the C shim; its list is
        // changed only under `LOCK`, held here; every entry on it is a live
        // boxed `JitCodeEntry` (unlinked before it is freed, in `Drop`).
        unsafe {
            let d = kiln_gdb_jit_descriptor();
            let e: *mut JitCodeEntry = &mut *entry;
            (*e).next_entry = (*d).first_entry;
            if !(*d).first_entry.is_null() {
                (*(*d).first_entry).prev_entry = e;
            }
            (*d).first_entry = e;
            (*d).relevant_entry = e;
            (*d).action_flag = JIT_REGISTER_FN;
            kiln_gdb_jit_notify();
            (*d).action_flag = JIT_NOACTION;
        }
        if let Some((clock, before)) = tracer {
            let spent = clock_nanos(clock).saturating_sub(before);
            TRACER_NANOS.fetch_add(spent, Ordering::Relaxed);
            TRACER_EACH
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(spent);
        }
        REGISTERED.fetch_add(1, Ordering::Relaxed);
        REGISTER_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Entry { entry, object }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: as in `register`: `LOCK` is held, and this entry is on the
        // list (it was linked at registration and only unlinked here).
        unsafe {
            let d = kiln_gdb_jit_descriptor();
            let e: *mut JitCodeEntry = &mut *self.entry;
            let (prev, next) = ((*e).prev_entry, (*e).next_entry);
            if prev.is_null() {
                (*d).first_entry = next;
            } else {
                (*prev).next_entry = next;
            }
            if !next.is_null() {
                (*next).prev_entry = prev;
            }
            (*d).relevant_entry = e;
            (*d).action_flag = JIT_UNREGISTER_FN;
            kiln_gdb_jit_notify();
            (*d).action_flag = JIT_NOACTION;
            (*d).relevant_entry = std::ptr::null_mut();
        }
    }
}

/// Entries on the list now (for tests).
pub(crate) fn registered_count() -> usize {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut n = 0;
    // SAFETY: `LOCK` is held; the list's entries are live (see `register`).
    unsafe {
        let mut e = (*kiln_gdb_jit_descriptor()).first_entry;
        while !e.is_null() {
            n += 1;
            e = (*e).next_entry;
        }
    }
    n
}
