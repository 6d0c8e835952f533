//! Dylibs: creating one, and removing one with all it holds (its trackers,
//! generators, its Ready index, and the lookups that wait on it or search
//! it). A removed dylib's record stays, small, until its slot is reused
//! (see `reclaim`).

use super::{DylibState, FixedSet, State};
use crate::actor::{DYLIB_REMOVED, DylibId, DylibShared, Effect, Effects};
use crate::error::{Error, Result};
use crate::lookup::DylibLookup;
use crate::sync::{Arc, AtomicUsize, Ordering, Weak};
use crate::tracker::TrackerShared;

impl State {
    pub(crate) fn create_dylib(&mut self, name: Arc<str>) -> Result<Arc<DylibShared>> {
        if self
            .dylibs
            .iter()
            .any(|d| !d.removed && d.shared.name == name)
        {
            return Err(Error::DylibExists(name));
        }
        let fresh = self.dylibs.len() as DylibId;
        let id = self.reusable_dylib_slot().unwrap_or(fresh);
        let tracker = self.tracker_entry(id, name.clone());
        let shared = Arc::new(DylibShared {
            id,
            name,
            index: Default::default(),
            default_tracker: self.tracker(tracker).shared.clone(),
            status: AtomicUsize::new(0),
        });
        let state = DylibState {
            shared: shared.clone(),
            original: Weak::new(),
            link_order: vec![(id, DylibLookup::All)],
            generators: Vec::new(),
            trackers: vec![tracker],
            awaiting: FixedSet::default(),
            removed: false,
        };
        match self.dylibs.get_mut(id as usize) {
            Some(slot) => *slot = state,
            None => self.dylibs.push(state),
        }
        Ok(shared)
    }

    pub(super) fn remove_dylib(
        &mut self,
        dylib: DylibId,
        fx: &mut Effects,
    ) -> Vec<Arc<TrackerShared>> {
        let d = &mut self.dylibs[dylib as usize];
        if d.removed {
            return Vec::new();
        }
        d.removed = true;
        // Before the index empties: the fast path must not answer from a
        // later dylib once this one's names are gone.
        d.shared.status.fetch_or(DYLIB_REMOVED, Ordering::Release);
        let trackers = std::mem::take(&mut d.trackers);
        let generators = std::mem::take(&mut d.generators);
        let awaiting: Vec<u64> = d.awaiting.drain().collect();
        let name = d.shared.name.clone();
        // Unpublish everything at once, before any tracker's memory goes;
        // the trackers then find nothing left to unpublish one by one.
        d.shared.index.clear();
        let mut removed = Vec::new();
        for t in trackers {
            removed.extend(self.remove_tracker(t, fx));
        }
        for gen_entry in generators {
            fx.push(Effect::Drop(Box::new(gen_entry.generator)));
        }
        for id in awaiting {
            self.fail_lookup(id, Error::DylibRemoved(name.clone()), fx);
        }
        // Lookups suspended in this dylib's generators or searching it fail.
        let searching: Vec<u64> = self
            .lookups
            .iter()
            .filter(|(_, lk)| !lk.bound && lk.order.iter().any(|&(d, _)| d == dylib))
            .map(|(&id, _)| id)
            .collect();
        for id in searching {
            self.fail_lookup(id, Error::DylibRemoved(name.clone()), fx);
        }
        self.release_dylib(dylib);
        removed
    }

    /// Lets go of what a removed dylib held: its Ready index (the largest
    /// part: readers holding a handle keep theirs until they drop it; the
    /// record keeps an empty one with the same id and name) and its lists.
    fn release_dylib(&mut self, dylib: DylibId) {
        self.removed_dylibs.push(dylib);
        let d = &mut self.dylibs[dylib as usize];
        d.original = Arc::downgrade(&d.shared);
        let old = &d.shared;
        d.shared = Arc::new(DylibShared {
            id: old.id,
            name: old.name.clone(),
            index: Default::default(),
            default_tracker: old.default_tracker.clone(),
            status: AtomicUsize::new(old.status.load(Ordering::Acquire)),
        });
        d.link_order = Vec::new();
        d.generators = Vec::new();
        d.trackers = Vec::new();
        d.awaiting = FixedSet::default();
    }
}
