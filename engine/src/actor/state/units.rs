//! Units and responsibilities: starting a unit's materialization (or
//! resolving an absolute one in place), and a running responsibility's
//! requests — resolve, replace, delegate, define more, list what it owes.

use smallvec::SmallVec;

use super::SlabKey;
use super::{RespEntry, State, Sym, UnitEntry};
use crate::actor::{Effect, Effects, RespId, SessionCore, SymId, UnitCell};
use crate::dispatch::Task;
use crate::error::{Error, Result};
use crate::graph::EmitGroup;
use crate::index::IndexEntry;
use crate::name::SymbolName;
use crate::responsibility::{Responsibility, run_materialization};
use crate::symbol::{SymbolDef, SymbolFlags, SymbolState};
use crate::sync::Arc;
use crate::tracker::ResourceTracker;

impl State {
    pub(super) fn start_unit(&mut self, core: &Arc<SessionCore>, uid: usize, fx: &mut Effects) {
        if !self.units.contains(uid) {
            return;
        }
        let unit = self.take_unit(uid);
        let Some(cell) = unit.cell else {
            return self.materialize_fixed(&unit.syms, fx);
        };
        let unit_name = unit
            .name
            .unwrap_or_else(|| crate::unit::ABSOLUTE_UNIT_NAME.into());
        for &sid in &unit.syms {
            let s = &mut self.syms[sid as usize];
            s.state = SymbolState::Materializing;
            s.unit = SlabKey::NONE;
        }
        let rid = self.add_resp(RespEntry {
            dylib: unit.dylib,
            tracker: unit.tracker,
            unit_name: unit_name.clone(),
            owed: unit.syms,
            defunct: false,
            at: 0,
        });
        for &sid in &self.resps[rid].owed {
            self.syms[sid as usize].resp = SlabKey::some(rid);
        }
        let responsibility = Responsibility {
            core: core.clone(),
            id: rid,
            dylib: self.dylib_handle(core, unit.dylib),
            tracker: ResourceTracker {
                core: core.clone(),
                shared: self.tracker(unit.tracker).shared.clone(),
                follows: true,
            },
            unit_name,
            finished: false,
        };
        let key = match cell.batch_key() {
            Some(key) => (unit.dylib, unit.tracker, key),
            None => {
                return fx.push(Effect::Dispatch(Task::new("materialize", move || {
                    run_materialization(cell, responsibility)
                })));
            }
        };
        // A batch this drive started already takes it: found where it was
        // put, not by a scan of every effect (a lookup may start 100,000
        // units in one drive).
        let place = self.batch_places.iter().position(|(k, _)| *k == key);
        if let Some(p) = place
            && let Some(Effect::Materialize { key: k, members }) =
                fx.get_mut(self.batch_places[p].1)
            && *k == key
        {
            return members.push((cell, responsibility));
        }
        match place {
            Some(p) => self.batch_places[p].1 = fx.len(),
            None => {
                // Keys of removed dylibs and trackers would pile up.
                if self.batch_places.len() >= 64 {
                    self.batch_places.clear();
                }
                self.batch_places.push((key, fx.len()));
            }
        }
        fx.push(Effect::Materialize {
            key,
            members: vec![(cell, responsibility)],
        });
    }

    /// Does what an absolute-symbols unit's `materialize` would — resolve
    /// its symbols at the addresses given at definition, then emit them with
    /// no dependencies — in this one step. Nothing can observe the symbols
    /// in between (no user code runs, no other message is applied), so no
    /// responsibility is created, and since they depend on nothing they are
    /// Ready at once: waiters for `Resolved` are notified together with
    /// those for `Ready`. The graph still hears of the emission, for emitted
    /// symbols that already wait on these.
    pub(super) fn materialize_fixed(&mut self, syms: &[SymId], fx: &mut Effects) {
        for &sid in syms {
            let s = &mut self.syms[sid as usize];
            s.unit = SlabKey::NONE;
            s.state = SymbolState::Emitted;
        }
        if !syms.iter().any(|&sid| self.graph.stores(sid)) {
            // Nothing waits on them in the graph: Ready without it.
            for &sid in syms {
                self.mark_ready(sid, fx);
            }
            return;
        }
        let mut ready = std::mem::take(&mut self.scratch.ready);
        self.graph.emit(
            &[EmitGroup {
                defs: syms,
                deps: &[],
            }],
            &mut ready,
        );
        for &sid in &ready {
            self.mark_ready(sid, fx);
        }
        debug_assert!(
            syms.iter()
                .all(|&sid| self.syms[sid as usize].state == SymbolState::Ready),
            "a group without dependencies is Ready when emitted"
        );
        ready.clear();
        self.scratch.ready = ready;
    }

