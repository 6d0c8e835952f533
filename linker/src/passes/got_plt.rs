//! Pass: GOT and PLT. Scan live edges for what they ask of the linker (GOT
//! entries, PLT stubs, placement below 2 GiB, symbols the linker defines
//! itself), then add the linker's own blocks: the GOT, the PLT stubs, the
//! `__dso_handle` slot and copies of far host data.

use super::Special;
use super::edges::{self, Need};
use crate::graph::{
    Block, BlockId, Content, Edge, Edges, FxHashMap, FxHashSet, LinkGraph, Prot, SectionRole,
    SymbolDef, SymbolId,
};

/// One GOT slot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum GotKey {
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

/// Offsets by symbol (of GOT slots or PLT stubs), in a vector indexed by
/// symbol id instead of a hash map: a Cranelift object has a stub and a
/// slot for each of its ~1,800 externals, and fixup looks one up per call.
#[derive(Debug, Default)]
pub(super) struct SymOffsets {
    /// By symbol id: the offset, or [`SymOffsets::NONE`].
    by_sym: Vec<u64>,
    /// The symbols with an offset, in order of insertion.
    order: Vec<SymbolId>,
}

impl SymOffsets {
    const NONE: u64 = u64::MAX;

    /// An empty table with room for symbol ids below `symbols`.
    fn with_symbols(symbols: usize) -> Self {
        SymOffsets {
            by_sym: vec![Self::NONE; symbols],
            order: Vec::new(),
        }
    }

    /// Records `off` for `sym`.
    fn insert(&mut self, sym: SymbolId, off: u64) {
        let i = sym.index();
        if i >= self.by_sym.len() {
            self.by_sym.resize(i + 1, Self::NONE);
        }
        if self.by_sym[i] == Self::NONE {
            self.order.push(sym);
        }
        self.by_sym[i] = off;
    }

    /// The offset of `sym`'s entry.
    pub(super) fn get(&self, sym: SymbolId) -> Option<u64> {
        self.by_sym
            .get(sym.index())
            .copied()
            .filter(|&o| o != Self::NONE)
    }

    /// Whether `sym` has an entry.
    pub(super) fn contains(&self, sym: SymbolId) -> bool {
        self.get(sym).is_some()
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// Every entry, in order of insertion.
    pub(super) fn iter(&self) -> impl Iterator<Item = (SymbolId, u64)> + '_ {
        self.order.iter().filter_map(|&s| Some((s, self.get(s)?)))
    }
}

/// The GOT's slots by request: address slots by symbol ([`SymOffsets`]),
/// the TLS ones (few) in a hash map.
#[derive(Debug, Default)]
pub(super) struct GotTable {
    addr: SymOffsets,
    tls: FxHashMap<GotKey, u64>,
    /// Every key, in order of insertion.
    keys: Vec<GotKey>,
}

impl GotTable {
    fn insert(&mut self, key: GotKey, off: u64) {
        match key {
            GotKey::Addr(s) => self.addr.insert(s, off),
            k => {
                self.tls.insert(k, off);
            }
        }
        self.keys.push(key);
    }

    /// The offset of `key`'s slot.
    pub(super) fn get(&self, key: GotKey) -> Option<u64> {
        match key {
            GotKey::Addr(s) => self.addr.get(s),
            k => self.tls.get(&k).copied(),
        }
    }

    /// Number of slots.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Every slot, in order of request.
    pub(super) fn iter(&self) -> impl Iterator<Item = (GotKey, u64)> + '_ {
        self.keys.iter().filter_map(|&k| Some((k, self.get(k)?)))
    }
}

/// What live code asks of the linker, in order of first request.
#[derive(Debug, Default)]
pub(super) struct Requests {
    got_keys: Vec<GotKey>,
    plt_syms: Vec<SymbolId>,
    /// Per symbol of the graph scanned: [`mark`] bits (one byte a symbol,
    /// read for every edge instead of the 64-byte `Symbol`, and set instead
    /// of a hash insert per request: a Cranelift object asks for ~1,800
    /// stubs and their GOT slots).
    marks: Vec<u8>,
    /// `{module, 0}` requested already.
    tls_ld: bool,
    /// Requests for symbols added after the scan (none today: the passes
    /// after it ask only for symbols it saw), deduplicated here.
    later: FxHashSet<GotKey>,
    later_plt: FxHashSet<SymbolId>,
    /// A GOT is needed even without entries (`_GLOBAL_OFFSET_TABLE_`,
    /// GOT-relative offsets).
    needs_got: bool,
    /// The first edge that needs the image below 2 GiB (non-PIE code).
    pub(super) needs_low: Option<(BlockId, Edge)>,
    /// Symbols the linker defines itself.
    pub(super) specials: FxHashMap<SymbolId, Special>,
    /// Named externals live code references (specials excluded), in order
    /// of first reference.
    pub(super) external_refs: Vec<SymbolId>,
    /// Every live edge to a symbol external when the graph was scanned, in
    /// block and edge order (what [`super::reach`] checks, instead of every
    /// edge again).
    pub(super) external_edges: Vec<Edge>,
}

