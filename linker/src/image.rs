//! The convenient API: [`Linker`] collects objects and archives, links them
//! into one [`LinkedImage`], and the image runs its initializers and, when
//! dropped, its finalizers before releasing its memory.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use std::path::Path;

use crate::archive::Archive;
use crate::error::LinkError;
use crate::graph::{InputBytes, LinkGraph, SymbolDef, SymbolId};
use crate::host::SymbolResolver;
use crate::memory::MemState;
use crate::passes::{self, Finalized, ImageEnv, LinkOptions, LinkStats};
use crate::runtime;

/// Below this many bytes of objects they are read on the calling thread:
/// starting threads costs more than it saves. `read inputs` (min of 9, one
/// thread vs two): Lua's 33 objects (0.56 MB) 0.75 vs 1.02 ms; 21 objects of
/// 1.9 MB 2.25 vs 2.26 ms; 51 objects of 4.6 MB 4.9 vs 4.8 ms; synth's 201
/// objects (19 MB) 24.8 vs 18.6 ms (2-core machine).
const PARALLEL_READ_BYTES: usize = 2 << 20;

/// Collects inputs and links them.
#[derive(Debug)]
pub struct Linker {
    options: LinkOptions,
    /// Objects, shared with the graph's blocks (nothing is copied).
    objects: Vec<(String, InputBytes)>,
    archives: Vec<Archive>,
    run_initializers: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, LinkError> {
    std::fs::read(path).map_err(|source| LinkError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// As [`Linker::new`] with default options.
impl Default for Linker {
    fn default() -> Self {
        Linker::new(LinkOptions::default())
    }
}

impl Linker {
    /// A linker with `options`. Nothing of the linked image runs unless the
    /// caller runs it ([`LinkedImage::run_initializers`], or
    /// [`Linker::run_initializers_at_link`]).
    pub fn new(options: LinkOptions) -> Self {
        crate::debug::prepare(&options.debug);
        Linker {
            options,
            objects: Vec::new(),
            archives: Vec::new(),
            run_initializers: false,
        }
    }

    /// [`Linker::link`] also runs the image's initializers (static
    /// constructors, `.init_array`), as a program's start would; dropping
    /// the image then runs its finalizers. By default it runs nothing.
    ///
    /// # Safety
    ///
    /// As for [`LinkedImage::run_initializers`]: the objects' code runs.
    pub unsafe fn run_initializers_at_link(&mut self) -> &mut Self {
        self.run_initializers = true;
        self
    }

    /// Add an object (`.o`) from a file.
    pub fn add_object_file(&mut self, path: impl AsRef<Path>) -> Result<&mut Self, LinkError> {
        let path = path.as_ref();
        let data = read(path)?;
        Ok(self.add_object_bytes(path.display().to_string(), data))
    }

    /// Add an object from memory (a `Vec<u8>`, or a file mapped with
    /// [`FileBytes::map`](crate::memory::FileBytes::map)), called `name` in
    /// errors.
    pub fn add_object_bytes(
        &mut self,
        name: impl Into<String>,
        data: impl Into<crate::memory::FileBytes>,
    ) -> &mut Self {
        self.objects
            .push((name.into(), InputBytes::new(data.into())));
        self
    }

    /// Add an object whose bytes the caller shares (an `Arc` it may keep:
    /// `kiln image save` hashes the inputs on another thread while the link
    /// runs).
    pub fn add_object_shared(&mut self, name: impl Into<String>, data: InputBytes) -> &mut Self {
        self.objects.push((name.into(), data));
        self
    }

    /// Add a static archive (`.a`) from a file; its members are linked when
    /// one of their symbols is needed.
    pub fn add_archive_file(&mut self, path: impl AsRef<Path>) -> Result<&mut Self, LinkError> {
        let path = path.as_ref();
        let data = read(path)?;
        self.add_archive_bytes(path.display().to_string(), data)
    }

    /// Add a static archive from memory.
    pub fn add_archive_bytes(
        &mut self,
        name: impl Into<String>,
        data: Vec<u8>,
    ) -> Result<&mut Self, LinkError> {
        self.archives.push(Archive::parse(&name.into(), data)?);
        Ok(self)
    }

    /// Add an input by file name: `.a` files are archives, anything else an object.
    pub fn add_file(&mut self, path: impl AsRef<Path>) -> Result<&mut Self, LinkError> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "a") {
            self.add_archive_file(path)
        } else {
            self.add_object_file(path)
        }
    }

    /// Read every object into one graph and pull archive members until no
    /// undefined symbol can be satisfied by an archive.
    pub fn build_graph(&mut self) -> Result<LinkGraph, LinkError> {
        Ok(self.build_graph_naming(&|names| vec![(); names.len()])?.0)
    }

    /// [`Linker::build_graph`], also naming the globals the objects define
    /// with `name_all` (for example an engine's interner: it is given an
    /// object's names at once and returns one name for each, in order)
    /// while the objects are read in parallel. Returns, by symbol id, the
    /// name given to each symbol (`None` for locals, externals and archive
    /// members' symbols).
    pub fn build_graph_naming<N: Send>(
        &mut self,
        name_all: &NameAll<'_, N>,
    ) -> Result<(LinkGraph, Vec<Option<N>>), LinkError> {
        let read = self.read_graph_naming(name_all)?;
        Ok((read.graph, read.names))
    }

    /// [`Linker::build_graph_naming`], keeping what reading learned of the
    /// graph's relocations with it, for
    /// [`crate::layer::ObjectLayer::add_read_graph`].
    pub fn read_graph_naming<N: Send>(
        &mut self,
        name_all: &NameAll<'_, N>,
    ) -> Result<ReadGraph<N>, LinkError> {
        let parse = |name: &str, data: &InputBytes| crate::elf::parse_object_shared(name, data);
        let parallel = self.options.parallel;
        let mut read =
            read_objects_naming(&self.objects, &|data| &data[..], &parse, name_all, parallel)?;
        read.graph.serial = !parallel;
        let first = read.graph.blocks.len();
        self.pull_archive_members(&mut read.graph)?;
        read.facts.add_blocks(&read.graph, first);
        #[cfg(fuzzing)]
        assert_eq!(
            read.facts,
            EdgeFacts::of(&read.graph),
            "facts after archives"
        );
        read.names.resize_with(read.graph.symbols.len(), || None);
        Ok(read)
    }

    /// Pulls archive members that define an undefined (non-weak) global of
    /// `graph` into it, until no archive satisfies one more.
    fn pull_archive_members(&mut self, graph: &mut LinkGraph) -> Result<(), LinkError> {
        while !self.archives.is_empty() {
            let wanted: Vec<Box<str>> = graph
                .global_names()
                .filter(|(_, id)| {
                    let s = &graph.symbols[id.index()];
                    s.def == SymbolDef::External && !s.weak_ref
                })
                .map(|(n, _)| n.into())
                .collect();
            let mut pulled = false;
            for name in wanted {
                for ar in &mut self.archives {
                    if let Some((member, bytes)) = ar.take_member_for(&name)? {
                        let debug = &self.options.debug;
                        let id = crate::debug::read_object(graph, &member, bytes, debug)?;
                        graph.objects[id.index()].library = true;
                        pulled = true;
                        break;
                    }
                }
            }
            if !pulled {
                break;
            }
        }
        Ok(())
    }

    /// Link everything into memory, resolving externals through `resolver`
    /// (usually [`crate::HostSymbols`]).
    pub fn link(&mut self, resolver: &dyn SymbolResolver) -> Result<LinkedImage, LinkError> {
        let name = self
            .objects
            .first()
            .map(|(n, _)| n.clone())
            .or_else(|| self.archives.first().map(|a| a.name().to_string()))
            .unwrap_or_else(|| "<empty>".into());
        let parse_start = std::time::Instant::now();
        let graph = self.build_graph()?;
        let parse = parse_start.elapsed();
        let env = ImageEnv {
            name: name.clone(),
            tls_placement: Some(runtime::tls::TlsPlacement::PreferStatic),
        };
        let mut finalized = passes::link_graph(graph, resolver, &env, &self.options)?;
        finalized.stats.timings.parse = parse;
        // The image's identity is its own `__dso_handle` slot.
        let dso = runtime::DsoHandle::new_at(name.clone(), finalized.dso_handle as usize)
            .map_err(|e| LinkError::runtime(name.as_str(), e))?;
        LinkedImage::start(name, finalized, dso, self.run_initializers)
    }
}

/// A linked image in memory. Dropping it runs its finalizers (and the
/// `atexit` handlers its code registered), deregisters its unwind info and
/// releases its memory.
#[derive(Debug)]
pub struct LinkedImage {
    name: String,
    symbols: Symbols,
    stats: LinkStats,
    memory: (u64, u64),
    platform: Option<Platform>,
    /// Unregistered from debuggers before `alloc` is released.
    debug: Option<crate::debug::DebugRegistration>,
    alloc: Option<crate::memory::Allocation>,
    /// What saving it as an image file needs (imaging mode only).
    imaging: Option<Box<crate::image_file::ImagingRecord>>,
    /// Its entry in the image registry (build id by address range), once
    /// it was loaded from or saved as an image file.
    registration: std::sync::OnceLock<crate::image_file::registry::Registration>,
    /// Its entries as a piece of images saved from many links (one a save).
    piece_of: std::sync::Mutex<Vec<crate::image_file::registry::Registration>>,
    /// Whose threads its memory waits for once it is torn down.
    release_after: ReleaseAfter,
}

/// Whose threads a torn-down image's memory waits for: threads an image
/// started may still run its code.
#[derive(Debug)]
pub(crate) enum ReleaseAfter {
    /// Those its own image, and these images removed with it, started.
    ThreadsOf(Vec<Arc<runtime::life::Life>>),
    /// Every image thread of the process (a JIT's end: code linked while
    /// it ends joins no group).
    EveryImageThread,
}

/// A linked image's global symbols: a hash map for a link; for an image
/// file's load, its export table as saved (sorted by name), with the names
/// in one string — two allocations instead of one per name and a hash map
/// built per load (Lua's 342 exports: ~13% of a `load_file`).
#[derive(Debug)]
enum Symbols {
    Map(HashMap<Box<str>, u64>),
    Sorted(SortedSymbols),
}

/// Names and addresses sorted by name (see [`Symbols`]): each address is
/// `base` plus the entry's value. The names and entries may be shared by
/// every load of one image file (`image_file/checked.rs` keeps them with
/// the file's parsed form): a load then only sets its base.
#[derive(Debug, Default, Clone)]
pub(crate) struct SortedSymbols {
    names: Arc<str>,
    /// (start of the name in `names`, its length, address less `base`),
    /// sorted by name.
    entries: Arc<[(usize, usize, u64)]>,
    base: u64,
}

impl SortedSymbols {
    /// From `(name, address)` pairs in strictly ascending name order (as
    /// the parser checks an image file's export table to be; out of order,
    /// lookups would miss names, nothing worse).
    pub(crate) fn from_sorted<'a>(
        items: impl ExactSizeIterator<Item = (&'a str, u64)> + Clone,
    ) -> SortedSymbols {
        let len = items.clone().map(|(n, _)| n.len()).sum();
        let mut names = String::with_capacity(len);
        let mut entries = Vec::with_capacity(items.len());
        for (name, addr) in items {
            entries.push((names.len(), name.len(), addr));
            names.push_str(name);
        }
        let out = SortedSymbols {
            names: Arc::from(names),
            entries: Arc::from(entries),
            base: 0,
        };
        debug_assert!(out.entries.is_sorted_by(|a, b| out.name(a) < out.name(b)));
        out
    }

