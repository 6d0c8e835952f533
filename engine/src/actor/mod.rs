//! The state actor: the one owner of all mutable session state.
//!
//! Every mutation is a [`Msg`] pushed into the session's mailbox. The mailbox
//! is *combining*: whichever thread finds it idle becomes the driver, drains
//! it, and applies each message to the [`State`](state::State) in order. The
//! driver never blocks and never runs user code: what a message causes —
//! materializers, generators, completion callbacks, dropping user objects,
//! resource managers — is collected as [`Effect`]s and executed after the
//! driver has given the mailbox up. So there is exactly one owner of the
//! state at a time, no thread hand-off on an uncontended operation, and user
//! code may re-enter the engine freely.

mod state;

use std::collections::VecDeque;
use std::fmt;

use crate::dispatch::{Dispatcher, Task};
use crate::error::{Error, Result};
use crate::generator::Generator;
use crate::index::ReadIndex;
use crate::lookup::{DylibLookup, FlagsMap, LookupKind, LookupShared, NameList, SymbolMap};
use crate::name::{Interner, SymbolName};
use crate::responsibility::{DependenceGroup, Responsibility, run_batch_materialization};
use crate::symbol::{RequiredState, SymbolDef, SymbolFlags, SymbolState};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Condvar, Mutex, Ordering};
use crate::tracker::{ResourceKey, ResourceManager, TrackerShared};
use crate::unit::MaterializationUnit;

pub(crate) use state::State;
pub use state::TableSizes;

/// Dense index of a dylib.
pub(crate) type DylibId = u32;
/// Dense index of a symbol (also its node in the dependency graph).
pub(crate) type SymId = u32;
/// Slab index of a resource tracker.
pub(crate) type TrackerId = usize;
/// Units with one batch key, in one dylib and tracker: one batch.
pub(crate) type BatchKey = (DylibId, TrackerId, usize);
/// Slab index of a responsibility.
pub(crate) type RespId = usize;

/// A unit waiting to be materialized, while the actor only moves the handle
/// around. `discard` (a task) and `materialize` (a task) never touch the
/// unit at once, and neither runs under the cell's lock: delivering
/// discards *lends* the unit out of the cell; a materialization that finds
/// it lent is handed the unit when the discards are delivered.
///
/// The actor records each discard it decides in the cell before it
/// dispatches the task that delivers it; whoever next holds the unit — that
/// task or the materialization, which the dispatcher may run first —
/// delivers every recorded discard, each exactly once. So a unit hears of
/// every definition it lost before it materializes.
#[derive(Clone)]
pub(crate) struct UnitCell {
    state: Arc<Mutex<CellState>>,
    /// The unit's [`MaterializationUnit::batch_key`], asked when it was
    /// defined.
    batch: Option<usize>,
}

type Unit = Box<dyn MaterializationUnit>;

struct CellState {
    unit: Option<Unit>,
    /// The unit is out, having discards delivered.
    lent: bool,
    /// Discards decided and not delivered yet.
    discards: Vec<(crate::session::Dylib, SymbolName)>,
    /// A materialization that found the unit lent.
    taker: Option<Box<dyn FnOnce(Option<Unit>) + Send>>,
}

impl UnitCell {
    pub(crate) fn new(unit: Unit) -> Self {
        let batch = unit.batch_key();
        UnitCell {
            batch,
            state: Arc::new(Mutex::new(CellState {
                unit: Some(unit),
                lent: false,
                discards: Vec::new(),
                taker: None,
            })),
        }
    }

    /// The unit's batch key.
    pub(crate) fn batch_key(&self) -> Option<usize> {
        self.batch
    }

    /// Takes the unit out for good if no discard is due or being delivered
    /// (`Ok(None)`: taken already); else the cell back, for
    /// [`UnitCell::take_then`].
    pub(crate) fn try_take(self) -> Result<Option<Unit>, UnitCell> {
        let mut cell = self.state.lock();
        if cell.lent || !cell.discards.is_empty() {
            drop(cell);
            return Err(self);
        }
        Ok(cell.unit.take())
    }

