//! An image's life as the code glibc runs on its behalf sees it.
//!
//! [`Life`] says whether an image is still there; a destructor, timer
//! notification or stream function of the image runs under
//! [`Life::while_alive`], and the image's teardown waits for those running.
//! A teardown asked for *from inside* such code (a key destructor that makes
//! the host drop its own image — a plugin asking to be unloaded) would wait
//! for itself, then release code still on the thread's stack: each
//! `while_alive` call leaves a frame on its thread, and
//! [`tear_down_outside`] puts such a teardown off until its thread has left
//! the image's code.

use std::cell::{Cell, RefCell};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, TryLockError};

/// Liveness of an image, shared with its pending `thread_local` destructors
/// (which may outlive the [`DsoHandle`](super::DsoHandle)).
#[derive(Debug)]
pub(crate) struct Life {
    /// `true` until the image is torn down. Code glibc runs for the image
    /// holds a read lock while it runs, so teardown waits for running code.
    alive: RwLock<bool>,
}

/// A teardown [`tear_down_outside`] may put off.
pub(crate) type Teardown = Box<dyn FnOnce()>;

/// One [`Life::while_alive`] call on a thread's stack.
struct Frame {
    life: *const Life,
    /// The call this one runs inside of (null: none).
    outer: *const Frame,
    /// Teardowns of this frame's image asked for on this thread while it
    /// runs: they run once the call has returned.
    deferred: RefCell<Vec<Teardown>>,
}

thread_local! {
    /// This thread's innermost [`Frame`] (null outside every one). A `Cell`
    /// of a pointer has no destructor: it is still there for the key
    /// destructors glibc runs after the thread's `thread_local`s are gone.
    static INNERMOST: Cell<*const Frame> = const { Cell::new(std::ptr::null()) };
}

/// Makes a frame this thread's innermost while it lives; takes it off
/// again on drop, also when the code unwinds.
struct Entered<'a>(&'a Frame);

impl<'a> Entered<'a> {
    fn push(frame: &'a Frame) -> Self {
        INNERMOST.set(frame);
        Entered(frame)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        INNERMOST.set(self.0.outer);
    }
}

impl Life {
    pub(super) fn new() -> Self {
        Life {
            alive: RwLock::new(true),
        }
    }

    /// Runs `f` if the image is alive, keeping it so until `f` returns.
    pub(crate) fn while_alive(&self, f: impl FnOnce()) {
        let alive = self.alive.read().unwrap_or_else(PoisonError::into_inner);
        self.run_entered(alive, f);
    }

    /// Runs `f` as [`Life::while_alive`] does, in a child process just
    /// forked: a write lock held at the fork (a teardown under way on a
    /// thread the child does not have) is never released there, so the
    /// image counts as gone.
    pub(crate) fn while_alive_in_child(&self, f: impl FnOnce()) {
        let alive = match self.alive.try_read() {
            Ok(alive) => alive,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        self.run_entered(alive, f);
    }

    /// Runs `f` under `alive` (if the image is alive) in a frame of this
    /// thread, then — the lock released — the teardowns asked for in it.
    fn run_entered(&self, alive: RwLockReadGuard<'_, bool>, f: impl FnOnce()) {
        if !*alive {
            return;
        }
        let frame = Frame {
            life: self,
            outer: INNERMOST.get(),
            deferred: RefCell::new(Vec::new()),
        };
        let entered = Entered::push(&frame);
        f();
        drop(entered);
        drop(alive);
        for teardown in frame.deferred.into_inner() {
            teardown();
        }
    }

    /// Whether the image is still alive.
    pub(crate) fn is_alive(&self) -> bool {
        *self.alive.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the image's life once no [`Life::while_alive`] call runs, and
    /// uninstalls the signal handlers and libstdc++ handlers it installed.
    pub(super) fn end(&self) {
        let mut alive = self.alive.write().unwrap_or_else(PoisonError::into_inner);
        let was = std::mem::replace(&mut *alive, false);
        drop(alive);
        if was {
            super::signals::uninstall(self);
            super::cxx_hooks::uninstall(self);
        }
    }
}

/// Runs `teardown` — of images whose lives are `lives` — now, or, when this
/// thread is inside code glibc runs for one of them ([`Life::while_alive`]),
/// once the outermost such call has returned: the teardown would wait for
/// that call to end, on the thread that runs it.
pub(crate) fn tear_down_outside<'a>(
    lives: impl IntoIterator<Item = &'a Life> + Clone,
    teardown: Teardown,
) {
    let mut outermost = None;
    let mut frame = INNERMOST.get();
    while !frame.is_null() {
        // SAFETY: a frame on this thread's list lives on this thread's
        // stack until its `while_alive` call takes it off (`Entered`), and
        // that call is still running below this one.
        let f = unsafe { &*frame };
        if lives.clone().into_iter().any(|l| std::ptr::eq(l, f.life)) {
            outermost = Some(f);
        }
        frame = f.outer;
    }
    match outermost {
        Some(f) => f.deferred.borrow_mut().push(teardown),
        None => teardown(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// A teardown asked for inside its own image's code runs once that code
    /// has returned, outside its lock (inside other images' code still);
    /// outside, at once.
    #[test]
    fn a_teardown_from_inside_its_image_runs_once_outside() {
        let (a, b) = (Arc::new(Life::new()), Arc::new(Life::new()));
        let step = Arc::new(AtomicUsize::new(0));
        let (a2, b2, s) = (Arc::clone(&a), Arc::clone(&b), Arc::clone(&step));
        a.while_alive(|| {
            b.while_alive(|| {
                let (a3, s3) = (Arc::clone(&a2), Arc::clone(&s));
                tear_down_outside(
                    [&*a2],
                    Box::new(move || {
                        // Ending the life would wait for itself if this ran
                        // inside `a`'s call.
                        a3.end();
                        assert_eq!(s3.fetch_add(1, SeqCst), 101, "after a's code");
                    }),
                );
                let s4 = Arc::clone(&s);
                tear_down_outside(
                    [&*b2, &Life::new()],
                    Box::new(move || {
                        s4.fetch_add(100, SeqCst);
                    }),
                );
                assert_eq!(s.load(SeqCst), 0, "b's teardown waits for b's code");
            });
            assert_eq!(s.load(SeqCst), 100, "b's teardown ran when b's code left");
            s.fetch_add(1, SeqCst);
            assert!(a2.is_alive(), "a's teardown waits for a's code");
        });
        assert_eq!(step.load(SeqCst), 102);
        assert!(!a.is_alive());
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        tear_down_outside(
            [&*b],
            Box::new(move || {
                r.fetch_add(1, SeqCst);
            }),
        );
        assert_eq!(ran.load(SeqCst), 1, "outside every image's code: at once");
    }
}
