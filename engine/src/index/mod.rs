//! The Ready index: one per dylib, written only by the state actor, read by
//! any thread's lookup fast path without a lock or a read-modify-write.
//!
//! An open-addressing table keyed by the interned name's pointer (pointer
//! equality is name equality). Each slot's definition is guarded by a
//! sequence word, so a reader sees a consistent (address, flags, ready)
//! triple or learns that the writer was mid-update and takes the slow path.
//! Keys are never removed from a table, so linear probing stays valid; a full
//! table is copied into one twice the size (a definition of many names
//! reserves first: one copy into a table sized for all of them) and the old
//! one is kept — not freed — until the index drops, because a reader may
//! still be probing it. Old tables add up to less than the live one (each is
//! at most half the next), and
//! a table grows only when the distinct names defined in the dylib outgrow
//! it: a name defined again (after a removal, say) finds its old slot.
//!
//! Keys are the names' addresses, and the index does not own the names: its
//! writer must keep every name it ever used as a key alive as long as the
//! index (the engine does — the session's interner holds every name it
//! made until the session drops, even after the symbol records of removed
//! code are given back, and every holder of an index holds the session).
//! A freed and reused address could only make a lookup wrong, never
//! unsafe: slots compare pointers as integers.
//!
//! The writer keeps its own value with each entry (the engine's symbol id,
//! in the slot's spare word), so the index is also the actor's name table:
//! one probe of one table finds a name for both, and the fast path has
//! already brought that slot into the cache.
//!
//! Under loom (`modelled`) it is a locked map instead: the engine's models
//! explore the actor protocol, and loom's bounded store history cannot model
//! the sequence words; the table's own tests stress those. Under
//! `--cfg kiln_shuttle` the real table runs, its atomics shuttle's, so the
//! randomized scheduler interleaves readers with the writer's every store.
//!
//! Why not a concurrent map crate: dashmap takes a shard lock (two atomic
//! read-modify-writes) per read, which serializes the cache misses of a
//! batch; the lock-free maps use thread-locals for reclamation, which are
//! gone when a JIT'd program's `exit()` ends the session from an atexit
//! handler. A single writer makes a table without either simple.

use crate::symbol::SymbolDef;

#[cfg(kiln_loom)]
mod modelled;
#[cfg(not(kiln_loom))]
mod table;

#[cfg(kiln_loom)]
pub(crate) use modelled::ReadIndex;
#[cfg(not(kiln_loom))]
pub(crate) use table::ReadIndex;

/// A published symbol: its definition, and whether it is Ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) def: SymbolDef,
    pub(crate) ready: bool,
}

/// What the writer's one probe for a name a definition brings found
/// ([`ReadIndex::claim`]); `at` is the name's slot for
/// [`ReadIndex::set_at`] / [`ReadIndex::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Defined here already, as the writer's value `sym`.
    Defined { sym: u32, at: usize },
    /// Claimed already by the same definition: the name is repeated in it.
    Repeated,
    /// Not defined here: the slot is the definition's now.
    New { at: usize },
}

/// What a reader found for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Defined here, with this entry.
    Found(IndexEntry),
    /// Not defined in this dylib.
    Absent,
    /// The writer was changing this entry; ask the actor instead.
    #[cfg_attr(kiln_loom, allow(dead_code))] // the locked map never is
    Busy,
}