    /// Records that the unit lost `name` in `dylib` (called by the actor
    /// before it dispatches [`UnitCell::deliver_discards`]).
    pub(crate) fn push_discard(&self, dylib: crate::session::Dylib, name: SymbolName) {
        self.state.lock().discards.push((dylib, name));
    }

    /// Tells the unit (if it was not taken for materialization) of every
    /// recorded discard, with no lock held while `discard` runs. Nothing to
    /// do when the unit is lent: its holder delivers them.
    pub(crate) fn deliver_discards(&self) {
        let unit = {
            let mut cell = self.state.lock();
            if cell.lent || cell.discards.is_empty() {
                return;
            }
            match cell.unit.take() {
                Some(unit) => {
                    cell.lent = true;
                    unit
                }
                None => {
                    cell.discards.clear();
                    return;
                }
            }
        };
        self.lend(unit);
    }

    /// Delivers the recorded discards to `unit` (lent out of the cell) until
    /// none is left, then puts it back, or hands it to a waiting
    /// materialization.
    fn lend(&self, mut unit: Unit) {
        loop {
            let due = {
                let mut cell = self.state.lock();
                if cell.discards.is_empty() {
                    cell.lent = false;
                    match cell.taker.take() {
                        Some(taker) => {
                            drop(cell);
                            return taker(Some(unit));
                        }
                        None => {
                            cell.unit = Some(unit);
                            return;
                        }
                    }
                }
                std::mem::take(&mut cell.discards)
            };
            for (dylib, name) in due {
                // A panicking discard must not lose the unit (a waiting
                // materialization would never run).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    unit.discard(&dylib, &name)
                }));
            }
        }
    }

    /// Takes the unit out for good and runs `then` with it (`None` if it
    /// was taken already) once every recorded discard has reached it — now,
    /// or, while a discard has it, when that discard is done (on its
    /// thread). No lock is held while `then` runs.
    pub(crate) fn take_then(&self, then: impl FnOnce(Option<Unit>) + Send + 'static) {
        let mut cell = self.state.lock();
        if cell.lent {
            cell.taker = Some(Box::new(then));
            return;
        }
        let unit = cell.unit.take();
        match unit {
            Some(unit) if !cell.discards.is_empty() => {
                cell.lent = true;
                cell.taker = Some(Box::new(then));
                drop(cell);
                self.lend(unit);
            }
            unit => {
                drop(cell);
                then(unit)
            }
        }
    }
}

/// The part of a dylib that handles share with the actor.
pub(crate) struct DylibShared {
    pub(crate) id: DylibId,
    pub(crate) name: Arc<str>,
    /// Every defined name, with its definition once Ready. Written only by
    /// the actor; read by lookups' fast path. Also the actor's own name
    /// table: each entry carries the name's symbol id.
    pub(crate) index: ReadIndex,
    pub(crate) default_tracker: Arc<TrackerShared>,
    /// What the lookup fast path must know besides the index, so that it
    /// never answers where the actor's search would answer differently:
    /// [`DYLIB_REMOVED`] and [`DYLIB_HAS_GENERATORS`]. Written only by the
    /// actor (set before the change it announces takes effect).
    pub(crate) status: AtomicUsize,
}

/// [`DylibShared::status`]: the dylib was removed (a search naming it fails
/// with `DylibRemoved`).
pub(crate) const DYLIB_REMOVED: usize = 1;
/// [`DylibShared::status`]: the dylib has generators (a name it lacks is
/// asked of them before the search moves on).
pub(crate) const DYLIB_HAS_GENERATORS: usize = 2;

impl fmt::Debug for DylibShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DylibShared")
            .field("name", &self.name)
            .finish()
    }
}

