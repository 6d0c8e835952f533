//! Pass: veneers (step 7b). On an ISA whose direct calls reach less than
//! an image may span ([`RelocArch::VENEER`]: aarch64's `BL` reaches
//! ±128 MiB), a call whose target may lie out of reach goes through a
//! veneer: a block of the ISA's veneer template (aarch64: `adrp x16; add
//! x16; br x16`) placed right after the calling block, whose own edges —
//! the template's patches, ordinary edges of the graph — reach the target.
//! The layout is then made again. On x86-64 (no veneer: a rel32 call
//! reaches ±2 GiB) and for images whose code fits the reach, nothing runs
//! but a length check.

use kiln_arch::{Aarch64, EdgeTarget, RelocArch, X86_64};

use super::layout::Layout;
use crate::graph::{
    Block, BlockId, Content, Edge, FxHashMap, LinkGraph, Linkage, Prot, Scope, Symbol, SymbolDef,
    SymbolId,
};
use crate::isa::Isa;

/// The PLT: each external's stub offset, and its block.
pub(super) type Plt<'a> = (&'a super::got_plt::SymOffsets, Option<BlockId>);

/// Adds the veneers calls of `graph` laid out as `layout` need; `true` if
/// it added any (the layout must then be made again).
pub(super) fn add_veneers(graph: &mut LinkGraph, layout: &Layout, plt: Plt<'_>) -> bool {
    match graph.isa() {
        Isa::X86_64 => add::<X86_64>(graph, layout, plt),
        Isa::Aarch64 => add::<Aarch64>(graph, layout, plt),
    }
}

/// One call that needs a veneer: its block and edge, and what the veneer
/// jumps to (symbol, addend).
type Far = (BlockId, usize, SymbolId, i64);

fn add<A: RelocArch>(graph: &mut LinkGraph, layout: &Layout, plt: Plt<'_>) -> bool {
    let Some(template) = A::VENEER else {
        return false;
    };
    let (min, max) = A::BRANCH_RANGE;
    let reach = min.unsigned_abs().min(max.unsigned_abs());
    let code: u64 = layout
        .segments
        .iter()
        .filter(|s| s.2 == Prot::ReadExec)
        .map(|s| s.1)
        .sum();
    if code < reach / 2 {
        return false;
    }
    let far = far_calls::<A>(graph, layout, plt, (template.size + template.align) as u64);
    if far.is_empty() {
        return false;
    }
    insert_veneers::<A>(graph, &far, plt);
    true
}

/// The calls that may not reach their target once veneers (at most one of
/// `veneer_bytes` per call) are inserted anywhere before them.
fn far_calls<A: RelocArch>(
    graph: &LinkGraph,
    layout: &Layout,
    plt: Plt<'_>,
    veneer_bytes: u64,
) -> Vec<Far> {
    let mut offset = vec![u64::MAX; graph.blocks.len()];
    for &(b, off) in &layout.placed {
        offset[b.index()] = off;
    }
    let code = |b: &Block| b.live && graph.sections[b.section.index()].prot == Prot::ReadExec;
    let calls = graph
        .blocks
        .iter()
        .filter(|b| code(b))
        .flat_map(|b| &b.edges)
        .filter(|e| e.kind.target == EdgeTarget::Branch)
        .count() as u64;
    let slack = calls.saturating_mul(veneer_bytes) as i128;
    let (min, max) = A::BRANCH_RANGE;
    let mut far = Vec::new();
    for (bi, b) in graph.blocks.iter().enumerate() {
        if !code(b) {
            continue;
        }
        for (ei, e) in b.edges.iter().enumerate() {
            if e.kind.target != EdgeTarget::Branch {
                continue;
            }
            let Some(target) = target_offset(graph, &offset, plt, e) else {
                continue;
            };
            let place = i128::from(offset[bi]) + i128::from(e.offset);
            let d = target - place;
            if d - slack < i128::from(min) || d + slack > i128::from(max) {
                far.push((BlockId(bi as u32), ei, e.target, e.addend()));
            }
        }
    }
    far
}

