//! The object layer: relocatable objects as the engine's materialization
//! units.
//!
//! Adding an object to a dylib defines one unit with the object's global
//! symbols. Materializing it runs the link pipeline on that object: the graph
//! is allocated and its own symbols are *resolved* (so objects that call each
//! other — in one dylib or across dylibs — can close their cycles), its
//! external names are looked up at `Resolved` through the dylib's link order,
//! fixups and finalization follow, and the unit *emits* the image's symbols
//! as one dependence group on every external it found (each in the dylib it
//! came from). The engine then makes those symbols Ready only when every one
//! of those externals, and everything they reach, is emitted. Objects that
//! one lookup needs together are linked as one image, each still failing
//! on its own (`layer/batch.rs`).
//!
//! Linked images belong to the responsibility's resource tracker: removing
//! the tracker runs the images' finalizers (and the `atexit` handlers their
//! code registered), deregisters their unwind info and releases their memory.
//! Initializers run when the host asks ([`ObjectLayer::run_initializers`]),
//! after the code it is about to call is Ready.
//!
//! Host symbols come from a [`HostGenerator`] (the process, `-l` libraries,
//! and kiln's runtime overrides); static archives from an
//! [`ArchiveGenerator`], which adds a member when a lookup needs one of its
//! symbols.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use kiln_engine::{
    DependenceGroup, Dylib, Error, GenerateRequest, Generator, LookupKind, LookupSet,
    MaterializationUnit, RequiredState, ResourceKey, ResourceManager, ResourceTracker,
    Responsibility, Session, SymbolDef, SymbolFlags, SymbolName,
};

use crate::archive::Archive;
use crate::error::LinkError;
use crate::graph::{
    FxHashMap, InputBytes, LinkGraph, Linkage, Scope, SectionRole, SymbolDef as GraphDef, SymbolId,
};
use crate::host::HostSymbols;
use crate::image::{EdgeFacts, LinkedImage, ReadGraph, ReleaseAfter};
use crate::passes::{self, ImageEnv, LinkOptions, LinkStats, Prepared, Roots};
use crate::runtime;

mod batch;

/// A linked image (its `__dso_handle` is a slot inside it).
struct LayerImage {
    image: LinkedImage,
    /// Position of its unit in the order units were added (link order).
    order: usize,
    /// The dylib its unit was defined in.
    dylib: String,
    /// Loaded from an image file (not linked by this layer).
    from_file: bool,
    /// The image files it links against, kept mapped while it is (dropped
    /// after `image`).
    #[allow(dead_code, reason = "held for its drop")]
    keep: Vec<KeepAlive>,
}

/// An image file another image links against, kept mapped by it: removing
/// its tracker runs its finalizers, but its memory goes with the last
/// image holding it.
pub(crate) struct KeepAlive(#[allow(dead_code, reason = "held for its drop")] ImageCell);

type ImageCell = Arc<Mutex<LayerImage>>;

/// An image whose initializers have not finished.
struct PendingInit {
    image: ImageCell,
    /// The thread running them, once one has claimed them.
    runner: Option<std::thread::ThreadId>,
}

/// Time spent in each phase of the links a layer made, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// Reading objects into link graphs.
    pub read: Duration,
    /// Prune, GOT/PLT, allocation, resolving own symbols.
    pub prepare: Duration,
    /// Looking externals up through the engine (includes waiting for other
    /// units to resolve).
    pub externals: Duration,
    /// Fixups and finalization (permissions, unwind info, TLS).
    pub fixup_finalize: Duration,
}

/// Images by resource key, and those whose initializers have not finished.
#[derive(Default)]
struct Images {
    by_key: HashMap<ResourceKey, Vec<ImageCell>>,
    pending_init: Vec<PendingInit>,
    stats: LinkStats,
    times: PhaseTimes,
    linked: usize,
    /// Symbols of lazily added objects that are linked at startup, with
    /// the key of the tracker owning their entries (removing it drops them).
    startup: Vec<(ResourceKey, SymbolName)>,
    /// The image files loaded, by memory range (start, end), for the
    /// images that link against them ([`ObjectLayer::adopt`]).
    files: Vec<(u64, u64, Weak<Mutex<LayerImage>>)>,
    /// Images adopted before an image file they link against (mapped and
    /// resolved, still binding on another thread): the address of that
    /// dependency, and the image to keep it alive once it is adopted.
    awaiting_keep: Vec<(u64, Weak<Mutex<LayerImage>>)>,
}

struct Shared {
    images: Mutex<Images>,
    /// Signalled when images leave `pending_init` (initialized or removed).
    init_done: Condvar,
    options: LinkOptions,
    /// Images are a program: tear down like `exit()`, not `dlclose`.
    executable: std::sync::atomic::AtomicBool,
    /// Images removed from now on wait for every image thread
    /// ([`ObjectLayer::run_finalizers`] was called).
    ending: std::sync::atomic::AtomicBool,
    /// Counts units as they are added, for link order.
    added: std::sync::atomic::AtomicUsize,
    /// Some unit added holds non-PIE code (32-bit absolute addresses):
    /// every image linked from then on is placed below 2 GiB, where that
    /// code can reach its symbols (see [`ObjectLayer::add_graph_named`]).
    non_pie: std::sync::atomic::AtomicBool,
    /// What the lazily added objects refer to and define (roots for the
    /// archive members pulled for them, see [`ArchiveGenerator::lazy`]).
    lazy_objects: Mutex<ObjectNames>,
    /// Image files added, by build id: where images linked against them
    /// find them ([`crate::image_file`]).
    image_files: Mutex<HashMap<crate::image_file::BuildId, Vec<AddedImageFile>>>,
}

/// An image file added to a dylib of the session: the dylib's name and one
/// of its exports (looking it up maps the image), and what it was added as.
#[derive(Clone)]
pub(crate) struct AddedImageFile {
    pub(crate) dylib: String,
    pub(crate) export: SymbolName,
    pub(crate) name: String,
}

/// Global names the lazily added objects refer to (strongly) and define.
#[derive(Default)]
struct ObjectNames {
    referenced: std::collections::HashSet<Box<str>>,
    defined: std::collections::HashSet<Box<str>>,
}

impl ObjectNames {
    fn record(&mut self, graph: &LinkGraph) {
        for (n, id) in graph.global_names() {
            let s = &graph.symbols[id.index()];
            match s.def {
                GraphDef::External if !s.weak_ref => {
                    self.referenced.insert(n.into());
                }
                GraphDef::External => {}
                _ if s.scope != Scope::Local => {
                    self.defined.insert(n.into());
                }
                _ => {}
            }
        }
    }

    /// Referenced and defined by none of the objects: what an archive may
    /// be asked for (as `ld` pulls members only for undefined symbols).
    fn wanted(&self) -> Vec<Box<str>> {
        let mut names: Vec<Box<str>> = self
            .referenced
            .iter()
            .filter(|n| !self.defined.contains(*n))
            .cloned()
            .collect();
        names.sort_unstable();
        names
    }
}

impl ResourceManager for Shared {
    fn remove_resources(&self, key: ResourceKey) -> kiln_engine::Result<()> {
        let images = {
            let mut all = self
                .images
                .lock()
                .map_err(|_| Error::msg("object layer lock poisoned"))?;
            let images = all.by_key.remove(&key).unwrap_or_default();
            all.startup.retain(|(k, _)| *k != key);
            // Images whose initializers never ran leave the pending list
            // too: a later `run_initializers` must not run code being torn
            // down, and the list must not keep its memory alive.
            if !images.is_empty() && !all.pending_init.is_empty() {
                let removed: std::collections::HashSet<*const Mutex<LayerImage>> =
                    images.iter().map(Arc::as_ptr).collect();
                // Initializers another thread is running finish first (this
                // thread's own, further up its stack, cannot).
                let me = std::thread::current().id();
                while all.pending_init.iter().any(|p| {
                    removed.contains(&Arc::as_ptr(&p.image)) && p.runner.is_some_and(|r| r != me)
                }) {
                    all = self
                        .init_done
                        .wait(all)
                        .map_err(|_| Error::msg("object layer lock poisoned"))?;
                }
                all.pending_init
                    .retain(|p| !removed.contains(&Arc::as_ptr(&p.image)));
                self.init_done.notify_all();
            }
            images
        };
        // Like one program's teardown: every image's finalizers run before
        // any image's memory is released (a destructor in one object may
        // still call into another) — once this thread has left code glibc
        // runs for one of them (a destructor that removed its own image).
        let ending = self.ending.load(std::sync::atomic::Ordering::Acquire);
        let lives = removed_together(&images, ending);
        runtime::life::tear_down_outside(
            lives.iter().map(|l| &**l),
            Box::new(move || {
                finalize_together(&images);
                drop(images);
            }),
        );
        Ok(())
    }

    fn transfer_resources(&self, dst: ResourceKey, src: ResourceKey) {
        if let Ok(mut images) = self.images.lock() {
            let moved = images.by_key.remove(&src).unwrap_or_default();
            images.by_key.entry(dst).or_default().extend(moved);
            for (key, _) in images.startup.iter_mut().filter(|(k, _)| *k == src) {
                *key = dst;
            }
        }
    }
}

/// The lives of `images`, each image told whose threads its memory waits
/// for: those any of `images` started, or every image thread (`ending`).
fn removed_together(images: &[ImageCell], ending: bool) -> Vec<Arc<runtime::life::Life>> {
    let lives: Vec<_> = images
        .iter()
        .filter_map(|i| i.lock().ok()?.image.life())
        .collect();
    for image in images {
        if let Ok(mut image) = image.lock() {
            image.image.set_release_after(if ending {
                ReleaseAfter::EveryImageThread
            } else {
                ReleaseAfter::ThreadsOf(lives.clone())
            });
        }
    }
    lives
}