/// A one-shot reply channel for synchronous requests.
pub(crate) struct Reply<T>(Arc<ReplySlot<T>>);
/// The receiving end of a [`Reply`].
pub(crate) struct ReplyWait<T>(Arc<ReplySlot<T>>);

struct ReplySlot<T> {
    /// The value, once sent.
    value: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Reply<T> {
    pub(crate) fn new() -> (Reply<T>, ReplyWait<T>) {
        let slot = Arc::new(ReplySlot {
            value: Mutex::new(None),
            ready: Condvar::new(),
        });
        (Reply(slot.clone()), ReplyWait(slot))
    }

    pub(crate) fn send(self, value: T) {
        *self.0.value.lock() = Some(value);
        // Free when the receiver is not asleep (the condvar counts sleepers).
        self.0.ready.notify_all();
    }
}

impl<T> ReplyWait<T> {
    /// Blocks until the reply arrives. The actor answers every request it
    /// receives (dropped replies answer nothing, so every handler sends).
    pub(crate) fn wait(self) -> T {
        let mut slot = self.0.value.lock();
        loop {
            if let Some(v) = slot.take() {
                return v;
            }
            slot = self.0.ready.wait(slot);
        }
    }
}

/// The names one generator call is asked for (most lookups miss one name:
/// kept inline).
pub(crate) type AskedNames = smallvec::SmallVec<[SymbolName; 2]>;

/// A search order by dylib id (most are short: kept inline).
pub(crate) type SearchIds = smallvec::SmallVec<[(DylibId, DylibLookup); 4]>;

/// What a lookup message asks for.
pub(crate) struct LookupMsg {
    pub(crate) id: u64,
    pub(crate) order: SearchIds,
    pub(crate) names: NameList,
    pub(crate) state: RequiredState,
    pub(crate) kind: LookupKind,
    pub(crate) await_definitions: bool,
    pub(crate) shared: Arc<LookupShared>,
    /// Set for `lookup_flags`: answer flags, never materialize.
    pub(crate) flags_reply: Option<Reply<Result<FlagsMap>>>,
    /// The responsibility that cannot progress until this lookup completes
    /// (a reexport's own lookup); used to detect cycles.
    pub(crate) blocking_for: Option<RespId>,
}

/// How a definition arrives, with its symbols.
pub(crate) enum DefineKind {
    /// A unit, materialized on first lookup: the unit, its name, and the
    /// names and flags it defines.
    Unit(UnitCell, Arc<str>, Vec<(SymbolName, SymbolFlags)>),
    /// Fixed addresses, Lazy until first looked up, then resolved and
    /// emitted by the actor itself (an absolute-symbols unit).
    Fixed(Vec<(SymbolName, SymbolDef)>),
    /// Fixed addresses, Ready at once.
    Absolute(Vec<(SymbolName, SymbolDef)>),
}

/// Every mutation of session state.
pub(crate) enum Msg {
    CreateDylib {
        name: Arc<str>,
        reply: Reply<Result<Arc<DylibShared>>>,
    },
    FindDylib {
        name: String,
        reply: Reply<Option<Arc<DylibShared>>>,
    },
    Define {
        dylib: DylibId,
        tracker: TrackerId,
        kind: DefineKind,
        reply: Reply<Result<()>>,
    },
    Lookup(Box<LookupMsg>),
    GeneratorDone {
        lookup: u64,
        dylib: DylibId,
        generator: usize,
        asked: AskedNames,
        result: Result<()>,
    },
    Resolve {
        resp: RespId,
        defs: Vec<(SymbolName, SymbolDef)>,
        reply: Reply<Result<()>>,
    },
    Emit {
        resp: RespId,
        groups: Vec<DependenceGroup>,
        reply: Reply<Result<()>>,
    },
    Fail {
        resp: RespId,
        cause: Error,
    },
    Replace {
        resp: RespId,
        unit: UnitCell,
        unit_name: Arc<str>,
        symbols: Vec<(SymbolName, SymbolFlags)>,
        reply: Reply<Result<()>>,
    },
    Delegate {
        resp: RespId,
        names: Vec<SymbolName>,
        reply: Reply<Result<RespId>>,
    },
    Absorb {
        resp: RespId,
        others: Vec<RespId>,
        reply: Reply<Result<()>>,
    },
    DefineMaterializing {
        resp: RespId,
        symbols: Vec<(SymbolName, SymbolFlags)>,
        reply: Reply<Result<Vec<SymbolName>>>,
    },
    Owed {
        resp: RespId,
        requested_only: bool,
        reply: Reply<Result<Vec<(SymbolName, SymbolFlags)>>>,
    },
    SetLinkOrder {
        dylib: DylibId,
        order: Vec<(DylibId, DylibLookup)>,
        reply: Reply<Result<()>>,
    },
    GetLinkOrder {
        dylib: DylibId,
        reply: Reply<Vec<(Arc<DylibShared>, DylibLookup)>>,
    },
    AddGenerator {
        dylib: DylibId,
        generator: Arc<dyn Generator>,
        /// The generator's position in the dylib's list.
        reply: Reply<Result<usize>>,
    },
    RemoveGenerator {
        dylib: DylibId,
        index: usize,
        reply: Reply<Result<()>>,
    },
    RemoveSymbols {
        dylib: DylibId,
        names: Vec<SymbolName>,
        reply: Reply<Result<()>>,
    },
    CreateTracker {
        dylib: DylibId,
        reply: Reply<Result<Arc<TrackerShared>>>,
    },
    RemoveTracker {
        tracker: TrackerId,
        reply: Option<Reply<Result<()>>>,
    },
    TransferTracker {
        src: TrackerId,
        dst: TrackerId,
        reply: Reply<Result<()>>,
    },
    RemoveDylib {
        dylib: DylibId,
        reply: Reply<Result<()>>,
    },
    RegisterManager {
        manager: Arc<dyn ResourceManager>,
    },
    /// A blocking wait for `lookup` began inside materializations: `resps`
    /// is the thread's stack of them, innermost last (the outer ones cannot
    /// progress until the inner ones return).
    BlockedWait {
        lookup: u64,
        resps: Vec<RespId>,
    },
    Cancel {
        lookup: u64,
        timeout_millis: Option<u128>,
    },
    QueryState {
        dylib: DylibId,
        name: SymbolName,
        reply: Reply<Option<SymbolState>>,
    },
    TableSizes {
        reply: Reply<TableSizes>,
    },
    End {
        reply: Reply<()>,
    },
}

/// What a message causes outside the actor, in order.
pub(crate) enum Effect {
    /// Hand a task to the dispatcher.
    Dispatch(Task),
    /// Materialize units with one batch key (in one dylib and tracker),
    /// started in one drive, as one task.
    Materialize {
        key: BatchKey,
        members: Vec<(UnitCell, Responsibility)>,
    },
    /// Deliver a lookup's result.
    Complete(Arc<LookupShared>, Result<SymbolMap>),
    /// Drop user objects (units, generators) off the actor.
    Drop(Box<dyn Send>),
    /// Run resource managers' removal for these trackers' keys (each once
    /// no `with_resource_key` closure runs under it), then reply.
    RemoveResources {
        trackers: Vec<Arc<TrackerShared>>,
        managers: Vec<Arc<dyn ResourceManager>>,
        reply: Option<Reply<Result<()>>>,
    },
    /// Answer a request once the effects before this one have run.
    Signal(Reply<()>),
    /// Run resource managers' transfer (once no `with_resource_key`
    /// closure runs under `src`), then reply.
    TransferResources {
        dst: ResourceKey,
        src: Arc<TrackerShared>,
        managers: Vec<Arc<dyn ResourceManager>>,
        reply: Reply<Result<()>>,
    },
}

/// The effects of one drive. A drive rarely causes more than a few (a task
/// to dispatch, a lookup to complete), so they stay on the driver's stack:
/// no buffer to borrow from the inbox and give back under its lock.
pub(crate) type Effects = smallvec::SmallVec<[Effect; 4]>;

/// One driver's effects, still to run, oldest first, and its session.
struct EffectFrame {
    core: Option<Arc<SessionCore>>,
    effects: VecDeque<Effect>,
}

/// The frames of the drivers on this thread's stack: `frames[..live]`,
/// innermost last. The ones past `live` are empty, kept so that the next
/// driver reuses their buffers: a drive allocates nothing in the steady
/// state.
struct Frames {
    frames: Vec<EffectFrame>,
    live: usize,
}

crate::sync::thread_local_const! {
    /// The effects this thread owes: one frame per driver on its stack,
    /// innermost last. A driver runs its own frame one effect at a time;
    /// an effect can block (an in-place dispatch runs a materializer that
    /// waits for a lookup), and the effects queued behind it — perhaps the
    /// very dispatch that lookup needs — must not be stranded: every engine
    /// wait on this thread first runs what every frame still holds
    /// ([`run_pending_effects`]). Drivers that do not block nest no deeper
    /// than before: they run only their own frame.
    static PENDING_EFFECTS: std::cell::RefCell<Frames> =
        std::cell::RefCell::new(Frames { frames: Vec::new(), live: 0 });
}

/// Runs every effect this thread owes, in every driver's frame, until none
/// is left. Called before every engine wait, so no thread blocks while it
/// holds effects another wait may need. No engine lock is held.
pub(crate) fn run_pending_effects() {
    loop {
        let next = PENDING_EFFECTS.try_with(|frames| {
            let mut frames = frames.borrow_mut();
            let live = frames.live;
            // The session is cloned only for an effect found: most frames
            // a blocking wait looks through are empty.
            frames.frames[..live].iter_mut().find_map(|frame| {
                let core = frame.core.as_ref()?;
                let effect = frame.effects.pop_front()?;
                Some((core.clone(), effect))
            })
        });
        let Ok(Some((core, effect))) = next else {
            return;
        };
        core.run_effect(effect);
    }
}

/// Runs `effects` as this driver's frame (see [`PENDING_EFFECTS`]).
fn run_effects(core: &Arc<SessionCore>, effects: &mut Effects) {
    if effects.len() <= 1 {
        // Nothing is queued behind a lone effect: while it runs (and
        // blocks, perhaps) this driver owes nothing, so it needs no frame.
        // The common drive — one dispatch or one completion — skips the
        // thread-local frames altogether.
        if let Some(effect) = effects.pop() {
            core.run_effect(effect);
        }
        return;
    }
    let Ok(depth) = PENDING_EFFECTS.try_with(|frames| {
        let mut frames = frames.borrow_mut();
        let depth = frames.live;
        if depth == frames.frames.len() {
            frames.frames.push(EffectFrame {
                core: None,
                effects: VecDeque::new(),
            });
        }
        let frame = &mut frames.frames[depth];
        frame.core = Some(core.clone());
        frame.effects.extend(effects.drain(..));
        frames.live = depth + 1;
        depth
    }) else {
        // This thread's locals are gone (`exit()` runs `atexit` handlers
        // after them): nothing can be owed; run them here.
        for effect in effects.drain(..) {
            core.run_effect(effect);
        }
        return;
    };
    loop {
        let next = PENDING_EFFECTS.try_with(|frames| {
            frames
                .borrow_mut()
                .frames
                .get_mut(depth)
                .and_then(|frame| frame.effects.pop_front())
        });
        let Ok(Some(effect)) = next else {
            break;
        };
        core.run_effect(effect);
    }
    // Every frame above this one is empty (their drivers returned): give
    // them and this one back for reuse.
    let _ = PENDING_EFFECTS.try_with(|frames| {
        let mut frames = frames.borrow_mut();
        frames.live = depth;
        if let Some(frame) = frames.frames.get_mut(depth) {
            frame.core = None;
        }
    });
}

struct Inbox {
    queue: VecDeque<Msg>,
    /// An empty buffer kept for the next drain, so steady traffic allocates
    /// nothing.
    spare: VecDeque<Msg>,
    /// The state, while nobody drives. The driver takes it out together
    /// with the right to drive and puts it back when it gives that up, so
    /// the state needs no lock of its own.
    state: Option<Box<State>>,
}

/// The session's shared core: interner, dispatcher, mailbox and state.
pub(crate) struct SessionCore {
    pub(crate) interner: Interner,
    pub(crate) dispatcher: Arc<dyn Dispatcher>,
    inbox: Mutex<Inbox>,
    next_lookup: AtomicUsize,
    pub(crate) ended: AtomicBool,
    /// The forks counted when the session was made ([`crate::fork`]): in a
    /// child forked since, every request is refused.
    forks: u64,
}

impl Drop for SessionCore {
    /// In a forked child, the state — and every resource it owns: units,
    /// resource managers, through them linked code — is the parent's: it
    /// is left as `_exit` leaves it, so no teardown runs in the child (nor
    /// waits there on a lock a thread held at the fork).
    fn drop(&mut self) {
        if self.in_forked_child() {
            let inbox = self.inbox.get_mut();
            std::mem::forget(inbox.state.take());
            std::mem::forget(std::mem::take(&mut inbox.queue));
        }
    }
}

impl fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCore").finish_non_exhaustive()
    }
}

