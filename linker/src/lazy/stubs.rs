//! JIT memory for reentry trampolines and redirectable stubs, owned by
//! resource trackers.
//!
//! Two kinds of blocks, each one [`Allocation`] from the near slab (so every
//! stub and trampoline is within ±2 GiB of every other piece of JIT code, and
//! of its own pointer slots):
//!
//! ```text
//! trampoline block                         stub block
//! ┌──────────────────────────────┐ RX      ┌──────────────────────────┐ RX
//! │ reentry entry block (24 B)   │         │ stub 0: jmp *slot0(%rip) │
//! │ trampoline 0: call *entry    │         │ stub 1: jmp *slot1(%rip) │
//! │ trampoline 1: call *entry    │         │ …  (int3 padding)        │
//! │ …  (int3 padding)            │         ├──────────────────────────┤ RW
//! ├──────────────────────────────┤ R       │ slot 0, slot 1, …        │
//! │ entry slot → entry block     │         └──────────────────────────┘
//! └──────────────────────────────┘
//! ```
//!
//! Both are written while RW and finalized before anyone can call them; no
//! page is ever writable and executable at once. The entry slot never
//! changes, so it is read-only; stub slots stay RW for redirects, which are
//! single aligned 8-byte stores ([`kiln_arch::redirect_raw`]).
//!
//! Blocks are filed under the [`ResourceKey`] of the tracker they were
//! emitted for ([`ResourceTracker::with_resource_key`], so registration and
//! removal never interleave) and released when that tracker is removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, RwLock};

use kiln_arch::{Arch, X86_64};
use kiln_engine::{
    LazyReexports, Redirector, ResourceKey, ResourceManager, ResourceTracker, SymbolName,
    TrampolineEmitter,
};

use super::{LazyStubError, MemoryStats, reentry};
use crate::graph::Prot;
use crate::memory::{Allocation, PAGE, Placement};

/// The ISA whose templates are written. Only x86-64 hosts can run them
/// (the x86-64 reentry entry is in-process `global_asm!`); elsewhere
/// [`Arch::write_reentry_entry`] reports `HostUnsupported` and
/// [`JitLazyReexports::new`](super::JitLazyReexports::new) fails.
pub(super) type Host = X86_64;

/// Bytes between consecutive stubs.
const STUB_STRIDE: u64 = stride(Host::REDIRECTABLE_STUB.size, Host::REDIRECTABLE_STUB.align);
/// Bytes between consecutive trampolines.
const TRAMPOLINE_STRIDE: u64 = stride(
    Host::REENTRY_TRAMPOLINE.size,
    Host::REENTRY_TRAMPOLINE.align,
);
/// Size of a pointer slot.
const SLOT: u64 = 8;
/// What unwritten code bytes are filled with (x86-64 `int3`): falling into
/// padding traps.
const CODE_FILL: u8 = 0xcc;

