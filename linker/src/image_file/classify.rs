//! Imaging mode: what each fixup of an image needs when the image is loaded
//! at another address in another process.
//!
//! - inside the image, PC-relative (or GOT-relative): nothing — the image's
//!   layout is kept as one block;
//! - inside the image, absolute (`R_X86_64_64`, a GOT entry of an own
//!   symbol): a *rebase* of the word, which must not be in text;
//! - to a host or runtime symbol: an *import* by name into a slot (its GOT
//!   entry; calls go through PLT stubs reading it) or, for a pointer in
//!   data, into the word itself;
//! - to an address inside an image of the [registry](super::registry)
//!   (loaded from a file or saved in this process): an import of (that
//!   image's build id, offset) — no name — in the same places;
//! - to an entry of the [host table](super::host_table) (same name, same
//!   address): an import of its index, no name;
//! - thread-local storage: the template's initial image is part of the
//!   image (its pointers rebased); module ids, TLSDESC descriptors and
//!   initial-exec GOT entries are slots bound at load from a TLS module made
//!   for that load; local-exec code keeps its thread-pointer offsets, so the
//!   image records the static TLS range they point into (see
//!   [`super::format`]): in kiln's area, or for an image of another ISA in
//!   the C loader's ([`super::tls::foreign_area`]);
//! - anything else — absolute 32-bit addresses (`-fno-pie`), absolute
//!   addresses in text, PC-relative references to host symbols — is
//!   refused with the relocation named.

use kiln_arch::{EdgeDesc, EdgeForm, EdgeId, EdgeTarget};

use crate::error::LinkError;
use crate::graph::{Block, Edge, LinkGraph, Prot, Scope, SectionRole, SymbolDef, SymbolId};

use super::format::{self, TlsHeader};
use super::host_table::{self, HostTable};
use super::{ImageDependency, ImagingRecord, registry};

/// An import: a word of the image that gets a host symbol's address (plus
/// `addend`) at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Import {
    /// Offset of the 8-byte word in the image.
    pub(crate) offset: u64,
    pub(crate) name: String,
    pub(crate) addend: i64,
    /// A weak reference: 0 when nobody defines it.
    pub(crate) weak: bool,
    /// A slot (GOT entry) rather than a pointer in data.
    pub(crate) slot: bool,
    /// A 4-byte PC-relative field (`S + A - P`) rather than an 8-byte
    /// word: code reaching host data directly ([`format::IMPORT_PC32`]).
    pub(crate) pc32: bool,
    /// Into a dependency image: (its index in the record's `deps`, the
    /// offset in it); `name` is then empty.
    pub(crate) dep: Option<(u32, u64)>,
    /// An entry of the host table: its index; `name` is then empty.
    pub(crate) host: Option<u32>,
    /// A thread-local slot: its kind ([`format::TLS_MODULE_ID`]…) and the
    /// variable's offset in the TLS template; `name` is then empty.
    pub(crate) tls: Option<(u32, u64)>,
    /// The address the link bound it to (not saved): saving the pieces of
    /// many links as one image turns an import into another piece into a
    /// rebase ([`super::combine`]).
    pub(crate) target: u64,
}

/// A global the image defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Export {
    /// `start, len` of its name in the record's
    /// [`ImagingRecord::export_names`](super::ImagingRecord) (one string for
    /// every name, not an allocation each).
    pub(crate) name: (u32, u32),
    pub(crate) offset: u64,
    pub(crate) callable: bool,
    pub(crate) weak: bool,
    /// Default visibility (hidden globals are still defined, unexported).
    pub(crate) exported: bool,
}

/// Names the linker defines itself (resolved inside the image).
fn linker_defined(graph: &LinkGraph, name: &str) -> bool {
    matches!(name, "__dso_handle" | "_GLOBAL_OFFSET_TABLE_")
        || name
            .strip_prefix("__start_")
            .or_else(|| name.strip_prefix("__stop_"))
            .is_some_and(|s| graph.section_index.contains_key(s))
}

fn refuse(graph: &LinkGraph, block: &Block, e: &Edge, reason: &'static str) -> LinkError {
    LinkError::NotImageable {
        object: graph.object_name(block.object).to_string(),
        section: block.input_section.to_string(),
        offset: block.input_offset + u64::from(e.offset),
        reloc: e.kind.name,
        symbol: graph.symbol_name(e.target),
        reason,
    }
}

/// Blocks [`check_graph`] checks as one piece (on rayon's threads when a
/// graph has more than one piece).
const CHECK_CHUNK_BLOCKS: usize = 4096;