    /// From `table` (a strings table) and `(name, address)` pairs whose
    /// names are slices of it, in strictly ascending name order (as
    /// [`SortedSymbols::from_sorted`]): the table is copied whole (one
    /// copy instead of one per name). Falls back to `from_sorted` if a name
    /// is not inside `table`.
    pub(crate) fn from_table<'a>(
        table: &'a str,
        items: impl ExactSizeIterator<Item = (&'a str, u64)> + Clone,
    ) -> SortedSymbols {
        let start = table.as_ptr() as usize;
        let mut entries = Vec::with_capacity(items.len());
        for (name, addr) in items.clone() {
            let at = (name.as_ptr() as usize).wrapping_sub(start);
            if at
                .checked_add(name.len())
                .is_none_or(|end| end > table.len())
            {
                return Self::from_sorted(items);
            }
            entries.push((at, name.len(), addr));
        }
        let out = SortedSymbols {
            names: Arc::from(table),
            entries: Arc::from(entries),
            base: 0,
        };
        debug_assert!(out.entries.is_sorted_by(|a, b| out.name(a) < out.name(b)));
        out
    }

    /// The same names, every address moved by `base` (sharing the names
    /// and entries).
    pub(crate) fn at(&self, base: u64) -> SortedSymbols {
        SortedSymbols {
            names: Arc::clone(&self.names),
            entries: Arc::clone(&self.entries),
            base: self.base.wrapping_add(base),
        }
    }

