//! Lookups: what to search ([`SearchOrder`]), what to find ([`LookupSet`]),
//! what comes back ([`SymbolMap`]) and the handle to wait on ([`Lookup`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::actor::{Msg, SessionCore};
use crate::dispatch::{PoolShared, Task, current_pool};
use crate::error::{Error, Result};
use crate::name::SymbolName;
use crate::session::Dylib;
use crate::symbol::{RequiredState, SymbolDef, SymbolFlags};
use crate::sync::{Arc, Condvar, Mutex, thread_local_const};

use smallvec::SmallVec;

/// Which symbols of a dylib a search may see.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DylibLookup {
    /// Only symbols with [`SymbolFlags::EXPORTED`].
    ExportedOnly,
    /// Every symbol, hidden ones too.
    All,
}

/// How much a name is needed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SymbolLookup {
    /// Missing is an error.
    Required,
    /// Missing is fine: the name is simply absent from the result.
    Weak,
}

/// Why a lookup is made; passed on to generators (archive generators, for
/// example, only pull members for static links).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum LookupKind {
    /// A linker resolving references.
    #[default]
    Static,
    /// A host asking by name at run time, like `dlsym`.
    DlSym,
}

/// The dylibs a lookup searches, in order. Exactly these: a dylib's own link
/// order is not followed (it is used only to link code defined in it).
#[derive(Clone, Default, Debug)]
pub struct SearchOrder {
    pub(crate) entries: Vec<(Dylib, DylibLookup)>,
}

impl SearchOrder {
    /// An empty order.
    pub fn new() -> Self {
        SearchOrder::default()
    }

    /// This order with `dylib` appended.
    pub fn with(mut self, dylib: &Dylib, flags: DylibLookup) -> Self {
        self.entries.push((dylib.clone(), flags));
        self
    }

    /// Appends `dylib`.
    pub fn push(&mut self, dylib: &Dylib, flags: DylibLookup) {
        self.entries.push((dylib.clone(), flags));
    }

    /// The entries in search order.
    pub fn entries(&self) -> &[(Dylib, DylibLookup)] {
        &self.entries
    }

    /// The order by dylib id, as the actor keeps it.
    pub(crate) fn ids(&self) -> crate::actor::SearchIds {
        let mut ids = crate::actor::SearchIds::new();
        for (dylib, visibility) in &self.entries {
            ids.push((dylib.id(), *visibility));
        }
        ids
    }
}

impl FromIterator<(Dylib, DylibLookup)> for SearchOrder {
    fn from_iter<I: IntoIterator<Item = (Dylib, DylibLookup)>>(iter: I) -> Self {
        SearchOrder {
            entries: iter.into_iter().collect(),
        }
    }
}

/// The names a lookup wants, each required or weak. Built in one go (from
/// an iterator) and immutable after: the lookup's result shares the names
/// instead of copying them.
#[derive(Clone, Default, Debug)]
pub struct LookupSet {
    pub(crate) names: NameList,
}

/// A lookup's names: one inline (the common case costs no allocation), or
/// many behind one reference count shared by the set, the actor's pending
/// lookup and the result.
#[derive(Clone, Debug)]
pub(crate) enum NameList {
    One([(SymbolName, SymbolLookup); 1]),
    Many(Arc<[(SymbolName, SymbolLookup)]>),
}

impl Default for NameList {
    fn default() -> Self {
        NameList::Many(Arc::from([]))
    }
}

impl std::ops::Deref for NameList {
    type Target = [(SymbolName, SymbolLookup)];
    fn deref(&self) -> &Self::Target {
        match self {
            NameList::One(one) => one,
            NameList::Many(many) => many,
        }
    }
}

impl LookupSet {
    /// An empty set.
    pub fn new() -> Self {
        LookupSet::default()
    }

    /// Every name required.
    pub fn required(names: impl IntoIterator<Item = SymbolName>) -> Self {
        names
            .into_iter()
            .map(|n| (n, SymbolLookup::Required))
            .collect()
    }