/// Refuses, before any memory is taken, every live fixup an image cannot
/// express; the error names object, section, offset and relocation (the
/// first such edge in block order). Large graphs are checked in pieces on
/// rayon's threads (the link's thread is the only busy one here: 5.8 M
/// instructions on the aarch64 synth input).
pub(crate) fn check_graph(graph: &LinkGraph) -> Result<(), LinkError> {
    // Absolute symbols are rare: without one, most edges are decided by
    // their kind alone, their symbol (a cache miss) never read.
    let any_absolute = graph
        .symbols
        .iter()
        .any(|s| matches!(s.def, SymbolDef::Absolute(_)));
    let check = |blocks: &[Block]| check_blocks(graph, blocks, any_absolute);
    if graph.blocks.len() <= CHECK_CHUNK_BLOCKS || graph.serial {
        return check(&graph.blocks);
    }
    use rayon::prelude::*;
    match graph
        .blocks
        .par_chunks(CHECK_CHUNK_BLOCKS)
        .find_map_first(|chunk| check(chunk).err())
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// [`check_graph`] for `blocks`, some of `graph`'s.
fn check_blocks(graph: &LinkGraph, blocks: &[Block], any_absolute: bool) -> Result<(), LinkError> {
    // Most edges are decided by their kind alone, looked up once a kind.
    let mut kinds = KindTable::new();
    for block in blocks.iter().filter(|b| b.live) {
        let section = &graph.sections[block.section.index()];
        for e in &block.edges {
            if !kinds.get(e.kind, |k| may_be_unexpressible(k, any_absolute)) {
                continue;
            }
            if let Some(reason) = unexpressible(graph, section.prot, e, any_absolute) {
                return Err(refuse(graph, block, e, reason));
            }
        }
    }
    Ok(())
}

/// A property of each edge kind, computed once a kind: a direct-mapped
/// cache keyed by the kind's [`EdgeId`], checked on each hit (an ISA's
/// kinds are consecutive rows: they take consecutive slots and do not
/// evict one another). Edges of different kinds alternate (`adrp`, `add`,
/// `bl`…): the previous edge's kind is no guide. On the aarch64 synth
/// input (341 k edges) [`check_graph`] went 8.0 → 5.8 M instructions.
struct KindTable<T: Copy> {
    slots: Vec<Option<(EdgeId, T)>>,
}

/// Slots of a [`KindTable`]: more than an ISA has kinds.
const KIND_SLOTS: usize = 256;

impl<T: Copy> KindTable<T> {
    fn new() -> Self {
        KindTable {
            slots: vec![None; KIND_SLOTS],
        }
    }

    #[inline]
    fn get(&mut self, kind: EdgeId, of: impl FnOnce(&EdgeDesc) -> T) -> T {
        let at = usize::from(kind.raw()) % KIND_SLOTS;
        let slot = &mut self.slots[at];
        match *slot {
            Some((k, v)) if k == kind => v,
            _ => {
                let v = of(&kind);
                *slot = Some((kind, v));
                v
            }
        }
    }
}

/// Whether [`unexpressible`] can refuse an edge of kind `k` in any section
/// and to any symbol: false for most (calls, PC-relative and page-offset
/// references, GOT loads) when the graph has no absolute symbol. Follows
/// `unexpressible`'s arms: each returns `None` unless its guard's part
/// that depends on the kind alone holds.
#[inline]
fn may_be_unexpressible(k: &EdgeDesc, any_absolute: bool) -> bool {
    match k.target {
        EdgeTarget::Symbol => {
            let narrow = !k.pc_relative
                && !k.uses_got_base
                && matches!(k.form, EdgeForm::Absolute { .. } | EdgeForm::AbsoluteInsn);
            let abs64 = k.width == 8 && !k.pc_relative && !k.uses_got_base;
            narrow || abs64 || k.uses_got_base || any_absolute
        }
        EdgeTarget::Branch => any_absolute,
        _ => false,
    }
}

/// Why edge `e` (in a section of `prot`) cannot be saved, if it cannot;
/// `any_absolute`: the graph has an absolute symbol.
fn unexpressible(
    graph: &LinkGraph,
    prot: Prot,
    e: &Edge,
    any_absolute: bool,
) -> Option<&'static str> {
    let sym = || &graph.symbols[e.target.index()];
    let host = || {
        let sym = sym();
        sym.def == SymbolDef::External
            && !sym
                .name
                .as_deref()
                .is_some_and(|n| linker_defined(graph, n))
    };
    let absolute = || any_absolute && matches!(sym().def, SymbolDef::Absolute(_));
    let k = e.kind.desc();
    match k.target {
        EdgeTarget::Symbol
            if !k.pc_relative
                && !k.uses_got_base
                && matches!(k.form, EdgeForm::Absolute { .. } | EdgeForm::AbsoluteInsn) =>
        {
            Some(
                "an absolute address narrower than 64 bits cannot be rebased at load (non-PIE code); compile with -fPIE or -fPIC",
            )
        }
        EdgeTarget::Symbol if e.is_abs64() && prot == Prot::ReadExec && !absolute() => Some(
            "an absolute address in text would have to be written at load; compile with -fPIE or -fPIC",
        ),
        // To another link's symbol (a hidden one, say) or the host's:
        // decided when the address is known ([`record`]).
        EdgeTarget::Symbol
            if (k.pc_relative || k.form == EdgeForm::PageOffset)
                && !k.uses_got_base
                && absolute() =>
        {
            Some(PC_RELATIVE_OUTSIDE)
        }
        EdgeTarget::Symbol if k.uses_got_base && (host() || absolute()) => {
            Some(PC_RELATIVE_OUTSIDE)
        }
        EdgeTarget::Branch if absolute() => {
            Some("a PC-relative call to an absolute address changes with each load")
        }
        _ => None,
    }
}

const PC_RELATIVE_OUTSIDE: &str = "a PC-relative reference to a symbol outside the image changes with each process; compile with -fPIE (clang) or -fPIC so it goes through the GOT";

/// Why a PC-relative reference into another link is refused when that
/// link's code is not saved in the same image.
pub(crate) const PC_RELATIVE_OTHER_LINK: &str = "a PC-relative reference to a symbol of another kiln link or image (a hidden one, or any with gcc -fPIE) can be saved only in one image with that link's code (ObjectLayer::save_image of their dylib); otherwise give the symbol default visibility and compile with -fPIC so it goes through the GOT";

/// A PC-relative reference to a symbol another link of this process
/// defined: saved only with that link's code, in one image
/// ([`super::combine`]), where the distance is fixed at save time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PcRelative {
    /// Offset of the place in the image.
    pub(crate) offset: u64,
    /// Bytes of the place (1, 2, 4 or 8), signed.
    pub(crate) size: u8,
    pub(crate) addend: i64,
    /// The symbol's address in this process.
    pub(crate) target: u64,
    /// The refusal, should the symbol's code not be saved with it.
    pub(crate) object: String,
    pub(crate) section: String,
    pub(crate) input_offset: u64,
    pub(crate) reloc: &'static str,
    pub(crate) symbol: String,
}

impl PcRelative {
    /// The error saving it without its target's code gives.
    pub(crate) fn refusal(&self) -> LinkError {
        LinkError::NotImageable {
            object: self.object.clone(),
            section: self.section.clone(),
            offset: self.input_offset,
            reloc: self.reloc,
            symbol: self.symbol.clone(),
            reason: PC_RELATIVE_OTHER_LINK,
        }
    }
}

