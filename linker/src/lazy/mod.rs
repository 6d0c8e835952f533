//! Lazy linking in this process: the machine-code half of the engine's
//! [`LazyReexports`].
//!
//! The engine's manager is generic over a [`TrampolineEmitter`] and a
//! [`Redirector`](kiln_engine::Redirector); this module implements both with
//! `kiln_arch` templates written into JIT memory ([`crate::memory`]), and
//! installs the process-wide reentry handler that routes a trampoline back to
//! the manager that owns it. [`lazy_reexports_manager`] (or
//! [`JitLazyReexports::new`], which also reports memory use) is all a host
//! needs:
//!
//! ```
//! use kiln_engine::*;
//!
//! extern "C" fn add_one_body(x: i64) -> i64 {
//!     x + 1
//! }
//!
//! let session = Session::new();
//! let lib = session.create_dylib("lib")?;
//! let add_one_addr = add_one_body as *const () as usize as u64;
//! let (body, entry) = (session.intern("add_one_impl"), session.intern("add_one"));
//! let fc = SymbolFlags::EXPORTED | SymbolFlags::CALLABLE;
//! lib.define(absolute_symbols([(body.clone(), SymbolDef::new(add_one_addr, fc))]))?;
//!
//! let lazy = kiln_linker::lazy::lazy_reexports_manager(&session)?;
//! lib.define(lazy.reexports(&lib, [Alias { name: entry.clone(), target: body, flags: fc }])?)?;
//! let found = lib.lookup_ready(&["add_one"])?;
//! let stub = found.get(&entry).map(|d| d.address).unwrap_or_default();
//! // SAFETY (of the example): the body is an `extern "C" fn(i64) -> i64`.
//! let add_one: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(stub as usize) };
//! assert_eq!(add_one(41), 42); // first call: links the body, then runs it
//! session.end();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The first-call path (x86-64)
//!
//! Materializing the lazy reexports unit (when its entries are first looked
//! up) emits, per entry, a reentry trampoline and a redirectable stub whose
//! pointer slot initially holds the trampoline; the entry symbol's address
//! is the stub's. Then:
//!
//! 1. **caller → stub.** `jmp *slot(%rip)`; the slot still points at the
//!    entry's trampoline.
//! 2. **stub → trampoline.** `call *entry_slot(%rip)`: pushes
//!    `trampoline + 6`, the trampoline's identity, above the caller's return
//!    address; every argument register is untouched.
//! 3. **trampoline → entry block → asm entry.** The block in the same
//!    allocation loads `kiln_arch::resolver_address()` into `r11` and jumps
//!    to `kiln_arch`'s `global_asm!` entry, which saves rax, rdi, rsi, rdx,
//!    rcx, r8–r11 and the whole XSAVE state (x87, SSE, AVX and AVX-512
//!    halves, mask registers), and calls the resolver with the trampoline
//!    address.
//! 4. **resolver → reentry handler.** The handler this module installs
//!    once per process (`kiln_arch::set_reentry_handler`) finds the manager
//!    owning the address in a registry of trampoline ranges (one range per
//!    trampoline block, any number of managers and sessions) and calls
//!    [`LazyReexports::resolve_or_fail`].
//! 5. **the engine links the body, once.** `resolve` looks the body up at
//!    Ready: the first caller's lookup starts its unit's materialization
//!    (on the dispatcher; in place with an in-place dispatcher), concurrent
//!    first callers attach to the same lookup state and wait; nobody
//!    returns before the body and everything it depends on is Ready. Each
//!    caller then redirects the stub's slot to the body (one aligned 8-byte
//!    release store; idempotent) and gets the body's address. A failed link
//!    goes to the manager's failure handler
//!    ([`LazyReexports::set_failure_handler`]) with its root cause; the
//!    default prints it and exits with status 70.
//! 6. **back into the body.** The asm entry stores the address over the
//!    trampoline's return address, restores the XSAVE state and registers,
//!    and `ret`s into the body, whose stack is exactly that of a direct
//!    call from the caller.
//!
//! Later calls: caller → stub → `jmp *slot` → body, one indirect jump.
//!
//! # Memory and lifetime
//!
//! Trampolines and stubs live in JIT memory of the near slab, owned by the
//! resource tracker of the unit that created them: removing the tracker
//! unregisters their ranges and releases the pages (see `stubs`). No page
//! is ever writable and executable at once. A trampoline block keeps its
//! manager alive, and the emitter refers to its manager until the session
//! ends ([`Session::end`]), which removes every tracker and lets go of both.
//! Calling an entry after its tracker was removed is a use-after-free like
//! calling any removed code.