    /// Every name weak: missing ones are simply absent from the result.
    pub fn weak(names: impl IntoIterator<Item = SymbolName>) -> Self {
        names.into_iter().map(|n| (n, SymbolLookup::Weak)).collect()
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No names?
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names and how much each is needed.
    pub fn iter(&self) -> impl Iterator<Item = &(SymbolName, SymbolLookup)> {
        self.names.iter()
    }
}

impl FromIterator<(SymbolName, SymbolLookup)> for LookupSet {
    fn from_iter<I: IntoIterator<Item = (SymbolName, SymbolLookup)>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        let names = if iter.size_hint() == (1, Some(1)) {
            match (iter.next(), iter.next()) {
                (Some(one), None) => NameList::One([one]),
                // A size hint that lied: keep everything.
                (first, second) => {
                    NameList::Many(first.into_iter().chain(second).chain(iter).collect())
                }
            }
        } else {
            // Exact-size iterators are collected straight into the shared
            // allocation.
            NameList::Many(iter.collect())
        };
        LookupSet { names }
    }
}

/// How long a lookup waits for names that no dylib defines yet.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum AwaitDefinitions {
    /// Missing required names fail the lookup at once.
    #[default]
    No,
    /// Wait until a later `define` supplies them, for at most this long.
    For(Duration),
    /// Wait until they are defined or the lookup is cancelled.
    UntilCancelled,
}

/// A complete lookup description: search order, names, required state and
/// options. `Session::lookup` is shorthand for the common case.
#[derive(Clone, Debug)]
pub struct LookupRequest {
    pub(crate) order: SearchOrder,
    pub(crate) names: LookupSet,
    pub(crate) state: RequiredState,
    pub(crate) kind: LookupKind,
    pub(crate) await_definitions: AwaitDefinitions,
}

impl LookupRequest {
    /// Look `names` up in `order`, completing when each is in `state`.
    pub fn new(order: SearchOrder, names: LookupSet, state: RequiredState) -> Self {
        LookupRequest {
            order,
            names,
            state,
            kind: LookupKind::Static,
            await_definitions: AwaitDefinitions::No,
        }
    }

    /// Sets the lookup kind passed to generators.
    pub fn kind(mut self, kind: LookupKind) -> Self {
        self.kind = kind;
        self
    }

    /// Waits for names not defined yet instead of failing at once.
    pub fn await_definitions(mut self, how: AwaitDefinitions) -> Self {
        self.await_definitions = how;
        self
    }
}

/// The result of a lookup: each found name with its definition, in request
/// order. Weak names that were not found are absent; side-effects-only
/// symbols have no entry.
#[derive(Clone, Default)]
pub struct SymbolMap {
    /// The lookup's names, shared with its [`LookupSet`].
    names: NameList,
    /// What was found, in request order (one inline: most lookups are one name).
    found: SmallVec<[Found; 1]>,
    /// Positions in `found` by the hash of the name's text, built on the
    /// first by-name question of a map larger than [`INDEX_FROM`].
    index: std::sync::OnceLock<Box<NameIndex>>,
}

/// Maps with at most this many entries answer by-name questions with a
/// scan (cheaper than hashing for a few entries); larger ones build an index.
const INDEX_FROM: usize = 16;

/// A [`SymbolMap`]'s by-name index: text hash → the first position in
/// `found` of each name with that hash (collisions share a bucket). The
/// keys are hashes already; the Fx hash spreads them with one multiply.
type NameIndex = std::collections::HashMap<u64, SmallVec<[u32; 1]>, rustc_hash::FxBuildHasher>;

/// One found name of a [`SymbolMap`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// The name's position in the lookup set.
    pub(crate) at: u32,
    /// The position in the search order of the dylib that defined it.
    pub(crate) source: u32,
    pub(crate) def: SymbolDef,
}

impl SymbolMap {
    pub(crate) fn new(names: NameList, found: SmallVec<[Found; 1]>) -> Self {
        debug_assert!(found.iter().all(|f| (f.at as usize) < names.len()));
        SymbolMap {
            names,
            found,
            index: std::sync::OnceLock::new(),
        }
    }

