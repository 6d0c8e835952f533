//! Pass: finalize. The image's `.eh_frame` checked as the unwinder will
//! read it, initializers and finalizers collected, the TLS image
//! initialized, the symbol table and (imaging mode) the saving record
//! built, final protections set, and debuggers told.

use std::collections::HashMap;
use std::time::Instant;

use super::fixup::{Fixed, not_writable};
use super::got_plt::GotKey;
use super::{Finalized, FinalizedKeeping, ImageEnv, LinkOptions, LinkStats, Prepared};
use crate::error::LinkError;
use crate::graph::{LinkGraph, SectionRole, SymbolDef, SymbolId};
use crate::runtime;

/// Finalize a fixed-up image; hands the graph back (unless
/// [`LinkOptions::keep_graph`] put it in [`Finalized::graph`]) instead of
/// freeing it: freeing a big graph takes milliseconds, which the engine
/// layer spends after the image is emitted.
pub(super) fn finalize(
    fixed: Fixed,
    env: &ImageEnv,
    options: &LinkOptions,
) -> Result<FinalizedKeeping, LinkError> {
    let Fixed {
        prepared: mut p,
        tls_module,
        addrs,
        edge_count,
        started,
        // Taken by `fix_up_and_finalize_apart`; the plain path fails on them.
        failed_objects: _,
    } = fixed;
    let base = p.alloc.base();
    let mem = p.alloc.bytes_mut().ok_or_else(|| not_writable(env))?;
    if let Some((start, len)) = p.eh_frame {
        let off = (start + len - 4 - base) as usize;
        mem[off..off + 4].fill(0);
        let records = &mem[(start - base) as usize..off];
        check_eh_frame(&p.graph, start, records)?;
    }
    let init_fini = collect_init_fini(&p.graph, mem, base);
    if let Some(module) = &tls_module {
        let start = (p.tls.image_addr.saturating_sub(base)) as usize;
        let tdata = &mem[start..start + p.tls.filesz as usize];
        module.initialize(tdata).map_err(|e| {
            LinkError::tls_refused("the initial values of the image's thread-locals", e)
        })?;
    }
    let symbols = symbol_table(&p, &addrs, options);
    let fixed_at = Instant::now();
    p.prefault.wait();
    let imaging = if options.imaging {
        let tls = tls_module.as_ref().map(|m| tls_for_imaging(&p, &addrs, m));
        let mut record = imaging_record(&mut p, &addrs, &init_fini, env, tls)?;
        record.cpu_features |= options.cpu_features.bits();
        Some(Box::new(record))
    } else {
        None
    };
    // Code for another ISA never runs here: its memory stays as written,
    // the imaging record's (normalized where it is).
    if !imaging.as_ref().is_some_and(|r| r.in_image) {
        p.alloc.finalize(&p.segments)?;
    }
    let mut timings = p.timings;
    timings.fixup = fixed_at - started;
    timings.finalize = fixed_at.elapsed();
    let stats = LinkStats {
        objects: p.graph.objects.len(),
        blocks: p.graph.blocks.iter().filter(|b| b.live).count(),
        symbols: p.graph.symbols.len(),
        relocations: edge_count,
        got_entries: p.got.len(),
        plt_stubs: p.plt.len(),
        bytes: p.alloc.len(),
        timings,
    };
    let dso_handle = p.dso_handle();
    let debug = announce(&p, env, options)?;
    let (kept, graph) = if options.keep_graph {
        (Some(p.graph), None)
    } else {
        (None, Some(p.graph))
    };
    let finalized = Finalized {
        alloc: p.alloc,
        symbols,
        eh_frame: p.eh_frame,
        init_fini,
        tls: p.tls,
        dso_handle,
        tls_module,
        stats,
        graph: kept,
        imaging,
        debug,
    };
    Ok((finalized, graph))
}

/// Name → address of every global the image defines (empty unless
/// [`LinkOptions::symbol_table`]).
fn symbol_table(p: &Prepared, addrs: &[u64], options: &LinkOptions) -> HashMap<Box<str>, u64> {
    if !options.symbol_table {
        return HashMap::new();
    }
    let g = &p.graph;
    g.global_names()
        .filter_map(|(n, id)| {
            let s = &g.symbols[id.index()];
            match s.def {
                SymbolDef::Defined { block, .. } if g.blocks[block.index()].live => {
                    Some((n.into(), addrs[id.index()]))
                }
                SymbolDef::Absolute(v) => Some((n.into(), v)),
                _ => None,
            }
        })
        .collect()
}