impl SessionCore {
    pub(crate) fn new(dispatcher: Arc<dyn Dispatcher>) -> Arc<Self> {
        Arc::new(SessionCore {
            interner: Interner::default(),
            dispatcher,
            inbox: Mutex::new(Inbox {
                queue: VecDeque::new(),
                spare: VecDeque::new(),
                state: Some(Box::new(State::new())),
            }),
            next_lookup: AtomicUsize::new(1),
            ended: AtomicBool::new(false),
            forks: crate::fork::forks(),
        })
    }

    /// Whether this process is a child forked since the session was made:
    /// the state may be held by a thread the child does not have, and work
    /// would wait for threads it does not have either.
    pub(crate) fn in_forked_child(&self) -> bool {
        crate::fork::forks() != self.forks
    }

    /// Answers `msg` as refused in a forked child, without the state.
    fn refuse_in_forked_child(self: &Arc<Self>, msg: Msg) {
        let mut effects = Effects::new();
        state::refuse(
            msg,
            state::Refusal::ForkedChild,
            &TableSizes::default,
            &mut effects,
        );
        run_effects(self, &mut effects);
    }

    pub(crate) fn next_lookup_id(&self) -> u64 {
        self.next_lookup.fetch_add(1, Ordering::Relaxed) as u64
    }

