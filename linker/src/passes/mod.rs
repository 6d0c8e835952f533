//! The pass pipeline: prune → GOT/PLT → allocate → resolve own symbols →
//! look up externals → fixup → finalize.
//!
//! [`link_graph`] runs them in order and is the one place that shows the
//! order. The same passes are reachable as phases on [`Prepared`] for the
//! engine's object layer, which must report the graph's own addresses
//! ([`Prepared::defined_symbols`]), look externals up through its dylibs
//! ([`Prepared::external_names`] + [`Prepared::resolve_externals`]), then fix
//! up and finalize ([`Prepared::finalize`]); it then emits the image's
//! symbols as one group that depends on the externals it found.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use kiln_arch::FixupError;
use kiln_arch::x86_64::reloc::{
    self, EdgeKind, FixupValues, PLT_STUB_SIZE, Relaxed, kind_name, reloc_name,
};

use crate::error::LinkError;
use crate::graph::{
    Block, BlockId, Content, Edge, FxHashMap, FxHashSet, LinkGraph, Linkage, Prot, Scope,
    SectionId, SectionRole, Symbol, SymbolDef, SymbolId,
};
use crate::host::SymbolResolver;
use crate::memory::{Allocation, PAGE, Placement, Prefault};
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
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            roots: Roots::All,
            parallel_threshold: 20_000,
            keep_graph: false,
            symbol_table: true,
            prepare_early: false,
            imaging: false,
            debug: crate::debug::DebugOptions::process_default(),
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

/// One GOT slot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GotKey {
    /// The symbol's address.
    Addr(SymbolId),
    /// `{module, dtpoff}` for `__tls_get_addr` (16 bytes).
    TlsGd(SymbolId),
    /// `{module, 0}` (16 bytes).
    TlsLd,
    /// The symbol's thread-pointer offset.
    TpOff(SymbolId),
    /// A TLS descriptor `{resolver, argument}` (16 bytes).
    TlsDesc(SymbolId),
}

impl GotKey {
    fn size(self) -> u64 {
        match self {
            GotKey::Addr(_) | GotKey::TpOff(_) => 8,
            _ => 16,
        }
    }
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
/// one of them: it is a slot inside the image, [`Prepared::dso_handle`].)
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
    /// The image's registration with debuggers (see [`LinkOptions::debug`]);
    /// dropped before [`Finalized::alloc`] is released.
    pub debug: Option<crate::debug::DebugRegistration>,
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

/// A graph after prune, GOT/PLT and allocation: addresses are final.
#[derive(Debug)]
pub struct Prepared {
    /// Mapping the allocation's pages (declared before `alloc`, so that it
    /// is waited for before the allocation is dropped).
    prefault: Prefault,
    graph: LinkGraph,
    alloc: Allocation,
    segments: Vec<(u64, u64, Prot)>,
    got: FxHashMap<GotKey, u64>,
    got_block: Option<BlockId>,
    plt: FxHashMap<SymbolId, u64>,
    plt_block: Option<BlockId>,
    tls: TlsLayout,
    eh_frame: Option<(u64, u64)>,
    /// Resolved external addresses, by symbol.
    externals: FxHashMap<SymbolId, u64>,
    /// Named externals that live code references (the linker's own
    /// symbols excluded), in order of first reference.
    external_refs: Vec<SymbolId>,
    specials: FxHashMap<SymbolId, Special>,
    /// Copies of host data that 32-bit references may not reach, by symbol.
    copy_blocks: FxHashMap<SymbolId, BlockId>,
    /// Host code that 32-bit references may not reach: called through its
    /// PLT stub if it is out of reach once resolved.
    reach_stubs: FxHashSet<SymbolId>,
    /// The image's `__dso_handle` slot.
    dso_block: BlockId,
    /// Live blocks outside TLS, in address order.
    placed: Vec<BlockId>,
    /// Placed below 2 GiB.
    low: bool,
    /// Externals the resolver said are data defined in JIT memory
    /// ([`Prepared::mark_jit_data`]): a PLT stub can never stand in for them.
    jit_data: FxHashSet<SymbolId>,
}

/// Symbols the linker defines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    DsoHandle,
    /// `_TLS_MODULE_BASE_`: offset 0 of the image's TLS block (TLSDESC
    /// local-dynamic code adds DTPOFF offsets to it).
    TlsModuleBase,
    GlobalOffsetTable,
    Start(SectionId),
    Stop(SectionId),
}

/// Link `graph` all the way: the pipeline, in order.
pub fn link_graph(
    mut graph: LinkGraph,
    resolver: &dyn SymbolResolver,
    env: &ImageEnv,
    options: &LinkOptions,
) -> Result<Finalized, LinkError> {
    let t0 = Instant::now();
    // Report every duplicate strong definition at once.
    check_duplicates(&mut graph)?;
    // COMMON symbols become zero-fill blocks.
    allocate_commons(&mut graph);
    // Drop what nothing live reaches, and the FDEs of dropped code.
    prune(&mut graph, &options.roots)?;
    // Imaging mode: refuse what an image cannot express, before any memory.
    if options.imaging {
        crate::image_file::classify::check_graph(&graph)?;
    }
    let t1 = Instant::now();
    // GOT entries and PLT stubs, then addresses for every block.
    let mut prepared = Prepared::new(graph)?;
    // (a) the graph's own symbols are now final: the engine's "resolve"
    // reports `prepared.defined_symbols()` here; a standalone link needs
    // nothing more.
    let t2 = Instant::now();
    // (b) one question for every external name; all missing ones in one error.
    let names = prepared.external_names();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let answers = resolver.resolve(&refs);
    prepared.resolve_externals(&refs, &answers)?;
    let t3 = Instant::now();
    // (c) fixup (parallel for large graphs) and finalize memory.
    let mut done = prepared.finalize(env, options)?;
    let t = &mut done.stats.timings;
    t.prune = t1 - t0;
    t.allocate = t2 - t1;
    t.lookup = t3 - t2;
    Ok(done)
}

/// Fail with every duplicate strong definition.
pub fn check_duplicates(graph: &mut LinkGraph) -> Result<(), LinkError> {
    let dups = graph.take_duplicates();
    if dups.is_empty() {
        return Ok(());
    }
    Err(LinkError::DuplicateSymbols {
        duplicates: dups
            .into_iter()
            .map(|(n, objs)| {
                (
                    n.to_string(),
                    objs.iter()
                        .map(|o| graph.object_name(Some(*o)).to_string())
                        .collect(),
                )
            })
            .collect(),
    })
}

/// Give every COMMON symbol a zero-filled block in `.bss.common`.
pub fn allocate_commons(graph: &mut LinkGraph) {
    let commons: Vec<(SymbolId, u64, u64)> = graph
        .symbols
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s.def {
            SymbolDef::Common { size, align } => Some((SymbolId(i as u32), size, align)),
            _ => None,
        })
        .collect();
    if commons.is_empty() {
        return;
    }
    let section = graph.section(".bss.common", Prot::ReadWrite, SectionRole::Ordinary);
    for (id, size, align) in commons {
        let object = graph.symbols[id.index()].object;
        let block = graph.add_block(Block {
            section,
            object,
            input_section: "COMMON".into(),
            input_offset: 0,
            content: Content::Zero(size),
            align,
            edges: Vec::new(),
            fde: None,
            live: true,
            addr: 0,
        });
        graph.symbols[id.index()].def = SymbolDef::Defined { block, offset: 0 };
    }
}

/// The blocks [`prune`] starts from.
fn prune_roots(graph: &LinkGraph, roots: &Roots) -> Vec<BlockId> {
    let eh = |b: &Block| graph.sections[b.section.index()].role == SectionRole::EhFrame;
    let init_fini = |b: &Block| graph.sections[b.section.index()].role.is_init_fini();
    let library = |b: &Block| {
        b.object
            .and_then(|o| graph.objects.get(o.index()))
            .is_some_and(|o| o.library)
    };
    let mut work = Vec::new();
    match roots {
        Roots::All => {
            for (i, b) in graph.blocks.iter().enumerate() {
                if b.live && !eh(b) && (!library(b) || init_fini(b)) {
                    work.push(BlockId(i as u32));
                }
            }
        }
        Roots::Symbols(names) => {
            for (i, b) in graph.blocks.iter().enumerate() {
                if b.live && init_fini(b) {
                    work.push(BlockId(i as u32));
                }
            }
            for name in names {
                if let Some(&id) = graph.globals.get(name.as_str())
                    && let SymbolDef::Defined { block, .. } = graph.symbols[id.index()].def
                {
                    work.push(block);
                }
            }
        }
    }
    work
}

