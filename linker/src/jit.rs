//! A JIT in one call: [`Jit::builder`] assembles the session, its dylibs,
//! host symbols and the object layer (and, for lazy linking, the lazy
//! reexports manager and the dylib of bodies) the way most hosts need them.
//!
//! ```no_run
//! use kiln_linker::jit::Jit;
//!
//! extern "C" fn host_log(x: i64) -> i64 {
//!     println!("log {x}");
//!     x
//! }
//!
//! // SAFETY: the system's libm is sound to load.
//! let jit = unsafe { Jit::builder().threads(2).library("m") }.build()?;
//! jit.define_fn("host_log", host_log as extern "C" fn(i64) -> i64)?;
//! jit.add_object(&std::fs::read("square.o")?)?;
//! // SAFETY (of the example): `square` is `long square(long)` in C.
//! let square = unsafe { jit.get::<extern "C" fn(i64) -> i64>("square")? };
//! assert_eq!(square(7), 49);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The dylibs
//!
//! | dylib | holds | links against |
//! | --- | --- | --- |
//! | `app` ([`Jit::app`]) | the objects and archives added (for lazy objects: their lazy entries) | `app`, `runtime`, `<host>` |
//! | `runtime` ([`Jit::runtime`]) | the functions of [`Jit::define_fn`] | — |
//! | `<host>` | the process, `-l` libraries and kiln's runtime overrides, on demand | — |
//! | `<bodies>` (lazy only) | the bodies of lazily added objects | `app` (every call goes through the lazy entries), `runtime`, `<host>` |
//!
//! Lookups ([`Jit::get`], [`Jit::address`]) search `app`, then `runtime`.
//! The session, layer and dylibs stay reachable ([`Jit::session`],
//! [`Jit::layer`]) for hosts that want the engine's control.
//!
//! # Lifetime
//!
//! A [`Func`] handle keeps the session — and so every image not removed —
//! alive: the session ends (after the images' finalizers and `atexit`
//! handlers ran) when the [`Jit`] and every handle from it are dropped.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_engine::{
    Dispatcher, Dylib, DylibLookup, LazyReexports, LookupSet, RequiredState, ResourceTracker,
    SearchOrder, Session, SymbolDef, SymbolFlags, WorkerPool,
};

use crate::archive::Archive;
use crate::error::LinkError;
use crate::host::HostSymbols;
use crate::layer::{ArchiveGenerator, HostGenerator, ObjectLayer};
use crate::passes::LinkOptions;

/// What can go wrong building or using a [`Jit`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JitError {
    /// Reading, linking or loading failed (an object, an archive, a `-l`
    /// library).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The engine refused or failed (a missing symbol, a failed
    /// materialization, a removed tracker, an ended session).
    #[error(transparent)]
    Engine(#[from] kiln_engine::Error),
    /// The lazy stubs could not be set up (building a lazy JIT).
    #[error(transparent)]
    LazyStubs(#[from] crate::lazy::LazyStubError),
    /// The operation needs a JIT built with [`JitBuilder::lazy`].
    #[error("{operation} needs a lazy JIT (JitBuilder::lazy(true))")]
    NotLazy {
        /// What was attempted.
        operation: &'static str,
    },
    /// [`Jit::get`] was asked for a thread-local variable, which has no
    /// address to call ([`Jit::address`] gives this thread's instance).
    #[error("`{name}` is a thread-local variable, not a function")]
    NotAFunction {
        /// The symbol.
        name: String,
    },
    /// A thread-local variable's TLS module is no longer registered (its
    /// image was removed while its symbol was looked up).
    #[error("the TLS module of thread-local `{name}` is gone (was its image removed?)")]
    ThreadLocalGone {
        /// The symbol.
        name: String,
    },
    /// [`Jit::remove`] was given a tracker whose [`Func`] handles are still
    /// alive; nothing was removed.
    #[error("the tracker still has {handles} live function handle(s); nothing was removed")]
    TrackerInUse {
        /// How many handles obtained through it are alive.
        handles: usize,
    },
}

/// Configures a [`Jit`]: see [`Jit::builder`].
pub struct JitBuilder {
    dispatcher: Option<Arc<dyn Dispatcher>>,
    threads: Option<usize>,
    host_symbols: bool,
    libraries: Vec<String>,
    library_dirs: Vec<PathBuf>,
    lazy: bool,
    options: LinkOptions,
}

impl fmt::Debug for JitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitBuilder")
            .field("dispatcher", &self.dispatcher.is_some())
            .field("threads", &self.threads)
            .field("host_symbols", &self.host_symbols)
            .field("libraries", &self.libraries)
            .field("library_dirs", &self.library_dirs)
            .field("lazy", &self.lazy)
            .finish_non_exhaustive()
    }
}

