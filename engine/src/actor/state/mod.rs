//! The session state and what each message does to it. Only the current
//! driver of the mailbox touches this; nothing here blocks or runs user code
//! (that is pushed out as [`Effect`]s).
//!
//! This file holds the state's types and the message dispatch
//! ([`State::handle`]); each concern has its own `impl State` block:
//!
//! - `dylibs`: creating and removing dylibs;
//! - `trackers`: resource trackers and their lists of units and
//!   responsibilities (remove, transfer);
//! - `define`: adding definitions, weak overrides, waking what awaits them;
//! - `search`: a lookup's walk of its search order;
//! - `generators`: the end of a generator call and its queue;
//! - `removal`: removing named symbols and generators from a dylib;
//! - `bind`: lookups waiting on symbols, completing and failing;
//! - `units`: starting materialization, a responsibility's requests;
//! - `emission`: emitting dependence groups, readiness, publishing;
//! - `failure`: failing symbols, dependants and responsibilities;
//! - `cycles`: blocking-cycle detection.
//! - `reclaim`: giving the records of removed code back (symbol ids to a
//!   free list once nothing refers to them), and the table sizes that
//!   show it.

mod bind;
mod cycles;
mod define;
mod dylibs;
mod emission;
mod failure;
mod generators;
mod reclaim;
mod records;
mod removal;
mod search;
mod trackers;
mod units;

pub use reclaim::TableSizes;

use std::collections::VecDeque;

use slab::Slab;
use smallvec::SmallVec;

use super::{
    BatchKey, DylibId, DylibShared, Effect, Effects, Msg, Reply, RespId, SearchIds, SessionCore,
    SymId, TrackerId, UnitCell,
};
use crate::error::{Error, QualifiedName, Result};
use crate::generator::Generator;
use crate::graph::DepGraph;
use crate::lookup::{DylibLookup, FlagsMap, LookupKind, LookupShared, NameList};
use crate::name::SymbolName;
use crate::session::Dylib;
use crate::symbol::{RequiredState, SymbolDef, SymbolFlags, SymbolState};
use crate::sync::{Arc, FixedMap, FixedState, Ordering, Weak};
use crate::tracker::{ResourceManager, TrackerShared};

type FixedSet<T> = std::collections::HashSet<T, FixedState>;

/// Lookups to fail once the failures being applied are all applied.
#[derive(Default)]
struct FailingLookups {
    /// Nesting of failure batches in progress.
    depth: u32,
    lookups: Vec<u64>,
}

/// All mutable session state.
pub(crate) struct State {
    dylibs: Vec<DylibState>,
    syms: records::SymRecords,
    /// Ids of symbol records given back, reused before `syms` grows.
    free_syms: Vec<SymId>,
    /// Symbols of removed trackers whose ids something may still hold
    /// (see `reclaim`).
    retiring: Vec<SymId>,
    /// The name a free symbol record holds (none of the session's).
    no_name: SymbolName,
    /// Removed dylibs whose slot may be reused once nothing names them
    /// (see `reclaim`), and those that wait out the mailbox, with the
    /// epoch they started waiting in.
    removed_dylibs: Vec<DylibId>,
    quarantined_dylibs: Vec<(DylibId, u64)>,
    /// Advanced by the mailbox: by 1 when a driver takes a batch of
    /// messages, by 2 when a request is applied directly (nothing queued,
    /// nobody driving). Every message queued before a point in epoch `e`
    /// has been handled once the epoch is `e + 2`.
    epoch: u64,
    units: Slab<UnitEntry>,
    resps: Slab<RespEntry>,
    /// Live trackers by id. Ids are never reused (removed trackers leave),
    /// so a handle of a removed tracker names none.
    trackers: FixedMap<TrackerId, TrackerEntry>,
    next_tracker: TrackerId,
    lookups: FixedMap<u64, PendingLookup>,
    graph: DepGraph,
    /// Materializers blocked on lookups: responsibility → lookups (a
    /// materializer's own wait, and those of materializations nested above
    /// it on its thread).
    blocked: FixedMap<RespId, SmallVec<[u64; 1]>>,
    managers: Vec<Arc<dyn ResourceManager>>,
    next_key: u64,
    ended: bool,
    scratch: EmitScratch,
    /// Where in a drive's effects the batch of each key was last started
    /// (a cache, checked before use: the place may be an older drive's).
    batch_places: Vec<(BatchKey, usize)>,
    /// Lookups waiting on symbols failed in the current batch of failures:
    /// failed together once the batch is done, so each error names every
    /// symbol of the lookup that failed.
    failing: FailingLookups,
    /// The error of each failed symbol (kept out of `Sym`: most never
    /// fail). An entry leaves with its record (`free_sym`).
    failures: FixedMap<SymId, Arc<Error>>,
}

