//! Pass: layout. Offsets for every live block: RX, then R, then RW, each
//! page-aligned, `.eh_frame` records back to back; thread-local blocks
//! apart, in the image's TLS block.

use super::TlsLayout;
use crate::graph::{BlockId, LinkGraph, Prot, SectionRole};
use crate::memory::PAGE;

/// Round `x` up to a multiple of `a` (saturating: an absurd layout then
/// fails to allocate instead of overflowing).
pub(super) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)).saturating_mul(a.max(1))
}

/// Offsets in the image, before it has an address.
#[derive(Debug)]
pub(super) struct Layout {
    /// Live blocks outside TLS with their offsets, in address order.
    pub(super) placed: Vec<(BlockId, u64)>,
    /// `(offset, length, protection)` of each segment.
    pub(super) segments: Vec<(u64, u64, Prot)>,
    /// `.eh_frame`'s offset and length (with its zero terminator).
    pub(super) eh_frame: Option<(u64, u64)>,
    /// The TLS block (its image's offset in [`TlsLayout::image_addr`]).
    pub(super) tls: TlsLayout,
    /// Bytes to allocate (whole pages).
    pub(super) total: u64,
}

/// Lay out the thread-local blocks (their `addr` becomes their offset in
/// the TLS block), then every other live block.
pub(super) fn lay_out(graph: &mut LinkGraph) -> Layout {
    let mut tls = lay_out_tls(graph);
    let mut offset = 0u64;
    let mut segments = Vec::new();
    let mut eh_frame = None;
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
            tls.image_addr = offset;
            offset = offset.saturating_add(tls.filesz);
        }
        if offset > start {
            segments.push((start, offset - start, prot));
        }
    }
    Layout {
        placed,
        segments,
        eh_frame,
        tls,
        total: align_up(offset.max(1), PAGE),
    }
}

/// Offsets of the live thread-local blocks in the TLS block: `.tdata`
/// (its initialization image), then `.tbss`.
fn lay_out_tls(graph: &mut LinkGraph) -> TlsLayout {
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
    tls
}
