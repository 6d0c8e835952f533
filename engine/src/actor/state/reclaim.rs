//! Giving back the records of removed code, so a host that adds and removes
//! code for days stays flat.
//!
//! A removed tracker's symbols (and symbols removed by name) are
//! unpublished at once, but their ids may
//! still be held: by a pending lookup (found in its search, or waited on),
//! by a responsibility of the removed tracker that has not finished yet
//! (its `owed` list), or by the dependency graph (a node some waiting node
//! still depends on). Such ids wait in `retiring` and are looked at again at
//! the next removal; the others go to `free_syms` at once, and the next
//! definition reuses them (and with them the graph's id → slot entry). A
//! free record holds no name of the session's, no failure and no waiters.
//!
//! A removed dylib keeps a small record (a stand-in for its shared part,
//! with its id and name, for the errors that name it) until its slot can
//! be reused: when no handle of it is left (none of the host's, none the
//! actor gave out), no live link order, pending lookup, responsibility,
//! unit or retiring symbol names its id, and every message queued before
//! that was seen has been handled (two mailbox epochs later: a message is
//! built from a handle, so it was queued before the last handle dropped).
//! The next `create_dylib` then takes the slot, so no message, handle or
//! table can mistake the new dylib for the old one.
//!
//! None of this touches the Ready index's readers: the fast path never sees
//! symbol ids, and a record is given back only after its name was
//! unpublished.

use smallvec::SmallVec;

use super::SlabKey;
use super::{FixedSet, State, Sym};
use crate::actor::{DylibId, SymId};
use crate::symbol::{SymbolFlags, SymbolState};
use crate::sync::Arc;

/// How many records each of the actor's tables holds (live and free), for
/// tests and benchmarks that check removal gives memory back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[doc(hidden)]
pub struct TableSizes {
    /// Symbol records allocated (live, retiring or free).
    pub symbols: usize,
    /// Of those, free for reuse.
    pub free_symbols: usize,
    /// Of those, removed but possibly still referred to.
    pub retiring_symbols: usize,
    /// Live trackers.
    pub trackers: usize,
    /// Dylib records (live, or removed and not reused yet).
    pub dylibs: usize,
    /// Units waiting to be materialized.
    pub units: usize,
    /// Responsibilities not yet finished.
    pub responsibilities: usize,
    /// Pending lookups.
    pub lookups: usize,
    /// Nodes stored by the dependency graph (real and hidden).
    pub graph_nodes: usize,
    /// Length of the graph's id → slot index (one past the largest symbol
    /// id it has seen).
    pub graph_ids: usize,
}

impl State {
    /// Stores a new symbol record, in a free one if there is one.
    pub(super) fn alloc_sym(&mut self, sym: Sym) -> SymId {
        self.syms.store(&mut self.free_syms, sym).0
    }

    /// `syms` were just removed (with their tracker, or by name): they are
    /// unpublished and listed nowhere. Gives back each one nothing refers
    /// to any more (no lookup, no unfinished responsibility, no graph node,
    /// not in flight), and looks again at those that waited.
    pub(super) fn retire_syms(&mut self, syms: Vec<SymId>) {
        self.retiring.extend(syms);
        if self.retiring.is_empty() {
            return;
        }
        let held = self.held_syms();
        let mut retiring = std::mem::take(&mut self.retiring);
        retiring.retain(|&sid| {
            let s = &self.syms[sid as usize];
            let busy = held.contains(&sid)
                || self.graph.stores(sid)
                || matches!(
                    s.state,
                    SymbolState::Materializing | SymbolState::Resolved | SymbolState::Emitted
                );
            if !busy {
                self.free_sym(sid);
            }
            busy
        });
        self.retiring = retiring;
    }

    /// Symbol ids that pending lookups and unfinished responsibilities of
    /// removed trackers may still use. (A live responsibility owes only
    /// symbols of its live tracker.)
    fn held_syms(&self) -> FixedSet<SymId> {
        let mut held = FixedSet::default();
        for lk in self.lookups.values() {
            held.extend(lk.found.iter().filter_map(|f| f.sym));
            held.extend(lk.pending.iter().copied());
        }
        for (_, r) in &self.resps {
            if r.defunct {
                held.extend(r.owed.iter().copied());
            }
        }
        held
    }

    /// Empties the record `sid` and puts it on the free list.
    fn free_sym(&mut self, sid: SymId) {
        let s = &mut self.syms[sid as usize];
        s.name = self.no_name.clone();
        s.flags = SymbolFlags::NONE;
        s.state = SymbolState::Failed;
        s.address = 0;
        s.unit = SlabKey::NONE;
        s.resp = SlabKey::NONE;
        s.waiters = SmallVec::new();
        self.failures.remove(&sid);
        self.free_syms.push(sid);
    }

    /// A removed dylib's slot that `create_dylib` may take: one that has
    /// waited out the mailbox since nothing named it. Also starts that wait
    /// for removed dylibs nothing names any more.
    pub(super) fn reusable_dylib_slot(&mut self) -> Option<DylibId> {
        let epoch = self.epoch;
        if !self.removed_dylibs.is_empty() {
            let named = self.named_dylibs();
            let mut i = 0;
            while i < self.removed_dylibs.len() {
                let id = self.removed_dylibs[i];
                let d = &self.dylibs[id as usize];
                let unheld = d.original.strong_count() == 0 && Arc::strong_count(&d.shared) == 1;
                if unheld && !named.contains(&id) {
                    self.removed_dylibs.swap_remove(i);
                    self.quarantined_dylibs.push((id, epoch));
                } else {
                    i += 1;
                }
            }
        }
        let i = self
            .quarantined_dylibs
            .iter()
            .position(|&(_, since)| epoch >= since + 2)?;
        Some(self.quarantined_dylibs.swap_remove(i).0)
    }

    /// Dylib ids the actor's own tables still use.
    fn named_dylibs(&self) -> FixedSet<DylibId> {
        let mut named = FixedSet::default();
        for d in self.dylibs.iter().filter(|d| !d.removed) {
            named.extend(d.link_order.iter().map(|&(id, _)| id));
        }
        for lk in self.lookups.values() {
            named.extend(lk.order.iter().map(|&(id, _)| id));
        }
        named.extend(self.resps.iter().map(|(_, r)| r.dylib));
        named.extend(self.units.iter().map(|(_, u)| u.dylib));
        named.extend(self.trackers.values().map(|t| t.dylib));
        named.extend(self.retiring.iter().map(|&s| self.syms[s as usize].dylib));
        named
    }

    /// The size of each table.
    pub(crate) fn table_sizes(&self) -> TableSizes {
        TableSizes {
            symbols: self.syms.len(),
            free_symbols: self.free_syms.len(),
            retiring_symbols: self.retiring.len(),
            trackers: self.trackers.len(),
            dylibs: self.dylibs.len(),
            units: self.units.len(),
            responsibilities: self.resps.len(),
            lookups: self.lookups.len(),
            graph_nodes: self.graph.stored_len().0,
            graph_ids: self.graph.stored_len().1,
        }
    }
}