    fn name(&self, &(at, len, _): &(usize, usize, u64)) -> &str {
        self.names.get(at..at + len).unwrap_or("")
    }

    fn get(&self, name: &str) -> Option<u64> {
        let i = self
            .entries
            .binary_search_by(|e| self.name(e).cmp(name))
            .ok()?;
        Some(self.entries[i].2.wrapping_add(self.base))
    }
}

impl Symbols {
    fn get(&self, name: &str) -> Option<u64> {
        match self {
            Symbols::Map(m) => m.get(name).copied(),
            Symbols::Sorted(s) => s.get(name),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&str, u64)> + '_> {
        match self {
            Symbols::Map(m) => Box::new(m.iter().map(|(n, a)| (&**n, *a))),
            Symbols::Sorted(s) => Box::new(
                s.entries
                    .iter()
                    .map(|e| (s.name(e), e.2.wrapping_add(s.base))),
            ),
        }
    }
}

/// The image's registrations with the runtime, torn down in order: the
/// finalizers run, then unwind info, TLS and the DSO handle go.
#[derive(Debug)]
struct Platform {
    init_fini: runtime::InitFini,
    initialized: bool,
    eh_frame: Option<runtime::eh_frame::EhFrameRegistration>,
    tls: Option<runtime::tls::TlsModule>,
}

impl LinkedImage {
    pub(crate) fn start(
        name: String,
        f: Finalized,
        dso: runtime::DsoHandle,
        run_init: bool,
    ) -> Result<LinkedImage, LinkError> {
        Self::start_with(name, f, dso, run_init, false)
    }

    /// [`LinkedImage::start`]; `eh_frame_valid`: the image's `.eh_frame`
    /// (with its terminator) is known to pass
    /// [`runtime::eh_frame::validate`] as it lies in memory (an image
    /// file's parser checked its bytes, which loading does not write), so
    /// it is registered without walking its records again.
    pub(crate) fn start_with(
        name: String,
        f: Finalized,
        dso: runtime::DsoHandle,
        run_init: bool,
        eh_frame_valid: bool,
    ) -> Result<LinkedImage, LinkError> {
        let memory = (f.alloc.base(), f.alloc.len());
        dso.add_range(memory.0 as usize, memory.1 as usize);
        // Code for another ISA (an image to save) never runs here: its
        // unwind info is not this process's.
        let foreign = f
            .imaging
            .as_ref()
            .is_some_and(|r| r.machine != crate::isa::Isa::HOST.machine());
        let eh_frame = match f.eh_frame.filter(|_| !foreign) {
            // The recorded length includes the zero terminator.
            Some((start, len)) if eh_frame_valid => {
                // SAFETY: as below; and the section passes `validate` and
                // is terminated (the caller's `eh_frame_valid`).
                Some(unsafe {
                    runtime::eh_frame::register_validated(
                        start as *const u8,
                        len.saturating_sub(4) as usize,
                    )
                })
            }
            Some((start, len)) => {
                // SAFETY: [start, start+len) is the image's finalized,
                // relocated `.eh_frame` followed by its 4-byte terminator; it
                // stays mapped and unchanged until the registration is
                // dropped, which `Drop for LinkedImage` does before releasing.
                let r = unsafe {
                    runtime::eh_frame::register(start as *const u8, len.saturating_sub(4) as usize)
                };
                // The passes checked the records and blamed a bad one on
                // its object: a failure here is the linker's.
                Some(r.map_err(|e| {
                    LinkError::runtime(
                        format!("image linked from {name} and the rest (linker bug)"),
                        e,
                    )
                })?)
            }
            None => None,
        };
        let mut init_fini = runtime::InitFini::new(dso);
        for (section, entries) in &f.init_fini {
            init_fini.add_section(section, entries);
        }
        let mut image = LinkedImage {
            name,
            symbols: Symbols::Map(f.symbols),
            stats: f.stats,
            memory,
            platform: Some(Platform {
                init_fini,
                initialized: false,
                eh_frame,
                tls: f.tls_module,
            }),
            debug: f.debug,
            alloc: Some(f.alloc),
            imaging: f.imaging,
            registration: std::sync::OnceLock::new(),
            piece_of: std::sync::Mutex::default(),
            release_after: ReleaseAfter::ThreadsOf(Vec::new()),
        };
        if run_init {
            // SAFETY: the caller of `run_initializers_at_link` vouched for
            // the objects' code.
            unsafe { image.run_initializers() };
        }
        Ok(image)
    }