/// Buffers `emit` reuses from call to call.
#[derive(Default)]
struct EmitScratch {
    defs: Vec<SymId>,
    deps: Vec<SymId>,
    spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    sorted: Vec<SymId>,
    ready: Vec<SymId>,
}

impl EmitScratch {
    fn clear(&mut self) {
        self.defs.clear();
        self.deps.clear();
        self.spans.clear();
        self.sorted.clear();
        self.ready.clear();
    }
}

struct DylibState {
    shared: Arc<DylibShared>,
    /// Once removed: the handles' own shared part (this record keeps a
    /// small stand-in), to tell when no handle is left.
    original: Weak<DylibShared>,
    link_order: Vec<(DylibId, DylibLookup)>,
    generators: Vec<GenEntry>,
    trackers: Vec<TrackerId>,
    /// Lookups waiting for names this dylib may yet define.
    awaiting: FixedSet<u64>,
    removed: bool,
}

struct GenEntry {
    generator: Arc<dyn Generator>,
    concurrent: bool,
    /// Removed: passed over by every search (entries keep their positions,
    /// which name them).
    removed: bool,
    in_flight: usize,
    /// Lookups waiting for the generator: for a serialized one, its turn;
    /// for a concurrent one, the end of a call asking one of its names
    /// (see `generators`: never non-empty while no call is in flight).
    queue: VecDeque<u64>,
    /// A concurrent generator's names being asked by calls in flight (each
    /// by one call at most).
    asking: FixedSet<SymbolName>,
    /// Names asked and not defined since the dylib last gained a definition.
    misses: FixedSet<SymbolName>,
}

/// One symbol's record: 64 bytes (`size_of_sym_record` pins it), one
/// cache line. Its unit and responsibility are slab keys in 32 bits, and
/// the error of a failed symbol is kept aside (`State::failures`): most
/// symbols never fail.
struct Sym {
    dylib: DylibId,
    name: SymbolName,
    flags: SymbolFlags,
    state: SymbolState,
    address: u64,
    /// Its unit (`units` key), while it has one.
    unit: SlabKey,
    /// The responsibility it is owed by (`resps` key), while one owes it.
    resp: SlabKey,
    tracker: TrackerId,
    /// Lookups waiting on the symbol: the lookup, its slot for the symbol,
    /// and the state it waits for (kept here, so a state change that meets
    /// none of them costs no lookup of theirs).
    waiters: SmallVec<[(u64, u32, RequiredState); 1]>,
}

/// An optional slab key (of `State::units` or `State::resps`) in 32 bits:
/// `u32::MAX` is none. A slab reuses its vacant keys, so its keys stay
/// below the number of entries live at once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct SlabKey(u32);

impl SlabKey {
    const NONE: SlabKey = SlabKey(u32::MAX);

    fn some(key: usize) -> SlabKey {
        match u32::try_from(key) {
            Ok(k) if k != u32::MAX => SlabKey(k),
            _ => unreachable!("more than 2^32 - 1 live units or responsibilities"),
        }
    }