/// Undefined `__start_NAME` / `__stop_NAME` symbols, by symbol index, with
/// the section NAME they delimit: a live reference to one keeps every block
/// of that section (as `ld` does).
fn start_stop_sections(graph: &LinkGraph) -> FxHashMap<u32, SectionId> {
    graph
        .globals
        .iter()
        .filter(|(_, id)| graph.symbols[id.index()].def == SymbolDef::External)
        .filter_map(|(name, id)| {
            let section = name
                .strip_prefix("__start_")
                .or_else(|| name.strip_prefix("__stop_"))?;
            Some((id.0, *graph.section_index.get(section)?))
        })
        .collect()
}

/// Mark live everything reachable from the roots; FDEs live with their code,
/// and a section delimited by `__start_`/`__stop_` symbols with references
/// to them. Dead blocks keep their place in the arena but get no memory, and
/// their edges ask for no symbol: an undefined symbol that only dead blocks
/// reference is not needed, and not an error.
pub fn prune(graph: &mut LinkGraph, roots: &Roots) -> Result<(), LinkError> {
    let n = graph.blocks.len();
    // The FDEs of each block, as linked lists through two arrays (one
    // allocation each, however many FDEs): `first_fde[block]`, `next_fde[fde]`.
    const NONE: u32 = u32::MAX;
    let mut first_fde = vec![NONE; n];
    let mut next_fde = vec![NONE; n];
    for (i, b) in graph.blocks.iter().enumerate() {
        if let Some(f) = b.fde
            && let Some(func) = f.function
            && b.live
        {
            next_fde[i] = std::mem::replace(&mut first_fde[func.index()], i as u32);
        }
    }
    let mut live = vec![false; n];
    let mut work = prune_roots(graph, roots);
    let mut start_stop = start_stop_sections(graph);
    // Each symbol's block (or what it is instead), 4 bytes a symbol: the
    // walk below reads it for every edge, and `Symbol` is 64 bytes.
    const DISCARDED: u32 = u32::MAX - 1;
    let target_block: Vec<u32> = graph
        .symbols
        .iter()
        .map(|s| match s.def {
            // (Block ids stay far below `DISCARDED`: that many blocks
            // would take hundreds of gigabytes.)
            SymbolDef::Defined { block, .. } => block.0,
            SymbolDef::Discarded => DISCARDED,
            _ => NONE,
        })
        .collect();
    // Marked when queued, so each block is queued once (not once per
    // edge into it).
    work.retain(|b| !std::mem::replace(&mut live[b.index()], true));
    let queue = |work: &mut Vec<BlockId>, live: &mut [bool], b: BlockId| {
        if !std::mem::replace(&mut live[b.index()], true) {
            work.push(b);
        }
    };
    while let Some(b) = work.pop() {
        let block = &graph.blocks[b.index()];
        for e in &block.edges {
            match target_block[e.target.index()] {
                NONE => {
                    if let Some(section) = start_stop.remove(&e.target.0) {
                        for &b in &graph.sections[section.index()].blocks {
                            queue(&mut work, &mut live, b);
                        }
                    }
                }
                // Live code must not refer to dropped sections.
                DISCARDED if block.live => {
                    return Err(LinkError::DiscardedReference {
                        object: graph.object_name(block.object).to_string(),
                        section: block.input_section.to_string(),
                        offset: block.input_offset + u64::from(e.offset),
                        symbol: graph.symbol_name(e.target),
                    });
                }
                DISCARDED => {}
                t => queue(&mut work, &mut live, BlockId(t)),
            }
        }
        if let Some(f) = block.fde {
            queue(&mut work, &mut live, f.cie);
        }
        let mut fde = first_fde[b.index()];
        while fde != NONE {
            queue(&mut work, &mut live, BlockId(fde));
            fde = next_fde[fde as usize];
        }
    }
    for (b, l) in graph.blocks.iter_mut().zip(live) {
        b.live = b.live && l;
    }
    Ok(())
}

/// Copy and fix up blocks in parallel from this many bytes on, even with
/// few relocations (copying ~1 MB takes about as long as starting a task).
const PARALLEL_COPY_BYTES: usize = 1 << 20;

/// Round `x` up to a multiple of `a` (saturating: an absurd layout then
/// fails to allocate instead of overflowing).
fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)).saturating_mul(a.max(1))
}

/// Whether `target + addend - place` fits a signed 32-bit field.
fn in_reach(place: u64, target: u64, addend: i64) -> bool {
    let v = i128::from(target) + i128::from(addend) - i128::from(place);
    (i128::from(i32::MIN)..=i128::from(i32::MAX)).contains(&v)
}

/// What [`out_of_reach_host_symbols`] found.
#[derive(Debug, Default)]
struct OutOfReach {
    /// Host data and its size, to copy into the image.
    copies: Vec<(SymbolId, u64)>,
    /// Host code (or what the loader cannot classify), to call through a
    /// PLT stub.
    stubs: Vec<SymbolId>,
}

/// Host symbols that 32-bit references of live code might not reach from
/// `placement`'s slab: data (with its size, to copy into the image) and
/// everything else (to call through a PLT stub). Decided address by
/// address with what the process's loader answers now (`dlsym`), so it
/// holds wherever the host's libraries are — even one loaded far away after
/// the slab was placed. Names the loader does not know (another image's,
/// found through the engine) are assumed in reach of the near slab (both
/// images are in it) and out of reach of the low one. Finalize checks the
/// resolved addresses again: a copy or stub is used only if still needed.
///
/// A PC-relative reference cannot go through a GOT, so a copy is the only
/// way to reach far data, and it is a documented approximation: a copy of
/// read-only data (typeinfo, vtables, constants — the usual case) is exact;
/// of writable data it is a snapshot, the value at link time, with the
/// image's writes kept in its copy — a copy relocation whose library side
/// is not redirected (kiln does not rewrite a loaded library's GOT). It
/// happens only out of reach: host data named by non-PIE code, or by PIE
/// code when the library lies beyond the near slab's reach (mapped far from
/// the others, or loaded after the slab was placed). `-fPIC` code names
/// external data through the GOT and never needs it.
fn out_of_reach_host_symbols(
    graph: &LinkGraph,
    specials: &FxHashMap<SymbolId, Special>,
    placement: Placement,
) -> Result<OutOfReach, LinkError> {
    let slab = crate::memory::Slab::get(placement)?;
    let fits = |kind: EdgeKind, addr: u64| match kind {
        EdgeKind::Delta32 => slab.is_some_and(|s| s.reaches(addr)),
        EdgeKind::Pointer32 => addr <= u64::from(u32::MAX),
        EdgeKind::Pointer32Signed => addr < 1 << 31,
        _ => true,
    };
    let this = libloading::os::unix::Library::this();
    let mut host: FxHashMap<SymbolId, Option<u64>> = FxHashMap::default();
    let mut far: Vec<SymbolId> = Vec::new();
    let mut far_seen: FxHashSet<SymbolId> = FxHashSet::default();
    for b in graph.blocks.iter().filter(|b| b.live) {
        for e in &b.edges {
            if !matches!(
                e.kind,
                EdgeKind::Delta32 | EdgeKind::Pointer32 | EdgeKind::Pointer32Signed
            ) || far_seen.contains(&e.target)
                || specials.contains_key(&e.target)
            {
                continue;
            }
            let sym = &graph.symbols[e.target.index()];
            if sym.def != SymbolDef::External {
                continue;
            }
            let Some(name) = &sym.name else { continue };
            let addr = *host
                .entry(e.target)
                .or_insert_with(|| crate::host::library_symbol(&this, name));
            let in_reach = match addr {
                Some(a) => fits(e.kind, a),
                None => placement == Placement::Near,
            };
            if !in_reach && far_seen.insert(e.target) {
                far.push(e.target);
            }
        }
    }
    let mut out = OutOfReach::default();
    for sym in far {
        match host[&sym].and_then(crate::host::host_symbol_kind) {
            Some(crate::host::HostSymbolKind::Data(size)) if size > 0 => {
                out.copies.push((sym, size));
            }
            _ => out.stubs.push(sym),
        }
    }
    Ok(out)
}

