//! The handles a JIT host holds: [`Session`] and [`Dylib`].

use std::any::Any;
use std::fmt;
use std::time::Duration;

use crate::actor::{
    DYLIB_HAS_GENERATORS, DYLIB_REMOVED, DefineKind, DylibId, DylibShared, LookupMsg, Msg, Reply,
    SessionCore, UnitCell,
};
use crate::dispatch::{Dispatcher, WorkerPool};
use crate::error::{Error, Result};
use crate::generator::{Generator, GeneratorId};
use crate::index::Probe;
use crate::lookup::{
    self, AwaitDefinitions, DylibLookup, FlagsMap, Lookup, LookupKind, LookupRequest, LookupSet,
    LookupShared, SearchOrder, SymbolLookup, SymbolMap,
};
use crate::name::SymbolName;
use crate::responsibility::Responsibility;
use crate::symbol::{RequiredState, SymbolDef, SymbolState};
use crate::sync::{Arc, Ordering};
use crate::tracker::{ResourceManager, ResourceTracker};
use crate::unit::{AbsoluteSymbols, MaterializationUnit};

use smallvec::SmallVec;

/// A JIT session: the name pool, the dylibs, the state actor and the
/// dispatcher. Cheap to clone; every clone is the same session.
///
/// Call [`Session::end`] when done: it removes every dylib (running resource
/// managers) and fails lookups still in flight. Units and generators may hold
/// session handles, so dropping the handles alone does not free the session.
#[derive(Clone)]
pub struct Session {
    pub(crate) core: Arc<SessionCore>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// Builds a [`Session`].
#[derive(Default)]
pub struct SessionBuilder {
    dispatcher: Option<Arc<dyn Dispatcher>>,
}

impl fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("custom_dispatcher", &self.dispatcher.is_some())
            .finish()
    }
}

impl SessionBuilder {
    /// Runs tasks on `dispatcher` (default: a [`WorkerPool`] with a worker per core).
    pub fn dispatcher(mut self, dispatcher: impl Dispatcher) -> Self {
        self.dispatcher = Some(Arc::new(dispatcher));
        self
    }

    /// Runs tasks on a shared dispatcher.
    pub fn shared_dispatcher(mut self, dispatcher: Arc<dyn Dispatcher>) -> Self {
        self.dispatcher = Some(dispatcher);
        self
    }

    /// The session.
    pub fn build(self) -> Session {
        let dispatcher = self
            .dispatcher
            .unwrap_or_else(|| Arc::new(WorkerPool::with_available_parallelism()));
        Session {
            core: SessionCore::new(dispatcher),
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    /// A session with a worker pool of one thread per core.
    pub fn new() -> Session {
        Session::builder().build()
    }

    /// Configure a session.
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// The interned name for `text`.
    pub fn intern(&self, text: &str) -> SymbolName {
        self.core.interner.intern(text)
    }

    /// The interned names for `texts`, in order: [`Session::intern`] of
    /// each, cheaper for many names at once (the interner's locks are
    /// taken once per shard, not once per name).
    ///
    /// ```
    /// let session = kiln_engine::Session::new();
    /// let names = session.intern_all(["f", "g", "f"]);
    /// assert_eq!(names[0], session.intern("f"));
    /// assert!(names[0] == names[2] && names[1] != names[0]);
    /// ```
    pub fn intern_all<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Vec<SymbolName> {
        self.core.interner.intern_all(texts)
    }

    /// Creates a dylib. Its link order starts as `[(itself, All)]`.
    pub fn create_dylib(&self, name: &str) -> Result<Dylib> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::CreateDylib {
            name: name.into(),
            reply,
        });
        let shared = wait.wait()?;
        Ok(Dylib::from_shared(self.core.clone(), shared))
    }

