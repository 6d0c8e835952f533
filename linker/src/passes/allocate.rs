//! Pass: allocate. Memory for the laid-out image (below 2 GiB when
//! non-PIE code needs it, near the host's libraries otherwise), then every
//! block's final address; the pages are mapped while fixup runs.

use super::got_plt::{LinkerBlocks, Requests};
use super::layout::Layout;
use super::{PhaseTimings, Prepared};
use crate::error::LinkError;
use crate::graph::{BlockId, FxHashSet, LinkGraph, SymbolId};
use crate::memory::{Allocation, Placement};

/// Where the image must go: below 2 GiB when its own code needs it or
/// `below_2gib` asks (non-PIE code of another image refers to it), near
/// the host's libraries otherwise.
pub(super) fn placement(req: &Requests, below_2gib: bool) -> Placement {
    if req.needs_low.is_some() || below_2gib {
        Placement::Low
    } else {
        Placement::Near
    }
}

/// Allocate the image's memory and give every placed block its address.
pub(super) fn allocate(
    mut graph: LinkGraph,
    req: Requests,
    blocks: LinkerBlocks,
    reach_stubs: Vec<SymbolId>,
    layout: Layout,
    placement: Placement,
) -> Result<Prepared, LinkError> {
    let (alloc, low) = reserve(&graph, &req, &layout, placement)?;
    let base = alloc.base();
    for &(b, off) in &layout.placed {
        graph.blocks[b.index()].addr = base + off;
    }
    let mut tls = layout.tls;
    if tls.filesz > 0 {
        tls.image_addr += base;
    }
    // Fixup writes these pages: map them meanwhile (not zero-fill or
    // padding, which may be far larger than what is written).
    let prefault = alloc.prefault_runs(layout.written, !graph.serial);
    Ok(Prepared {
        prefault,
        graph,
        alloc,
        segments: layout.segments,
        got: blocks.got,
        got_block: blocks.got_block,
        plt: blocks.plt,
        plt_block: blocks.plt_block,
        tls,
        tls_module: None,
        eh_frame: layout.eh_frame.map(|(o, l)| (base + o, l)),
        externals: Default::default(),
        external_refs: req.external_refs,
        specials: req.specials,
        copy_blocks: blocks.copy_blocks,
        reach_stubs: reach_stubs.into_iter().collect(),
        dso_block: blocks.dso_block,
        placed: layout.placed.into_iter().map(|(b, _)| b).collect(),
        low,
        jit_data: FxHashSet::default(),
        timings: PhaseTimings::default(),
    })
}

/// `total` bytes at `placement`, and whether they lie below 2 GiB. An
/// image low only for others' sake goes near when low memory is short.
fn reserve(
    graph: &LinkGraph,
    req: &Requests,
    layout: &Layout,
    placement: Placement,
) -> Result<(Allocation, bool), LinkError> {
    let (total, align) = (layout.total, layout.align);
    let mut alloc = Allocation::new_staged_aligned(total, align, placement)
        .map_err(|e| blame_largest_block(graph, e))?;
    let mut low = placement == Placement::Low;
    if alloc.is_none() && req.needs_low.is_none() && low {
        // Only asked to be low for others' sake: near still links; the
        // non-PIE code that cannot reach it fails with a named error.
        // (Copies and stubs were chosen for low: finalize uses each only
        // if its target is still out of reach.)
        alloc = Allocation::new_staged_aligned(total, align, Placement::Near)
            .map_err(|e| blame_largest_block(graph, e))?;
        low = false;
    }
    match alloc {
        Some(a) => Ok((a, low)),
        None => {
            let (b, offset, reloc) = req
                .needs_low
                .map_or((BlockId(0), 0, "none (asked for)"), |(b, e)| {
                    (b, e.offset, e.kind.name)
                });
            let block = &graph.blocks[b.index()];
            Err(LinkError::LowMemoryUnavailable {
                object: graph.object_name(block.object).to_string(),
                section: block.input_section.to_string(),
                offset: block.input_offset + u64::from(offset),
                reloc,
            })
        }
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
    let mut detail = match largest {
        Some(b) => format!(
            "{detail} (largest input: {} section {}, {:#x} bytes)",
            graph.object_name(b.object),
            b.input_section,
            b.content.len()
        ),
        None => detail,
    };
    let aligned = graph
        .blocks
        .iter()
        .filter(|b| b.live && b.align > crate::memory::PAGE)
        .max_by_key(|b| b.align);
    if let Some(b) = aligned {
        detail.push_str(&format!(
            " (most aligned input: {} section {}, align {:#x})",
            graph.object_name(b.object),
            b.input_section,
            b.align
        ));
    }
    LinkError::Memory { detail, source }
}
