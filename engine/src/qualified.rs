//! Modules that name each other: a ready [`Generator`] for hosts whose
//! modules call one another through qualified names (module `Planschi`
//! defines `test`; other modules call it as `Planschi_test`) and that load
//! modules in any order, from any thread.
//!
//! Each module is its own [`Dylib`], so modules' local names never clash.
//! A [`QualifiedNames`] generator, added to a dylib that the modules (and
//! the host) search, answers a miss for a qualified name with an alias
//! (a [`reexports`] unit) of the local name in the module's dylib. When the
//! module is not registered yet, the generator call is *parked*: it does not
//! answer until [`QualifiedNames::register`] brings the module, the
//! configured timeout passes (the asking lookups fail with
//! [`Error::ModuleNotRegistered`], which names the module), or the host
//! calls [`QualifiedNames::cancel`] ([`Error::ModuleWaitCancelled`]).
//!
//! Waiting holds no engine lock and no thread: a parked call is a
//! [`GenerateRequest`] kept in the generator's own table, and the generator
//! is concurrent, so lookups of other names — other modules', or names of
//! modules already registered — go on while calls are parked. (The engine
//! never asks for one name twice at once: a second lookup of a parked name
//! waits for the parked call, then finds the alias.) A parked call's
//! deadline is kept by kiln's one timer thread for the process, which
//! ends the call when its time is up.
//!
//! ```
//! use std::time::Duration;
//! use kiln_engine::*;
//! use kiln_engine::qualified::QualifiedNames;
//!
//! let session = Session::new();
//! // Where qualified names are answered: every module searches it.
//! let names = QualifiedNames::with_separator("_").timeout(Duration::from_secs(5));
//! let shared = session.create_dylib("qualified")?;
//! shared.add_generator(names.clone())?;
//!
//! // A caller's lookup of `Planschi_test` may come before the module...
//! let order = SearchOrder::new().with(&shared, DylibLookup::ExportedOnly);
//! let wanted = session.intern("Planschi_test");
//! let lookup = session.lookup(&order, &LookupSet::required([wanted.clone()]), RequiredState::Ready);
//!
//! // ...which arrives later, from any thread.
//! let planschi = session.create_dylib("Planschi")?;
//! let test = session.intern("test");
//! planschi.define_absolute([(test, SymbolDef::new(0x1000, SymbolFlags::EXPORTED))])?;
//! names.register(&planschi);
//!
//! assert_eq!(lookup.wait()?.get(&wanted).map(|d| d.address), Some(0x1000));
//! session.end();
//! # Ok::<(), kiln_engine::Error>(())
//! ```

use std::fmt;
use std::time::Duration;

use smallvec::SmallVec;

use crate::error::Error;
use crate::generator::{GenerateRequest, Generator};
use crate::lookup::{DylibLookup, LookupSet, SearchOrder};
use crate::name::SymbolName;
use crate::session::Dylib;
use crate::sync::{Arc, FixedMap, FixedState, Mutex};
use crate::unit::{Alias, reexports};

type FixedSet<T> = std::collections::HashSet<T, FixedState>;

/// The naming scheme: a referenced name → (module, local name), or `None`
/// for names that are not qualified.
type Split = dyn Fn(&str) -> Option<(String, String)> + Send + Sync;

/// A generator that answers qualified names with aliases into the named
/// module's dylib, waiting for modules that are not registered yet. Cheap
/// to clone: clones share the registry (add one clone as the generator and
/// keep another to register modules).
#[derive(Clone)]
pub struct QualifiedNames {
    inner: Arc<Inner>,
}

struct Inner {
    split: Box<Split>,
    state: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// Registered modules by name.
    modules: FixedMap<Arc<str>, Dylib>,
    /// Calls waiting for at least one module that is not registered.
    parked: Vec<Parked>,
    /// How long a call parks; `None`: until registered or cancelled.
    timeout: Option<Duration>,
    /// How many calls ever parked: the next one's [`Parked::id`].
    calls: u64,
}

/// One parked generator call and the qualified names it was asked.
// Models keep no deadlines: `id` and `timeout` are for the timer.
#[cfg_attr(any(kiln_loom, kiln_shuttle), allow(dead_code))]
struct Parked {
    /// Which call this is, for its deadline to find it.
    id: u64,
    request: GenerateRequest,
    wants: Vec<Want>,
    /// The timeout it parked with, if any.
    timeout: Option<Duration>,
    /// Its deadline on the timer, cancelled when the call ends first.
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    deadline: Option<crate::timer::Deadline>,
}

/// A qualified name the generator was asked for.
struct Want {
    alias: SymbolName,
    module: Arc<str>,
    local: String,
}

impl fmt::Debug for QualifiedNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("QualifiedNames")
            .field("modules", &state.modules.len())
            .field("parked", &state.parked.len())
            .field("timeout", &state.timeout)
            .finish()
    }
}

