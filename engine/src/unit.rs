//! Materialization units: the things that define symbols lazily, and the two
//! units every host needs (absolute symbols and reexports).

use std::any::Any;
use std::fmt;

use crate::error::Error;
use crate::lookup::{DylibLookup, LookupSet, SearchOrder};
use crate::name::SymbolName;
use crate::responsibility::{DependenceGroup, Responsibility};
use crate::session::Dylib;
use crate::symbol::{RequiredState, SymbolDef, SymbolFlags};

/// Something that can produce definitions for a set of symbols when one of
/// them is first needed (compiled code, a linked object, stubs, …).
///
/// `materialize` runs as a task on the session's dispatcher, never on the
/// state actor. It must eventually resolve and emit every symbol it owes, or
/// fail them; dropping the [`Responsibility`] (or panicking) fails what is
/// still owed, with the reason, so no lookup ever hangs on a unit that is gone.
pub trait MaterializationUnit: Any + Send {
    /// A name for diagnostics (an object path, a module name).
    fn name(&self) -> &str;

    /// The symbols this unit defines, with their flags. Called once, by
    /// `Dylib::define`.
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)>;

    /// Produces the definitions. Runs on a worker, at most once.
    fn materialize(self: Box<Self>, responsibility: Responsibility);

    /// Another definition won over this unit's weak `name` (a strong one, or
    /// a weak one defined first): the unit will never be asked for it. Runs
    /// as a task, never on the actor, and always before `materialize`.
    fn discard(&mut self, dylib: &Dylib, name: &SymbolName) {
        let _ = (dylib, name);
    }

    /// Units that answer the same key, in the same dylib and tracker, and
    /// that one step of the engine starts together (a lookup needing
    /// several of them) run in one task: the first one's
    /// [`MaterializationUnit::materialize_batch`] with the others — an
    /// object layer links them as one image. Asked once, when the unit is
    /// defined. `None` (the default): the unit always runs alone.
    fn batch_key(&self) -> Option<usize> {
        None
    }

    /// Materializes this unit and `others`, units with its batch key
    /// started with it; runs on a worker, once. Each unit keeps its own
    /// responsibility, so a batch may fail one unit and emit the others.
    /// The default gives each of `others` a task of its own
    /// ([`Batched::dispatch`]) and materializes this one.
    fn materialize_batch(self: Box<Self>, responsibility: Responsibility, others: Vec<Batched>) {
        for other in others {
            other.dispatch();
        }
        self.materialize(responsibility);
    }
}

/// A unit of a batch ([`MaterializationUnit::materialize_batch`]) with its
/// responsibility.
pub struct Batched {
    pub(crate) unit: Box<dyn MaterializationUnit>,
    pub(crate) responsibility: Responsibility,
}

impl Batched {
    /// The unit as a `T` and its responsibility, or the batched unit back
    /// if it is not a `T`.
    pub fn downcast<T: MaterializationUnit>(self) -> Result<(Box<T>, Responsibility), Batched> {
        if self.downcast_ref::<T>().is_none() {
            return Err(self);
        }
        let Batched {
            unit,
            responsibility,
        } = self;
        let unit: Box<dyn Any> = unit;
        match unit.downcast::<T>() {
            Ok(unit) => Ok((unit, responsibility)),
            Err(_) => unreachable!("the unit was checked to be a T"),
        }
    }

    /// The unit as a `T`, if it is one (to decide whether it joins).
    pub fn downcast_ref<T: MaterializationUnit>(&self) -> Option<&T> {
        let unit: &dyn Any = &*self.unit;
        unit.downcast_ref::<T>()
    }

    /// Materializes the unit alone, in a task of its own on the session's
    /// dispatcher, as the engine would have without the batch (a panic
    /// fails only this unit's symbols).
    pub fn dispatch(self) {
        let Batched {
            unit,
            responsibility,
        } = self;
        let core = responsibility.core.clone();
        core.dispatch(crate::dispatch::Task::new("materialize", move || {
            crate::responsibility::materialize_alone(unit, responsibility)
        }));
    }
}