/// Bytes of a PC-relative place holding `S + A - P` as a plain field.
/// Saving many links rewrites it as a little-endian field of this size
/// (`combine`): right for x86-64, the only ISA linked in-process today.
fn pc_relative_size(kind: &EdgeDesc) -> Option<u8> {
    let plain = kind.target == EdgeTarget::Symbol
        && kind.pc_relative
        && !kind.uses_got_base
        && matches!(kind.form, EdgeForm::Full | EdgeForm::PcRelative);
    (plain && matches!(kind.width, 1 | 2 | 4 | 8)).then_some(kind.width)
}

/// The PC-relative references of `block` to symbols outside the image: to
/// kiln's JIT memory (another link of this process, which may still be
/// finishing), kept for saving with it; a 4-byte field to the host's data
/// (gcc's x86-64 `-fPIE` reaches `stdout` so, assuming a copy relocation),
/// a PC32 import, bound by the loader; anything else refused.
fn pc_relative(
    l: &Linked<'_>,
    edges: &mut EdgeClasses,
    words: &mut Words,
    block: &Block,
    out: &mut Vec<PcRelative>,
) -> Result<(), LinkError> {
    let g = l.graph;
    for e in &block.edges {
        let Some(size) = edges.kind(e.kind).pc_relative else {
            continue;
        };
        if !matches!(edges.target(l, e.target), Target::Host) {
            continue;
        }
        let offset = block.addr + u64::from(e.offset) - l.base;
        let target = (l.resolved)(e.target);
        if !crate::memory::in_jit_memory(target) {
            // A weak reference nobody defines (0) has no address to reach.
            if size != 4 || target == 0 || g.symbols[e.target.index()].weak_ref {
                return Err(refuse(g, block, e, PC_RELATIVE_OUTSIDE));
            }
            let mut import = words.deps.import(l, e.target, offset, e.addend(), false);
            import.pc32 = true;
            words.imports.push(import);
            continue;
        }
        out.push(PcRelative {
            offset,
            size,
            addend: e.addend(),
            target,
            object: g.object_name(block.object).to_string(),
            section: block.input_section.to_string(),
            input_offset: block.input_offset + u64::from(e.offset),
            reloc: e.kind.name,
            symbol: g.symbol_name(e.target),
        });
    }
    Ok(())
}

/// What [`record`] reads from a finished link.
pub(crate) struct Linked<'a> {
    pub(crate) graph: &'a LinkGraph,
    /// Final address of every symbol.
    pub(crate) addrs: &'a [u64],
    /// Address of each GOT entry holding a symbol's address.
    pub(crate) got_slots: Vec<(u64, SymbolId)>,
    pub(crate) base: u64,
    /// The image's memory after fixup.
    pub(crate) memory: &'a mut [u8],
    /// Normalize the memory where it is instead of copying it (code for
    /// another ISA: it never runs here, so nothing writes it later).
    pub(crate) in_place: bool,
    pub(crate) segments: &'a [(u64, u64, Prot)],
    pub(crate) eh_frame: Option<(u64, u64)>,
    pub(crate) init_fini: &'a [(Box<str>, Vec<usize>)],
    pub(crate) is_special: &'a dyn Fn(SymbolId) -> bool,
    /// The symbols the linker defines (those `is_special` accepts).
    pub(crate) specials: Vec<SymbolId>,
    /// The address the resolver gave an external symbol (before any
    /// redirection to a stub).
    pub(crate) resolved: &'a dyn Fn(SymbolId) -> u64,
    /// Thread-local storage, if the image has a TLS module.
    pub(crate) tls: Option<LinkedTls>,
}

/// What [`record`] reads about an image's thread-locals.
pub(crate) struct LinkedTls {
    /// Address of the template's initial image (`.tdata`) in the image.
    pub(crate) image_addr: u64,
    pub(crate) image_size: u64,
    /// Template size and alignment.
    pub(crate) size: u64,
    pub(crate) align: u64,
    /// The module's static range (area offset), if static.
    pub(crate) area_offset: Option<usize>,
    /// GOT words bound at load: (address, kind, variable offset).
    pub(crate) slots: Vec<(u64, u32, u64)>,
}

/// Kinds of thread-local slots (the format's import index).
pub(crate) mod tls_slot {
    use super::format;
    pub(crate) const MODULE_ID: u32 = format::TLS_MODULE_ID;
    pub(crate) const TP_OFFSET: u32 = format::TLS_TP_OFFSET;
    pub(crate) const DESC_RESOLVER: u32 = format::TLS_DESC_RESOLVER;
    pub(crate) const DESC_ARGUMENT: u32 = format::TLS_DESC_ARGUMENT;
}

/// Whether an edge is a thread-local access (its target is a TLS offset,
/// not an address).
fn is_tls_edge(e: &Edge) -> bool {
    e.kind.target.is_tls()
}