/// What saving the image needs ([`LinkOptions::imaging`]): every fixup
/// classified (see [`crate::image_file::classify`]).
fn imaging_record(
    p: &mut Prepared,
    addrs: &[u64],
    init_fini: &[(Box<str>, Vec<usize>)],
    env: &ImageEnv,
    tls: Option<crate::image_file::classify::LinkedTls>,
) -> Result<crate::image_file::ImagingRecord, LinkError> {
    let got_base = p.got_base();
    let base = p.alloc.base();
    let got_slots: Vec<(u64, SymbolId)> = p
        .got
        .iter()
        .filter_map(|(k, off)| match k {
            GotKey::Addr(s) => Some((got_base + off, s)),
            _ => None,
        })
        .collect();
    let mem = p.alloc.bytes_mut().ok_or_else(|| not_writable(env))?;
    crate::image_file::classify::record(crate::image_file::classify::Linked {
        graph: &p.graph,
        addrs,
        got_slots,
        base,
        memory: mem,
        in_place: p.graph.isa() != crate::isa::Isa::HOST,
        segments: &p.segments,
        eh_frame: p.eh_frame,
        init_fini,
        is_special: &|id| p.specials.contains_key(&id),
        specials: p.specials.keys().copied().collect(),
        resolved: &|id| p.externals.get(&id).copied().unwrap_or(0),
        tls,
    })
}

/// The image's thread-locals as saving needs them: the template and every
/// GOT word a load binds from its own TLS module (module ids, initial-exec
/// thread-pointer offsets, TLSDESC descriptors).
fn tls_for_imaging(
    p: &Prepared,
    addrs: &[u64],
    module: &runtime::tls::TlsModule,
) -> crate::image_file::classify::LinkedTls {
    use crate::image_file::classify::tls_slot as kind;
    let got_base = p.got_base();
    let mut slots = Vec::new();
    for (k, off) in p.got.iter() {
        let at = got_base + off;
        match k {
            GotKey::TlsGd(s) => slots.push((at, kind::MODULE_ID, addrs[s.index()])),
            GotKey::TlsLd => slots.push((at, kind::MODULE_ID, 0)),
            GotKey::TpOff(s) => slots.push((at, kind::TP_OFFSET, addrs[s.index()])),
            GotKey::TlsDesc(s) => {
                slots.push((at, kind::DESC_RESOLVER, addrs[s.index()]));
                slots.push((at + 8, kind::DESC_ARGUMENT, addrs[s.index()]));
            }
            GotKey::Addr(_) => {}
        }
    }
    crate::image_file::classify::LinkedTls {
        image_addr: p.tls.image_addr,
        image_size: p.tls.filesz,
        size: p.tls.memsz,
        align: p.tls.align,
        area_offset: module.static_range().map(|r| r.0),
        slots,
    }
}

/// What [`announce`] did now and left for later.
/// Tells debuggers and profilers about the finalized image, as
/// [`LinkOptions::debug`] asks (nothing at all by default): before its
/// addresses are handed out, so that a function's perf map line (or GDB
/// entry) exists before anyone can call it.
fn announce(
    p: &Prepared,
    env: &ImageEnv,
    options: &LinkOptions,
) -> Result<Option<crate::debug::DebugRegistration>, LinkError> {
    if !options.debug.any() {
        return Ok(None);
    }
    let plt_base = p.plt_block.map_or(0, |b| p.graph.blocks[b.index()].addr);
    let plt: Vec<(SymbolId, u64)> = p
        .plt
        .iter()
        .map(|(sym, off)| (sym, plt_base + off))
        .collect();
    let stub_size = p.graph.isa().plt_stub_size() as u64;
    let info = crate::debug::ImageInfo {
        name: &env.name,
        graph: &p.graph,
        eh_frame: p.eh_frame,
        extra: crate::debug::plt_symbols(&p.graph, &plt, stub_size),
    };
    crate::debug::register_image(&info, &options.debug).map_err(|source| LinkError::Debug {
        image: env.name.clone(),
        source,
    })
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
            return Err(LinkError::runtime("the image's .eh_frame", e));
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
    use crate::graph::{Block, Content, Edges, Prot};

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
                edges: Edges::new(),
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