impl Default for JitBuilder {
    fn default() -> Self {
        JitBuilder {
            dispatcher: None,
            threads: None,
            host_symbols: true,
            libraries: Vec::new(),
            library_dirs: Vec::new(),
            lazy: false,
            options: LinkOptions::default(),
        }
    }
}

impl JitBuilder {
    /// Links on a pool of `n` worker threads (default: one per core).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self.dispatcher = None;
        self
    }

    /// Runs kiln's tasks on `dispatcher` instead of a worker pool
    /// (`InPlaceDispatcher` for deterministic single-threaded runs, or
    /// your executor). `InPlaceDispatcher` also turns
    /// [`LinkOptions::parallel`] off: no link starts a thread, however
    /// large (options given later with [`JitBuilder::link_options`] say
    /// otherwise).
    pub fn dispatcher<D: Dispatcher>(mut self, dispatcher: D) -> Self {
        let in_place = (&dispatcher as &dyn std::any::Any).is::<kiln_engine::InPlaceDispatcher>();
        self.options.parallel &= !in_place;
        self.dispatcher = Some(Arc::new(dispatcher));
        self.threads = None;
        self
    }

    /// Whether code may call the process's symbols, the `-l` libraries and
    /// kiln's runtime (`atexit`, TLS support); default on. Off, objects see
    /// only each other and the functions of [`Jit::define_fn`].
    pub fn host_symbols(mut self, yes: bool) -> Self {
        self.host_symbols = yes;
        self
    }

    /// Also resolves host symbols from `libNAME.so` (like `-lNAME`; `:FILE`
    /// and paths as [`HostSymbols::load_library`] takes them), loaded by
    /// [`JitBuilder::build`].
    ///
    /// # Safety
    ///
    /// As for [`HostSymbols::load_path`]: loading runs the library's
    /// initializers in this process, and code calling its functions trusts
    /// them.
    pub unsafe fn library(mut self, name: impl Into<String>) -> Self {
        self.libraries.push(name.into());
        self
    }

    /// Searches `dir` for [`JitBuilder::library`] libraries before the
    /// system directories (like `-L`).
    pub fn library_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.library_dirs.push(dir.into());
        self
    }

    /// Links each object added with [`Jit::add_object_lazily`] (and each
    /// archive member) only when one of its functions is first called;
    /// enables [`Jit::redirect`]. Default off.
    pub fn lazy(mut self, yes: bool) -> Self {
        self.lazy = yes;
        self
    }

    /// Links with `options` (default: [`LinkOptions::default`]).
    pub fn link_options(mut self, options: LinkOptions) -> Self {
        self.options = options;
        self
    }

    /// The ready JIT. Fails if a library cannot be loaded or (lazy) the
    /// lazy reexports manager cannot be created.
    pub fn build(self) -> Result<Jit, JitError> {
        let mut builder = Session::builder();
        builder = match (self.dispatcher, self.threads) {
            (Some(d), _) => builder.shared_dispatcher(d),
            (None, threads) => {
                let n = threads.unwrap_or_else(WorkerPool::available_threads);
                // Attached from the start: a static TLS range is reused
                // only while every live thread is.
                let attach = crate::runtime::tls::attach_current_thread;
                builder.dispatcher(WorkerPool::with_start(n, attach))
            }
        };
        let session = builder.build();
        // From here on the session is ended on every return: `Inner` owns it.
        let layer = ObjectLayer::with_options(&session, self.options);
        let host = session.create_dylib("<host>")?;
        let runtime = session.create_dylib("runtime")?;
        let app = session.create_dylib("app")?;
        let mut inner = Inner {
            session,
            layer,
            host,
            runtime,
            app,
            lazy: None,
            objects: AtomicUsize::new(0),
        };
        if self.host_symbols {
            let mut symbols = HostSymbols::new();
            for lib in &self.libraries {
                // SAFETY: the caller of `library` vouched for each one.
                unsafe { symbols.load_library(lib, &self.library_dirs) }?;
            }
            inner.host.add_generator(HostGenerator::new(symbols))?;
        }
        let outside = [
            (inner.runtime.clone(), DylibLookup::ExportedOnly),
            (inner.host.clone(), DylibLookup::ExportedOnly),
        ];
        inner.app.set_link_order(&outside)?;
        if self.lazy {
            inner.lazy = Some(inner.start_lazy(&outside)?);
        }
        Ok(Jit {
            inner: Arc::new(inner),
        })
    }
}