/// The header's TLS fields and the slot imports for `l`: local-exec code
/// (thread-pointer offsets in the bytes) needs the same static range at
/// load; initial-exec slots need any static range.
fn tls_record(l: &Linked<'_>) -> Result<(TlsHeader, Vec<Import>), LinkError> {
    let Some(t) = &l.tls else {
        return Ok((TlsHeader::default(), Vec::new()));
    };
    let g = l.graph;
    let live_edges = || g.blocks.iter().filter(|b| b.live).flat_map(|b| &b.edges);
    let fixed = live_edges().any(|e| e.kind.target == EdgeTarget::TpOffset);
    let any = live_edges().any(|e| e.kind.target == EdgeTarget::TlsIeEntry);
    let mut h = TlsHeader {
        size: t.size,
        align: t.align.max(1),
        image_offset: t.image_addr.wrapping_sub(l.base),
        image_size: t.image_size,
        static_use: if fixed {
            format::STATIC_TLS_FIXED
        } else if any {
            format::STATIC_TLS_ANY
        } else {
            format::STATIC_TLS_NONE
        },
        ..TlsHeader::default()
    };
    if t.image_size == 0 {
        h.image_offset = 0;
    }
    if fixed && let Some((tp, size)) = super::tls::foreign_area(g.isa()) {
        // Another ISA's image: linked against the C loader's area, its
        // block at the start (`passes::fixup`).
        h.area_tp_offset = tp;
        h.area_size = size;
        h.area_offset = 0;
    } else if fixed {
        let (Some(area_offset), Ok(area)) = (
            t.area_offset,
            crate::runtime::tls::static_area::area_tp_offset(),
        ) else {
            return Err(LinkError::tls(
                "local-exec code in imaging mode needs kiln's static TLS area (linker bug: fixup succeeded without it)",
            ));
        };
        h.area_tp_offset = area;
        h.area_size = crate::runtime::tls::static_area_size() as u64;
        h.area_offset = area_offset as u64;
    }
    let imports = t
        .slots
        .iter()
        .map(|&(addr, kind, var)| Import {
            offset: addr - l.base,
            name: String::new(),
            addend: 0,
            weak: false,
            slot: true,
            pc32: false,
            dep: None,
            host: None,
            tls: Some((kind, var)),
            target: 0,
        })
        .collect();
    Ok((h, imports))
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Inside,
    Host,
    Constant,
}

/// What [`record`]'s pass over the edges asks of each: per kind, whether
/// it is a 64-bit absolute word or a plain PC-relative field; per symbol,
/// where its address lies
/// ([`Linked::target`], once a symbol, kept in a byte a symbol instead of
/// reading the 64-byte symbol again for each edge to it).
struct EdgeClasses {
    targets: Vec<Option<Target>>,
    /// Each edge kind's class, by [`EdgeId::raw`], filled as kinds are
    /// met: one load an edge instead of the descriptor's fields compared
    /// (twice per edge: [`pc_relative`] and [`Words::absolute`]).
    kinds: Vec<Option<KindClass>>,
}

#[derive(Debug, Clone, Copy)]
struct KindClass {
    /// [`Edge::is_abs64`].
    abs64: bool,
    /// [`pc_relative_size`].
    pc_relative: Option<u8>,
}

impl EdgeClasses {
    fn new(l: &Linked<'_>) -> Self {
        EdgeClasses {
            targets: vec![None; l.graph.symbols.len()],
            kinds: Vec::new(),
        }
    }

    #[inline]
    fn kind(&mut self, id: EdgeId) -> KindClass {
        match self.kinds.get(usize::from(id.raw())) {
            Some(&Some(c)) => c,
            _ => self.new_kind(id),
        }
    }

    /// [`EdgeClasses::kind`] of a kind not met before.
    #[inline(never)]
    fn new_kind(&mut self, id: EdgeId) -> KindClass {
        let c = Self::class_of(&id);
        let i = usize::from(id.raw());
        if self.kinds.len() <= i {
            self.kinds.resize(i + 1, None);
        }
        self.kinds[i] = Some(c);
        c
    }

    fn class_of(k: &EdgeDesc) -> KindClass {
        KindClass {
            abs64: k.target == EdgeTarget::Symbol
                && k.width == 8
                && !k.pc_relative
                && !k.uses_got_base,
            pc_relative: pc_relative_size(k),
        }
    }

    #[inline]
    fn target(&mut self, l: &Linked<'_>, id: SymbolId) -> Target {
        *self.targets[id.index()].get_or_insert_with(|| l.target(id))
    }
}

impl Linked<'_> {
    fn target(&self, id: SymbolId) -> Target {
        let s = &self.graph.symbols[id.index()];
        let inside = |a: u64| a.wrapping_sub(self.base) < self.memory.len() as u64;
        match s.def {
            SymbolDef::Defined { .. } => Target::Inside,
            SymbolDef::External if (self.is_special)(id) && inside(self.addrs[id.index()]) => {
                Target::Inside
            }
            SymbolDef::External if !(self.is_special)(id) => Target::Host,
            _ => Target::Constant,
        }
    }
}

impl Deps {
    /// The dependencies in order of first reference by `imports` (sorted
    /// by offset), so the table does not depend on hash order; renumbers
    /// the imports' indices.
    fn in_order_of(self, imports: &mut [Import]) -> Vec<ImageDependency> {
        let mut order: Vec<u32> = Vec::new();
        for i in imports.iter_mut() {
            if let Some((index, _)) = &mut i.dep {
                let new = match order.iter().position(|&o| o == *index) {
                    Some(p) => p,
                    None => {
                        order.push(*index);
                        order.len() - 1
                    }
                };
                *index = new as u32;
            }
        }
        order
            .iter()
            .map(|&o| self.images[o as usize].clone())
            .collect()
    }
}

/// The images a record's imports point into, by build id, and the host
/// table they use.
struct Deps {
    images: Vec<ImageDependency>,
    /// The host table registered when the link was recorded.
    table: Option<std::sync::Arc<HostTable>>,
    /// Whether an import uses it.
    table_used: bool,
}

impl Deps {
    /// The import of host symbol `id` into the word at `offset`: by name,
    /// or (build id, offset) when the resolver's address lies in a
    /// registered image.
    fn import(
        &mut self,
        l: &Linked<'_>,
        id: SymbolId,
        offset: u64,
        addend: i64,
        slot: bool,
    ) -> Import {
        let s = &l.graph.symbols[id.index()];
        let addr = (l.resolved)(id);
        let dep = registry::image_at(addr).map(|img| {
            let index = match self.images.iter().position(|d| d.build_id == img.build_id) {
                Some(i) => i,
                None => {
                    self.images.push(ImageDependency {
                        build_id: img.build_id,
                        // The file name only: the image's bytes do not
                        // depend on where the dependency was.
                        name: super::file_name_of(&img.name).to_string(),
                        image_size: img.size,
                    });
                    self.images.len() - 1
                }
            };
            (index as u32, addr - img.base)
        });
        let name = s.name.as_deref().unwrap_or("");
        let host = match (&dep, &self.table) {
            (None, Some(table)) => table.index_of(name, addr),
            _ => None,
        };
        self.table_used |= host.is_some();
        Import {
            offset,
            name: if dep.is_some() || host.is_some() {
                String::new()
            } else {
                name.to_string()
            },
            addend,
            weak: s.weak_ref,
            slot,
            pc32: false,
            dep,
            host,
            tls: None,
            target: addr,
        }
    }
}