/// Runs the finalizers of `images` together, as one program's teardown
/// ([`LinkedImage::run_finalizers_together`], in link order).
/// No image's lock is held while its code runs: a finalizer may call
/// `exit()` or remove its own tracker, which finalize again.
fn finalize_together(images: &[ImageCell]) {
    let calls = {
        let mut guards: Vec<_> = images.iter().filter_map(|i| i.lock().ok()).collect();
        guards.sort_by_key(|g| g.order);
        let mut linked: Vec<&mut LinkedImage> = guards.iter_mut().map(|g| &mut g.image).collect();
        LinkedImage::take_finalizers_together(&mut linked)
    };
    // SAFETY: `images` (the caller's) keeps every image mapped until this
    // returns; their finalizers were taken once, from finalized images.
    unsafe { calls.run() };
}

/// Marks claimed images initialized when dropped — also when an
/// initializer unwinds — so threads waiting for them go on.
struct InitDone<'a> {
    shared: &'a Shared,
    images: &'a [ImageCell],
}

impl Drop for InitDone<'_> {
    fn drop(&mut self) {
        let done: Vec<*const Mutex<LayerImage>> = self.images.iter().map(Arc::as_ptr).collect();
        let mut images = self
            .shared
            .images
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        images
            .pending_init
            .retain(|p| !done.contains(&Arc::as_ptr(&p.image)));
        self.shared.init_done.notify_all();
    }
}

/// Adds objects and archives to dylibs as materialization units.
#[derive(Clone)]
pub struct ObjectLayer {
    session: Session,
    shared: Arc<Shared>,
}

impl fmt::Debug for ObjectLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectLayer").finish_non_exhaustive()
    }
}

impl ObjectLayer {
    /// A layer for `session`; registers itself as a resource manager.
    pub fn new(session: &Session) -> Self {
        Self::with_options(session, LinkOptions::default())
    }

    /// A layer linking with `options`.
    pub fn with_options(session: &Session, options: LinkOptions) -> Self {
        crate::debug::prepare(&options.debug);
        crate::runtime::atfork::tell_the_engine_of_forks();
        let shared = Arc::new(Shared {
            images: Mutex::new(Images::default()),
            init_done: Condvar::new(),
            options,
            executable: std::sync::atomic::AtomicBool::new(false),
            ending: std::sync::atomic::AtomicBool::new(false),
            added: std::sync::atomic::AtomicUsize::new(0),
            non_pie: std::sync::atomic::AtomicBool::new(false),
            lazy_objects: Mutex::new(ObjectNames::default()),
            image_files: Mutex::new(HashMap::new()),
        });
        session.register_resource_manager(shared.clone());
        ObjectLayer {
            session: session.clone(),
            shared,
        }
    }

    /// Adds the object `bytes` (called `name` in errors) to `dylib`, owned by
    /// `tracker` (default: the dylib's default tracker). The bytes are
    /// copied once, whole, and the copy is kept until the object is linked
    /// (as ORC's object layer keeps an object's buffer).
    pub fn add_object(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), LinkError> {
        // Copied once, whole: the blocks are ranges of it, and a unit that
        // joins a batch keeps it, to be linked again alone if the batch
        // cannot be linked as a whole.
        self.add_object_owned(dylib, tracker, name, bytes.to_vec())
    }

    /// [`ObjectLayer::add_object`] of bytes the caller gives away (what
    /// `cranelift-object` emits): kept as they are, not copied.
    pub fn add_object_owned(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), LinkError> {
        let start = Instant::now();
        let file: InputBytes = Arc::new(bytes.into());
        let graph = crate::elf::parse_object_shared(name, &file)?;
        self.add_read_time(start.elapsed());
        let unit = self.unit_parsed(name, graph, file)?;
        define_unit(dylib, tracker, unit)
    }

    /// The options this layer links with.
    pub fn link_options(&self) -> &LinkOptions {
        &self.shared.options
    }

    /// An empty graph for this layer's objects: linked on one thread if
    /// [`LinkOptions::parallel`] is off.
    fn new_graph(&self) -> LinkGraph {
        self.own(LinkGraph::new())
    }

    /// `graph`, given to this layer: linked on one thread from now on if
    /// [`LinkOptions::parallel`] is off (every pass it meets, from the
    /// first look at its edges on).
    fn own(&self, mut graph: LinkGraph) -> LinkGraph {
        graph.serial |= !self.shared.options.parallel;
        graph
    }

    /// Reads object `bytes` (called `name` in errors) into `graph`, with
    /// the layer's debugger and profiler options.
    fn read_into(&self, graph: &mut LinkGraph, name: &str, bytes: &[u8]) -> Result<(), LinkError> {
        crate::debug::read_object(graph, name, bytes, &self.shared.options.debug)?;
        Ok(())
    }

    /// Adds the objects `objects` (name, bytes) to `dylib` as one unit,
    /// owned by `tracker` (default: the dylib's default tracker), called
    /// `name` in errors: they are linked together, as one image, when one
    /// of their symbols is first looked up, and are removed together.
    /// Calls between them are direct (no GOT slot or PLT stub, no lookup
    /// of each other's symbols, no dependencies between units); a strong
    /// symbol defined by two of them fails here, and nothing is added.
    /// What [`ObjectLayer::add_object`] of each would define, in fewer
    /// steps.
    pub fn add_objects<N: AsRef<str>, B: AsRef<[u8]>>(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        name: &str,
        objects: &[(N, B)],
    ) -> Result<(), LinkError> {
        let start = Instant::now();
        let objects: Vec<(&str, &[u8])> = objects
            .iter()
            .map(|(name, bytes)| (name.as_ref(), bytes.as_ref()))
            .collect();
        let debug = &self.shared.options.debug;
        let parse = |name: &str, bytes: &&[u8]| crate::debug::parse_object(name, bytes, debug);
        // Many objects are read and their globals interned on all threads.
        let intern = |names: &[&str]| self.session.intern_all(names.iter().copied());
        let mut read = crate::image::read_objects_naming(
            &objects,
            &|bytes| *bytes,
            &parse,
            &intern,
            self.shared.options.parallel,
        )?;
        passes::check_duplicates(&mut read.graph)?;
        self.add_read_time(start.elapsed());
        self.add_read_graph(dylib, tracker, name, read)
    }

    /// Adds an already-built graph (for example every input of a
    /// [`crate::Linker`], linked as one image) as one unit.
    pub fn add_graph(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        name: &str,
        graph: LinkGraph,
    ) -> Result<(), LinkError> {
        self.add_graph_named(dylib, tracker, name, graph, Vec::new())
    }

    /// [`ObjectLayer::add_graph`] with names already interned in this
    /// layer's session, by symbol id (from
    /// [`crate::Linker::build_graph_naming`]); globals without one are
    /// interned here.
    ///
    /// Once a graph with non-PIE code (32-bit absolute addresses) is added,
    /// every image the layer links after is placed below 2 GiB — not only
    /// that graph's — since that code reaches other images' data only with
    /// 32-bit addresses, as in a non-PIE executable. An image linked above
    /// before then stays there; non-PIE code using its data fails to link
    /// with [`LinkError::DataOutOfReach`] (add objects before looking any
    /// up, as `kiln run` does).
    pub fn add_graph_named(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        name: &str,
        graph: LinkGraph,
        names: Vec<Option<SymbolName>>,
    ) -> Result<(), LinkError> {
        let graph = self.own(graph);
        let facts = EdgeFacts::of(&graph);
        let read = ReadGraph {
            graph,
            names,
            facts,
        };
        self.add_read_graph(dylib, tracker, name, read)
    }

    /// [`ObjectLayer::add_graph_named`] of a graph as
    /// [`crate::Linker::read_graph_naming`] read it, with names interned in
    /// this layer's session: what reading learned of its relocations is
    /// not learned again.
    pub fn add_read_graph(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        name: &str,
        read: ReadGraph<SymbolName>,
    ) -> Result<(), LinkError> {
        let ReadGraph {
            graph,
            names,
            facts,
        } = read;
        let unit = self.unit_named(name, self.own(graph), names, facts, None)?;
        define_unit(dylib, tracker, unit)
    }

    /// The unit [`ObjectLayer::add_graph`] would define, not defined
    /// anywhere: for a unit of the host's own that produces its graph when
    /// materialized and hands over with [`Responsibility::replace`]
    /// (its symbols are the graph's defined globals).
    pub fn graph_unit(
        &self,
        name: &str,
        graph: LinkGraph,
    ) -> Result<impl MaterializationUnit + use<>, LinkError> {
        let graph = self.own(graph);
        let facts = EdgeFacts::of(&graph);
        self.unit_named(name, graph, Vec::new(), facts, None)
    }

    /// `source`: the object the graph was read from, if it is one object's
    /// (a batch it joins can link it again alone).
    fn unit_named(
        &self,
        name: &str,
        mut graph: LinkGraph,
        names: Vec<Option<SymbolName>>,
        facts: EdgeFacts,
        source: Option<InputBytes>,
    ) -> Result<ObjectUnit, LinkError> {
        self.note_absolute_32bit(facts.absolute_32bit);
        // Archive members keep only what live code reaches (`Roots::All`):
        // the unit offers only the definitions that stay.
        if graph.objects.iter().any(|o| o.library) {
            passes::allocate_commons(&mut graph);
            passes::prune(&mut graph, &Roots::All)?;
        }
        let (globals, flags, symbols_join) = self.offered_globals(&graph, names);
        // An image that will be linked anyway is prepared while the engine
        // records its symbols — unless it has weak definitions (another
        // unit may win them: known only when it is materialized).
        let options = &self.shared.options;
        let early = options.prepare_early
            && options.parallel
            && !flags.iter().any(|f| f.is_weak())
            && facts.edges >= options.parallel_threshold;
        let joinable =
            symbols_join && !early && !options.imaging && batch::joins_batches(&graph, &flags);
        let input = if early {
            UnitInput::Early(EarlyPrepare::start(
                graph,
                self.below_2gib(),
                options.imaging,
            ))
        } else {
            UnitInput::Graph(Box::new(graph))
        };
        Ok(self.new_unit(name, input, (globals, flags), (joinable, source)))
    }