    pub(super) fn owned_resp(&self, resp: RespId) -> Result<&RespEntry> {
        match self.resps.get(resp) {
            None => Err(Error::Usage(
                "this responsibility has already emitted or failed".into(),
            )),
            Some(r) if r.defunct => Err(Error::TrackerRemoved {
                dylib: self.dylibs[r.dylib as usize].shared.name.clone(),
            }),
            Some(r) => Ok(r),
        }
    }

    /// The symbol `name` in the responsibility's dylib, if this
    /// responsibility owes it.
    pub(super) fn owned_sym(&self, resp: RespId, name: &SymbolName) -> Result<SymId> {
        let r = self.owned_resp(resp)?;
        let d = &self.dylibs[r.dylib as usize];
        match d.shared.index.sym(name) {
            Some(sid) if self.syms[sid as usize].resp.get() == Some(resp) => Ok(sid),
            _ => Err(Error::Usage(format!(
                "unit '{}' does not own {} in dylib '{}' (or it was already failed or handed back)",
                r.unit_name, name, d.shared.name
            ))),
        }
    }

    /// [`State::owned_sym`], trying first the owed symbol at `*hint` (then
    /// moving the hint past it): a unit that names its symbols in the
    /// order it offered them is answered without probing the dylib's
    /// index.
    pub(super) fn owned_sym_hinted(
        &self,
        resp: RespId,
        name: &SymbolName,
        hint: &mut usize,
    ) -> Result<SymId> {
        let r = self.owned_resp(resp)?;
        if let Some(&sid) = r.owed.get(*hint) {
            let s = &self.syms[sid as usize];
            if s.name.same(name) && s.resp.get() == Some(resp) {
                *hint += 1;
                return Ok(sid);
            }
        }
        self.owned_sym(resp, name)
    }

    pub(crate) fn resolve(
        &mut self,
        resp: RespId,
        defs: &[(SymbolName, SymbolDef)],
        fx: &mut Effects,
    ) -> Result<()> {
        let mut sids = Vec::with_capacity(defs.len());
        let mut hint = 0;
        for (name, _) in defs {
            sids.push(self.owned_sym_hinted(resp, name, &mut hint)?);
        }
        for (&sid, (_, def)) in sids.iter().zip(defs) {
            let s = &mut self.syms[sid as usize];
            s.address = def.address;
            if s.state == SymbolState::Materializing {
                s.state = SymbolState::Resolved;
            }
            self.notify_waiters(sid, fx);
        }
        Ok(())
    }

    pub(super) fn replace(
        &mut self,
        core: &Arc<SessionCore>,
        resp: RespId,
        cell: UnitCell,
        unit_name: Arc<str>,
        symbols: Vec<(SymbolName, SymbolFlags)>,
        fx: &mut Effects,
    ) -> Result<()> {
        let mut sids = Vec::with_capacity(symbols.len());
        for (name, _) in &symbols {
            match self.owned_sym(resp, name) {
                Ok(sid) => sids.push(sid),
                Err(e) => {
                    fx.push(Effect::Drop(Box::new(cell)));
                    return Err(e);
                }
            }
        }
        let (dylib, tracker) = {
            let r = &self.resps[resp];
            (r.dylib, r.tracker)
        };
        let uid = self.add_unit(UnitEntry {
            cell: Some(cell),
            name: Some(unit_name),
            dylib,
            tracker,
            syms: SmallVec::from_slice(&sids),
            at: 0,
        });
        let mut wanted = false;
        for (&sid, (_, flags)) in sids.iter().zip(&symbols) {
            let s = &mut self.syms[sid as usize];
            s.state = SymbolState::Lazy;
            s.flags = *flags;
            s.resp = SlabKey::NONE;
            s.unit = SlabKey::some(uid);
            wanted |= !s.waiters.is_empty();
        }
        if wanted {
            self.start_unit(core, uid, fx);
        }
        Ok(())
    }

