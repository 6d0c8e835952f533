//! `sigaction` and `signal` for JIT'd images: an image's signal handlers
//! are uninstalled with it.
//!
//! The kernel keeps a bare handler address per signal; after an image that
//! installed one is removed, the next such signal jumps into freed memory.
//! kiln records each handler an image installs with the action it replaced,
//! and when the image's life ends puts that action back for every signal
//! whose handler is still the image's — or the default action, if the one
//! it replaced lies in an image that is gone too. A handler can run at any
//! instruction and takes no lock, so one already running when the image is
//! torn down is not waited for: stop the signals an image handles before
//! removing it, or let it uninstall them in a finalizer. Every way glibc
//! offers to install a handler goes through here: `sigaction`, `signal`
//! (and `bsd_signal`, `ssignal`), System V's `sysv_signal` and `sigset`.

use std::ffi::c_int;

use super::life::Life;
use super::replaced::Replacements;

/// A signal action, as the kernel gave it.
#[derive(Clone, Copy)]
struct Action(libc::sigaction);

// SAFETY: a `sigaction` is plain data (addresses, flags and a mask) that
// any thread may pass to the kernel.
unsafe impl Send for Action {}

/// The handlers images installed, by signal.
static INSTALLED: Replacements<c_int, Action> = Replacements::new();

unsafe extern "C" {
    #[link_name = "sigaction"]
    fn real_sigaction(
        signal: c_int,
        act: *const libc::sigaction,
        old: *mut libc::sigaction,
    ) -> c_int;
    #[link_name = "sigset"]
    fn real_sigset(signal: c_int, disposition: libc::sighandler_t) -> libc::sighandler_t;
}

/// `sigaction` for JIT'd code: glibc's, and a handler inside a live image
/// is recorded with the action it replaced.
unsafe extern "C" fn sigaction(
    signal: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // Read before `old` is written: the two may be one structure.
    // SAFETY: the caller's action, if any, as glibc reads it.
    let handler = (!act.is_null()).then(|| unsafe { (*act).sa_sigaction });
    // SAFETY: a zeroed `sigaction` is a valid value (default action).
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: the caller's arguments, passed on; `previous` is ours.
    let rc = unsafe { real_sigaction(signal, act, &mut previous) };
    if rc != 0 {
        return rc;
    }
    if !old.is_null() {
        // SAFETY: the caller's out-pointer, as glibc would write it.
        unsafe { *old = previous };
    }
    if let Some(handler) = handler {
        INSTALLED.record(signal, handler, Action(previous), previous.sa_sigaction);
    }
    0
}