    /// The live dylib called `name`.
    pub fn dylib(&self, name: &str) -> Option<Dylib> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::FindDylib {
            name: name.to_string(),
            reply,
        });
        wait.wait()
            .map(|s| Dylib::from_shared(self.core.clone(), s))
    }

    /// Looks `names` up in `order`, completing when each is in `state`.
    /// Names already Ready complete on this thread with no message to the
    /// state actor; others may start materialization.
    pub fn lookup(&self, order: &SearchOrder, names: &LookupSet, state: RequiredState) -> Lookup {
        self.start_lookup(
            order,
            names,
            state,
            LookupKind::Static,
            AwaitDefinitions::No,
            None,
        )
    }

    /// A lookup with every option.
    pub fn lookup_with(&self, request: &LookupRequest) -> Lookup {
        self.start_lookup(
            &request.order,
            &request.names,
            request.state,
            request.kind,
            request.await_definitions,
            None,
        )
    }

    /// A lookup made by a running unit that cannot finish until it completes
    /// (e.g. a reexport's own lookup): the engine reports a cycle of such
    /// waits as [`Error::BlockingCycle`] instead of hanging.
    pub fn lookup_for_unit(
        &self,
        order: &SearchOrder,
        names: LookupSet,
        state: RequiredState,
        waiting_unit: &Responsibility,
    ) -> Lookup {
        self.start_lookup(
            order,
            &names,
            state,
            LookupKind::Static,
            AwaitDefinitions::No,
            Some(waiting_unit.id),
        )
    }

    /// Finds the flags of `names` in `order` without materializing anything
    /// (generators may still define). Missing required names are an error.
    pub fn lookup_flags(&self, order: &SearchOrder, names: &LookupSet) -> Result<FlagsMap> {
        let (reply, wait) = Reply::new();
        let shared = LookupShared::new();
        self.core.send(Msg::Lookup(Box::new(LookupMsg {
            id: self.core.next_lookup_id(),
            order: order.ids(),
            names: names.names.clone(),
            state: RequiredState::Resolved,
            kind: LookupKind::Static,
            await_definitions: false,
            shared,
            flags_reply: Some(reply),
            blocking_for: None,
        })));
        wait.wait()
    }

    /// Reads the ready index: all names Ready in the first dylib of `order`
    /// that defines them (and may see them)? Then the result, without the actor.
    /// The fast path when every name is Ready, else a message to the actor.
    #[inline]
    fn start_lookup(
        &self,
        order: &SearchOrder,
        names: &LookupSet,
        state: RequiredState,
        kind: LookupKind,
        await_definitions: AwaitDefinitions,
        blocking_for: Option<usize>,
    ) -> Lookup {
        match self.fast_lookup(order, names) {
            Some(found) => Lookup::done(Ok(found)),
            None => self.slow_lookup(order, names, state, kind, await_definitions, blocking_for),
        }
    }

    fn fast_lookup(&self, order: &SearchOrder, names: &LookupSet) -> Option<SymbolMap> {
        if !order_is_live(order) {
            return None;
        }
        let mut found = SmallVec::with_capacity(names.names.len());
        warm(order, names.names.iter().map(|(n, _)| n));
        for (at, (name, _)) in names.names.iter().enumerate() {
            let (source, def) = ready_in(order, name)?;
            found.push(lookup::Found {
                at: at as u32,
                source,
                def,
            });
        }
        Some(SymbolMap::new(names.names.clone(), found))
    }

    /// The definitions of `names` in `order`, by position, if every one is
    /// Ready now; `None` if any is not — absent, lazy, materializing,
    /// failed, behind a generator, side-effects-only, or in a removed dylib.
    /// It reads the Ready index alone on this thread: no message, no
    /// generator, no materialization, no waiting. For a host that may use
    /// addresses only of symbols already Ready (code it publishes Ready at
    /// once, [`Dylib::define_absolute`], must depend on nothing less) and
    /// takes another path otherwise. A `Some` answer is what
    /// [`Session::lookup`] at [`RequiredState::Ready`] would answer now.
    pub fn ready_defs(&self, order: &SearchOrder, names: &[SymbolName]) -> Option<Vec<SymbolDef>> {
        if !order_is_live(order) {
            return None;
        }
        warm(order, names.iter());
        let mut defs = Vec::with_capacity(names.len());
        for name in names {
            defs.push(ready_in(order, name)?.1);
        }
        Some(defs)
    }

    /// Looks every name of `names` up in `order` (all required) and answers
    /// by position: the `i`-th definition is `names[i]`'s. For hosts that
    /// resolve many names at once: the names are only borrowed, so when all
    /// are Ready (the answer comes from this thread, with no message) no name
    /// is cloned and no set is built; otherwise this is
    /// [`Session::lookup`] with a [`LookupSet`] of `names`, waited for.
    pub fn lookup_defs(
        &self,
        order: &SearchOrder,
        names: &[SymbolName],
        state: RequiredState,
    ) -> Result<Vec<SymbolDef>> {
        if let Some(defs) = self.ready_defs(order, names) {
            return Ok(defs);
        }
        let mut defs = Vec::with_capacity(names.len());
        let found = self
            .lookup(order, &LookupSet::required(names.iter().cloned()), state)
            .wait()?;
        defs.clear();
        let mut no_address = Vec::new();
        for (name, def) in found.by_request() {
            // Required names are all found once the lookup succeeded, except
            // side-effects-only ones, which a lookup refuses to require.
            match def {
                Some(def) => defs.push(*def),
                None => no_address.push(name.clone()),
            }
        }
        if !no_address.is_empty() {
            return Err(Error::SideEffectsOnlyRequired { names: no_address });
        }
        Ok(defs)
    }

    fn slow_lookup(
        &self,
        order: &SearchOrder,
        names: &LookupSet,
        state: RequiredState,
        kind: LookupKind,
        await_definitions: AwaitDefinitions,
        blocking_for: Option<usize>,
    ) -> Lookup {
        let shared = LookupShared::obtain();
        let id = self.core.next_lookup_id();
        let msg = LookupMsg {
            id,
            order: order.ids(),
            names: names.names.clone(),
            state,
            kind,
            await_definitions: await_definitions != AwaitDefinitions::No,
            shared: shared.clone(),
            flags_reply: None,
            blocking_for,
        };
        self.core.apply(
            msg,
            |st, core, msg, fx| st.start_lookup(core, msg, fx),
            |msg| Msg::Lookup(Box::new(msg)),
        );
        // Completed while this thread drove (generators and units that
        // finish in place): hand the result over without the waiting path.
        if let Some(result) = shared.take_if_completed() {
            LookupShared::recycle(shared);
            return Lookup::done(result);
        }
        if let AwaitDefinitions::For(timeout) = await_definitions {
            self.cancel_after(&shared, id, timeout);
        }
        Lookup::pending(self.core.clone(), shared, id)
    }

    /// Fails `lookup` (its slot `shared`) after `timeout` unless it ends
    /// first: then the slot cancels the deadline.
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    fn cancel_after(&self, shared: &LookupShared, lookup: u64, timeout: Duration) {
        if let Some(deadline) = crate::timer::cancel_after(&self.core, lookup, timeout) {
            shared.set_deadline(deadline);
        }
    }

    #[cfg(any(kiln_loom, kiln_shuttle))]
    fn cancel_after(&self, _shared: &LookupShared, _lookup: u64, _timeout: Duration) {}

    /// Registers a resource manager; it hears about every tracker removal and
    /// transfer from now on.
    pub fn register_resource_manager(&self, manager: Arc<dyn ResourceManager>) {
        self.core.send(Msg::RegisterManager { manager });
    }

    /// Removes `dylib`: all its trackers (failing in-flight work), its
    /// generators and its symbols; lookups naming it fail afterwards.
    /// Returns when the resource managers are done (called from inside a
    /// [`ResourceTracker::with_resource_key`] closure of one of its
    /// trackers: when the symbols are gone; the managers run when the
    /// closure returns).
    pub fn remove_dylib(&self, dylib: &Dylib) -> Result<()> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::RemoveDylib {
            dylib: dylib.id(),
            reply,
        });
        // From inside a `with_resource_key` closure of one of its trackers,
        // the managers run when that closure returns: do not wait for them.
        if crate::tracker::inside(&self.core, dylib.id(), None) {
            return Ok(());
        }
        wait.wait()
    }

    /// How many records the session's tables hold: for tests and
    /// benchmarks checking that removed code gives its memory back. Not
    /// part of the stable API.
    #[doc(hidden)]
    pub fn table_sizes(&self) -> crate::actor::TableSizes {
        self.core.request(
            (),
            |st, _, (), _| st.table_sizes(),
            |(), reply| Msg::TableSizes { reply },
        )
    }

    /// Whether this process is a child forked since the session was made
    /// (as [`crate::note_forked_child`] reported): every request fails
    /// there with [`Error::ForkedChild`], and what the session's resources
    /// would run at their removal (finalizers, say) belongs to the parent.
    pub fn in_forked_child(&self) -> bool {
        self.core.in_forked_child()
    }

    /// Ends the session: removes every dylib (resource managers free their
    /// resources), fails lookups in flight, and shuts the dispatcher down.
    /// Later calls fail with [`Error::SessionEnded`].
    pub fn end(&self) {
        if self.core.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let (reply, wait) = Reply::new();
        self.core.send(Msg::End { reply });
        wait.wait();
        self.core.dispatcher.shutdown();
    }
}