/// Where a call's target lies in the layout: its symbol plus addend, or
/// its PLT stub.
fn target_offset(graph: &LinkGraph, offset: &[u64], plt: Plt<'_>, e: &Edge) -> Option<i128> {
    if let (Some(off), Some(pb)) = (plt.0.get(e.target), plt.1) {
        return Some(i128::from(offset[pb.index()]) + i128::from(off));
    }
    match graph.symbols[e.target.index()].def {
        SymbolDef::Defined { block, offset: o } if offset[block.index()] != u64::MAX => {
            Some(i128::from(offset[block.index()]) + i128::from(o) + i128::from(e.addend()))
        }
        _ => None,
    }
}

/// A local symbol at `offset` of `block`.
fn local(graph: &mut LinkGraph, block: BlockId, offset: u64, size: u64) -> SymbolId {
    let object = graph.blocks[block.index()].object;
    graph.add_symbol(Symbol {
        name: None,
        def: SymbolDef::Defined { block, offset },
        object,
        size,
        scope: Scope::Local,
        linkage: Linkage::Strong,
        callable: true,
        tls: false,
        weak_ref: false,
    })
}

/// One veneer per calling block and target, right after the block; each
/// far call retargeted to its veneer.
fn insert_veneers<A: RelocArch>(graph: &mut LinkGraph, far: &[Far], plt: Plt<'_>) {
    let Some(template) = A::VENEER else { return };
    let isa = graph.isa();
    let mut made: FxHashMap<(BlockId, SymbolId, i64), SymbolId> = FxHashMap::default();
    let mut after: FxHashMap<BlockId, Vec<BlockId>> = FxHashMap::default();
    for &(caller, ei, target, addend) in far {
        let veneer = match made.get(&(caller, target, addend)) {
            Some(&v) => v,
            None => {
                // A stub's address when the call goes through the PLT.
                let (to, to_addend) = match (plt.0.get(target), plt.1) {
                    (Some(off), Some(pb)) => (local(graph, pb, off, 0), 0),
                    _ => (target, addend),
                };
                let mut bytes = vec![0u8; template.size];
                // Immediates zero; the edges below fill them.
                if A::write_veneer(&mut bytes, 0, 0).is_err() {
                    continue;
                }
                let edges = template
                    .patches
                    .iter()
                    .filter_map(|p| {
                        Some(Edge::new(
                            p.offset,
                            isa.edge(p.r_type)?,
                            to,
                            to_addend + p.addend,
                        ))
                    })
                    .collect();
                let c = &graph.blocks[caller.index()];
                let block = graph.add_block(Block {
                    section: c.section,
                    object: c.object,
                    input_section: c.input_section.clone(),
                    input_offset: c.input_offset + c.content.len(),
                    content: Content::Bytes(bytes),
                    align: template.align as u64,
                    edges,
                    fde: None,
                    live: true,
                    addr: 0,
                });
                after.entry(caller).or_default().push(block);
                let v = local(graph, block, 0, template.size as u64);
                made.insert((caller, target, addend), v);
                v
            }
        };
        let e = &mut graph.blocks[caller.index()].edges[ei];
        e.target = veneer;
        e.set_addend(0);
    }
    // Each veneer right after its caller in the section's order.
    let mut veneer = vec![false; graph.blocks.len()];
    for b in after.values().flatten() {
        veneer[b.index()] = true;
    }
    for s in &mut graph.sections {
        if !s.blocks.iter().any(|b| after.contains_key(b)) {
            continue;
        }
        let mut order = Vec::with_capacity(s.blocks.len());
        for &b in &s.blocks {
            if veneer[b.index()] {
                continue;
            }
            order.push(b);
            if let Some(v) = after.get(&b) {
                order.extend_from_slice(v);
            }
        }
        s.blocks = order;
    }
}