    /// Run the image's initializers now (once); dropping the image then
    /// runs its finalizers.
    ///
    /// # Safety
    ///
    /// The image's code runs: the objects it was linked from must be sound
    /// to run in this process (as their program's start would be), with
    /// the host symbols they were bound to.
    pub unsafe fn run_initializers(&mut self) {
        // SAFETY: the image is finalized and its externals resolved; the
        // initializers are the image's own functions, `self` keeps the
        // image mapped while they run, and the caller vouches for them.
        unsafe { self.take_initializers().run() };
    }

    /// Takes the image's initializers (once; later calls take none), to be
    /// run ([`runtime::InitCalls::run`]) once no lock guards the image: an
    /// initializer may call `exit()`, whose teardown finalizes the image.
    pub fn take_initializers(&mut self) -> runtime::InitCalls {
        Self::take_initializers_together(&mut [self])
    }

    /// Runs the initializers of several images (once each) as one program
    /// would: interleaved by priority, ties in the order given.
    ///
    /// # Safety
    ///
    /// As for [`LinkedImage::run_initializers`], for every image.
    pub unsafe fn run_initializers_together(images: &mut [&mut LinkedImage]) {
        // SAFETY: every image is finalized and its externals resolved; the
        // initializers are the images' own functions, the borrows keep the
        // images mapped while they run, and the caller vouches for them.
        unsafe { Self::take_initializers_together(images).run() };
    }

    /// [`LinkedImage::run_initializers_together`]'s initializers, taken to
    /// be run once no lock guards the images.
    pub fn take_initializers_together(images: &mut [&mut LinkedImage]) -> runtime::InitCalls {
        let mut sets = Vec::with_capacity(images.len());
        for image in images.iter_mut() {
            if let Some(p) = &mut image.platform
                && !p.initialized
            {
                p.initialized = true;
                sets.push(&mut p.init_fini);
            }
        }
        runtime::InitFini::take_init_together(&mut sets)
    }

    /// Tear down like a program's `exit()` (all `atexit` handlers, then the
    /// finalizers) instead of like `dlclose`.
    pub fn set_executable_teardown(&mut self, yes: bool) {
        if let Some(p) = &mut self.platform {
            p.init_fini.set_executable_teardown(yes);
        }
    }

    /// Runs the finalizers (and the `atexit` handlers the image's code
    /// registered) now, once, keeping the memory until the image is dropped —
    /// for teardowns where other images' finalizers may still call into it.
    pub fn run_finalizers(&mut self) {
        LinkedImage::run_finalizers_together(&mut [self]);
    }

    /// Takes the image's teardown (once), to be run
    /// ([`runtime::FiniCalls::run`]) once no lock guards the image: a
    /// finalizer may call `exit()` or remove its own image.
    pub fn take_finalizers(&mut self) -> runtime::FiniCalls {
        Self::take_finalizers_together(&mut [self])
    }

    /// Runs the finalizers of several images (given in link order; once
    /// each) as one program would, keeping their memory until each is
    /// dropped: with executable teardown, every image's `atexit` handlers
    /// newest first across the images, then the finalizers interleaved by
    /// priority ([`runtime::InitFini::take_fini_together`]); otherwise each
    /// image's own teardown, last-linked first.
    pub fn run_finalizers_together(images: &mut [&mut LinkedImage]) {
        // SAFETY: every image's code is still mapped (the images are alive
        // and borrowed here); their finalizers and atexit handlers run
        // before anything of theirs is released.
        unsafe { Self::take_finalizers_together(images).run() };
    }

    /// [`LinkedImage::run_finalizers_together`]'s teardown, taken to be run
    /// once no lock guards the images (which must stay mapped until it
    /// has run).
    pub fn take_finalizers_together(images: &mut [&mut LinkedImage]) -> runtime::FiniCalls {
        let mut sets = Vec::with_capacity(images.len());
        for image in images.iter_mut() {
            if let Some(p) = &mut image.platform
                && p.initialized
            {
                p.initialized = false;
                sets.push(&mut p.init_fini);
            }
        }
        runtime::InitFini::take_fini_together(&mut sets)
    }

    /// Address of a global symbol (exported or hidden) of the image.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols.get(name)
    }

    /// Every global symbol with its address.
    pub fn symbols(&self) -> impl Iterator<Item = (&str, u64)> {
        self.symbols.iter()
    }

    /// Replaces the symbols with an image file's export table.
    pub(crate) fn set_sorted_symbols(&mut self, symbols: SortedSymbols) {
        self.symbols = Symbols::Sorted(symbols);
    }