pub(crate) mod identity;
mod reentry;
mod stubs;

use std::fmt;
use std::sync::Arc;

use kiln_arch::{Arch, FixupError};
use kiln_engine::{LazyReexports, Session, TrampolineEmitter};

use crate::LinkError;
use stubs::{Emitter, Host, Keeper, StubMemory, Stubs};

/// Why lazy-linking machinery could not be created or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LazyStubError {
    /// Environment: JIT memory could not be obtained or protected.
    #[error("lazy reexports: cannot allocate memory for {what}: {source}")]
    Memory {
        /// What was being allocated.
        what: &'static str,
        /// The memory error.
        #[source]
        source: crate::Cause<LinkError>,
    },
    /// Environment: the slab handed out no writable memory.
    #[error("lazy reexports: no writable JIT memory for {what}")]
    NoMemory {
        /// What was being allocated.
        what: &'static str,
    },
    /// Implementation limit or host limit: a template could not be written
    /// (out of reach, or the host lacks what the ISA's entry needs, e.g.
    /// XSAVE or an x86-64 CPU).
    #[error("lazy reexports: cannot write the {what} at {at:#x}: {source}")]
    Template {
        /// Which template.
        what: &'static str,
        /// Where it was going.
        at: u64,
        /// The arch error.
        #[source]
        source: crate::Cause<FixupError>,
    },
    /// User error: another reentry handler (not kiln-linker's) is installed
    /// in this process; kiln_arch allows only one.
    #[error(
        "lazy reexports: another reentry handler is already installed in this process \
         (kiln_arch::set_reentry_handler); kiln-linker's lazy reexports need their own"
    )]
    HandlerConflict,
    /// User error: the tracker that was to own the code was removed.
    #[error("lazy reexports: {0}")]
    Tracker(#[source] kiln_engine::Error),
    /// User error: `redirect` was given an address that is no stub of this
    /// manager (or whose tracker was removed).
    #[error("lazy reexports: {address:#x} is not a live redirectable stub of this manager")]
    NotAStub {
        /// The address given.
        address: u64,
    },
    /// User error: the session of this manager has ended.
    #[error("lazy reexports: the session has ended")]
    SessionEnded,
}

impl LazyStubError {
    /// Maps the arch error of writing template `what` at `at` into
    /// [`LazyStubError::Template`].
    pub(crate) fn template(what: &'static str, at: u64) -> impl FnOnce(FixupError) -> Self {
        move |source| Self::Template {
            what,
            at,
            source: crate::Cause::new(source),
        }
    }
}

impl From<LazyStubError> for kiln_engine::Error {
    fn from(e: LazyStubError) -> kiln_engine::Error {
        match e {
            // Keep the engine's own error (and its root cause) intact.
            LazyStubError::Tracker(inner) => inner,
            LazyStubError::SessionEnded => kiln_engine::Error::SessionEnded,
            // Typed: the caller can downcast the root cause.
            other => kiln_engine::Error::external(other),
        }
    }
}

/// JIT memory held by one manager's trampolines and stubs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Live trampoline blocks (one per materialized lazy reexports unit).
    pub trampoline_blocks: usize,
    /// Live stub blocks (one per materialized lazy reexports unit).
    pub stub_blocks: usize,
    /// Bytes of JIT memory they hold (whole pages).
    pub bytes: u64,
}