/// What a lazy JIT adds: the dylib of bodies and the manager of the stubs.
struct Lazy {
    bodies: Dylib,
    manager: LazyReexports,
}

struct Inner {
    session: Session,
    layer: ObjectLayer,
    host: Dylib,
    runtime: Dylib,
    app: Dylib,
    lazy: Option<Lazy>,
    /// Numbers unnamed objects (`<object N>` in errors).
    objects: AtomicUsize,
}

impl Inner {
    fn start_lazy(&self, outside: &[(Dylib, DylibLookup)]) -> Result<Lazy, JitError> {
        let bodies = self.session.create_dylib("<bodies>")?;
        // Bodies call each other through `app`'s lazy entries, so a call
        // into a function not linked yet links it on the way.
        let mut order = vec![(self.app.clone(), DylibLookup::All)];
        order.extend_from_slice(outside);
        bodies.set_link_order_exact(&order)?;
        let manager = crate::lazy::lazy_reexports_manager(&self.session)?;
        // Newly linked objects run their initializers before their first
        // call proceeds.
        let layer = self.layer.clone();
        // SAFETY: the hook runs on a lazily linked function's first call,
        // from code already running: the caller of `Jit::get` (unsafe)
        // vouched for the objects' code.
        manager.set_after_link_hook(move || unsafe { layer.run_initializers() });
        Ok(Lazy { bodies, manager })
    }

    fn next_name(&self) -> String {
        format!("<object {}>", self.objects.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.session.in_forked_child() {
            // The images are the parent's, and their finalizers its to run;
            // a lock a thread held at the fork stays held here. The child's
            // copy of everything is left as `_exit` leaves it.
            std::mem::forget(self.lazy.take());
            return;
        }
        let (layer, session, lazy) = (self.layer.clone(), self.session.clone(), self.lazy.take());
        let lives = layer.lives();
        // Every image's finalizers run while everything (lazy stubs in
        // `app` included) is still mapped; then the session frees it all —
        // once this thread has left code glibc runs for one of the images
        // (a destructor that dropped the JIT returns through it first).
        crate::runtime::life::tear_down_outside(
            lives.iter().map(|l| &**l),
            Box::new(move || {
                layer.run_finalizers();
                session.end();
                drop(lazy);
            }),
        );
    }
}

/// A ready JIT: a session with the usual dylibs, an object layer and host
/// symbols. Cheap to share between threads (`&Jit` is enough: every method
/// takes `&self`). See the [module documentation](self).
pub struct Jit {
    inner: Arc<Inner>,
}

impl fmt::Debug for Jit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jit")
            .field("lazy", &self.inner.lazy.is_some())
            .finish_non_exhaustive()
    }
}

impl Jit {
    /// A builder with the defaults: a worker pool with one thread per core,
    /// host symbols on, no extra libraries, eager linking.
    pub fn builder() -> JitBuilder {
        JitBuilder::default()
    }