    pub(super) fn delegate(&mut self, resp: RespId, names: &[SymbolName]) -> Result<RespId> {
        let mut sids = Vec::with_capacity(names.len());
        for name in names {
            sids.push(self.owned_sym(resp, name)?);
        }
        let r = &self.resps[resp];
        let (dylib, tracker, unit_name) = (r.dylib, r.tracker, r.unit_name.clone());
        let rid = self.add_resp(RespEntry {
            dylib,
            tracker,
            unit_name,
            owed: SmallVec::from_slice(&sids),
            defunct: false,
            at: 0,
        });
        for sid in sids {
            self.syms[sid as usize].resp = SlabKey::some(rid);
        }
        Ok(rid)
    }

    /// `resp` takes over what `others` (of its dylib and tracker) owe;
    /// they are gone. All or none.
    pub(crate) fn absorb(&mut self, resp: RespId, others: &[RespId]) -> Result<()> {
        let r = self.owned_resp(resp)?;
        let (dylib, tracker) = (r.dylib, r.tracker);
        // The ids are distinct, and not `resp`: each is a `Responsibility`
        // moved in, which nothing else holds.
        for &other in others {
            let o = self.owned_resp(other)?;
            if o.dylib != dylib || o.tracker != tracker {
                return Err(Error::Usage(
                    "a responsibility absorbs only others of its dylib and tracker".into(),
                ));
            }
        }
        for &other in others {
            let o = self.take_resp(other);
            if let Some(lookups) = self.blocked.remove(&other) {
                self.blocked.entry(resp).or_default().extend(lookups);
            }
            let owed: SmallVec<[SymId; 4]> = o
                .owed
                .into_iter()
                .filter(|&sid| self.syms[sid as usize].resp.get() == Some(other))
                .collect();
            for &sid in &owed {
                self.syms[sid as usize].resp = SlabKey::some(resp);
            }
            self.resps[resp].owed.extend(owed);
        }
        Ok(())
    }

    pub(super) fn define_materializing(
        &mut self,
        core: &Arc<SessionCore>,
        resp: RespId,
        symbols: Vec<(SymbolName, SymbolFlags)>,
        fx: &mut Effects,
    ) -> Result<Vec<SymbolName>> {
        let r = self.owned_resp(resp)?;
        let (dylib, tracker) = (r.dylib, r.tracker);
        let d = &self.dylibs[dylib as usize];
        let mut duplicates = Vec::new();
        let mut add = Vec::new();
        for (name, flags) in symbols {
            if d.shared.index.sym(&name).is_some() || add.iter().any(|(n, _)| n == &name) {
                if !flags.is_weak() {
                    duplicates.push(name);
                }
            } else {
                add.push((name, flags));
            }
        }
        if !duplicates.is_empty() {
            return Err(Error::DuplicateDefinitions {
                dylib: d.shared.name.clone(),
                names: duplicates,
            });
        }
        let mut added = Vec::with_capacity(add.len());
        for (name, flags) in add {
            let sid = self.alloc_sym(Sym {
                dylib,
                name: name.clone(),
                flags,
                state: SymbolState::Materializing,
                address: 0,
                unit: SlabKey::NONE,
                resp: SlabKey::some(resp),
                tracker,
                waiters: SmallVec::new(),
            });
            self.dylibs[dylib as usize].shared.index.set(
                &name,
                IndexEntry {
                    def: SymbolDef::new(0, flags),
                    ready: false,
                },
                sid,
            );
            self.resps[resp].owed.push(sid);
            self.tracker(tracker).syms.push(sid);
            added.push(name);
        }
        self.gained_definitions(core, dylib, fx);
        Ok(added)
    }

    pub(crate) fn owed(
        &self,
        resp: RespId,
        requested_only: bool,
    ) -> Result<Vec<(SymbolName, SymbolFlags)>> {
        let r = self.owned_resp(resp)?;
        let mut out: Vec<(SymbolName, SymbolFlags)> = r
            .owed
            .iter()
            .map(|&s| &self.syms[s as usize])
            .filter(|s| s.resp.get() == Some(resp))
            .filter(|s| !requested_only || !s.waiters.is_empty())
            .map(|s| (s.name.clone(), s.flags))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