    /// A unit of one object's `graph` as its parse gave it: what it offers
    /// is read from the parse, and the graph is adopted
    /// ([`LinkGraph::merge`] into an empty one: every id stays) only when
    /// it is linked — in a batch, merged with the others' at once. Adopting
    /// here would copy each global name (a name per allocation) only for
    /// the batch's merge to enter them again. Objects that an adoption
    /// could change (a name or a COMDAT group twice), archive members
    /// (pruned first) and large ones (prepared early) are adopted here.
    fn unit_parsed(
        &self,
        name: &str,
        graph: LinkGraph,
        file: InputBytes,
    ) -> Result<ObjectUnit, LinkError> {
        let graph = self.own(graph);
        let facts = EdgeFacts::of(&graph);
        let options = &self.shared.options;
        let large =
            options.prepare_early && options.parallel && facts.edges >= options.parallel_threshold;
        if large || graph.objects.iter().any(|o| o.library) || !graph.adoptable() {
            return self.unit_named(name, adopted(graph), Vec::new(), facts, Some(file));
        }
        self.note_absolute_32bit(facts.absolute_32bit);
        let (globals, flags, symbols_join) = self.offered_parsed(&graph);
        let joinable = symbols_join && !options.imaging && batch::joins_batches(&graph, &flags);
        let input = UnitInput::Parsed(Box::new(graph));
        Ok(self.new_unit(name, input, (globals, flags), (joinable, Some(file))))
    }

