//! Run-time support for JIT-linked code: what linked programs call, and the
//! registration of their metadata with the host's C/C++ runtime.
//!
//! A relocatable object compiled by gcc or clang for a normal program expects
//! the static linker, `ld.so`, `crtbegin`/`crtend` and `libc_nonshared.a` to
//! have done some work for it. kiln links such objects into this process
//! itself, so this module provides that work. Each piece is independent; the
//! linker uses them like this, per linked image (one link of one or more
//! objects into memory):
//!
//! | Piece | What the linker does with it |
//! |---|---|
//! | [`host_overrides`] | Consult it **before** `dlsym` when resolving an external symbol: `atexit`, `__cxa_atexit`, `__cxa_finalize`, `__cxa_thread_atexit`, `__cxa_thread_atexit_impl`, `__tls_get_addr`, `pthread_key_create`, `pthread_key_delete` (and C11's `tss_create`, `tss_delete`), `pthread_atfork`, `at_quick_exit`, `sigaction`, `signal` (and the other ways to install a handler), `timer_create`, `timer_delete`, `mq_notify`, `mq_close`, `pthread_create`, `thrd_create`, `std::thread::_M_start_thread`, `fopencookie`, `std::set_terminate` and `std::set_new_handler` bind to kiln's versions. |
//! | [`DsoHandle`] | Create one per image, preferably with [`DsoHandle::new_at`] at an 8-byte slot the linker allocates inside the image (compilers reach `__dso_handle` PC-relatively); bind the image's `__dso_handle` to [`DsoHandle::addr`]; report the image's memory ranges with [`DsoHandle::add_range`] so `atexit` calls, and `__cxa_*atexit` calls naming any address inside the image, are attributed to it. |
//! | [`InitFini`] | Feed it the image's `.preinit_array`/`.init_array*`/`.ctors*`/`.fini_array*`/`.dtors*` contents (after fixup) with [`InitFini::add_section`]; call [`InitFini::run_init`] once the image is ready, and [`InitFini::run_fini`] **before** releasing the image's memory. Sort or classify sections with [`init_priority`]. |
//! | [`eh_frame::register`] | After fixup and finalization, register the image's `.eh_frame` (followed by a 4-byte zero terminator) with libgcc's unwinder; keep the [`eh_frame::EhFrameRegistration`] until the memory is released (drop deregisters). |
//! | [`tls`] | For an image with `.tdata`/`.tbss`: create a [`tls::TlsModule`] before fixup (it fixes the module id, and for static placement the thread-pointer offset), write GOT entries from it, and call [`tls::TlsModule::initialize`] with the fixed-up `.tdata` bytes before any code of the image runs. Drop it after [`InitFini::run_fini`]. |
//!
//! Teardown order for an image: [`InitFini::run_fini`] (runs this thread's
//! `thread_local` destructors of the image, `.fini_array`/`.dtors`, and the
//! image's `atexit`/`__cxa_atexit` handlers, interleaved as glibc's `dlclose`
//! does), then drop the [`DsoHandle`] (the image's life ends: its signal
//! handlers, keys, timers and queue registrations go), then drop the
//! [`eh_frame::EhFrameRegistration`] and the [`tls::TlsModule`] and release
//! the memory — kiln's own images do this last part once no thread that an
//! image removed with them started (`pthread_create`) runs, and first flush
//! and unbuffer the streams
//! whose buffer lay in the memory. A teardown asked for on a thread that
//! runs code glibc calls for the image (a destructor, a notification) is
//! put off until that code has returned (`life.rs`).
//! Images of one program torn down together use
//! [`InitFini::run_fini_together`] instead (with executable teardown: every
//! image's handlers newest first, then all finalizers by priority, as one
//! program's `exit()`), and release nothing until it returns.
//!
//! At session end, tear every live image down the same way: kiln does not
//! hook `exit()`, so an image still alive when the process exits never runs
//! its finalizers or `atexit` handlers.
//!
//! Threads: `thread_local` destructors registered by an image run at each
//! thread's exit while the image is alive; [`InitFini::run_fini`] runs the
//! tearing-down thread's own, and from then on other threads skip theirs
//! (their memory is about to go). Static TLS for initial-exec/local-exec
//! code has precise per-thread guarantees, documented in [`tls`]; hosts
//! whose pre-existing threads run such code call
//! [`tls::attach_current_thread`] on them.
//!
//! Everything here is x86-64 Linux (glibc) specific; on other targets the
//! module is not compiled.