const fn stride(size: usize, align: usize) -> u64 {
    (size as u64).next_multiple_of(align as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent (single inserts and
    // removals), so a poisoned lock still guards valid data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a trampoline block's pieces are, relative to its base.
#[derive(Debug, Clone, Copy)]
struct TrampolineLayout {
    /// Offset of the first trampoline (after the entry block).
    first: u64,
    /// End of the code (RX) part.
    code_len: u64,
    /// Offset of the entry slot (its own read-only page).
    slot: u64,
    /// Total bytes.
    total: u64,
}

impl TrampolineLayout {
    fn new(count: usize) -> TrampolineLayout {
        let entry = Host::REENTRY_ENTRY;
        let tramp = Host::REENTRY_TRAMPOLINE;
        let first = (entry.size as u64).next_multiple_of(tramp.align as u64);
        let code_len = first + count as u64 * TRAMPOLINE_STRIDE;
        let slot = code_len.next_multiple_of(PAGE);
        TrampolineLayout {
            first,
            code_len,
            slot,
            total: slot + PAGE,
        }
    }
}

/// Where a stub block's pieces are, relative to its base.
#[derive(Debug, Clone, Copy)]
struct StubLayout {
    /// End of the code (RX) part.
    code_len: u64,
    /// Offset of slot 0 (slots are RW pages after the code).
    slots: u64,
    /// Total bytes.
    total: u64,
}

impl StubLayout {
    fn new(count: usize) -> StubLayout {
        let code_len = count as u64 * STUB_STRIDE;
        let slots = code_len.next_multiple_of(PAGE);
        StubLayout {
            code_len,
            slots,
            total: slots + count as u64 * SLOT,
        }
    }
}

/// A live stub block, for redirects: stubs in `[start, end)`, stub `i`'s
/// slot at `slots + 8 i`.
#[derive(Debug, Clone, Copy)]
struct StubRange {
    end: u64,
    slots: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// Registered in the process-wide reentry registry under this start.
    Trampolines { start: u64 },
    /// Registered in [`StubMemory::stubs`] under this start.
    Stubs { start: u64 },
}

#[derive(Debug)]
struct Block {
    kind: BlockKind,
    alloc: Allocation,
}

/// The JIT memory of one lazy reexports manager: its blocks per tracker,
/// its stub ranges, and (until the session ends) the manager itself, which
/// new trampoline ranges are routed to.
#[derive(Debug, Default)]
pub(super) struct StubMemory {
    blocks: Mutex<HashMap<ResourceKey, Vec<Block>>>,
    stubs: RwLock<BTreeMap<u64, StubRange>>,
    /// Set right after the manager is created; cleared when the session
    /// drops its resource managers ([`Keeper`]'s drop), which breaks the
    /// cycle manager → emitter → this → manager.
    manager: Mutex<Option<LazyReexports>>,
    /// Stubs created from now on go below 2 GiB, within reach of non-PIE
    /// code's 32-bit absolute addresses.
    stubs_low: std::sync::atomic::AtomicBool,
}

impl StubMemory {
    pub(super) fn set_manager(&self, manager: LazyReexports) {
        let previous = lock(&self.manager).replace(manager);
        drop(previous);
    }

    pub(super) fn place_stubs_low(&self) {
        self.stubs_low
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> MemoryStats {
        let blocks = lock(&self.blocks);
        let mut stats = MemoryStats::default();
        for block in blocks.values().flatten() {
            match block.kind {
                BlockKind::Trampolines { .. } => stats.trampoline_blocks += 1,
                BlockKind::Stubs { .. } => stats.stub_blocks += 1,
            }
            stats.bytes += block.alloc.len();
        }
        stats
    }

    /// The ranges of live blocks `(start, len)`, for tests and diagnostics.
    pub(super) fn block_ranges(&self) -> Vec<(u64, u64)> {
        let blocks = lock(&self.blocks);
        let mut ranges: Vec<(u64, u64)> = blocks
            .values()
            .flatten()
            .map(|b| (b.alloc.base(), b.alloc.len()))
            .collect();
        ranges.sort_unstable();
        ranges
    }

    /// `count` trampolines; `names` (empty, or one per trampoline) name
    /// them for perf.
    fn emit_trampolines(
        &self,
        tracker: &ResourceTracker,
        count: usize,
        names: &[SymbolName],
    ) -> Result<Vec<u64>, LazyStubError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let manager = lock(&self.manager)
            .clone()
            .ok_or(LazyStubError::SessionEnded)?;
        let layout = TrampolineLayout::new(count);
        let mut alloc = allocate(layout.total, Placement::Near, "reentry trampolines")?;
        let base = alloc.base();
        let entry = base;
        let entry_slot = base + layout.slot;
        {
            let buf = writable(&mut alloc, "reentry trampolines")?;
            let (code, data) = buf.split_at_mut(layout.slot as usize);
            code.fill(CODE_FILL);
            Host::write_reentry_entry(code, entry, kiln_arch::resolver_address())
                .map_err(LazyStubError::template("reentry entry block", entry))?;
            for i in 0..count as u64 {
                let off = layout.first + i * TRAMPOLINE_STRIDE;
                let at = base + off;
                Host::write_reentry_trampoline(&mut code[off as usize..], at, entry_slot)
                    .map_err(LazyStubError::template("reentry trampoline", at))?;
            }
            Host::write_got_entry(data, entry_slot, entry)
                .map_err(LazyStubError::template("reentry entry slot", entry_slot))?;
        }
        finalize(
            &mut alloc,
            &[
                (0, layout.code_len, Prot::ReadExec),
                (layout.slot, SLOT, Prot::Read),
            ],
            "reentry trampolines",
        )?;
        let start = base + layout.first;
        let trampolines: Vec<u64> = (0..count as u64)
            .map(|i| start + i * TRAMPOLINE_STRIDE)
            .collect();
        // Named for perf (opt-in; see crate::debug).
        crate::debug::announce_stubs(
            "trampoline",
            Some((entry, layout.first)),
            &trampolines,
            TRAMPOLINE_STRIDE,
            names,
        );
        // Under the tracker's key lock: removal either happens before (we
        // release at once) or sees this block.
        tracker
            .with_resource_key(move |key| {
                reentry::register(start, base + layout.code_len, manager);
                lock(&self.blocks).entry(key).or_default().push(Block {
                    kind: BlockKind::Trampolines { start },
                    alloc,
                });
            })
            .map_err(LazyStubError::Tracker)?;
        Ok(trampolines)
    }

    /// One stub per entry of `initial`; `names` (empty, or one per stub)
    /// name them for perf.
    fn create_stubs(
        &self,
        tracker: &ResourceTracker,
        initial: &[u64],
        names: &[SymbolName],
    ) -> Result<Vec<u64>, LazyStubError> {
        if initial.is_empty() {
            return Ok(Vec::new());
        }
        let count = initial.len();
        let layout = StubLayout::new(count);
        // A stub's address is its function's: non-PIE code takes it with
        // 32-bit absolute addresses once the stubs are placed low.
        let placement = if self.stubs_low.load(std::sync::atomic::Ordering::Relaxed) {
            Placement::Low
        } else {
            Placement::Near
        };
        let mut alloc = allocate(layout.total, placement, "redirectable stubs")?;
        let base = alloc.base();
        {
            let buf = writable(&mut alloc, "redirectable stubs")?;
            let (code, data) = buf.split_at_mut(layout.slots as usize);
            code.fill(CODE_FILL);
            for (i, &target) in initial.iter().enumerate() {
                let i = i as u64;
                let (stub_off, slot_off) = (i * STUB_STRIDE, i * SLOT);
                let (stub, slot) = (base + stub_off, base + layout.slots + slot_off);
                Host::write_got_entry(&mut data[slot_off as usize..], slot, target)
                    .map_err(LazyStubError::template("stub pointer slot", slot))?;
                Host::write_redirectable_stub(&mut code[stub_off as usize..], stub, slot)
                    .map_err(LazyStubError::template("redirectable stub", stub))?;
            }
        }
        finalize(
            &mut alloc,
            &[
                (0, layout.code_len, Prot::ReadExec),
                (layout.slots, count as u64 * SLOT, Prot::ReadWrite),
            ],
            "redirectable stubs",
        )?;
        let stubs: Vec<u64> = (0..count as u64).map(|i| base + i * STUB_STRIDE).collect();
        // Named for perf (opt-in; see crate::debug).
        crate::debug::announce_stubs("stub", None, &stubs, STUB_STRIDE, names);
        let range = StubRange {
            end: base + layout.code_len,
            slots: base + layout.slots,
        };
        tracker
            .with_resource_key(move |key| {
                self.stubs
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(base, range);
                lock(&self.blocks).entry(key).or_default().push(Block {
                    kind: BlockKind::Stubs { start: base },
                    alloc,
                });
            })
            .map_err(LazyStubError::Tracker)?;
        Ok(stubs)
    }

    fn redirect(&self, stub: u64, target: u64) -> Result<(), LazyStubError> {
        // The read lock is held across the store: a block's range leaves
        // this map (write lock) before its memory is released.
        let stubs = self.stubs.read().unwrap_or_else(|p| p.into_inner());
        let (start, range) = stubs
            .range(..=stub)
            .next_back()
            .filter(|(_, r)| stub < r.end)
            .ok_or(LazyStubError::NotAStub { address: stub })?;
        let offset = stub - start;
        if !offset.is_multiple_of(STUB_STRIDE) {
            return Err(LazyStubError::NotAStub { address: stub });
        }
        let slot = range.slots + offset / STUB_STRIDE * SLOT;
        // SAFETY: `slot` is the 8-byte aligned pointer slot of a stub in a
        // live block (its range is in `stubs`, whose read lock we hold, and
        // blocks leave `stubs` before release); slot pages stay read-write
        // from finalization to release, and are only accessed by stubs'
        // aligned loads and by these atomic stores.
        unsafe { kiln_arch::redirect_raw(slot as *mut u64, target) };
        Ok(())
    }

    /// Unregisters and releases the blocks filed under `key`.
    fn remove(&self, key: ResourceKey) {
        let blocks = lock(&self.blocks).remove(&key).unwrap_or_default();
        for block in blocks {
            self.unregister(block.kind);
            release(block.alloc);
        }
    }

    fn unregister(&self, kind: BlockKind) {
        match kind {
            BlockKind::Trampolines { start } => reentry::unregister(start),
            BlockKind::Stubs { start } => {
                self.stubs
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&start);
            }
        }
    }

    fn transfer(&self, dst: ResourceKey, src: ResourceKey) {
        let mut blocks = lock(&self.blocks);
        if let Some(moved) = blocks.remove(&src) {
            blocks.entry(dst).or_default().extend(moved);
        }
    }
}

impl Drop for StubMemory {
    fn drop(&mut self) {
        // Normally empty: the session removes every tracker before it drops
        // its resource managers. Whatever is left is unregistered before
        // its allocation is released.
        let blocks = std::mem::take(self.blocks.get_mut().unwrap_or_else(|p| p.into_inner()));
        for block in blocks.into_values().flatten() {
            self.unregister(block.kind);
            release(block.alloc);
        }
    }
}

/// Releases a block's memory once no thread an image started runs: such a
/// thread may still call through the block's stubs.
fn release(alloc: Allocation) {
    crate::runtime::threads::release_when_no_image_thread_runs(Box::new(move || drop(alloc)));
}

fn allocate(
    len: u64,
    placement: Placement,
    what: &'static str,
) -> Result<Allocation, LazyStubError> {
    Allocation::new(len, placement)
        .map_err(|source| LazyStubError::Memory {
            what,
            source: crate::Cause::new(source),
        })?
        .ok_or(LazyStubError::NoMemory { what })
}

fn writable<'a>(
    alloc: &'a mut Allocation,
    what: &'static str,
) -> Result<&'a mut [u8], LazyStubError> {
    alloc.bytes_mut().ok_or(LazyStubError::NoMemory { what })
}