    /// Adds a relocatable object (read from `bytes`, which are copied once
    /// and the copy kept until it is linked). It is linked when one of its
    /// symbols is first looked up — by [`Jit::get`] or by another object's
    /// link.
    pub fn add_object(&self, bytes: &[u8]) -> Result<(), JitError> {
        self.add_object_named(&self.inner.next_name(), bytes)
    }

    /// [`Jit::add_object`], calling the object `name` in errors.
    pub fn add_object_named(&self, name: &str, bytes: &[u8]) -> Result<(), JitError> {
        let inner = &self.inner;
        inner.layer.add_object(&inner.app, None, name, bytes)?;
        Ok(())
    }

    /// [`Jit::add_object_named`] of bytes given away (what
    /// `cranelift-object`'s `ObjectProduct::emit` returns): kept as they
    /// are instead of copied.
    pub fn add_object_owned(&self, name: &str, bytes: Vec<u8>) -> Result<(), JitError> {
        let inner = &self.inner;
        inner
            .layer
            .add_object_owned(&inner.app, None, name, bytes)?;
        Ok(())
    }

    /// Adds objects (name, bytes) as one image: they are linked together
    /// when one of their symbols is first looked up, calls between them
    /// go direct (no GOT slot or PLT stub), and their link looks up none
    /// of each other's symbols — one link instead of one per object, for
    /// a host that adds a batch of objects at once (such as a module's
    /// worth that `cranelift-object` emitted). A strong symbol defined
    /// twice among them fails here, and nothing is added.
    pub fn add_objects<N: AsRef<str>, B: AsRef<[u8]>>(
        &self,
        objects: &[(N, B)],
    ) -> Result<(), JitError> {
        let inner = &self.inner;
        let name = match objects {
            [] => return Ok(()),
            [(one, _)] => one.as_ref().to_string(),
            [(first, _), rest @ ..] => format!("{} (+{} objects)", first.as_ref(), rest.len()),
        };
        inner.layer.add_objects(&inner.app, None, &name, objects)?;
        Ok(())
    }

    /// Adds an object so that it is linked only when one of its functions
    /// is first called (looking up its data links it at once). Needs
    /// [`JitBuilder::lazy`]. Lazily added objects belong to the JIT, not to
    /// a tracker.
    pub fn add_object_lazily(&self, name: &str, bytes: &[u8]) -> Result<(), JitError> {
        let inner = &self.inner;
        let lazy = self.lazy("add_object_lazily")?;
        inner.layer.add_objects_lazily_from(
            &inner.app,
            &lazy.bodies,
            &lazy.manager,
            &[(name, bytes)],
        )?;
        Ok(())
    }

    /// Adds a static archive: a member is linked when a link needs one of
    /// its symbols (lazily, on its first call, in a lazy JIT).
    pub fn add_archive(&self, name: &str, bytes: Vec<u8>) -> Result<(), JitError> {
        let inner = &self.inner;
        let archive = Archive::parse(name, bytes)?;
        let generator = match &inner.lazy {
            Some(lazy) => {
                ArchiveGenerator::lazy(&inner.layer, archive, &lazy.bodies, &lazy.manager)
            }
            None => ArchiveGenerator::new(&inner.layer, archive),
        };
        inner.app.add_generator(generator)?;
        Ok(())
    }

    /// Defines `name` as the host function `f` (an `extern "C" fn` of up to
    /// six arguments, cast to its type: `f as extern "C" fn(i64) -> i64`),
    /// callable from JIT'd code and found by [`Jit::get`].
    pub fn define_fn<F: HostFn>(&self, name: &str, f: F) -> Result<(), JitError> {
        let inner = &self.inner;
        let flags = SymbolFlags::EXPORTED | SymbolFlags::CALLABLE;
        let def = SymbolDef::new(f.address(), flags);
        inner
            .runtime
            .define_absolute([(inner.session.intern(name), def)])?;
        Ok(())
    }