    fn get(self) -> Option<usize> {
        (self.0 != u32::MAX).then_some(self.0 as usize)
    }

    /// The key, leaving none.
    fn take(&mut self) -> Option<usize> {
        std::mem::replace(self, SlabKey::NONE).get()
    }
}

impl From<Option<usize>> for SlabKey {
    fn from(key: Option<usize>) -> SlabKey {
        key.map_or(SlabKey::NONE, SlabKey::some)
    }
}

struct UnitEntry {
    /// The unit; none for fixed addresses, which are in the symbols already:
    /// the actor resolves and emits those itself instead of running a unit.
    cell: Option<UnitCell>,
    /// The unit's name (for a unit that runs).
    name: Option<Arc<str>>,
    dylib: DylibId,
    tracker: TrackerId,
    syms: SmallVec<[SymId; 4]>,
    /// Position in its tracker's `units`.
    at: usize,
}

struct RespEntry {
    dylib: DylibId,
    tracker: TrackerId,
    unit_name: Arc<str>,
    /// Symbols handed to this responsibility. A symbol is still owed only
    /// while its `resp` points here: entries go stale (and are skipped)
    /// when a symbol fails, is handed back or is delegated.
    owed: SmallVec<[SymId; 4]>,
    defunct: bool,
    /// Position in its tracker's `resps` ([`UNLISTED`] once the tracker
    /// was removed).
    at: usize,
}

struct TrackerEntry {
    shared: Arc<TrackerShared>,
    dylib: DylibId,
    /// Every symbol defined through it (also those overridden since:
    /// failed and unpublished, removal passes over them).
    syms: Vec<SymId>,
    /// Its live units and responsibilities, unordered; each entry knows
    /// its position here (`at`), so removing one is a `swap_remove`.
    units: Vec<usize>,
    resps: Vec<RespId>,
}

/// An entry's position in a [`TrackerEntry`] list after its tracker was
/// removed: listed nowhere.
const UNLISTED: usize = usize::MAX;

/// One name of a pending lookup.
#[derive(Clone, Copy, Default)]
struct Found {
    /// The symbol it matched.
    sym: Option<SymId>,
    /// Index in the search order of the dylib it matched in.
    at: u32,
    /// Its definition, once in the required state.
    def: Option<SymbolDef>,
}

struct PendingLookup {
    shared: Arc<LookupShared>,
    order: SearchIds,
    names: NameList,
    state: RequiredState,
    kind: LookupKind,
    await_definitions: bool,
    flags_reply: Option<Reply<Result<FlagsMap>>>,
    /// The materializer that cannot progress until this completes.
    /// The materializers that cannot progress until this completes
    /// (innermost last); each lists this lookup in `State::blocked`.
    blocked_resps: SmallVec<[RespId; 1]>,
    pos: usize,
    next_gen: usize,
    parked: bool,
    /// Per name: where the search found it, and its definition once the
    /// symbol reached the required state.
    found: SmallVec<[Found; 1]>,
    bound: bool,

    remaining: usize,
    pending: SmallVec<[SymId; 2]>,
}

impl State {
    pub(crate) fn new() -> Self {
        State {
            dylibs: Vec::new(),
            syms: records::SymRecords::default(),
            free_syms: Vec::new(),
            retiring: Vec::new(),
            no_name: SymbolName::unnamed(),
            removed_dylibs: Vec::new(),
            quarantined_dylibs: Vec::new(),
            epoch: 0,
            units: Slab::new(),
            resps: Slab::new(),
            trackers: FixedMap::default(),
            next_tracker: 0,
            lookups: FixedMap::default(),
            graph: DepGraph::new(),
            blocked: FixedMap::default(),
            managers: Vec::new(),
            next_key: 1,
            ended: false,
            scratch: EmitScratch::default(),
            batch_places: Vec::new(),
            failing: FailingLookups::default(),
            failures: FixedMap::default(),
        }
    }