impl Prepared {
    /// Build GOT and PLT, lay out and allocate memory: every block and
    /// linker-made symbol gets its final address. The image is placed below
    /// 2 GiB when its own code needs it (non-PIE: 32-bit absolute
    /// addresses), near the host's libraries otherwise.
    pub fn new(graph: LinkGraph) -> Result<Prepared, LinkError> {
        Self::new_placed(graph, false)
    }

    /// [`Prepared::new`], placed below 2 GiB also when `below_2gib` says so
    /// although its own code would not need it: when non-PIE code of
    /// another image refers to its symbols with 32-bit absolute or
    /// PC-relative addresses (an image linked with others, e.g. one object
    /// of a program linked object by object).
    pub fn new_placed(mut graph: LinkGraph, below_2gib: bool) -> Result<Prepared, LinkError> {
        // --- GOT / PLT requests.
        let mut got_keys: Vec<GotKey> = Vec::new();
        let mut got_seen: FxHashSet<GotKey> = FxHashSet::default();
        let mut plt_syms: Vec<SymbolId> = Vec::new();
        let mut plt_seen: FxHashSet<SymbolId> = FxHashSet::default();
        let mut needs_got = false;
        let mut needs_low: Option<(BlockId, Edge)> = None;
        let mut specials: FxHashMap<SymbolId, Special> = FxHashMap::default();
        let mut external_refs: Vec<SymbolId> = Vec::new();
        // Per symbol: external, then referenced by live code (one byte
        // each, read for every edge instead of the 64-byte `Symbol`).
        const EXTERNAL: u8 = 1;
        const REFERENCED: u8 = 2;
        let mut marks: Vec<u8> = graph
            .symbols
            .iter()
            .map(|s| u8::from(s.def == SymbolDef::External) * EXTERNAL)
            .collect();
        for (bi, b) in graph.blocks.iter().enumerate() {
            if !b.live {
                continue;
            }
            for e in &b.edges {
                let external = marks[e.target.index()] & EXTERNAL != 0;
                let key = match e.kind {
                    EdgeKind::GotDelta32
                    | EdgeKind::GotLoadRelaxable { .. }
                    | EdgeKind::GotDelta64
                    | EdgeKind::GotOffsetOfEntry64 => Some(GotKey::Addr(e.target)),
                    EdgeKind::TlsGd => Some(GotKey::TlsGd(e.target)),
                    EdgeKind::TlsLd => Some(GotKey::TlsLd),
                    EdgeKind::GotTpOff => Some(GotKey::TpOff(e.target)),
                    EdgeKind::TlsDescGot => Some(GotKey::TlsDesc(e.target)),
                    EdgeKind::Branch32 if external => {
                        if plt_seen.insert(e.target) {
                            plt_syms.push(e.target);
                        }
                        Some(GotKey::Addr(e.target))
                    }
                    EdgeKind::GotOff64 | EdgeKind::GotPc32 | EdgeKind::GotPc64 => {
                        needs_got = true;
                        None
                    }
                    EdgeKind::Pointer32 | EdgeKind::Pointer32Signed if needs_low.is_none() => {
                        needs_low = Some((BlockId(bi as u32), *e));
                        None
                    }
                    _ => None,
                };
                if let Some(k) = key
                    && got_seen.insert(k)
                {
                    got_keys.push(k);
                }
                if external
                    && marks[e.target.index()] & REFERENCED == 0
                    && let Some(name) = &graph.symbols[e.target.index()].name
                {
                    marks[e.target.index()] |= REFERENCED;
                    external_refs.push(e.target);
                    let special = match &**name {
                        "__dso_handle" => Some(Special::DsoHandle),
                        "_TLS_MODULE_BASE_" => Some(Special::TlsModuleBase),
                        "_GLOBAL_OFFSET_TABLE_" => {
                            needs_got = true;
                            Some(Special::GlobalOffsetTable)
                        }
                        n => n
                            .strip_prefix("__start_")
                            .and_then(|s| graph.section_index.get(s))
                            .map(|&s| Special::Start(s))
                            .or_else(|| {
                                n.strip_prefix("__stop_")
                                    .and_then(|s| graph.section_index.get(s))
                                    .map(|&s| Special::Stop(s))
                            }),
                    };
                    if let Some(s) = special {
                        specials.insert(e.target, s);
                    }
                }
            }
        }
        external_refs.retain(|id| !specials.contains_key(id));
        let placement = if needs_low.is_some() || below_2gib {
            Placement::Low
        } else {
            Placement::Near
        };
        // Host symbols that 32-bit references cannot reach from the slab:
        // functions get a PLT stub (their address then is the stub's), data
        // a copy taken at link time.
        let OutOfReach {
            copies,
            stubs: reach_stubs,
        } = out_of_reach_host_symbols(&graph, &specials, placement)?;
        for &sym in &reach_stubs {
            if plt_seen.insert(sym) {
                plt_syms.push(sym);
            }
            if got_seen.insert(GotKey::Addr(sym)) {
                got_keys.push(GotKey::Addr(sym));
            }
        }
        // What kiln provides per image lives inside it, in reach by
        // construction wherever the slab is: `__dso_handle`'s slot.
        let dso_section = graph.section("$__DSO_HANDLE", Prot::Read, SectionRole::Ordinary);
        let dso_block = graph.add_block(Block {
            section: dso_section,
            object: None,
            input_section: "$__DSO_HANDLE".into(),
            input_offset: 0,
            content: Content::Bytes(vec![0; 8]),
            align: 8,
            edges: Vec::new(),
            fde: None,
            live: true,
            addr: 0,
        });
        let mut copy_blocks = FxHashMap::default();
        if !copies.is_empty() {
            let section = graph.section("$__COPIES", Prot::ReadWrite, SectionRole::Ordinary);
            for (sym, size) in copies {
                let block = graph.add_block(Block {
                    section,
                    object: None,
                    input_section: "$__COPIES".into(),
                    input_offset: 0,
                    content: Content::Bytes(vec![0; size as usize]),
                    align: 16,
                    edges: Vec::new(),
                    fde: None,
                    live: true,
                    addr: 0,
                });
                copy_blocks.insert(sym, block);
            }
        }
        let mut got = FxHashMap::default();
        let mut got_size = 0u64;
        for k in &got_keys {
            got.insert(*k, got_size);
            got_size += k.size();
        }
        if needs_got && got_size == 0 {
            got_size = 8;
        }
        let got_block = (got_size > 0).then(|| {
            let section = graph.section("$__GOT", Prot::Read, SectionRole::Got);
            graph.add_block(Block {
                section,
                object: None,
                input_section: "$__GOT".into(),
                input_offset: 0,
                content: Content::Bytes(vec![0; got_size as usize]),
                align: 16,
                edges: Vec::new(),
                fde: None,
                live: true,
                addr: 0,
            })
        });
        let mut plt = FxHashMap::default();
        let plt_block = (!plt_syms.is_empty()).then(|| {
            for (i, s) in plt_syms.iter().enumerate() {
                plt.insert(*s, (i * PLT_STUB_SIZE) as u64);
            }
            let section = graph.section("$__STUBS", Prot::ReadExec, SectionRole::Plt);
            graph.add_block(Block {
                section,
                object: None,
                input_section: "$__STUBS".into(),
                input_offset: 0,
                content: Content::Bytes(vec![0xcc; plt_syms.len() * PLT_STUB_SIZE]),
                align: 16,
                edges: Vec::new(),
                fde: None,
                live: true,
                addr: 0,
            })
        });

        // --- Layout: RX, then R, then RW, each page-aligned; TLS apart.
        let mut tls = TlsLayout {
            align: 1,
            ..TlsLayout::default()
        };
        let mut tls_off = 0u64;
        for role in [SectionRole::TlsData, SectionRole::TlsBss] {
            for s in graph.sections.iter().filter(|s| s.role == role) {
                for &b in &s.blocks {
                    let block = &mut graph.blocks[b.index()];
                    if !block.live {
                        continue;
                    }
                    tls_off = align_up(tls_off, block.align);
                    tls.align = tls.align.max(block.align);
                    block.addr = tls_off;
                    tls_off = tls_off.saturating_add(block.content.len());
                }
            }
            if role == SectionRole::TlsData {
                tls.filesz = tls_off;
            }
        }
        tls.memsz = align_up(tls_off, tls.align);

        let mut offset = 0u64;
        let mut segments = Vec::new();
        let mut eh_frame = None;
        let mut tls_image_off = None;
        let mut placed: Vec<(BlockId, u64)> = Vec::new();
        for prot in [Prot::ReadExec, Prot::Read, Prot::ReadWrite] {
            offset = align_up(offset, PAGE);
            let start = offset;
            for s in graph.sections.iter().filter(|s| s.prot == prot) {
                if matches!(s.role, SectionRole::TlsData | SectionRole::TlsBss) {
                    continue;
                }
                let eh = s.role == SectionRole::EhFrame;
                let mut first = None;
                for &b in &s.blocks {
                    let block = &graph.blocks[b.index()];
                    if !block.live {
                        continue;
                    }
                    // `.eh_frame` records go back to back: padding between
                    // two (after a record whose length is 4 mod 8, say, when
                    // the next object's first record asks for 8) would read
                    // as a zero length word, the section's end, and hide
                    // every later record from the unwinder.
                    if !(eh && first.is_some()) {
                        offset = align_up(offset, block.align);
                    }
                    first.get_or_insert(offset);
                    placed.push((b, offset));
                    offset = offset.saturating_add(block.content.len());
                }
                if eh && let Some(f) = first {
                    // Zero terminator after the last live record.
                    offset = offset.saturating_add(4);
                    eh_frame = Some((f, offset - f));
                }
            }
            if prot == Prot::Read && tls.filesz > 0 {
                offset = align_up(offset, tls.align);
                tls_image_off = Some(offset);
                offset = offset.saturating_add(tls.filesz);
            }
            if offset > start {
                segments.push((start, offset - start, prot));
            }
        }
        let total = align_up(offset.max(1), PAGE);

        let mut alloc =
            Allocation::new(total, placement).map_err(|e| blame_largest_block(&graph, e))?;
        let mut alloc_low = placement == Placement::Low;
        if alloc.is_none() && needs_low.is_none() && alloc_low {
            // Only asked to be low for others' sake: near still links; the
            // non-PIE code that cannot reach it fails with a named error.
            // (Copies and stubs were chosen for low: finalize uses each only
            // if its target is still out of reach.)
            alloc = Allocation::new(total, Placement::Near)
                .map_err(|e| blame_largest_block(&graph, e))?;
            alloc_low = false;
        }
        let alloc = match alloc {
            Some(a) => a,
            None => {
                let (b, e) = needs_low.unwrap_or((BlockId(0), Edge::dummy()));
                let block = &graph.blocks[b.index()];
                return Err(LinkError::LowMemoryUnavailable {
                    object: graph.object_name(block.object).to_string(),
                    section: block.input_section.to_string(),
                    offset: block.input_offset + u64::from(e.offset),
                    reloc: reloc_name(e.r_type).unwrap_or("R_X86_64_32"),
                });
            }
        };
        let base = alloc.base();
        for &(b, off) in &placed {
            graph.blocks[b.index()].addr = base + off;
        }
        let placed = placed.into_iter().map(|(b, _)| b).collect();
        tls.image_addr = tls_image_off.map_or(0, |o| base + o);
        let eh_frame = eh_frame.map(|(o, l)| (base + o, l));
        // Fixup writes every page: map them meanwhile.
        let prefault = alloc.prefault();
        Ok(Prepared {
            prefault,
            graph,
            alloc,
            segments,
            got,
            got_block,
            plt,
            plt_block,
            tls,
            eh_frame,
            externals: FxHashMap::default(),
            external_refs,
            specials,
            copy_blocks,
            reach_stubs: reach_stubs.into_iter().collect(),
            dso_block,
            placed,
            low: alloc_low,
            jit_data: FxHashSet::default(),
        })
    }