/// The bits of [`Requests::marks`].
mod mark {
    /// External when the graph was scanned.
    pub(super) const EXTERNAL: u8 = 1;
    /// Referenced by live code.
    pub(super) const REFERENCED: u8 = 2;
    /// GOT slot [`super::GotKey::Addr`] requested.
    pub(super) const GOT_ADDR: u8 = 4;
    /// PLT stub requested.
    pub(super) const PLT: u8 = 8;
    /// GOT slot [`super::GotKey::TlsGd`] requested.
    pub(super) const TLS_GD: u8 = 16;
    /// GOT slot [`super::GotKey::TpOff`] requested.
    pub(super) const TP_OFF: u8 = 32;
    /// GOT slot [`super::GotKey::TlsDesc`] requested.
    pub(super) const TLS_DESC: u8 = 64;
}

impl Requests {
    /// Sets `bit` of `sym`; whether it was clear (`None`: a symbol added
    /// after the scan).
    fn first(&mut self, sym: SymbolId, bit: u8) -> Option<bool> {
        let m = self.marks.get_mut(sym.index())?;
        let first = *m & bit == 0;
        *m |= bit;
        Some(first)
    }

    fn got(&mut self, key: GotKey) {
        let first = match key {
            GotKey::Addr(s) => self.first(s, mark::GOT_ADDR),
            GotKey::TlsGd(s) => self.first(s, mark::TLS_GD),
            GotKey::TpOff(s) => self.first(s, mark::TP_OFF),
            GotKey::TlsDesc(s) => self.first(s, mark::TLS_DESC),
            GotKey::TlsLd => Some(!std::mem::replace(&mut self.tls_ld, true)),
        };
        if first.unwrap_or_else(|| self.later.insert(key)) {
            self.got_keys.push(key);
        }
    }

    /// A PLT stub for `sym`, and the GOT slot it jumps through.
    pub(super) fn plt(&mut self, sym: SymbolId) {
        let first = self
            .first(sym, mark::PLT)
            .unwrap_or_else(|| self.later_plt.insert(sym));
        if first {
            self.plt_syms.push(sym);
            self.got(GotKey::Addr(sym));
        }
    }
}

impl Requests {
    /// What live edge `e` of block `bi` asks for.
    fn edge(&mut self, graph: &LinkGraph, bi: u32, e: Edge) {
        let external = self.marks[e.target.index()] & mark::EXTERNAL != 0;
        match edges::need(&e, external) {
            Need::Got(key) => self.got(key),
            Need::Plt => self.plt(e.target),
            Need::GotBase => self.needs_got = true,
            Need::Below2GiB if self.needs_low.is_none() => {
                self.needs_low = Some((BlockId(bi), e));
            }
            Need::Below2GiB | Need::Nothing => {}
        }
        if external {
            self.external_edges.push(e);
        }
        if external
            && self.marks[e.target.index()] & mark::REFERENCED == 0
            && let Some(name) = &graph.symbols[e.target.index()].name
        {
            self.marks[e.target.index()] |= mark::REFERENCED;
            self.external_refs.push(e.target);
            if let Some(s) = linker_symbol(graph, name) {
                self.needs_got |= s == Special::GlobalOffsetTable;
                self.specials.insert(e.target, s);
            }
        }
    }
}

/// Every live edge's requests, and the externals live code references.
pub(super) fn scan(graph: &LinkGraph) -> Requests {
    scan_on(graph, graph.is_large())
}

/// [`scan`], filtering the edges on rayon's threads if `parallel`.
fn scan_on(graph: &LinkGraph, parallel: bool) -> Requests {
    let marks: Vec<u8> = graph
        .symbols
        .iter()
        .map(|s| u8::from(s.def == SymbolDef::External) * mark::EXTERNAL)
        .collect();
    // Sized once for what most graphs ask: each external referenced, called
    // through a stub and given a GOT slot (a Cranelift object calls every
    // other function through the PLT); they grow past that only for
    // local GOT requests.
    let externals = marks.iter().filter(|&&m| m != 0).count();
    let mut req = Requests {
        marks,
        external_refs: Vec::with_capacity(externals),
        plt_syms: Vec::with_capacity(externals),
        got_keys: Vec::with_capacity(externals),
        ..Requests::default()
    };
    if !parallel {
        for (bi, b) in graph.blocks.iter().enumerate() {
            if b.live {
                for e in &b.edges {
                    req.edge(graph, bi as u32, *e);
                }
            }
        }
    } else {
        for (bi, e) in edges_asking(graph, &req.marks) {
            req.edge(graph, bi, e);
        }
    }
    let specials = &req.specials;
    req.external_refs.retain(|id| !specials.contains_key(id));
    req
}

