//! Emission and readiness: a responsibility emitting its symbols in
//! dependence groups, the dependency graph deciding what is Ready, and
//! publishing Ready symbols.

use super::SlabKey;
use super::{EmitScratch, State};
use crate::actor::{Effects, RespId, SessionCore, SymId};
use crate::error::{Error, Result};
use crate::graph::EmitGroup;
use crate::index::IndexEntry;
use crate::responsibility::DependenceGroup;
use crate::symbol::{SymbolDef, SymbolState};
use crate::sync::Arc;

impl State {
    pub(crate) fn emit(
        &mut self,
        core: &Arc<SessionCore>,
        resp: RespId,
        groups: Vec<DependenceGroup>,
        fx: &mut Effects,
    ) -> Result<()> {
        // Reused buffers: an emit allocates nothing of its own in steady state.
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.emit_with(core, resp, &groups, &mut scratch, fx);
        scratch.clear();
        self.scratch = scratch;
        result
    }

    pub(super) fn emit_with(
        &mut self,
        core: &Arc<SessionCore>,
        resp: RespId,
        groups: &[DependenceGroup],
        sc: &mut EmitScratch,
        fx: &mut Effects,
    ) -> Result<()> {
        if let Err(e) = self.owned_resp(resp) {
            if self.resps.contains(resp) {
                self.take_resp(resp);
            }
            return Err(e);
        }
        let (missing_deps, misuse) = self.map_groups(resp, groups, sc);
        if let Some(e) = misuse {
            self.fail_resp(resp, e.clone(), fx);
            return Err(e);
        }
        let r = self.take_resp(resp);
        self.blocked.remove(&resp);
        if !missing_deps.is_empty() {
            let cause = Arc::new(Error::SymbolsNotFound {
                names: missing_deps,
            });
            let all: Vec<(SymId, Arc<Error>)> = r
                .owed
                .iter()
                .filter(|&&s| self.syms[s as usize].resp.get() == Some(resp))
                .map(|&s| (s, cause.clone()))
                .collect();
            let first = all.first().map(|&(s, _)| s);
            self.fail_syms(all, fx);
            return Err(first
                .and_then(|s| self.failures.get(&s).map(|e| (**e).clone()))
                .unwrap_or_else(|| (*cause).clone()));
        }
        for &sid in &sc.defs {
            let s = &mut self.syms[sid as usize];
            s.resp = SlabKey::NONE;
            s.state = SymbolState::Emitted;
        }
        let failed_groups = self.groups_on_failed_deps(sc);
        let first_error = self.fail_groups(sc, &failed_groups, fx);
        let lazy_deps = self.lazy_units_depended_on(sc, &failed_groups);
        let emit_groups: Vec<EmitGroup<'_>> = sc
            .spans
            .iter()
            .enumerate()
            .filter(|(gi, _)| !failed_groups.iter().any(|&(g, _)| g == *gi))
            .map(|(_, (defs, deps))| EmitGroup {
                defs: &sc.defs[defs.clone()],
                deps: &sc.deps[deps.clone()],
            })
            .collect();
        self.graph.emit(&emit_groups, &mut sc.ready);
        drop(emit_groups);
        // All published first, then their waiters told: the index writes
        // run back to back, their cache misses overlapping.
        for &sid in &sc.ready {
            self.publish_ready(sid);
        }
        for &sid in &sc.ready {
            self.notify_waiters(sid, fx);
        }
        for uid in lazy_deps {
            self.start_unit(core, uid, fx);
        }
        first_error.map_or(Ok(()), |e: Arc<Error>| Err((*e).clone()))
    }