/// Whether `block` lies in the TLS template (`.tdata`/`.tbss`).
fn in_tls_section(g: &LinkGraph, block: crate::graph::BlockId) -> bool {
    is_tls_section(g, g.blocks[block.index()].section)
}

fn is_tls_section(g: &LinkGraph, section: crate::graph::SectionId) -> bool {
    matches!(
        g.sections[section.index()].role,
        SectionRole::TlsData | SectionRole::TlsBss
    )
}

/// The alignment the image's base needs: the largest of its live blocks
/// placed in its memory (thread-locals live in TLS blocks; their template's
/// alignment is the header's TLS field), at least a page. The link placed
/// each block at a multiple of its alignment from the base, so any base
/// that is a multiple of this keeps every block aligned.
fn base_align(l: &Linked<'_>) -> u64 {
    let end = l.base.saturating_add(l.memory.len() as u64);
    l.graph
        .blocks
        .iter()
        .filter(|b| b.live && !is_tls_section(l.graph, b.section))
        .filter(|b| (l.base..end).contains(&b.addr))
        .map(|b| b.align)
        .fold(format::PAGE, u64::max)
}

/// Builds the record of a link in imaging mode (after fixup, before final
/// protections): rebases and imports of every absolute word, exports, the
/// memory normalized to base 0 with import words zeroed.
pub(crate) fn record(l: Linked<'_>) -> Result<ImagingRecord, LinkError> {
    // The exports (a sort of every global's name and a copy of each into
    // one string: 12 M instructions on the aarch64 synth input) read only
    // the graph and the
    // addresses: made on one of rayon's threads while this one classifies
    // the words and copies the memory.
    let (graph, addrs, base) = (l.graph, l.addrs, l.base);
    let mut exported = None;
    let record = if graph.serial {
        words(&l)
    } else {
        rayon::in_place_scope(|s| {
            let slot = &mut exported;
            s.spawn(move |_| *slot = Some(exports(graph, addrs, base)));
            words(&l)
        })
    };
    let mut record = record?;
    (record.exports, record.export_names) = exported.unwrap_or_else(|| exports(graph, addrs, base));
    if l.in_place {
        // 2,000 fresh pages fewer (the 7.5 MB aarch64 synth image).
        normalize(l.memory, base, &record.rebase, &record.imports);
        record.in_image = true;
    } else {
        record.memory = normalized_memory(&l, &record.rebase, &record.imports);
    }
    Ok(record)
}

/// [`record`] but its exports (left empty) and memory (not normalized yet).
fn words(l: &Linked<'_>) -> Result<ImagingRecord, LinkError> {
    let mut words = Words {
        rebase: Vec::new(),
        imports: Vec::new(),
        deps: Deps {
            images: Vec::new(),
            table: host_table::current(),
            table_used: false,
        },
    };
    words.got_slots(l);
    let mut pc_relatives: Vec<PcRelative> = Vec::new();
    let misplaced = misplaced_special(l);
    let mut edges = EdgeClasses::new(l);
    for block in l.graph.blocks.iter().filter(|b| b.live) {
        if misplaced {
            check_special_targets(l, block)?;
        }
        pc_relative(l, &mut edges, &mut words, block, &mut pc_relatives)?;
        words.absolute(l, &mut edges, block)?;
    }
    let Words {
        mut rebase,
        mut imports,
        deps,
    } = words;
    let (tls, tls_imports) = tls_record(l)?;
    imports.extend(tls_imports);
    sort_offsets(&mut rebase);
    imports.sort_by_key(|i| i.offset);
    let host_table = deps
        .table
        .as_ref()
        .filter(|_| deps.table_used)
        .map(|t| (t.id(), t.len() as u32, t.name().to_string()));
    let deps = deps.in_order_of(&mut imports);
    Ok(ImagingRecord {
        machine: l.graph.isa().machine(),
        init_fini: init_fini_offsets(l, l.memory.len() as u64),
        memory: Vec::new(),
        in_image: false,
        segments: l.segments.to_vec(),
        rebase,
        imports,
        exports: Vec::new(),
        export_names: String::new(),
        eh_frame: l.eh_frame.map(|(start, len)| (start - l.base, len)),
        deps,
        host_table,
        tls,
        pc_relative: pc_relatives,
        cpu_features: super::cpu::of_graph(l.graph),
        base_align: base_align(l),
        serial: l.graph.serial,
    })
}

/// Below this many offsets [`sort_offsets`] leaves it to the standard
/// library's sort.
const RADIX_MIN: usize = 1024;

/// Bits of an offset [`sort_offsets`] sorts by in one pass (a 16 KiB
/// count table): two passes for images under 16 MiB.
const RADIX_DIGIT: u32 = 11;

/// Sorts the rebase offsets and drops repeats. They arrive in GOT order
/// (hash order) and then block by block in graph order, not address
/// order (a pointer-heavy image has one a data word; the synthetic
/// inputs have 1,000). From [`RADIX_MIN`] on, a least-significant-digit
/// radix sort over the bits the offsets use (the image's size, less the
/// low bits they all have clear: words are 8-byte aligned) takes two
/// passes of [`RADIX_DIGIT`] bits for an image under 16 MiB.
fn sort_offsets(v: &mut Vec<u64>) {
    if v.len() >= RADIX_MIN {
        radix_sort(v);
    } else {
        v.sort_unstable();
    }
    v.dedup();
}

