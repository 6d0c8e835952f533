//! Pass: keep what the roots reach (as `ld --gc-sections`), FDEs with
//! their code, `__start_`/`__stop_` sections with their references.

use super::Roots;
use crate::error::LinkError;
use crate::graph::{Block, BlockId, FxHashMap, LinkGraph, SectionId, SectionRole, SymbolDef};

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