    fn name(&self, f: &Found) -> &SymbolName {
        &self.names[f.at as usize].0
    }

    /// The first entry whose name has text hash `hash` and passes `is`:
    /// a scan for small maps, the index (built once) for larger ones.
    fn find_by(&self, hash: u64, is: impl Fn(&SymbolName) -> bool) -> Option<&Found> {
        if self.found.len() <= INDEX_FROM {
            return self.found.iter().find(|f| is(self.name(f)));
        }
        let index = self.index.get_or_init(|| Box::new(self.build_index()));
        index
            .get(&hash)?
            .iter()
            .map(|&i| &self.found[i as usize])
            .find(|f| is(self.name(f)))
    }

    /// Every name's first position, by text hash.
    fn build_index(&self) -> NameIndex {
        let mut index =
            NameIndex::with_capacity_and_hasher(self.found.len(), rustc_hash::FxBuildHasher);
        for (i, f) in self.found.iter().enumerate() {
            let name = self.name(f);
            let bucket = index.entry(name.text_hash()).or_default();
            // A name asked twice: the first entry answers, as a scan would.
            if !bucket
                .iter()
                .any(|&j| self.name(&self.found[j as usize]) == name)
            {
                bucket.push(i as u32);
            }
        }
        index
    }

    fn find(&self, name: &SymbolName) -> Option<&Found> {
        self.find_by(name.text_hash(), |n| n == name)
    }

    /// Whether the by-name index was built (for tests).
    #[cfg(test)]
    fn is_indexed(&self) -> bool {
        self.index.get().is_some()
    }

    /// The index, in the lookup's search order, of the dylib that defined
    /// `name` (a linker uses it to declare where its dependencies live).
    pub fn found_in(&self, name: &SymbolName) -> Option<usize> {
        self.find(name).map(|f| f.source as usize)
    }

    /// The entries with the search-order index of the dylib defining each.
    pub fn iter_with_source(&self) -> impl Iterator<Item = (&SymbolName, &SymbolDef, usize)> {
        self.found
            .iter()
            .map(|f| (self.name(f), &f.def, f.source as usize))
    }