/// Sorts `v` by least-significant digits first ([`RADIX_DIGIT`] bits a
/// pass), each pass stable, over the bits where the values differ from 0.
fn radix_sort(v: &mut Vec<u64>) {
    const BUCKETS: usize = 1 << RADIX_DIGIT;
    let (or, max) = v.iter().fold((0u64, 0u64), |(o, m), &x| (o | x, m.max(x)));
    // Low bits clear in every value carry no order.
    let shift = or.trailing_zeros().min(63);
    let bits = 64 - (max >> shift).leading_zeros();
    let mut from = std::mem::take(v);
    let mut to = vec![0u64; from.len()];
    for pass in 0..bits.div_ceil(RADIX_DIGIT) {
        let s = shift + pass * RADIX_DIGIT;
        let digit = |x: u64| ((x >> s) as usize) & (BUCKETS - 1);
        let mut at = vec![0usize; BUCKETS];
        for &x in &from {
            at[digit(x)] += 1;
        }
        let mut sum = 0;
        for slot in &mut at {
            (*slot, sum) = (sum, sum + *slot);
        }
        for &x in &from {
            let d = digit(x);
            to[at[d]] = x;
            at[d] += 1;
        }
        std::mem::swap(&mut from, &mut to);
    }
    *v = from;
}

/// The words of an image a load writes: rebases and imports.
struct Words {
    /// Offsets of absolute words inside the image.
    rebase: Vec<u64>,
    imports: Vec<Import>,
    deps: Deps,
}

impl Words {
    /// The GOT entries holding addresses.
    fn got_slots(&mut self, l: &Linked<'_>) {
        for &(slot, id) in &l.got_slots {
            match l.target(id) {
                Target::Inside => self.rebase.push(slot - l.base),
                Target::Host => self
                    .imports
                    .push(self.deps.import(l, id, slot - l.base, 0, true)),
                Target::Constant => {}
            }
        }
    }

    /// The 64-bit absolute words of `block` (in the TLS template's initial
    /// image for a block of `.tdata`).
    fn absolute(
        &mut self,
        l: &Linked<'_>,
        edges: &mut EdgeClasses,
        block: &Block,
    ) -> Result<(), LinkError> {
        let g = l.graph;
        // A block of the TLS template sits at its TLS offset inside the
        // template's initial image.
        let at = match (&l.tls, g.sections[block.section.index()].role) {
            (Some(t), SectionRole::TlsData) => t.image_addr + block.addr,
            _ => block.addr,
        };
        for e in block.edges.iter() {
            if !edges.kind(e.kind).abs64 {
                continue;
            }
            debug_assert!(e.is_abs64());
            let offset = at + u64::from(e.offset) - l.base;
            let target = edges.target(l, e.target);
            if !offset.is_multiple_of(8) && !matches!(target, Target::Constant) {
                return Err(refuse(
                    g,
                    block,
                    e,
                    "an unaligned absolute address cannot be rebased by the image's rebase table",
                ));
            }
            match target {
                Target::Inside => self.rebase.push(offset),
                Target::Host => {
                    self.imports
                        .push(self.deps.import(l, e.target, offset, e.addend(), false))
                }
                Target::Constant => {}
            }
        }
        Ok(())
    }
}

/// Whether a symbol the linker defines lies outside the image (then every
/// block is searched for the references to refuse): the specials are a
/// handful, the edges hundreds of thousands.
fn misplaced_special(l: &Linked<'_>) -> bool {
    l.specials.iter().any(|&id| {
        l.graph.symbols[id.index()].def == SymbolDef::External
            && matches!(l.target(id), Target::Constant)
    })
}

/// A symbol the linker defines must lie inside the image (the
/// `__dso_handle` is a slot inside every image): refuses `block`'s first
/// reference to one outside.
fn check_special_targets(l: &Linked<'_>, block: &Block) -> Result<(), LinkError> {
    let g = l.graph;
    match block.edges.iter().find(|e| {
        g.symbols[e.target.index()].def == SymbolDef::External
            && (l.is_special)(e.target)
            && e.kind.target != EdgeTarget::Size
            && !is_tls_edge(e)
            && matches!(l.target(e.target), Target::Constant)
    }) {
        Some(e) => Err(refuse(
            g,
            block,
            e,
            "the linker placed this symbol outside the image (imaging mode needs `__dso_handle` inside it)",
        )),
        None => Ok(()),
    }
}

/// Copy the image's memory in pieces of this size, on rayon's threads when
/// there are several.
const COPY_PIECE: usize = 1 << 20;

/// The image's memory as saved: rebased words hold offsets, import words
/// zero.
fn normalized_memory(l: &Linked<'_>, rebase: &[u64], imports: &[Import]) -> Vec<u8> {
    use rayon::prelude::*;
    // Copied by rayon's threads for a large image: taking the fresh
    // pages' faults (2,000 for the 8 MB aarch64 synth image) is most of
    // the copy's time, and two threads take them side by side.
    let len = l.memory.len();
    let mut memory: Vec<u8> = Vec::with_capacity(len);
    let spare = &mut memory.spare_capacity_mut()[..len];
    if len > COPY_PIECE && !l.graph.serial {
        spare
            .par_chunks_mut(COPY_PIECE)
            .zip(l.memory.par_chunks(COPY_PIECE))
            .for_each(|(to, from)| copy_into(to, from));
    } else {
        copy_into(spare, l.memory);
    }
    // SAFETY: the loop above wrote all `len` bytes (the two slices have
    // the same length and are cut into pieces alike).
    unsafe { memory.set_len(len) };
    normalize(&mut memory, l.base, rebase, imports);
    memory
}