    /// The address of `name` once it and everything it reaches are linked
    /// (Ready), without running initializers: for data, or to hand on. For
    /// a thread-local variable, the calling thread's instance (as `dlsym`
    /// gives it).
    pub fn address(&self, name: &str) -> Result<u64, JitError> {
        let def = self.ready(name)?;
        if def.flags.is_thread_local() {
            crate::runtime::tls::attach_current_thread();
            return crate::runtime::tls::thread_local_address(def.address)
                .map(|a| a as u64)
                .ok_or_else(|| JitError::ThreadLocalGone { name: name.into() });
        }
        Ok(def.address)
    }

    /// `name`'s definition once it and everything it reaches are Ready.
    fn ready(&self, name: &str) -> Result<kiln_engine::SymbolDef, JitError> {
        let inner = &self.inner;
        let sym = inner.session.intern(name);
        let found = inner
            .session
            .lookup(
                &self.search_order(),
                &LookupSet::required([sym.clone()]),
                RequiredState::Ready,
            )
            .wait()?;
        let def = found
            .get(&sym)
            .ok_or(kiln_engine::Error::SymbolsNotFound { names: vec![sym] })?;
        Ok(def)
    }

    /// The function `name` as an `F` (an `extern "C" fn` type), once it and
    /// everything it reaches are linked; runs the initializers of the
    /// images linked so far first (in link order). The handle keeps the
    /// code alive: the session ends only when the `Jit` and every handle
    /// are gone. The calling thread is attached to kiln's static TLS area
    /// ([`crate::runtime::tls::attach_current_thread`]): another thread
    /// that existed before the link and calls the code should attach too,
    /// or it sees zeros for initialized thread-locals of initial-exec and
    /// local-exec code.
    ///
    /// # Safety
    ///
    /// `F` must be the function's true signature (arguments, return type,
    /// calling convention), and running the initializers (static
    /// constructors) of the images linked so far must be sound.
    pub unsafe fn get<F: JitFn>(&self, name: &str) -> Result<Func<F>, JitError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.get_tied(name, None) }
    }

    /// # Safety
    ///
    /// As [`Jit::get`].
    unsafe fn get_tied<F: JitFn>(
        &self,
        name: &str,
        token: Option<Arc<()>>,
    ) -> Result<Func<F>, JitError> {
        let def = self.ready(name)?;
        if def.flags.is_thread_local() {
            return Err(JitError::NotAFunction { name: name.into() });
        }
        let address = def.address;
        let inner = &self.inner;
        // Objects with static constructors that were added lazily are linked
        // at startup: before the first function runs.
        let startup = inner.layer.startup_symbols();
        if !startup.is_empty() {
            inner
                .session
                .lookup(
                    &self.search_order(),
                    &LookupSet::required(startup),
                    RequiredState::Ready,
                )
                .wait()?;
        }
        // SAFETY: this function's caller vouches for the initializers.
        // (They run on this thread, which they attach to the static TLS
        // area: the thread that asks is the one likely to call, and one
        // older than the link would otherwise see zeros.)
        unsafe { inner.layer.run_initializers() };
        Ok(Func {
            // SAFETY: `address` is Ready code (linked, finalized, everything
            // it reaches too), kept mapped by the session the handle holds;
            // the caller asserts that `F` is its signature.
            f: unsafe { F::from_address(address) },
            _session: self.inner.clone(),
            _tracker: token,
        })
    }

    /// A new resource tracker: objects added through it
    /// ([`JitTracker::add_object`]) can be removed together
    /// ([`Jit::remove`]).
    pub fn tracker(&self) -> Result<JitTracker, JitError> {
        Ok(JitTracker {
            jit: Jit {
                inner: self.inner.clone(),
            },
            tracker: self.inner.app.create_tracker()?,
            handles: Arc::new(()),
        })
    }

    /// Removes everything added through `tracker` (which then takes nothing
    /// more): its symbols leave `app`,
    /// the images' finalizers and `atexit` handlers run, their unwind info
    /// is deregistered and their memory released. Fails with
    /// [`JitError::TrackerInUse`], removing nothing, while handles obtained
    /// through [`JitTracker::get`] are alive.
    ///
    /// # Safety
    ///
    /// No thread runs, or will run, code of the tracker's objects — through
    /// an address or a [`Func`] obtained from [`Jit::get`], or through other
    /// JIT'd code that calls it (its memory is released) — but threads the
    /// objects started (`pthread_create`: the tracker's memory stays mapped
    /// until they end), and running the images' finalizers must be sound. What
    /// glibc calls later on the objects' behalf is kiln's to guard:
    /// `thread_local` and pthread key destructors of exiting threads
    /// (waited for while running, skipped after), fork, `quick_exit` and
    /// `on_exit` handlers, signal handlers (uninstalled; one already
    /// running is not waited for), `SIGEV_THREAD` timers and message
    /// queue notifications (deleted, withdrawn; a notification running is
    /// waited for), streams buffered in the
    /// objects' data or opened with their `fopencookie` functions, and
    /// libstdc++'s terminate and new handlers (uninstalled). Such code may
    /// itself call this for its own image: the teardown then runs when it
    /// has returned.
    pub unsafe fn remove(&self, tracker: &JitTracker) -> Result<(), JitError> {
        let handles = Arc::strong_count(&tracker.handles) - 1;
        if handles > 0 {
            return Err(JitError::TrackerInUse { handles });
        }
        tracker.tracker.remove()?;
        Ok(())
    }

    /// Points the lazy entry `name` (of an object added with
    /// [`Jit::add_object_lazily`]) at `target` now, while other threads may
    /// be calling it: each call runs the old or the new body. A later first
    /// call does not undo it. Needs [`JitBuilder::lazy`].
    ///
    /// # Safety
    ///
    /// `target` is the address of a function with the entry's signature
    /// that stays mapped while the entry can be called (a [`HostFn`]'s
    /// address, or code of this JIT not removed while the entry may run).
    pub unsafe fn redirect(&self, name: &str, target: u64) -> Result<(), JitError> {
        let inner = &self.inner;
        let lazy = self.lazy("redirect")?;
        lazy.manager
            .redirect(&inner.app, &inner.session.intern(name), target)?;
        Ok(())
    }

    /// The session underneath, for hosts that want the engine's control.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// The object layer underneath.
    pub fn layer(&self) -> &ObjectLayer {
        &self.inner.layer
    }

    /// The dylib objects are added to.
    pub fn app(&self) -> &Dylib {
        &self.inner.app
    }

    /// The dylib of the functions defined with [`Jit::define_fn`].
    pub fn runtime(&self) -> &Dylib {
        &self.inner.runtime
    }

    /// The dylib of lazily linked bodies, in a lazy JIT: it links against
    /// `app` (all symbols), `runtime` and the host, not against itself.
    pub fn bodies(&self) -> Option<&Dylib> {
        self.inner.lazy.as_ref().map(|l| &l.bodies)
    }

    /// The lazy reexports manager, in a lazy JIT.
    pub fn lazy_reexports(&self) -> Option<&LazyReexports> {
        self.inner.lazy.as_ref().map(|l| &l.manager)
    }

    fn lazy(&self, operation: &'static str) -> Result<&Lazy, JitError> {
        self.inner
            .lazy
            .as_ref()
            .ok_or(JitError::NotLazy { operation })
    }

    fn search_order(&self) -> SearchOrder {
        SearchOrder::new()
            .with(&self.inner.app, DylibLookup::ExportedOnly)
            .with(&self.inner.runtime, DylibLookup::ExportedOnly)
    }
}

