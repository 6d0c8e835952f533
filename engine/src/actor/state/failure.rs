//! Failure: failing symbols (sticky, unpublished, their waiters failed),
//! propagating to dependants through the graph, and failing a whole
//! responsibility.

use super::SlabKey;
use super::{PendingLookup, State};
use crate::actor::{Effects, RespId, SymId};
use crate::error::{Error, QualifiedName};
use crate::symbol::SymbolState;
use crate::sync::Arc;

impl State {
    pub(super) fn root_cause_of(&self, sid: SymId) -> Arc<Error> {
        match self.failures.get(&sid).map(|e| &**e) {
            Some(Error::Failed { cause, .. }) => cause.clone(),
            Some(other) => Arc::new(other.clone()),
            None => Arc::new(Error::msg("unknown failure")),
        }
    }

    /// Fails one symbol with `cause` (arriving through `via`, if any):
    /// sticky state, unpublished from the ready index, its lookups failed.
    pub(super) fn fail_one(
        &mut self,
        sid: SymId,
        via: Option<QualifiedName>,
        cause: Arc<Error>,
        fx: &mut Effects,
    ) -> Arc<Error> {
        if self.syms[sid as usize].state == SymbolState::Failed
            && let Some(existing) = self.failures.get(&sid)
        {
            return existing.clone();
        }
        let err = Arc::new(Error::Failed {
            symbols: vec![self.qname(sid)],
            via,
            cause,
        });
        let s = &mut self.syms[sid as usize];
        s.state = SymbolState::Failed;
        s.resp = SlabKey::NONE;
        self.failures.insert(sid, err.clone());
        let s = &self.syms[sid as usize];
        let d = &self.dylibs[s.dylib as usize];
        if d.shared.index.sym(&s.name) == Some(sid) {
            d.shared.index.update(&s.name, |e| e.ready = false);
        }
        let waiters = std::mem::take(&mut self.syms[sid as usize].waiters);
        self.failing
            .lookups
            .extend(waiters.iter().map(|&(id, _, _)| id));
        // Outside a batch, this failure is a batch of its own.
        self.begin_failures();
        self.end_failures(fx);
        err
    }

    /// Starts a batch of failures: lookups waiting on the symbols failed in
    /// it fail when the outermost batch ends.
    pub(super) fn begin_failures(&mut self) {
        self.failing.depth += 1;
    }

    /// Ends a batch of failures; the outermost fails the lookups that
    /// waited on its symbols, each naming all of its symbols that failed.
    pub(super) fn end_failures(&mut self, fx: &mut Effects) {
        self.failing.depth -= 1;
        if self.failing.depth > 0 {
            return;
        }
        let mut ids = std::mem::take(&mut self.failing.lookups);
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if let Some(err) = self.lookups.get(&id).and_then(|lk| self.lookup_failure(lk)) {
                self.fail_lookup(id, err, fx);
            }
        }
    }

    /// The error of a lookup some of whose symbols failed: every failed
    /// symbol it asked for (with its dylib), and the first one's cause.
    /// `None` if none failed.
    pub(super) fn lookup_failure(&self, lk: &PendingLookup) -> Option<Error> {
        // Every failed symbol has its cause recorded: with none recorded,
        // none of the lookup's failed (every successful bind asks).
        if self.failures.is_empty() {
            return None;
        }
        let mut symbols = Vec::new();
        let mut first: Option<&Error> = None;
        for f in &lk.found {
            let Some(sid) = f.sym else { continue };
            let s = &self.syms[sid as usize];
            if s.state != SymbolState::Failed {
                continue;
            }
            let qname = self.qname(sid);
            if !symbols.contains(&qname) {
                symbols.push(qname);
            }
            first = first.or(self.failures.get(&sid).map(|e| &**e));
        }
        let first = first?;
        Some(match first {
            Error::Failed { via, cause, .. } => Error::Failed {
                symbols,
                via: via.clone(),
                cause: cause.clone(),
            },
            other => Error::Failed {
                symbols,
                via: None,
                cause: Arc::new(other.clone()),
            },
        })
    }

    /// Fails `roots` with their causes, then everything that transitively
    /// waits on them, with the root's cause and the root as `via`.
    pub(super) fn fail_syms(&mut self, roots: Vec<(SymId, Arc<Error>)>, fx: &mut Effects) {
        if roots.is_empty() {
            return;
        }
        self.begin_failures();
        let ids: Vec<SymId> = roots.iter().map(|&(s, _)| s).collect();
        for (sid, cause) in roots {
            let cause = match &*cause {
                Error::Failed { cause, .. } => cause.clone(),
                _ => cause,
            };
            self.fail_one(sid, None, cause, fx);
        }
        let mut dependants = Vec::new();
        self.graph.fail(&ids, &mut dependants);
        self.fail_dependants(&ids, dependants, fx);
        self.end_failures(fx);
    }

    pub(super) fn fail_dependants(
        &mut self,
        roots: &[SymId],
        dependants: Vec<(SymId, SymId)>,
        fx: &mut Effects,
    ) {
        self.begin_failures();
        for (sid, root) in dependants {
            if roots.contains(&sid) && sid == root {
                continue;
            }
            let via = self.qname(root);
            let cause = self.root_cause_of(root);
            self.fail_one(sid, Some(via), cause, fx);
        }
        self.end_failures(fx);
    }

    pub(super) fn fail_resp(&mut self, resp: RespId, cause: Error, fx: &mut Effects) {
        if !self.resps.contains(resp) {
            return;
        }
        let r = self.take_resp(resp);
        self.blocked.remove(&resp);
        if r.defunct {
            // Removal already failed everything it owed.
            return;
        }
        let mut owed: Vec<SymId> = r
            .owed
            .into_iter()
            .filter(|&s| self.syms[s as usize].resp.get() == Some(resp))
            .collect();
        owed.sort_unstable();
        owed.dedup();
        let cause = match cause {
            Error::Abandoned { unit, symbols } if symbols.is_empty() => Error::Abandoned {
                unit,
                symbols: owed
                    .iter()
                    .map(|&s| self.syms[s as usize].name.clone())
                    .collect(),
            },
            other => other,
        };
        let cause = Arc::new(cause);
        self.fail_syms(owed.into_iter().map(|s| (s, cause.clone())).collect(), fx);
    }
}
