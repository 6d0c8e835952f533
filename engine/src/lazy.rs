//! Lazy reexports: an entry symbol that links its implementation on the
//! first call, from any thread, exactly once.
//!
//! The engine holds the generic part. Each entry is bound to a reentry
//! trampoline and a redirectable stub (machine code the linker emits with
//! templates from `kiln-arch`, through the [`TrampolineEmitter`] and
//! [`Redirector`] traits). The entry's address is the stub's, which first
//! jumps to the trampoline; the trampoline re-enters the host, which calls
//! [`LazyReexports::resolve`] with the trampoline's address. That looks the
//! implementation up at Ready — one materialization however many threads
//! call — redirects the stub to it, and returns its address so the caller
//! continues into it. Later calls cost one indirect jump.
//!
//! A failed lazy link reaches the host-installed failure handler with its
//! root cause ([`LazyReexports::set_failure_handler`]); the default prints
//! it and exits — never a silent crash, and never ORC's `abort()` without
//! the cause.

use std::fmt;

use crate::error::{Error, QualifiedName, Result};
use crate::lookup::{DylibLookup, LookupSet, SearchOrder};
use crate::name::SymbolName;
use crate::responsibility::Responsibility;
use crate::session::{Dylib, Session};
use crate::symbol::{RequiredState, SymbolDef, SymbolFlags};
use crate::sync::{Arc, AtomicUsize, Condvar, FixedMap, Mutex, Ordering};
use crate::tracker::{ResourceKey, ResourceManager, ResourceTracker};
use crate::unit::{Alias, MaterializationUnit};

/// Emits reentry trampolines: code that, when called, re-enters the host
/// with its own address.
pub trait TrampolineEmitter: Send + Sync + 'static {
    /// Emits `count` trampolines owned by `tracker` (freed when it is
    /// removed); returns their addresses.
    fn emit_trampolines(&self, tracker: &ResourceTracker, count: usize) -> Result<Vec<u64>>;

    /// As [`TrampolineEmitter::emit_trampolines`], one trampoline per entry
    /// of `names`: the lazy entries they serve, which an emitter may use to
    /// name its code for profilers. The default ignores the names.
    fn emit_named_trampolines(
        &self,
        tracker: &ResourceTracker,
        names: &[SymbolName],
    ) -> Result<Vec<u64>> {
        self.emit_trampolines(tracker, names.len())
    }
}

/// Creates and retargets redirectable stubs (indirect jumps through a
/// pointer slot).
pub trait Redirector: Send + Sync + 'static {
    /// Creates one stub per entry of `initial`, owned by `tracker`, stub `i`
    /// jumping to `initial[i]`; returns the stubs' addresses.
    fn create_stubs(&self, tracker: &ResourceTracker, initial: &[u64]) -> Result<Vec<u64>>;

    /// As [`Redirector::create_stubs`], stub `i` standing for the lazy
    /// entry `names[i]` (a redirector may name its code for profilers).
    /// The default ignores the names.
    fn create_named_stubs(
        &self,
        tracker: &ResourceTracker,
        initial: &[u64],
        names: &[SymbolName],
    ) -> Result<Vec<u64>> {
        let _ = names;
        self.create_stubs(tracker, initial)
    }

    /// Retargets the stub at `stub` to `target` atomically: a call in flight
    /// runs the old or the new target, never anything else.
    fn redirect(&self, stub: u64, target: u64) -> Result<()>;
}

/// What to do when a lazy call cannot be linked: receives the entry and the
/// error (with its root cause) and returns an address to continue at — a
/// function with the entry's signature — or does not return.
pub type FailureHandler = Box<dyn Fn(&QualifiedName, &Error) -> u64 + Send + Sync>;

/// Where an entry's stub points.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LinkState {
    /// At the trampoline.
    Unlinked,
    /// At the implementation, put there by a first call.
    Linked,
    /// Where the host redirected it; first calls leave it alone.
    Pinned,
}

struct CallThrough {
    entry: QualifiedName,
    body_dylib: Dylib,
    body: SymbolName,
    stub: u64,
    /// Where the stub should point. Changed under the lock (so only the
    /// first resolution counts as a link, and a first call never undoes a
    /// host's hot swap); the redirector runs outside it (user code) — see
    /// [`LazyReexports::point_stub`].
    link: Mutex<Link>,
    /// Signalled when a target was written to the stub.
    written: Condvar,
}