/// Rebased words of `memory` (an image at `base`) hold offsets, import
/// words zero.
fn normalize(memory: &mut [u8], base: u64, rebase: &[u64], imports: &[Import]) {
    for &off in rebase {
        let w = &mut memory[off as usize..off as usize + 8];
        let v = u64::from_le_bytes(w.try_into().unwrap_or_default());
        w.copy_from_slice(&v.wrapping_sub(base).to_le_bytes());
    }
    for i in imports {
        let width = if i.pc32 { 4 } else { 8 };
        memory[i.offset as usize..i.offset as usize + width].fill(0);
    }
}

/// Copies `from` into `to`, of the same length (`write_copy_of_slice`,
/// which needs Rust 1.93).
fn copy_into(to: &mut [std::mem::MaybeUninit<u8>], from: &[u8]) {
    debug_assert_eq!(to.len(), from.len());
    let n = to.len().min(from.len());
    // SAFETY: both hold at least `n` bytes; `to` is part of a fresh
    // allocation, so the two do not overlap; `MaybeUninit<u8>` has `u8`'s
    // layout.
    unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), to.as_mut_ptr().cast::<u8>(), n) }
}

/// The name of `e`, one of the exports whose names are `names`.
pub(crate) fn export_name<'a>(names: &'a str, e: &Export) -> &'a str {
    let (start, len) = (e.name.0 as usize, e.name.1 as usize);
    names.get(start..start + len).unwrap_or("")
}

/// The globals the image defines, sorted by name, and their names (see
/// [`Export::name`]).
fn exports(g: &LinkGraph, addrs: &[u64], base: u64) -> (Vec<Export>, String) {
    let mut defined: Vec<(&str, SymbolId)> = g
        .global_names()
        .filter_map(|(n, id)| {
            let s = &g.symbols[id.index()];
            match s.def {
                // A thread-local's value is a TLS offset, not an address
                // (so is that of any symbol in a TLS section, whatever its
                // type says: a damaged object's).
                SymbolDef::Defined { block, .. }
                    if g.blocks[block.index()].live
                        && s.scope != Scope::Local
                        && !s.tls
                        && !in_tls_section(g, block) =>
                {
                    Some((n, id))
                }
                _ => None,
            }
        })
        .collect();
    // Sorted as (name, id) pairs before any string is copied; the names
    // are the map's keys, so unique, and an unstable sort gives the one
    // order there is.
    sort_by_name(&mut defined);
    let mut names = String::with_capacity(defined.iter().map(|(n, _)| n.len()).sum());
    let exports = defined
        .into_iter()
        .map(|(name, id)| {
            let s = &g.symbols[id.index()];
            let start = names.len() as u32;
            names.push_str(name);
            Export {
                name: (start, name.len() as u32),
                offset: addrs[id.index()].wrapping_sub(base),
                callable: s.callable,
                weak: s.linkage == crate::graph::Linkage::Weak,
                exported: s.scope == Scope::Default,
            }
        })
        .collect();
    (exports, names)
}

/// Sorts `names` by name (byte order, as `str`'s `Ord`). Each is keyed by
/// its first 16 bytes as one big-endian integer, zero-filled: the order of
/// the keys is the order of the names wherever they differ (a name holds
/// no NUL, so a shorter name's zero fill sorts before a longer one's next
/// byte). The keys are radix-sorted ([`radix_sort_keys`]) and only names
/// alike in their first 16 bytes are compared as strings. Generated names
/// (`fn_000_017`, 20 k of them on the synthetic input) share long
/// prefixes, on which a comparison sort of the strings spent ~750
/// instructions a name (a `memcmp` call per comparison).
fn sort_by_name<T: Copy>(names: &mut Vec<(&str, T)>) {
    if names.len() < RADIX_MIN {
        names.sort_unstable_by(|a, b| a.0.cmp(b.0));
        return;
    }
    let key = |name: &str| {
        let mut k = [0u8; 16];
        let n = name.len().min(16);
        k[..n].copy_from_slice(&name.as_bytes()[..n]);
        u128::from_be_bytes(k)
    };
    let mut keyed: Vec<(u128, usize)> = names.iter().map(|e| key(e.0)).zip(0..).collect();
    radix_sort_keys(&mut keyed);
    // Runs of one key: names alike in their first 16 bytes.
    for run in keyed.chunk_by_mut(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            run.sort_unstable_by(|a, b| names[a.1].0.cmp(names[b.1].0));
        }
    }
    *names = keyed.into_iter().map(|(_, i)| names[i]).collect();
}

/// Sorts `v` by its keys, least significant byte first (16 stable passes
/// at most), skipping each byte all the keys have alike (the zero fill of
/// short names, a common prefix).
fn radix_sort_keys(v: &mut Vec<(u128, usize)>) {
    let (or, and) = v
        .iter()
        .fold((0u128, u128::MAX), |(or, and), &(k, _)| (or | k, and & k));
    let digits: Vec<u32> = (0..16)
        .filter(|d| ((or ^ and) >> (8 * d)) & 0xff != 0)
        .collect();
    let mut counts = vec![[0usize; 256]; digits.len()];
    for &(k, _) in v.iter() {
        for (count, &digit) in counts.iter_mut().zip(&digits) {
            count[((k >> (8 * digit)) & 0xff) as usize] += 1;
        }
    }
    let mut from = std::mem::take(v);
    let mut to = vec![(0u128, 0usize); from.len()];
    for (count, &digit) in counts.iter_mut().zip(&digits) {
        let mut sum = 0;
        for slot in count.iter_mut() {
            (*slot, sum) = (sum, sum + *slot);
        }
        for &(k, i) in &from {
            let d = ((k >> (8 * digit)) & 0xff) as usize;
            to[count[d]] = (k, i);
            count[d] += 1;
        }
        std::mem::swap(&mut from, &mut to);
    }
    *v = from;
}