    /// The state of `name` in `dylib`, if defined.
    pub(crate) fn symbol_state(&self, dylib: DylibId, name: &SymbolName) -> Option<SymbolState> {
        self.dylibs
            .get(dylib as usize)
            .and_then(|d| d.shared.index.sym(name))
            .map(|s| self.syms[s as usize].state)
    }

    /// The mailbox took a batch of messages (`direct` false), or applies
    /// one request directly with nothing queued (`direct` true).
    pub(crate) fn advance_epoch(&mut self, direct: bool) {
        self.epoch += if direct { 2 } else { 1 };
    }

    /// Whether `Session::end` has run.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended
    }

    /// Applies one message.
    pub(crate) fn handle(&mut self, core: &Arc<SessionCore>, msg: Msg, fx: &mut Effects) {
        if self.ended {
            return refuse(msg, Refusal::Ended, &|| self.table_sizes(), fx);
        }
        match msg {
            Msg::CreateDylib { name, reply } => reply.send(self.create_dylib(name)),
            Msg::FindDylib { name, reply } => reply.send(
                self.dylibs
                    .iter()
                    .find(|d| !d.removed && &*d.shared.name == name.as_str())
                    .map(|d| d.shared.clone()),
            ),
            Msg::Define {
                dylib,
                tracker,
                kind,
                reply,
            } => {
                let result = self.define(core, dylib, tracker, kind, fx);
                reply.send(result);
            }
            Msg::Lookup(msg) => self.start_lookup(core, *msg, fx),
            Msg::GeneratorDone {
                lookup,
                dylib,
                generator,
                asked,
                result,
            } => self.generator_done(core, lookup, dylib, generator, asked, result, fx),
            Msg::Resolve { resp, defs, reply } => reply.send(self.resolve(resp, &defs, fx)),
            Msg::Emit {
                resp,
                groups,
                reply,
            } => reply.send(self.emit(core, resp, groups, fx)),
            Msg::Fail { resp, cause } => self.fail_resp(resp, cause, fx),
            Msg::Replace {
                resp,
                unit,
                unit_name,
                symbols,
                reply,
            } => reply.send(self.replace(core, resp, unit, unit_name, symbols, fx)),
            Msg::Delegate { resp, names, reply } => reply.send(self.delegate(resp, &names)),
            Msg::Absorb {
                resp,
                others,
                reply,
            } => reply.send(self.absorb(resp, &others)),
            Msg::DefineMaterializing {
                resp,
                symbols,
                reply,
            } => reply.send(self.define_materializing(core, resp, symbols, fx)),
            Msg::Owed {
                resp,
                requested_only,
                reply,
            } => reply.send(self.owed(resp, requested_only)),
            Msg::SetLinkOrder {
                dylib,
                order,
                reply,
            } => reply.send(self.set_link_order(dylib, order)),
            Msg::GetLinkOrder { dylib, reply } => reply.send(self.link_order(dylib)),
            Msg::AddGenerator {
                dylib,
                generator,
                reply,
            } => reply.send(self.add_generator(dylib, generator)),
            Msg::CreateTracker { dylib, reply } => reply.send(match self.live_dylib(dylib) {
                Ok(_) => Ok(self.new_tracker(dylib)),
                Err(e) => Err(e),
            }),
            Msg::RemoveTracker { tracker, reply } => {
                let removed = self.remove_tracker(tracker, fx);
                self.release(removed.into_iter().collect(), reply, fx);
            }
            Msg::TransferTracker { src, dst, reply } => self.transfer(src, dst, reply, fx),
            Msg::RemoveDylib { dylib, reply } => {
                let trackers = self.remove_dylib(dylib, fx);
                self.release(trackers, Some(reply), fx);
            }
            Msg::RegisterManager { manager } => self.managers.push(manager),
            Msg::RemoveGenerator {
                dylib,
                index,
                reply,
            } => reply.send(self.remove_generator(dylib, index, fx)),
            Msg::RemoveSymbols {
                dylib,
                names,
                reply,
            } => reply.send(self.remove_symbols(core, dylib, &names, fx)),
            Msg::BlockedWait { lookup, resps } => self.blocked_wait(lookup, &resps, fx),
            Msg::Cancel {
                lookup,
                timeout_millis,
            } => self.cancel(lookup, timeout_millis, fx),
            Msg::QueryState { dylib, name, reply } => reply.send(self.symbol_state(dylib, &name)),
            Msg::TableSizes { reply } => reply.send(self.table_sizes()),
            Msg::End { reply } => self.end(reply, fx),
        }
    }

    fn set_link_order(&mut self, dylib: DylibId, order: Vec<(DylibId, DylibLookup)>) -> Result<()> {
        self.live_dylib(dylib)?.link_order = order;
        Ok(())
    }

    fn link_order(&self, dylib: DylibId) -> Vec<(Arc<DylibShared>, DylibLookup)> {
        self.dylibs[dylib as usize]
            .link_order
            .iter()
            .map(|&(d, v)| (self.dylibs[d as usize].shared.clone(), v))
            .collect()
    }

    fn add_generator(&mut self, dylib: DylibId, generator: Arc<dyn Generator>) -> Result<usize> {
        let d = self.live_dylib(dylib)?;
        // Before the generator can be asked: from now on the fast path
        // does not pass over a name this dylib lacks.
        d.shared
            .status
            .fetch_or(crate::actor::DYLIB_HAS_GENERATORS, Ordering::Release);
        d.generators.push(GenEntry {
            concurrent: generator.is_concurrent(),
            removed: false,
            generator,
            in_flight: 0,
            queue: VecDeque::new(),
            asking: FixedSet::default(),
            misses: FixedSet::default(),
        });
        Ok(d.generators.len() - 1)
    }

    /// The resource managers release what the removed `trackers` held,
    /// then `reply` is sent (an effect: managers run user code).
    fn release(
        &self,
        trackers: Vec<Arc<crate::tracker::TrackerShared>>,
        reply: Option<Reply<Result<()>>>,
        fx: &mut Effects,
    ) {
        fx.push(Effect::RemoveResources {
            trackers,
            managers: self.managers.clone(),
            reply,
        });
    }

    /// Fails `lookup` (if still running): timed out, or cancelled.
    fn cancel(&mut self, lookup: u64, timeout_millis: Option<u128>, fx: &mut Effects) {
        if let Some(lk) = self.lookups.get(&lookup) {
            let err = match timeout_millis {
                Some(millis) => Error::Timeout {
                    millis,
                    waiting_for: self.unsatisfied(lk),
                },
                None => Error::Cancelled,
            };
            self.fail_lookup(lookup, err, fx);
        }
    }

    /// The session ends: every dylib is removed, every lookup fails, the
    /// resource managers release everything, then `reply` is signalled.
    fn end(&mut self, reply: Reply<()>, fx: &mut Effects) {
        let mut trackers = Vec::new();
        for id in 0..self.dylibs.len() as DylibId {
            if !self.dylibs[id as usize].removed {
                trackers.extend(self.remove_dylib(id, fx));
            }
        }
        let ids: Vec<u64> = self.lookups.keys().copied().collect();
        for id in ids {
            self.fail_lookup(id, Error::SessionEnded, fx);
        }
        self.ended = true;
        fx.push(Effect::RemoveResources {
            trackers,
            managers: std::mem::take(&mut self.managers),
            reply: None,
        });
        // Replies are sent after the removal effect above has run.
        fx.push(Effect::Signal(reply));
    }

    fn live_dylib(&mut self, dylib: DylibId) -> Result<&mut DylibState> {
        let d = &mut self.dylibs[dylib as usize];
        if d.removed {
            Err(Error::DylibRemoved(d.shared.name.clone()))
        } else {
            Ok(d)
        }
    }

    fn qname(&self, sid: SymId) -> QualifiedName {
        let s = &self.syms[sid as usize];
        QualifiedName {
            dylib: self.dylibs[s.dylib as usize].shared.name.clone(),
            name: s.name.clone(),
        }
    }

    fn dylib_handle(&self, core: &Arc<SessionCore>, dylib: DylibId) -> Dylib {
        Dylib::from_shared(core.clone(), self.dylibs[dylib as usize].shared.clone())
    }

    fn resp_name(&self, resp: RespId) -> Arc<str> {
        self.resps
            .get(resp)
            .map_or_else(|| "?".into(), |r| r.unit_name.clone())
    }
}