    /// Display name (the first input).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Files the image in the image registry with `make`'s entry, unless
    /// it is filed already.
    pub(crate) fn register_once(
        &self,
        make: impl FnOnce() -> crate::image_file::registry::Registration,
    ) {
        self.registration.get_or_init(make);
    }

    /// Files the image in the image registry as a piece of an image saved
    /// from many links (kept as long as the image is).
    pub(crate) fn register_piece(&self, r: crate::image_file::registry::Registration) {
        self.piece_of
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(r);
    }

    /// Takes the image's TLS module out, unless its initializers ran (for
    /// giving its static range back: see `save_image_and_release`).
    pub(crate) fn take_uninitialized_tls(&mut self) -> Option<runtime::tls::TlsModule> {
        let platform = self.platform.as_mut().filter(|p| !p.initialized)?;
        platform.tls.take()
    }

    /// The record kept for saving, if linked in imaging mode.
    pub(crate) fn imaging_record(&self) -> Option<&crate::image_file::ImagingRecord> {
        self.imaging.as_deref()
    }

    /// The normalized memory `record` (this image's) saves: its copy, or
    /// this image's own memory when it was normalized where it is (code for
    /// another ISA, left writable: [`crate::image_file::ImagingRecord::in_image`]).
    pub(crate) fn imaging_memory<'a>(
        &'a self,
        record: &'a crate::image_file::ImagingRecord,
    ) -> Result<&'a [u8], crate::image_file::ImageError> {
        if !record.in_image {
            return Ok(&record.memory);
        }
        self.alloc.as_ref().and_then(|a| a.bytes()).ok_or_else(|| {
            crate::image_file::ImageError::Write {
                name: self.name.clone(),
                detail: "the image's memory is no longer readable (linker bug)".into(),
                source: None,
            }
        })
    }

    /// The life of the image's runtime part (`None` without one).
    pub(crate) fn life(&self) -> Option<Arc<runtime::life::Life>> {
        let platform = self.platform.as_ref()?;
        Some(Arc::clone(platform.init_fini.life()))
    }

    /// Says whose threads its memory waits for once it is torn down.
    pub(crate) fn set_release_after(&mut self, after: ReleaseAfter) {
        self.release_after = after;
    }

    /// Link statistics.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// `(start, length)` of the image's memory.
    pub fn memory_range(&self) -> (u64, u64) {
        self.memory
    }

    /// Whether the memory is finalized (not yet released).
    pub fn is_finalized(&self) -> bool {
        self.alloc
            .as_ref()
            .is_some_and(|a| a.state() == MemState::Finalized)
    }
}

impl Drop for LinkedImage {
    fn drop(&mut self) {
        // Nobody binds to the image once its teardown starts.
        drop(self.registration.take());
        self.piece_of
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let life = self.life();
        let mut after = std::mem::replace(&mut self.release_after, ReleaseAfter::EveryImageThread);
        if let (ReleaseAfter::ThreadsOf(group), Some(life)) = (&mut after, &life)
            && !group.iter().any(|l| Arc::ptr_eq(l, life))
        {
            group.push(Arc::clone(life));
        }
        let remains = Remains {
            platform: self.platform.take(),
            debug: self.debug.take(),
            alloc: self.alloc.take(),
            memory: self.memory,
            after,
        };
        match life {
            // A destructor of the image that dropped its last handle
            // returns through the image first.
            Some(life) => {
                runtime::life::tear_down_outside([&*life], Box::new(|| remains.tear_down()));
            }
            None => remains.tear_down(),
        }
    }
}

/// What a [`LinkedImage`]'s teardown releases.
struct Remains {
    platform: Option<Platform>,
    debug: Option<crate::debug::DebugRegistration>,
    alloc: Option<crate::memory::Allocation>,
    memory: (u64, u64),
    after: ReleaseAfter,
}

impl Remains {
    fn tear_down(self) {
        let Remains {
            platform,
            debug,
            alloc,
            memory: (base, len),
            after,
        } = self;
        let (mut eh_frame, mut tls) = (None, None);
        if let Some(mut p) = platform {
            // Always: code may have run (and registered atexit handlers)
            // without the initializers; the runtime skips the finalizer
            // arrays of an image whose initializers never ran.
            // SAFETY: the image's code is still mapped; its finalizers and
            // atexit handlers run before anything is released.
            unsafe { p.init_fini.run_fini() };
            (eh_frame, tls) = (p.eh_frame.take(), p.tls.take());
            // The image's life ends: its handlers, keys and timers go.
            drop(p);
        }
        let release = Box::new(move || {
            drop(eh_frame);
            drop(tls);
            // Debuggers forget the code before its memory goes.
            drop(debug);
            // stdio stops using buffers the image gave it (`setvbuf`).
            if alloc.is_some() {
                runtime::stdio::unbuffer_streams_in(base as usize, len as usize);
            }
            drop(alloc);
        });
        // A thread an image started may still run its code: the memory goes
        // once none does.
        match after {
            ReleaseAfter::ThreadsOf(group) => {
                runtime::threads::release_when_no_thread_of(group, release);
            }
            ReleaseAfter::EveryImageThread => {
                runtime::threads::release_when_no_image_thread_runs(release);
            }
        }
    }
}

/// Objects read into one graph ([`Linker::read_graph_naming`]): the graph,
/// the name given to each symbol it defines, and what reading learned of
/// its relocations — which holds only while the graph is unchanged, so the
/// graph is reachable only to read, or by taking it apart.
#[derive(Debug)]
pub struct ReadGraph<N> {
    pub(crate) graph: LinkGraph,
    pub(crate) names: Vec<Option<N>>,
    pub(crate) facts: EdgeFacts,
}