    /// The graph.
    pub fn graph(&self) -> &LinkGraph {
        &self.graph
    }

    /// TLS layout of the image.
    pub fn tls_layout(&self) -> TlsLayout {
        self.tls
    }

    /// The address `__dso_handle` names in this image: an 8-byte slot in
    /// its read-only data, so PC-relative references to it always reach.
    /// Register the image's [`runtime::DsoHandle`] there.
    pub fn dso_handle(&self) -> u64 {
        self.graph.blocks[self.dso_block.index()].addr
    }

    /// Address range of the allocation.
    pub fn memory_range(&self) -> (u64, u64) {
        (self.alloc.base(), self.alloc.len())
    }

    /// Phase (a): the graph's own global symbols with final addresses.
    pub fn defined_symbols(&self) -> Vec<DefinedSymbol> {
        let g = &self.graph;
        g.globals
            .iter()
            .filter_map(|(name, &id)| {
                let address = self.defined_address(id)?;
                let s = &g.symbols[id.index()];
                Some(DefinedSymbol {
                    name: name.to_string(),
                    address,
                    flags: DefinedFlags {
                        callable: s.callable,
                        weak: s.linkage == Linkage::Weak,
                        exported: s.scope == Scope::Default,
                    },
                })
            })
            .collect()
    }

    /// Phase (a), one symbol: the final address of global `id` if this graph
    /// defines it (in a live block, or as an absolute value).
    pub fn defined_address(&self, id: SymbolId) -> Option<u64> {
        let g = &self.graph;
        match g.symbols.get(id.index())?.def {
            SymbolDef::Defined { block, offset } => {
                let b = &g.blocks[block.index()];
                b.live.then(|| b.addr.wrapping_add(offset))
            }
            SymbolDef::Absolute(v) => Some(v),
            _ => None,
        }
    }

    /// Phase (b), part 1, by id: every named external live code references
    /// (the linker's own symbols excluded), sorted by name. Answer with
    /// [`Prepared::resolve_external_ids`].
    pub fn external_symbols(&self) -> Vec<(SymbolId, &str)> {
        let mut out: Vec<(SymbolId, &str)> = self
            .external_refs
            .iter()
            .filter_map(|&id| Some((id, self.graph.symbols[id.index()].name.as_deref()?)))
            .collect();
        out.sort_unstable_by(|a, b| a.1.cmp(b.1));
        out
    }