    /// Every name of the lookup set, in its order, with its definition if
    /// found: answers a whole set without searching by name.
    pub fn by_request(&self) -> impl Iterator<Item = (&SymbolName, Option<&SymbolDef>)> {
        let mut found = self.found.iter().peekable();
        self.names.iter().enumerate().map(move |(i, (name, _))| {
            let def = found.next_if(|f| f.at as usize == i).map(|f| &f.def);
            (name, def)
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// No entries?
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The definition of `name`: O(1) (a map of more than a few entries
    /// builds a hash index on the first by-name question, once).
    /// [`SymbolMap::by_request`] answers a whole set without hashing.
    pub fn get(&self, name: &SymbolName) -> Option<SymbolDef> {
        self.find(name).map(|f| f.def)
    }

    /// The definition of the name spelled `name` (any session's spelling):
    /// O(1), like [`SymbolMap::get`].
    pub fn get_str(&self, name: &str) -> Option<SymbolDef> {
        self.find_by(crate::name::hash_str(name), |n| n.as_str() == name)
            .map(|f| f.def)
    }

    /// The entries, in request order.
    pub fn iter(&self) -> impl Iterator<Item = (&SymbolName, &SymbolDef)> {
        self.found.iter().map(|f| (self.name(f), &f.def))
    }

    /// The entries as a vector.
    pub fn into_vec(self) -> Vec<(SymbolName, SymbolDef)> {
        self.iter().map(|(n, d)| (n.clone(), *d)).collect()
    }

    /// The entries as a hash map.
    pub fn to_hash_map(&self) -> std::collections::HashMap<SymbolName, SymbolDef> {
        self.iter().map(|(n, d)| (n.clone(), *d)).collect()
    }
}

impl PartialEq for SymbolMap {
    fn eq(&self, other: &Self) -> bool {
        self.iter_with_source().eq(other.iter_with_source())
    }
}
impl Eq for SymbolMap {}

impl fmt::Debug for SymbolMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl IntoIterator for SymbolMap {
    type Item = (SymbolName, SymbolDef);
    type IntoIter = std::vec::IntoIter<(SymbolName, SymbolDef)>;
    fn into_iter(self) -> Self::IntoIter {
        self.into_vec().into_iter()
    }
}

/// The flags of the names a `lookup_flags` call found.
pub type FlagsMap = Vec<(SymbolName, SymbolFlags)>;

type Callback = Box<dyn FnOnce(Result<SymbolMap>) + Send>;

/// Completion state shared between a pending lookup and its handle. The
/// lookup's id travels beside it (in the message and the handle), so that a
/// slot nobody shares any more can serve this thread's next lookup.
pub(crate) struct LookupShared {
    slot: Mutex<Slot>,
    done: Condvar,
}

thread_local_const! {
    /// A delivered slot no one else holds, kept for this thread's next
    /// lookup (most complete on the caller's thread: then none allocates).
    static SPARE_SLOT: std::cell::RefCell<Option<Arc<LookupShared>>> = std::cell::RefCell::new(None);
}

#[derive(Default)]
struct Slot {
    result: Option<Result<SymbolMap>>,
    completed: bool,
    waker: Option<Waker>,
    callback: Option<Callback>,
    helper: Option<Arc<PoolShared>>,
    /// The deadline of a lookup that awaits definitions for a while,
    /// cancelled when it completes first.
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    deadline: Option<crate::timer::Deadline>,
}

impl fmt::Debug for LookupShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookupShared").finish_non_exhaustive()
    }
}

impl LookupShared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(LookupShared {
            slot: Mutex::new(Slot::default()),
            done: Condvar::new(),
        })
    }

    /// An empty slot: this thread's spare one, or a new one.
    pub(crate) fn obtain() -> Arc<Self> {
        SPARE_SLOT
            .try_with(|spare| spare.borrow_mut().take())
            .ok()
            .flatten()
            .unwrap_or_else(Self::new)
    }

    /// Keeps `this` as this thread's spare slot if nobody else can reach it
    /// (the actor and the effects have dropped their references: it was
    /// delivered and its result taken).
    pub(crate) fn recycle(mut this: Arc<Self>) {
        let Some(unique) = Arc::get_mut(&mut this) else {
            return;
        };
        // Delivered and taken: everything but the flag is empty already.
        let slot = unique.slot.get_mut();
        if slot.result.is_some()
            || slot.waker.is_some()
            || slot.callback.is_some()
            || slot.helper.is_some()
        {
            return;
        }
        slot.completed = false;
        let _ = SPARE_SLOT.try_with(|spare| *spare.borrow_mut() = Some(this));
    }