/// What an entry's stub should point at, and a version counting changes.
struct Link {
    state: LinkState,
    target: u64,
    version: u64,
    /// The latest version known written to the stub (or whose write
    /// failed: its writer reports that).
    written: u64,
}

impl Link {
    /// Records a new target; returns its version.
    fn set(&mut self, state: LinkState, target: u64) -> u64 {
        self.state = state;
        self.target = target;
        self.version += 1;
        self.version
    }
}

#[derive(Default)]
struct Tables {
    by_trampoline: FixedMap<u64, Arc<CallThrough>>,
    by_entry: FixedMap<(Arc<str>, SymbolName), Arc<CallThrough>>,
    by_key: FixedMap<ResourceKey, Vec<u64>>,
}

struct Inner {
    session: Session,
    emitter: Box<dyn TrampolineEmitter>,
    redirector: Box<dyn Redirector>,
    tables: Mutex<Tables>,
    failure: Mutex<Option<Arc<FailureHandler>>>,
    after_link: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    reentries: AtomicUsize,
    linked: AtomicUsize,
}

/// The lazy reexports manager. Cheap to clone.
#[derive(Clone)]
pub struct LazyReexports {
    inner: Arc<Inner>,
}

impl fmt::Debug for LazyReexports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyReexports")
            .field("reentries", &self.reentries())
            .finish_non_exhaustive()
    }
}

/// Forgets the call-throughs of removed trackers.
struct Forget(std::sync::Weak<Inner>);

impl ResourceManager for Forget {
    fn remove_resources(&self, key: ResourceKey) -> Result<()> {
        if let Some(inner) = self.0.upgrade() {
            let mut t = inner.tables.lock();
            for tramp in t.by_key.remove(&key).unwrap_or_default() {
                if let Some(ct) = t.by_trampoline.remove(&tramp) {
                    t.by_entry
                        .remove(&(ct.entry.dylib.clone(), ct.entry.name.clone()));
                }
            }
        }
        Ok(())
    }

    fn transfer_resources(&self, dst: ResourceKey, src: ResourceKey) {
        if let Some(inner) = self.0.upgrade() {
            let mut t = inner.tables.lock();
            let moved = t.by_key.remove(&src).unwrap_or_default();
            t.by_key.entry(dst).or_default().extend(moved);
        }
    }
}

impl LazyReexports {
    /// A manager for `session` emitting code through `emitter` and
    /// `redirector`.
    pub fn new(
        session: &Session,
        emitter: impl TrampolineEmitter,
        redirector: impl Redirector,
    ) -> LazyReexports {
        let inner = Arc::new(Inner {
            session: session.clone(),
            emitter: Box::new(emitter),
            redirector: Box::new(redirector),
            tables: Mutex::new(Tables::default()),
            failure: Mutex::new(None),
            after_link: Mutex::new(None),
            reentries: AtomicUsize::new(0),
            linked: AtomicUsize::new(0),
        });
        session.register_resource_manager(Arc::new(Forget(Arc::downgrade(&inner))));
        LazyReexports { inner }
    }

