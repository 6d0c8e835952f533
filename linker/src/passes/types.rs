//! The pipeline's inputs and outputs: options, the image's environment, the
//! finalized image and its statistics.

use std::collections::HashMap;
use std::time::Duration;

use crate::graph::LinkGraph;
use crate::memory::Allocation;
use crate::runtime;

/// Which blocks start out live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Roots {
    /// Every block of the objects given as inputs (the host may look any of
    /// their symbols up); of archive members ([`crate::graph::ObjectInfo::library`])
    /// only initializers, finalizers and what live code reaches — as
    /// `ld --gc-sections` treats library code.
    #[default]
    All,
    /// Only the blocks defining these symbols, plus initializers and
    /// finalizers; everything else is kept only if reachable from them.
    Symbols(Vec<String>),
}

/// Options of one link.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkOptions {
    /// Which blocks are roots for pruning.
    pub roots: Roots,
    /// Fix up in parallel when the graph has at least this many edges.
    pub parallel_threshold: usize,
    /// Large links may use rayon's threads (the pool the linking thread
    /// runs in, else the global one): passes that read every edge, copying
    /// and fixing up, prefaulting memory, preparing early, parsing many
    /// objects at once, freeing the graph afterwards. Off, a link runs
    /// wholly on the thread that links it and starts no thread: for
    /// single-threaded hosts (`JitBuilder::dispatcher` with
    /// `InPlaceDispatcher` turns it off) and hosts with a thread budget
    /// (default: on).
    pub parallel: bool,
    /// Keep the graph after fixup in [`Finalized::graph`]: final addresses,
    /// relocated contents and every relocation record, for a later pass
    /// (saving an image that can be rebased, DESIGN §5).
    pub keep_graph: bool,
    /// Build [`Finalized::symbols`] (name → address of every global). The
    /// engine's object layer turns it off: the engine keeps the addresses.
    pub symbol_table: bool,
    /// The engine's object layer prepares an image (prune, GOT/PLT,
    /// layout, allocation) on a rayon thread as soon as its unit is added,
    /// while the engine records its symbols, instead of when it is first
    /// looked up — for units without weak definitions and with at least
    /// [`LinkOptions::parallel_threshold`] relocations. For hosts that link
    /// what they add (`kiln run`): an image never looked up keeps its memory
    /// until its unit goes.
    pub prepare_early: bool,
    /// Imaging mode (DESIGN §5): link so the result can be saved as an
    /// image file and loaded at another address in another process
    /// ([`crate::image_file`]). Every fixup must be PC-relative inside the
    /// image, an absolute word inside the image outside text (a rebase), or
    /// a reference to a host symbol through a slot (calls always through a
    /// PLT stub, GOT loads of host symbols never relaxed); anything else is
    /// refused naming the relocation. Keeps what saving needs in
    /// [`Finalized::imaging`].
    pub imaging: bool,
    /// Debugger and profiler interfaces the image is announced to
    /// (default: [`crate::debug::DebugOptions::process_default`]).
    pub debug: crate::debug::DebugOptions,
    /// CPU features the code requires beyond what the input objects' GNU
    /// property notes say, for hosts whose code generator chose them (for
    /// example Cranelift's ISA flags): a saved image records the union, its
    /// build id covers them, and loading it on a CPU without them is
    /// refused (default: none).
    pub cpu_features: crate::image_file::CpuFeatures,
    /// [`crate::Linker`] does not free the linked graph (it is leaked):
    /// for a process that exits right after the link (`kiln image save`),
    /// where freeing its many small allocations (13.7 M instructions on the
    /// aarch64 synth input) only competes with writing the image. Internal
    /// to kiln's CLI (default: off).
    #[doc(hidden)]
    pub leave_graph_to_exit: bool,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            roots: Roots::All,
            parallel_threshold: 20_000,
            parallel: true,
            keep_graph: false,
            symbol_table: true,
            prepare_early: false,
            imaging: false,
            debug: crate::debug::DebugOptions::process_default(),
            cpu_features: crate::image_file::CpuFeatures::NONE,
            leave_graph_to_exit: false,
        }
    }
}

