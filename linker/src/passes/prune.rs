//! Pass: keep what the roots reach (as `ld --gc-sections`), FDEs with
//! their code, `__start_`/`__stop_` sections with their references.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::Roots;
use crate::error::LinkError;
use crate::graph::{
    Block, BlockId, FdeLinks, FxHashMap, LinkGraph, SectionId, SectionRole, SymbolDef, SymbolId,
};

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
                if let Some(id) = graph.global_id(name)
                    && let SymbolDef::Defined { block, .. } = graph.symbols[id.index()].def
                {
                    work.push(block);
                }
            }
        }
    }
    work
}

/// A `__start_NAME`/`__stop_NAME` symbol delimits one section: refused
/// when the inputs called NAME differ in protection or role and so were kept
/// apart (`LinkGraph::section`), as it could delimit only some of them.
/// (`ld` would make one writable and executable section of them.)
fn bounds_delimit_one_section(graph: &LinkGraph) -> Result<(), LinkError> {
    if graph.sections.len() == graph.section_index.len() {
        return Ok(());
    }
    let mut bounds: Vec<(u32, SectionId)> = start_stop_sections(graph).into_iter().collect();
    bounds.sort_unstable();
    for (sym, first) in bounds {
        let section = &graph.sections[first.index()].name;
        let apart: Vec<String> = graph
            .sections
            .iter()
            .filter(|sec| sec.name == *section)
            .map(|sec| format!("{:?} {:?}", sec.prot, sec.role))
            .collect();
        if apart.len() > 1 {
            let id = SymbolId(sym);
            return Err(LinkError::malformed(
                graph.object_name(graph.symbols[id.index()].object),
                format!(
                    "`{}` delimits section {section}, but its inputs differ in \
                     protection or role ({}) and are kept apart",
                    graph.symbol_name(id),
                    apart.join("; ")
                ),
            ));
        }
    }
    Ok(())
}

