//! The search of a lookup: walking the search order dylib by dylib,
//! matching names, asking generators for what is missing, and finishing
//! (not found, parked until definitions arrive, flags answered, or bound).

use smallvec::SmallVec;

use super::generators::ask_generators;
use super::{Found, PendingLookup, State};
use crate::actor::{Effects, LookupMsg, SessionCore};
use crate::error::Error;
use crate::lookup::{DylibLookup, SymbolLookup};
use crate::name::SymbolName;
use crate::sync::Arc;

impl State {
    pub(crate) fn start_lookup(
        &mut self,
        core: &Arc<SessionCore>,
        msg: LookupMsg,
        fx: &mut Effects,
    ) {
        let id = msg.id;
        let n = msg.names.len();
        self.lookups.insert(
            id,
            PendingLookup {
                shared: msg.shared,
                order: msg.order,
                names: msg.names,
                state: msg.state,
                kind: msg.kind,
                await_definitions: msg.await_definitions,
                flags_reply: msg.flags_reply,
                blocked_resps: SmallVec::new(),
                pos: 0,
                next_gen: 0,
                parked: false,
                found: smallvec::smallvec![Found::default(); n],
                bound: false,
                remaining: 0,
                pending: SmallVec::new(),
            },
        );
        if let Some(resp) = msg.blocking_for {
            self.block(id, &[resp]);
        }
        self.advance(core, id, fx);
    }

    /// Walks the search order from where the lookup stopped: matches names
    /// dylib by dylib, asks generators for what is missing (suspending the
    /// lookup while one runs), and finishes when the order is exhausted.
    pub(super) fn advance(&mut self, core: &Arc<SessionCore>, id: u64, fx: &mut Effects) {
        let Some(lk) = self.lookups.get_mut(&id) else {
            return;
        };
        loop {
            if lk.pos >= lk.order.len() {
                return self.finish_search(core, id, fx);
            }
            let (did, visibility) = lk.order[lk.pos];
            let d = &mut self.dylibs[did as usize];
            if d.removed {
                let name = d.shared.name.clone();
                return self.fail_lookup(id, Error::DylibRemoved(name), fx);
            }
            let mut missing: SmallVec<[usize; 4]> = SmallVec::new();
            for (i, (name, _)) in lk.names.iter().enumerate() {
                if lk.found[i].sym.is_some() {
                    continue;
                }
                match d.shared.index.sym(name) {
                    Some(sid) => {
                        let visible = visibility == DylibLookup::All
                            || self.syms[sid as usize].flags.is_exported();
                        if visible {
                            lk.found[i].sym = Some(sid);
                            lk.found[i].at = lk.pos as u32;
                        }
                    }
                    None => missing.push(i),
                }
            }
            if !missing.is_empty() && ask_generators(core, id, lk, d, visibility, &missing, fx) {
                // Suspended: inside a generator, or queued for one.
                return;
            }
            lk.pos += 1;
            lk.next_gen = 0;
        }
    }

    pub(super) fn finish_search(&mut self, core: &Arc<SessionCore>, id: u64, fx: &mut Effects) {
        let lk = &mut self.lookups.get_mut(&id).expect("lookup exists");
        let missing: Vec<SymbolName> = lk
            .names
            .iter()
            .zip(lk.found.iter().map(|f| f.sym))
            .filter(|((_, how), m)| m.is_none() && *how == SymbolLookup::Required)
            .map(|((n, _), _)| n.clone())
            .collect();
        if !missing.is_empty() {
            if lk.await_definitions {
                lk.parked = true;
                for &(did, _) in &lk.order {
                    self.dylibs[did as usize].awaiting.insert(id);
                }
                return;
            }
            return self.fail_lookup(id, Error::SymbolsNotFound { names: missing }, fx);
        }
        if lk.flags_reply.is_some() {
            let lk = self.lookups.remove(&id).expect("lookup exists");
            let flags = lk
                .names
                .iter()
                .zip(lk.found.iter().map(|f| f.sym))
                .filter_map(|((n, _), m)| m.map(|sid| (n.clone(), self.syms[sid as usize].flags)))
                .collect();
            if let Some(reply) = lk.flags_reply {
                reply.send(Ok(flags));
            }
            return;
        }
        self.bind(core, id, fx);
    }
}