/// Blocks a rayon task scans.
const SCAN_CHUNK: usize = 512;

/// The live edges of a large graph that ask something of this pass (a
/// need, or an external target), with their blocks, in block and edge
/// order. Most edges ask nothing (calls and references to symbols the graph
/// defines): they are filtered out on every core, and [`scan`] handles the
/// few left one by one, in the order a pass over every edge would.
fn edges_asking(graph: &LinkGraph, marks: &[u8]) -> Vec<(u32, Edge)> {
    let asking_in = |first: usize, blocks: &[Block]| {
        let mut out = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            if !b.live {
                continue;
            }
            for e in &b.edges {
                let external = marks[e.target.index()] & mark::EXTERNAL != 0;
                if external || edges::need(e, external) != Need::Nothing {
                    out.push(((first + i) as u32, *e));
                }
            }
        }
        out
    };
    use rayon::prelude::*;
    let chunks: Vec<Vec<(u32, Edge)>> = graph
        .blocks
        .par_chunks(SCAN_CHUNK)
        .enumerate()
        .map(|(c, blocks)| asking_in(c * SCAN_CHUNK, blocks))
        .collect();
    chunks.concat()
}

/// The symbol the linker defines itself under `name`, if any.
fn linker_symbol(graph: &LinkGraph, name: &str) -> Option<Special> {
    match name {
        "__dso_handle" => Some(Special::DsoHandle),
        "_TLS_MODULE_BASE_" => Some(Special::TlsModuleBase),
        "_GLOBAL_OFFSET_TABLE_" => Some(Special::GlobalOffsetTable),
        n => n
            .strip_prefix("__start_")
            .and_then(|s| graph.section_index.get(s))
            .map(|&s| Special::Start(s))
            .or_else(|| {
                n.strip_prefix("__stop_")
                    .and_then(|s| graph.section_index.get(s))
                    .map(|&s| Special::Stop(s))
            }),
    }
}

/// The blocks the linker adds, and where GOT entries and stubs lie in theirs.
#[derive(Debug)]
pub(super) struct LinkerBlocks {
    pub(super) got: GotTable,
    pub(super) got_block: Option<BlockId>,
    pub(super) plt: SymOffsets,
    pub(super) plt_block: Option<BlockId>,
    pub(super) dso_block: BlockId,
    pub(super) copy_blocks: FxHashMap<SymbolId, BlockId>,
}

/// Add the linker's blocks to `graph`: `__dso_handle`'s slot, copies of
/// far host data (`copies`: symbol and size), the GOT and the PLT stubs.
pub(super) fn add_linker_blocks(
    graph: &mut LinkGraph,
    req: &Requests,
    copies: Vec<(SymbolId, u64)>,
) -> LinkerBlocks {
    // What kiln provides per image lives inside it, in reach by
    // construction wherever the slab is: `__dso_handle`'s slot.
    let dso_block = linker_block(
        graph,
        ("$__DSO_HANDLE", Prot::Read, SectionRole::Ordinary),
        vec![0; 8],
        8,
    );
    let mut copy_blocks = FxHashMap::default();
    for (sym, size) in copies {
        let section = ("$__COPIES", Prot::ReadWrite, SectionRole::Ordinary);
        let block = linker_block(graph, section, vec![0; size as usize], 16);
        copy_blocks.insert(sym, block);
    }
    let (got, got_block) = add_got(graph, req);
    let (plt, plt_block) = add_plt(graph, &req.plt_syms);
    LinkerBlocks {
        got,
        got_block,
        plt,
        plt_block,
        dso_block,
        copy_blocks,
    }
}

/// The GOT: one slot per request, in order of first request.
fn add_got(graph: &mut LinkGraph, req: &Requests) -> (GotTable, Option<BlockId>) {
    let mut got = GotTable {
        addr: SymOffsets::with_symbols(if req.got_keys.is_empty() {
            0
        } else {
            graph.symbols.len()
        }),
        tls: FxHashMap::default(),
        keys: Vec::with_capacity(req.got_keys.len()),
    };
    let mut got_size = 0u64;
    for k in &req.got_keys {
        got.insert(*k, got_size);
        got_size += k.size();
    }
    if req.needs_got && got_size == 0 {
        got_size = 8;
    }
    let section = ("$__GOT", Prot::Read, SectionRole::Got);
    let block =
        (got_size > 0).then(|| linker_block(graph, section, vec![0; got_size as usize], 16));
    (got, block)
}