/// Undefined `__start_NAME` / `__stop_NAME` symbols, by symbol index, with
/// the section NAME they delimit: a live reference to one keeps every block
/// of that section (as `ld` does).
fn start_stop_sections(graph: &LinkGraph) -> FxHashMap<u32, SectionId> {
    graph
        .globals
        .ids()
        .filter_map(|id| {
            let s = &graph.symbols[id.index()];
            if s.def != SymbolDef::External {
                return None;
            }
            let name = s.name.as_deref()?;
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
/// reference is not needed, and not an error. Of the references live code
/// makes to discarded sections, the error names the first (by block, then
/// edge), whatever order the walk took.
///
/// The walk goes level by level from the roots; a large level is walked on
/// rayon's threads (every edge of the link is read here, one core's 13 M
/// instructions on the 200-object synth input while the other idled).
pub fn prune(graph: &mut LinkGraph, roots: &Roots) -> Result<(), LinkError> {
    bounds_delimit_one_section(graph)?;
    if let Some(live) = all_reached(graph, roots) {
        // The fuzzer checks every shortcut taken against the walk.
        #[cfg(fuzzing)]
        {
            let mut walked = graph.clone();
            walk(&mut walked, roots).expect("no discarded section is referenced");
            let by_walk: Vec<bool> = walked.blocks.iter().map(|b| b.live).collect();
            assert_eq!(live, by_walk, "blocks kept without the walk and by it");
        }
        for (b, l) in graph.blocks.iter_mut().zip(live) {
            b.live = l;
        }
        return Ok(());
    }
    walk(graph, roots)
}

/// [`prune`] by walking every edge from the roots.
fn walk(graph: &mut LinkGraph, roots: &Roots) -> Result<(), LinkError> {
    let walk = Walk {
        graph,
        fdes: FdeLists::new(graph),
        target_block: target_blocks(graph),
        live: (0..graph.blocks.len())
            .map(|_| AtomicBool::new(false))
            .collect(),
    };
    let mut start_stop = start_stop_sections(graph);
    let mut level = prune_roots(graph, roots);
    level.retain(|&b| walk.claim(b));
    let mut discarded: Option<(BlockId, usize)> = None;
    while !level.is_empty() {
        let step = if level.len() >= PARALLEL_LEVEL && graph.is_large() {
            level
                .par_chunks(LEVEL_CHUNK)
                .map(|blocks| walk.step(blocks, &start_stop))
                .reduce(Step::default, Step::join)
        } else {
            walk.step(&level, &start_stop)
        };
        level = step.next;
        // A section delimited by `__start_`/`__stop_` is kept whole, once.
        for symbol in step.start_stop {
            if let Some(section) = start_stop.remove(&symbol) {
                let blocks = &graph.sections[section.index()].blocks;
                level.extend(blocks.iter().copied().filter(|&b| walk.claim(b)));
            }
        }
        discarded = discarded.into_iter().chain(step.discarded).min();
    }
    if let Some((b, i)) = discarded {
        // Live code must not refer to dropped sections.
        let block = &graph.blocks[b.index()];
        let e = &block.edges[i];
        return Err(LinkError::DiscardedReference {
            object: graph.object_name(block.object).to_string(),
            section: block.input_section.to_string(),
            offset: block.input_offset + u64::from(e.offset),
            symbol: graph.symbol_name(e.target),
        });
    }
    let live: Vec<bool> = walk.live.into_iter().map(AtomicBool::into_inner).collect();
    for (b, l) in graph.blocks.iter_mut().zip(live) {
        b.live = b.live && l;
    }
    Ok(())
}

/// What [`prune`]'s walk would leave live, found without reading an edge
/// where it is known to reach every block but unwind information: every
/// block of the inputs is a root (`Roots::All`, no archive member) and
/// live, no symbol is defined in `.eh_frame` (so no edge leads into it),
/// in a discarded section (no reference to check) or is a
/// `__start_`/`__stop_` symbol. The walk then keeps every block, the FDEs
/// of live code and the CIEs those FDEs use. `None` where the walk is
/// needed. (Synth's 401k edges: ~2 ms of the link on two cores.)
fn all_reached(graph: &LinkGraph, roots: &Roots) -> Option<Vec<bool>> {
    if !matches!(roots, Roots::All) || graph.objects.iter().any(|o| o.library) {
        return None;
    }
    let blocks = &graph.blocks;
    let eh: Vec<bool> = blocks
        .iter()
        .map(|b| graph.sections[b.section.index()].role == SectionRole::EhFrame)
        .collect();
    let walk_needed = |s: &crate::graph::Symbol| match s.def {
        SymbolDef::Defined { block, .. } => eh[block.index()],
        SymbolDef::Discarded => true,
        _ => false,
    };
    if graph.symbols.iter().any(walk_needed) || !start_stop_sections(graph).is_empty() {
        return None;
    }
    // FDEs describe live code outside `.eh_frame` and use CIEs that are
    // no FDEs: no chain of unwind records for the walk to follow.
    let plain = |f: FdeLinks| {
        f.function
            .is_none_or(|code| !eh[code.index()] && blocks[code.index()].live)
            && blocks[f.cie.index()].fde.is_none()
    };
    if !blocks.iter().filter_map(|b| b.fde).all(plain) {
        return None;
    }
    // The roots, and the FDEs of their code (the code of each is a root).
    let mut reached: Vec<bool> = blocks
        .iter()
        .zip(&eh)
        .map(|(b, &eh)| b.live && (!eh || b.fde.is_some_and(|f| f.function.is_some())))
        .collect();
    // The CIEs those use.
    for (b, i) in blocks.iter().zip(0..) {
        if let Some(f) = b.fde
            && reached[i]
        {
            reached[f.cie.index()] = true;
        }
    }
    Some(
        blocks
            .iter()
            .zip(reached)
            .map(|(b, reached)| b.live && reached)
            .collect(),
    )
}

/// Levels of at least this many blocks, in large graphs
/// ([`LinkGraph::is_large`]), are walked on rayon's threads.
const PARALLEL_LEVEL: usize = 64;
/// Blocks of a level a rayon task walks.
const LEVEL_CHUNK: usize = 16;

/// Marks a symbol's entry in [`Walk::target_block`]: no block (an external
/// or absolute symbol).
const NONE: u32 = u32::MAX;
/// ... a symbol of a discarded section.
const DISCARDED: u32 = u32::MAX - 1;

/// The FDEs of each block, as linked lists through two arrays (one
/// allocation each, however many FDEs): `first[block]`, `next[fde]`.
struct FdeLists {
    first: Vec<u32>,
    next: Vec<u32>,
}

impl FdeLists {
    fn new(graph: &LinkGraph) -> FdeLists {
        let n = graph.blocks.len();
        let mut lists = FdeLists {
            first: vec![NONE; n],
            next: vec![NONE; n],
        };
        for (i, b) in graph.blocks.iter().enumerate() {
            if let Some(f) = b.fde
                && let Some(func) = f.function
                && b.live
            {
                lists.next[i] = std::mem::replace(&mut lists.first[func.index()], i as u32);
            }
        }
        lists
    }

    /// The FDEs of block `b`.
    fn of(&self, b: BlockId) -> impl Iterator<Item = BlockId> + '_ {
        let mut fde = self.first[b.index()];
        std::iter::from_fn(move || {
            let this = (fde != NONE).then_some(BlockId(fde))?;
            fde = self.next[fde as usize];
            Some(this)
        })
    }
}

/// Each symbol's block (or [`NONE`], [`DISCARDED`]), 4 bytes a symbol: the
/// walk reads it for every edge, and `Symbol` is 64 bytes.
fn target_blocks(graph: &LinkGraph) -> Vec<u32> {
    graph
        .symbols
        .iter()
        .map(|s| match s.def {
            // (Block ids stay far below `DISCARDED`: that many blocks
            // would take hundreds of gigabytes.)
            SymbolDef::Defined { block, .. } => block.0,
            SymbolDef::Discarded => DISCARDED,
            _ => NONE,
        })
        .collect()
}

/// The state of [`prune`]'s walk that its threads share.
struct Walk<'g> {
    graph: &'g LinkGraph,
    fdes: FdeLists,
    target_block: Vec<u32>,
    /// Reached; set when a block is queued, so each is queued once (not
    /// once per edge into it), by whichever thread claims it.
    live: Vec<AtomicBool>,
}

/// What walking some blocks of a level found.
#[derive(Default)]
struct Step {
    /// Blocks reached for the first time: the next level.
    next: Vec<BlockId>,
    /// Referenced `__start_`/`__stop_` symbols (by symbol index).
    start_stop: Vec<u32>,
    /// The first (block, edge index) referring to a discarded section.
    discarded: Option<(BlockId, usize)>,
}

impl Step {
    fn join(mut self, other: Step) -> Step {
        self.next.extend(other.next);
        self.start_stop.extend(other.start_stop);
        self.discarded = self.discarded.into_iter().chain(other.discarded).min();
        self
    }
}

impl Walk<'_> {
    /// Marks `b` reached; whether this call did (it is to be walked).
    fn claim(&self, b: BlockId) -> bool {
        let live = &self.live[b.index()];
        // A load first: most edges lead to blocks reached already.
        !live.load(Ordering::Relaxed) && !live.swap(true, Ordering::Relaxed)
    }

    /// Walks the edges, CIE and FDEs of `blocks`.
    fn step(&self, blocks: &[BlockId], start_stop: &FxHashMap<u32, SectionId>) -> Step {
        let mut step = Step::default();
        for &b in blocks {
            let block = &self.graph.blocks[b.index()];
            for (i, e) in block.edges.iter().enumerate() {
                match self.target_block[e.target.index()] {
                    NONE => {
                        if start_stop.contains_key(&e.target.0) {
                            step.start_stop.push(e.target.0);
                        }
                    }
                    DISCARDED if block.live => {
                        if step.discarded.is_none_or(|d| (b, i) < d) {
                            step.discarded = Some((b, i));
                        }
                    }
                    DISCARDED => {}
                    t => {
                        if self.claim(BlockId(t)) {
                            step.next.push(BlockId(t));
                        }
                    }
                }
            }
            let cie = block.fde.map(|f| f.cie);
            for b in cie.into_iter().chain(self.fdes.of(b)) {
                if self.claim(b) {
                    step.next.push(b);
                }
            }
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Content, Edge, Edges, FdeLinks, Prot, Symbol, SymbolId};
    use crate::isa::Isa;

    /// Numbers below a bound, from `seed` (xorshift: the same graph for the
    /// same seed on every machine).
    fn xorshift(seed: u64) -> impl FnMut(usize) -> usize {
        let mut rng = seed;
        move |below: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % below as u64) as usize
        }
    }

    /// A random graph of `n` blocks in two objects (the second an archive
    /// member): each block defines one symbol and refers to a few others
    /// (a few of them externals or in a discarded section when `discarded`);
    /// every fourth block is an FDE of the block before it.
    fn random_graph(n: usize, seed: u64, discarded: bool) -> LinkGraph {
        let mut next = xorshift(seed);
        let mut g = LinkGraph::new();
        g.set_isa(Isa::X86_64);
        let (a, lib) = (g.add_object("a.o"), g.add_object("lib.a(m.o)"));
        g.objects[lib.index()].library = true;
        let text = g.section(".text", Prot::ReadExec, SectionRole::Ordinary);
        let eh = g.section(".eh_frame", Prot::Read, SectionRole::EhFrame);
        let pc32 = Isa::X86_64.edge(2).expect("R_X86_64_PC32");
        let symbol = Symbol::local_for_test;
        for i in 0..n {
            let fde = i % 4 == 3;
            let object = if i < n / 2 { a } else { lib };
            let b = g.add_block(Block {
                section: if fde { eh } else { text },
                object: Some(object),
                input_section: if fde { ".eh_frame" } else { ".text" }.into(),
                input_offset: 64 * i as u64,
                content: Content::Zero(64),
                align: 16,
                edges: Edges::new(),
                fde: fde.then(|| FdeLinks {
                    cie: BlockId(0),
                    function: Some(BlockId(i as u32 - 1)),
                }),
                live: true,
                addr: 0,
            });
            g.add_symbol(symbol(SymbolDef::Defined {
                block: b,
                offset: 0,
            }));
        }
        let external = g.add_symbol(symbol(SymbolDef::External));
        let gone = g.add_symbol(symbol(SymbolDef::Discarded));
        for i in 0..n {
            if i % 4 == 3 {
                continue;
            }
            // Archive members mostly call each other: chains only live
            // code reaches.
            for k in 0..next(4) {
                let to = match next(50) {
                    0 => external,
                    1 if discarded && i > n / 3 => gone,
                    _ if i >= n / 2 => SymbolId((n / 2 + next(n / 2)) as u32),
                    _ => SymbolId(next(n) as u32),
                };
                let e = Edge::new(8 * k as u32, pc32, to, -4);
                g.blocks[i].edges.push(e);
            }
        }
        g
    }

    /// The walk as written before it went level by level: one thread, a
    /// stack, the first discarded reference met ends it.
    fn reference_live(g: &LinkGraph, roots: &Roots) -> Vec<bool> {
        let targets = target_blocks(g);
        let fdes = FdeLists::new(g);
        let mut live = vec![false; g.blocks.len()];
        let mut work = prune_roots(g, roots);
        work.retain(|b| !std::mem::replace(&mut live[b.index()], true));
        while let Some(b) = work.pop() {
            let block = &g.blocks[b.index()];
            let cie = block.fde.map(|f| f.cie);
            let edges = block.edges.iter().map(|e| targets[e.target.index()]);
            let reached = edges
                .filter(|&t| t < DISCARDED)
                .map(BlockId)
                .chain(cie)
                .chain(fdes.of(b));
            for t in reached {
                if !std::mem::replace(&mut live[t.index()], true) {
                    work.push(t);
                }
            }
        }
        live
    }

    #[test]
    fn the_level_walk_keeps_what_a_plain_walk_keeps_in_small_and_parallel_graphs() {
        for (n, seed) in [(200, 1), (6_000, 2), (20_000, 3)] {
            let g = random_graph(n, seed, false);
            for roots in [Roots::All, Roots::Symbols(Vec::new())] {
                let want = reference_live(&g, &roots);
                let mut pruned = random_graph(n, seed, false);
                prune(&mut pruned, &roots).expect("no discarded references");
                let got: Vec<bool> = pruned.blocks.iter().map(|b| b.live).collect();
                assert_eq!(got, want, "n = {n}, roots = {roots:?}");
                if matches!(roots, Roots::All) {
                    // Of the archive member, what live code reaches is kept.
                    let lib = &got[n / 2..];
                    assert!(lib.contains(&true) && lib.contains(&false), "n = {n}");
                }
            }
        }
    }

    /// A graph of one object (no archive member) with unwind information:
    /// `n` code blocks, each defining a symbol and calling a few others or
    /// an external, then CIEs and FDEs — FDEs of code, of no code, and
    /// dead ones (their CIE dropped), CIEs no FDE uses.
    fn unwind_graph(n: usize, seed: u64) -> LinkGraph {
        let mut next = xorshift(seed);
        let mut g = LinkGraph::new();
        g.set_isa(Isa::X86_64);
        let a = g.add_object("a.o");
        let text = g.section(".text", Prot::ReadExec, SectionRole::Ordinary);
        let eh = g.section(".eh_frame", Prot::Read, SectionRole::EhFrame);
        let pc32 = Isa::X86_64.edge(2).expect("R_X86_64_PC32");
        let block = |section, fde| Block {
            section,
            object: Some(a),
            input_section: ".text".into(),
            input_offset: 0,
            content: Content::Zero(64),
            align: 16,
            edges: Edges::new(),
            fde,
            live: true,
            addr: 0,
        };
        for _ in 0..n {
            let b = g.add_block(block(text, None));
            g.add_symbol(Symbol::local_for_test(SymbolDef::Defined {
                block: b,
                offset: 0,
            }));
        }
        let external = g.add_symbol(Symbol::local_for_test(SymbolDef::External));
        for i in 0..n {
            for k in 0..next(4) {
                let to = if next(20) == 0 {
                    external
                } else {
                    SymbolId(next(n) as u32)
                };
                g.blocks[i]
                    .edges
                    .push(Edge::new(8 * k as u32, pc32, to, -4));
            }
        }
        let cies: Vec<BlockId> = (0..4).map(|_| g.add_block(block(eh, None))).collect();
        for i in 0..n {
            let function = match next(10) {
                0 => continue,
                1 => None,
                _ => Some(BlockId(i as u32)),
            };
            let cie = cies[next(3)];
            let fde = g.add_block(block(eh, Some(FdeLinks { cie, function })));
            g.blocks[fde.index()].live = next(10) != 0;
            // An FDE refers to its code.
            g.blocks[fde.index()]
                .edges
                .push(Edge::new(8, pc32, SymbolId(i as u32), 0));
        }
        g
    }

    /// Where every block is a root and nothing leads into unwind
    /// information but its own links, the blocks the walk keeps are found
    /// without it — and are the walk's.
    #[test]
    fn a_graph_kept_whole_is_pruned_without_the_walk_as_by_it() {
        for (n, seed) in [(50, 1), (3_000, 2), (12_000, 3)] {
            let g = unwind_graph(n, seed);
            let reached = reference_live(&g, &Roots::All);
            let want: Vec<bool> = g
                .blocks
                .iter()
                .zip(reached)
                .map(|(b, r)| b.live && r)
                .collect();
            assert_eq!(all_reached(&g, &Roots::All), Some(want.clone()), "n = {n}");
            // Some unwind information is dropped, some kept.
            let eh = &want[n..];
            assert!(eh.contains(&true) && eh.contains(&false), "n = {n}");
            assert!(!want[n + 3], "the fourth CIE is used by no FDE");
            let mut pruned = unwind_graph(n, seed);
            prune(&mut pruned, &Roots::All).expect("nothing discarded");
            let got: Vec<bool> = pruned.blocks.iter().map(|b| b.live).collect();
            assert_eq!(got, want, "n = {n}");
        }
    }

    /// Whatever would let the walk reach more than the roots and the
    /// unwind links, or must be checked edge by edge, takes the walk.
    #[test]
    fn a_graph_the_walk_must_read_is_walked() {
        let n = 40;
        let defined_in_eh = |g: &mut LinkGraph| {
            let fde = BlockId(n as u32 + 4);
            g.add_symbol(Symbol::local_for_test(SymbolDef::Defined {
                block: fde,
                offset: 0,
            }));
        };
        let discarded = |g: &mut LinkGraph| {
            g.add_symbol(Symbol::local_for_test(SymbolDef::Discarded));
        };
        let library = |g: &mut LinkGraph| g.objects[0].library = true;
        let start_stop = |g: &mut LinkGraph| {
            g.global("__start_.text", crate::graph::ObjectId(0));
        };
        let dead_code = |g: &mut LinkGraph| {
            let code = g.blocks.iter().find_map(|b| b.fde?.function);
            g.blocks[code.expect("an FDE of code").index()].live = false;
        };
        let fde_of_unwind_info = |g: &mut LinkGraph| {
            let fde = g.blocks.len() - 1;
            if let Some(f) = &mut g.blocks[fde].fde {
                f.function = Some(BlockId(n as u32));
            }
        };
        let cie_an_fde = |g: &mut LinkGraph| {
            let fde = BlockId(g.blocks.len() as u32 - 1);
            for b in &mut g.blocks {
                if let Some(f) = &mut b.fde {
                    f.cie = fde;
                }
            }
        };
        type Change<'a> = (&'a str, &'a dyn Fn(&mut LinkGraph));
        let changes: [Change<'_>; 7] = [
            ("a symbol defined in unwind information", &defined_in_eh),
            ("a symbol in a discarded section", &discarded),
            ("an archive member", &library),
            ("a __start_ symbol", &start_stop),
            ("dead code", &dead_code),
            ("an FDE of unwind information", &fde_of_unwind_info),
            ("an FDE used as a CIE", &cie_an_fde),
        ];
        for (what, change) in changes {
            let mut g = unwind_graph(n, 5);
            change(&mut g);
            assert_eq!(all_reached(&g, &Roots::All), None, "{what}");
        }
        let g = unwind_graph(n, 5);
        assert_eq!(all_reached(&g, &Roots::Symbols(Vec::new())), None);
    }

    #[test]
    fn the_error_names_the_first_discarded_reference_by_block_and_edge() {
        for n in [400, 8_000] {
            let mut g = random_graph(n, 7, true);
            // The first reference to the discarded section from a reached
            // block, by (block, edge), is the one a user is told of.
            let live = reference_live(&g, &Roots::All);
            let gone = SymbolId(g.symbols.len() as u32 - 1);
            let first = (0..n)
                .filter(|&b| live[b])
                .find_map(|b| {
                    let edges = &g.blocks[b].edges;
                    edges.iter().position(|e| e.target == gone).map(|i| (b, i))
                })
                .expect("the graph refers to the discarded section");
            let block = &g.blocks[first.0];
            let offset = block.input_offset + u64::from(block.edges[first.1].offset);
            let err = prune(&mut g, &Roots::All).expect_err("a discarded reference");
            let want_object = if first.0 < n / 2 { "a.o" } else { "lib.a(m.o)" };
            match err {
                LinkError::DiscardedReference {
                    object, offset: at, ..
                } => assert_eq!((object.as_str(), at), (want_object, offset), "n = {n}"),
                e => panic!("{e}"),
            }
        }
    }
}