impl<N> ReadGraph<N> {
    /// The graph.
    pub fn graph(&self) -> &LinkGraph {
        &self.graph
    }

    /// The graph and, by symbol id, the name given to each symbol (`None`
    /// for locals, externals and archive members' symbols).
    pub fn into_parts(self) -> (LinkGraph, Vec<Option<N>>) {
        (self.graph, self.names)
    }
}

/// What a reader learns of a graph's relocations while each object's
/// edges are in its cache, so that adding the graph to a layer need not
/// read all of them again (for synth's 401k, ~1 ms before the link can
/// start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EdgeFacts {
    /// [`LinkGraph::has_absolute_32bit_references`].
    pub(crate) absolute_32bit: bool,
    /// Edges of every block.
    pub(crate) edges: usize,
}

impl EdgeFacts {
    /// The facts of `graph`, read from every edge.
    pub(crate) fn of(graph: &LinkGraph) -> EdgeFacts {
        EdgeFacts {
            absolute_32bit: graph.has_absolute_32bit_references(),
            edges: edge_count(&graph.blocks),
        }
    }

    /// Adds the facts of `graph`'s blocks from `first` on.
    fn add_blocks(&mut self, graph: &LinkGraph, first: usize) {
        self.absolute_32bit =
            self.absolute_32bit || graph.blocks_have_absolute_32bit_references(first);
        self.edges += edge_count(&graph.blocks[first..]);
    }
}

/// Edges of `blocks`, all told.
fn edge_count(blocks: &[crate::graph::Block]) -> usize {
    blocks.iter().map(|b| b.edges.len()).sum()
}

/// Names many names at once, one for each, in order.
pub type NameAll<'a, N> = dyn Fn(&[&str]) -> Vec<N> + Sync + 'a;

/// Parses one object `(name, bytes)` into a graph of its own.
pub(crate) type ParseObject<'a, B> = dyn Fn(&str, &B) -> Result<LinkGraph, LinkError> + Sync + 'a;

/// Objects `(name, bytes)` read into one graph (`parse` reads one), their
/// defined globals named with `name_all` (for example an engine's
/// interner; an object's names at once) as they are read: objects large enough together are parsed
/// and named on all threads and merged in order. Returns the graph and,
/// by symbol id, the name given to each symbol (`None` for locals and
/// externals), with the graph's [`EdgeFacts`]. On this thread alone unless
/// `may_parallel`.
pub(crate) fn read_objects_naming<S: AsRef<str> + Sync, B: Sync, N: Send>(
    objects: &[(S, B)],
    bytes_of: &(dyn Fn(&B) -> &[u8] + Sync),
    parse: &ParseObject<'_, B>,
    name_all: &NameAll<'_, N>,
    may_parallel: bool,
) -> Result<ReadGraph<N>, LinkError> {
    let bytes: usize = objects.iter().map(|(_, data)| bytes_of(data).len()).sum();
    let parallel = may_parallel && objects.len() >= 2 && bytes >= PARALLEL_READ_BYTES;
    read_objects_naming_on(objects, bytes_of, parse, name_all, parallel)
}

/// [`read_objects_naming`], on all threads if `parallel`.
fn read_objects_naming_on<S: AsRef<str> + Sync, B: Sync, N: Send>(
    objects: &[(S, B)],
    bytes_of: &(dyn Fn(&B) -> &[u8] + Sync),
    parse: &ParseObject<'_, B>,
    name_all: &NameAll<'_, N>,
    parallel: bool,
) -> Result<ReadGraph<N>, LinkError> {
    let mut graph = LinkGraph::new();
    let mut names: Vec<Option<N>> = Vec::new();
    let mut facts = EdgeFacts::default();
    // The merged arrays, allocated once (untouched capacity costs only
    // address space). Sized from every object's section headers: on
    // all threads when the objects are read on all threads.
    let hint_of = |(_, data): &(S, B)| crate::elf::size_hint(bytes_of(data));
    let sum = |mut a: crate::elf::SizeHint, b| {
        a += b;
        a
    };
    let hint = if parallel {
        objects
            .par_iter()
            .map(hint_of)
            .reduce(Default::default, sum)
    } else {
        objects.iter().map(hint_of).fold(Default::default(), sum)
    };
    graph.reserve(hint.symbols, hint.blocks, hint.globals / 2);
    // One slot per symbol, as the graph's (not regrown per object).
    names.reserve(hint.symbols);

    // Objects parse in parallel and merge in order (small inputs on
    // this thread alone).
    let parse = |(i, (name, data)): (usize, &(S, B))| {
        let parsed = parse(name.as_ref(), data).map(|g| {
            let (ids, texts): (Vec<SymbolId>, Vec<&str>) = g.unmerged_definitions().unzip();
            let named: Vec<(SymbolId, N)> = ids.into_iter().zip(name_all(&texts)).collect();
            (g, named)
        });
        (i, parsed)
    };
    let mut merge = |parsed: Result<(LinkGraph, Vec<(SymbolId, N)>), LinkError>| {
        let (g, named) = parsed?;
        let first = graph.blocks.len();
        let (_, map) = graph.merge_mapped(g);
        // The object's blocks (those the merge kept) are the last ones.
        facts.add_blocks(&graph, first);
        names.resize_with(graph.symbols.len(), || None);
        for (id, n) in named {
            let slot = &mut names[map[id.index()].index()];
            if slot.is_none() {
                *slot = Some(n);
            }
        }
        Ok::<(), LinkError>(())
    };
    if !parallel {
        for object in objects.iter().enumerate() {
            merge(parse(object).1)?;
        }
    } else {
        parse_in_parallel_merge_in_order(objects, parse, merge)?;
    }
    // The fuzzer checks what reading learned against the whole graph.
    #[cfg(fuzzing)]
    assert_eq!(facts, EdgeFacts::of(&graph), "facts learned while reading");
    Ok(ReadGraph {
        graph,
        names,
        facts,
    })
}