    /// Phase (b), part 1: every external name live code references (names
    /// the linker provides itself excluded), sorted.
    pub fn external_names(&self) -> Vec<String> {
        self.graph
            .undefined_names()
            .into_iter()
            .filter(|(n, _)| {
                self.graph
                    .globals
                    .get(n)
                    .is_none_or(|id| !self.specials.contains_key(id))
            })
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// Phase (b), part 2: record the answers for `names` (same order).
    /// Every missing non-weak name is reported in one error with the objects
    /// referencing it.
    pub fn resolve_externals(
        &mut self,
        names: &[&str],
        answers: &[Option<u64>],
    ) -> Result<(), LinkError> {
        let answers: Vec<(SymbolId, Option<u64>)> = names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let &id = self.graph.globals.get(*name)?;
                Some((id, answers.get(i).copied().flatten()))
            })
            .collect();
        self.resolve_external_ids(&answers)
    }

    /// Records that the externals `ids` are data, not code (the resolver
    /// knows; the relocations do not). Non-PIE code that cannot reach one
    /// defined in JIT memory then fails to link, naming it, instead of
    /// being pointed at a PLT stub as a function would be.
    pub fn mark_data_externals(&mut self, ids: impl IntoIterator<Item = SymbolId>) {
        self.jit_data.extend(ids);
    }

    /// The error for non-PIE code of this image referring to data `sym` of
    /// another image out of its 32-bit reach: names the first such place.
    fn data_out_of_reach(&self, sym: SymbolId) -> LinkError {
        let g = &self.graph;
        let place = g.blocks.iter().filter(|b| b.live).find_map(|b| {
            let e = b.edges.iter().find(|e| {
                e.target == sym
                    && matches!(
                        e.kind,
                        EdgeKind::Delta32 | EdgeKind::Pointer32 | EdgeKind::Pointer32Signed
                    )
            })?;
            Some((b, e))
        });
        let (object, section, offset, reloc) = match place {
            Some((b, e)) => (
                g.object_name(b.object).to_string(),
                b.input_section.to_string(),
                b.input_offset + u64::from(e.offset),
                reloc_name(e.r_type).unwrap_or("R_X86_64_32"),
            ),
            None => (String::new(), String::new(), 0, "R_X86_64_32"),
        };
        LinkError::DataOutOfReach {
            object,
            section,
            offset,
            reloc,
            symbol: g.symbol_name(sym),
        }
    }

    /// Phase (b), part 2, by id: record the address of each external
    /// (`None`: not found). Every missing non-weak one is reported in one
    /// error with the objects referencing it.
    pub fn resolve_external_ids(
        &mut self,
        answers: &[(SymbolId, Option<u64>)],
    ) -> Result<(), LinkError> {
        let mut missing = Vec::new();
        for &(id, answer) in answers {
            let Some(sym) = self.graph.symbols.get(id.index()) else {
                continue;
            };
            match answer {
                Some(addr) => {
                    self.externals.insert(id, addr);
                }
                None if sym.weak_ref => {
                    self.externals.insert(id, 0);
                }
                None => missing.push(self.graph.symbol_name(id)),
            }
        }
        if !missing.is_empty() {
            // Only now find who references them (a second walk over the edges).
            let refs: HashMap<Box<str>, Vec<crate::graph::ObjectId>> =
                self.graph.undefined_names().into_iter().collect();
            let mut missing: Vec<(String, Vec<String>)> = missing
                .into_iter()
                .map(|name| {
                    let objs = refs
                        .get(name.as_str())
                        .map(|objs| {
                            objs.iter()
                                .map(|o| self.graph.object_name(Some(*o)).to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    (name, objs)
                })
                .collect();
            missing.sort();
            return Err(LinkError::MissingSymbols { missing });
        }
        Ok(())
    }

    fn symbol_address(&self, id: SymbolId) -> u64 {
        let g = &self.graph;
        let s = &g.symbols[id.index()];
        match s.def {
            SymbolDef::Defined { block, offset } => {
                g.blocks[block.index()].addr.wrapping_add(offset)
            }
            SymbolDef::Absolute(v) => v,
            SymbolDef::External => {
                if let Some(sp) = self.specials.get(&id) {
                    return match *sp {
                        Special::DsoHandle => self.dso_handle(),
                        Special::TlsModuleBase => 0,
                        Special::GlobalOffsetTable => self.got_base(),
                        Special::Start(sec) | Special::Stop(sec) => {
                            let live: Vec<&Block> = g.sections[sec.index()]
                                .blocks
                                .iter()
                                .map(|b| &g.blocks[b.index()])
                                .filter(|b| b.live)
                                .collect();
                            let start = live.first().map_or(0, |b| b.addr);
                            let end = live.last().map_or(0, |b| b.addr + b.content.len());
                            if matches!(sp, Special::Start(_)) {
                                start
                            } else {
                                end
                            }
                        }
                    };
                }
                self.externals.get(&id).copied().unwrap_or(0)
            }
            SymbolDef::Common { .. } | SymbolDef::Discarded => 0,
        }
    }

    fn got_base(&self) -> u64 {
        self.got_block
            .map_or(0, |b| self.graph.blocks[b.index()].addr)
    }

    /// Phase (c): write GOT and PLT, fix up every live block (in parallel
    /// for large graphs), copy into memory, set final protections.
    pub fn finalize(self, env: &ImageEnv, options: &LinkOptions) -> Result<Finalized, LinkError> {
        Ok(self.finalize_returning_graph(env, options)?.0)
    }

    /// [`Prepared::finalize`], handing the graph back (unless
    /// [`LinkOptions::keep_graph`] put it in [`Finalized::graph`]) instead of
    /// freeing it: freeing a big graph takes milliseconds, which the engine
    /// layer spends after the image is emitted.
    pub fn finalize_returning_graph(
        mut self,
        env: &ImageEnv,
        options: &LinkOptions,
    ) -> Result<(Finalized, Option<LinkGraph>), LinkError> {
        let fixup_start = Instant::now();
        // The TLS module fixes module id and thread-pointer offset before fixup.
        let tls_module = match (self.tls.memsz > 0, env.tls_placement) {
            (true, Some(placement)) => Some(
                runtime::tls::TlsModule::new(
                    &env.name,
                    self.tls.memsz as usize,
                    self.tls.align as usize,
                    placement,
                )
                .map_err(|e| LinkError::Tls {
                    detail: format!("{e} ({})", largest_tls_inputs(&self.graph)),
                })?,
            ),
            _ => None,
        };
        let tls = tls_module.as_ref();
        let g = &self.graph;
        // Final value of every symbol, computed once.
        let mut addrs: Vec<u64> = (0..g.symbols.len())
            .map(|i| self.symbol_address(SymbolId(i as u32)))
            .collect();
        // Redirect host symbols that 32-bit references cannot reach (chosen
        // by `out_of_reach_host_symbols`, checked again now that the
        // addresses are resolved): data to its copy (snapshotted now),
        // functions to their PLT stub.
        let plt_base = self.plt_block.map_or(0, |b| g.blocks[b.index()].addr);
        let (base, len, low) = (self.alloc.base(), self.alloc.len(), self.low);
        // Out of reach of some place of this image for a 32-bit field.
        let far = |host: u64| {
            (low && host >= 1 << 31) || host.abs_diff(base).saturating_add(len) >= 1 << 31
        };
        let mut snapshots = Vec::new();
        for (&sym, &block) in &self.copy_blocks {
            let host = addrs[sym.index()];
            if host != 0 && far(host) {
                if crate::memory::in_jit_memory(host) {
                    // The name is the host's, the definition another
                    // image's: a snapshot of JIT data would fork it.
                    return Err(self.data_out_of_reach(sym));
                }
                snapshots.push((block, host));
                addrs[sym.index()] = g.blocks[block.index()].addr;
            }
        }
        // GOT entries hold the real addresses; only edges see the stubs.
        let got_addrs = addrs.clone();
        for &sym in &self.reach_stubs {
            let host = addrs[sym.index()];
            if far(host)
                && let Some(&off) = self.plt.get(&sym)
            {
                if self.jit_data.contains(&sym) && crate::memory::in_jit_memory(host) {
                    // Another image's data: a stub's bytes are no stand-in.
                    return Err(self.data_out_of_reach(sym));
                }
                addrs[sym.index()] = plt_base + off;
            }
        }
        for (block, host) in snapshots {
            if let Content::Bytes(v) = &mut self.graph.blocks[block.index()].content {
                // SAFETY: `host` is the address the resolver gave for a host
                // data symbol whose dynamic symbol table entry says it has
                // `v.len()` bytes; it is mapped readable while its library is loaded.
                let src = unsafe { std::slice::from_raw_parts(host as *const u8, v.len()) };
                v.copy_from_slice(src);
            }
        }
        let g = &self.graph;
        let got_base = self.got_base();
        let tp_offset = |sym: SymbolId, g: &LinkGraph, reloc: &str| -> Result<i64, LinkError> {
            let module = tls.ok_or_else(|| no_tls(g, sym))?;
            module
                .static_tp_offset(
                    addrs[sym.index()],
                    &g.symbol_name(sym),
                    g.object_name(g.symbols[sym.index()].object),
                    reloc,
                )
                .map_err(|e| LinkError::Tls {
                    detail: e.to_string(),
                })
        };
        // GOT contents.
        if let Some(gb) = self.got_block {
            let mut got_bytes = vec![0u8; g.blocks[gb.index()].content.len() as usize];
            for (&key, &off) in &self.got {
                let off = off as usize;
                let mut put = |at: usize, v: u64| {
                    got_bytes[off + at..off + at + 8].copy_from_slice(&v.to_le_bytes());
                };
                match key {
                    GotKey::Addr(s) => put(0, got_addrs[s.index()]),
                    GotKey::TlsGd(s) | GotKey::TlsDesc(s) | GotKey::TpOff(s)
                        if g.symbols[s.index()].def == SymbolDef::External
                            && !self.specials.contains_key(&s) =>
                    {
                        return Err(LinkError::Tls {
                            detail: format!(
                                "thread-local `{}` (used by {}) is not defined in this link; kiln resolves TLS variables only within one image",
                                g.symbol_name(s),
                                users(g, |e| e.target == s)
                            ),
                        });
                    }
                    GotKey::TpOff(s) => put(0, tp_offset(s, g, "R_X86_64_GOTTPOFF")? as u64),
                    GotKey::TlsGd(s) => {
                        let p = tls.ok_or_else(|| no_tls(g, s))?;
                        put(0, p.module_id());
                        put(8, addrs[s.index()]);
                    }
                    GotKey::TlsLd => {
                        let p = tls.ok_or_else(|| LinkError::Tls {
                            detail: format!(
                                "local-dynamic TLS used (by {}) but no TLS support was provided",
                                users(g, |e| e.kind == EdgeKind::TlsLd)
                            ),
                        })?;
                        put(0, p.module_id());
                        put(8, 0);
                    }
                    GotKey::TlsDesc(s) => {
                        let p = tls.ok_or_else(|| no_tls(g, s))?;
                        let d = p.tlsdesc(addrs[s.index()]).map_err(|e| LinkError::Tls {
                            detail: format!(
                                "`{}` (used by {}): {e}",
                                g.symbol_name(s),
                                users(g, |e| e.target == s)
                            ),
                        })?;
                        put(0, d.resolver as u64);
                        put(8, d.argument as u64);
                    }
                }
            }
            self.graph.blocks[gb.index()].content = Content::Bytes(got_bytes);
        }
        // PLT stubs.
        if let Some(pb) = self.plt_block {
            let stub_base = self.graph.blocks[pb.index()].addr;
            let mut bytes = vec![0xccu8; self.plt.len() * PLT_STUB_SIZE];
            for (&sym, &off) in &self.plt {
                let entry = got_base + self.got[&GotKey::Addr(sym)];
                let mut stub = [0u8; PLT_STUB_SIZE];
                reloc::write_plt_stub(&mut stub, stub_base + off, entry).map_err(|source| {
                    LinkError::Fixup {
                        object: "<linker>".into(),
                        section: "$__STUBS".into(),
                        offset: off,
                        reloc: "PltStub",
                        symbol: self.graph.symbol_name(sym),
                        source: Box::new(source),
                        hint: None,
                    }
                })?;
                bytes[off as usize..off as usize + PLT_STUB_SIZE].copy_from_slice(&stub);
            }
            self.graph.blocks[pb.index()].content = Content::Bytes(bytes);
        }

        // TP offsets needed by TPOFF edges, computed before the parallel part.
        let mut tpoffs: FxHashMap<SymbolId, i64> = FxHashMap::default();
        let has_tls = self.graph.symbols.iter().any(|s| s.tls);
        for b in self.graph.blocks.iter().filter(|b| b.live && has_tls) {
            for e in &b.edges {
                if matches!(e.kind, EdgeKind::TpOff32 | EdgeKind::TpOff64)
                    && !tpoffs.contains_key(&e.target)
                {
                    let v = tp_offset(
                        e.target,
                        &self.graph,
                        reloc_name(e.r_type).unwrap_or("TPOFF"),
                    )?;
                    tpoffs.insert(e.target, v);
                }
            }
        }

        let edge_count: usize = self.graph.blocks.iter().map(|b| b.edges.len()).sum();
        // Each live block's bytes are copied into the image and fixed up
        // there, block by block (in parallel for large graphs): one copy,
        // no intermediate buffers.
        let base = self.alloc.base();
        let g = &self.graph;
        // In address order: the layout's order, with the TLS image's blocks
        // put in their place.
        let tls_data = g
            .sections
            .iter()
            .filter(|s| s.role == SectionRole::TlsData)
            .flat_map(|s| s.blocks.iter().copied());
        let mut places: Vec<(usize, usize)> = Vec::with_capacity(self.placed.len());
        let mut total_bytes = 0usize;
        for b in self.placed.iter().copied().chain(tls_data) {
            let block = &g.blocks[b.index()];
            let Some(v) = block.content.bytes() else {
                continue;
            };
            if !block.live || v.is_empty() {
                continue;
            }
            let at = match g.sections[block.section.index()].role {
                SectionRole::TlsData => self.tls.image_addr - base + block.addr,
                _ => block.addr - base,
            };
            total_bytes += v.len();
            places.push((at as usize, b.index()));
        }
        if !places.is_sorted() {
            places.sort_unstable();
        }
        let not_writable = || LinkError::Memory {
            detail: format!("{}: the image's memory is not writable", env.name),
            source: std::io::Error::other("bad memory state"),
        };
        let mem = self.alloc.bytes_mut().ok_or_else(not_writable)?;
        // Disjoint slices of the image, one per block, in address order.
        let layout_bug = |i: usize| LinkError::Memory {
            detail: format!(
                "block {i} of {} does not fit the image's layout (linker bug)",
                g.object_name(g.blocks[i].object)
            ),
            source: std::io::Error::other("overlapping or out-of-range block"),
        };
        let mut slots: Vec<(usize, &mut [u8])> = Vec::with_capacity(places.len());
        let mut rest: &mut [u8] = mem;
        let mut next = 0usize;
        for &(at, i) in &places {
            let len = g.blocks[i].content.len() as usize;
            let skip = at.checked_sub(next).ok_or_else(|| layout_bug(i))?;
            if skip.saturating_add(len) > rest.len() {
                return Err(layout_bug(i));
            }
            let (slot, tail) = std::mem::take(&mut rest)[skip..].split_at_mut(len);
            rest = tail;
            next = at + len;
            slots.push((i, slot));
        }
        // Fixups.
        let ctx = FixupCtx {
            graph: g,
            addrs: &addrs,
            got: &self.got,
            got_base,
            plt: &self.plt,
            plt_base,
            tpoffs: &tpoffs,
            imaging: options.imaging,
        };
        let ctx_ref = &ctx;
        let run = |(i, slot): &mut (usize, &mut [u8])| {
            let block = &g.blocks[*i];
            match block.content.bytes() {
                Some(v) if v.len() == slot.len() => slot.copy_from_slice(v),
                _ => return Err(layout_bug(*i)),
            }
            // An FDE's CIE pointer follows the new layout.
            if let Some(f) = block.fde {
                let cie_addr = g.blocks[f.cie.index()].addr;
                let ptr = (block.addr + 4)
                    .checked_sub(cie_addr)
                    .and_then(|d| u32::try_from(d).ok());
                let (Some(ptr), Some(field)) = (ptr, slot.get_mut(4..8)) else {
                    return Err(LinkError::malformed(
                        g.object_name(block.object),
                        format!(
                            ".eh_frame offset {:#x}: FDE placed before its CIE",
                            block.input_offset
                        ),
                    ));
                };
                field.copy_from_slice(&ptr.to_le_bytes());
            }
            if block.edges.is_empty() {
                Ok(())
            } else {
                ctx_ref.fix_block(*i, slot)
            }
        };
        let parallel =
            edge_count >= options.parallel_threshold || total_bytes >= PARALLEL_COPY_BYTES;
        let results: Vec<Result<(), LinkError>> = if parallel {
            slots.par_iter_mut().map(run).collect()
        } else {
            slots.iter_mut().map(run).collect()
        };
        results.into_iter().collect::<Result<(), LinkError>>()?;

        // A kept graph holds the relocated bytes.
        let relocated: Vec<(usize, Vec<u8>)> = if options.keep_graph {
            slots.iter().map(|(i, slot)| (*i, slot.to_vec())).collect()
        } else {
            Vec::new()
        };
        drop(slots);
        for (i, bytes) in relocated {
            self.graph.blocks[i].content = Content::Bytes(bytes);
        }
        let mem = self.alloc.bytes_mut().ok_or_else(not_writable)?;
        if let Some((start, len)) = self.eh_frame {
            let off = (start + len - 4 - base) as usize;
            mem[off..off + 4].fill(0);
            let records = &mem[(start - base) as usize..off];
            check_eh_frame(&self.graph, start, records)?;
        }

        let init_fini = collect_init_fini(&self.graph, mem, base);
        if let Some(module) = &tls_module {
            let start = (self.tls.image_addr.saturating_sub(base)) as usize;
            let tdata = &mem[start..start + self.tls.filesz as usize];
            module.initialize(tdata).map_err(|e| LinkError::Tls {
                detail: e.to_string(),
            })?;
        }
        let symbols: HashMap<Box<str>, u64> = if !options.symbol_table {
            HashMap::new()
        } else {
            self.graph
                .globals
                .iter()
                .filter_map(|(n, &id)| {
                    let s = &self.graph.symbols[id.index()];
                    match s.def {
                        SymbolDef::Defined { block, .. }
                            if self.graph.blocks[block.index()].live =>
                        {
                            Some((n.clone(), addrs[id.index()]))
                        }
                        SymbolDef::Absolute(v) => Some((n.clone(), v)),
                        _ => None,
                    }
                })
                .collect()
        };
        let fixed = Instant::now();
        self.prefault.wait();
        let imaging = if options.imaging {
            let mem = self.alloc.bytes_mut().ok_or_else(not_writable)?;
            let got_slots: Vec<(u64, SymbolId)> = self
                .got
                .iter()
                .filter_map(|(k, &off)| match *k {
                    GotKey::Addr(s) => Some((got_base + off, s)),
                    _ => None,
                })
                .collect();
            Some(Box::new(crate::image_file::classify::record(
                crate::image_file::classify::Linked {
                    graph: &self.graph,
                    addrs: &addrs,
                    got_slots,
                    base,
                    memory: mem,
                    segments: &self.segments,
                    eh_frame: self.eh_frame,
                    init_fini: &init_fini,
                    is_special: &|id| self.specials.contains_key(&id),
                    resolved: &|id| self.externals.get(&id).copied().unwrap_or(0),
                },
            )?))
        } else {
            None
        };
        self.alloc.finalize(&self.segments)?;
        let stats = LinkStats {
            objects: self.graph.objects.len(),
            blocks: self.graph.blocks.iter().filter(|b| b.live).count(),
            symbols: self.graph.symbols.len(),
            relocations: edge_count,
            got_entries: self.got.len(),
            plt_stubs: self.plt.len(),
            bytes: self.alloc.len(),
            timings: PhaseTimings {
                fixup: fixed - fixup_start,
                finalize: fixed.elapsed(),
                ..PhaseTimings::default()
            },
        };
        let dso_handle = self.dso_handle();
        let debug = self.announce(env, options)?;
        let (kept, graph) = if options.keep_graph {
            (Some(self.graph), None)
        } else {
            (None, Some(self.graph))
        };
        Ok((
            Finalized {
                alloc: self.alloc,
                symbols,
                eh_frame: self.eh_frame,
                init_fini,
                tls: self.tls,
                dso_handle,
                tls_module,
                stats,
                graph: kept,
                imaging,
                debug,
            },
            graph,
        ))
    }

    /// Tells debuggers and profilers about the finalized image, as
    /// [`LinkOptions::debug`] asks (nothing at all by default).
    fn announce(
        &self,
        env: &ImageEnv,
        options: &LinkOptions,
    ) -> Result<Option<crate::debug::DebugRegistration>, LinkError> {
        if !options.debug.any() {
            return Ok(None);
        }
        let plt_base = self
            .plt_block
            .map_or(0, |b| self.graph.blocks[b.index()].addr);
        let extra = self
            .plt
            .iter()
            .map(|(&sym, &off)| crate::debug::ImageSymbol {
                name: format!("kiln-plt:{}", self.graph.symbol_name(sym)).into(),
                addr: plt_base + off,
                size: PLT_STUB_SIZE as u64,
                code: true,
                local: true,
            })
            .collect();
        let info = crate::debug::ImageInfo {
            name: &env.name,
            graph: &self.graph,
            eh_frame: self.eh_frame,
            extra,
        };
        crate::debug::register_image(&info, &options.debug).map_err(|source| LinkError::Debug {
            image: env.name.clone(),
            source,
        })
    }
}

/// A memory error for an image of `graph`, naming the largest block's
/// object and section: a corrupt size there is the likely cause.
fn blame_largest_block(graph: &LinkGraph, e: LinkError) -> LinkError {
    let LinkError::Memory { detail, source } = e else {
        return e;
    };
    let largest = graph
        .blocks
        .iter()
        .filter(|b| b.live)
        .max_by_key(|b| b.content.len());
    let detail = match largest {
        Some(b) => format!(
            "{detail} (largest input: {} section {}, {:#x} bytes)",
            graph.object_name(b.object),
            b.input_section,
            b.content.len()
        ),
        None => detail,
    };
    LinkError::Memory { detail, source }
}

/// Check the image's relocated `.eh_frame` (`records`, placed at `start`)
/// as the unwinder will read it, and blame a defect on the input record
/// where it lies (or, in padding, on the record after it): the image as a
/// whole is no culprit.
fn check_eh_frame(g: &LinkGraph, start: u64, records: &[u8]) -> Result<(), LinkError> {
    let (offset, reason) = match runtime::eh_frame::validate(records) {
        Ok(()) => return Ok(()),
        Err(runtime::RuntimeError::BadEhFrame { offset, reason, .. }) => (offset, reason),
        Err(e) => {
            return Err(LinkError::Runtime {
                detail: e.to_string(),
            });
        }
    };
    let at = start + offset as u64;
    let culprit = g
        .sections
        .iter()
        .filter(|s| s.role == SectionRole::EhFrame)
        .flat_map(|s| s.blocks.iter())
        .map(|b| &g.blocks[b.index()])
        .filter(|b| b.live && b.addr + b.content.len() > at)
        .min_by_key(|b| b.addr);
    let Some(b) = culprit else {
        return Err(LinkError::malformed(
            "<linker>",
            format!(".eh_frame offset {offset:#x} of the image: {reason}"),
        ));
    };
    let place = if b.addr <= at {
        format!("offset {:#x}", b.input_offset + (at - b.addr))
    } else {
        format!("padding before the record at offset {:#x}", b.input_offset)
    };
    Err(LinkError::malformed(
        g.object_name(b.object),
        format!(
            "section {} {place}: {reason} (in the image's .eh_frame)",
            b.input_section
        ),
    ))
}

/// The objects whose live blocks have an edge `pick` accepts, sorted and
/// joined (for errors about those objects: this scans the whole graph).
fn users(g: &LinkGraph, pick: impl Fn(&Edge) -> bool) -> String {
    let mut objects: Vec<&str> = g
        .blocks
        .iter()
        .filter(|b| b.live && b.edges.iter().any(&pick))
        .map(|b| g.object_name(b.object))
        .collect();
    objects.sort_unstable();
    objects.dedup();
    objects.join(", ")
}

/// The TLS inputs that size and align the image's TLS block: the largest
/// and the most aligned (for an error about the block's layout).
fn largest_tls_inputs(g: &LinkGraph) -> String {
    let tls = g
        .sections
        .iter()
        .filter(|s| matches!(s.role, SectionRole::TlsData | SectionRole::TlsBss))
        .flat_map(|s| s.blocks.iter())
        .map(|b| &g.blocks[b.index()])
        .filter(|b| b.live);
    let describe = |b: &Block| {
        format!(
            "{} section {}, {:#x} bytes, align {}",
            g.object_name(b.object),
            b.input_section,
            b.content.len(),
            b.align
        )
    };
    let largest = tls.clone().max_by_key(|b| b.content.len());
    let aligned = tls.max_by_key(|b| b.align);
    match (largest, aligned) {
        (Some(l), Some(a)) if std::ptr::eq(l, a) => format!("largest TLS input: {}", describe(l)),
        (Some(l), Some(a)) => format!(
            "largest TLS input: {}; most aligned: {}",
            describe(l),
            describe(a)
        ),
        _ => "no TLS input".into(),
    }
}

fn no_tls(g: &LinkGraph, s: SymbolId) -> LinkError {
    LinkError::Tls {
        detail: format!(
            "`{}` ({}): no TLS support was provided to this link",
            g.symbol_name(s),
            g.object_name(g.symbols[s.index()].object)
        ),
    }
}

impl Edge {
    fn dummy() -> Edge {
        Edge {
            offset: 0,
            kind: EdgeKind::None,
            r_type: 0,
            target: SymbolId(0),
            addend: 0,
        }
    }
}

struct FixupCtx<'a> {
    graph: &'a LinkGraph,
    addrs: &'a [u64],
    got: &'a FxHashMap<GotKey, u64>,
    got_base: u64,
    plt: &'a FxHashMap<SymbolId, u64>,
    plt_base: u64,
    tpoffs: &'a FxHashMap<SymbolId, i64>,
    /// Imaging mode: host symbols only through their slots.
    imaging: bool,
}

impl FixupCtx<'_> {
    fn fix_block(&self, index: usize, bytes: &mut [u8]) -> Result<(), LinkError> {
        let block = &self.graph.blocks[index];
        for e in &block.edges {
            self.fix_edge(block, e, bytes).map_err(|(source, hint)| {
                let (reloc, symbol) = (
                    reloc_name(e.r_type).unwrap_or(kind_name(e.kind)),
                    self.graph.symbol_name(e.target),
                );
                LinkError::Fixup {
                    object: self.graph.object_name(block.object).to_string(),
                    section: block.input_section.to_string(),
                    offset: block.input_offset + u64::from(e.offset),
                    reloc,
                    symbol,
                    source: Box::new(source),
                    hint,
                }
            })?;
        }
        Ok(())
    }

    fn got_entry(&self, key: GotKey) -> Result<u64, (FixupError, Option<&'static str>)> {
        self.got.get(&key).map(|o| self.got_base + o).ok_or((
            FixupError::BadInstruction {
                reloc: "GOT",
                detail: "no GOT entry was created for this edge (linker bug)",
            },
            None,
        ))
    }

    fn fix_edge(
        &self,
        block: &Block,
        e: &Edge,
        bytes: &mut [u8],
    ) -> Result<(), (FixupError, Option<&'static str>)> {
        // The symbol itself (64 bytes, a cache miss for most edges) is read
        // only by the kinds that need more than its address.
        let sym = || -> &Symbol { &self.graph.symbols[e.target.index()] };
        let s = self.addrs[e.target.index()];
        let place = block.addr.wrapping_add(u64::from(e.offset));
        let mut v = FixupValues {
            place,
            target: s,
            addend: e.addend,
            got: self.got_base,
            size: match e.kind {
                EdgeKind::Size32 | EdgeKind::Size64 => sym().size,
                _ => 0,
            },
        };
        let mut kind = e.kind;
        let mut offset = u64::from(e.offset);
        match e.kind {
            EdgeKind::Branch32 => {
                if (self.imaging || !in_reach(place, s, e.addend))
                    && let Some(off) = self.plt.get(&e.target)
                {
                    v.target = self.plt_base + off;
                }
            }
            EdgeKind::GotLoadRelaxable { rex } => {
                let direct = !sym().tls
                    && s != 0
                    && in_reach(place, s, e.addend)
                    && !(self.imaging && sym().def == SymbolDef::External);
                let relaxed = if direct {
                    reloc::relax_got_load(bytes, u64::from(e.offset), rex)
                        .map_err(|err| (err, None))?
                } else {
                    None
                };
                match relaxed {
                    Some(Relaxed::MovToLea | Relaxed::CallToDirect) => kind = EdgeKind::Delta32,
                    Some(Relaxed::JmpToDirect) => {
                        kind = EdgeKind::Delta32;
                        offset -= 1;
                        v.place -= 1;
                    }
                    None => {
                        kind = EdgeKind::GotDelta32;
                        v.target = self.got_entry(GotKey::Addr(e.target))?;
                    }
                }
            }
            EdgeKind::GotDelta32 | EdgeKind::GotDelta64 | EdgeKind::GotOffsetOfEntry64 => {
                v.target = self.got_entry(GotKey::Addr(e.target))?;
            }
            EdgeKind::TlsGd => v.target = self.got_entry(GotKey::TlsGd(e.target))?,
            EdgeKind::TlsLd => v.target = self.got_entry(GotKey::TlsLd)?,
            EdgeKind::GotTpOff => v.target = self.got_entry(GotKey::TpOff(e.target))?,
            EdgeKind::TlsDescGot => v.target = self.got_entry(GotKey::TlsDesc(e.target))?,
            EdgeKind::TpOff32 | EdgeKind::TpOff64 => {
                let Some(&off) = self.tpoffs.get(&e.target) else {
                    return Err((
                        FixupError::BadInstruction {
                            reloc: kind_name(e.kind),
                            detail: "the target is not a thread-local variable of this image",
                        },
                        None,
                    ));
                };
                v.target = off as u64;
            }
            _ => {}
        }
        reloc::apply(kind, bytes, offset, &v).map_err(|err| {
            let hint = match (e.kind, sym().def) {
                (EdgeKind::Pointer32 | EdgeKind::Pointer32Signed, _) => {
                    Some("non-PIE code must be placed below 2 GiB; compile with -fPIE or -fPIC")
                }
                (EdgeKind::Delta32, SymbolDef::External) => Some(
                    "a host data symbol is out of ±2 GiB reach of PC-relative code; compile with -fPIC so it goes through the GOT",
                ),
                _ => None,
            };
            (err, hint)
        })
    }
}