fn finalize(
    alloc: &mut Allocation,
    segments: &[(u64, u64, Prot)],
    what: &'static str,
) -> Result<(), LazyStubError> {
    alloc
        .finalize(segments)
        .map_err(|source| LazyStubError::Memory {
            what,
            source: crate::Cause::new(source),
        })
}

/// The [`TrampolineEmitter`] half: trampoline blocks in JIT memory.
#[derive(Debug)]
pub(super) struct Emitter(pub(super) std::sync::Arc<StubMemory>);

impl TrampolineEmitter for Emitter {
    fn emit_trampolines(
        &self,
        tracker: &ResourceTracker,
        count: usize,
    ) -> kiln_engine::Result<Vec<u64>> {
        Ok(self.0.emit_trampolines(tracker, count, &[])?)
    }

    fn emit_named_trampolines(
        &self,
        tracker: &ResourceTracker,
        names: &[SymbolName],
    ) -> kiln_engine::Result<Vec<u64>> {
        Ok(self.0.emit_trampolines(tracker, names.len(), names)?)
    }
}

/// The [`Redirector`] half: stub blocks in JIT memory.
#[derive(Debug)]
pub(super) struct Stubs(pub(super) std::sync::Arc<StubMemory>);

impl Redirector for Stubs {
    fn create_stubs(
        &self,
        tracker: &ResourceTracker,
        initial: &[u64],
    ) -> kiln_engine::Result<Vec<u64>> {
        Ok(self.0.create_stubs(tracker, initial, &[])?)
    }

