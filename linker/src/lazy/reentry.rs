//! The process-wide reentry handler and the registry it routes by.
//!
//! `kiln_arch` calls one [`ReentryHandler`](kiln_arch::ReentryHandler) per
//! process with the address of the trampoline that was entered. Many
//! sessions, each with its own [`LazyReexports`] manager, share that one
//! handler, so it maps the address to the manager that owns it: each
//! trampoline block registers its address range here when it is emitted and
//! unregisters before its memory is released.

use std::collections::BTreeMap;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kiln_engine::LazyReexports;

use super::LazyStubError;

/// One trampoline block: `[start, end)` belongs to `manager`.
struct Range {
    end: u64,
    manager: LazyReexports,
}

/// Trampoline ranges by start address; ranges never overlap (they are
/// disjoint pieces of the JIT slab).
fn ranges() -> &'static RwLock<BTreeMap<u64, Range>> {
    static RANGES: OnceLock<RwLock<BTreeMap<u64, Range>>> = OnceLock::new();
    RANGES.get_or_init(|| RwLock::new(BTreeMap::new()))
}

fn read() -> RwLockReadGuard<'static, BTreeMap<u64, Range>> {
    // The map is consistent after every statement that mutates it (single
    // insert/remove), so a poisoned lock still guards a valid map.
    ranges().read().unwrap_or_else(|p| p.into_inner())
}

fn write() -> RwLockWriteGuard<'static, BTreeMap<u64, Range>> {
    ranges().write().unwrap_or_else(|p| p.into_inner())
}

/// Routes trampolines in `[start, end)` to `manager`.
pub(super) fn register(start: u64, end: u64, manager: LazyReexports) {
    let previous = write().insert(start, Range { end, manager });
    // Dropped outside the lock: the last handle of a manager may own the
    // emitter whose drop unregisters ranges.
    drop(previous);
}

/// Forgets the range starting at `start` (before its memory is released).
pub(super) fn unregister(start: u64) {
    let removed = write().remove(&start);
    drop(removed);
}

/// The manager owning the trampoline at `trampoline`, if any.
pub(super) fn owner(trampoline: u64) -> Option<LazyReexports> {
    let map = read();
    let (_, range) = map.range(..=trampoline).next_back()?;
    (trampoline < range.end).then(|| range.manager.clone())
}

/// How many trampoline ranges are registered (all sessions).
pub(super) fn registered_ranges() -> usize {
    read().len()
}

/// The handler installed with [`kiln_arch::set_reentry_handler`]: hands the
/// trampoline to its manager's `resolve_or_fail` (which links the body,
/// redirects the stub, and returns the body's address, or runs the failure
/// handler).
fn handle_reentry(trampoline: u64) -> u64 {
    // The calling thread runs the body next: its copies of static
    // thread-locals get their initial values (a thread older than the
    // link would otherwise see zeros).
    crate::runtime::tls::attach_current_thread();
    match owner(trampoline) {
        Some(manager) => manager.resolve_or_fail(trampoline),
        None => {
            // No caller can receive an error here: the JIT'd caller expects
            // its callee's result. The memory is still mapped (the thread
            // just executed it), so its tracker was removed while a call
            // through it was starting.
            eprintln!(
                "kiln: reentry trampoline {trampoline:#x} belongs to no lazy reexports \
                 manager (was its resource tracker removed while it was being called?)"
            );
            std::process::abort()
        }
    }
}

/// Installs [`handle_reentry`] as the process's reentry handler, once.
///
/// # Errors
/// [`LazyStubError::HandlerConflict`] when another reentry handler (not
/// kiln-linker's) is installed already.
pub(super) fn install() -> Result<(), LazyStubError> {
    let ours = handle_reentry as kiln_arch::ReentryHandler as usize;
    if kiln_arch::reentry_handler().map(|h| h as usize) == Some(ours) {
        return Ok(());
    }
    match kiln_arch::set_reentry_handler(handle_reentry) {
        Ok(()) => Ok(()),
        // Another thread may have installed ours between the check and the set.
        Err(_) if kiln_arch::reentry_handler().map(|h| h as usize) == Some(ours) => Ok(()),
        Err(_) => Err(LazyStubError::HandlerConflict),
    }
}
