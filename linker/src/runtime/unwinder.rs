//! Which unwinders know the JIT'd code's `.eh_frame`.
//!
//! kiln registers every image's `.eh_frame` with the `__register_frame` it
//! is linked against (the *linked* unwinder: Rust's panics unwind with it).
//! In a program linked against libgcc_s, as Rust programs are by default,
//! that is libgcc_s's, which C++ (libstdc++) and glibc (`pthread_exit`,
//! `pthread_cancel`, `backtrace`) unwind with too: one unwinder, nothing
//! more to do ([`Mode::Shared`]).
//!
//! The `kiln` binary links libgcc's unwinder statically instead
//! (`linker/build.rs`), so that a program that never unwinds does not load
//! libgcc_s, whose constructor runs a dozen `cpuid`s (~0.2 ms of a 1.2 ms
//! C program on this VM class). libgcc_s — the *process* unwinder — may
//! then arrive later, and every section registered so far must be
//! registered with it too before anything unwinds with it
//! ([`Mode::Private`]). It arrives:
//!
//! - through [`HostSymbols`](crate::HostSymbols), which opens it (or
//!   libstdc++, which needs it) when a program binds one of its names, and
//!   calls [`attach_if_loaded`] after opening any library;
//! - through glibc, which opens it inside `pthread_exit`, `pthread_cancel`,
//!   `thrd_exit` and `backtrace`: binding one of [`UNWINDING_NAMES`] makes
//!   `HostSymbols` call [`load`] first;
//! - through the program's own `dlopen`, which binds to [`kiln_dlopen`]
//!   (the real `dlopen`, then [`attach_if_loaded`]; in `kiln`, the main
//!   program, it opens with the same caller as JIT'd code gets: the main
//!   program's);
//! - otherwise (a library loading it behind kiln's back): at the next
//!   registration, which checks.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Mutex, OnceLock};

unsafe extern "C" {
    fn __register_frame(begin: *const u8);
    fn __deregister_frame(begin: *const u8);
}

/// libgcc_s's soname.
const LIBGCC_S: &std::ffi::CStr = c"libgcc_s.so.1";

/// glibc functions that open libgcc_s and unwind the caller's frames with it.
pub(crate) const UNWINDING_NAMES: &[&str] =
    &["pthread_exit", "pthread_cancel", "thrd_exit", "backtrace"];

/// A pair of registration functions.
#[derive(Clone, Copy)]
struct Unwinder {
    register: unsafe extern "C" fn(*const u8),
    deregister: unsafe extern "C" fn(*const u8),
}

/// The unwinder this code is linked against.
const LINKED: Unwinder = Unwinder {
    register: __register_frame,
    deregister: __deregister_frame,
};

enum Mode {
    /// The linked unwinder is the process's (libgcc_s's).
    Shared,
    /// The linked unwinder is private to this binary; libgcc_s, once it is
    /// loaded, gets every live section too.
    Private(Mutex<Registry>),
}

/// [`Mode::Private`]'s state.
struct Registry {
    /// libgcc_s's functions, once it is loaded.
    process: Option<Unwinder>,
    /// Every section registered and not yet deregistered.
    live: Vec<usize>,
}

fn mode() -> &'static Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    MODE.get_or_init(|| match loaded_libgcc_s() {
        Some(u) if u.register as usize == LINKED.register as usize => Mode::Shared,
        process => Mode::Private(Mutex::new(Registry {
            process,
            live: Vec::new(),
        })),
    })
}