/// Initializer and finalizer sections, in link order (objects in the order
/// added, sections in file order), with their fixed-up entries.
fn collect_init_fini(g: &LinkGraph, image: &[u8], base: u64) -> Vec<(Box<str>, Vec<usize>)> {
    g.blocks
        .iter()
        .filter(|b| b.live && g.sections[b.section.index()].role.is_init_fini())
        .map(|b| {
            let start = (b.addr - base) as usize;
            // Relocated: read back from the image.
            let entries = match b.content.bytes() {
                Some(v) => image
                    .get(start..start + v.len())
                    .unwrap_or_default()
                    .chunks_exact(8)
                    .map(|c| {
                        u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                            as usize
                    })
                    .collect(),
                None => Vec::new(),
            };
            (Box::from(&*b.input_section), entries)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Block, Content};

    /// An image `.eh_frame` of three objects' records, the third with a
    /// zero word inside: the error names that object and the offset in its
    /// own `.eh_frame`, whatever the first object is.
    #[test]
    fn a_bad_image_eh_frame_blames_the_record_s_object() {
        let mut g = LinkGraph::new();
        let section = g.section(".eh_frame", Prot::Read, SectionRole::EhFrame);
        let start = 0x1000u64;
        let mut image = Vec::new();
        for (name, record) in [
            ("driver.o", vec![4u8, 0, 0, 0, 0, 0, 0, 0]),
            ("lib.o", vec![4, 0, 0, 0, 0, 0, 0, 0]),
            // Input offset 8 of culprit.o: length 0 where a record begins.
            ("culprit.o", vec![0, 0, 0, 0, 0, 0, 0, 0]),
        ] {
            let object = g.add_object(name);
            g.add_block(Block {
                section,
                object: Some(object),
                input_section: ".eh_frame".into(),
                input_offset: 8,
                content: Content::Bytes(record.clone()),
                align: 4,
                edges: Vec::new(),
                fde: None,
                live: true,
                addr: start + image.len() as u64,
            });
            image.extend_from_slice(&record);
        }
        let err = check_eh_frame(&g, start, &image)
            .expect_err("a zero length word inside is refused")
            .to_string();
        assert!(
            err.starts_with("culprit.o: section .eh_frame offset 0x8:")
                && err.contains("zero length"),
            "{err}"
        );
        assert!(check_eh_frame(&g, start, &image[..16]).is_ok());
    }
}
