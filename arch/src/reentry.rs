//! The ISA-independent half of lazy reexports: the process-wide reentry
//! handler, the resolver the entry points call, and the redirect store.
//!
//! A first call through a lazy reexport runs: caller → redirectable stub →
//! (slot still points at) reentry trampoline → reentry entry (saves argument
//! registers and vector state) → resolver → **handler** → back in the entry
//! (restores everything) → implementation, with the caller's stack as it was.
//! The handler is installed once per process by whoever owns the lazy
//! reexports (kiln's engine, or a test); arch knows nothing about it but its
//! signature.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ReentryError;

/// The process-wide reentry handler: given the address of the trampoline
/// that was called, returns the address execution must continue at (the
/// implementation, or a host-installed failure handler when materialization
/// failed).
///
/// Contract:
/// - it runs on the calling thread, in the middle of a call whose argument
///   registers are saved; it may block (materialize, wait for other
///   threads), and it may be entered concurrently by any number of threads
///   for the same or different trampolines;
/// - it must return an address that is callable with the original
///   arguments; it cannot fail: report failures by returning the address of
///   a function with a compatible signature that reports the error;
/// - it should [`redirect`] the stub's slot before returning, so later
///   calls skip the trampoline;
/// - a panic in it cannot unwind into JIT'd frames: the process aborts with
///   a message.
pub type ReentryHandler = fn(trampoline: u64) -> u64;

static HANDLER: OnceLock<ReentryHandler> = OnceLock::new();

/// Installs the process-wide reentry handler. Call it once, before the first
/// trampoline can run (kiln's engine does this when it creates its first
/// lazy-reexports manager).
///
/// # Errors
/// [`ReentryError::HandlerAlreadySet`] if a handler is already installed;
/// the installed one stays.
pub fn set_reentry_handler(handler: ReentryHandler) -> Result<(), ReentryError> {
    HANDLER
        .set(handler)
        .map_err(|_| ReentryError::HandlerAlreadySet)
}

/// The installed reentry handler, if any.
pub fn reentry_handler() -> Option<ReentryHandler> {
    HANDLER.get().copied()
}

/// Address of the `extern "C" fn(u64) -> u64` resolver that forwards to the
/// installed [`ReentryHandler`]. Pass it as `resolver` to
/// [`Arch::write_reentry_entry`](crate::Arch::write_reentry_entry).
pub fn resolver_address() -> u64 {
    kiln_reentry_resolve as *const () as usize as u64
}

/// Called by the reentry entry points with the trampoline's address.
pub(crate) extern "C" fn kiln_reentry_resolve(trampoline: u64) -> u64 {
    let Some(handler) = HANDLER.get().copied() else {
        fatal(
            trampoline,
            "no reentry handler is installed (kiln_arch::set_reentry_handler)",
        );
    };
    match std::panic::catch_unwind(move || handler(trampoline)) {
        Ok(addr) => addr,
        Err(_) => fatal(trampoline, "the reentry handler panicked"),
    }
}

/// There is no caller to return an error to: the JIT'd caller expects its
/// callee's result. Aborting with a message is the only sound way out.
fn fatal(trampoline: u64, why: &str) -> ! {
    eprintln!("kiln: cannot resolve the call through reentry trampoline {trampoline:#x}: {why}");
    std::process::abort()
}

/// Retargets a redirectable stub (or PLT stub) by storing `target` into its
/// pointer slot, while other threads may be calling through it.
///
/// Why a caller sees the old or the new target, never garbage: the slot is an
/// 8-byte aligned word and the stubs load it with one 8-byte aligned load
/// (`jmp *slot(%rip)` on x86-64, `ldr x16, [x16, #lo12]` on aarch64); both
/// ISAs make such accesses single-copy atomic, and this store is one atomic
/// 64-bit store.
///
/// Ordering: the store is `Release`, so every write this thread made before
/// it (the new body's code and data, and their finalization) is ordered
/// before the new pointer becomes visible. The stub's load is not a Rust
/// atomic: on x86-64 every load has acquire semantics; on aarch64 the branch
/// depends on the loaded address, and the new code must already be visible
/// to instruction fetch: whoever wrote it must clean the data cache and
/// invalidate the instruction cache for it (`__clear_cache`) before
/// publishing it. kiln-linker links x86-64 objects only and does no such
/// maintenance; aarch64 templates are exercised under qemu.
/// Several threads storing the same target (every resolver of a first call
/// redirects) is idempotent.
pub fn redirect(slot: &AtomicU64, target: u64) {
    slot.store(target, Ordering::Release);
}

/// [`redirect`] on a raw slot address.
///
/// # Safety
/// `slot` must be non-null, 8-byte aligned, writable, live for the duration
/// of the call, and only accessed atomically (or by stubs' loads) by others.
pub unsafe fn redirect_raw(slot: *mut u64, target: u64) {
    // SAFETY: the caller guarantees `slot` is a live, aligned, writable u64 that
    // is only accessed atomically, which is what `AtomicU64::from_ptr` requires.
    let slot = unsafe { AtomicU64::from_ptr(slot) };
    redirect(slot, target);
}
