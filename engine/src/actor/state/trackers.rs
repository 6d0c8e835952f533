//! Resource trackers and the per-tracker lists of units and
//! responsibilities: creating, removing (failing what is in flight and
//! unpublishing its names) and transferring.

use slab::Slab;

use super::SlabKey;
use super::{RespEntry, State, TrackerEntry, UNLISTED, UnitEntry};
use crate::actor::{DylibId, Effect, Effects, Reply, RespId, SymId, TrackerId};
use crate::error::{Error, Result};
use crate::symbol::SymbolState;
use crate::sync::Arc;
use crate::tracker::{ResourceKey, TrackerShared};

/// An entry listed in a [`TrackerEntry`] list (`units` or `resps`) that
/// knows its position there.
trait Listed {
    fn at(&mut self) -> &mut usize;
}

impl Listed for UnitEntry {
    fn at(&mut self) -> &mut usize {
        &mut self.at
    }
}

impl Listed for RespEntry {
    fn at(&mut self) -> &mut usize {
        &mut self.at
    }
}

/// Stores `entry` in `slab` and appends its key to `list`, recording its
/// position there.
fn insert_listed<T: Listed>(slab: &mut Slab<T>, list: &mut Vec<usize>, mut entry: T) -> usize {
    *entry.at() = list.len();
    let key = slab.insert(entry);
    list.push(key);
    key
}

/// Removes `key`, at position `at`, from `list` (a `swap_remove`); the
/// entry moved into its place learns its new position.
fn unlist<T: Listed>(slab: &mut Slab<T>, list: &mut Vec<usize>, key: usize, at: usize) {
    debug_assert_eq!(list.get(at), Some(&key));
    list.swap_remove(at);
    if let Some(&moved) = list.get(at) {
        *slab[moved].at() = at;
    }
}

impl State {
    pub(super) fn tracker_entry(&mut self, dylib: DylibId, dylib_name: Arc<str>) -> TrackerId {
        let key = ResourceKey(self.next_key);
        self.next_key += 1;
        let id = self.next_tracker;
        self.next_tracker += 1;
        self.trackers.insert(
            id,
            TrackerEntry {
                shared: TrackerShared::new(id, dylib, dylib_name, key),
                dylib,
                syms: Vec::new(),
                units: Vec::new(),
                resps: Vec::new(),
            },
        );
        id
    }

    pub(crate) fn new_tracker(&mut self, dylib: DylibId) -> Arc<TrackerShared> {
        let name = self.dylibs[dylib as usize].shared.name.clone();
        let id = self.tracker_entry(dylib, name);
        self.dylibs[dylib as usize].trackers.push(id);
        self.tracker(id).shared.clone()
    }

