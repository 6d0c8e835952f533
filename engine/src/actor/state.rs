//! The session state and what each message does to it. Only the current
//! driver of the mailbox touches this; nothing here blocks or runs user code
//! (that is pushed out as [`Effect`]s).

use std::collections::VecDeque;
use std::fmt::Write as _;

use slab::Slab;
use smallvec::SmallVec;

use super::{
    AskedNames, DefineKind, DylibId, DylibShared, Effect, Effects, LookupMsg, Msg, Reply, RespId,
    SearchIds, SessionCore, SymId, TrackerId, UnitCell,
};
use crate::dispatch::Task;
use crate::error::{Error, QualifiedName, Result};
use crate::generator::{GenerateRequest, Generator};
use crate::graph::{DepGraph, EmitGroup};
use crate::index::IndexEntry;
use crate::lookup::{
    self, DylibLookup, FlagsMap, LookupKind, LookupShared, NameList, SymbolLookup, SymbolMap,
};
use crate::name::SymbolName;
use crate::responsibility::{DependenceGroup, Responsibility, run_materialization};
use crate::session::Dylib;
use crate::symbol::{RequiredState, SymbolDef, SymbolFlags, SymbolState};
use crate::sync::{Arc, FixedMap, FixedState, Mutex};
use crate::tracker::{ResourceKey, ResourceManager, ResourceTracker, TrackerShared};

type FixedSet<T> = std::collections::HashSet<T, FixedState>;

/// All mutable session state.
pub(crate) struct State {
    dylibs: Vec<DylibState>,
    syms: Vec<Sym>,
    units: Slab<UnitEntry>,
    resps: Slab<RespEntry>,
    trackers: Slab<TrackerEntry>,
    lookups: FixedMap<u64, PendingLookup>,
    graph: DepGraph,
    /// Materializers blocked on a lookup: responsibility → lookup.
    blocked: FixedMap<RespId, u64>,
    managers: Vec<Arc<dyn ResourceManager>>,
    next_key: u64,
    ended: bool,
    scratch: EmitScratch,
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
    in_flight: usize,
    queue: VecDeque<u64>,
    /// Names asked and not defined since the dylib last gained a definition.
    misses: FixedSet<SymbolName>,
}

struct Sym {
    dylib: DylibId,
    name: SymbolName,
    flags: SymbolFlags,
    state: SymbolState,
    address: u64,
    unit: Option<usize>,
    resp: Option<RespId>,
    tracker: TrackerId,
    waiters: SmallVec<[(u64, u32); 1]>,
    failure: Option<Arc<Error>>,
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
    removed: bool,
}