    /// Delivers the result: to the callback (as a task on `core`'s
    /// dispatcher), or to whoever waits or polls. Runs outside the actor.
    pub(crate) fn complete(&self, core: &SessionCore, result: Result<SymbolMap>) {
        let mut slot = self.slot.lock();
        if slot.completed {
            return;
        }
        slot.completed = true;
        // Nothing is locked under the timer's lock, and its job holds only
        // a weak reference: dropped here, it runs nothing.
        #[cfg(not(any(kiln_loom, kiln_shuttle)))]
        if let Some(deadline) = slot.deadline.take() {
            crate::timer::cancel(deadline);
        }
        if let Some(callback) = slot.callback.take() {
            drop(slot);
            core.dispatch(Task::new("lookup completion callback", move || {
                callback(result)
            }));
            return;
        }
        slot.result = Some(result);
        let waker = slot.waker.take();
        let helper = slot.helper.take();
        drop(slot);
        // Free when nobody sleeps on it (the condvar counts its sleepers).
        self.done.notify_all();
        if let Some(helper) = helper {
            helper.wake();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_completed(&self) -> bool {
        self.slot.lock().completed
    }

    /// Keeps `deadline` to cancel when the lookup completes; cancels it now
    /// if it has.
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    pub(crate) fn set_deadline(&self, deadline: crate::timer::Deadline) {
        let mut slot = self.slot.lock();
        if slot.completed {
            drop(slot);
            crate::timer::cancel(deadline);
        } else {
            slot.deadline = Some(deadline);
        }
    }

    /// The result, if the lookup has completed (and it was not taken).
    pub(crate) fn take_if_completed(&self) -> Option<Result<SymbolMap>> {
        let mut slot = self.slot.lock();
        if slot.completed {
            slot.result.take()
        } else {
            None
        }
    }

    fn take(&self) -> Option<Result<SymbolMap>> {
        self.slot.lock().result.take()
    }

    fn set_callback(&self, core: &SessionCore, callback: Callback) {
        let mut slot = self.slot.lock();
        if slot.completed {
            let result = slot
                .result
                .take()
                .unwrap_or_else(|| Err(Error::Usage("lookup result already taken".into())));
            drop(slot);
            core.dispatch(Task::new("lookup completion callback", move || {
                callback(result)
            }));
        } else {
            slot.callback = Some(callback);
        }
    }
}

/// A lookup in flight. Wait for it ([`Lookup::wait`],
/// [`Lookup::wait_timeout`]), `.await` it, or hand it a callback
/// ([`Lookup::on_complete`]). Dropping the handle does not cancel the work:
/// materializations it started still finish.
pub struct Lookup {
    state: LookupHandleState,
    /// Polled pending on a pool's worker: a spare worker runs the pool's
    /// tasks until the lookup is ready or dropped (one spare for every
    /// lookup pending on that worker).
    stand_in: Option<std::sync::Arc<crate::dispatch::Spare>>,
}

enum LookupHandleState {
    /// Completed on the caller's thread (the fast path), or taken.
    Done(Option<Result<SymbolMap>>),
    /// The slot, the session and the lookup's id.
    Pending(Arc<LookupShared>, Arc<SessionCore>, u64),
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = matches!(self.state, LookupHandleState::Pending(..));
        f.debug_struct("Lookup").field("pending", &pending).finish()
    }
}

impl Lookup {
    pub(crate) fn done(result: Result<SymbolMap>) -> Self {
        Lookup {
            state: LookupHandleState::Done(Some(result)),
            stand_in: None,
        }
    }

    pub(crate) fn pending(core: Arc<SessionCore>, shared: Arc<LookupShared>, id: u64) -> Self {
        Lookup {
            state: LookupHandleState::Pending(shared, core, id),
            stand_in: None,
        }
    }

    /// Whether the result is available without waiting.
    pub fn is_complete(&self) -> bool {
        match &self.state {
            LookupHandleState::Done(_) => true,
            LookupHandleState::Pending(shared, ..) => shared.is_completed(),
        }
    }

    /// Blocks until the lookup completes. On a worker-pool thread it runs
    /// other queued tasks meanwhile; inside a materializer, a wait that would
    /// close a cycle of blocking lookups fails with [`Error::BlockingCycle`].
    pub fn wait(self) -> Result<SymbolMap> {
        self.wait_until(None)
    }

    /// Like [`Lookup::wait`], but gives up after `timeout`: the lookup is
    /// cancelled and [`Error::Timeout`] names what had not arrived.
    pub fn wait_timeout(self, timeout: Duration) -> Result<SymbolMap> {
        self.wait_until(Some((Instant::now() + timeout, timeout)))
    }