impl QualifiedNames {
    /// A generator for the naming scheme `split`: it maps a referenced name
    /// to `(module, local name)`, or to `None` when the name is not a
    /// qualified one (the generator then leaves it undefined). Parked calls
    /// wait until their modules are registered or [`cancel`](Self::cancel)
    /// is called; set a [`timeout`](Self::timeout) to bound the wait.
    pub fn new(split: impl Fn(&str) -> Option<(String, String)> + Send + Sync + 'static) -> Self {
        QualifiedNames {
            inner: Arc::new(Inner {
                split: Box::new(split),
                state: Mutex::new(Registry::default()),
            }),
        }
    }

    /// The scheme `<module><separator><local>`, split at the first
    /// `separator`: with `"_"`, `Planschi_test` is `test` of `Planschi` and
    /// `A_b_c` is `b_c` of `A`. Names without the separator, or with nothing
    /// on either side of it, are not qualified.
    pub fn with_separator(separator: &str) -> Self {
        let separator = separator.to_owned();
        Self::new(move |name| {
            let (module, local) = name.split_once(separator.as_str())?;
            (!module.is_empty() && !local.is_empty() && !separator.is_empty())
                .then(|| (module.to_owned(), local.to_owned()))
        })
    }

    /// Bounds how long a lookup waits for a module that is not registered:
    /// after `timeout` the generator call fails with
    /// [`Error::ModuleNotRegistered`]. Applies to calls parked from now on
    /// (and to every clone of this handle).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.inner.state.lock().timeout = Some(timeout);
        self
    }

    /// Registers `dylib` as the module named by its [`Dylib::name`], once
    /// its definitions are in: calls parked for it are answered now, and
    /// later misses of its qualified names are answered at once. A module
    /// registered again with another dylib answers later misses from the
    /// new one (aliases already defined stay).
    pub fn register(&self, dylib: &Dylib) {
        let ready = {
            let mut state = self.inner.state.lock();
            state.modules.insert(dylib.name().into(), dylib.clone());
            let registry = &mut *state;
            take_parked(&mut registry.parked, |p| {
                p.wants
                    .iter()
                    .all(|w| registry.modules.contains_key(&w.module))
            })
            .into_iter()
            .map(|p| {
                let modules = resolve_modules(&registry.modules, &p.wants);
                (p, modules)
            })
            .collect::<Vec<_>>()
        };
        // Outside the lock: answering defines into the engine.
        for (parked, modules) in ready {
            answer(parked.request, &parked.wants, &modules);
        }
    }

    /// Fails every call parked for `module` with
    /// [`Error::ModuleWaitCancelled`]; the lookups that asked fail with it
    /// as the cause. Later misses of the module's names park again.
    pub fn cancel(&self, module: &str) {
        let cancelled = {
            let mut state = self.inner.state.lock();
            take_parked(&mut state.parked, |p| {
                p.wants.iter().any(|w| &*w.module == module)
            })
        };
        for parked in cancelled {
            let names = names_of(&parked.wants, module);
            parked.request.complete(Err(Error::ModuleWaitCancelled {
                module: module.into(),
                names,
            }));
        }
    }

    /// How many generator calls are parked, waiting for modules.
    pub fn parked(&self) -> usize {
        self.inner.state.lock().parked.len()
    }

    /// The qualified names of `names` and their modules, each once (a
    /// lookup may name one symbol twice).
    fn wants(&self, names: &[SymbolName]) -> Vec<Want> {
        let mut wants: Vec<Want> = Vec::with_capacity(names.len());
        let mut asked = FixedSet::with_capacity_and_hasher(names.len(), FixedState);
        for alias in names {
            if !asked.insert(alias) {
                continue;
            }
            if let Some((module, local)) = (self.inner.split)(alias.as_str()) {
                wants.push(Want {
                    alias: alias.clone(),
                    module: module.into(),
                    local,
                });
            }
        }
        wants
    }
}

impl Generator for QualifiedNames {
    fn generate(&self, request: GenerateRequest) {
        let wants = self.wants(request.names());
        if wants.is_empty() {
            // No qualified name: leave them undefined (a miss).
            request.complete(Ok(()));
            return;
        }
        let mut state = self.inner.state.lock();
        if wants.iter().all(|w| state.modules.contains_key(&w.module)) {
            let modules = resolve_modules(&state.modules, &wants);
            drop(state);
            answer(request, &wants, &modules);
            return;
        }
        let (id, timeout) = (state.calls, state.timeout);
        state.calls += 1;
        state.parked.push(Parked {
            id,
            request,
            wants,
            timeout,
            #[cfg(not(any(kiln_loom, kiln_shuttle)))]
            deadline: None,
        });
        // The timer may run the expiry at once: not under the lock.
        drop(state);
        if let Some(timeout) = timeout {
            self.expire_after(id, timeout);
        }
    }

    fn is_concurrent(&self) -> bool {
        true
    }
}

