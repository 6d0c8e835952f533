//! `std::set_terminate`, `std::set_unexpected` and `std::set_new_handler`
//! for JIT'd C++: handlers an image installs are uninstalled with it.
//!
//! libstdc++ keeps one process-wide pointer for each; after an image that
//! installed a handler is removed, the next `std::terminate` (or failed
//! `new`) would call freed memory. kiln passes each call on to libstdc++,
//! records a handler inside an image with what it replaced, and when the
//! image's life ends puts that back where the image's handler is still
//! installed — or libstdc++'s default (its verbose terminate handler,
//! `std::terminate` for unexpected, no new handler) if the replaced one's
//! image is gone too.

use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

use super::life::Life;
use super::replaced::Replacements;

/// One of libstdc++'s process-wide handler pointers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hook {
    Terminate,
    Unexpected,
    NewHandler,
}

impl Hook {
    const ALL: [Hook; 3] = [Hook::Terminate, Hook::Unexpected, Hook::NewHandler];

    /// `std::set_*`'s mangled name.
    fn setter(self) -> &'static str {
        match self {
            Hook::Terminate => "_ZSt13set_terminatePFvvE",
            Hook::Unexpected => "_ZSt14set_unexpectedPFvvE",
            Hook::NewHandler => "_ZSt15set_new_handlerPFvvE",
        }
    }

    /// `std::get_*`'s mangled name.
    fn getter(self) -> &'static str {
        match self {
            Hook::Terminate => "_ZSt13get_terminatev",
            Hook::Unexpected => "_ZSt14get_unexpectedv",
            Hook::NewHandler => "_ZSt15get_new_handlerv",
        }
    }

    /// libstdc++'s own handler (0: none).
    fn default_handler(self) -> usize {
        match self {
            Hook::Terminate => libstdcxx("_ZN9__gnu_cxx27__verbose_terminate_handlerEv"),
            Hook::Unexpected => libstdcxx("_ZSt9terminatev"),
            Hook::NewHandler => 0,
        }
    }

    /// `std::set_*(handler)`: the handler it replaced (0 if libstdc++ is
    /// not in the process, which then has no handler to replace).
    fn set(self, handler: usize) -> usize {
        let setter = libstdcxx(self.setter());
        if setter == 0 {
            return 0;
        }
        // SAFETY: `setter` is libstdc++'s `std::set_*`, which takes and
        // returns a `void (*)()` (an address, 0 for none).
        let set =
            unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(usize) -> usize>(setter) };
        // SAFETY: passes the handler the caller installs, as it would.
        unsafe { set(handler) }
    }

    /// `std::get_*()` (0 without libstdc++).
    fn get(self) -> usize {
        let getter = libstdcxx(self.getter());
        if getter == 0 {
            return 0;
        }
        // SAFETY: `getter` is libstdc++'s `std::get_*`, which returns a
        // `void (*)()` (an address, 0 for none).
        let get = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn() -> usize>(getter) };
        // SAFETY: only reads libstdc++'s pointer.
        unsafe { get() }
    }
}

/// The address of `name` in libstdc++, opened (or found loaded) as the
/// host's symbols open it and kept for the process's life; 0 if the
/// process has no libstdc++.
pub(super) fn libstdcxx(name: &str) -> usize {
    static LIBSTDCXX: OnceLock<Option<Library>> = OnceLock::new();
    let lib = LIBSTDCXX.get_or_init(|| {
        // SAFETY: the system's C++ runtime, which JIT'd C++ binds to: its
        // initializers are sound in any process.
        let lib = unsafe { Library::open(Some("libstdc++.so.6"), RTLD_NOW | RTLD_GLOBAL) };
        super::unwinder::attach_if_loaded();
        lib.ok()
    });
    (lib.as_ref())
        .and_then(|lib| crate::host::library_symbol(lib, name))
        .map_or(0, |addr| addr as usize)
}

/// The handlers images installed, by hook.
static INSTALLED: Replacements<Hook, usize> = Replacements::new();

fn install(hook: Hook, handler: usize) -> usize {
    let previous = hook.set(handler);
    INSTALLED.record(hook, handler, previous, previous);
    previous
}

unsafe extern "C" fn set_terminate(handler: usize) -> usize {
    install(Hook::Terminate, handler)
}

unsafe extern "C" fn set_unexpected(handler: usize) -> usize {
    install(Hook::Unexpected, handler)
}

unsafe extern "C" fn set_new_handler(handler: usize) -> usize {
    install(Hook::NewHandler, handler)
}

/// Puts back, for each hook whose handler `life`'s image installed and
/// that still has it, what it replaced (libstdc++'s default if that one's
/// image is gone too). Called as the image's life ends.
pub(crate) fn uninstall(life: &Life) {
    for back in INSTALLED.take_of(life) {
        if back.key.get() == back.handler {
            back.key
                .set(back.previous.unwrap_or_else(|| back.key.default_handler()));
        }
    }
}

/// The overrides this module provides.
pub(crate) fn overrides() -> Vec<(&'static str, usize)> {
    let fns: [unsafe extern "C" fn(usize) -> usize; 3] =
        [set_terminate, set_unexpected, set_new_handler];
    Hook::ALL
        .iter()
        .zip(fns)
        .map(|(hook, f)| (hook.setter(), f as *const () as usize))
        .collect()
}