    fn wait_until(mut self, deadline: Option<(Instant, Duration)>) -> Result<SymbolMap> {
        let (shared, core, id) = match &mut self.state {
            LookupHandleState::Done(result) => {
                return result
                    .take()
                    .unwrap_or_else(|| Err(Error::Usage("lookup result already taken".into())));
            }
            LookupHandleState::Pending(shared, core, id) => (shared.clone(), core.clone(), *id),
        };
        if core.in_forked_child() && !shared.is_completed() {
            // Made before a fork: what would complete it stayed in the
            // parent.
            return Err(Error::ForkedChild);
        }
        // Effects this thread still owes (say, the dispatch of the unit this
        // lookup waits for, queued behind the in-place materializer now
        // calling this) run before it blocks.
        crate::actor::run_pending_effects();
        if !shared.is_completed() {
            // Inside materializations, every one on this thread's stack is
            // blocked by this wait (the in-place dispatcher and helping
            // waits nest them): the actor checks for a cycle through any.
            let resps = crate::responsibility::materialization_stack();
            if !resps.is_empty() {
                core.send(Msg::BlockedWait { lookup: id, resps });
            }
        }
        // Tasks this thread dispatched in place and queued behind the one
        // now waiting (say, the unit this lookup waits for) run before it
        // blocks — on a pool's worker too (an in-place session driven from
        // a pool session's task).
        run_queued_in_place(&shared);
        if let Some(pool) = current_pool() {
            shared.slot.lock().helper = Some(pool.clone());
            let done = || shared.is_completed();
            if !pool.help_until(&done, deadline.map(|d| d.0)) {
                self.cancel_with_timeout(deadline);
            }
        } else {
            let mut slot = shared.slot.lock();
            while !slot.completed {
                match deadline {
                    None => {
                        slot = shared.done.wait(slot);
                    }
                    Some((at, _)) => {
                        let now = Instant::now();
                        if now >= at {
                            drop(slot);
                            self.cancel_with_timeout(deadline);
                            slot = shared.slot.lock();
                            continue;
                        }
                        slot = shared.done.wait_timeout(slot, at - now);
                    }
                }
            }
        }
        // The result is there unless a callback took it (it cannot: the
        // handle was consumed by `on_complete`).
        loop {
            if let Some(result) = shared.take() {
                return result;
            }
            let mut slot = shared.slot.lock();
            while !slot.completed {
                slot = shared.done.wait(slot);
            }
        }
    }

    fn cancel_with_timeout(&self, deadline: Option<(Instant, Duration)>) {
        if let LookupHandleState::Pending(_, core, id) = &self.state {
            let millis = deadline.map_or(0, |d| d.1.as_millis());
            core.send(Msg::Cancel {
                lookup: *id,
                timeout_millis: Some(millis),
            });
        }
    }

    /// Cancels the lookup: it fails with [`Error::Cancelled`] unless it has
    /// completed already. Materializations it started still finish.
    pub fn cancel(&self) {
        if let LookupHandleState::Pending(_, core, id) = &self.state {
            core.send(Msg::Cancel {
                lookup: *id,
                timeout_millis: None,
            });
        }
    }