/// Initializer and finalizer entries as offsets in the image (`u64::MAX`
/// for one outside it, `len` bytes).
fn init_fini_offsets(l: &Linked<'_>, len: u64) -> Vec<(String, Vec<u64>)> {
    l.init_fini
        .iter()
        .map(|(section, entries)| {
            let offsets = entries
                .iter()
                .map(|&a| {
                    let off = (a as u64).wrapping_sub(l.base);
                    if off < len { off } else { u64::MAX }
                })
                .collect();
            (section.to_string(), offsets)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Content, Linkage, Symbol};

    /// A graph of `n` live 16-byte blocks, each with one edge to a symbol
    /// defined in block 0: `R_X86_64_PC32` (always expressible), or
    /// `R_X86_64_32` (never: non-PIE code) in the blocks `bad` names.
    fn graph_with_bad_edges(n: usize, bad: &[usize]) -> LinkGraph {
        let mut g = LinkGraph::new();
        g.set_isa(crate::isa::Isa::X86_64);
        let obj = g.add_object("x.o");
        let s = g.section(".text", Prot::ReadExec, SectionRole::Ordinary);
        let sym = g.add_symbol(Symbol {
            name: Some("f".into()),
            def: SymbolDef::Defined {
                block: crate::graph::BlockId(0),
                offset: 0,
            },
            object: Some(obj),
            size: 0,
            scope: Scope::Default,
            linkage: Linkage::Strong,
            callable: true,
            tls: false,
            weak_ref: false,
        });
        let (pc32, abs32) = (
            crate::isa::Isa::X86_64.edge(2).unwrap(),
            crate::isa::Isa::X86_64.edge(10).unwrap(),
        );
        for i in 0..n {
            g.add_block(Block {
                section: s,
                object: Some(obj),
                input_section: ".text".into(),
                input_offset: 16 * i as u64,
                content: Content::Bytes(vec![0; 16]),
                align: 16,
                edges: smallvec::smallvec![Edge::new(
                    4,
                    if bad.contains(&i) { abs32 } else { pc32 },
                    sym,
                    0,
                )],
                fde: None,
                live: true,
                addr: 0,
            });
        }
        g
    }

    /// Checked in pieces on several threads, a graph is refused for its
    /// first unexpressible edge in block order, wherever the pieces end;
    /// a graph without one passes.
    #[test]
    fn check_graph_refuses_the_first_bad_edge_in_block_order() {
        let n = 5 * CHECK_CHUNK_BLOCKS + 7;
        let last = n - 1;
        for bad in [
            vec![last],
            vec![3 * CHECK_CHUNK_BLOCKS + 1, CHECK_CHUNK_BLOCKS + 5, last],
            vec![2, 4 * CHECK_CHUNK_BLOCKS],
        ] {
            let g = graph_with_bad_edges(n, &bad);
            let first = *bad.iter().min().unwrap();
            match check_graph(&g) {
                Err(LinkError::NotImageable { offset, reloc, .. }) => {
                    assert_eq!(offset, 16 * first as u64 + 4, "bad edges at {bad:?}");
                    assert_eq!(reloc, "R_X86_64_32");
                }
                other => panic!("bad edges at {bad:?}: {other:?}"),
            }
        }
        assert!(check_graph(&graph_with_bad_edges(n, &[])).is_ok());
        // A small graph, checked in one piece, the same way.
        let g = graph_with_bad_edges(10, &[7, 3]);
        assert!(matches!(
            check_graph(&g),
            Err(LinkError::NotImageable { offset: 52, .. })
        ));
    }

    /// Names sort as `str` does: equal 16-byte prefixes, a name that is
    /// another's prefix, bytes above 0x7f, empty names.
    #[test]
    fn sort_by_name_matches_str_order() {
        let names = [
            "fn_000_017",
            "fn_000_0170",
            "fn_000_01",
            "abcdefghijklmnop_b",
            "abcdefghijklmnop_a",
            "abcdefghijklmnop",
            "abcdefghijklmno",
            "",
            "\u{e9}t\u{e9}",
            "Z",
            "a",
            "abcdefghijklmnopq",
        ];
        let mut got: Vec<(&str, usize)> = names.iter().copied().zip(0..).collect();
        let mut want = got.clone();
        want.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sort_by_name(&mut got);
        assert_eq!(got, want);
        // Enough of them for the radix sort: generated names, long ones
        // alike in their first 16 bytes, and the ones above.
        let mut many: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        for i in (0..3000).rev() {
            many.push(format!("fn_{:03}_{:03}", i % 200, (i * 7919) % 1000));
            many.push(format!("a_rather_long_prefix_{i}"));
            many.push(format!("{}", i * 31));
        }
        // Unique (as a map's keys are), then in a scrambled order.
        many.sort_unstable();
        many.dedup();
        many.sort_unstable_by_key(|n| {
            n.bytes().fold(0u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        });
        let mut got: Vec<(&str, usize)> = many.iter().map(|n| n.as_str()).zip(0..).collect();
        let mut want = got.clone();
        want.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sort_by_name(&mut got);
        assert_eq!(got, want);
    }

    /// The radix sort agrees with the standard library's on offsets of
    /// every shape: aligned and not, repeated, one value, wide values,
    /// fewer than [`RADIX_MIN`] and more.
    #[test]
    fn sort_offsets_matches_a_comparison_sort() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (len, mask, align) in [
            (0usize, u64::MAX, 1u64),
            (5, 0xff, 8),
            (3000, 0x7f_ffff, 8),
            (3000, 0x7f_ffff, 1),
            (5000, 0x3ff, 8),
            (5000, u64::MAX, 1),
            (4096, 0, 1),
            (2048, 1 << 40, 4),
        ] {
            let v: Vec<u64> = (0..len).map(|_| next() & mask & !(align - 1)).collect();
            let mut want = v.clone();
            want.sort_unstable();
            want.dedup();
            let mut got = v.clone();
            sort_offsets(&mut got);
            assert_eq!(got, want, "len {len}, mask {mask:#x}, align {align}");
            let mut sorted = want.clone();
            sort_offsets(&mut sorted);
            assert_eq!(sorted, want, "already sorted, len {len}");
        }
    }
}