    fn create_named_stubs(
        &self,
        tracker: &ResourceTracker,
        initial: &[u64],
        names: &[SymbolName],
    ) -> kiln_engine::Result<Vec<u64>> {
        Ok(self.0.create_stubs(tracker, initial, names)?)
    }

    fn redirect(&self, stub: u64, target: u64) -> kiln_engine::Result<()> {
        Ok(self.0.redirect(stub, target)?)
    }
}

/// The [`ResourceManager`] registered with the session: frees blocks when
/// their tracker is removed. Owned by the session alone, so its drop (when
/// the session ends and lets go of its managers) marks the end of the
/// manager's life.
#[derive(Debug)]
pub(super) struct Keeper(pub(super) std::sync::Arc<StubMemory>);

impl ResourceManager for Keeper {
    fn remove_resources(&self, key: ResourceKey) -> kiln_engine::Result<()> {
        self.0.remove(key);
        Ok(())
    }

    fn transfer_resources(&self, dst: ResourceKey, src: ResourceKey) {
        self.0.transfer(dst, src);
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        let manager = lock(&self.0.manager).take();
        drop(manager);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::{InPlaceDispatcher, Session};

    extern "C" fn forty_two() -> i64 {
        42
    }

    extern "C" fn seven() -> i64 {
        7
    }

    fn call(stub: u64) -> i64 {
        // SAFETY: every stub in these tests jumps to one of the
        // `extern "C" fn() -> i64` above.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn() -> i64>(stub as usize) };
        f()
    }

    #[test]
    fn stubs_jump_redirect_and_are_freed_with_their_key() {
        let session = Session::builder()
            .dispatcher(InPlaceDispatcher::new())
            .build();
        let lib = session.create_dylib("lib").unwrap();
        let tracker = lib.create_tracker().unwrap();
        let mem = StubMemory::default();
        let (a, b) = (
            forty_two as *const () as usize as u64,
            seven as *const () as usize as u64,
        );
        let stubs = mem.create_stubs(&tracker, &[a, b, a], &[]).unwrap();
        assert_eq!(stubs.len(), 3);
        assert_eq!(stubs[1] - stubs[0], STUB_STRIDE);
        assert_eq!(
            (call(stubs[0]), call(stubs[1]), call(stubs[2])),
            (42, 7, 42)
        );
        mem.redirect(stubs[2], b).unwrap();
        assert_eq!((call(stubs[0]), call(stubs[2])), (42, 7));
        for bad in [
            stubs[0] + 1,
            stubs[0] - STUB_STRIDE,
            stubs[2] + STUB_STRIDE,
            0,
        ] {
            assert!(
                matches!(mem.redirect(bad, a), Err(LazyStubError::NotAStub { address }) if address == bad),
                "{bad:#x}"
            );
        }
        assert_eq!(mem.stats().stub_blocks, 1);
        mem.remove(tracker.key());
        assert_eq!(mem.stats(), MemoryStats::default());
        assert!(matches!(
            mem.redirect(stubs[0], a),
            Err(LazyStubError::NotAStub { .. })
        ));
        // A removed tracker gets nothing, and nothing is kept for it.
        tracker.remove().unwrap();
        assert!(matches!(
            mem.create_stubs(&tracker, &[a], &[]),
            Err(LazyStubError::Tracker(_))
        ));
        assert_eq!(mem.stats(), MemoryStats::default());
        // Without a manager (the session ended) no trampolines are emitted.
        let tracker = lib.create_tracker().unwrap();
        assert!(matches!(
            mem.emit_trampolines(&tracker, 1, &[]),
            Err(LazyStubError::SessionEnded)
        ));
        assert!(mem.emit_trampolines(&tracker, 0, &[]).unwrap().is_empty());
        session.end();
    }

    #[test]
    fn layouts_keep_code_and_slots_on_separate_pages() {
        for n in [1usize, 2, 100, 509, 510, 511, 1000, 5000] {
            let t = TrampolineLayout::new(n);
            assert!(
                t.code_len <= t.slot && t.slot.is_multiple_of(PAGE),
                "{n}: {t:?}"
            );
            assert_eq!(t.first % Host::REENTRY_TRAMPOLINE.align as u64, 0);
            assert!(t.first >= Host::REENTRY_ENTRY.size as u64);
            let s = StubLayout::new(n);
            assert!(
                s.code_len <= s.slots && s.slots.is_multiple_of(PAGE),
                "{n}: {s:?}"
            );
            assert_eq!(s.total, s.slots + 8 * n as u64);
        }
    }
}