/// Why the actor takes no request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    /// After `end`: [`Error::SessionEnded`] (removing a tracker is fine:
    /// everything is removed already).
    Ended,
    /// In a forked child: [`Error::ForkedChild`], for removals too.
    ForkedChild,
}

impl Refusal {
    fn error(self) -> Error {
        match self {
            Refusal::Ended => Error::SessionEnded,
            Refusal::ForkedChild => Error::ForkedChild,
        }
    }
}

/// Answers `msg` as refused for `why`, without the state (a forked child
/// may not have it): `sizes` gives the table sizes a query asks for.
pub(crate) fn refuse(msg: Msg, why: Refusal, sizes: &dyn Fn() -> TableSizes, fx: &mut Effects) {
    let err = || why.error();
    match msg {
        Msg::CreateDylib { reply, .. } => reply.send(Err(err())),
        Msg::FindDylib { reply, .. } => reply.send(None),
        Msg::Define { reply, .. } => reply.send(Err(err())),
        Msg::Lookup(msg) => match msg.flags_reply {
            Some(reply) => reply.send(Err(err())),
            None => fx.push(Effect::Complete(msg.shared, Err(err()))),
        },
        Msg::Resolve { reply, .. } | Msg::Emit { reply, .. } => reply.send(Err(err())),
        Msg::Replace { reply, .. } => reply.send(Err(err())),
        Msg::Delegate { reply, .. } => reply.send(Err(err())),
        Msg::Absorb { reply, .. } => reply.send(Err(err())),
        Msg::DefineMaterializing { reply, .. } => reply.send(Err(err())),
        Msg::Owed { reply, .. } => reply.send(Err(err())),
        Msg::SetLinkOrder { reply, .. } => reply.send(Err(err())),
        Msg::AddGenerator { reply, .. } => reply.send(Err(err())),
        Msg::GetLinkOrder { reply, .. } => reply.send(Vec::new()),
        Msg::CreateTracker { reply, .. } => reply.send(Err(err())),
        Msg::RemoveTracker { reply, .. } => {
            if let Some(reply) = reply {
                reply.send(match why {
                    Refusal::Ended => Ok(()),
                    Refusal::ForkedChild => Err(err()),
                })
            }
        }
        Msg::TransferTracker { reply, .. }
        | Msg::RemoveDylib { reply, .. }
        | Msg::RemoveGenerator { reply, .. }
        | Msg::RemoveSymbols { reply, .. } => reply.send(Err(err())),
        Msg::QueryState { reply, .. } => reply.send(None),
        Msg::TableSizes { reply } => reply.send(sizes()),
        Msg::End { reply } => reply.send(()),
        Msg::GeneratorDone { .. }
        | Msg::Fail { .. }
        | Msg::RegisterManager { .. }
        | Msg::BlockedWait { .. }
        | Msg::Cancel { .. } => {}
    }
}

#[cfg(all(test, target_pointer_width = "64", not(kiln_loom)))]
mod layout_tests {
    use super::Sym;

    /// A defined symbol costs one record: a cache line, not the 96 bytes
    /// it took with `Option<usize>` unit and responsibility keys and the
    /// failure inline.
    #[test]
    fn size_of_sym_record() {
        assert_eq!(std::mem::size_of::<Sym>(), 64);
    }
}
