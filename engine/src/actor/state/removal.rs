//! Removing what a dylib holds piece by piece: named symbols (all or
//! nothing) and generators (lookups queued on one fail, none hangs).

use super::SlabKey;
use super::State;
use super::define::discard_task;
use crate::actor::{DYLIB_HAS_GENERATORS, DylibId, Effect, Effects, SessionCore, SymId};
use crate::error::{Error, Result};
use crate::name::SymbolName;
use crate::symbol::SymbolState;
use crate::sync::{Arc, Ordering};

/// Never asked: stands in for a removed generator, whose own object is
/// dropped off the actor.
struct Removed;

impl crate::generator::Generator for Removed {
    fn generate(&self, _request: crate::generator::GenerateRequest) {}
}

impl State {
    /// Removes the generator at `index` of `dylib`'s list. Lookups queued
    /// for it fail with [`Error::GeneratorRemoved`]; a call in flight
    /// finishes, and its lookup goes on with the next generator.
    pub(super) fn remove_generator(
        &mut self,
        dylib: DylibId,
        index: usize,
        fx: &mut Effects,
    ) -> Result<()> {
        let d = self.live_dylib(dylib)?;
        let name = d.shared.name.clone();
        let Some(entry) = d.generators.get_mut(index).filter(|g| !g.removed) else {
            return Err(Error::Usage(format!(
                "remove_generator: dylib '{name}' has no such generator (removed already?)"
            )));
        };
        entry.removed = true;
        let generator = std::mem::replace(&mut entry.generator, Arc::new(Removed));
        let queued: Vec<u64> = entry.queue.drain(..).collect();
        entry.asking.clear();
        entry.misses.clear();
        if d.generators.iter().all(|g| g.removed) {
            d.shared
                .status
                .fetch_and(!DYLIB_HAS_GENERATORS, Ordering::Release);
        }
        fx.push(Effect::Drop(Box::new(generator)));
        for id in queued {
            let err = Error::GeneratorRemoved {
                dylib: name.clone(),
            };
            self.fail_lookup(id, err, fx);
        }
        Ok(())
    }

    /// Removes `names` from `dylib`, all or nothing: each must be defined
    /// there and lazy (its unit not started: the unit is told to discard
    /// it) or Ready (unpublished; its memory stays with its tracker). Else
    /// nothing is removed and the error lists every name not defined and
    /// every name still being materialized.
    pub(super) fn remove_symbols(
        &mut self,
        core: &Arc<SessionCore>,
        dylib: DylibId,
        names: &[SymbolName],
        fx: &mut Effects,
    ) -> Result<()> {
        let shared = self.live_dylib(dylib)?.shared.clone();
        let dylib_name = shared.name.clone();
        let (mut missing, mut materializing, mut found) = (Vec::new(), Vec::new(), Vec::new());
        for name in names {
            match shared.index.sym(name) {
                None => missing.push(name.clone()),
                Some(sid) => match self.syms[sid as usize].state {
                    SymbolState::Lazy | SymbolState::Ready | SymbolState::Failed => {
                        if !found.contains(&sid) {
                            found.push(sid);
                        }
                    }
                    _ => materializing.push(name.clone()),
                },
            }
        }
        if !missing.is_empty() || !materializing.is_empty() {
            return Err(Error::SymbolsNotRemoved {
                dylib: dylib_name,
                materializing,
                missing,
            });
        }
        let handle = self.dylib_handle(core, dylib);
        for &sid in &found {
            self.remove_symbol(sid, &handle, fx);
        }
        // Listed nowhere now: their records go back once nothing holds them.
        self.retire_syms(found);
        Ok(())
    }

    /// Unpublishes one symbol and forgets it: its tracker no longer lists
    /// it, and its lazy unit (if any) discards it, or is dropped when it
    /// owes nothing else.
    fn remove_symbol(&mut self, sid: SymId, dylib: &crate::session::Dylib, fx: &mut Effects) {
        let s = &mut self.syms[sid as usize];
        let (name, tracker) = (s.name.clone(), s.tracker);
        let unit = s.unit.take();
        s.resp = SlabKey::NONE;
        let index = &self.dylibs[s.dylib as usize].shared.index;
        if index.sym(&name) == Some(sid) {
            index.remove(&name);
        }
        if let Some(t) = self.trackers.get_mut(&tracker) {
            t.syms.retain(|&x| x != sid);
        }
        let Some(uid) = unit.filter(|&uid| self.units.contains(uid)) else {
            return;
        };
        let u = &mut self.units[uid];
        u.syms.retain(|x| *x != sid);
        let cell = u.cell.clone();
        if u.syms.is_empty() {
            let u = self.take_unit(uid);
            fx.extend(u.cell.map(|cell| Effect::Drop(Box::new(cell))));
        } else if let Some(cell) = cell {
            fx.push(discard_task(
                "discard a removed symbol",
                cell,
                dylib.clone(),
                name,
            ));
        }
    }
}