/// A [`LazyReexports`] manager whose trampolines and stubs are emitted into
/// this process's JIT memory, with access to that memory's statistics.
/// Cheap to clone.
#[derive(Clone)]
pub struct JitLazyReexports {
    manager: LazyReexports,
    memory: Arc<StubMemory>,
}

impl fmt::Debug for JitLazyReexports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitLazyReexports")
            .field("manager", &self.manager)
            .field("memory", &self.memory.stats())
            .finish()
    }
}

impl JitLazyReexports {
    /// A manager for `session`. Installs the process-wide reentry handler on
    /// first use and registers a resource manager with `session` that frees
    /// trampolines and stubs with their tracker.
    ///
    /// # Errors
    /// [`LazyStubError::HandlerConflict`] if a foreign reentry handler is
    /// installed; [`LazyStubError::Template`] if this host cannot run the
    /// x86-64 reentry entry (not x86-64, or no XSAVE).
    pub fn new(session: &Session) -> Result<JitLazyReexports, LazyStubError> {
        // Fail now, not on the first lazy call, when the host cannot run
        // the entry (this also initializes its XSAVE layout).
        let mut probe = [0u8; Host::REENTRY_ENTRY.size];
        let probe_at = Host::REENTRY_ENTRY.align as u64;
        Host::write_reentry_entry(&mut probe, probe_at, kiln_arch::resolver_address())
            .map_err(LazyStubError::template("reentry entry block", probe_at))?;
        reentry::install()?;
        let memory = Arc::new(StubMemory::default());
        // Registered before the manager's own bookkeeping manager, so removal
        // (reverse order) forgets call-throughs before their memory goes.
        session.register_resource_manager(Arc::new(Keeper(memory.clone())));
        let manager = LazyReexports::new(session, Emitter(memory.clone()), Stubs(memory.clone()));
        memory.set_manager(manager.clone());
        Ok(JitLazyReexports { manager, memory })
    }

    /// The engine-side manager: define entries with
    /// [`LazyReexports::reexports`], hot-swap with [`LazyReexports::redirect`].
    pub fn manager(&self) -> &LazyReexports {
        &self.manager
    }

    /// Places the stubs created from now on — the addresses of lazily
    /// linked functions — below 2 GiB, where non-PIE code's 32-bit absolute
    /// references reach them (the object layer places every image there
    /// once non-PIE code was added: [`crate::layer::ObjectLayer::places_below_2gib`]).
    /// Otherwise such code reaches a function through a stub of its own
    /// image, a second address. Call it before entries are first looked up;
    /// code placed near the host's libraries may not reach these stubs with
    /// 32-bit PC-relative references.
    pub fn place_stubs_below_2gib(&self) {
        self.memory.place_stubs_low();
    }

    /// The JIT memory its live trampolines and stubs hold.
    pub fn memory_stats(&self) -> MemoryStats {
        self.memory.stats()
    }

    /// `(start, len)` of each live block of JIT memory, sorted (for tests
    /// and diagnostics: e.g. to check `/proc/self/maps`).
    pub fn memory_ranges(&self) -> Vec<(u64, u64)> {
        self.memory.block_ranges()
    }
}

/// A lazy reexports manager for `session` emitting into this process's JIT
/// memory: [`JitLazyReexports::new`] without the statistics.
///
/// # Errors
/// As [`JitLazyReexports::new`].
pub fn lazy_reexports_manager(session: &Session) -> Result<LazyReexports, LazyStubError> {
    Ok(JitLazyReexports::new(session)?.manager)
}

/// Trampoline ranges registered with the process-wide reentry handler, over
/// every manager and session (for tests and diagnostics).
pub fn registered_trampoline_ranges() -> usize {
    reentry::registered_ranges()
}

// The emitter and redirector are what the engine requires of them.
const _: () = {
    const fn assert_emitter<T: TrampolineEmitter>() {}
    const fn assert_redirector<T: kiln_engine::Redirector>() {}
    assert_emitter::<Emitter>();
    assert_redirector::<Stubs>();
};