impl fmt::Debug for Batched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batched")
            .field("unit", &self.unit.name())
            .finish()
    }
}

/// A unit of symbols with fixed addresses (host functions, data).
///
/// Like any unit, its symbols are Lazy until first requested (so a weak one
/// can still be overridden); `Dylib::define` recognizes it, and the engine
/// then resolves and emits it itself, without a task. For symbols that should
/// be Ready at once, use `Dylib::define_absolute`.
pub struct AbsoluteSymbols {
    symbols: Vec<(SymbolName, SymbolDef)>,
}

/// A unit defining `symbols` at fixed addresses.
pub fn absolute_symbols(
    symbols: impl IntoIterator<Item = (SymbolName, SymbolDef)>,
) -> AbsoluteSymbols {
    AbsoluteSymbols {
        symbols: symbols.into_iter().collect(),
    }
}

impl AbsoluteSymbols {
    /// Takes the symbols out.
    pub(crate) fn take_symbols(&mut self) -> Vec<(SymbolName, SymbolDef)> {
        std::mem::take(&mut self.symbols)
    }
}

impl fmt::Debug for AbsoluteSymbols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbsoluteSymbols")
            .field("symbols", &self.symbols.len())
            .finish()
    }
}

/// The name of every [`AbsoluteSymbols`] unit.
pub(crate) const ABSOLUTE_UNIT_NAME: &str = "<absolute symbols>";

impl MaterializationUnit for AbsoluteSymbols {
    fn name(&self) -> &str {
        ABSOLUTE_UNIT_NAME
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.symbols
            .iter()
            .map(|(n, d)| (n.clone(), d.flags))
            .collect()
    }

    fn materialize(self: Box<Self>, r: Responsibility) {
        if let Err(e) = r.resolve(&self.symbols) {
            r.fail(e);
            return;
        }
        // Errors were delivered to the symbols' lookups already.
        let _ = r.emit(Vec::new());
    }

    fn discard(&mut self, _dylib: &Dylib, name: &SymbolName) {
        self.symbols.retain(|(n, _)| n != name);
    }
}

/// One alias of a [`Reexports`] unit.
#[derive(Clone, Debug)]
pub struct Alias {
    /// The name the alias defines.
    pub name: SymbolName,
    /// The symbol it stands for, in the source dylib.
    pub target: SymbolName,
    /// The alias's own flags.
    pub flags: SymbolFlags,
}

/// The names and flags aliases define (a unit's interface).
pub(crate) fn alias_symbols(aliases: &[Alias]) -> Vec<(SymbolName, SymbolFlags)> {
    aliases.iter().map(|a| (a.name.clone(), a.flags)).collect()
}

/// A unit defining aliases of symbols in another dylib (or the same one).
/// An alias resolves to its target's address and becomes Ready when the
/// target does. Re-exporting from its own dylib, an alias may target
/// another alias of the same unit (`baz → bar`, `bar → foo`); such chains
/// are followed, and a cycle among them fails the unit with
/// [`Error::AliasCycle`].
pub struct Reexports {
    source: Dylib,
    source_lookup: DylibLookup,
    aliases: Vec<Alias>,
}

/// A unit re-exporting `aliases` from `source`.
pub fn reexports(
    source: &Dylib,
    source_lookup: DylibLookup,
    aliases: impl IntoIterator<Item = Alias>,
) -> Reexports {
    Reexports {
        source: source.clone(),
        source_lookup,
        aliases: aliases.into_iter().collect(),
    }
}

impl fmt::Debug for Reexports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reexports")
            .field("source", &self.source.name())
            .field("aliases", &self.aliases)
            .finish()
    }
}