    /// A unit of this layer linking `input`, offering `globals` with their
    /// `flags`; it joins batches if `joinable` and it has a `source`.
    fn new_unit(
        &self,
        name: &str,
        input: UnitInput,
        (globals, flags): (Vec<(SymbolName, SymbolId)>, Vec<SymbolFlags>),
        (joinable, source): (bool, Option<InputBytes>),
    ) -> ObjectUnit {
        ObjectUnit {
            layer: self.clone(),
            name: name.to_string(),
            input: Some(input),
            globals,
            flags,
            discarded: Vec::new(),
            // Only a unit that can be linked again alone joins a batch.
            joinable: joinable && source.is_some(),
            source: source.filter(|_| joinable),
            order: self
                .shared
                .added
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// [`ObjectLayer::offered_globals`] of a graph as one object's parse
    /// gave it ([`LinkGraph::adoptable`]), read before it is adopted: the
    /// same globals, flags and answer.
    fn offered_parsed(&self, graph: &LinkGraph) -> OfferedGlobals {
        let mut offered = Vec::new();
        let mut flags = Vec::new();
        let mut joins = true;
        for (id, name) in graph.unmerged_globals() {
            if let Some(f) = offer(graph, id, name, &mut joins) {
                offered.push((name, id));
                flags.push(f);
            }
        }
        // Interned all at once: each shard's lock once, its table grown once.
        let names = self
            .session
            .intern_all(offered.iter().map(|&(name, _)| name));
        let globals = names.into_iter().zip(offered.into_iter().map(|(_, id)| id));
        (globals.collect(), flags, joins)
    }

    /// The defined, live, non-local globals of `graph` a unit offers, in
    /// symbol order, each with its name (from `names`, by symbol id, or
    /// interned here) and its flags; and whether its globals let it join a
    /// batch ([`batch::joins_batches`]: no global of local scope, no
    /// `__start_`/`__stop_` reference), learned on the way.
    ///
    /// On the graph's critical path (the link starts after it): the names
    /// are moved, not cloned — a clone writes each name's count, a cache
    /// miss each (synth's 22,000 names: ~0.4 ms), and the engine's copy
    /// ([`ObjectUnit::symbols`]) is taken while the image is prepared — and
    /// the symbols are visited in order, not in the name table's.
    fn offered_globals(
        &self,
        graph: &LinkGraph,
        mut names: Vec<Option<SymbolName>>,
    ) -> OfferedGlobals {
        let mut is_global = vec![false; graph.symbols.len()];
        for id in graph.globals.ids() {
            is_global[id.index()] = true;
        }
        let mut globals = Vec::with_capacity(graph.globals.len());
        let mut flags = Vec::with_capacity(graph.globals.len());
        let mut joins = true;
        for (i, s) in graph.symbols.iter().enumerate() {
            if !is_global[i] {
                continue;
            }
            let id = SymbolId(i as u32);
            let text = s.name.as_deref().unwrap_or_default();
            let Some(f) = offer(graph, id, text, &mut joins) else {
                continue;
            };
            let name = match names.get_mut(i).and_then(Option::take) {
                Some(name) => name,
                None => self.session.intern(text),
            };
            globals.push((name, id));
            flags.push(f);
        }
        (globals, flags, joins)
    }

    /// Adds objects so that each is linked only when one of its functions is
    /// first called: the object goes into `bodies`, and `entries` gets a lazy
    /// reexport (from `manager`) for each of its functions and a plain alias
    /// for each data symbol (looking data up links the object at once).
    /// `bodies` should link against `entries` first (and not against
    /// itself: [`Dylib::set_link_order_exact`]), so calls between objects
    /// go through the lazy entries, and a function has one address — its
    /// entry's — wherever it is taken: in its own object too, where
    /// references that take its address (not direct calls) are resolved to
    /// its entry through that link order (see `lazy/identity.rs`).
    ///
    /// Objects that refer to each other's thread-local variables are linked
    /// together, as one image: local-dynamic code (hidden thread-locals of
    /// another object, as Rust's codegen units have) reaches only its own
    /// image's. Objects with static constructors are linked at startup
    /// instead ([`ObjectLayer::startup_symbols`]): their constructors must
    /// run before `main`, as in the eager mode.
    pub fn add_objects_lazily(
        &self,
        entries: &Dylib,
        bodies: &Dylib,
        manager: &kiln_engine::LazyReexports,
        objects: &[(String, Vec<u8>)],
    ) -> Result<(), LinkError> {
        self.add_objects_lazily_from(entries, bodies, manager, objects)
    }

    /// [`ObjectLayer::add_objects_lazily`] for `(name, bytes)` pairs
    /// borrowed (`(&str, &[u8])`) or owned: the bytes are read, not kept.
    pub fn add_objects_lazily_from<N: AsRef<str>, B: AsRef<[u8]>>(
        &self,
        entries: &Dylib,
        bodies: &Dylib,
        manager: &kiln_engine::LazyReexports,
        objects: &[(N, B)],
    ) -> Result<(), LinkError> {
        let start = Instant::now();
        let mut graphs = Vec::with_capacity(objects.len());
        for (name, bytes) in objects {
            let mut graph = self.new_graph();
            self.read_into(&mut graph, name.as_ref(), bytes.as_ref())?;
            graphs.push(graph);
        }
        // All of them first: an object linked on its first call must be
        // placed where the non-PIE code among the others can reach it.
        for graph in &graphs {
            self.note_non_pie(graph);
        }
        if let Ok(mut names) = self.shared.lazy_objects.lock() {
            for graph in &graphs {
                names.record(graph);
            }
        }
        // Group objects connected by thread-local references (union-find).
        let mut parent: Vec<usize> = (0..graphs.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let mut tls_definer: HashMap<Box<str>, usize> = HashMap::new();
        for (i, g) in graphs.iter().enumerate() {
            for (n, id) in g.global_names() {
                let s = &g.symbols[id.index()];
                if s.tls && !matches!(s.def, GraphDef::External) {
                    tls_definer.insert(n.into(), i);
                }
            }
        }
        for (i, g) in graphs.iter().enumerate() {
            for (n, id) in g.global_names() {
                let s = &g.symbols[id.index()];
                if s.tls
                    && matches!(s.def, GraphDef::External)
                    && let Some(&j) = tls_definer.get(n)
                {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a] = b;
                }
            }
        }
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for i in 0..graphs.len() {
            let r = root(&mut parent, i);
            match groups.iter_mut().find(|(g, _)| *g == r) {
                Some((_, members)) => members.push(i),
                None => groups.push((r, vec![i])),
            }
        }
        let mut singles: Vec<Option<LinkGraph>> = graphs.into_iter().map(Some).collect();
        let mut images = Vec::with_capacity(groups.len());
        for (_, members) in groups {
            if let [only] = members[..] {
                let graph = singles[only].take().expect("each object is in one group");
                images.push((objects[only].0.as_ref().to_string(), graph));
                continue;
            }
            // A group is read again into one graph (`merge` wants graphs
            // fresh from the parser; grouping needed the merged view).
            let mut graph = self.new_graph();
            for &m in &members {
                let debug = &self.shared.options.debug;
                let (name, bytes) = (objects[m].0.as_ref(), objects[m].1.as_ref());
                crate::debug::read_object(&mut graph, name, bytes, debug)?;
            }
            let name = members
                .iter()
                .map(|&m| objects[m].0.as_ref())
                .collect::<Vec<_>>()
                .join("+");
            images.push((name, graph));
        }
        for (name, graph) in images {
            self.add_graph_lazily(entries, bodies, manager, &name, graph)?;
        }
        self.add_read_time(start.elapsed());
        Ok(())
    }

    fn add_graph_lazily(
        &self,
        entries: &Dylib,
        bodies: &Dylib,
        manager: &kiln_engine::LazyReexports,
        name: &str,
        mut graph: LinkGraph,
    ) -> Result<(), LinkError> {
        let has_constructors = graph.sections.iter().any(|s| {
            matches!(
                s.role,
                SectionRole::PreinitArray | SectionRole::InitArray(_) | SectionRole::Ctors(_)
            ) && !s.blocks.is_empty()
        });
        let mut functions = Vec::new();
        let mut data = Vec::new();
        for (n, id) in graph.global_names() {
            let s = &graph.symbols[id.index()];
            // Archive code no live code reaches was pruned: not offered.
            let dead = match s.def {
                GraphDef::Defined { block, .. } => !graph.blocks[block.index()].live,
                _ => false,
            };
            if dead || matches!(s.def, GraphDef::External) || s.scope == Scope::Local {
                continue;
            }
            let sym = self.session.intern(n);
            let alias = kiln_engine::Alias {
                name: sym.clone(),
                target: sym,
                flags: flags_of(s),
            };
            // Thread-local symbols have no address to call through.
            if s.callable && !s.tls {
                functions.push(alias);
            } else {
                data.push(alias);
            }
        }
        if !has_constructors {
            // The entry's address is the function's, in its own image too.
            let names: Vec<&str> = functions.iter().map(|a| a.name.as_str()).collect();
            crate::lazy::identity::canonical_function_addresses(&mut graph, &names);
        }
        if has_constructors {
            let key = entries.default_tracker().key();
            if let Ok(mut images) = self.shared.images.lock() {
                images
                    .startup
                    .extend(functions.iter().chain(&data).map(|a| (key, a.name.clone())));
            }
            // Linked at startup: calls reach it directly, with no stubs.
            data.append(&mut functions);
        }
        self.add_graph(bodies, None, name, graph)?;
        let engine = |e: Error| LinkError::engine(name, e);
        if !functions.is_empty() {
            entries
                .define(manager.reexports(bodies, functions).map_err(engine)?)
                .map_err(engine)?;
        }
        if !data.is_empty() {
            entries
                .define(kiln_engine::reexports(
                    bodies,
                    kiln_engine::DylibLookup::All,
                    data,
                ))
                .map_err(engine)?;
        }
        Ok(())
    }

    /// Records that `graph` holds non-PIE code, if it does.
    fn note_non_pie(&self, graph: &LinkGraph) {
        if !self.below_2gib() {
            self.note_absolute_32bit(graph.has_absolute_32bit_references());
        }
    }

    /// [`ObjectLayer::note_non_pie`] of a graph whose answer is known.
    fn note_absolute_32bit(&self, absolute_32bit: bool) {
        if absolute_32bit {
            self.shared
                .non_pie
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether the images linked from now on go below 2 GiB: non-PIE code
    /// was added (see [`ObjectLayer::add_graph_named`]). Lazy entries'
    /// stubs should then go there too
    /// ([`crate::lazy::JitLazyReexports::place_stubs_below_2gib`]).
    pub fn places_below_2gib(&self) -> bool {
        self.below_2gib()
    }

    /// The debugger and profiler interfaces the layer's links register
    /// their images with: a host placing code itself (not through a link)
    /// registers it as these say, or leaves it to a link.
    pub fn debug_options(&self) -> crate::DebugOptions {
        self.shared.options.debug
    }

    /// Whether images linked now go below 2 GiB (non-PIE code was added).
    fn below_2gib(&self) -> bool {
        self.shared
            .non_pie
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Symbols of lazily added objects that must be linked before the entry
    /// point runs (objects with static constructors). Look them up at Ready,
    /// then call [`ObjectLayer::run_initializers`].
    pub fn startup_symbols(&self) -> Vec<SymbolName> {
        self.shared
            .images
            .lock()
            .map(|i| i.startup.iter().map(|(_, n)| n.clone()).collect())
            .unwrap_or_default()
    }

    /// Treats the images as one program run by the host (like `kiln run`):
    /// at removal they tear down like `exit()` — every `atexit` handler, then
    /// the finalizers — instead of like `dlclose`.
    pub fn set_executable_teardown(&self, yes: bool) {
        self.shared
            .executable
            .store(yes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs the initializers of every image linked so far that has not run
    /// them yet, in link order, and returns once every image linked so far
    /// has finished its initializers — also those another thread is
    /// running meanwhile: no caller goes on into code whose constructors
    /// are still running. Call it after looking up the entry point at Ready
    /// and before calling it.
    ///
    /// Called again from a constructor (a lazily linked function's first
    /// call runs this), it runs the new images and does not wait for the
    /// ones this thread is initializing further up its stack. A
    /// constructor that waits for another thread which calls this
    /// deadlocks, as it would under `dlopen`.
    ///
    /// # Safety
    ///
    /// The images' code runs: as for [`crate::LinkedImage::run_initializers`],
    /// for every image linked so far.
    pub unsafe fn run_initializers(&self) {
        // The images' constructors run on this thread: its copies of static
        // thread-locals get their initial values first.
        runtime::tls::attach_current_thread();
        let me = std::thread::current().id();
        let Ok(mut images) = self.shared.images.lock() else {
            return;
        };
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for p in &mut images.pending_init {
            match p.runner {
                None => {
                    p.runner = Some(me);
                    mine.push(p.image.clone());
                }
                Some(runner) if runner != me => theirs.push(Arc::as_ptr(&p.image)),
                Some(_) => {}
            }
        }
        drop(images);
        if !mine.is_empty() {
            let _done = InitDone {
                shared: &self.shared,
                images: &mine,
            };
            // As one program: all claimed images together, in link order.
            // Taken under the images' locks, run without them: an
            // initializer may call `exit()`, whose teardown finalizes them.
            let calls = {
                let mut guards: Vec<_> = mine.iter().filter_map(|i| i.lock().ok()).collect();
                guards.sort_by_key(|g| g.order);
                let mut images: Vec<&mut LinkedImage> =
                    guards.iter_mut().map(|g| &mut g.image).collect();
                LinkedImage::take_initializers_together(&mut images)
            };
            // SAFETY: `mine` keeps the images mapped, and their removal
            // waits until this thread has finished them (`pending_init`,
            // see `remove_resources`); they are linked and their externals
            // Ready (the caller looked them up).
            unsafe { calls.run() };
        }
        let Ok(mut images) = self.shared.images.lock() else {
            return;
        };
        while images
            .pending_init
            .iter()
            .any(|p| theirs.contains(&Arc::as_ptr(&p.image)))
        {
            images = match self.shared.init_done.wait(images) {
                Ok(images) => images,
                Err(_) => return,
            };
        }
    }

    /// Runs the finalizers (and `atexit` handlers) of every image this layer
    /// has linked and not yet removed, together, as one program's teardown
    /// — with [`ObjectLayer::set_executable_teardown`], as its `exit()` —
    /// keeping their memory until their trackers are removed. Each image
    /// finalizes once: its later removal only releases it.
    ///
    /// Call it before ending the session (as an ORC host calls
    /// `deinitialize`) when images call into code the layer does not own —
    /// for example other images through the lazy stubs of another dylib,
    /// whose tracker the session may remove first. From then on, the memory
    /// of an image the layer removes waits for every thread any kiln image
    /// started, not only for those started by the images removed with it:
    /// at the end, a thread of any image may run any, and code linked
    /// meanwhile is removed on its own.
    pub fn run_finalizers(&self) {
        self.shared
            .ending
            .store(true, std::sync::atomic::Ordering::Release);
        // A finalizer may be the first caller of a lazily linked function:
        // images linked meanwhile are finalized in another round.
        let mut finalized_upto = None;
        loop {
            let (images, linked): (Vec<ImageCell>, usize) = match self.shared.images.lock() {
                Ok(images) => (
                    images.by_key.values().flatten().cloned().collect(),
                    images.linked,
                ),
                Err(_) => return,
            };
            if finalized_upto == Some(linked) {
                return;
            }
            finalized_upto = Some(linked);
            finalize_together(&images);
        }
    }

    /// The lives of the images this layer holds (their runtime parts').
    pub(crate) fn lives(&self) -> Vec<Arc<runtime::life::Life>> {
        let cells = self.cells();
        cells
            .iter()
            .filter_map(|i| i.lock().ok()?.image.life())
            .collect()
    }

    fn cells(&self) -> Vec<ImageCell> {
        match self.shared.images.lock() {
            Ok(images) => images.by_key.values().flatten().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Statistics summed over every image linked by this layer, and how many
    /// images that was.
    pub fn stats(&self) -> (LinkStats, usize) {
        match self.shared.images.lock() {
            Ok(images) => (images.stats, images.linked),
            Err(_) => (LinkStats::default(), 0),
        }
    }

    /// Time spent per phase, summed over every link (and every object read).
    pub fn phase_times(&self) -> PhaseTimes {
        self.shared
            .images
            .lock()
            .map(|i| i.times)
            .unwrap_or_default()
    }

    /// Records time spent reading inputs outside [`ObjectLayer::add_object`].
    pub fn add_read_time(&self, spent: Duration) {
        if let Ok(mut images) = self.shared.images.lock() {
            images.times.read += spent;
        }
    }
}

/// What the image-file unit ([`crate::image_file`]) needs of the layer.
impl ObjectLayer {
    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// The next position in link order.
    pub(crate) fn next_order(&self) -> usize {
        self.shared
            .added
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records an image file added to the session (see [`AddedImageFile`]).
    pub(crate) fn add_image_file(&self, id: crate::image_file::BuildId, added: AddedImageFile) {
        if let Ok(mut files) = self.shared.image_files.lock() {
            files.entry(id).or_default().push(added);
        }
    }

    /// The image files added with build id `id`, oldest first.
    pub(crate) fn image_files(&self, id: &crate::image_file::BuildId) -> Vec<AddedImageFile> {
        self.shared
            .image_files
            .lock()
            .map(|f| f.get(id).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Build ids of the image files added under a name whose file name is
    /// `file`.
    pub(crate) fn image_files_named(&self, file: &str) -> Vec<crate::image_file::BuildId> {
        let Ok(files) = self.shared.image_files.lock() else {
            return Vec::new();
        };
        files
            .iter()
            .filter(|(_, v)| {
                v.iter()
                    .any(|a| crate::image_file::file_name_of(&a.name) == file)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// What saving the code this layer linked needs of each image
    /// ([`crate::image_file::combine`]): the images linked into the dylib
    /// named `dylib`, or owned by the tracker `key`, in link order; image
    /// files loaded through the layer are left out.
    pub(crate) fn pieces(
        &self,
        dylib: Option<&str>,
        key: Option<ResourceKey>,
    ) -> Vec<crate::image_file::combine::Piece> {
        let cells: Vec<ImageCell> = match self.shared.images.lock() {
            Ok(images) => match key {
                Some(key) => images.by_key.get(&key).cloned().unwrap_or_default(),
                None => images.by_key.values().flatten().cloned().collect(),
            },
            Err(_) => Vec::new(),
        };
        // One image locked at a time (teardown locks several).
        let mut pieces: Vec<(usize, crate::image_file::combine::Piece)> = cells
            .iter()
            .filter_map(|cell| {
                let i = cell.lock().ok()?;
                if i.from_file || dylib.is_some_and(|d| d != i.dylib) {
                    return None;
                }
                Some((
                    i.order,
                    crate::image_file::combine::Piece {
                        name: i.image.name().to_string(),
                        dylib: i.dylib.clone(),
                        base: i.image.memory_range().0,
                        record: i.image.imaging_record().cloned(),
                        register: {
                            let cell = cell.clone();
                            Box::new(move |r| {
                                if let Ok(i) = cell.lock() {
                                    i.image.register_piece(r);
                                }
                            })
                        },
                    },
                ))
            })
            .collect();
        pieces.sort_by_key(|(order, _)| *order);
        pieces.into_iter().map(|(_, p)| p).collect()
    }

    /// Files a loaded image under `r`'s tracker (removal runs its
    /// finalizers and unmaps it) and queues its initializers.
    /// The image files at `deps` (what it links against) stay mapped while
    /// it is — also one adopted after it: a dependency is located once its
    /// addresses are Resolved, before its own unit has finished.
    pub(crate) fn adopt(
        &self,
        r: &Responsibility,
        mut image: LinkedImage,
        order: usize,
        deps: &[u64],
    ) -> Result<(), Error> {
        image.set_executable_teardown(
            self.shared
                .executable
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let (start, bytes) = image.memory_range();
        let image = Arc::new(Mutex::new(LayerImage {
            image,
            order,
            dylib: r.dylib().name().to_string(),
            from_file: true,
            keep: Vec::new(),
        }));
        let mut keepers = Vec::new();
        r.tracker().with_resource_key(|key| {
            if let Ok(mut images) = self.shared.images.lock() {
                keepers = images.link_keep_alive(&image, start..start + bytes, deps);
                images.by_key.entry(key).or_default().push(image.clone());
                images.pending_init.push(PendingInit {
                    image: image.clone(),
                    runner: None,
                });
                images.linked += 1;
                images.stats.bytes += bytes;
            }
        })?;
        // Each image's lock is taken alone, outside the layer's.
        for (keeper, kept) in keepers {
            if let Ok(mut keeper) = keeper.lock() {
                keeper.keep.push(kept);
            }
        }
        Ok(())
    }
}

impl Images {
    /// Files `image` (at `range`, linking against the image files at
    /// `deps`) among the image files: what it links against and has been
    /// adopted, it keeps; what has not, it waits for. Returns who is to
    /// keep what: `image` each adopted dependency, and each image that was
    /// waiting for `image`, `image`.
    fn link_keep_alive(
        &mut self,
        image: &ImageCell,
        range: std::ops::Range<u64>,
        deps: &[u64],
    ) -> Vec<(ImageCell, KeepAlive)> {
        self.files.retain(|(_, _, w)| w.strong_count() > 0);
        self.awaiting_keep.retain(|(_, w)| w.strong_count() > 0);
        let mut keep = Vec::new();
        for &dep in deps {
            let adopted = self
                .files
                .iter()
                .filter(|(s, e, _)| (*s..*e).contains(&dep))
                .find_map(|(_, _, w)| w.upgrade());
            match adopted {
                Some(cell) => keep.push((image.clone(), KeepAlive(cell))),
                None => self.awaiting_keep.push((dep, Arc::downgrade(image))),
            }
        }
        self.files
            .push((range.start, range.end, Arc::downgrade(image)));
        self.awaiting_keep.retain(|(dep, w)| {
            if !range.contains(dep) {
                return true;
            }
            if let Some(keeper) = w.upgrade() {
                keep.push((keeper, KeepAlive(image.clone())));
            }
            false
        });
        keep
    }
}

/// What the layer's images provide themselves: their name, and a TLS
/// module static if kiln's static TLS area has room, dynamic otherwise.
pub(crate) fn image_env(name: &str) -> ImageEnv {
    ImageEnv {
        name: name.to_string(),
        tls_placement: Some(runtime::tls::TlsPlacement::PreferStatic),
    }
}

fn flags_of(s: &crate::graph::Symbol) -> SymbolFlags {
    let mut flags = SymbolFlags::NONE;
    if s.scope == Scope::Default {
        flags |= SymbolFlags::EXPORTED;
    }
    if s.linkage == Linkage::Weak {
        flags |= SymbolFlags::WEAK;
    }
    if s.callable {
        flags |= SymbolFlags::CALLABLE;
    }
    if s.tls {
        flags |= SymbolFlags::THREAD_LOCAL;
    }
    flags
}

/// The flags a unit offers global `id` (named `name`) of `graph` with, or
/// `None`: an external, a dead definition, one of local scope — or a
/// definition in a section not loaded, which adopting a parsed graph makes
/// a plain reference (of default scope). Clears `joins` where the symbol
/// keeps the unit out of batches ([`batch::joins_batches`]).
fn offer(graph: &LinkGraph, id: SymbolId, name: &str, joins: &mut bool) -> Option<SymbolFlags> {
    let s = &graph.symbols[id.index()];
    let live = match s.def {
        GraphDef::Defined { block, .. } => graph.blocks[block.index()].live,
        GraphDef::Discarded => {
            *joins &= !batch::delimits_a_section(name);
            return None;
        }
        GraphDef::External => {
            *joins &= !batch::delimits_a_section(name) && !s.tls;
            false
        }
        _ => true,
    };
    *joins &= s.scope != Scope::Local;
    (live && s.scope != Scope::Local).then(|| flags_of(s))
}

/// What a unit offers: its globals (name, id in its graph), their flags,
/// and whether they let it join a batch.
type OfferedGlobals = (Vec<(SymbolName, SymbolId)>, Vec<SymbolFlags>, bool);

/// What a unit links: its graph (merged, or one object's as its parse gave
/// it: adopted when linked), or the image already being prepared from it
/// ([`LinkOptions::prepare_early`]).
enum UnitInput {
    Graph(Box<LinkGraph>),
    Parsed(Box<LinkGraph>),
    Early(Arc<EarlyPrepare>),
}

/// Defines `unit` in `dylib`, owned by `tracker`; an error names the unit.
fn define_unit(
    dylib: &Dylib,
    tracker: Option<&ResourceTracker>,
    unit: ObjectUnit,
) -> Result<(), LinkError> {
    let name = unit.name.clone();
    dylib
        .define_boxed(Box::new(unit), tracker)
        .map_err(|e| LinkError::engine(&name, e))
}

/// One object's `graph` as its parse gave it, adopted by an empty graph:
/// every id stays ([`LinkGraph::adoptable`]).
fn adopted(graph: LinkGraph) -> LinkGraph {
    let mut adopted = LinkGraph::new();
    adopted.merge(graph);
    adopted
}

/// A unit's image prepared (prune, GOT/PLT, layout, allocation) on a rayon
/// thread while the engine records the unit's symbols.
struct EarlyPrepare {
    state: Mutex<EarlyState>,
    /// Placement asked for when it was started.
    below_2gib: bool,
    /// Imaging mode ([`LinkOptions::imaging`]).
    imaging: bool,
    done: std::sync::Condvar,
}

enum EarlyState {
    /// Queued on rayon, not started: whoever comes first takes the graph.
    Pending(Box<LinkGraph>),
    /// A rayon thread is preparing it.
    Running,
    /// Prepared (or failed), not yet taken.
    Done(Box<Result<Prepared, LinkError>>),
    /// Taken by the materializer.
    Taken,
}

/// The graph passes that need nothing from the engine (for a unit without
/// weak definitions: every definition is its own): the pipeline's steps 1–8.
fn prepare(graph: LinkGraph, below_2gib: bool, imaging: bool) -> Result<Prepared, LinkError> {
    passes::prepare(graph, &Roots::All, imaging, below_2gib)
}

impl EarlyPrepare {
    /// Starts preparing `graph` on rayon.
    fn start(graph: LinkGraph, below_2gib: bool, imaging: bool) -> Arc<EarlyPrepare> {
        // For the error of a panic (a bug): the objects it is about.
        let objects = graph
            .objects
            .iter()
            .map(|o| o.name.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let early = Arc::new(EarlyPrepare {
            state: Mutex::new(EarlyState::Pending(Box::new(graph))),
            below_2gib,
            imaging,
            done: std::sync::Condvar::new(),
        });
        let job = early.clone();
        rayon::spawn(move || {
            let graph = {
                let mut state = job.state.lock().unwrap_or_else(PoisonError::into_inner);
                match std::mem::replace(&mut *state, EarlyState::Running) {
                    EarlyState::Pending(graph) => *graph,
                    other => {
                        *state = other;
                        return;
                    }
                }
            };
            // A panic (a bug) fails this image's link, as it would on the
            // engine's worker, instead of aborting the process from rayon.
            let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                prepare(graph, job.below_2gib, job.imaging)
            }))
            .unwrap_or_else(|panic| {
                Err(LinkError::engine_bug(format!(
                    "{objects}: panicked while preparing the image: {}",
                    panic_message(&*panic)
                )))
            });
            *job.state.lock().unwrap_or_else(PoisonError::into_inner) =
                EarlyState::Done(Box::new(prepared));
            job.done.notify_all();
        });
        early
    }

    /// The prepared image: waits for the rayon thread if it is at work, or
    /// prepares here if it has not started (a busy pool never delays the
    /// link more than doing it here would).
    fn take(&self) -> Result<Prepared, LinkError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match std::mem::replace(&mut *state, EarlyState::Taken) {
                EarlyState::Pending(graph) => {
                    drop(state);
                    return prepare(*graph, self.below_2gib, self.imaging);
                }
                EarlyState::Running => {
                    *state = EarlyState::Running;
                    state = self
                        .done
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                EarlyState::Done(prepared) => return *prepared,
                EarlyState::Taken => {
                    return Err(LinkError::engine_bug(
                        "the image was already taken for linking",
                    ));
                }
            }
        }
    }
}

/// One object (or graph) waiting to be linked.
struct ObjectUnit {
    layer: ObjectLayer,
    name: String,
    input: Option<UnitInput>,
    /// What the unit offers: every global the graph defines, interned
    /// once, with its id.
    globals: Vec<(SymbolName, SymbolId)>,
    /// The flags of each of `globals`.
    flags: Vec<SymbolFlags>,
    /// Weak definitions of `globals` another unit won.
    discarded: Vec<SymbolName>,
    /// Links the same with others of a batch as alone
    /// ([`batch::joins_batches`]), and can be linked again alone.
    joinable: bool,
    /// The object's bytes, kept while the unit can join a batch: a batch
    /// that cannot be linked as a whole links each unit alone, from them.
    source: Option<InputBytes>,
    order: usize,
}

impl ObjectUnit {
    /// Can still join a batch: its graph not taken, no definition lost.
    fn can_join(&self) -> bool {
        self.joinable
            && self.discarded.is_empty()
            && matches!(self.input, Some(UnitInput::Graph(_) | UnitInput::Parsed(_)))
    }

    /// This unit made anew from its source, to be linked alone: its batch
    /// could not be linked as a whole. It offers what it offered (the same
    /// bytes parse the same).
    fn again_alone(&self) -> Result<Box<ObjectUnit>, LinkError> {
        let Some(file) = &self.source else {
            return Err(LinkError::engine_bug(format!(
                "{}: a unit without its object joined a batch",
                self.name
            )));
        };
        let graph = crate::elf::parse_object_shared(&self.name, file)?;
        let mut unit = self.layer.unit_parsed(&self.name, graph, file.clone())?;
        unit.order = self.order;
        Ok(Box::new(unit))
    }
}

impl MaterializationUnit for ObjectUnit {
    fn name(&self) -> &str {
        &self.name
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.globals
            .iter()
            .zip(&self.flags)
            .filter(|((n, _), _)| !self.discarded.contains(n))
            .map(|((n, _), &f)| (n.clone(), f))
            .collect()
    }

    /// Links up to the externals (steps 1–9), asks the session for them
    /// and returns: the rest runs when they are Resolved, as a task, so no
    /// thread blocks on other units — the pool's threads link the units
    /// that one lookup started side by side, and units that name each
    /// other wait on nothing but their answers.
    fn materialize(mut self: Box<Self>, r: Responsibility) {
        let Some(input) = self.input.take() else {
            return r.fail(Error::msg(format!("{}: object already linked", self.name)));
        };
        let begun = match self.begin_link(input, &r) {
            Ok(begun) => begun,
            Err(e) => return r.fail(e),
        };
        let lookup = self.layer.session.lookup_with(
            &kiln_engine::LookupRequest::new(
                begun.order.clone(),
                LookupSet::weak(begun.externals.iter().map(|(_, n)| n.clone())),
                RequiredState::Resolved,
            )
            .kind(LookupKind::Static),
        );
        // Freeing the graph's arenas takes a while for big images: only
        // after the emit, which lets waiting lookups go on. (Here, not on a
        // rayon thread: W9's builder path ran fewer instructions but no
        // faster that way — memory another thread frees is not what this
        // one allocates next.)
        lookup.on_complete(move |found| {
            finish_unit(r, |r| self.finish_link(begun, found, r));
        });
    }

    fn discard(&mut self, _dylib: &Dylib, name: &SymbolName) {
        // Another object's definition won; this one's becomes a reference.
        self.discarded.push(name.clone());
    }

    /// The layer's units that one lookup starts are linked as one image.
    fn batch_key(&self) -> Option<usize> {
        self.joinable
            .then_some(Arc::as_ptr(&self.layer.shared) as usize)
    }

    fn materialize_batch(
        self: Box<Self>,
        r: Responsibility,
        others: Vec<kiln_engine::unit::Batched>,
    ) {
        batch::materialize_together(self, r, others);
    }
}

/// A link error as the engine's error, kept typed: the lookup that fails
/// because of it can downcast its root cause to [`LinkError`].
fn link_error(e: LinkError) -> Error {
    Error::external(e)
}

/// What [`link`] leaves for after the emit: the groups to emit, the graph
/// to free.
type Linked = (Vec<DependenceGroup>, Option<LinkGraph>);

/// What this unit owes, with flags, by position in `globals` (the graph's
/// defined non-local globals, named once in `add_graph`; the graph has not
/// changed since). The engine discards only weak definitions, so a unit
/// that offers none owes exactly what it offered, without asking
/// (`Responsibility::symbols()` sorts every name: 3 ms for synth's 20,000).
/// Weak definitions another unit won become references to the winner.
fn owed_symbols(
    name: &str,
    globals: &[(SymbolName, SymbolId)],
    flags: &[SymbolFlags],
    lost_some: bool,
    r: &Responsibility,
    input: &UnitInput,
) -> Result<Vec<Option<SymbolFlags>>, Error> {
    let owed: Vec<Option<SymbolFlags>> = if lost_some || flags.iter().any(|f| f.is_weak()) {
        let owned: FxHashMap<SymbolName, SymbolFlags> = r.symbols()?.into_iter().collect();
        globals.iter().map(|(n, _)| owned.get(n).copied()).collect()
    } else {
        flags.iter().copied().map(Some).collect()
    };
    // Only units without weak definitions start early: they owe all.
    if matches!(input, UnitInput::Early(_)) && owed.iter().any(Option::is_none) {
        return Err(Error::msg(format!(
            "{name}: an image prepared early lost a definition it was prepared with (linker bug)"
        )));
    }
    Ok(owed)
}

/// The engine's side of steps 1–9 of one unit's link
/// ([`passes::LinkHost`]): the image's own addresses go to the engine.
struct EngineHost<'a> {
    r: &'a Responsibility,
    /// The unit's globals, their names moved into `defs` at step 9.
    globals: Vec<(SymbolName, SymbolId)>,
    owed: &'a [Option<SymbolFlags>],
    /// The definitions reported at step 9, emitted at the end.
    defs: Vec<(SymbolName, SymbolDef)>,
}

impl passes::LinkHost for EngineHost<'_> {
    type Error = Error;

    fn link_error(&self, e: LinkError) -> Error {
        link_error(e)
    }

    /// Our own addresses: other units waiting on them at Resolved go on.
    fn own_symbols_resolved(&mut self, prepared: &Prepared) -> Result<(), Error> {
        let mut defs = Vec::with_capacity(self.globals.len());
        // Moved, not cloned: a clone writes each name's count, one cache
        // miss each, before any other unit may go on.
        for ((n, id), flags) in std::mem::take(&mut self.globals).into_iter().zip(self.owed) {
            if let Some(flags) = *flags
                && let Some(address) = prepared.exported_value(id).map_err(link_error)?
            {
                defs.push((n, SymbolDef::new(address, flags)));
            }
        }
        self.r.resolve(&defs)?;
        self.defs = defs;
        Ok(())
    }
}

/// A unit's link up to its externals: what [`ObjectUnit::finish_link`]
/// goes on with once the session has them.
struct Begun {
    prepared: Prepared,
    /// The image's own definitions, reported at step 9, emitted at the end.
    defs: Vec<(SymbolName, SymbolDef)>,
    /// The externals, as asked: all weakly, so the linker can name every
    /// missing one with the objects that reference it.
    externals: Vec<(SymbolId, SymbolName)>,
    /// The dylib's link order, which they are looked up through.
    order: kiln_engine::SearchOrder,
    started: Instant,
    prepared_at: Instant,
}

impl ObjectUnit {
    /// Steps 1–9 ([`passes::before_externals`]) and the externals to ask.
    fn begin_link(&mut self, input: UnitInput, r: &Responsibility) -> Result<Begun, Error> {
        let started = Instant::now();
        let globals = std::mem::take(&mut self.globals);
        let lost_some = !self.discarded.is_empty();
        let owed = owed_symbols(&self.name, &globals, &self.flags, lost_some, r, &input)?;
        let graph = match input {
            UnitInput::Graph(graph) => Ok(graph),
            UnitInput::Parsed(graph) => Ok(Box::new(adopted(*graph))),
            UnitInput::Early(early) => Err(early),
        };
        let start = match graph {
            Ok(mut graph) => {
                for ((_, id), flags) in globals.iter().zip(&owed) {
                    if flags.is_none() {
                        graph.symbols[id.index()].def = GraphDef::External;
                    }
                }
                passes::Start::Graph {
                    graph,
                    roots: &Roots::All,
                    below_2gib: self.layer.below_2gib(),
                }
            }
            Err(early) => passes::Start::Prepared(Box::new(early.take().map_err(link_error)?)),
        };
        let mut host = EngineHost {
            r,
            globals,
            owed: &owed,
            defs: Vec::new(),
        };
        let env = image_env(&self.name);
        let options = &self.layer.shared.options;
        let prepared = passes::before_externals(start, &mut host, &env, options)?;
        let session = &self.layer.session;
        let externals = interned_externals(&prepared, session);
        Ok(Begun {
            prepared,
            defs: host.defs,
            externals,
            order: r.dylib().link_order(),
            started,
            prepared_at: Instant::now(),
        })
    }

    /// Steps 10–12 with the externals `found`: the image, tracked, and
    /// what to emit; the graph comes back to be freed after the emit.
    fn finish_link(
        &self,
        begun: Begun,
        found: kiln_engine::Result<kiln_engine::SymbolMap>,
        r: &Responsibility,
    ) -> Result<Linked, Error> {
        let Begun {
            mut prepared,
            defs,
            externals,
            order,
            started,
            prepared_at,
        } = begun;
        let found = found?;
        let resolved_at = Instant::now();
        prepared.set_lookup_time(resolved_at - prepared_at);
        let mut data = Vec::new();
        let answers: Vec<(SymbolId, Option<u64>)> = externals
            .iter()
            .zip(found.by_request())
            .map(|((id, _), (_, def))| {
                if def.is_some_and(|d| !d.flags.is_callable()) {
                    data.push(*id);
                }
                (*id, def.map(|d| d.address))
            })
            .collect();
        let found_tls = externals.iter().zip(found.by_request());
        let found_tls =
            found_tls.filter_map(|((id, _), (_, d))| Some((*id, d?.flags.is_thread_local())));
        if let Some((_, e)) = prepared
            .thread_local_mismatches(found_tls)
            .into_iter()
            .next()
        {
            return Err(link_error(e));
        }
        prepared
            .resolve_external_ids(&answers)
            .map_err(link_error)?;
        prepared.mark_data_externals(data);
        // The image belongs to the tracker. Its identity is its own
        // `__dso_handle` slot, which code names PC-relatively.
        let name = &self.name;
        let dso = runtime::DsoHandle::new_at(name.to_string(), prepared.dso_handle() as usize)
            .map_err(|e| link_error(LinkError::runtime(name, e)))?;
        let env = image_env(name);
        // The engine holds the addresses: no name → address table for the
        // image.
        let mut options = self.layer.shared.options.clone();
        options.symbol_table = false;
        let (finalized, graph) =
            passes::fix_up_and_finalize(prepared, &env, &options).map_err(link_error)?;
        let stats = finalized.stats;
        let finalized_at = Instant::now();
        let image = self.layer_image(name, finalized, dso, r)?;
        let times = (
            prepared_at - started,
            resolved_at - prepared_at,
            finalized_at - resolved_at,
        );
        track_image(&self.layer, r, image, times, &stats)?;
        // Emit (by the caller, after this returns).
        let groups = dependence_groups(&order, &found, defs);
        Ok((groups, graph))
    }

    /// The finalized image as the layer keeps it.
    fn layer_image(
        &self,
        name: &str,
        finalized: passes::Finalized,
        dso: runtime::DsoHandle,
        r: &Responsibility,
    ) -> Result<ImageCell, Error> {
        let mut linked =
            LinkedImage::start(name.to_string(), finalized, dso, false).map_err(link_error)?;
        linked.set_executable_teardown(
            self.layer
                .shared
                .executable
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        Ok(Arc::new(Mutex::new(LayerImage {
            image: linked,
            order: self.order,
            dylib: r.dylib().name().to_string(),
            from_file: false,
            keep: Vec::new(),
        })))
    }
}

/// Runs `finish`, the rest of a unit's link (in the task its lookup
/// completed), emits the groups it returns and only then drops what else it
/// returns; or fails `r` with its error, or with its panic.
pub(crate) fn finish_unit<T>(
    r: Responsibility,
    finish: impl FnOnce(&Responsibility) -> Result<(Vec<DependenceGroup>, T), Error>,
) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(&r))) {
        Ok(Ok((groups, after_emit))) => {
            let _ = r.emit(groups);
            drop(after_emit);
        }
        Ok(Err(e)) => r.fail(e),
        Err(panic) => {
            let unit = Arc::from(r.unit_name());
            r.fail(Error::Panicked {
                unit,
                message: panic_message(&*panic),
            })
        }
    }
}

/// Calls `then` with the results of `lookups`, in their order, once every
/// one has completed: in the task of the last one to complete, or here if
/// all have.
pub(crate) fn when_all_complete(
    lookups: Vec<kiln_engine::Lookup>,
    then: impl FnOnce(Vec<kiln_engine::Result<kiln_engine::SymbolMap>>) + Send + 'static,
) {
    type Then = Box<dyn FnOnce(Vec<kiln_engine::Result<kiln_engine::SymbolMap>>) + Send>;
    /// The results so far, how many are still to come, and what runs
    /// after the last.
    struct Join {
        results: Vec<Option<kiln_engine::Result<kiln_engine::SymbolMap>>>,
        left: usize,
        then: Option<Then>,
    }
    if lookups.is_empty() {
        return then(Vec::new());
    }
    let join = Arc::new(Mutex::new(Join {
        results: (0..lookups.len()).map(|_| None).collect(),
        left: lookups.len(),
        then: Some(Box::new(then)),
    }));
    for (i, lookup) in lookups.into_iter().enumerate() {
        let join = join.clone();
        lookup.on_complete(move |found| {
            let done = {
                let mut join = join.lock().unwrap_or_else(PoisonError::into_inner);
                join.results[i] = Some(found);
                join.left -= 1;
                if join.left == 0 {
                    join.then
                        .take()
                        .map(|then| (then, std::mem::take(&mut join.results)))
                } else {
                    None
                }
            };
            if let Some((then, results)) = done {
                // Every slot was filled before `left` reached zero.
                then(results.into_iter().flatten().collect());
            }
        });
    }
}

/// The graph's external references, each with its name interned in
/// `session` (all at once).
fn interned_externals(
    prepared: &passes::Prepared,
    session: &Session,
) -> Vec<(SymbolId, SymbolName)> {
    let (ids, texts): (Vec<SymbolId>, Vec<&str>) =
        prepared.external_symbols_unordered().into_iter().unzip();
    ids.into_iter().zip(session.intern_all(texts)).collect()
}

/// A panic's message, when its payload is a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_string())
}

/// Hands `image` to the unit's tracker and queues its initializers;
/// counts its `times` (prepare, externals, fixup + finalize) and `stats`.
fn track_image(
    layer: &ObjectLayer,
    r: &Responsibility,
    image: ImageCell,
    times: (Duration, Duration, Duration),
    stats: &LinkStats,
) -> Result<(), Error> {
    r.tracker().with_resource_key(|key| {
        if let Ok(mut images) = layer.shared.images.lock() {
            images.by_key.entry(key).or_default().push(image.clone());
            images.pending_init.push(PendingInit {
                image: image.clone(),
                runner: None,
            });
            images.linked += 1;
            images.times.prepare += times.0;
            images.times.externals += times.1;
            images.times.fixup_finalize += times.2;
            let total = &mut images.stats;
            total.objects += stats.objects;
            total.blocks += stats.blocks;
            total.symbols += stats.symbols;
            total.relocations += stats.relocations;
            total.got_entries += stats.got_entries;
            total.plt_stubs += stats.plt_stubs;
            total.bytes += stats.bytes;
        }
    })?;
    Ok(())
}

/// The image's symbols (`defs`) as one group, depending on the external
/// symbols it references (`found` in `order`), each in the dylib it was
/// found in. References inside the image need no edges — it is emitted in
/// one call, so its symbols (cycles included) become Ready together — which
/// keeps the graph to `symbols + externals` edges however the code is
/// sectioned. (Coarser than per block: a symbol may wait for an external
/// that only another part of its image uses. It is never Ready early.)
fn dependence_groups(
    order: &kiln_engine::SearchOrder,
    found: &kiln_engine::SymbolMap,
    defs: Vec<(SymbolName, SymbolDef)>,
) -> Vec<DependenceGroup> {
    let entries = order.entries();
    let found = found
        .iter_with_source()
        .map(|(name, _, source)| (name.clone(), &entries[source].0));
    vec![DependenceGroup::new(
        defs.into_iter().map(|(name, _)| name),
        by_dylib(found),
    )]
}

/// Names with the dylib each was found in, grouped by dylib (as a
/// [`DependenceGroup`]'s dependencies).
fn by_dylib<'a>(
    found: impl IntoIterator<Item = (SymbolName, &'a Dylib)>,
) -> Vec<(Dylib, Vec<SymbolName>)> {
    let mut per_dylib: Vec<(Dylib, Vec<SymbolName>)> = Vec::new();
    for (name, dylib) in found {
        match per_dylib.iter_mut().find(|(d, _)| d == dylib) {
            Some((_, names)) => names.push(name),
            None => per_dylib.push((dylib.clone(), vec![name])),
        }
    }
    per_dylib
}

/// Defines host symbols on demand: kiln's runtime overrides first, then the
/// process and the libraries loaded with [`HostSymbols::load_library`].
pub struct HostGenerator {
    host: HostSymbols,
}

impl fmt::Debug for HostGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostGenerator").finish_non_exhaustive()
    }
}

impl HostGenerator {
    /// A generator over `host`.
    pub fn new(host: HostSymbols) -> Self {
        HostGenerator { host }
    }
}

impl Generator for HostGenerator {
    fn generate(&self, req: GenerateRequest) {
        let defs: Vec<(SymbolName, SymbolDef)> = req
            .names()
            .iter()
            .filter_map(|n| {
                // `lookup` consults kiln's runtime overrides first.
                let address = self.host.lookup(n.as_str())?;
                Some((n.clone(), SymbolDef::new(address, SymbolFlags::EXPORTED)))
            })
            .collect();
        let result = req.dylib().define_absolute(defs);
        req.complete(result);
    }

    fn is_concurrent(&self) -> bool {
        true
    }
}

/// Adds archive members to a dylib when a lookup needs one of their
/// symbols: as objects linked when first looked up
/// ([`ArchiveGenerator::new`]), or each linked on its first call, like
/// [`ObjectLayer::add_objects_lazily`] ([`ArchiveGenerator::lazy`]).
///
/// A member is pulled at most once, by the first static lookup (a link
/// resolving its externals) that needs one of its symbols, as `ld` does;
/// other lookups never pull members.
pub struct ArchiveGenerator {
    layer: ObjectLayer,
    /// Searched in order for each name (a group: each pull searches all).
    archives: Mutex<Vec<Archive>>,
    /// Where members' bodies go, and the manager of their lazy entries.
    lazy: Option<(Dylib, kiln_engine::LazyReexports)>,
}

impl fmt::Debug for ArchiveGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveGenerator")
            .field("lazy", &self.lazy.is_some())
            .finish_non_exhaustive()
    }
}

impl ArchiveGenerator {
    /// A generator serving members of `archive` through `layer`: each
    /// member pulled is added to the generator's dylib as an object.
    pub fn new(layer: &ObjectLayer, archive: Archive) -> Self {
        ArchiveGenerator {
            layer: layer.clone(),
            archives: Mutex::new(vec![archive]),
            lazy: None,
        }
    }

    /// A generator serving members of `archive` lazily: the members a pull
    /// takes (those defining the names asked for, the names the lazily
    /// added objects leave undefined, and, transitively, what those members
    /// need — `ld`'s archive search) are read into one graph, pruned to
    /// what those names reach (as `ld --gc-sections` prunes library code:
    /// references only from unreached code are no error), and go into
    /// `bodies` as one image; the generator's dylib gets a lazy entry (from
    /// `manager`) for each function that stays and an alias for each data
    /// symbol, as [`ObjectLayer::add_objects_lazily`] does for objects.
    /// Add the objects before any lookup: a later pull cannot reach the
    /// part of a member an earlier pull pruned.
    pub fn lazy(
        layer: &ObjectLayer,
        archive: Archive,
        bodies: &Dylib,
        manager: &kiln_engine::LazyReexports,
    ) -> Self {
        Self::lazy_group(layer, vec![archive], bodies, manager)
    }

    /// [`ArchiveGenerator::lazy`] over several archives searched as one
    /// group (as the eager link searches every archive until nothing more
    /// is pulled, like `ld --start-group`): a pull's closure takes members
    /// of any of them — the first archive defining a name wins — so
    /// archives that refer to each other are pruned as one library.
    pub fn lazy_group(
        layer: &ObjectLayer,
        archives: Vec<Archive>,
        bodies: &Dylib,
        manager: &kiln_engine::LazyReexports,
    ) -> Self {
        ArchiveGenerator {
            layer: layer.clone(),
            archives: Mutex::new(archives),
            lazy: Some((bodies.clone(), manager.clone())),
        }
    }

    /// The members a lazy pull of `names` takes, read into one graph (a
    /// link image): `ld`'s archive semantics and `--gc-sections` pruning.
    ///
    /// The members defining `names` and, as `ld` does, every member that
    /// defines a symbol the members taken so far refer to (strongly) and
    /// none defines, until none is left — the closure is one image, so the
    /// thread-locals and COMDAT groups of its members meet in one link.
    /// It is then pruned to what `names` and the lazily added objects'
    /// references reach (plus initializers and finalizers): a reference
    /// only from code nothing reaches is no error, and the unit offers only
    /// the definitions that stay. The objects' references are roots as
    /// well, so that one pull takes all that the program's objects need of
    /// the archive; a later pull (for a name only code pulled later needs)
    /// cannot reach into the part of a member an earlier pull pruned.
    fn pull_closure(&self, names: &[SymbolName]) -> Result<Option<(String, LinkGraph)>, Error> {
        let (from_objects, object_defined) = self
            .layer
            .shared
            .lazy_objects
            .lock()
            .map(|o| (o.wanted(), o.defined.clone()))
            .unwrap_or_default();
        let mut archives = self
            .archives
            .lock()
            .map_err(|_| Error::msg("archive lock poisoned"))?;
        let mut graph = self.layer.new_graph();
        let mut members: Vec<String> = Vec::new();
        let mut wanted: Vec<Box<str>> = names.iter().map(|n| n.as_str().into()).collect();
        wanted.extend(from_objects.iter().cloned());
        let mut roots: Vec<String> = wanted.iter().map(|n| n.to_string()).collect();
        while !wanted.is_empty() {
            for name in std::mem::take(&mut wanted) {
                for archive in archives.iter_mut() {
                    if let Some((member, bytes)) =
                        archive.take_member_for(&name).map_err(link_error)?
                    {
                        let id = crate::elf::read_object(&mut graph, &member, bytes)
                            .map_err(link_error)?;
                        graph.objects[id.index()].library = true;
                        members.push(member);
                        break;
                    }
                }
            }
            wanted = graph
                .global_names()
                .filter(|(_, id)| {
                    let s = &graph.symbols[id.index()];
                    s.def == GraphDef::External && !s.weak_ref
                })
                .map(|(n, _)| n.into())
                .collect();
            wanted.sort_unstable();
            // Only names no object defines and some member not yet taken
            // does pull again.
            wanted.retain(|n| {
                !object_defined.contains(n) && archives.iter().any(|a| a.defines_untaken(n))
            });
        }
        drop(archives);
        if members.is_empty() {
            return Ok(None);
        }
        roots.sort_unstable();
        roots.dedup();
        passes::allocate_commons(&mut graph);
        passes::prune(&mut graph, &Roots::Symbols(roots)).map_err(link_error)?;
        // What stays is the image's own code from now on: later prunes
        // (`Roots::All`) keep it, and keep what they dropped dropped.
        for o in &mut graph.objects {
            o.library = false;
        }
        let name = match &members[..] {
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} and {} more members", rest.len()),
            [] => unreachable!("checked above"),
        };
        Ok(Some((name, graph)))
    }

    /// Takes the members that define any of `names` (each at most once).
    fn take_members(&self, names: &[SymbolName]) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut archives = self
            .archives
            .lock()
            .map_err(|_| Error::msg("archive lock poisoned"))?;
        let mut members = Vec::new();
        for n in names {
            for archive in archives.iter_mut() {
                if let Some((member, bytes)) =
                    archive.take_member_for(n.as_str()).map_err(link_error)?
                {
                    members.push((member, bytes.to_vec()));
                    break;
                }
            }
        }
        Ok(members)
    }
}

impl Generator for ArchiveGenerator {
    fn generate(&self, req: GenerateRequest) {
        if req.kind() != LookupKind::Static {
            return req.complete(Ok(()));
        }
        let added = match &self.lazy {
            None => match self.take_members(req.names()) {
                Ok(members) => members.iter().try_for_each(|(member, bytes)| {
                    self.layer.add_object(req.dylib(), None, member, bytes)
                }),
                Err(e) => return req.complete(Err(e)),
            },
            Some((bodies, manager)) => match self.pull_closure(req.names()) {
                Ok(Some((name, graph))) => {
                    self.layer.note_non_pie(&graph);
                    self.layer
                        .add_graph_lazily(req.dylib(), bodies, manager, &name, graph)
                }
                Ok(None) => Ok(()),
                Err(e) => return req.complete(Err(e)),
            },
        };
        req.complete(added.map_err(link_error));
    }
}

#[cfg(test)]
mod tests {
    use object::write::{Symbol, SymbolSection};
    use object::{SymbolFlags as ObjFlags, SymbolKind, SymbolScope};

    use super::*;
    use crate::graph::tests::{object_with_text, rich_object};

    /// An x86-64 object defining or referencing each `(name, defined,
    /// weak)`.
    fn object_with(symbols: &[(&str, bool, bool)]) -> Vec<u8> {
        let (mut o, text) = object_with_text();
        for (i, &(name, defined, weak)) in symbols.iter().enumerate() {
            o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: if defined { 8 * i as u64 % 64 } else { 0 },
                size: if defined { 8 } else { 0 },
                kind: SymbolKind::Text,
                scope: SymbolScope::Dynamic,
                weak,
                section: if defined {
                    SymbolSection::Section(text)
                } else {
                    SymbolSection::Undefined
                },
                flags: ObjFlags::None,
            });
        }
        o.write().expect("the object is written")
    }