    /// Maps each group's names to symbols into `sc` (group i owns
    /// `defs[spans[i].0]` and `deps[spans[i].1]`; dependencies already Ready
    /// are left out), adding the owed symbols of no group as one more group
    /// with no dependencies. Returns the dependencies no dylib defines and
    /// the first misuse, which fails the whole unit.
    fn map_groups(
        &self,
        resp: RespId,
        groups: &[DependenceGroup],
        sc: &mut EmitScratch,
    ) -> (Vec<crate::name::SymbolName>, Option<Error>) {
        let mut missing_deps = Vec::new();
        let mut misuse = None;
        let mut hint = 0;
        for g in groups {
            let (d0, p0) = (sc.defs.len(), sc.deps.len());
            for name in &g.symbols {
                match self.owned_sym_hinted(resp, name, &mut hint) {
                    Ok(sid) => sc.defs.push(sid),
                    Err(e) => {
                        misuse.get_or_insert(e);
                    }
                }
            }
            for (dylib, names) in &g.dependencies {
                let d = &self.dylibs[dylib.id() as usize];
                for name in names {
                    match d.shared.index.sym(name) {
                        Some(dep) => {
                            if self.syms[dep as usize].state != SymbolState::Ready {
                                sc.deps.push(dep);
                            }
                        }
                        None => missing_deps.push(name.clone()),
                    }
                }
            }
            sc.spans.push((d0..sc.defs.len(), p0..sc.deps.len()));
        }
        sc.sorted.extend_from_slice(&sc.defs);
        sc.sorted.sort_unstable();
        if let Some(w) = sc.sorted.windows(2).find(|w| w[0] == w[1]) {
            misuse.get_or_insert(Error::Usage(format!(
                "unit '{}' emitted {} in two dependence groups",
                self.resps[resp].unit_name,
                self.qname(w[0])
            )));
        }
        // Owed symbols in no group form one more group with no dependencies.
        let d0 = sc.defs.len();
        for &s in &self.resps[resp].owed {
            if self.syms[s as usize].resp.get() == Some(resp)
                && sc.sorted.binary_search(&s).is_err()
            {
                sc.defs.push(s);
            }
        }
        if sc.defs.len() > d0 {
            let p = sc.deps.len();
            sc.spans.push((d0..sc.defs.len(), p..p));
        }
        for &sid in &sc.defs {
            let s = &self.syms[sid as usize];
            if s.state == SymbolState::Materializing && !s.flags.is_side_effects_only() {
                misuse.get_or_insert(Error::Usage(format!(
                    "unit '{}' emitted {} before resolving it",
                    self.resps[resp].unit_name,
                    self.qname(sid)
                )));
            }
        }
        (missing_deps, misuse)
    }

    /// The groups depending on an already-failed symbol (with that
    /// symbol), to a fixpoint: a group may depend on another group of this
    /// same emit. Their symbols are marked Failed.
    fn groups_on_failed_deps(&mut self, sc: &EmitScratch) -> Vec<(usize, SymId)> {
        let mut failed_groups: Vec<(usize, SymId)> = Vec::new();
        loop {
            let mut changed = false;
            for (gi, (defs, deps)) in sc.spans.iter().enumerate() {
                if failed_groups.iter().any(|&(g, _)| g == gi) {
                    continue;
                }
                if let Some(&bad) = sc.deps[deps.clone()]
                    .iter()
                    .find(|&&d| self.syms[d as usize].state == SymbolState::Failed)
                {
                    for &sid in &sc.defs[defs.clone()] {
                        self.syms[sid as usize].state = SymbolState::Failed;
                    }
                    failed_groups.push((gi, bad));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        failed_groups
    }

    /// Fails the symbols of `failed_groups` naming the failed dependency
    /// and its root cause, and their dependants; returns the first error.
    fn fail_groups(
        &mut self,
        sc: &EmitScratch,
        failed_groups: &[(usize, SymId)],
        fx: &mut Effects,
    ) -> Option<Arc<Error>> {
        let mut first_error = None;
        self.begin_failures();
        for &(gi, bad) in failed_groups {
            let via = self.qname(bad);
            let root = self.root_cause_of(bad);
            let ids = sc.defs[sc.spans[gi].0.clone()].to_vec();
            for &sid in &ids {
                self.syms[sid as usize].state = SymbolState::Emitted;
                let err = self.fail_one(sid, Some(via.clone()), root.clone(), fx);
                first_error.get_or_insert(err);
            }
            let mut dependants = Vec::new();
            self.graph.fail(&ids, &mut dependants);
            self.fail_dependants(&ids, dependants, fx);
        }
        self.end_failures(fx);
        first_error
    }

    /// Units of the lazy symbols the emitting groups (not failed) depend
    /// on: the emitter was linked against them, so they will be needed.
    fn lazy_units_depended_on(
        &self,
        sc: &EmitScratch,
        failed_groups: &[(usize, SymId)],
    ) -> Vec<usize> {
        let mut lazy_deps = Vec::new();
        for (gi, (_, deps)) in sc.spans.iter().enumerate() {
            if failed_groups.iter().any(|&(g, _)| g == gi) {
                continue;
            }
            for &dep in &sc.deps[deps.clone()] {
                if self.syms[dep as usize].state == SymbolState::Lazy {
                    lazy_deps.extend(self.syms[dep as usize].unit.get());
                }
            }
        }
        lazy_deps
    }

    pub(super) fn mark_ready(&mut self, sid: SymId, fx: &mut Effects) {
        self.publish_ready(sid);
        self.notify_waiters(sid, fx);
    }

    /// `sid` Ready, in its state and its dylib's index (lookups that read
    /// the index without the actor find it now); its waiters not told yet.
    fn publish_ready(&mut self, sid: SymId) {
        let s = &mut self.syms[sid as usize];
        s.state = SymbolState::Ready;
        let def = SymbolDef::new(s.address, s.flags);
        let index = &self.dylibs[s.dylib as usize].shared.index;
        index.set(&s.name, IndexEntry { def, ready: true }, sid);
    }
}