    pub(crate) fn dispatch(&self, task: Task) {
        self.dispatcher.dispatch(task);
    }

    /// Delivers `msg` to the actor; drives it if nobody else is.
    pub(crate) fn send(self: &Arc<Self>, msg: Msg) {
        if self.in_forked_child() {
            return self.refuse_in_forked_child(msg);
        }
        let state = {
            let mut inbox = self.inbox.lock();
            inbox.queue.push_back(msg);
            match inbox.state.take() {
                Some(state) => state,
                // Somebody drives; it re-checks the queue before it gives up.
                None => return,
            }
        };
        self.drive(state, &mut Effects::new());
    }

    /// Applies an operation: when nobody drives the mailbox, this thread
    /// becomes the driver and applies `direct` to the state itself — the same
    /// single owner, minus a message. Otherwise it goes to the driver as
    /// `message`. The inbox is empty whenever nobody drives, so this thread's
    /// earlier messages are always applied first.
    pub(crate) fn apply<P>(
        self: &Arc<Self>,
        payload: P,
        direct: impl FnOnce(&mut State, &Arc<Self>, P, &mut Effects),
        message: impl FnOnce(P) -> Msg,
    ) {
        if self.in_forked_child() {
            return self.refuse_in_forked_child(message(payload));
        }
        let mut inbox = self.inbox.lock();
        let Some(mut state) = inbox.state.take() else {
            inbox.queue.push_back(message(payload));
            return;
        };
        drop(inbox);
        state.advance_epoch(true);
        let mut effects = Effects::new();
        if state.has_ended() {
            // Refused the one way the handler refuses everything.
            state.handle(self, message(payload), &mut effects);
        } else {
            direct(&mut state, self, payload, &mut effects);
        }
        self.drive(state, &mut effects);
    }

