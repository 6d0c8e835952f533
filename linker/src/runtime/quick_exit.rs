//! `at_quick_exit` for JIT'd images: handlers that `quick_exit` runs only
//! while their image is alive.
//!
//! Like `atexit`, `at_quick_exit` lives in `libc_nonshared.a` (a wrapper
//! passing glibc's `__cxa_at_quick_exit` the caller's `__dso_handle`), so
//! JIT'd code needs it provided. glibc never drops a library's
//! `quick_exit` handlers, so kiln keeps its images' handlers itself and
//! registers one handler of its own with glibc, at the first image
//! registration: it runs the images' handlers newest first, each while its
//! image is alive — a removed image's handlers are skipped.

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::dso;
use super::life::Life;
use super::thread;

/// A handler as `at_quick_exit` takes it.
type Handler = unsafe extern "C" fn();

/// Handlers of live (or not yet pruned) images, oldest first.
static HANDLERS: Mutex<Vec<(Handler, Arc<Life>)>> = Mutex::new(Vec::new());

unsafe extern "C" {
    /// glibc's registration behind `at_quick_exit`.
    fn __cxa_at_quick_exit(f: Handler, dso: *mut c_void) -> c_int;
}

/// `at_quick_exit` for JIT'd code: a handler in a kiln image is kept with
/// the image; any other goes to glibc for the process's life.
unsafe extern "C" fn at_quick_exit(f: Option<Handler>) -> c_int {
    let Some(f) = f else { return -1 };
    let Some(life) = dso::life_of(f as usize) else {
        // SAFETY: host code: registered with glibc as `libc_nonshared.a`'s
        // wrapper would for the executable.
        return unsafe { __cxa_at_quick_exit(f, std::ptr::null_mut()) };
    };
    static HOOKED: OnceLock<c_int> = OnceLock::new();
    let rc = *HOOKED.get_or_init(|| {
        // SAFETY: kiln's own handler, alive as long as the process; the
        // DSO is kiln's own object.
        unsafe { __cxa_at_quick_exit(run_images_handlers, thread::dso_anchor()) }
    });
    if rc != 0 {
        return rc;
    }
    let mut handlers = HANDLERS.lock().unwrap_or_else(PoisonError::into_inner);
    handlers.retain(|(_, life)| life.is_alive());
    handlers.push((f, life));
    0
}

/// kiln's `quick_exit` handler: the images' handlers, newest first,
/// including handlers registered while these run.
unsafe extern "C" fn run_images_handlers() {
    loop {
        let next = HANDLERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let Some((f, life)) = next else { break };
        // SAFETY: the image that registered `f` is alive while
        // `while_alive` runs it; `quick_exit` is running its handlers.
        life.while_alive(|| unsafe { f() });
    }
}

/// The overrides this module provides.
pub(crate) fn overrides() -> [(&'static str, usize); 1] {
    [("at_quick_exit", at_quick_exit as *const () as usize)]
}
