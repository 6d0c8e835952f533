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
    /// The largest alignment a placed block (or the TLS image) asks for:
    /// the image's address must be a multiple of it.
    pub(super) align: u64,
    /// `(offset, length)` runs that fixup writes, ascending: everything
    /// but zero-fill (`.bss`, commons) and the padding between blocks
    /// (gaps under [`WRITTEN_GAP`] are bridged). Only these are mapped up
    /// front.
    pub(super) written: Vec<(u64, u64)>,
}

/// Zero gaps shorter than this between written blocks are mapped with
/// them (one `madvise` run instead of several).
const WRITTEN_GAP: u64 = 4 * PAGE;

/// Adds `[off, off + len)` to the ascending runs `runs`.
fn add_run(runs: &mut Vec<(u64, u64)>, off: u64, len: u64) {
    if len == 0 {
        return;
    }
    match runs.last_mut() {
        Some((o, l)) if off <= o.saturating_add(*l).saturating_add(WRITTEN_GAP) => {
            *l = (*l).max(off.saturating_add(len) - *o);
        }
        _ => runs.push((off, len)),
    }
}

/// Lay out the thread-local blocks (their `addr` becomes their offset in
/// the TLS block), then every other live block.
pub(super) fn lay_out(graph: &mut LinkGraph) -> Layout {
    let mut tls = lay_out_tls(graph);
    let mut offset = 0u64;
    let mut segments = Vec::new();
    let mut eh_frame = None;
    let mut placed: Vec<(BlockId, u64)> = Vec::new();
    let mut written = Vec::new();
    let mut max_align = 1;
    for prot in [Prot::ReadExec, Prot::Read, Prot::ReadWrite] {
        offset = align_up(offset, PAGE);
        let start = offset;
        for s in graph.sections.iter().filter(|s| s.prot == prot) {
            if matches!(s.role, SectionRole::TlsData | SectionRole::TlsBss) {
                continue;
            }
            let eh = s.role == SectionRole::EhFrame;
            // The linker's own blocks are filled in at fixup, whatever
            // their content says now.
            let linkers = matches!(s.role, SectionRole::Got | SectionRole::Plt);
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
                max_align = max_align.max(block.align);
                if linkers || block.content.bytes().is_some() {
                    add_run(&mut written, offset, block.content.len());
                }
                offset = offset.saturating_add(block.content.len());
            }
            if eh && let Some(f) = first {
                // Zero terminator after the last live record.
                add_run(&mut written, offset, 4);
                offset = offset.saturating_add(4);
                eh_frame = Some((f, offset - f));
            }
        }
        if prot == Prot::Read && tls.filesz > 0 {
            offset = align_up(offset, tls.align);
            tls.image_addr = offset;
            max_align = max_align.max(tls.align);
            add_run(&mut written, offset, tls.filesz);
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
        align: max_align,
        written,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Block, Content, Edges};

    fn add(g: &mut LinkGraph, name: &str, prot: Prot, content: Content, align: u64) {
        let obj = g.add_object("a.o");
        let section = g.section(name, prot, SectionRole::Ordinary);
        g.add_block(Block {
            section,
            object: Some(obj),
            input_section: name.into(),
            input_offset: 0,
            content,
            align,
            edges: Edges::new(),
            fde: None,
            live: true,
            addr: 0,
        });
    }

    #[test]
    fn zero_fill_and_padding_are_not_written_and_the_largest_alignment_is_kept() {
        let mut g = LinkGraph::new();
        add(
            &mut g,
            ".text",
            Prot::ReadExec,
            Content::Bytes(vec![0xc3; 16]),
            16,
        );
        add(
            &mut g,
            ".data",
            Prot::ReadWrite,
            Content::Bytes(vec![1; 8]),
            8,
        );
        add(&mut g, ".bss", Prot::ReadWrite, Content::Zero(1 << 30), 64);
        add(
            &mut g,
            ".data.big",
            Prot::ReadWrite,
            Content::Bytes(vec![2; 8]),
            1 << 24,
        );
        let layout = lay_out(&mut g);
        assert_eq!(layout.align, 1 << 24);
        let data_big = layout.placed[3].1;
        assert_eq!(data_big % (1 << 24), 0);
        // .text and .data (the gap between them bridged); .data.big after
        // the GiB of .bss.
        assert_eq!(
            layout.written,
            vec![(0, PAGE + 8), (data_big, 8)],
            "{layout:?}"
        );
        assert!(layout.total > 1 << 30);
    }
}