/// A named symbol table with a link order, generators and resource trackers.
/// Cheap to clone.
#[derive(Clone)]
pub struct Dylib {
    pub(crate) core: Arc<SessionCore>,
    pub(crate) shared: Arc<DylibShared>,
}

impl fmt::Debug for Dylib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dylib")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl PartialEq for Dylib {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}
impl Eq for Dylib {}

impl Dylib {
    pub(crate) fn from_shared(core: Arc<SessionCore>, shared: Arc<DylibShared>) -> Self {
        Dylib { core, shared }
    }

    pub(crate) fn id(&self) -> DylibId {
        self.shared.id
    }

    /// The dylib's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The session it belongs to.
    pub fn session(&self) -> Session {
        Session {
            core: self.core.clone(),
        }
    }

    /// Defines `unit`'s symbols, owned by the default tracker. A strong
    /// definition overrides a weak one that was never requested (its unit's
    /// `discard` runs); clashes fail with every duplicate listed, and leave
    /// the dylib unchanged.
    pub fn define(&self, unit: impl MaterializationUnit) -> Result<()> {
        self.define_typed(unit, None)
    }

    /// Defines `unit` through `tracker` (or the default tracker).
    pub fn define_boxed(
        &self,
        unit: Box<dyn MaterializationUnit>,
        tracker: Option<&ResourceTracker>,
    ) -> Result<()> {
        self.define_unit(unit, tracker)
    }