    /// The live tracker `id` (callers hold ids of live trackers only:
    /// those of units, responsibilities and symbols of a removed tracker
    /// are never used to reach it).
    pub(super) fn tracker(&mut self, id: TrackerId) -> &mut TrackerEntry {
        self.trackers
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("tracker {id} is not live"))
    }

    /// Stores a unit, listed under its tracker.
    pub(super) fn add_unit(&mut self, unit: UnitEntry) -> usize {
        let list = &mut self
            .trackers
            .get_mut(&unit.tracker)
            .unwrap_or_else(|| unreachable!("a unit's tracker is live"))
            .units;
        insert_listed(&mut self.units, list, unit)
    }

    /// Removes a unit, and from its tracker's list.
    pub(super) fn take_unit(&mut self, uid: usize) -> UnitEntry {
        let unit = self.units.remove(uid);
        let list = &mut self
            .trackers
            .get_mut(&unit.tracker)
            .unwrap_or_else(|| unreachable!("a unit's tracker is live"))
            .units;
        unlist(&mut self.units, list, uid, unit.at);
        unit
    }

    /// Stores a responsibility, listed under its tracker.
    pub(super) fn add_resp(&mut self, resp: RespEntry) -> RespId {
        let list = &mut self
            .trackers
            .get_mut(&resp.tracker)
            .unwrap_or_else(|| unreachable!("a listed responsibility's tracker is live"))
            .resps;
        insert_listed(&mut self.resps, list, resp)
    }

    /// Removes a responsibility, and from its tracker's list unless the
    /// tracker was removed.
    pub(super) fn take_resp(&mut self, rid: RespId) -> RespEntry {
        let resp = self.resps.remove(rid);
        if resp.at != UNLISTED {
            let list = &mut self
                .trackers
                .get_mut(&resp.tracker)
                .unwrap_or_else(|| unreachable!("a listed responsibility's tracker is live"))
                .resps;
            unlist(&mut self.resps, list, rid, resp.at);
        }
        resp
    }

    /// Removes a tracker's symbols, units and in-flight work; returns it
    /// for the resource managers (None if it was already removed).
    pub(super) fn remove_tracker(
        &mut self,
        tracker: TrackerId,
        fx: &mut Effects,
    ) -> Option<Arc<TrackerShared>> {
        let t = self.trackers.remove(&tracker)?;
        t.shared.mark_defunct();
        let shared = t.shared.clone();
        let dylib = t.dylib;
        let mut syms = t.syms;
        // In id order, the symbol records are visited front to back.
        syms.sort_unstable();
        let (units, resps) = (t.units, t.resps);
        self.dylibs[dylib as usize]
            .trackers
            .retain(|&other| other != tracker);
        for rid in resps {
            let r = &mut self.resps[rid];
            r.defunct = true;
            r.at = UNLISTED;
            self.blocked.remove(&rid);
        }
        for uid in units {
            let unit = self.units.remove(uid);
            fx.extend(unit.cell.map(|cell| Effect::Drop(Box::new(cell))));
        }
        let cause = Arc::new(Error::TrackerRemoved {
            dylib: self.dylibs[dylib as usize].shared.name.clone(),
        });
        let in_flight: Vec<(SymId, Arc<Error>)> = syms
            .iter()
            .filter(|&&s| {
                !matches!(
                    self.syms[s as usize].state,
                    SymbolState::Ready | SymbolState::Failed
                )
            })
            .map(|&s| (s, cause.clone()))
            .collect();
        self.fail_syms(in_flight, fx);
        // Unpublish: the index entry goes before any memory is released.
        for &sid in &syms {
            let s = &mut self.syms[sid as usize];
            s.unit = SlabKey::NONE;
            s.resp = SlabKey::NONE;
            let index = &self.dylibs[s.dylib as usize].shared.index;
            if index.sym(&s.name) == Some(sid) {
                index.remove(&s.name);
            }
        }
        self.retire_syms(syms);
        Some(shared)
    }

    pub(super) fn transfer(
        &mut self,
        src: TrackerId,
        dst: TrackerId,
        reply: Reply<Result<()>>,
        fx: &mut Effects,
    ) {
        let (Some(s), Some(d)) = (self.trackers.get(&src), self.trackers.get(&dst)) else {
            // A removed tracker has left the table.
            return reply.send(Err(Error::TrackerRemoved {
                dylib: self
                    .trackers
                    .get(&src)
                    .or_else(|| self.trackers.get(&dst))
                    .map_or_else(|| "?".into(), |t| t.shared.dylib_name.clone()),
            }));
        };
        let (src_shared, dst_key) = (s.shared.clone(), d.shared.key);
        let s = self
            .trackers
            .remove(&src)
            .unwrap_or_else(|| unreachable!("found above"));
        s.shared.mark_defunct();
        let dylib = s.dylib;
        self.dylibs[dylib as usize]
            .trackers
            .retain(|&other| other != src);
        let (syms, units, resps) = (s.syms, s.units, s.resps);
        let d = self.tracker(dst);
        let (units_at, resps_at) = (d.units.len(), d.resps.len());
        for &sid in &syms {
            self.syms[sid as usize].tracker = dst;
        }
        for (i, &uid) in units.iter().enumerate() {
            let u = &mut self.units[uid];
            u.tracker = dst;
            u.at = units_at + i;
        }
        for (i, &rid) in resps.iter().enumerate() {
            let r = &mut self.resps[rid];
            r.tracker = dst;
            r.at = resps_at + i;
        }
        let d = self.tracker(dst);
        d.syms.extend(syms);
        d.units.extend(units);
        d.resps.extend(resps);
        fx.push(Effect::TransferResources {
            dst: dst_key,
            src: src_shared,
            managers: self.managers.clone(),
            reply,
        });
    }
}