/// A resource tracker of a [`Jit`]: what is added through it can be removed
/// together with [`Jit::remove`].
pub struct JitTracker {
    jit: Jit,
    tracker: ResourceTracker,
    /// One reference per live [`Func`] obtained through the tracker.
    handles: Arc<()>,
}

impl fmt::Debug for JitTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitTracker")
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

impl JitTracker {
    /// [`Jit::add_object`] through this tracker.
    pub fn add_object(&self, bytes: &[u8]) -> Result<(), JitError> {
        self.add_object_named(&self.jit.inner.next_name(), bytes)
    }

    /// [`Jit::add_object_named`] through this tracker.
    pub fn add_object_named(&self, name: &str, bytes: &[u8]) -> Result<(), JitError> {
        let inner = &self.jit.inner;
        inner
            .layer
            .add_object(&inner.app, Some(&self.tracker), name, bytes)?;
        Ok(())
    }

    /// [`Jit::add_object_owned`] through this tracker.
    pub fn add_object_owned(&self, name: &str, bytes: Vec<u8>) -> Result<(), JitError> {
        let inner = &self.jit.inner;
        let tracker = Some(&self.tracker);
        inner
            .layer
            .add_object_owned(&inner.app, tracker, name, bytes)?;
        Ok(())
    }

    /// [`Jit::get`], with a handle that keeps this tracker from being
    /// removed while it lives ([`JitError::TrackerInUse`]).
    ///
    /// # Safety
    ///
    /// As [`Jit::get`].
    pub unsafe fn get<F: JitFn>(&self, name: &str) -> Result<Func<F>, JitError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.jit.get_tied(name, Some(self.handles.clone())) }
    }

    /// The engine's tracker underneath.
    pub fn resource_tracker(&self) -> &ResourceTracker {
        &self.tracker
    }
}

