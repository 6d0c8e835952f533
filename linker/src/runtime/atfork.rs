//! `pthread_atfork` for JIT'd images: fork handlers that run only while
//! their image is alive.
//!
//! A program gets `pthread_atfork` from `libc_nonshared.a` — a wrapper
//! that passes glibc's `__register_atfork` its own `__dso_handle`, so that
//! `dlclose` can drop the handlers (glibc's `__unregister_atfork` is not
//! exported). kiln keeps the handlers of its images itself instead, and
//! registers its own three with glibc once: each runs the images' handlers
//! of that kind while the image is alive, so a `fork()` after an image was
//! removed skips its handlers instead of calling freed memory, and a
//! teardown waits for a handler already running. As POSIX orders them,
//! prepare handlers run newest first, parent and child handlers oldest
//! first — all of kiln's images' handlers together, at the place of kiln's
//! first registration among the process's others.
//!
//! Handlers whose code is in no kiln image (host functions) go to glibc
//! unchanged.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::dso;
use super::life::Life;
use super::thread;

/// A fork handler as `pthread_atfork` takes it.
type ForkHandler = unsafe extern "C" fn();

/// One image's `pthread_atfork` registration.
#[derive(Clone)]
struct Registered {
    prepare: Option<ForkHandler>,
    parent: Option<ForkHandler>,
    child: Option<ForkHandler>,
    life: Arc<Life>,
}

/// Registrations of live (or not yet pruned) images, oldest first.
static HANDLERS: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

thread_local! {
    /// The registrations a `fork()` in progress on this thread runs: taken
    /// by the prepare step, so the parent and child steps take no lock (in
    /// the child, a lock another thread held at the fork stays held).
    static FORKING: RefCell<Vec<Registered>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" {
    /// glibc's registration behind `pthread_atfork`.
    fn __register_atfork(
        prepare: Option<ForkHandler>,
        parent: Option<ForkHandler>,
        child: Option<ForkHandler>,
        dso_handle: *mut c_void,
    ) -> c_int;
}

/// Registers kiln's own handlers with glibc, once; glibc's answer.
fn hook_once() -> c_int {
    static HOOKED: OnceLock<c_int> = OnceLock::new();
    *HOOKED.get_or_init(|| {
        // SAFETY: the three are `void (void)` functions of kiln, alive as
        // long as the process; the DSO is kiln's own object.
        unsafe {
            __register_atfork(
                Some(prepare_images),
                Some(parent_images),
                Some(child_images),
                thread::dso_anchor(),
            )
        }
    })
}

/// Registers with glibc, once, a child handler that tells the engine of
/// each `fork()` ([`kiln_engine::note_forked_child`]): sessions made before
/// it then refuse requests in the child at once, instead of waiting for
/// worker threads the child does not have. First among kiln's handlers,
/// so image code a later child handler runs meets refusals too.
pub(crate) fn tell_the_engine_of_forks() {
    static HOOKED: std::sync::Once = std::sync::Once::new();
    HOOKED.call_once(|| {
        // SAFETY: `forked_child` is a `void (void)` function of kiln, alive
        // as long as the process; the DSO is kiln's own object. Should
        // glibc refuse (out of memory), forks go unnoticed, as before.
        unsafe { __register_atfork(None, None, Some(forked_child), thread::dso_anchor()) };
    });
}

/// The child handler of [`tell_the_engine_of_forks`]: one atomic add,
/// async-signal-safe as a child handler must be.
unsafe extern "C" fn forked_child() {
    kiln_engine::note_forked_child();
}

/// `pthread_atfork` for JIT'd code.
unsafe extern "C" fn atfork(
    prepare: Option<ForkHandler>,
    parent: Option<ForkHandler>,
    child: Option<ForkHandler>,
) -> c_int {
    let life = [prepare, parent, child]
        .into_iter()
        .flatten()
        .find_map(|f| dso::life_of(f as usize));
    let Some(life) = life else {
        // SAFETY: host code (or no handlers): registered with glibc for the
        // process's life, as `libc_nonshared.a`'s wrapper would for the
        // executable.
        return unsafe { __register_atfork(prepare, parent, child, std::ptr::null_mut()) };
    };
    let rc = hook_once();
    if rc != 0 {
        return rc;
    }
    let mut handlers = HANDLERS.lock().unwrap_or_else(PoisonError::into_inner);
    handlers.retain(|r| r.life.is_alive());
    handlers.push(Registered {
        prepare,
        parent,
        child,
        life,
    });
    0
}

unsafe extern "C" fn prepare_images() {
    let taken = {
        let mut handlers = HANDLERS.lock().unwrap_or_else(PoisonError::into_inner);
        handlers.retain(|r| r.life.is_alive());
        handlers.clone()
    };
    for r in taken.iter().rev() {
        if let Some(f) = r.prepare {
            // SAFETY: the image that registered `f` is alive while
            // `while_alive` runs it; `fork()` is calling prepare handlers.
            r.life.while_alive(|| unsafe { f() });
        }
    }
    FORKING.with(|forking| *forking.borrow_mut() = taken);
}

unsafe extern "C" fn parent_images() {
    after_fork(false);
}

unsafe extern "C" fn child_images() {
    after_fork(true);
}

/// Runs the parent or child handlers of the registrations the prepare step
/// took, oldest first.
fn after_fork(in_child: bool) {
    let taken = FORKING.with(|forking| std::mem::take(&mut *forking.borrow_mut()));
    for r in &taken {
        let handler = if in_child { r.child } else { r.parent };
        let Some(f) = handler else { continue };
        // SAFETY: the image that registered `f` is alive while the call
        // below runs it; `fork()` returned in this process (parent or
        // child). In the child, an image whose teardown had begun at the
        // fork counts as gone: its lock is never released there.
        let call = || unsafe { f() };
        if in_child {
            r.life.while_alive_in_child(call);
        } else {
            r.life.while_alive(call);
        }
    }
}

/// The overrides this module provides.
pub(crate) fn overrides() -> [(&'static str, usize); 1] {
    // glibc exports `pthread_atfork` only as a compat symbol (`dlsym`
    // cannot find it): without this, JIT'd code calling it is undefined.
    [("pthread_atfork", atfork as *const () as usize)]
}