/// An entry's position in a [`TrackerEntry`] list after its tracker was
/// removed: listed nowhere.
const UNLISTED: usize = usize::MAX;

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
    blocked_resp: Option<RespId>,
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
            syms: Vec::new(),
            units: Slab::new(),
            resps: Slab::new(),
            trackers: Slab::new(),
            lookups: FixedMap::default(),
            graph: DepGraph::new(),
            blocked: FixedMap::default(),
            managers: Vec::new(),
            next_key: 1,
            ended: false,
            scratch: EmitScratch::default(),
        }
    }

    /// The state of `name` in `dylib`, if defined.
    pub(crate) fn symbol_state(&self, dylib: DylibId, name: &SymbolName) -> Option<SymbolState> {
        self.dylibs
            .get(dylib as usize)
            .and_then(|d| d.shared.index.sym(name))
            .map(|s| self.syms[s as usize].state)
    }

    /// Whether `Session::end` has run.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended
    }

    /// Applies one message.
    pub(crate) fn handle(&mut self, core: &Arc<SessionCore>, msg: Msg, fx: &mut Effects) {
        if self.ended {
            return self.refuse(msg, fx);
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
            } => reply.send(match self.live_dylib(dylib) {
                Ok(d) => {
                    d.link_order = order;
                    Ok(())
                }
                Err(e) => Err(e),
            }),
            Msg::GetLinkOrder { dylib, reply } => {
                let order = self.dylibs[dylib as usize]
                    .link_order
                    .iter()
                    .map(|&(d, v)| (self.dylibs[d as usize].shared.clone(), v))
                    .collect();
                reply.send(order)
            }
            Msg::AddGenerator {
                dylib,
                generator,
                reply,
            } => reply.send(match self.live_dylib(dylib) {
                Ok(d) => {
                    d.generators.push(GenEntry {
                        concurrent: generator.is_concurrent(),
                        generator,
                        in_flight: 0,
                        queue: VecDeque::new(),
                        misses: FixedSet::default(),
                    });
                    Ok(())
                }
                Err(e) => Err(e),
            }),
            Msg::CreateTracker { dylib, reply } => reply.send(match self.live_dylib(dylib) {
                Ok(_) => Ok(self.new_tracker(dylib)),
                Err(e) => Err(e),
            }),
            Msg::RemoveTracker { tracker, reply } => {
                let key = self.remove_tracker(tracker, fx);
                fx.push(Effect::RemoveResources {
                    keys: key.into_iter().collect(),
                    managers: self.managers.clone(),
                    reply,
                });
            }
            Msg::TransferTracker { src, dst, reply } => self.transfer(src, dst, reply, fx),
            Msg::RemoveDylib { dylib, reply } => {
                let keys = self.remove_dylib(dylib, fx);
                fx.push(Effect::RemoveResources {
                    keys,
                    managers: self.managers.clone(),
                    reply: Some(reply),
                });
            }
            Msg::RegisterManager { manager } => self.managers.push(manager),
            Msg::BlockedWait { lookup, resp } => {
                if let Some(lk) = self.lookups.get_mut(&lookup) {
                    lk.blocked_resp = Some(resp);
                    self.blocked.insert(resp, lookup);
                    if lk.bound {
                        self.check_blocking_cycle(resp, lookup, fx);
                    }
                }
            }
            Msg::Cancel {
                lookup,
                timeout_millis,
            } => {
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
            Msg::QueryState { dylib, name, reply } => reply.send(self.symbol_state(dylib, &name)),
            Msg::End { reply } => {
                let mut keys = Vec::new();
                for id in 0..self.dylibs.len() as DylibId {
                    if !self.dylibs[id as usize].removed {
                        keys.extend(self.remove_dylib(id, fx));
                    }
                }
                let ids: Vec<u64> = self.lookups.keys().copied().collect();
                for id in ids {
                    self.fail_lookup(id, Error::SessionEnded, fx);
                }
                self.ended = true;
                fx.push(Effect::RemoveResources {
                    keys,
                    managers: std::mem::take(&mut self.managers),
                    reply: None,
                });
                // Replies are sent after the removal effect above has run.
                fx.push(Effect::Signal(reply));
            }
        }
    }

    /// After `end`, every request is answered with [`Error::SessionEnded`].
    fn refuse(&mut self, msg: Msg, fx: &mut Effects) {
        match msg {
            Msg::CreateDylib { reply, .. } => reply.send(Err(Error::SessionEnded)),
            Msg::FindDylib { reply, .. } => reply.send(None),
            Msg::Define { reply, .. } => reply.send(Err(Error::SessionEnded)),
            Msg::Lookup(msg) => match msg.flags_reply {
                Some(reply) => reply.send(Err(Error::SessionEnded)),
                None => fx.push(Effect::Complete(msg.shared, Err(Error::SessionEnded))),
            },
            Msg::Resolve { reply, .. } | Msg::Emit { reply, .. } => {
                reply.send(Err(Error::SessionEnded))
            }
            Msg::Replace { reply, .. } => reply.send(Err(Error::SessionEnded)),
            Msg::Delegate { reply, .. } => reply.send(Err(Error::SessionEnded)),
            Msg::DefineMaterializing { reply, .. } => reply.send(Err(Error::SessionEnded)),
            Msg::Owed { reply, .. } => reply.send(Err(Error::SessionEnded)),
            Msg::SetLinkOrder { reply, .. } | Msg::AddGenerator { reply, .. } => {
                reply.send(Err(Error::SessionEnded))
            }
            Msg::GetLinkOrder { reply, .. } => reply.send(Vec::new()),
            Msg::CreateTracker { reply, .. } => reply.send(Err(Error::SessionEnded)),
            Msg::RemoveTracker { reply, .. } => {
                if let Some(reply) = reply {
                    reply.send(Ok(()))
                }
            }
            Msg::TransferTracker { reply, .. } | Msg::RemoveDylib { reply, .. } => {
                reply.send(Err(Error::SessionEnded))
            }
            Msg::QueryState { reply, .. } => reply.send(None),
            Msg::End { reply } => reply.send(()),
            Msg::GeneratorDone { .. }
            | Msg::Fail { .. }
            | Msg::RegisterManager { .. }
            | Msg::BlockedWait { .. }
            | Msg::Cancel { .. } => {}
        }
    }

    // ----- dylibs and trackers -------------------------------------------

    pub(crate) fn create_dylib(&mut self, name: Arc<str>) -> Result<Arc<DylibShared>> {
        if self
            .dylibs
            .iter()
            .any(|d| !d.removed && d.shared.name == name)
        {
            return Err(Error::DylibExists(name));
        }
        let id = self.dylibs.len() as DylibId;
        let tracker = self.tracker_entry(id, name.clone());
        let shared = Arc::new(DylibShared {
            id,
            name,
            index: Default::default(),
            default_tracker: self.trackers[tracker].shared.clone(),
        });
        self.dylibs.push(DylibState {
            shared: shared.clone(),
            link_order: vec![(id, DylibLookup::All)],
            generators: Vec::new(),
            trackers: vec![tracker],
            awaiting: FixedSet::default(),
            removed: false,
        });
        Ok(shared)
    }

    fn tracker_entry(&mut self, dylib: DylibId, dylib_name: Arc<str>) -> TrackerId {
        let key = ResourceKey(self.next_key);
        self.next_key += 1;
        let entry = self.trackers.vacant_entry();
        let id = entry.key();
        entry.insert(TrackerEntry {
            shared: Arc::new(TrackerShared {
                id,
                dylib,
                dylib_name,
                key,
                defunct: Mutex::new(false),
            }),
            dylib,
            syms: Vec::new(),
            units: Vec::new(),
            resps: Vec::new(),
            removed: false,
        });
        id
    }

    pub(crate) fn new_tracker(&mut self, dylib: DylibId) -> Arc<TrackerShared> {
        let name = self.dylibs[dylib as usize].shared.name.clone();
        let id = self.tracker_entry(dylib, name);
        self.dylibs[dylib as usize].trackers.push(id);
        self.trackers[id].shared.clone()
    }

    /// Stores a unit, listed under its tracker.
    fn add_unit(&mut self, unit: UnitEntry) -> usize {
        let list = &mut self.trackers[unit.tracker].units;
        insert_listed(&mut self.units, list, unit)
    }

    /// Removes a unit, and from its tracker's list.
    fn take_unit(&mut self, uid: usize) -> UnitEntry {
        let unit = self.units.remove(uid);
        let list = &mut self.trackers[unit.tracker].units;
        unlist(&mut self.units, list, uid, unit.at);
        unit
    }

    /// Stores a responsibility, listed under its tracker.
    fn add_resp(&mut self, resp: RespEntry) -> RespId {
        let list = &mut self.trackers[resp.tracker].resps;
        insert_listed(&mut self.resps, list, resp)
    }

    /// Removes a responsibility, and from its tracker's list unless the
    /// tracker was removed.
    fn take_resp(&mut self, rid: RespId) -> RespEntry {
        let resp = self.resps.remove(rid);
        if resp.at != UNLISTED {
            let list = &mut self.trackers[resp.tracker].resps;
            unlist(&mut self.resps, list, rid, resp.at);
        }
        resp
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

    /// Removes a tracker's symbols, units and in-flight work; returns its
    /// key for the resource managers (None if it was already removed).
    fn remove_tracker(&mut self, tracker: TrackerId, fx: &mut Effects) -> Option<ResourceKey> {
        let t = self.trackers.get_mut(tracker)?;
        if t.removed {
            return None;
        }
        t.removed = true;
        *t.shared.defunct.lock() = true;
        let key = t.shared.key;
        let dylib = t.dylib;
        let mut syms = std::mem::take(&mut t.syms);
        // In id order, the symbol records are visited front to back.
        syms.sort_unstable();
        let units = std::mem::take(&mut t.units);
        let resps = std::mem::take(&mut t.resps);
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
        for sid in syms {
            let s = &mut self.syms[sid as usize];
            s.unit = None;
            s.resp = None;
            let index = &self.dylibs[s.dylib as usize].shared.index;
            if index.sym(&s.name) == Some(sid) {
                index.remove(&s.name);
            }
        }
        Some(key)
    }

    fn transfer(
        &mut self,
        src: TrackerId,
        dst: TrackerId,
        reply: Reply<Result<()>>,
        fx: &mut Effects,
    ) {
        let (Some(s), Some(d)) = (self.trackers.get(src), self.trackers.get(dst)) else {
            return reply.send(Err(Error::Usage("transfer_to: unknown tracker".into())));
        };
        if s.removed || d.removed {
            return reply.send(Err(Error::TrackerRemoved {
                dylib: s.shared.dylib_name.clone(),
            }));
        }
        let (src_key, dst_key) = (s.shared.key, d.shared.key);
        let s = &mut self.trackers[src];
        s.removed = true;
        let syms = std::mem::take(&mut s.syms);
        let units = std::mem::take(&mut s.units);
        let resps = std::mem::take(&mut s.resps);
        let d = &self.trackers[dst];
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
        let d = &mut self.trackers[dst];
        d.syms.extend(syms);
        d.units.extend(units);
        d.resps.extend(resps);
        fx.push(Effect::TransferResources {
            dst: dst_key,
            src: src_key,
            managers: self.managers.clone(),
            reply,
        });
    }

    fn remove_dylib(&mut self, dylib: DylibId, fx: &mut Effects) -> Vec<ResourceKey> {
        let d = &mut self.dylibs[dylib as usize];
        if d.removed {
            return Vec::new();
        }
        d.removed = true;
        let trackers = std::mem::take(&mut d.trackers);
        let generators = std::mem::take(&mut d.generators);
        let awaiting: Vec<u64> = d.awaiting.drain().collect();
        let name = d.shared.name.clone();
        // Unpublish everything at once, before any tracker's memory goes;
        // the trackers then find nothing left to unpublish one by one.
        d.shared.index.clear();
        let mut keys = Vec::new();
        for t in trackers {
            keys.extend(self.remove_tracker(t, fx));
        }
        for gen_entry in generators {
            fx.push(Effect::Drop(Box::new(gen_entry.generator)));
        }
        for id in awaiting {
            self.fail_lookup(id, Error::DylibRemoved(name.clone()), fx);
        }
        // Lookups suspended in this dylib's generators or searching it fail.
        let searching: Vec<u64> = self
            .lookups
            .iter()
            .filter(|(_, lk)| !lk.bound && lk.order.iter().any(|&(d, _)| d == dylib))
            .map(|(&id, _)| id)
            .collect();
        for id in searching {
            self.fail_lookup(id, Error::DylibRemoved(name.clone()), fx);
        }
        keys
    }

    // ----- definitions ----------------------------------------------------

    pub(crate) fn define(
        &mut self,
        core: &Arc<SessionCore>,
        dylib: DylibId,
        tracker: TrackerId,
        kind: DefineKind,
        fx: &mut Effects,
    ) -> Result<()> {
        let (unit, symbols) = kind.into_parts();
        let (cell, unit_name) = unit.unzip();
        let refuse = |fx: &mut Effects, cell: Option<UnitCell>| {
            if let Some(cell) = cell {
                fx.push(Effect::Drop(Box::new(cell)));
            }
        };
        if let Err(e) = self.live_dylib(dylib) {
            refuse(fx, cell);
            return Err(e);
        }
        match self.trackers.get(tracker) {
            Some(t) if !t.removed && t.dylib == dylib => {}
            _ => {
                refuse(fx, cell);
                return Err(Error::TrackerRemoved {
                    dylib: self.dylibs[dylib as usize].shared.name.clone(),
                });
            }
        }
        // Decide everything before changing anything: a failed define leaves
        // the dylib as it was.
        let d = &self.dylibs[dylib as usize];
        let mut duplicates = Vec::new();
        let mut overridden = Vec::new();
        let mut new_discarded = Vec::new();
        // Names repeated within this definition are duplicates too.
        let mut seen = FixedSet::default();
        for i in 0..symbols.len() {
            let (name, flags) = (symbols.name(i), symbols.flags(i));
            if symbols.len() > 1 && !seen.insert(name.clone()) {
                duplicates.push(name.clone());
                continue;
            }
            if let Some(sid) = d.shared.index.sym(name) {
                let existing = &self.syms[sid as usize];
                if !flags.is_weak()
                    && existing.flags.is_weak()
                    && existing.state == SymbolState::Lazy
                {
                    overridden.push(sid);
                } else if flags.is_weak() {
                    new_discarded.push(i);
                } else {
                    duplicates.push(name.clone());
                }
            }
        }
        if !duplicates.is_empty() {
            refuse(fx, cell);
            return Err(Error::DuplicateDefinitions {
                dylib: d.shared.name.clone(),
                names: duplicates,
            });
        }
        let dylib_handle = (!overridden.is_empty() || !new_discarded.is_empty())
            .then(|| self.dylib_handle(core, dylib));
        if let Some(handle) = &dylib_handle
            && !overridden.is_empty()
        {
            self.override_weak(overridden, handle, fx);
        }
        let unit_id = match &symbols {
            DefinedSymbols::Unit(_) | DefinedSymbols::Fixed(_) => {
                if let Some(cell) = &cell {
                    for &i in &new_discarded {
                        let handle = dylib_handle.clone().expect("made when discarding");
                        let name = symbols.name(i).clone();
                        fx.push(discard_task(
                            "discard weak definition",
                            cell.clone(),
                            handle,
                            name,
                        ));
                    }
                }
                if new_discarded.len() == symbols.len() {
                    refuse(fx, cell);
                    return Ok(());
                }
                Some(self.add_unit(UnitEntry {
                    cell,
                    name: unit_name,
                    dylib,
                    tracker,
                    syms: SmallVec::with_capacity(symbols.len()),
                    at: 0,
                }))
            }
            DefinedSymbols::Absolute(_) => None,
        };
        let ready = matches!(symbols, DefinedSymbols::Absolute(_));
        let mut skip = new_discarded.into_iter().peekable();
        for (i, (name, flags, address)) in symbols.into_entries().enumerate() {
            if skip.peek() == Some(&i) {
                skip.next();
                continue;
            }
            let sid = self.syms.len() as SymId;
            let state = if ready {
                SymbolState::Ready
            } else {
                SymbolState::Lazy
            };
            self.dylibs[dylib as usize].shared.index.set(
                &name,
                IndexEntry {
                    def: SymbolDef::new(address, flags),
                    ready: state == SymbolState::Ready,
                },
                sid,
            );
            self.syms.push(Sym {
                dylib,
                name,
                flags,
                state,
                address,
                unit: unit_id,
                resp: None,
                tracker,
                waiters: SmallVec::new(),
                failure: None,
            });
            self.trackers[tracker].syms.push(sid);
            if let Some(uid) = unit_id {
                self.units[uid].syms.push(sid);
            }
        }
        self.gained_definitions(core, dylib, fx);
        Ok(())
    }

    /// Retires weak Lazy symbols a strong definition overrides: their units
    /// hear `discard` (a task), and units left empty are dropped. (Kept out
    /// of `define`, whose common path never needs it.)
    #[cold]
    fn override_weak(&mut self, overridden: Vec<SymId>, dylib: &Dylib, fx: &mut Effects) {
        for sid in overridden {
            let s = &self.syms[sid as usize];
            let (uid, name) = (s.unit, s.name.clone());
            if let Some(uid) = uid {
                let unit = &mut self.units[uid];
                unit.syms.retain(|x| *x != sid);
                let cell = unit.cell.clone();
                let empty = unit.syms.is_empty();
                if let Some(cell) = cell {
                    fx.push(discard_task(
                        "discard overridden weak definition",
                        cell,
                        dylib.clone(),
                        name,
                    ));
                }
                if empty {
                    let unit = self.take_unit(uid);
                    fx.extend(unit.cell.map(|cell| Effect::Drop(Box::new(cell))));
                }
            }
            let s = &mut self.syms[sid as usize];
            s.unit = None;
            s.state = SymbolState::Failed;
            s.failure = Some(Arc::new(Error::Usage("overridden definition".into())));
            // Its name stays published (not Ready) until the new definition
            // replaces the entry: a reader never sees it undefined.
        }
    }

    /// A dylib gained definitions: forget generator misses and retry lookups
    /// that wait for definitions.
    fn gained_definitions(&mut self, core: &Arc<SessionCore>, dylib: DylibId, fx: &mut Effects) {
        let d = &mut self.dylibs[dylib as usize];
        for g in &mut d.generators {
            if !g.misses.is_empty() {
                g.misses.clear();
            }
        }
        if d.awaiting.is_empty() {
            return;
        }
        let waiting: Vec<u64> = d.awaiting.drain().collect();
        for id in waiting {
            if let Some(lk) = self.lookups.get_mut(&id)
                && lk.parked
            {
                lk.parked = false;
                lk.pos = 0;
                lk.next_gen = 0;
                lk.found.iter_mut().for_each(|f| *f = Found::default());
                self.advance(core, id, fx);
            }
        }
    }

    // ----- lookups --------------------------------------------------------

    pub(crate) fn start_lookup(
        &mut self,
        core: &Arc<SessionCore>,
        msg: LookupMsg,
        fx: &mut Effects,
    ) {
        let id = msg.id;
        let n = msg.names.len();
        if let Some(resp) = msg.blocking_for {
            self.blocked.insert(resp, id);
        }
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
                blocked_resp: msg.blocking_for,
                pos: 0,
                next_gen: 0,
                parked: false,
                found: smallvec::smallvec![Found::default(); n],
                bound: false,
                remaining: 0,
                pending: SmallVec::new(),
            },
        );
        self.advance(core, id, fx);
    }

    /// Walks the search order from where the lookup stopped: matches names
    /// dylib by dylib, asks generators for what is missing (suspending the
    /// lookup while one runs), and finishes when the order is exhausted.
    fn advance(&mut self, core: &Arc<SessionCore>, id: u64, fx: &mut Effects) {
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
            while !missing.is_empty() && lk.next_gen < d.generators.len() {
                let g = lk.next_gen;
                let entry = &mut d.generators[g];
                // Pushed one by one: collecting a filtered iterator into a
                // small vector costs more than the usual single name.
                let mut ask = AskedNames::new();
                for &i in &missing {
                    let name = &lk.names[i].0;
                    if !entry.misses.contains(name) {
                        ask.push(name.clone());
                    }
                }
                if ask.is_empty() {
                    lk.next_gen += 1;
                    continue;
                }
                if entry.in_flight > 0 && !entry.concurrent {
                    // Serialized: wait our turn, then retry this generator.
                    entry.queue.push_back(id);
                    return;
                }
                entry.in_flight += 1;
                lk.next_gen += 1;
                let request = GenerateRequest {
                    dylib: Dylib::from_shared(core.clone(), d.shared.clone()),
                    names: ask,
                    kind: lk.kind,
                    visibility,
                    lookup: id,
                    generator: g,
                    completed: false,
                };
                fx.push(Effect::Dispatch(Task::generate(
                    entry.generator.clone(),
                    request,
                )));
                return;
            }
            lk.pos += 1;
            lk.next_gen = 0;
        }
    }

    #[allow(clippy::too_many_arguments)] // one message's fields, unpacked
    pub(crate) fn generator_done(
        &mut self,
        core: &Arc<SessionCore>,
        lookup: u64,
        dylib: DylibId,
        generator: usize,
        asked: AskedNames,
        result: Result<()>,
        fx: &mut Effects,
    ) {
        let d = &mut self.dylibs[dylib as usize];
        let mut next = None;
        if let Some(entry) = d.generators.get_mut(generator) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if result.is_ok() {
                for name in asked {
                    if d.shared.index.sym(&name).is_none() {
                        entry.misses.insert(name);
                    }
                }
            }
            next = entry.queue.pop_front();
        }
        // Either does nothing if the lookup is gone (cancelled, failed).
        match result {
            Ok(()) => self.advance(core, lookup, fx),
            Err(cause) if self.lookups.contains_key(&lookup) => {
                let dylib = d.shared.name.clone();
                let cause = Arc::new(cause);
                self.fail_lookup(lookup, Error::Generator { dylib, cause }, fx)
            }
            Err(_) => {}
        }
        if let Some(next) = next {
            self.advance(core, next, fx);
        }
    }

    fn finish_search(&mut self, core: &Arc<SessionCore>, id: u64, fx: &mut Effects) {
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

    /// Attaches the lookup to the symbols it found: records those already
    /// in the required state, waits on the others, and starts the units of
    /// lazy ones.
    fn bind(&mut self, core: &Arc<SessionCore>, id: u64, fx: &mut Effects) {
        let lk = self.lookups.get_mut(&id).expect("lookup exists");
        for (i, f) in lk.found.iter().enumerate() {
            let Some(sid) = f.sym else { continue };
            let s = &self.syms[sid as usize];
            if s.state == SymbolState::Failed {
                let err = s.failure.as_deref().cloned().unwrap_or(Error::Cancelled);
                return self.fail_lookup(id, err, fx);
            }
            if s.flags.is_side_effects_only() && lk.names[i].1 == SymbolLookup::Required {
                let name = s.name.clone();
                return self.fail_lookup(id, Error::SideEffectsOnlyRequired(name), fx);
            }
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
                s.waiters.push((id, i as u32));
                lk.remaining += 1;
                lk.pending.push(sid);
                if s.state == SymbolState::Lazy
                    && let Some(uid) = s.unit
                {
                    to_start.push(uid);
                }
            }
        }
        let done = lk.remaining == 0;
        let blocked = lk.blocked_resp;
        for uid in to_start {
            self.start_unit(core, uid, fx);
        }
        if done {
            self.complete(id, fx);
        } else if let Some(resp) = blocked {
            self.check_blocking_cycle(resp, id, fx);
        }
    }

    fn complete(&mut self, id: u64, fx: &mut Effects) {
        let Some(lk) = self.lookups.remove(&id) else {
            return;
        };
        if let Some(resp) = lk.blocked_resp
            && self.blocked.get(&resp) == Some(&id)
        {
            self.blocked.remove(&resp);
        }
        let mut found = SmallVec::new();
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

    fn fail_lookup(&mut self, id: u64, err: Error, fx: &mut Effects) {
        let Some(lk) = self.lookups.remove(&id) else {
            return;
        };
        if let Some(resp) = lk.blocked_resp
            && self.blocked.get(&resp) == Some(&id)
        {
            self.blocked.remove(&resp);
        }
        match lk.flags_reply {
            Some(reply) => reply.send(Err(err)),
            None => fx.push(Effect::Complete(lk.shared, Err(err))),
        }
    }

    fn unsatisfied(&self, lk: &PendingLookup) -> Vec<SymbolName> {
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
    fn notify_waiters(&mut self, sid: SymId, fx: &mut Effects) {
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
            let (id, slot) = waiters[i];
            let Some(lk) = self.lookups.get_mut(&id) else {
                continue;
            };
            if !lk.state.is_met_by(state) {
                waiters[kept] = (id, slot);
                kept += 1;
                continue;
            }
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

    // ----- materialization ------------------------------------------------

    fn start_unit(&mut self, core: &Arc<SessionCore>, uid: usize, fx: &mut Effects) {
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
            s.unit = None;
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
            self.syms[sid as usize].resp = Some(rid);
        }
        let responsibility = Responsibility {
            core: core.clone(),
            id: rid,
            dylib: self.dylib_handle(core, unit.dylib),
            tracker: ResourceTracker {
                core: core.clone(),
                shared: self.trackers[unit.tracker].shared.clone(),
            },
            unit_name,
            finished: false,
        };
        fx.push(Effect::Dispatch(Task::new("materialize", move || {
            run_materialization(cell, responsibility)
        })));
    }

    /// Does what an absolute-symbols unit's `materialize` would — resolve
    /// its symbols at the addresses given at definition, then emit them with
    /// no dependencies — in this one step. Nothing can observe the symbols
    /// in between (no user code runs, no other message is applied), so no
    /// responsibility is created, and since they depend on nothing they are
    /// Ready at once: waiters for `Resolved` are notified together with
    /// those for `Ready`. The graph still hears of the emission, for emitted
    /// symbols that already wait on these.
    fn materialize_fixed(&mut self, syms: &[SymId], fx: &mut Effects) {
        for &sid in syms {
            let s = &mut self.syms[sid as usize];
            s.unit = None;
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

    fn owned_resp(&self, resp: RespId) -> Result<&RespEntry> {
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
    fn owned_sym(&self, resp: RespId, name: &SymbolName) -> Result<SymId> {
        let r = self.owned_resp(resp)?;
        let d = &self.dylibs[r.dylib as usize];
        match d.shared.index.sym(name) {
            Some(sid) if self.syms[sid as usize].resp == Some(resp) => Ok(sid),
            _ => Err(Error::Usage(format!(
                "unit '{}' does not own {} in dylib '{}' (or it was already failed or handed back)",
                r.unit_name, name, d.shared.name
            ))),
        }
    }

    pub(crate) fn resolve(
        &mut self,
        resp: RespId,
        defs: &[(SymbolName, SymbolDef)],
        fx: &mut Effects,
    ) -> Result<()> {
        let mut sids = Vec::with_capacity(defs.len());
        for (name, _) in defs {
            sids.push(self.owned_sym(resp, name)?);
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

    fn emit_with(
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
        // Map names to symbols (group i owns defs[spans[i].0] and
        // deps[spans[i].1]); any misuse fails the whole unit.
        let mut missing_deps = Vec::new();
        let mut misuse = None;
        for g in groups {
            let (d0, p0) = (sc.defs.len(), sc.deps.len());
            for name in &g.symbols {
                match self.owned_sym(resp, name) {
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
            if self.syms[s as usize].resp == Some(resp) && sc.sorted.binary_search(&s).is_err() {
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
        if let Some(e) = misuse {
            self.fail_resp(resp, e.clone(), fx);
            return Err(e);
        }
        let r = self.take_resp(resp);
        if self.blocked.contains_key(&resp) {
            self.blocked.remove(&resp);
        }
        if !missing_deps.is_empty() {
            let cause = Arc::new(Error::SymbolsNotFound {
                names: missing_deps,
            });
            let all: Vec<(SymId, Arc<Error>)> = r
                .owed
                .iter()
                .filter(|&&s| self.syms[s as usize].resp == Some(resp))
                .map(|&s| (s, cause.clone()))
                .collect();
            let first = all.first().map(|&(s, _)| s);
            self.fail_syms(all, fx);
            return Err(first
                .and_then(|s| self.syms[s as usize].failure.as_deref().cloned())
                .unwrap_or_else(|| (*cause).clone()));
        }
        for &sid in &sc.defs {
            let s = &mut self.syms[sid as usize];
            s.resp = None;
            s.state = SymbolState::Emitted;
        }
        // Groups depending on an already-failed symbol fail, to a fixpoint
        // (a group may depend on another group of this same emit).
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
        let mut first_error = None;
        for &(gi, bad) in &failed_groups {
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
        // Dependencies declared on lazy symbols are materialized: the
        // emitter was linked against them, so they will be needed.
        let mut lazy_deps = Vec::new();
        for (gi, (_, deps)) in sc.spans.iter().enumerate() {
            if failed_groups.iter().any(|&(g, _)| g == gi) {
                continue;
            }
            for &dep in &sc.deps[deps.clone()] {
                if self.syms[dep as usize].state == SymbolState::Lazy {
                    lazy_deps.extend(self.syms[dep as usize].unit);
                }
            }
        }
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
        for i in 0..sc.ready.len() {
            self.mark_ready(sc.ready[i], fx);
        }
        for uid in lazy_deps {
            self.start_unit(core, uid, fx);
        }
        first_error.map_or(Ok(()), |e: Arc<Error>| Err((*e).clone()))
    }

    fn mark_ready(&mut self, sid: SymId, fx: &mut Effects) {
        let s = &mut self.syms[sid as usize];
        s.state = SymbolState::Ready;
        let def = SymbolDef::new(s.address, s.flags);
        let index = &self.dylibs[s.dylib as usize].shared.index;
        index.set(&s.name, IndexEntry { def, ready: true }, sid);
        self.notify_waiters(sid, fx);
    }

    fn root_cause_of(&self, sid: SymId) -> Arc<Error> {
        match self.syms[sid as usize].failure.as_deref() {
            Some(Error::Failed { cause, .. }) => cause.clone(),
            Some(other) => Arc::new(other.clone()),
            None => Arc::new(Error::msg("unknown failure")),
        }
    }

    /// Fails one symbol with `cause` (arriving through `via`, if any):
    /// sticky state, unpublished from the ready index, its lookups failed.
    fn fail_one(
        &mut self,
        sid: SymId,
        via: Option<QualifiedName>,
        cause: Arc<Error>,
        fx: &mut Effects,
    ) -> Arc<Error> {
        if self.syms[sid as usize].state == SymbolState::Failed
            && let Some(existing) = &self.syms[sid as usize].failure
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
        s.failure = Some(err.clone());
        s.resp = None;
        let s = &self.syms[sid as usize];
        let d = &self.dylibs[s.dylib as usize];
        if d.shared.index.sym(&s.name) == Some(sid) {
            d.shared.index.update(&s.name, |e| e.ready = false);
        }
        let waiters = std::mem::take(&mut self.syms[sid as usize].waiters);
        for (id, _) in waiters {
            self.fail_lookup(id, (*err).clone(), fx);
        }
        err
    }

    /// Fails `roots` with their causes, then everything that transitively
    /// waits on them, with the root's cause and the root as `via`.
    fn fail_syms(&mut self, roots: Vec<(SymId, Arc<Error>)>, fx: &mut Effects) {
        if roots.is_empty() {
            return;
        }
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
    }

    fn fail_dependants(
        &mut self,
        roots: &[SymId],
        dependants: Vec<(SymId, SymId)>,
        fx: &mut Effects,
    ) {
        for (sid, root) in dependants {
            if roots.contains(&sid) && sid == root {
                continue;
            }
            let via = self.qname(root);
            let cause = self.root_cause_of(root);
            self.fail_one(sid, Some(via), cause, fx);
        }
    }

    fn fail_resp(&mut self, resp: RespId, cause: Error, fx: &mut Effects) {
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
            .filter(|&s| self.syms[s as usize].resp == Some(resp))
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

    fn replace(
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
            s.resp = None;
            s.unit = Some(uid);
            wanted |= !s.waiters.is_empty();
        }
        if wanted {
            self.start_unit(core, uid, fx);
        }
        Ok(())
    }

    fn delegate(&mut self, resp: RespId, names: &[SymbolName]) -> Result<RespId> {
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
            self.syms[sid as usize].resp = Some(rid);
        }
        Ok(rid)
    }

    fn define_materializing(
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
            let sid = self.syms.len() as SymId;
            let d = &mut self.dylibs[dylib as usize];
            d.shared.index.set(
                &name,
                IndexEntry {
                    def: SymbolDef::new(0, flags),
                    ready: false,
                },
                sid,
            );
            self.syms.push(Sym {
                dylib,
                name: name.clone(),
                flags,
                state: SymbolState::Materializing,
                address: 0,
                unit: None,
                resp: Some(resp),
                tracker,
                waiters: SmallVec::new(),
                failure: None,
            });
            self.resps[resp].owed.push(sid);
            self.trackers[tracker].syms.push(sid);
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
            .filter(|s| s.resp == Some(resp))
            .filter(|s| !requested_only || !s.waiters.is_empty())
            .map(|s| (s.name.clone(), s.flags))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    // ----- blocking-cycle detection ---------------------------------------

    /// Who must act for `sid` to progress: its materializer, or — when it is
    /// emitted and waiting — the materializers of what it waits on.
    fn owners(&self, sid: SymId, out: &mut Vec<(RespId, SymId)>) {
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
    fn check_blocking_cycle(&mut self, start: RespId, id: u64, fx: &mut Effects) {
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

    fn resp_name(&self, resp: RespId) -> Arc<str> {
        self.resps
            .get(resp)
            .map_or_else(|| "?".into(), |r| r.unit_name.clone())
    }
}

/// A definition's symbols, as [`DefineKind`] brings them.
enum DefinedSymbols {
    /// A unit's: names and flags.
    Unit(Vec<(SymbolName, SymbolFlags)>),
    /// An absolute-symbols unit's, Lazy until looked up.
    Fixed(Vec<(SymbolName, SymbolDef)>),
    /// Fixed addresses, Ready at once.
    Absolute(Vec<(SymbolName, SymbolDef)>),
}

impl DefineKind {
    /// The unit to run and its name (if any), and the symbols.
    fn into_parts(self) -> (Option<(UnitCell, Arc<str>)>, DefinedSymbols) {
        match self {
            DefineKind::Unit(cell, name, symbols) => {
                (Some((cell, name)), DefinedSymbols::Unit(symbols))
            }
            DefineKind::Fixed(defs) => (None, DefinedSymbols::Fixed(defs)),
            DefineKind::Absolute(defs) => (None, DefinedSymbols::Absolute(defs)),
        }
    }
}

impl DefinedSymbols {
    fn len(&self) -> usize {
        match self {
            DefinedSymbols::Unit(s) => s.len(),
            DefinedSymbols::Fixed(d) | DefinedSymbols::Absolute(d) => d.len(),
        }
    }

    fn name(&self, i: usize) -> &SymbolName {
        match self {
            DefinedSymbols::Unit(s) => &s[i].0,
            DefinedSymbols::Fixed(d) | DefinedSymbols::Absolute(d) => &d[i].0,
        }
    }

    fn flags(&self, i: usize) -> SymbolFlags {
        match self {
            DefinedSymbols::Unit(s) => s[i].1,
            DefinedSymbols::Fixed(d) | DefinedSymbols::Absolute(d) => d[i].1.flags,
        }
    }

    /// Name, flags and address (0 for a unit's symbols) of each, in order.
    fn into_entries(self) -> impl Iterator<Item = (SymbolName, SymbolFlags, u64)> {
        let (units, defs) = match self {
            DefinedSymbols::Unit(s) => (s, Vec::new()),
            DefinedSymbols::Fixed(d) | DefinedSymbols::Absolute(d) => (Vec::new(), d),
        };
        units
            .into_iter()
            .map(|(n, f)| (n, f, 0))
            .chain(defs.into_iter().map(|(n, d)| (n, d.flags, d.address)))
    }
}

/// A task telling `cell`'s unit that it will never be asked for `name`.
/// The discard is recorded in the cell now: if the unit's materialization
/// runs before this task, it delivers the discard first.
fn discard_task(what: &'static str, cell: UnitCell, dylib: Dylib, name: SymbolName) -> Effect {
    cell.push_discard(dylib, name);
    Effect::Dispatch(Task::new(what, move || {
        if let Some(unit) = cell.lock().as_mut() {
            cell.deliver_discards(unit.as_mut());
        }
    }))
}