/// A function of a [`Jit`], typed: call it like the `extern "C" fn` it
/// derefs to. Keeps the JIT's session (and so the code) alive; cheap to
/// clone and to send to other threads.
pub struct Func<F> {
    f: F,
    _session: Arc<Inner>,
    _tracker: Option<Arc<()>>,
}

impl<F: JitFn> Func<F> {
    /// The function pointer. It stays valid only while this handle (or
    /// another keeping the code alive) exists.
    pub fn as_fn(&self) -> F {
        self.f
    }

    /// The function's address.
    pub fn address(&self) -> u64 {
        self.f.address()
    }
}

impl<F: JitFn> std::ops::Deref for Func<F> {
    type Target = F;
    fn deref(&self) -> &F {
        &self.f
    }
}

impl<F: JitFn> Clone for Func<F> {
    fn clone(&self) -> Self {
        Func {
            f: self.f,
            _session: self._session.clone(),
            _tracker: self._tracker.clone(),
        }
    }
}

impl<F: JitFn> fmt::Debug for Func<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Func")
            .field("address", &format_args!("{:#x}", self.address()))
            .finish_non_exhaustive()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A host function [`Jit::define_fn`] accepts: an `extern "C" fn` (safe or
/// `unsafe`) of up to six arguments. Sealed.
pub trait HostFn: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The function's address.
    fn address(self) -> u64;
}

/// A function type [`Jit::get`] returns: an `extern "C" fn` (safe or
/// `unsafe`) of up to six arguments. Sealed.
pub trait JitFn: HostFn {
    /// The function at `address`.
    ///
    /// # Safety
    ///
    /// `address` is code with this signature, mapped while the result is
    /// called.
    unsafe fn from_address(address: u64) -> Self;
}

macro_rules! impl_fn_traits {
    ($($arg:ident),*) => {
        impl_fn_traits!(@one extern "C" fn($($arg),*) -> R, $($arg),*);
        impl_fn_traits!(@one unsafe extern "C" fn($($arg),*) -> R, $($arg),*);
    };
    (@one $ty:ty, $($arg:ident),*) => {
        impl<R: 'static, $($arg: 'static),*> sealed::Sealed for $ty {}
        impl<R: 'static, $($arg: 'static),*> HostFn for $ty {
            fn address(self) -> u64 {
                self as *const () as usize as u64
            }
        }
        impl<R: 'static, $($arg: 'static),*> JitFn for $ty {
            unsafe fn from_address(address: u64) -> Self {
                // SAFETY: a function pointer is pointer-sized; the caller
                // guarantees `address` is code of this signature.
                unsafe { std::mem::transmute::<*const (), Self>(address as usize as *const ()) }
            }
        }
    };
}

impl_fn_traits!();
impl_fn_traits!(A1);
impl_fn_traits!(A1, A2);
impl_fn_traits!(A1, A2, A3);
impl_fn_traits!(A1, A2, A3, A4);
impl_fn_traits!(A1, A2, A3, A4, A5);
impl_fn_traits!(A1, A2, A3, A4, A5, A6);
