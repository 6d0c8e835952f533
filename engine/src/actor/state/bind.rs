//! Lookups bound to symbols: waiting on them, completing when every
//! symbol reached the required state, failing, and what is still unmet.

use smallvec::SmallVec;

use super::{PendingLookup, State};
use crate::actor::{Effect, Effects, SessionCore, SymId};
use crate::error::Error;
use crate::lookup::{self, SymbolLookup, SymbolMap};
use crate::name::SymbolName;
use crate::symbol::{SymbolDef, SymbolState};
use crate::sync::Arc;

impl State {
    /// Attaches the lookup to the symbols it found: records those already
    /// in the required state, waits on the others, and starts the units of
    /// lazy ones.
    pub(super) fn bind(&mut self, core: &Arc<SessionCore>, id: u64, fx: &mut Effects) {
        let lk = self.lookups.get(&id).expect("lookup exists");
        if let Some(err) = self.lookup_failure(lk) {
            return self.fail_lookup(id, err, fx);
        }
        let lk = self.lookups.get_mut(&id).expect("lookup exists");
        let mut no_address = Vec::new();
        for (i, f) in lk.found.iter().enumerate() {
            let Some(sid) = f.sym else { continue };
            let s = &self.syms[sid as usize];
            if s.flags.is_side_effects_only() && lk.names[i].1 == SymbolLookup::Required {
                no_address.push(s.name.clone());
            }
        }
        if !no_address.is_empty() {
            let err = Error::SideEffectsOnlyRequired { names: no_address };
            return self.fail_lookup(id, err, fx);
        }
        lk.bound = true;
        let mut to_start: SmallVec<[usize; 2]> = SmallVec::new();
        for i in 0..lk.found.len() {
            let Some(sid) = lk.found[i].sym else { continue };
            let s = &mut self.syms[sid as usize];
            if lk.state.is_met_by(s.state) {
                if !s.flags.is_side_effects_only() {
                    lk.found[i].def = Some(SymbolDef::new(s.address, s.flags));
                }
            } else {
                s.waiters.push((id, i as u32, lk.state));
                lk.remaining += 1;
                lk.pending.push(sid);
                // A unit's symbols are usually looked up together: its
                // id once per run of them, not once per symbol.
                if s.state == SymbolState::Lazy
                    && let Some(uid) = s.unit.get()
                    && to_start.last() != Some(&uid)
                {
                    to_start.push(uid);
                }
            }
        }
        let done = lk.remaining == 0;
        let blocked = !lk.blocked_resps.is_empty();
        for uid in to_start {
            self.start_unit(core, uid, fx);
        }
        if done {
            self.complete(id, fx);
        } else if blocked {
            self.check_blocking_cycle(id, fx);
        }
    }

    pub(super) fn complete(&mut self, id: u64, fx: &mut Effects) {
        let Some(lk) = self.lookups.remove(&id) else {
            return;
        };
        self.unblock(id, &lk.blocked_resps);
        // Room for every name at once (most are found): one allocation, not
        // one a doubling.
        let mut found = SmallVec::with_capacity(lk.found.len());
        for (at, f) in lk.found.iter().enumerate() {
            if let Some(def) = f.def {
                found.push(lookup::Found {
                    at: at as u32,
                    source: f.at,
                    def,
                });
            }
        }
        fx.push(Effect::Complete(
            lk.shared,
            Ok(SymbolMap::new(lk.names, found)),
        ));
    }

    pub(super) fn fail_lookup(&mut self, id: u64, err: Error, fx: &mut Effects) {
        let Some(lk) = self.lookups.remove(&id) else {
            return;
        };
        self.unblock(id, &lk.blocked_resps);
        match lk.flags_reply {
            Some(reply) => reply.send(Err(err)),
            None => fx.push(Effect::Complete(lk.shared, Err(err))),
        }
    }

    pub(super) fn unsatisfied(&self, lk: &PendingLookup) -> Vec<SymbolName> {
        if !lk.bound {
            return lk
                .names
                .iter()
                .zip(lk.found.iter().map(|f| f.sym))
                .filter(|(_, m)| m.is_none())
                .map(|((n, _), _)| n.clone())
                .collect();
        }
        lk.pending
            .iter()
            .filter(|&&s| !lk.state.is_met_by(self.syms[s as usize].state))
            .map(|&s| self.syms[s as usize].name.clone())
            .collect()
    }

    /// Symbols reached `Resolved` or `Ready`: complete what waited for that.
    pub(super) fn notify_waiters(&mut self, sid: SymId, fx: &mut Effects) {
        let s = &mut self.syms[sid as usize];
        if s.waiters.is_empty() {
            return;
        }
        let state = s.state;
        let def = (!s.flags.is_side_effects_only()).then(|| SymbolDef::new(s.address, s.flags));
        // Filter in place: most symbols have one waiter, and a waiter that
        // needs a later state stays without any new allocation.
        let mut waiters = std::mem::take(&mut s.waiters);
        let mut done: SmallVec<[u64; 2]> = SmallVec::new();
        let mut kept = 0;
        for i in 0..waiters.len() {
            let (id, slot, wanted) = waiters[i];
            if !wanted.is_met_by(state) {
                // Kept without looking the lookup up; one that is gone by
                // then is skipped when this symbol meets its state.
                waiters[kept] = waiters[i];
                kept += 1;
                continue;
            }
            let Some(lk) = self.lookups.get_mut(&id) else {
                continue;
            };
            lk.found[slot as usize].def = def;
            lk.remaining -= 1;
            if lk.remaining == 0 {
                done.push(id);
            }
        }
        waiters.truncate(kept);
        self.syms[sid as usize].waiters = waiters;
        for id in done {
            self.complete(id, fx);
        }
    }
}