/// Flags of a defined symbol reported to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DefinedFlags {
    /// Code.
    pub callable: bool,
    /// A weak definition.
    pub weak: bool,
    /// Visible outside the image (`false` for hidden globals).
    pub exported: bool,
}

/// A global symbol of the graph with its final address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedSymbol {
    /// Name.
    pub name: String,
    /// Final address (for TLS symbols: offset in the image's TLS block).
    pub address: u64,
    /// Flags.
    pub flags: DefinedFlags,
}

/// Thread-local storage of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsLayout {
    /// Address of the initialization image (`.tdata` contents) in the image.
    pub image_addr: u64,
    /// Bytes of initialized data.
    pub filesz: u64,
    /// Total size, including `.tbss`.
    pub memsz: u64,
    /// Alignment.
    pub align: u64,
}

/// Per-image values the linker provides itself. (`__dso_handle` is not
/// one of them: it is a slot inside the image, [`super::Prepared::dso_handle`].)
#[derive(Debug, Clone, Default)]
pub struct ImageEnv {
    /// Name of the image (for the TLS module and errors).
    pub name: String,
    /// Where the image's TLS block goes, if it has one.
    pub tls_placement: Option<runtime::tls::TlsPlacement>,
}

/// The result of finalization: what [`crate::LinkedImage`] owns.
#[derive(Debug)]
pub struct Finalized {
    /// The image's registration with debuggers (see [`LinkOptions::debug`]);
    /// declared first, so dropped before [`Finalized::alloc`] is released.
    pub debug: Option<crate::debug::DebugRegistration>,
    /// The memory.
    pub alloc: Allocation,
    /// Global symbols (exported and hidden) with addresses (empty unless
    /// [`LinkOptions::symbol_table`]).
    pub symbols: HashMap<Box<str>, u64>,
    /// `.eh_frame` range (start, length including the zero terminator), if any.
    pub eh_frame: Option<(u64, u64)>,
    /// Initializer and finalizer sections in link order: `(section name,
    /// function addresses after fixup)`, for [`runtime::InitFini::add_section`].
    pub init_fini: Vec<(Box<str>, Vec<usize>)>,
    /// Thread-local storage layout (memsz 0 when none).
    pub tls: TlsLayout,
    /// The address `__dso_handle` names: an 8-byte read-only slot inside
    /// the image (as crtbegin's is inside a shared object), for
    /// [`runtime::DsoHandle::new_at`].
    pub dso_handle: u64,
    /// The image's TLS module, initialized with its `.tdata`.
    pub tls_module: Option<runtime::tls::TlsModule>,
    /// Statistics.
    pub stats: LinkStats,
    /// The graph after fixup, if [`LinkOptions::keep_graph`] asked for it.
    pub graph: Option<LinkGraph>,
    /// What saving the image needs, in [`LinkOptions::imaging`] mode.
    pub imaging: Option<Box<crate::image_file::ImagingRecord>>,
}

/// Counts of one link, for `--stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Objects in the graph.
    pub objects: usize,
    /// Live blocks.
    pub blocks: usize,
    /// Symbols.
    pub symbols: usize,
    /// Relocations applied.
    pub relocations: usize,
    /// GOT entries.
    pub got_entries: usize,
    /// PLT stubs.
    pub plt_stubs: usize,
    /// Bytes of memory.
    pub bytes: u64,
    /// Time per phase.
    pub timings: PhaseTimings,
}

/// Wall-clock time of each phase of one link (zero when not measured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimings {
    /// Reading objects and archive members into the graph.
    pub parse: Duration,
    /// Duplicate check, COMMON allocation and pruning.
    pub prune: Duration,
    /// GOT/PLT building, layout and memory allocation.
    pub allocate: Duration,
    /// Looking up external symbols.
    pub lookup: Duration,
    /// Fixups (GOT/PLT contents, relocations, copy into memory).
    pub fixup: Duration,
    /// Final protections (and, in [`crate::LinkedImage`], runtime registration).
    pub finalize: Duration,
}