/// Installs `handler` for `signal` through [`sigaction`] with `flags`,
/// the signal itself blocked while it runs if `block_itself`: the handler
/// it replaced, or `SIG_ERR`.
fn install(
    signal: c_int,
    handler: libc::sighandler_t,
    flags: c_int,
    block_itself: bool,
) -> libc::sighandler_t {
    // SAFETY: a zeroed `sigaction` (empty mask) is a valid value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    if block_itself {
        // SAFETY: `act.sa_mask` is a valid, empty signal set.
        unsafe { libc::sigaddset(&mut act.sa_mask, signal) };
    }
    // SAFETY: a zeroed `sigaction` is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid action and out-pointer.
    if unsafe { sigaction(signal, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// `signal` for JIT'd code, as glibc's (BSD semantics: restartable, the
/// signal blocked while its handler runs).
unsafe extern "C" fn signal(signal: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    install(signal, handler, libc::SA_RESTART, true)
}

/// `sysv_signal` for JIT'd code, as glibc's (System V semantics: the
/// handler is reset to the default when the signal arrives, and the signal
/// is not blocked while it runs).
unsafe extern "C" fn sysv_signal(signal: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    install(
        signal,
        handler,
        libc::SA_RESETHAND | libc::SA_NODEFER,
        false,
    )
}

/// `SIG_HOLD` (glibc's `<signal.h>`; not in the `libc` crate): `sigset`'s
/// disposition that blocks the signal instead of installing a handler.
const SIG_HOLD: libc::sighandler_t = 2;

/// `sigset` for JIT'd code, as glibc's: `SIG_HOLD` blocks the signal (no
/// handler changes: glibc's own call); any other disposition is installed
/// through [`sigaction`] and the signal unblocked. Returns `SIG_HOLD` if
/// the signal was blocked, else the disposition replaced.
unsafe extern "C" fn sigset(signal: c_int, disposition: libc::sighandler_t) -> libc::sighandler_t {
    if disposition == SIG_HOLD {
        // SAFETY: glibc's `sigset` with the caller's arguments; it installs
        // no handler.
        return unsafe { real_sigset(signal, disposition) };
    }
    let replaced = install(signal, disposition, 0, false);
    if replaced == libc::SIG_ERR {
        return libc::SIG_ERR;
    }
    // SAFETY: zeroed signal sets are valid; `set` is initialized next.
    let (mut set, mut was): (libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
    // SAFETY: `set` and `was` are this function's; `signal` was accepted
    // by `sigaction` above, so it is a valid member.
    let blocked = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, &mut was) == 0
            && libc::sigismember(&was, signal) == 1
    };
    if blocked { SIG_HOLD } else { replaced }
}

/// Puts back, for each signal whose handler `life`'s image installed and
/// that still has it, the action it replaced (the default action if that
/// one's image is gone too). Called as the image's life ends.
pub(crate) fn uninstall(life: &Life) {
    for back in INSTALLED.take_of(life) {
        // SAFETY: a zeroed `sigaction` is a valid value.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the signal's action into `current`.
        if unsafe { real_sigaction(back.key, std::ptr::null(), &mut current) } != 0
            || current.sa_sigaction != back.handler
        {
            continue;
        }
        let action = back.previous.map_or_else(
            // SAFETY: a zeroed `sigaction` is the default action.
            || unsafe { std::mem::zeroed() },
            |Action(a)| a,
        );
        // SAFETY: restores an action the kernel gave us (or the default).
        unsafe { real_sigaction(back.key, &action, std::ptr::null_mut()) };
    }
}

/// The overrides this module provides.
pub(crate) fn overrides() -> [(&'static str, usize); 8] {
    [
        ("sigaction", sigaction as *const () as usize),
        ("__sigaction", sigaction as *const () as usize),
        ("signal", signal as *const () as usize),
        ("bsd_signal", signal as *const () as usize),
        ("ssignal", signal as *const () as usize),
        ("sysv_signal", sysv_signal as *const () as usize),
        ("__sysv_signal", sysv_signal as *const () as usize),
        ("sigset", sigset as *const () as usize),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::DsoHandle;

    /// SIGURG: ignored by default, touched by no other test.
    const SIG: c_int = libc::SIGURG;

    extern "C" fn host(_: c_int) {}
    extern "C" fn in_a(_: c_int) {}
    extern "C" fn in_b(_: c_int) {}

    fn install(handler: extern "C" fn(c_int)) -> usize {
        // SAFETY: `signal` with a valid handler for a signal only this test uses.
        unsafe { signal(SIG, handler as *const () as usize) }
    }

    fn current() -> usize {
        // SAFETY: a zeroed `sigaction` is valid; reads the action only.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads SIG's action into `now`.
        let rc = unsafe { real_sigaction(SIG, std::ptr::null(), &mut now) };
        assert_eq!(rc, 0);
        now.sa_sigaction
    }

    /// Two images stacking handlers on one signal over the host's: each
    /// removal puts back what its image replaced, whichever goes first.
    #[test]
    fn removals_put_back_what_each_image_replaced() {
        for a_first in [false, true] {
            install(host);
            let a = DsoHandle::new("a");
            a.add_range(in_a as *const () as usize, 1);
            let b = DsoHandle::new("b");
            b.add_range(in_b as *const () as usize, 1);
            assert_eq!(install(in_a), host as *const () as usize);
            assert_eq!(
                install(in_a),
                in_a as *const () as usize,
                "a replaces its own"
            );
            assert_eq!(install(in_b), in_a as *const () as usize);
            if a_first {
                drop(a);
                assert_eq!(current(), in_b as *const () as usize, "b's handler stays");
                drop(b);
                // What b replaced (a's) is gone: the default action.
                assert_eq!(current(), libc::SIG_DFL);
            } else {
                drop(b);
                assert_eq!(current(), in_a as *const () as usize, "a's handler is back");
                drop(a);
                assert_eq!(
                    current(),
                    host as *const () as usize,
                    "the host's handler is back"
                );
            }
        }
        // One structure for the new action and the old (POSIX allows it):
        // the handler installed is still the one recorded.
        install(host);
        let a = DsoHandle::new("a");
        a.add_range(in_a as *const () as usize, 1);
        // SAFETY: a zeroed `sigaction` is valid; its handler is set next.
        let mut both: libc::sigaction = unsafe { std::mem::zeroed() };
        both.sa_sigaction = in_a as *const () as usize;
        let at: *mut libc::sigaction = &mut both;
        // SAFETY: a valid action, read before the old one is written over it.
        assert_eq!(unsafe { sigaction(SIG, at, at) }, 0);
        assert_eq!(both.sa_sigaction, host as *const () as usize);
        drop(a);
        assert_eq!(
            current(),
            host as *const () as usize,
            "the host's handler is back"
        );
        // SAFETY: the default action for a signal only this test uses.
        unsafe { libc::signal(SIG, libc::SIG_DFL) };
    }
}