/// The PLT: one stub per symbol, filled with traps until fixup writes them.
fn add_plt(graph: &mut LinkGraph, syms: &[SymbolId]) -> (SymOffsets, Option<BlockId>) {
    if syms.is_empty() {
        return (SymOffsets::default(), None);
    }
    let mut plt = SymOffsets::with_symbols(graph.symbols.len());
    let isa = graph.isa();
    let stub_size = isa.plt_stub_size();
    for (i, s) in syms.iter().enumerate() {
        plt.insert(*s, (i * stub_size) as u64);
    }
    let section = ("$__STUBS", Prot::ReadExec, SectionRole::Plt);
    let mut fill = vec![0; syms.len() * stub_size];
    isa.fill_code(&mut fill, 0);
    (plt, Some(linker_block(graph, section, fill, 16)))
}

/// A live block of the linker's own in section `(name, prot, role)`
/// (created on first use).
fn linker_block(
    graph: &mut LinkGraph,
    (name, prot, role): (&str, Prot, SectionRole),
    bytes: Vec<u8>,
    align: u64,
) -> BlockId {
    let section = graph.section(name, prot, role);
    graph.add_block(Block {
        section,
        object: None,
        input_section: name.into(),
        input_offset: 0,
        content: Content::Bytes(bytes),
        align,
        edges: Edges::new(),
        fde: None,
        live: true,
        addr: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{ObjectId, Symbol};
    use crate::isa::Isa;

    /// A graph of `n` code blocks, each defining a function that calls
    /// others, some externals (through the PLT), and loads some addresses
    /// through the GOT; one non-PIE reference near the end.
    fn graph_of(n: usize) -> LinkGraph {
        let mut g = LinkGraph::new();
        g.set_isa(Isa::X86_64);
        let obj = g.add_object("a.o");
        let text = g.section(".text", Prot::ReadExec, SectionRole::Ordinary);
        let edge = |r_type| Isa::X86_64.edge(r_type).expect("an x86-64 relocation");
        let (plt32, gotpcrelx, abs32) = (edge(4), edge(41), edge(10));
        let externals: Vec<SymbolId> = (0..50)
            .map(|i| g.global(&format!("ext{i}"), ObjectId(0)))
            .collect();
        let mut functions = Vec::new();
        for i in 0..n {
            let b = g.add_block(Block {
                section: text,
                object: Some(obj),
                input_section: ".text".into(),
                input_offset: 0,
                content: Content::Zero(64),
                align: 16,
                edges: Edges::new(),
                fde: None,
                live: i % 97 != 5,
                addr: 0,
            });
            let def = SymbolDef::Defined {
                block: b,
                offset: 0,
            };
            functions.push(g.add_symbol(Symbol::local_for_test(def)));
        }
        for i in 0..n {
            let mut edges = vec![Edge::new(0, plt32, functions[(i * 7) % n], -4)];
            if i % 13 == 0 {
                edges.push(Edge::new(8, plt32, externals[(i / 13) % 50], -4));
            }
            if i % 29 == 0 {
                edges.push(Edge::new(16, gotpcrelx, externals[(i / 29 + 3) % 50], -4));
                edges.push(Edge::new(24, gotpcrelx, functions[(i * 3) % n], -4));
            }
            if i == n - 10 {
                edges.push(Edge::new(32, abs32, functions[1], 0));
            }
            g.blocks[i].edges = edges.into();
        }
        g
    }

    /// The filtered scan on rayon's threads asks for what one pass over
    /// every edge asks, in the same order (the GOT's and PLT's layout).
    #[test]
    fn the_parallel_scan_asks_what_one_pass_asks_in_the_same_order() {
        let g = graph_of(6_000);
        let (one, parallel) = (scan_on(&g, false), scan_on(&g, true));
        assert!(
            one.got_keys.len() > 100 && one.plt_syms.len() > 40,
            "{one:?}"
        );
        assert_eq!(parallel.got_keys, one.got_keys);
        assert_eq!(parallel.plt_syms, one.plt_syms);
        assert_eq!(parallel.external_refs, one.external_refs);
        assert_eq!(parallel.external_edges, one.external_edges);
        assert!(one.external_edges.len() > one.external_refs.len());
        assert_eq!(parallel.needs_low, one.needs_low);
        assert!(one.needs_low.is_some());
        assert_eq!(parallel.needs_got, one.needs_got);
        assert_eq!(parallel.marks, one.marks);
    }
}
