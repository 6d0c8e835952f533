//! Definitions: adding a unit's (or absolute) symbols to a dylib, weak
//! overrides and discards, and what a dylib gaining definitions wakes.

use smallvec::SmallVec;

use super::SlabKey;
use super::{Found, State, Sym, UnitEntry};
use crate::actor::{DefineKind, DylibId, Effect, Effects, SessionCore, SymId, TrackerId, UnitCell};
use crate::dispatch::Task;
use crate::error::{Error, Result};
use crate::index::{Claim, IndexEntry};
use crate::name::SymbolName;
use crate::session::Dylib;
use crate::symbol::{SymbolDef, SymbolFlags, SymbolState};
use crate::sync::Arc;

impl State {
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
        // Decide everything before publishing anything: a failed define
        // leaves the dylib as it was (the index slots its plan claimed are
        // released, readers never saw them defined).
        let plan = self
            .check_target(dylib, tracker)
            .and_then(|()| self.plan_define(dylib, &symbols));
        let plan = match plan {
            Ok(plan) => plan,
            Err(e) => {
                refuse(fx, cell);
                return Err(e);
            }
        };
        let dylib_handle = (!plan.overridden.is_empty() || !plan.discarded.is_empty())
            .then(|| self.dylib_handle(core, dylib));
        if let Some(handle) = &dylib_handle
            && !plan.overridden.is_empty()
        {
            self.override_weak(plan.overridden, handle, fx);
        }
        let unit_id = match &symbols {
            DefinedSymbols::Unit(_) | DefinedSymbols::Fixed(_) => {
                if let Some(cell) = &cell {
                    for &i in &plan.discarded {
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
                if plan.discarded.len() == symbols.len() {
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
        let added = self.add_symbols(dylib, tracker, unit_id, symbols, plan.discarded, plan.at);
        if let Some(uid) = unit_id {
            self.units[uid].syms.extend_from_slice(&added);
        }
        self.tracker(tracker).syms.extend(added);
        self.gained_definitions(core, dylib, fx);
        Ok(())
    }

    /// A definition into `dylib` through `tracker` may go ahead: the dylib
    /// is live and the tracker is one of its own, not removed.
    fn check_target(&mut self, dylib: DylibId, tracker: TrackerId) -> Result<()> {
        self.live_dylib(dylib)?;
        match self.trackers.get(&tracker) {
            Some(t) if t.dylib == dylib => Ok(()),
            _ => Err(Error::TrackerRemoved {
                dylib: self.dylibs[dylib as usize].shared.name.clone(),
            }),
        }
    }

    /// What defining `symbols` in `dylib` does, decided before anything
    /// is published: duplicates (also within `symbols`) refuse it; weak
    /// Lazy symbols a strong definition overrides; weak definitions that
    /// lose. One probe of the dylib's index per name ([`ReadIndex::claim`]):
    /// a new name takes its slot there and then (readers still find it
    /// undefined), a name repeated within `symbols` finds its own claim;
    /// refused, the claims are released.
    ///
    /// [`ReadIndex::claim`]: crate::index::ReadIndex::claim
    fn plan_define(&self, dylib: DylibId, symbols: &DefinedSymbols) -> Result<DefinePlan> {
        let d = &self.dylibs[dylib as usize];
        let index = &d.shared.index;
        let mut plan = DefinePlan {
            overridden: Vec::new(),
            discarded: Vec::new(),
            at: Slots::with_capacity(symbols.len()),
        };
        let mut duplicates = Vec::new();
        // Names defined here already that this definition overrides or
        // loses to (no error by themselves): symbol ids and positions.
        let mut defined: Vec<(SymId, usize)> = Vec::new();
        // Room for every name at once, as if all were new: the slots
        // claimed stay where they are. (A batch of names defined before
        // may grow the table once early; `used` counts keys, not
        // definitions, so defining them again never grows it again.)
        index.reserve(symbols.len());
        for i in 0..symbols.len() {
            if i % WARM_AHEAD == 0 && symbols.len() > 1 {
                let ahead = i..(i + WARM_AHEAD).min(symbols.len());
                index.warm(ahead.map(|j| symbols.name(j)));
            }
            let (name, flags) = (symbols.name(i), symbols.flags(i));
            match index.claim(name) {
                Claim::New { at } => plan.at.push(at),
                Claim::Repeated => {
                    plan.at.push(usize::MAX);
                    duplicates.push(name.clone());
                }
                Claim::Defined { sym, at } => {
                    plan.at.push(at);
                    let existing = &self.syms[sym as usize];
                    if !flags.is_weak()
                        && existing.flags.is_weak()
                        && existing.state == SymbolState::Lazy
                    {
                        plan.overridden.push(sym);
                        defined.push((sym, i));
                    } else if flags.is_weak() {
                        plan.discarded.push(i);
                        defined.push((sym, i));
                    } else {
                        duplicates.push(name.clone());
                    }
                }
            }
        }
        // A defined name repeated within `symbols` has no pending claim to
        // find: the repeats among those (rare: few names are defined again)
        // are found by symbol id.
        if defined.len() > 1 {
            defined.sort_unstable();
            for pair in defined.windows(2) {
                if pair[0].0 == pair[1].0 {
                    duplicates.push(symbols.name(pair[1].1).clone());
                }
            }
        }
        if !duplicates.is_empty() {
            for (i, &at) in plan.at.iter().enumerate() {
                if at != usize::MAX {
                    index.release(at, symbols.name(i));
                }
            }
            return Err(Error::DuplicateDefinitions {
                dylib: d.shared.name.clone(),
                names: duplicates,
            });
        }
        Ok(plan)
    }

    /// Adds `symbols` (but the `discarded` positions) to `dylib`'s records
    /// and index: Ready at their addresses if absolute, else Lazy in
    /// `unit`. Each goes into the index slot `at` its plan claimed (no
    /// second probe); the records and the tracker's list grow (and copy)
    /// at most once.
    fn add_symbols(
        &mut self,
        dylib: DylibId,
        tracker: TrackerId,
        unit: Option<usize>,
        symbols: DefinedSymbols,
        discarded: Vec<usize>,
        at: Slots,
    ) -> SmallVec<[SymId; 4]> {
        let state = if matches!(symbols, DefinedSymbols::Absolute(_)) {
            SymbolState::Ready
        } else {
            SymbolState::Lazy
        };
        let unit = SlabKey::from(unit);
        let adding = symbols.len() - discarded.len();
        // The records grow in chunks that never move: a later define does
        // not copy them for a few more.
        self.syms
            .reserve(adding.saturating_sub(self.free_syms.len()));
        let mut added = SmallVec::with_capacity(adding);
        let mut skip = discarded.into_iter().peekable();
        for (i, (name, flags, address)) in symbols.into_entries().enumerate() {
            if i % WARM_AHEAD == 0 && at.len() > 1 {
                let ahead = at.iter().skip(i).take(WARM_AHEAD).copied();
                self.dylibs[dylib as usize].shared.index.warm_at(ahead);
            }
            if skip.peek() == Some(&i) {
                skip.next();
                continue;
            }
            let (sid, s) = self.syms.store(
                &mut self.free_syms,
                Sym {
                    dylib,
                    name,
                    flags,
                    state,
                    address,
                    unit,
                    resp: SlabKey::NONE,
                    tracker,
                    waiters: SmallVec::new(),
                },
            );
            self.dylibs[dylib as usize].shared.index.set_at(
                at[i],
                &s.name,
                IndexEntry {
                    def: SymbolDef::new(address, flags),
                    ready: state == SymbolState::Ready,
                },
                sid,
            );
            added.push(sid);
        }
        added
    }

    /// Retires weak Lazy symbols a strong definition overrides: their units
    /// hear `discard` (a task), and units left empty are dropped. (Kept out
    /// of `define`, whose common path never needs it.)
    #[cold]
    pub(super) fn override_weak(
        &mut self,
        overridden: Vec<SymId>,
        dylib: &Dylib,
        fx: &mut Effects,
    ) {
        for sid in overridden {
            let s = &self.syms[sid as usize];
            let (uid, name) = (s.unit.get(), s.name.clone());
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
            s.unit = SlabKey::NONE;
            s.state = SymbolState::Failed;
            self.failures
                .insert(sid, Arc::new(Error::Usage("overridden definition".into())));
            // Its name stays published (not Ready) until the new definition
            // replaces the entry: a reader never sees it undefined.
        }
    }

    /// A dylib gained definitions: forget generator misses and retry lookups
    /// that wait for definitions.
    pub(super) fn gained_definitions(
        &mut self,
        core: &Arc<SessionCore>,
        dylib: DylibId,
        fx: &mut Effects,
    ) {
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
}

/// A definition's names are looked up in the dylib's index this many at a
/// time, their home slots loaded first ([`crate::index`]'s `warm`): the
/// cache misses of a large definition overlap instead of each waiting for
/// the one before.
const WARM_AHEAD: usize = 64;

/// What a definition does besides adding its symbols ([`State::plan_define`]).
struct DefinePlan {
    /// Weak Lazy symbols it overrides.
    overridden: Vec<SymId>,
    /// Positions of its weak symbols that lose to existing definitions.
    discarded: Vec<usize>,
    /// Each symbol's slot in the dylib's index, by position
    /// (`usize::MAX` for a repeated name, which refuses the definition).
    at: Slots,
}

/// Index slots of a definition's symbols, inline for a few: a generator's
/// answer or a single function defines one or two, and then a define
/// allocates nothing for its bookkeeping.
type Slots = SmallVec<[usize; 4]>;

/// A refused definition's unit is dropped (as an effect: its drop may run
/// user code, never under the actor).
fn refuse(fx: &mut Effects, cell: Option<UnitCell>) {
    if let Some(cell) = cell {
        fx.push(Effect::Drop(Box::new(cell)));
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
pub(super) fn discard_task(
    what: &'static str,
    cell: UnitCell,
    dylib: Dylib,
    name: SymbolName,
) -> Effect {
    cell.push_discard(dylib, name);
    Effect::Dispatch(Task::new(what, move || cell.deliver_discards()))
}