fn registry(m: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a whole `.eh_frame` section with the linked unwinder and, once
/// it is loaded, the process's.
///
/// # Safety
/// As for `__register_frame`: `start` begins a complete, validated
/// `.eh_frame` section followed by a zero terminator, which stays mapped and
/// unchanged until [`deregister`] is called with it, exactly once.
pub(crate) unsafe fn register(start: *const u8) {
    match mode() {
        // SAFETY: this function's contract.
        Mode::Shared => unsafe { __register_frame(start) },
        Mode::Private(m) => {
            let mut r = registry(m);
            if r.process.is_none() {
                r.process = loaded_libgcc_s();
                attach_live(&r);
            }
            // SAFETY: this function's contract.
            unsafe { __register_frame(start) };
            if let Some(p) = r.process {
                // SAFETY: this function's contract (`start` is a live
                // `.eh_frame`), with libgcc_s's copy of the function.
                unsafe { (p.register)(start) };
            }
            r.live.push(start as usize);
        }
    }
}

/// Deregisters a section [`register`] registered, from every unwinder it
/// was registered with.
///
/// # Safety
/// `start` was registered by [`register`] and not deregistered since.
pub(crate) unsafe fn deregister(start: *const u8) {
    match mode() {
        // SAFETY: this function's contract.
        Mode::Shared => unsafe { __deregister_frame(start) },
        Mode::Private(m) => {
            let mut r = registry(m);
            if let Some(i) = r.live.iter().rposition(|&s| s == start as usize) {
                r.live.swap_remove(i);
            }
            if let Some(p) = r.process {
                // SAFETY: every live section is registered with libgcc_s
                // once it is attached (`attach_live`, `register`).
                unsafe { (p.deregister)(start) };
            }
            // SAFETY: this function's contract.
            unsafe { __deregister_frame(start) };
        }
    }
}

/// Registers every live section with libgcc_s if it has been loaded since
/// the last look (a library was opened).
pub(crate) fn attach_if_loaded() {
    if let Mode::Private(m) = mode() {
        let mut r = registry(m);
        if r.process.is_none() {
            r.process = loaded_libgcc_s();
            attach_live(&r);
        }
    }
}

/// Loads libgcc_s (if this binary's unwinder is private) and registers
/// every live section with it: before code that glibc will unwind with it.
pub(crate) fn load() {
    if let Mode::Private(m) = mode() {
        if registry(m).process.is_some() {
            return;
        }
        // SAFETY: libgcc_s's initializer only reads the CPU's features; the
        // handle is kept for the life of the process (never closed).
        let handle = unsafe { libc::dlopen(LIBGCC_S.as_ptr(), libc::RTLD_NOW) };
        if !handle.is_null() {
            attach_if_loaded();
        }
    }
}

/// Called with the new process unwinder just found: registers the live
/// sections with it.
fn attach_live(r: &Registry) {
    if let Some(p) = r.process {
        for &s in &r.live {
            // SAFETY: `s` is live: registered with the linked unwinder by
            // `register`, still mapped (not yet deregistered).
            unsafe { (p.register)(s as *const u8) };
        }
    }
}

/// libgcc_s's registration functions if it is loaded (no loading, and no
/// `dlerror` state left behind when it is not).
fn loaded_libgcc_s() -> Option<Unwinder> {
    unsafe extern "C" fn is_libgcc_s(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        _data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid `dl_phdr_info` for the call.
        let name = unsafe { (*info).dlpi_name };
        if name.is_null() {
            return 0;
        }
        // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned
        // by the loader, valid during the callback.
        let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
        let base = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
        c_int::from(base == LIBGCC_S.to_bytes())
    }
    // SAFETY: the callback only reads the loader's entries; it returns
    // nonzero (stopping the walk) at libgcc_s.
    if unsafe { libc::dl_iterate_phdr(Some(is_libgcc_s), std::ptr::null_mut()) } == 0 {
        return None;
    }
    // SAFETY: RTLD_NOLOAD only finds an object already loaded (its
    // initializers ran); the reference taken keeps it loaded for good.
    let handle = unsafe { libc::dlopen(LIBGCC_S.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return None;
    }
    let symbol = |name: &std::ffi::CStr| {
        // SAFETY: `handle` is a live handle; dlsym only reads the tables.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        // SAFETY: libgcc_s's `__register_frame`/`__deregister_frame` have
        // this signature (`void (void *)`).
        (!p.is_null()).then(|| unsafe {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*const u8)>(p)
        })
    };
    Some(Unwinder {
        register: symbol(c"__register_frame")?,
        deregister: symbol(c"__deregister_frame")?,
    })
}

/// The runtime overrides this module needs: `dlopen` in [`Mode::Private`].
pub(crate) fn overrides() -> Vec<(&'static str, usize)> {
    match mode() {
        Mode::Shared => Vec::new(),
        Mode::Private(_) => vec![("dlopen", kiln_dlopen as *const () as usize)],
    }
}

/// JIT'd code's `dlopen` when the unwinder is private: glibc's, then a
/// look for libgcc_s (which the opened library may have brought).
///
/// # Safety
/// As `dlopen(3)`'s: `file` is null or a NUL-terminated path, and the
/// opened library's initializers run.
unsafe extern "C" fn kiln_dlopen(file: *const c_char, mode: c_int) -> *mut c_void {
    // SAFETY: the caller's arguments, passed on unchanged.
    let handle = unsafe { libc::dlopen(file, mode) };
    if !handle.is_null() {
        attach_if_loaded();
    }
    handle
}