    /// A unit of one object offers the same read from the object's parse
    /// as from the graph adopted (what it links): every global, its id, its
    /// flags, and whether it may join a batch — on objects with a piece of
    /// everything the adoption decides (weak, hidden, COMMON, thread-local,
    /// COMDAT, a definition in a section not loaded, strong and weak
    /// references) and a `__start_` reference. Objects the adoption could
    /// change are not read before it: a COMDAT group or a name twice.
    #[test]
    fn a_parsed_object_offers_what_its_adopted_graph_offers() {
        let session = Session::builder()
            .dispatcher(kiln_engine::InPlaceDispatcher)
            .build();
        let layer = ObjectLayer::new(&session);
        let readable = |(globals, flags, joins): OfferedGlobals| {
            let globals: Vec<(String, SymbolId)> = globals
                .into_iter()
                .map(|(n, id)| (n.to_string(), id))
                .collect();
            (globals, flags, joins)
        };
        let parse = |bytes: &[u8]| crate::elf::parse_object("t.o", bytes).expect("it parses");
        let objects = [
            rich_object(1),
            object_with(&[("f", true, false), ("g", true, false), ("h", false, false)]),
            object_with(&[("f", true, false), ("__start_tags", false, false)]),
            object_with(&[("w", true, true), ("u", false, true)]),
        ];
        for (k, bytes) in objects.iter().enumerate() {
            let parsed = parse(bytes);
            assert!(parsed.adoptable(), "object {k}");
            let from_parse = readable(layer.offered_parsed(&parsed));
            let from_adopted = readable(layer.offered_globals(&adopted(parsed), Vec::new()));
            assert!(!from_adopted.0.is_empty(), "object {k} offers something");
            assert_eq!(from_parse, from_adopted, "object {k}");
        }
        assert!(
            !readable(layer.offered_parsed(&parse(&objects[2]))).2,
            "__start_ stays alone"
        );
        assert!(!parse(&rich_object(2)).adoptable(), "a COMDAT group twice");
        let twice = object_with(&[("dup", true, false), ("dup", false, false)]);
        assert!(!parse(&twice).adoptable(), "a name twice");
    }
}