    /// A unit defining each alias as a lazy entry for its target in
    /// `body_dylib` (searched with all symbols visible). Every alias must be
    /// callable.
    pub fn reexports(
        &self,
        body_dylib: &Dylib,
        aliases: impl IntoIterator<Item = Alias>,
    ) -> Result<LazyReexportsUnit> {
        let aliases: Vec<Alias> = aliases.into_iter().collect();
        let not_callable: Vec<SymbolName> = aliases
            .iter()
            .filter(|a| !a.flags.is_callable())
            .map(|a| a.name.clone())
            .collect();
        if !not_callable.is_empty() {
            return Err(Error::Usage(format!(
                "lazy reexports must be callable; not callable: {}",
                not_callable
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(LazyReexportsUnit {
            manager: self.clone(),
            body_dylib: body_dylib.clone(),
            aliases,
        })
    }

    /// Called (through the host's reentry handler) when the trampoline at
    /// `trampoline` is entered: links the implementation if needed, points
    /// the stub at it, and returns its address.
    pub fn resolve(&self, trampoline: u64) -> Result<u64> {
        self.inner.reentries.fetch_add(1, Ordering::Relaxed);
        let ct = self
            .inner
            .tables
            .lock()
            .by_trampoline
            .get(&trampoline)
            .cloned()
            .ok_or_else(|| {
                Error::Usage(format!("no lazy reexport uses trampoline {trampoline:#x}"))
            })?;
        let order = SearchOrder::new().with(&ct.body_dylib, DylibLookup::All);
        let found = self
            .inner
            .session
            .lookup(
                &order,
                &LookupSet::required([ct.body.clone()]),
                RequiredState::Ready,
            )
            .wait()?;
        let address =
            found
                .get(&ct.body)
                .map(|d| d.address)
                .ok_or_else(|| Error::SymbolsNotFound {
                    names: vec![ct.body.clone()],
                })?;
        // The hook (a host's initializers) returns before the stub points
        // at the body: until then every caller comes through here and
        // waits in the hook too, instead of running code not initialized.
        let hook = self.inner.after_link.lock().clone();
        if let Some(hook) = hook {
            hook();
        }
        let first = {
            let mut link = ct.link.lock();
            (link.state == LinkState::Unlinked).then(|| link.set(LinkState::Linked, address))
        };
        match first {
            Some(version) => {
                self.point_stub(&ct, version, address)?;
                self.inner.linked.fetch_add(1, Ordering::Relaxed);
            }
            // Another first call links it: return once the stub points at
            // the body (or at what replaced it), like that call does.
            None => {
                let mut link = ct.link.lock();
                let version = link.version;
                while link.written < version {
                    link = ct.written.wait(link);
                }
            }
        }
        Ok(address)
    }

    /// [`LazyReexports::resolve`], with failures handed to the failure
    /// handler (default: print the error with its root cause and exit with
    /// status 70).
    pub fn resolve_or_fail(&self, trampoline: u64) -> u64 {
        match self.resolve(trampoline) {
            Ok(address) => address,
            Err(err) => {
                let entry = self
                    .inner
                    .tables
                    .lock()
                    .by_trampoline
                    .get(&trampoline)
                    .map(|ct| ct.entry.clone())
                    .unwrap_or_else(|| QualifiedName {
                        dylib: "?".into(),
                        name: self
                            .inner
                            .session
                            .intern(&format!("<trampoline {trampoline:#x}>")),
                    });
                let handler = self.inner.failure.lock().clone();
                match handler {
                    Some(handler) => handler(&entry, &err),
                    None => {
                        eprintln!(
                            "kiln: the lazy call of {entry} could not be linked: {err}\n\
                             kiln: root cause: {}",
                            err.root_cause()
                        );
                        std::process::exit(70)
                    }
                }
            }
        }
    }

    /// Installs a hook run after a first call linked its implementation and
    /// before the call continues into it (a host runs newly linked code's
    /// initializers here). Every caller that re-enters runs it, and the
    /// stub points at the body only once the first caller's hook has
    /// returned, so no call reaches the body before then. The hook runs
    /// with no engine lock held; it may call lazy entries itself.
    pub fn set_after_link_hook(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.inner.after_link.lock() = Some(Arc::new(hook));
    }

    /// Installs the handler for failed lazy links.
    pub fn set_failure_handler(
        &self,
        handler: impl Fn(&QualifiedName, &Error) -> u64 + Send + Sync + 'static,
    ) {
        *self.inner.failure.lock() = Some(Arc::new(Box::new(handler)));
    }

    /// Points `entry` (a lazy reexport in `dylib`) at `target` now, while
    /// other threads may be calling it: each call runs the old or the new
    /// body. A later first-call resolution does not undo it.
    pub fn redirect(&self, dylib: &Dylib, entry: &SymbolName, target: u64) -> Result<()> {
        let ct = self
            .inner
            .tables
            .lock()
            .by_entry
            .get(&(Arc::from(dylib.name()), entry.clone()))
            .cloned()
            .ok_or_else(|| Error::SymbolsNotFound {
                names: vec![entry.clone()],
            })?;
        let version = ct.link.lock().set(LinkState::Pinned, target);
        self.point_stub(&ct, version, target)
    }

    /// Points `ct`'s stub at `target` (its link's `version`) with no lock
    /// held, then makes sure the latest target wins: a writer whose version
    /// was overtaken while it wrote writes the newer target again. Every
    /// write is followed by its writer's check, so the last write to finish
    /// is of the latest target.
    fn point_stub(&self, ct: &CallThrough, mut version: u64, mut target: u64) -> Result<()> {
        loop {
            let outcome = self.inner.redirector.redirect(ct.stub, target);
            let mut link = ct.link.lock();
            link.written = link.written.max(version);
            let latest = link.version == version;
            (version, target) = (link.version, link.target);
            drop(link);
            ct.written.notify_all();
            if latest || outcome.is_err() {
                return outcome;
            }
        }
    }

    /// How many times a trampoline was entered.
    pub fn reentries(&self) -> usize {
        self.inner.reentries.load(Ordering::Relaxed)
    }

    /// How many entries were linked (their stub redirected to the
    /// implementation) by a first call.
    pub fn linked(&self) -> usize {
        self.inner.linked.load(Ordering::Relaxed)
    }

    fn register(
        &self,
        r: &Responsibility,
        body_dylib: &Dylib,
        aliases: &[Alias],
        trampolines: &[u64],
        stubs: &[u64],
    ) -> Result<()> {
        let dylib_name: Arc<str> = r.dylib().name().into();
        r.tracker().with_resource_key(|key| {
            let mut t = self.inner.tables.lock();
            for ((alias, &tramp), &stub) in aliases.iter().zip(trampolines).zip(stubs) {
                let entry = QualifiedName {
                    dylib: dylib_name.clone(),
                    name: alias.name.clone(),
                };
                let ct = Arc::new(CallThrough {
                    entry,
                    body_dylib: body_dylib.clone(),
                    body: alias.target.clone(),
                    stub,
                    link: Mutex::new(Link {
                        state: LinkState::Unlinked,
                        target: tramp,
                        version: 0,
                        written: 0,
                    }),
                    written: Condvar::new(),
                });
                t.by_trampoline.insert(tramp, ct.clone());
                t.by_entry
                    .insert((dylib_name.clone(), alias.name.clone()), ct);
            }
            t.by_key
                .entry(key)
                .or_default()
                .extend_from_slice(trampolines);
        })
    }
}

/// Defines lazy entries; made by [`LazyReexports::reexports`].
pub struct LazyReexportsUnit {
    manager: LazyReexports,
    body_dylib: Dylib,
    aliases: Vec<Alias>,
}

impl fmt::Debug for LazyReexportsUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyReexportsUnit")
            .field("body_dylib", &self.body_dylib.name())
            .field("aliases", &self.aliases.len())
            .finish()
    }
}

impl MaterializationUnit for LazyReexportsUnit {
    fn name(&self) -> &str {
        "<lazy reexports>"
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        crate::unit::alias_symbols(&self.aliases)
    }

    fn materialize(self: Box<Self>, r: Responsibility) {
        let inner = &self.manager.inner;
        let n = self.aliases.len();
        let result = (|| {
            let names: Vec<SymbolName> = self.aliases.iter().map(|a| a.name.clone()).collect();
            let trampolines = inner.emitter.emit_named_trampolines(r.tracker(), &names)?;
            let stubs = (inner.redirector).create_named_stubs(r.tracker(), &trampolines, &names)?;
            if trampolines.len() != n || stubs.len() != n {
                return Err(Error::Usage(format!(
                    "the emitter made {} trampolines and {} stubs for {n} entries",
                    trampolines.len(),
                    stubs.len()
                )));
            }
            self.manager
                .register(&r, &self.body_dylib, &self.aliases, &trampolines, &stubs)?;
            let defs: Vec<(SymbolName, SymbolDef)> = self
                .aliases
                .iter()
                .zip(&stubs)
                .map(|(a, &stub)| (a.name.clone(), SymbolDef::new(stub, a.flags)))
                .collect();
            r.resolve(&defs)
        })();
        match result {
            // The entries are safe to call at once: the stubs route the
            // first call through the engine, which waits for the body.
            Ok(()) => {
                let _ = r.emit(Vec::new());
            }
            Err(e) => r.fail(e),
        }
    }

    fn discard(&mut self, _dylib: &Dylib, name: &SymbolName) {
        self.aliases.retain(|a| &a.name != name);
    }
}
