//! Per-thread state of kiln's runtime: the dynamic TLS vector, the pending
//! `thread_local` destructors of JIT'd images, and membership in the list of
//! attached threads (whose static TLS copies kiln keeps initialized).
//!
//! The state lives in a heap block reached through a `const`-initialized,
//! drop-free `thread_local!` cell, so it stays reachable while other
//! thread-exit destructors run (a Rust `thread_local!` with a destructor is
//! unusable once its own destructor started). Its cleanup is registered with
//! glibc's real `__cxa_thread_atexit_impl` when the state is created; glibc
//! runs those destructors last-registered first, so every JIT `thread_local`
//! destructor registered through kiln afterwards runs before the cleanup
//! frees the TLS blocks it may touch.

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::dso::ThreadDtor;
use super::tls;

/// One entry of the dynamic thread vector, indexed by module slot. Layout is
/// read by the TLSDESC fast path in `tls::desc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct DtvEntry {
    /// Full kiln module id the block belongs to (0: empty).
    pub(crate) id: u64,
    /// Start of this thread's block for that module.
    pub(crate) block: *mut u8,
}

/// Per-thread runtime state. The first two fields are read by assembly
/// (`tls::desc`): keep them first and in this order.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ThreadState {
    /// `dtv.as_mut_ptr()`, mirrored for the assembly fast path.
    pub(crate) dtv_ptr: *mut DtvEntry,
    /// `dtv.len()`, mirrored for the assembly fast path.
    pub(crate) dtv_len: usize,
    /// Dynamic thread vector, indexed by module slot.
    pub(crate) dtv: Vec<DtvEntry>,
    /// Unique key of this thread (never reused within the process).
    pub(crate) key: u64,
    /// `thread_local` destructors registered through kiln on this thread and
    /// not yet run by glibc, in registration order.
    pub(crate) pending_dtors: Vec<*mut ThreadDtor>,
}

impl ThreadState {
    /// The entry at `slot`, if the vector is that long.
    pub(crate) fn dtv_entry(&self, slot: usize) -> Option<DtvEntry> {
        self.dtv.get(slot).copied()
    }

    /// Stores `entry` at `slot`, growing the vector and refreshing the
    /// mirror fields.
    pub(crate) fn set_dtv(&mut self, slot: usize, entry: DtvEntry) {
        if self.dtv.len() <= slot {
            self.dtv.resize(
                slot + 1,
                DtvEntry {
                    id: 0,
                    block: ptr::null_mut(),
                },
            );
        }
        self.dtv[slot] = entry;
        self.dtv_ptr = self.dtv.as_mut_ptr();
        self.dtv_len = self.dtv.len();
    }
}

thread_local! {
    /// This thread's state, or null before first use and after cleanup.
    /// `const` and drop-free: compiled to a plain `#[thread_local]` static.
    pub(crate) static STATE: Cell<*mut ThreadState> = const { Cell::new(ptr::null_mut()) };
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// An address inside this crate, handed to glibc as the "DSO" of our own
/// thread-exit cleanup so glibc attributes it to the object kiln lives in.
static DSO_ANCHOR: u8 = 0;

/// The "DSO symbol" kiln passes to glibc for destructors it registers.
pub(crate) fn dso_anchor() -> *mut c_void {
    (&raw const DSO_ANCHOR).cast_mut().cast()
}

unsafe extern "C" {
    /// glibc's registration of a thread-exit destructor (GLIBC_2.18).
    #[link_name = "__cxa_thread_atexit_impl"]
    pub(crate) fn real_cxa_thread_atexit_impl(
        dtor: unsafe extern "C" fn(*mut c_void),
        obj: *mut c_void,
        dso_symbol: *mut c_void,
    ) -> libc::c_int;
}

/// Reads the thread pointer (`%fs:0`, which glibc keeps equal to `%fs`'s base).
#[inline]
pub(crate) fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86-64 Linux the TCB's first word is its own address
    // (glibc's `tcbhead_t::tcb`); reading it has no side effects.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    tp
}

/// Returns this thread's state, creating it (and attaching the thread to the
/// static TLS area) on first use.
pub(crate) fn current() -> *mut ThreadState {
    let existing = STATE.with(Cell::get);
    if !existing.is_null() {
        return existing;
    }
    let state = Box::into_raw(Box::new(ThreadState {
        dtv_ptr: ptr::null_mut(),
        dtv_len: 0,
        dtv: Vec::new(),
        key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
        pending_dtors: Vec::new(),
    }));
    STATE.with(|cell| cell.set(state));
    // SAFETY: `cleanup` matches the destructor signature; the object pointer
    // is unused; DSO_ANCHOR lies inside the object kiln is linked into.
    let rc = unsafe { real_cxa_thread_atexit_impl(cleanup, ptr::null_mut(), dso_anchor()) };
    if rc != 0 {
        // Without the cleanup the blocks of this thread leak at its exit;
        // nothing else goes wrong, so keep going.
        eprintln!(
            "kiln runtime: could not register the thread-exit cleanup; TLS blocks of this thread will leak"
        );
    }
    // SAFETY: `state` is the live, exclusively owned state of this thread.
    let key = unsafe { (*state).key };
    tls::static_area::attach(key);
    state
}

/// Attaches the thread that runs the program's initializers — the process's
/// main thread when kiln is linked into the executable — before `main`, so
/// a host that links on a worker and calls JIT'd code on its main thread
/// needs no [`crate::runtime::tls::attach_current_thread`] call there.
extern "C" fn attach_initial_thread() {
    current();
}

#[used]
#[unsafe(link_section = ".init_array")]
static ATTACH_INITIAL_THREAD: extern "C" fn() = attach_initial_thread;

/// Thread-exit cleanup registered by [`current`].
unsafe extern "C" fn cleanup(_: *mut c_void) {
    let state = STATE.with(|cell| cell.replace(ptr::null_mut()));
    if state.is_null() {
        return;
    }
    // SAFETY: `state` came from `Box::into_raw` in `current` on this thread
    // and was just unpublished, so nobody else can reach it.
    let state = unsafe { Box::from_raw(state) };
    tls::static_area::detach(state.key);
    tls::release_thread_blocks(state.key, &state.dtv);
    // Entries still pending belong to glibc's list (it frees them when it
    // runs them); dropping our index of them is all that is needed.
}
