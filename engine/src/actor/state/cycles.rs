//! Blocking-cycle detection: a materializer blocked on a lookup that
//! transitively waits on that same materializer.

use std::fmt::Write as _;

use super::{FixedSet, State};
use crate::actor::{Effects, RespId, SymId};
use crate::error::Error;
use crate::symbol::SymbolState;

impl State {
    /// Who must act for `sid` to progress: its materializer, or — when it is
    /// emitted and waiting — the materializers of what it waits on.
    pub(super) fn owners(&self, sid: SymId, out: &mut Vec<(RespId, SymId)>) {
        let s = &self.syms[sid as usize];
        match s.state {
            SymbolState::Materializing | SymbolState::Resolved => {
                out.extend(s.resp.map(|r| (r, sid)))
            }
            SymbolState::Emitted => {
                for b in self.graph.blockers(sid, 64) {
                    let bs = &self.syms[b as usize];
                    if matches!(bs.state, SymbolState::Materializing | SymbolState::Resolved) {
                        out.extend(bs.resp.map(|r| (r, b)));
                    }
                }
            }
            _ => {}
        }
    }

    /// If the materializer `start`, blocked on lookup `id`, transitively
    /// waits on itself, fails that lookup with the cycle spelled out.
    pub(super) fn check_blocking_cycle(&mut self, start: RespId, id: u64, fx: &mut Effects) {
        let mut visited = FixedSet::default();
        visited.insert(start);
        let mut stack = vec![(id, start, Vec::<String>::new())];
        let mut owners = Vec::new();
        while let Some((lookup, waiter, path)) = stack.pop() {
            let Some(lk) = self.lookups.get(&lookup) else {
                continue;
            };
            for &sid in &lk.pending {
                if lk.state.is_met_by(self.syms[sid as usize].state) {
                    continue;
                }
                owners.clear();
                self.owners(sid, &mut owners);
                for &(owner, via) in &owners {
                    let mut step = String::new();
                    let _ = write!(
                        step,
                        "unit '{}' waits for {}",
                        self.resp_name(waiter),
                        self.qname(via)
                    );
                    let mut next_path = path.clone();
                    next_path.push(step);
                    if owner == start {
                        next_path.push(format!("unit '{}'", self.resp_name(start)));
                        return self.fail_lookup(id, Error::BlockingCycle { cycle: next_path }, fx);
                    }
                    if visited.insert(owner)
                        && let Some(&next) = self.blocked.get(&owner)
                    {
                        stack.push((next, owner, next_path));
                    }
                }
            }
        }
    }
}