    /// A synchronous [`SessionCore::apply`]: the result of `direct`, or the
    /// reply to `message` once the driver has applied it.
    pub(crate) fn request<P, T>(
        self: &Arc<Self>,
        payload: P,
        direct: impl FnOnce(&mut State, &Arc<Self>, P, &mut Effects) -> T,
        message: impl FnOnce(P, Reply<T>) -> Msg,
    ) -> T {
        let mut result = None;
        let mut waiting = None;
        self.apply(
            payload,
            |state, core, payload, fx| result = Some(direct(state, core, payload, fx)),
            |payload| {
                let (reply, wait) = Reply::new();
                waiting = Some(wait);
                message(payload, reply)
            },
        );
        match (result, waiting) {
            (Some(value), _) => value,
            (None, Some(wait)) => {
                run_pending_effects();
                wait.wait()
            }
            (None, None) => unreachable!("apply runs exactly one of its two paths"),
        }
    }

    /// Drains the mailbox, then — no longer the driver — runs the effects
    /// (those of a direct request first, if any).
    fn drive(self: &Arc<Self>, state: Box<State>, effects: &mut Effects) {
        {
            let mut inbox = self.inbox.lock();
            if inbox.queue.is_empty() {
                inbox.state = Some(state);
            } else {
                drop(inbox);
                self.drain(state, effects);
            }
        }
        run_effects(self, effects);
    }