#![cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]

pub(crate) mod atfork;
mod cxx_hooks;
mod dso;
pub mod eh_frame;
mod init;
mod keys;
pub(crate) mod life;
mod quick_exit;
mod replaced;
mod sigev_thread;
mod signals;
pub(crate) mod stdio;
mod thread;
pub(crate) mod threads;
pub mod tls;
pub(crate) mod unwinder;

pub use dso::DsoHandle;
pub use init::{
    DEFAULT_PRIORITY, FiniCalls, InitCalls, InitFini, InitKind, init_priority, set_exit_status,
    set_program_arguments, set_program_arguments_with_environ,
};

// The handles cross threads (a link on one thread, teardown on another).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<DsoHandle>();
    send_sync::<InitFini>();
    send_sync::<eh_frame::EhFrameRegistration>();
    send_sync::<tls::TlsModule>();
    send_sync::<RuntimeError>();
};

/// An error from kiln's run-time support.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The `.eh_frame` section handed to [`eh_frame::register`] is malformed
    /// (user error: a corrupt object, or a linker bug that left a hole in it).
    #[error("malformed .eh_frame at offset {offset:#x} of {len:#x} bytes: {reason}")]
    BadEhFrame {
        /// Offset of the offending record from the start of the section.
        offset: usize,
        /// Length of the section handed in.
        len: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// [`DsoHandle::new_at`] was given an unusable address (linker bug).
    #[error("cannot use {addr:#x} as the __dso_handle of `{name}`: {reason}")]
    DsoAddress {
        /// The image's name.
        name: String,
        /// The address.
        addr: usize,
        /// Why not.
        reason: &'static str,
    },
    /// A TLS request that kiln cannot satisfy; the message names the image,
    /// the variables concerned and a compiler flag that avoids the problem.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

/// Symbol names bound to kiln's replacements, and their addresses.
///
/// The linker must consult this table before looking a name up in the host
/// process (`dlsym`). Every JIT'd image shares these functions; they find
/// the image a call belongs to from the `dso` argument (`__cxa_atexit`,
/// `__cxa_thread_atexit`, `__cxa_finalize`): the image's `__dso_handle`, or
/// any other address inside the image (ranges given to
/// [`DsoHandle::add_range`]; Rust's std passes the address of its own data)
/// — or, for `atexit`, from the handler address and the return address. Calls that do not belong to a live kiln image
/// are forwarded to the real glibc/ld.so function, so binding host code to
/// them is harmless.
///
/// | Name | Replacement |
/// |---|---|
/// | `atexit` | handler runs at the image's teardown ([`InitFini::run_fini`]); glibc exports no `atexit` (it lives in `libc_nonshared.a`), so this entry is also what makes `atexit` resolvable at all |
/// | `__cxa_atexit` | per-image handler list, run at teardown in reverse registration order |
/// | `__cxa_finalize` | runs a kiln image's handlers now, or forwards |
/// | `on_exit` | a handler in an image joins its `atexit` handlers: run at its teardown with the status [`set_exit_status`] set for a program's teardown, else 0 (glibc never drops a library's `on_exit` handlers) |
/// | `__cxa_thread_atexit`, `__cxa_thread_atexit_impl` | `thread_local` destructors: run at thread exit while the image is alive; the tearing-down thread runs its own at teardown; other threads skip them once the image is gone (glibc's version would call into freed memory at exit) |
/// | `pthread_key_create`, `__pthread_key_create`, `pthread_key_delete`, `tss_create`, `tss_delete` | a key whose destructor lies in an image: the destructor runs on exiting threads while the image is alive, a teardown waits for running ones, later ones are skipped, and the image's keys are deleted when it goes (glibc would call freed memory) |
/// | `pthread_atfork` | an image's fork handlers run while the image is alive, a teardown waits for running ones, later forks skip them (glibc exports `pthread_atfork` only as a compat symbol: programs get it from `libc_nonshared.a`) |
/// | `at_quick_exit` | an image's handlers run at `quick_exit` while the image is alive, newest first (also only in `libc_nonshared.a`) |
/// | `pthread_create`, `thrd_create`, `std::thread::_M_start_thread` | glibc's and libstdc++'s; a thread whose start routine (or `std::thread` body) lies in an image is counted while it runs, and images torn down meanwhile release their memory when the last such thread ends |
/// | `fopencookie` | glibc's; a stream whose functions lie in an image calls them only while the image lives (then fails with `EBADF`) |
/// | `timer_create`, `timer_delete`, `mq_notify`, `mq_close` | glibc's; a `SIGEV_THREAD` notify function in an image runs only while the image lives, and the image's timers are deleted and its queue registrations withdrawn when its life ends |
/// | `sigaction`, `__sigaction`, `signal`, `bsd_signal`, `ssignal`, `sysv_signal`, `__sysv_signal`, `sigset` | glibc's; a handler in an image is uninstalled when the image's life ends (the action it replaced put back) |
/// | `std::set_terminate`, `std::set_unexpected`, `std::set_new_handler` | libstdc++'s; a handler in an image is uninstalled when the image's life ends (what it replaced put back) |
/// | `__tls_get_addr` | serves kiln TLS module ids ([`tls::TlsModule::module_id`]); forwards others to ld.so |
/// | `dlopen` | only where kiln's unwinder is private (the `kiln` binary): glibc's `dlopen`, then libgcc_s, if the library brought it, learns the JIT'd frames (`runtime/unwinder.rs`) |
pub fn host_overrides() -> &'static [(&'static str, usize)] {
    static TABLE: std::sync::OnceLock<Vec<(&'static str, usize)>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = dso::overrides();
        table.extend_from_slice(&tls::overrides());
        table.extend(keys::overrides());
        table.extend(atfork::overrides());
        table.extend(quick_exit::overrides());
        table.extend(signals::overrides());
        table.extend(sigev_thread::overrides());
        table.extend(threads::overrides());
        table.extend(stdio::overrides());
        table.extend(cxx_hooks::overrides());
        table.extend(unwinder::overrides());
        table
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_cover_the_required_names_once() {
        let table = host_overrides();
        for name in [
            "atexit",
            "__cxa_atexit",
            "__cxa_finalize",
            "on_exit",
            "__cxa_thread_atexit",
            "__cxa_thread_atexit_impl",
            "__tls_get_addr",
            "pthread_key_create",
            "__pthread_key_create",
            "pthread_key_delete",
            "tss_create",
            "tss_delete",
            "thrd_create",
            "fopencookie",
            "pthread_atfork",
            "at_quick_exit",
            "sigaction",
            "signal",
            "sysv_signal",
            "sigset",
            "timer_create",
            "timer_delete",
            "mq_notify",
            "mq_close",
            "pthread_create",
            "_ZSt13set_terminatePFvvE",
            "_ZSt15set_new_handlerPFvvE",
        ] {
            let hits: Vec<_> = table.iter().filter(|(n, _)| *n == name).collect();
            assert_eq!(hits.len(), 1, "{name} must appear exactly once");
            assert_ne!(hits[0].1, 0, "{name} has a null address");
        }
    }
}