    /// The engine materializes its own [`AbsoluteSymbols`] units itself when
    /// they are first requested — the same states, without a task or the
    /// resolve/emit messages — so a unit whose type is known here says so.
    fn define_typed<U: MaterializationUnit>(
        &self,
        unit: U,
        tracker: Option<&ResourceTracker>,
    ) -> Result<()> {
        match define_kind(unit) {
            Some(kind) => self.send_define(kind, tracker),
            None => Ok(()),
        }
    }

    fn define_unit(
        &self,
        unit: Box<dyn MaterializationUnit>,
        tracker: Option<&ResourceTracker>,
    ) -> Result<()> {
        match unit_kind(unit) {
            Some(kind) => self.send_define(kind, tracker),
            None => Ok(()),
        }
    }

    /// Defines `unit` through `tracker`.
    pub fn define_with(
        &self,
        unit: impl MaterializationUnit,
        tracker: &ResourceTracker,
    ) -> Result<()> {
        self.define_typed(unit, Some(tracker))
    }

    /// Defines symbols at fixed addresses, Ready at once (no materialization).
    pub fn define_absolute(
        &self,
        symbols: impl IntoIterator<Item = (SymbolName, SymbolDef)>,
    ) -> Result<()> {
        self.define_absolute_with(symbols, None)
    }

    /// [`Dylib::define_absolute`] through `tracker` (or the default tracker).
    pub fn define_absolute_with(
        &self,
        symbols: impl IntoIterator<Item = (SymbolName, SymbolDef)>,
        tracker: Option<&ResourceTracker>,
    ) -> Result<()> {
        let defs: Vec<(SymbolName, SymbolDef)> = symbols.into_iter().collect();
        if defs.is_empty() {
            return Ok(());
        }
        self.send_define(DefineKind::Absolute(defs), tracker)
    }