    /// Applies queued messages until the inbox is empty, then gives the
    /// mailbox up.
    fn drain(self: &Arc<Self>, mut state: Box<State>, effects: &mut Effects) {
        let mut batch = VecDeque::new();
        loop {
            {
                let mut inbox = self.inbox.lock();
                if inbox.queue.is_empty() {
                    inbox.state = Some(state);
                    if batch.capacity() > inbox.spare.capacity() {
                        inbox.spare = batch;
                    }
                    return;
                }
                if batch.capacity() == 0 {
                    batch = std::mem::take(&mut inbox.spare);
                }
                std::mem::swap(&mut inbox.queue, &mut batch);
            }
            state.advance_epoch(false);
            for msg in batch.drain(..) {
                state.handle(self, msg, effects);
            }
        }
    }

    fn run_effect(&self, effect: Effect) {
        match effect {
            Effect::Dispatch(task) => self.dispatcher.dispatch(task),
            // A batch of one runs as any unit does (`run_batch_materialization`
            // hands a lone unit to `materialize`).
            Effect::Materialize { members, .. } => {
                self.dispatcher.dispatch(Task::new("materialize", move || {
                    run_batch_materialization(members)
                }))
            }
            Effect::Complete(shared, result) => shared.complete(self, result),
            Effect::Drop(object) => drop(object),
            Effect::RemoveResources {
                trackers,
                managers,
                reply,
            } => crate::tracker::remove_resources(trackers, managers, reply),
            Effect::Signal(reply) => reply.send(()),
            Effect::TransferResources {
                dst,
                src,
                managers,
                reply,
            } => crate::tracker::transfer_resources(&src, dst, managers, reply),
        }
    }
}