    /// Calls `f` with the result when the lookup completes: as a task on the
    /// session's dispatcher, or — when the result is already here — right
    /// away on this thread. Never on the state actor.
    pub fn on_complete(self, f: impl FnOnce(Result<SymbolMap>) + Send + 'static) {
        match self.state {
            LookupHandleState::Done(mut result) => f(result
                .take()
                .unwrap_or_else(|| Err(Error::Usage("lookup result already taken".into())))),
            LookupHandleState::Pending(shared, core, _) => shared.set_callback(&core, Box::new(f)),
        }
    }
}

/// Runs the tasks this thread's in-place dispatcher queued until the lookup
/// behind `shared` completes or none is left.
fn run_queued_in_place(shared: &LookupShared) {
    while !shared.is_completed() {
        let Some(task) = crate::dispatch::in_place::pop() else {
            break;
        };
        task.run();
    }
}

impl Future for Lookup {
    type Output = Result<SymbolMap>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            LookupHandleState::Done(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err(Error::Usage("lookup polled after completion".into()))),
            ),
            LookupHandleState::Pending(shared, core, _)
                if core.in_forked_child() && !shared.is_completed() =>
            {
                // As in a blocking wait: it would never complete here.
                Poll::Ready(Err(Error::ForkedChild))
            }
            LookupHandleState::Pending(shared, ..) => {
                // Tasks this thread queued in place (the unit awaited, say)
                // run first, as in a blocking wait: no other thread will.
                // On a pool's worker, so do the pool's queued tasks.
                run_queued_in_place(shared);
                let pool = current_pool();
                if let Some(pool) = &pool {
                    pool.help_now(&|| shared.is_completed());
                }
                // The executor's waker code (clone, drop) runs outside the
                // slot's lock.
                let waker = cx.waker().clone();
                let mut slot = shared.slot.lock();
                if slot.completed {
                    let result = slot.result.take().unwrap_or_else(|| {
                        Err(Error::Usage("lookup polled after completion".into()))
                    });
                    drop(slot);
                    self.stand_in = None;
                    Poll::Ready(result)
                } else {
                    let old = slot.waker.replace(waker);
                    drop(slot);
                    drop(old);
                    // The executor may park this worker until woken: tasks
                    // queued meanwhile need another. (Polled on another
                    // worker than before: that worker's stand-in.)
                    if let Some(pool) = pool {
                        self.stand_in = pool.stand_in();
                    }
                    Poll::Pending
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::Interner;

    /// A map over `names` (repeats allowed) where every third name is missing.
    fn map(interner: &Interner, names: &[String]) -> SymbolMap {
        let list: Arc<[(SymbolName, SymbolLookup)]> = names
            .iter()
            .map(|n| (interner.intern(n), SymbolLookup::Weak))
            .collect();
        let found = (0..names.len())
            .filter(|i| i % 3 != 2)
            .map(|i| Found {
                at: i as u32,
                source: (i % 4) as u32,
                def: SymbolDef::new(0x1000 + i as u64, SymbolFlags::EXPORTED),
            })
            .collect();
        SymbolMap::new(NameList::Many(list), found)
    }

    /// What a scan answers: the first entry with the name.
    fn scan(m: &SymbolMap, name: &str) -> Option<(SymbolDef, usize)> {
        m.iter_with_source()
            .find(|(n, _, _)| n.as_str() == name)
            .map(|(_, d, s)| (*d, s))
    }

    #[test]
    fn lookups_by_name_agree_with_a_scan_small_and_large() {
        for len in [0, 1, 5, INDEX_FROM, INDEX_FROM + 1, 2_000] {
            let interner = Interner::default();
            // Every name twice (second copy later) and a few missing ones.
            let mut names: Vec<String> = (0..len).map(|i| format!("sym{i}")).collect();
            names.extend((0..len / 2).map(|i| format!("sym{i}")));
            let m = map(&interner, &names);
            let other = Interner::default();
            for i in 0..len + 3 {
                let text = format!("sym{i}");
                let expected = scan(&m, &text);
                let name = interner.intern(&text);
                assert_eq!(m.get(&name), expected.map(|e| e.0), "{text} of {len}");
                assert_eq!(m.get_str(&text), expected.map(|e| e.0), "{text} of {len}");
                assert_eq!(m.found_in(&name), expected.map(|e| e.1), "{text} of {len}");
                // Same text, another session: an equal name (names compare
                // by text), so the same answer.
                assert_eq!(m.get(&other.intern(&text)), expected.map(|e| e.0));
            }
            assert_eq!(m.is_indexed(), m.len() > INDEX_FROM, "{len}");
            // By position stays as it was: request order, first to last.
            let positions: Vec<u64> = m.iter().map(|(_, d)| d.address).collect();
            let mut sorted = positions.clone();
            sorted.sort_unstable();
            assert_eq!(positions, sorted);
        }
    }

    #[test]
    fn clones_answer_like_the_original() {
        let interner = Interner::default();
        let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
        let m = map(&interner, &names);
        assert!(m.get_str("n0").is_some());
        let c = m.clone();
        for n in &names {
            assert_eq!(c.get_str(n), m.get_str(n));
        }
        assert_eq!(c, m);
    }
}