    fn send_define(&self, kind: DefineKind, tracker: Option<&ResourceTracker>) -> Result<()> {
        let tracker = match tracker {
            Some(t) if t.shared.dylib != self.id() => {
                return Err(Error::Usage(format!(
                    "tracker of dylib '{}' used to define into dylib '{}'",
                    t.shared.dylib_name,
                    self.name()
                )));
            }
            Some(t) => t.shared.id,
            None => self.shared.default_tracker.id,
        };
        self.core.request(
            (self.id(), tracker, kind),
            |st, core, (dylib, tracker, kind), fx| st.define(core, dylib, tracker, kind, fx),
            |(dylib, tracker, kind), reply| Msg::Define {
                dylib,
                tracker,
                kind,
                reply,
            },
        )
    }

    /// Sets the link order: the search order used to link code defined in
    /// this dylib. `(self, All)` is put first unless the list starts with
    /// this dylib already.
    pub fn set_link_order(&self, order: &[(Dylib, DylibLookup)]) -> Result<()> {
        let mut ids: Vec<(DylibId, DylibLookup)> = Vec::with_capacity(order.len() + 1);
        if order.first().is_none_or(|(d, _)| d != self) {
            ids.push((self.id(), DylibLookup::All));
        }
        ids.extend(order.iter().map(|(d, v)| (d.id(), *v)));
        self.send_link_order(ids)
    }

    /// Sets the link order exactly as given — without putting this dylib
    /// first (e.g. for a dylib of lazily linked bodies whose calls must go
    /// through another dylib's lazy entries).
    pub fn set_link_order_exact(&self, order: &[(Dylib, DylibLookup)]) -> Result<()> {
        self.send_link_order(order.iter().map(|(d, v)| (d.id(), *v)).collect())
    }

    fn send_link_order(&self, order: Vec<(DylibId, DylibLookup)>) -> Result<()> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::SetLinkOrder {
            dylib: self.id(),
            order,
            reply,
        });
        wait.wait()
    }

    /// The link order, as a search order.
    pub fn link_order(&self) -> SearchOrder {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::GetLinkOrder {
            dylib: self.id(),
            reply,
        });
        wait.wait()
            .into_iter()
            .map(|(s, v)| (Dylib::from_shared(self.core.clone(), s), v))
            .collect()
    }

    /// Adds a definition generator, asked after those added before it.
    /// The id names it to [`Dylib::remove_generator`].
    pub fn add_generator(&self, generator: impl Generator) -> Result<GeneratorId> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::AddGenerator {
            dylib: self.id(),
            generator: Arc::new(generator),
            reply,
        });
        let index = wait.wait()?;
        Ok(GeneratorId {
            dylib: self.id(),
            index,
        })
    }

    /// Removes a generator added to this dylib. Lookups waiting for their
    /// turn in it fail with [`Error::GeneratorRemoved`]; a call in flight
    /// finishes (what it defines stays), and later searches pass over it.
    pub fn remove_generator(&self, generator: GeneratorId) -> Result<()> {
        if generator.dylib != self.id() {
            return Err(Error::Usage(format!(
                "remove_generator: the generator was not added to dylib '{}'",
                self.name()
            )));
        }
        let (reply, wait) = Reply::new();
        self.core.send(Msg::RemoveGenerator {
            dylib: self.id(),
            index: generator.index,
            reply,
        });
        wait.wait()
    }

    /// Removes `names` from this dylib — all of them, or none: each must be
    /// defined here and either lazy (its unit has not started; the unit's
    /// `discard` is told) or Ready (unpublished: later lookups no longer
    /// find it; its memory stays with its tracker until that is removed).
    /// Otherwise nothing changes and [`Error::SymbolsNotRemoved`] lists
    /// every name not defined here and every one still materializing.
    pub fn remove_symbols(&self, names: &[SymbolName]) -> Result<()> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::RemoveSymbols {
            dylib: self.id(),
            names: names.to_vec(),
            reply,
        });
        wait.wait()
    }

    /// A new resource tracker for definitions in this dylib.
    pub fn create_tracker(&self) -> Result<ResourceTracker> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::CreateTracker {
            dylib: self.id(),
            reply,
        });
        Ok(ResourceTracker {
            core: self.core.clone(),
            shared: wait.wait()?,
            follows: false,
        })
    }

    /// The tracker that owns definitions made without one.
    pub fn default_tracker(&self) -> ResourceTracker {
        ResourceTracker {
            core: self.core.clone(),
            shared: self.shared.default_tracker.clone(),
            follows: false,
        }
    }

    /// The state of `name` in this dylib, if defined (for diagnostics and
    /// tests; it may change the moment it is read).
    pub fn symbol_state(&self, name: &SymbolName) -> Option<SymbolState> {
        self.core.request(
            (self.id(), name.clone()),
            |st, _, (dylib, name), _| st.symbol_state(dylib, &name),
            |(dylib, name), reply| Msg::QueryState { dylib, name, reply },
        )
    }

    /// Convenience: looks `names` up in this dylib alone (all symbols) and
    /// waits for Ready.
    pub fn lookup_ready(&self, names: &[&str]) -> Result<SymbolMap> {
        let session = self.session();
        let set: LookupSet = names
            .iter()
            .map(|n| (session.intern(n), SymbolLookup::Required))
            .collect();
        let order = SearchOrder::new().with(self, DylibLookup::All);
        session.lookup(&order, &set, RequiredState::Ready).wait()
    }
}