/// Parses `items` on rayon's threads and this one, and merges each on this
/// one as soon as it and every item before it are parsed: merging stays in
/// order (COMDAT groups and duplicate checks depend on it). `parse` returns
/// its item's index with the result.
///
/// Every thread takes the next item in input order (a shared counter), so
/// items finish nearly in order and the merge keeps pace with the parse.
/// This thread merges what is ready and parses an item itself when the next
/// one to merge is not ready yet, so the pool lends one thread fewer:
/// as many threads as cores work, none waits. (Before, `par_iter` split the
/// items in halves among the pool's threads and this thread only merged: on
/// two cores three threads ran, and a merge that fell behind ran alone
/// after the last parse.)
fn parse_in_parallel_merge_in_order<I: Sync, T: Send>(
    items: &[I],
    parse: impl Fn((usize, &I)) -> (usize, T) + Sync + Send,
    mut merge: impl FnMut(T) -> Result<(), LinkError>,
) -> Result<(), LinkError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let claimed = AtomicUsize::new(0);
    let claim = || {
        let i = claimed.fetch_add(1, Ordering::Relaxed);
        items.get(i).map(|item| (i, item))
    };
    let (parse, claim) = (&parse, &claim);
    let helpers = rayon::current_num_threads()
        .saturating_sub(1)
        .clamp(1, items.len().max(1));
    let (tx, rx) = std::sync::mpsc::channel();
    // The helpers are tasks of rayon's pool; this thread merges meanwhile
    // (no thread of its own to start them: a host's pool hooks see every
    // thread that parses). A helper's panic (a bug) goes on from the
    // scope's end, as it would from rayon.
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            let tx = tx.clone();
            scope.spawn(move |_| {
                while let Some(item) = claim() {
                    // The receiver only goes away on an error.
                    if tx.send(parse(item)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut waiting: Vec<Option<T>> = (0..items.len()).map(|_| None).collect();
        let mut merged = 0;
        let result = (|| {
            while merged < items.len() {
                for (i, parsed) in rx.try_iter() {
                    waiting[i] = Some(parsed);
                }
                if let Some(parsed) = waiting[merged].take() {
                    merge(parsed)?;
                    merged += 1;
                    continue;
                }
                // The next to merge is still being parsed: parse another
                // here meanwhile, or wait when none is left. An item is
                // claimed only by a helper that runs, so its parse comes
                // (a helper still queued holds none).
                let (i, parsed) = match claim() {
                    Some(item) => parse(item),
                    None => match rx.recv() {
                        Ok(parsed) => parsed,
                        // Only a parsing helper's panic (resumed by the scope).
                        Err(_) => break,
                    },
                };
                waiting[i] = Some(parsed);
            }
            Ok(())
        })();
        // Helpers not started yet find nothing left to claim, or their
        // send fails: the scope ends when they do.
        drop(rx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    /// Objects read on all threads make the graph, and get the names, that
    /// they get read on one: three copies of one object (their COMDAT
    /// groups dropped but the first's, their strong definitions
    /// duplicates, their references resolved to the first's definitions).
    #[test]
    fn objects_read_in_parallel_make_the_graph_read_serially() {
        use crate::graph::{assert_same_graph, tests::rich_object};
        let bytes = rich_object(1);
        let objects: Vec<(String, &[u8])> =
            (0..3).map(|i| (format!("o{i}.o"), &bytes[..])).collect();
        let parse = |name: &str, bytes: &&[u8]| crate::elf::parse_object(name, bytes);
        let name_all = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let read = |parallel| {
            read_objects_naming_on(&objects, &|b| *b, &parse, &name_all, parallel)
                .expect("the objects read")
        };
        let (serial, parallel) = (read(false), read(true));
        // What reading learned is what the graph says.
        assert_eq!(serial.facts, EdgeFacts::of(&serial.graph));
        assert_eq!(parallel.facts, serial.facts);
        let (mut serial, serial_names) = serial.into_parts();
        let (parallel, parallel_names) = parallel.into_parts();
        assert_same_graph(&parallel, &serial);
        assert_eq!(parallel_names, serial_names);
        assert_eq!(serial.objects.len(), 3);
        assert!(serial_names.iter().flatten().any(|n| n == "f"));
        assert!(!serial.take_duplicates().is_empty());
    }

    /// An object defining COMDAT group `inl`, whose code takes `ext`'s
    /// 32-bit absolute address (non-PIE code) if `absolute`.
    fn group_object(absolute: bool) -> Vec<u8> {
        use object::write::{Comdat, Object, Relocation, SymbolSection};
        let mut o = Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let inl = o.add_section(Vec::new(), b".text.inl".to_vec(), object::SectionKind::Text);
        o.append_section_data(inl, &[0x90; 16], 16);
        let symbol = |name: &str, section| object::write::Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: object::SymbolKind::Text,
            scope: object::SymbolScope::Dynamic,
            weak: section != SymbolSection::Undefined,
            section,
            flags: object::SymbolFlags::None,
        };
        let signature = o.add_symbol(symbol("inl", SymbolSection::Section(inl)));
        o.add_comdat(Comdat {
            kind: object::ComdatKind::Any,
            symbol: signature,
            sections: vec![inl],
        });
        let ext = o.add_symbol(symbol("ext", SymbolSection::Undefined));
        let r_type = if absolute {
            object::elf::R_X86_64_32
        } else {
            object::elf::R_X86_64_PC32
        };
        let relocation = Relocation {
            offset: 4,
            symbol: ext,
            addend: 0,
            flags: object::RelocationFlags::Elf { r_type },
        };
        o.add_relocation(inl, relocation)
            .expect("a valid relocation");
        o.write().expect("the object is written")
    }

    /// What reading learns of the relocations is what the merged graph
    /// has: non-PIE code in a COMDAT copy the merge drops is not there.
    #[test]
    fn edge_facts_are_the_merged_graphs() {
        let (pie, non_pie) = (group_object(false), group_object(true));
        let parse = |name: &str, bytes: &&[u8]| crate::elf::parse_object(name, bytes);
        let name_all = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        for (order, absolute) in [([&pie, &non_pie], false), ([&non_pie, &pie], true)] {
            let objects: Vec<(String, &[u8])> = order
                .iter()
                .enumerate()
                .map(|(i, b)| (format!("o{i}.o"), &b[..]))
                .collect();
            for parallel in [false, true] {
                let read = read_objects_naming_on(&objects, &|b| *b, &parse, &name_all, parallel)
                    .expect("the objects read");
                assert_eq!(read.facts, EdgeFacts::of(&read.graph));
                assert_eq!(read.facts.absolute_32bit, absolute);
                assert_eq!(read.facts.edges, 1);
            }
        }
    }

    /// Items parsed out of order on several threads (uneven work) are
    /// merged in input order, each once.
    #[test]
    fn parallel_parse_merges_every_item_in_order() {
        let items: Vec<u64> = (0..500).collect();
        let mut merged = Vec::new();
        parse_in_parallel_merge_in_order(
            &items,
            |(i, &n)| {
                // Uneven parse times: later items often finish first.
                std::hint::black_box(spin((n * 7919) % 97 * 200));
                (i, n)
            },
            |n| {
                merged.push(n);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(merged, items);
    }

    /// Work for `n` steps.
    fn spin(n: u64) -> u64 {
        (0..n).fold(0, |a, b| std::hint::black_box(a ^ b))
    }

    /// A merge error stops the merging (nothing after it is merged) and is
    /// returned; the parsing threads stop.
    #[test]
    fn parallel_parse_stops_at_the_first_merge_error() {
        let items: Vec<usize> = (0..300).collect();
        let mut merged = Vec::new();
        let result = parse_in_parallel_merge_in_order(
            &items,
            |(i, &n)| (i, n),
            |n| {
                if n == 40 {
                    return Err(LinkError::malformed("x.o", "bad"));
                }
                merged.push(n);
                Ok(())
            },
        );
        assert!(matches!(result, Err(LinkError::Malformed { .. })));
        assert_eq!(merged, (0..40).collect::<Vec<_>>());
    }

    /// Every item of `items` merged, in order, parsed by `parse` inside
    /// `pool` (the caller's thread one of its threads).
    fn parse_in_pool(
        pool: &rayon::ThreadPool,
        items: &[u64],
        parse: impl Fn((usize, &u64)) -> (usize, u64) + Sync + Send,
    ) -> Vec<u64> {
        pool.install(|| {
            let mut merged = Vec::new();
            let merge = |n| {
                merged.push(n);
                Ok(())
            };
            parse_in_parallel_merge_in_order(items, parse, merge).unwrap();
            merged
        })
    }

    /// Every thread that parses is the host's: the calling thread or one of
    /// the rayon pool it runs in (`install`) — no thread of kiln's own, and
    /// not rayon's global pool.
    #[test]
    fn parallel_parse_runs_on_the_callers_pool() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .thread_name(|i| format!("host-pool-{i}"))
            .build()
            .unwrap();
        let items: Vec<u64> = (0..200).collect();
        let threads = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let parsed = std::sync::atomic::AtomicUsize::new(0);
        let merged = parse_in_pool(&pool, &items, |(i, &n)| {
            let name = std::thread::current().name().map(str::to_string);
            threads.lock().unwrap().insert(name);
            // The first item waits for another thread to parse one: a
            // second thread is sure to take part.
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while i == 0 && parsed.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            parsed.fetch_add(1, Ordering::SeqCst);
            (i, n)
        });
        assert_eq!(merged, items);
        let threads = threads.into_inner().unwrap();
        assert!(threads.len() > 1, "parsed on one thread only: {threads:?}");
        assert!(
            threads
                .iter()
                .all(|t| t.as_deref().is_some_and(|t| t.starts_with("host-pool-"))),
            "parsed on {threads:?}"
        );
    }

    /// On a pool of one thread (the caller's, busy merging) the helper
    /// queued behind it never starts until the end: the caller parses
    /// everything itself, and nothing waits for the helper.
    #[test]
    fn parallel_parse_on_a_pool_of_one_thread_finishes() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let items: Vec<u64> = (0..50).collect();
        assert_eq!(parse_in_pool(&pool, &items, |(i, &n)| (i, n)), items);
    }

    /// A panic while parsing goes on to the caller.
    #[test]
    fn parallel_parse_panics_reach_the_caller() {
        let items: Vec<usize> = (0..64).collect();
        let caught = std::panic::catch_unwind(|| {
            parse_in_parallel_merge_in_order(
                &items,
                |(i, &n)| {
                    assert!(n != 33, "parse bug");
                    (i, n)
                },
                |_| Ok(()),
            )
        });
        assert!(caught.is_err());
    }
}