/// Each alias's target once chains through other aliases of the same unit
/// are followed (`baz → bar`, `bar → foo` in one unit: both stand for
/// `foo`), in alias order. Only when the unit re-exports from its own dylib
/// can a target be one of its aliases. A chain that comes back to an alias
/// already on it is an [`Error::AliasCycle`]; a chain through an alias that
/// the search cannot see (hidden, with `ExportedOnly`) is not found.
fn ultimate_targets(
    aliases: &[Alias],
    source: &Dylib,
    source_lookup: DylibLookup,
    r: &Responsibility,
) -> Result<Vec<SymbolName>, Error> {
    if source != r.dylib() {
        return Ok(aliases.iter().map(|a| a.target.clone()).collect());
    }
    let index: std::collections::HashMap<&SymbolName, usize> = aliases
        .iter()
        .enumerate()
        .map(|(i, a)| (&a.name, i))
        .collect();
    let mut out = Vec::with_capacity(aliases.len());
    let mut chain = Vec::new();
    for i in 0..aliases.len() {
        chain.clear();
        chain.push(i);
        let mut target = &aliases[i].target;
        while let Some(&j) = index.get(target) {
            if source_lookup == DylibLookup::ExportedOnly && !aliases[j].flags.is_exported() {
                return Err(Error::SymbolsNotFound {
                    names: vec![target.clone()],
                });
            }
            if let Some(at) = chain.iter().position(|&k| k == j) {
                let mut cycle: Vec<SymbolName> = chain[at..]
                    .iter()
                    .map(|&k| aliases[k].name.clone())
                    .collect();
                cycle.push(aliases[j].name.clone());
                return Err(Error::AliasCycle {
                    dylib: source.name().into(),
                    cycle,
                });
            }
            chain.push(j);
            target = &aliases[j].target;
        }
        out.push(target.clone());
    }
    Ok(out)
}

impl MaterializationUnit for Reexports {
    fn name(&self) -> &str {
        "<reexports>"
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        alias_symbols(&self.aliases)
    }

    fn materialize(self: Box<Self>, r: Responsibility) {
        // Targets that are aliases of this same unit are followed here: the
        // unit owes them, so looking them up would wait on itself.
        let ultimate = match ultimate_targets(&self.aliases, &self.source, self.source_lookup, &r) {
            Ok(targets) => targets,
            Err(e) => return r.fail(e),
        };
        let order = SearchOrder::new().with(&self.source, self.source_lookup);
        let mut wanted: Vec<SymbolName> = ultimate.clone();
        wanted.sort();
        wanted.dedup();
        let targets = LookupSet::required(wanted);
        let session = self.source.session();
        // The addresses are needed at Resolved; readiness then follows the
        // targets through the dependency graph.
        let lookup = session.lookup_for_unit(&order, targets, RequiredState::Resolved, &r);
        let source = self.source.clone();
        lookup.on_complete(move |result| {
            let found = match result {
                Ok(found) => found,
                Err(e) => return r.fail(e),
            };
            let mut defs = Vec::with_capacity(self.aliases.len());
            for (alias, target) in self.aliases.iter().zip(&ultimate) {
                match found.get(target) {
                    Some(def) => {
                        defs.push((alias.name.clone(), SymbolDef::new(def.address, alias.flags)))
                    }
                    None => {
                        return r.fail(Error::SymbolsNotFound {
                            names: vec![target.clone()],
                        });
                    }
                }
            }
            if let Err(e) = r.resolve(&defs) {
                return r.fail(e);
            }
            let groups = self
                .aliases
                .iter()
                .zip(&ultimate)
                .map(|(a, target)| {
                    DependenceGroup::new([a.name.clone()], [(source.clone(), vec![target.clone()])])
                })
                .collect();
            let _ = r.emit(groups);
        });
    }

    fn discard(&mut self, _dylib: &Dylib, name: &SymbolName) {
        self.aliases.retain(|a| &a.name != name);
    }
}