/// Loads the home slots of a batch's names in the first dylib searched, so
/// their cache misses overlap instead of each waiting for the one before.
fn warm<'a>(order: &SearchOrder, names: impl ExactSizeIterator<Item = &'a SymbolName>) {
    if names.len() > 1
        && let Some((first, _)) = order.entries.first()
    {
        first.shared.index.warm(names);
    }
}

/// Whether no dylib of `order` was removed. A search order naming a
/// removed dylib fails with [`Error::DylibRemoved`] — wherever in the order
/// it is, and whatever else the order defines — so the fast path leaves
/// such a lookup to the actor, which fails it.
fn order_is_live(order: &SearchOrder) -> bool {
    order
        .entries
        .iter()
        .all(|(d, _)| d.shared.status.load(Ordering::Acquire) & DYLIB_REMOVED == 0)
}

/// Where `order` resolves `name` from the Ready index alone: the index of
/// the dylib in the order and the definition, if the first dylib defining
/// (and showing) it has it Ready; `None` sends the lookup to the actor.
///
/// It answers only where the actor's search would answer the same on the
/// same state: it passes over a dylib only where the search does (the name
/// is absent there, and the dylib has no generator that the search would
/// ask for it, or the definition is hidden from this lookup), and it
/// answers only with a Ready, addressable definition. Anything else —
/// generators, a definition not Ready (lazy, materializing, failed), a
/// side-effects-only one, a slot being written — goes to the actor.
/// (Removed dylibs are checked by [`order_is_live`] first.)
fn ready_in(order: &SearchOrder, name: &SymbolName) -> Option<(u32, SymbolDef)> {
    for (source, (dylib, visibility)) in order.entries.iter().enumerate() {
        let entry = match dylib.shared.index.get(name) {
            Probe::Found(entry) => entry,
            Probe::Absent => {
                // The search would ask this dylib's generators for it.
                if dylib.shared.status.load(Ordering::Acquire) & DYLIB_HAS_GENERATORS != 0 {
                    return None;
                }
                continue;
            }
            Probe::Busy => return None,
        };
        if *visibility == DylibLookup::ExportedOnly && !entry.def.flags.is_exported() {
            continue;
        }
        if !entry.ready || entry.def.flags.is_side_effects_only() {
            return None;
        }
        return Some((source as u32, entry.def));
    }
    None
}

/// What defining `unit` sends the actor; `None` if it defines nothing.
pub(crate) fn define_kind<U: MaterializationUnit>(mut unit: U) -> Option<DefineKind> {
    match (&mut unit as &mut dyn Any).downcast_mut::<AbsoluteSymbols>() {
        Some(absolute) => {
            let symbols = absolute.take_symbols();
            (!symbols.is_empty()).then_some(DefineKind::Fixed(symbols))
        }
        None => unit_kind(Box::new(unit)),
    }
}

fn unit_kind(unit: Box<dyn MaterializationUnit>) -> Option<DefineKind> {
    let symbols = unit.symbols();
    if symbols.is_empty() {
        return None;
    }
    let unit_name: Arc<str> = unit.name().into();
    Some(DefineKind::Unit(UnitCell::new(unit), unit_name, symbols))
}

#[cfg(all(test, not(kiln_loom)))]
mod fast_path_tests;