impl QualifiedNames {
    /// Ends parked call `id` after `timeout` (if it is still parked then)
    /// on kiln's timer thread.
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    fn expire_after(&self, id: u64, timeout: Duration) {
        let inner = Arc::downgrade(&self.inner);
        let deadline = crate::timer::after(
            timeout,
            Box::new(move || {
                let Some(inner) = inner.upgrade() else { return };
                let expired = take_parked(&mut inner.state.lock().parked, |p| p.id == id);
                for parked in expired {
                    expire(parked, &inner);
                }
            }),
        );
        let Some(deadline) = deadline else { return };
        let mut state = self.inner.state.lock();
        match state.parked.iter_mut().find(|p| p.id == id) {
            Some(parked) => parked.deadline = Some(deadline),
            // Answered or cancelled meanwhile.
            None => {
                drop(state);
                crate::timer::cancel(deadline);
            }
        }
    }

    /// Models have no timer: parked calls end on register or cancel.
    #[cfg(any(kiln_loom, kiln_shuttle))]
    fn expire_after(&self, _id: u64, _timeout: Duration) {}
}

/// Fails a parked call whose time is up, naming the first module it still
/// waits for.
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
fn expire(parked: Parked, inner: &Inner) {
    let missing = {
        let state = inner.state.lock();
        parked
            .wants
            .iter()
            .find(|w| !state.modules.contains_key(&w.module))
            .map(|w| w.module.clone())
    };
    let Some(module) = missing else {
        // Registered meanwhile (between the lock and here): answer it.
        let modules = {
            let state = inner.state.lock();
            resolve_modules(&state.modules, &parked.wants)
        };
        answer(parked.request, &parked.wants, &modules);
        return;
    };
    let names = names_of(&parked.wants, &module);
    parked.request.complete(Err(Error::ModuleNotRegistered {
        module,
        names,
        millis: parked.timeout.map_or(0, |t| t.as_millis()),
    }));
}

/// Removes and returns the parked calls that pass `take`, keeping the
/// others in order. A taken call's deadline is cancelled: it ends now.
fn take_parked(parked: &mut Vec<Parked>, mut take: impl FnMut(&Parked) -> bool) -> Vec<Parked> {
    let mut taken = Vec::new();
    let mut kept = Vec::with_capacity(parked.len());
    for p in parked.drain(..) {
        if take(&p) {
            taken.push(without_deadline(p));
        } else {
            kept.push(p);
        }
    }
    *parked = kept;
    taken
}

/// `p`, taken from the parked calls, with its deadline cancelled.
fn without_deadline(
    #[cfg_attr(any(kiln_loom, kiln_shuttle), allow(unused_mut))] mut p: Parked,
) -> Parked {
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    if let Some(deadline) = p.deadline.take() {
        crate::timer::cancel(deadline);
    }
    p
}

/// Each want's module dylib, in `wants` order (all registered).
fn resolve_modules(modules: &FixedMap<Arc<str>, Dylib>, wants: &[Want]) -> Vec<Dylib> {
    wants
        .iter()
        .filter_map(|w| modules.get(&w.module).cloned())
        .collect()
}

/// The aliases `wants` asks of `module`.
fn names_of(wants: &[Want], module: &str) -> Vec<SymbolName> {
    wants
        .iter()
        .filter(|w| &*w.module == module)
        .map(|w| w.alias.clone())
        .collect()
}

/// Defines, for each module asked, aliases of the local names it exports
/// into the request's dylib, then completes the call. Local names a module
/// does not export stay undefined (the lookup reports them missing).
fn answer(request: GenerateRequest, wants: &[Want], modules: &[Dylib]) {
    debug_assert_eq!(wants.len(), modules.len());
    let session = request.dylib().session();
    // The wants of each module, modules in first-asked order.
    let mut groups: Vec<SmallVec<[usize; 4]>> = Vec::new();
    let mut group_of = FixedMap::<&str, usize>::default();
    for (j, want) in wants.iter().enumerate() {
        let g = *group_of.entry(&want.module).or_insert_with(|| {
            groups.push(SmallVec::new());
            groups.len() - 1
        });
        groups[g].push(j);
    }
    for group in &groups {
        let module = &modules[group[0]];
        if let Err(e) = define_aliases(&session, request.dylib(), module, wants, group) {
            request.complete(Err(e));
            return;
        }
    }
    request.complete(Ok(()));
}

/// Aliases `wants[group]` (all of `module`) in `into`, with the flags the
/// module gives their local names.
fn define_aliases(
    session: &crate::session::Session,
    into: &Dylib,
    module: &Dylib,
    wants: &[Want],
    group: &[usize],
) -> Result<(), Error> {
    let locals: Vec<SymbolName> = group
        .iter()
        .map(|&j| session.intern(&wants[j].local))
        .collect();
    let order = SearchOrder::new().with(module, DylibLookup::ExportedOnly);
    let flags = session.lookup_flags(&order, &LookupSet::weak(locals.iter().cloned()))?;
    let aliases: Vec<Alias> = group
        .iter()
        .zip(&locals)
        .filter_map(|(&j, local)| {
            let (_, f) = flags.iter().find(|(n, _)| n == local)?;
            Some(Alias {
                name: wants[j].alias.clone(),
                target: local.clone(),
                flags: *f,
            })
        })
        .collect();
    if aliases.is_empty() {
        return Ok(());
    }
    into.define(reexports(module, DylibLookup::ExportedOnly, aliases))
}
