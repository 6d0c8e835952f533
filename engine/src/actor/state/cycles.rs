//! Blocking-cycle detection: a materializer blocked on a lookup that
//! transitively waits on that same materializer.

use super::{FixedSet, State};
use crate::actor::{Effects, RespId, SymId};
use crate::error::Error;
use crate::symbol::SymbolState;
use crate::sync::FixedMap;

impl State {
    /// Who must act for `sid` to progress: its materializer, or — when it is
    /// emitted and waiting — the materializers of what it waits on.
    pub(super) fn owners(&self, sid: SymId, out: &mut Vec<(RespId, SymId)>) {
        let s = &self.syms[sid as usize];
        match s.state {
            SymbolState::Materializing | SymbolState::Resolved => {
                out.extend(s.resp.get().map(|r| (r, sid)))
            }
            SymbolState::Emitted => {
                for b in self.graph.blockers(sid, 64) {
                    let bs = &self.syms[b as usize];
                    if matches!(bs.state, SymbolState::Materializing | SymbolState::Resolved) {
                        out.extend(bs.resp.get().map(|r| (r, b)));
                    }
                }
            }
            _ => {}
        }
    }

    /// A blocking wait for `lookup` began inside the materializations
    /// `resps` (one thread's stack, innermost last): records them as blocked
    /// on it and, once the lookup is bound, checks for a cycle.
    pub(super) fn blocked_wait(&mut self, lookup: u64, resps: &[RespId], fx: &mut Effects) {
        let Some(lk) = self.lookups.get(&lookup) else {
            return;
        };
        let bound = lk.bound;
        self.block(lookup, resps);
        if bound {
            self.check_blocking_cycle(lookup, fx);
        }
    }

    /// Records `resps` as unable to progress until lookup `id` completes.
    pub(super) fn block(&mut self, id: u64, resps: &[RespId]) {
        let Some(lk) = self.lookups.get_mut(&id) else {
            return;
        };
        for &resp in resps {
            if lk.blocked_resps.contains(&resp) {
                continue;
            }
            lk.blocked_resps.push(resp);
            self.blocked.entry(resp).or_default().push(id);
        }
    }

    /// Lookup `id` is done: `resps` are no longer blocked on it.
    pub(super) fn unblock(&mut self, id: u64, resps: &[RespId]) {
        for resp in resps {
            if let Some(lookups) = self.blocked.get_mut(resp) {
                lookups.retain(|l| *l != id);
                if lookups.is_empty() {
                    self.blocked.remove(resp);
                }
            }
        }
    }

    /// If the materializers blocked on lookup `id` transitively wait on one
    /// of themselves, fails that lookup with the cycle spelled out. "Wait
    /// on" follows: lookup → symbols it waits for → their owners (see
    /// `owners`) → the lookups those owners are blocked on. A materializer
    /// blocked on `id` closes the cycle — the innermost one by waiting, an
    /// outer one of the same thread because the innermost runs nested above
    /// it (the in-place dispatcher, or a helping wait), so it cannot return
    /// before that wait ends.
    pub(super) fn check_blocking_cycle(&mut self, id: u64, fx: &mut Effects) {
        let Some(&start) = self.lookups.get(&id).and_then(|lk| lk.blocked_resps.last()) else {
            return;
        };
        // How each materializer met was first reached: (the one waiting,
        // the symbol it waits for). The cycle's text is built from it only
        // when one closes, so a search that finds none formats nothing.
        let mut reached: FixedMap<RespId, (RespId, SymId)> = FixedMap::default();
        let mut visited = FixedSet::default();
        visited.insert(start);
        let mut stack = vec![(id, start)];
        let mut owners = Vec::new();
        while let Some((lookup, waiter)) = stack.pop() {
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
                    if self.blocked.get(&owner).is_some_and(|l| l.contains(&id)) {
                        let mut cycle = self.path_to(&reached, waiter);
                        cycle.push(self.wait_step(waiter, via));
                        cycle.push(self.closing_step(owner, id));
                        return self.fail_lookup(id, Error::BlockingCycle { cycle }, fx);
                    }
                    if visited.insert(owner) {
                        reached.insert(owner, (waiter, via));
                        if let Some(next) = self.blocked.get(&owner) {
                            stack.extend(next.iter().map(|&next| (next, owner)));
                        }
                    }
                }
            }
        }
    }

    /// The steps from the search's start to `resp`, following `reached`
    /// back (the start is the one materializer not in it).
    fn path_to(&self, reached: &FixedMap<RespId, (RespId, SymId)>, resp: RespId) -> Vec<String> {
        let mut path = Vec::new();
        let mut at = resp;
        while let Some(&(waiter, via)) = reached.get(&at) {
            path.push(self.wait_step(waiter, via));
            at = waiter;
        }
        path.reverse();
        path
    }

    fn wait_step(&self, waiter: RespId, via: SymId) -> String {
        format!(
            "unit '{}' waits for {}",
            self.resp_name(waiter),
            self.qname(via)
        )
    }

    /// The last step of a cycle through lookup `id`, closed by `owner`, one
    /// of the materializers blocked on it: the innermost one waits itself;
    /// an outer one waits for those running above it on its thread.
    fn closing_step(&self, owner: RespId, id: u64) -> String {
        let blocked: &[RespId] = self.lookups.get(&id).map_or(&[], |lk| &lk.blocked_resps);
        let above = blocked
            .iter()
            .position(|&r| r == owner)
            .map_or(&[][..], |at| &blocked[at + 1..]);
        if above.is_empty() {
            return format!("unit '{}'", self.resp_name(owner));
        }
        let names: Vec<String> = above
            .iter()
            .map(|&r| format!("unit '{}'", self.resp_name(r)))
            .collect();
        format!(
            "unit '{}', which cannot return before {}, nested above it on its thread, return",
            self.resp_name(owner),
            names.join(" and ")
        )
    }
}
