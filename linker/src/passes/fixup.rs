//! Pass: fixup. Final symbol values (far host symbols redirected to their
//! copy or stub), GOT and PLT contents, then every live block copied into
//! the image and its relocations applied there (in parallel for large
//! graphs: rayon lives here, inside the pass).

use std::time::Instant;

use rayon::prelude::*;

use super::edges;
use super::got_plt::{GotKey, GotTable, SymOffsets};
use super::{ImageEnv, LinkOptions, Prepared};
use crate::error::LinkError;
use crate::graph::{
    Block, Content, Edge, FxHashMap, LinkGraph, ObjectId, SectionRole, SymbolDef, SymbolId,
};
use crate::isa::Isa;
use crate::runtime::tls::{Foreign, TlsModule};
use kiln_arch::{Aarch64, EdgeTarget, RelocArch, X86_64};

/// Copy and fix up blocks in parallel from this many bytes on, even with
/// few relocations (copying ~1 MB takes about as long as starting a task).
const PARALLEL_COPY_BYTES: usize = 1 << 20;

/// What a block that cannot be fixed up does to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockErrors {
    /// Fails it (the first error found).
    Fail,
    /// Is recorded by object ([`Fixed::failed_objects`]); the other
    /// blocks are fixed up.
    Collect,
}

/// An image after fixup: what finalize needs.
#[derive(Debug)]
pub(super) struct Fixed {
    /// With [`BlockErrors::Collect`]: each object some of whose blocks
    /// could not be fixed up, with the first such error (`None`: a block
    /// of no object, the linker's own).
    pub(super) failed_objects: Vec<(Option<ObjectId>, LinkError)>,
    pub(super) prepared: Prepared,
    /// The image's TLS module (module id and thread-pointer offsets fixed).
    pub(super) tls_module: Option<TlsModule>,
    /// Final value of every symbol, by id, as edges see it.
    pub(super) addrs: Vec<u64>,
    /// Relocations applied.
    pub(super) edge_count: usize,
    /// When fixup started.
    pub(super) started: Instant,
}

/// Fix up `p` into its memory.
pub(super) fn fix_up(
    mut p: Prepared,
    env: &ImageEnv,
    options: &LinkOptions,
    block_errors: BlockErrors,
) -> Result<Fixed, LinkError> {
    let started = Instant::now();
    // The TLS module fixes module id and thread-pointer offset before fixup.
    p.set_up_tls_module(env)?;
    let tls_module = p.tls_module.take();
    let tls = tls_module.as_ref();
    // Final value of every symbol, computed once.
    let mut addrs: Vec<u64> = (0..p.graph.symbols.len())
        .map(|i| p.symbol_address(SymbolId(i as u32)))
        .collect();
    let got_addrs = redirect_far_host_symbols(&mut p, &mut addrs)?;
    let tls = TlsContext {
        own: tls,
        imaging: options.imaging,
    };
    let tpoffs = tp_offsets(&p, &addrs, tls)?;
    write_got(&mut p, &addrs, &got_addrs, tls)?;
    write_plt(&mut p)?;
    let edge_count: usize = p.graph.blocks.iter().map(|b| b.edges.len()).sum();
    let failed = fix_blocks(
        &mut p,
        &addrs,
        &tpoffs,
        edge_count,
        env,
        options,
        block_errors,
    )?;
    let failed_objects = by_object(&p.graph, failed);
    Ok(Fixed {
        failed_objects,
        prepared: p,
        tls_module,
        addrs,
        edge_count,
        started,
    })
}

impl Prepared {
    /// Step 8b: the image's TLS module, if it has a TLS block, the link a
    /// place for it and it was not made already.
    pub(super) fn set_up_tls_module(&mut self, env: &ImageEnv) -> Result<(), LinkError> {
        if self.tls_module.is_none() {
            self.tls_module = tls_module(self, env)?;
        }
        Ok(())
    }
}

/// The image's TLS module, if it has a TLS block and the link a place for it.
fn tls_module(p: &Prepared, env: &ImageEnv) -> Result<Option<TlsModule>, LinkError> {
    match (p.tls.memsz > 0, env.tls_placement) {
        (true, Some(placement)) => {
            crate::image_file::tls::check_foreign_template(
                p.graph.isa(),
                p.tls.memsz,
                p.tls.align,
            )?;
            let placement = foreign_tls_placement(&p.graph, placement);
            let module = TlsModule::new(
                &env.name,
                p.tls.memsz as usize,
                p.tls.align as usize,
                placement,
            )
            .map_err(|e| {
                LinkError::tls_refused(
                    format!(
                        "the image's thread-locals ({})",
                        largest_tls_inputs(&p.graph)
                    ),
                    e,
                )
            })?;
            Ok(Some(module))
        }
        _ => Ok(None),
    }
}

/// An image for another ISA than kiln's takes no range of kiln's static
/// TLS area: its thread-pointer offsets are the C loader's
/// ([`crate::image_file::tls::foreign_tp_offset`]) and its module is only
/// a placeholder for the slots bound at load.
fn foreign_tls_placement(
    g: &LinkGraph,
    placement: crate::runtime::tls::TlsPlacement,
) -> crate::runtime::tls::TlsPlacement {
    match crate::image_file::tls::foreign_area(g.isa()) {
        Some(_) => crate::runtime::tls::TlsPlacement::Dynamic,
        None => placement,
    }
}

/// Redirect host symbols that 32-bit references cannot reach (chosen by
/// [`super::reach::out_of_reach_host_symbols`], checked again now that the
/// addresses are resolved): data to its copy (snapshotted now), functions
/// to their PLT stub. Returns the values GOT entries hold: the real
/// addresses (or the copies'); only edges see the stubs.
fn redirect_far_host_symbols(p: &mut Prepared, addrs: &mut [u64]) -> Result<Vec<u64>, LinkError> {
    let g = &p.graph;
    let plt_base = p.plt_block.map_or(0, |b| g.blocks[b.index()].addr);
    let (base, len, low) = (p.alloc.base(), p.alloc.len(), p.low);
    let far = |host: u64| edges::out_of_image_reach(host, base, len, low);
    let mut snapshots = Vec::new();
    for (&sym, &block) in &p.copy_blocks {
        let host = addrs[sym.index()];
        if host != 0 && far(host) {
            if crate::memory::in_jit_memory(host) {
                // The name is the host's, the definition another
                // image's: a snapshot of JIT data would fork it.
                return Err(p.data_out_of_reach(sym));
            }
            snapshots.push((block, host));
            addrs[sym.index()] = g.blocks[block.index()].addr;
        }
    }
    let got_addrs = addrs.to_vec();
    for &sym in &p.reach_stubs {
        let host = addrs[sym.index()];
        if far(host)
            && let Some(off) = p.plt.get(sym)
        {
            if p.jit_data.contains(&sym) && crate::memory::in_jit_memory(host) {
                // Another image's data: a stub's bytes are no stand-in.
                return Err(p.data_out_of_reach(sym));
            }
            addrs[sym.index()] = plt_base + off;
        }
    }
    for (block, host) in snapshots {
        if let Content::Bytes(v) = &mut p.graph.blocks[block.index()].content {
            // SAFETY: `host` is the address the resolver gave for a host
            // data symbol whose dynamic symbol table entry says it has
            // `v.len()` bytes; it is mapped readable while its library is loaded.
            let src = unsafe { std::slice::from_raw_parts(host as *const u8, v.len()) };
            v.copy_from_slice(src);
        }
    }
    Ok(got_addrs)
}

/// Where a link's thread-locals are: its own TLS module, and other
/// images' (bound through [`Foreign`] unless the link makes an image,
/// which binds thread-locals only within itself).
#[derive(Clone, Copy)]
struct TlsContext<'a> {
    own: Option<&'a TlsModule>,
    imaging: bool,
}

impl TlsContext<'_> {
    /// The other image's thread-local external `sym` resolved to, or
    /// `None` if `sym` is the image's own (or the linker's).
    fn foreign(
        &self,
        p: &Prepared,
        addrs: &[u64],
        sym: SymbolId,
    ) -> Result<Option<Foreign>, LinkError> {
        let g = &p.graph;
        if g.symbols[sym.index()].def != SymbolDef::External || p.specials.contains_key(&sym) {
            return Ok(None);
        }
        let found = (!self.imaging)
            .then(|| Foreign::of(addrs[sym.index()]))
            .flatten();
        let why = if self.imaging {
            "an image binds thread-locals only within itself"
        } else {
            "no TLS module of another image defines it"
        };
        found.map(Some).ok_or_else(|| {
            LinkError::tls(format!(
                "thread-local `{}` (used by {}) is not defined in this link, and {why}",
                g.symbol_name(sym),
                users(g, |e| e.target == sym)
            ))
        })
    }
}

/// The thread-pointer offset of TLS symbol `sym` (for relocation `reloc`).
fn tp_offset(
    p: &Prepared,
    tls: TlsContext<'_>,
    addrs: &[u64],
    sym: SymbolId,
    reloc: &str,
) -> Result<i64, LinkError> {
    let g = &p.graph;
    let refused = |e| {
        LinkError::tls_refused(
            format!("the thread-pointer offset of `{}`", g.symbol_name(sym)),
            e,
        )
    };
    if let Some(foreign) = tls.foreign(p, addrs, sym)? {
        // Who uses it is found (a walk over every edge) only for an error.
        let user = || {
            (
                g.symbol_name(sym),
                users(g, |e| e.target == sym),
                reloc.into(),
            )
        };
        return foreign.static_tp_offset(user).map_err(refused);
    }
    let module = tls.own.ok_or_else(|| no_tls(g, sym))?;
    if let Some(off) = crate::image_file::tls::foreign_tp_offset(g.isa(), addrs[sym.index()]) {
        return Ok(off);
    }
    module
        .static_tp_offset(
            addrs[sym.index()],
            &g.symbol_name(sym),
            g.object_name(g.symbols[sym.index()].object),
            reloc,
        )
        .map_err(refused)
}

/// The GOT's contents: addresses, TLS module ids and offsets, descriptors.
fn write_got(
    p: &mut Prepared,
    addrs: &[u64],
    got_addrs: &[u64],
    tls: TlsContext<'_>,
) -> Result<(), LinkError> {
    let Some(gb) = p.got_block else {
        return Ok(());
    };
    let g = &p.graph;
    let desc_refused = |s: SymbolId, e| {
        let what = format!(
            "`{}` (used by {})",
            g.symbol_name(s),
            users(g, |e| e.target == s)
        );
        LinkError::tls_refused(what, e)
    };
    let ie_name = g.isa().name_of(|t| t == EdgeTarget::TlsIeEntry);
    let mut got_bytes = vec![0u8; g.blocks[gb.index()].content.len() as usize];
    for (key, off) in p.got.iter() {
        let off = off as usize;
        let mut put = |at: usize, v: u64| {
            got_bytes[off + at..off + at + 8].copy_from_slice(&v.to_le_bytes());
        };
        match key {
            GotKey::Addr(s) => put(0, got_addrs[s.index()]),
            GotKey::TpOff(s) => put(0, tp_offset(p, tls, addrs, s, ie_name)? as u64),
            GotKey::TlsGd(s) => match tls.foreign(p, addrs, s)? {
                Some(foreign) => {
                    put(0, foreign.module_id());
                    put(8, foreign.offset());
                }
                None => {
                    let m = tls.own.ok_or_else(|| no_tls(g, s))?;
                    put(0, m.module_id());
                    put(8, addrs[s.index()]);
                }
            },
            GotKey::TlsDesc(s) => {
                let d = match tls.foreign(p, addrs, s)? {
                    Some(foreign) => foreign.tlsdesc(),
                    None => tls
                        .own
                        .ok_or_else(|| no_tls(g, s))?
                        .tlsdesc(addrs[s.index()]),
                };
                let d = d.map_err(|e| desc_refused(s, e))?;
                put(0, d.resolver as u64);
                put(8, d.argument as u64);
            }
            GotKey::TlsLd => {
                let m = tls.own.ok_or_else(|| {
                    LinkError::tls(format!(
                        "local-dynamic TLS used (by {}) but no TLS support was provided",
                        users(g, |e| e.kind.target == EdgeTarget::TlsLdPair)
                    ))
                })?;
                put(0, m.module_id());
                put(8, 0);
            }
        }
    }
    p.graph.blocks[gb.index()].content = Content::Bytes(got_bytes);
    Ok(())
}

/// The PLT stubs' contents: each jumps through its symbol's GOT entry.
fn write_plt(p: &mut Prepared) -> Result<(), LinkError> {
    let Some(pb) = p.plt_block else {
        return Ok(());
    };
    let got_base = p.got_base();
    let stub_base = p.graph.blocks[pb.index()].addr;
    let isa = p.graph.isa();
    let stub_size = isa.plt_stub_size();
    let mut bytes = vec![0; p.plt.len() * stub_size];
    isa.fill_code(&mut bytes, stub_base);
    for (sym, off) in p.plt.iter() {
        let Some(slot) = p.got.get(GotKey::Addr(sym)) else {
            return Err(LinkError::engine_bug(format!(
                "the PLT stub of {} has no GOT slot (linker bug)",
                p.graph.symbol_name(sym)
            )));
        };
        let entry = got_base + slot;
        let stub = &mut bytes[off as usize..off as usize + stub_size];
        isa.write_plt_stub(stub, stub_base + off, entry)
            .map_err(|source| LinkError::Fixup {
                object: "<linker>".into(),
                section: "$__STUBS".into(),
                offset: off,
                reloc: "PltStub",
                symbol: p.graph.symbol_name(sym),
                source: crate::Cause::new(source),
                hint: None,
            })?;
    }
    p.graph.blocks[pb.index()].content = Content::Bytes(bytes);
    Ok(())
}

/// Thread-pointer offsets of the targets of TP-relative edges, computed
/// before the parallel part; local-dynamic code that reaches another
/// image's thread-local refused.
fn tp_offsets(
    p: &Prepared,
    addrs: &[u64],
    tls: TlsContext<'_>,
) -> Result<FxHashMap<SymbolId, i64>, LinkError> {
    let g = &p.graph;
    let mut tpoffs: FxHashMap<SymbolId, i64> = FxHashMap::default();
    let has_tls = g.symbols.iter().any(|s| s.tls);
    for b in g.blocks.iter().filter(|b| b.live && has_tls) {
        for e in &b.edges {
            let local_dynamic =
                matches!(e.kind.target, EdgeTarget::TlsLdPair | EdgeTarget::DtpOffset);
            if local_dynamic && tls.foreign(p, addrs, e.target)?.is_some() {
                return Err(local_dynamic_across_images(g, b, e));
            }
            if e.kind.target == EdgeTarget::TpOffset && !tpoffs.contains_key(&e.target) {
                let reloc = e.kind.name;
                let v = tp_offset(p, tls, addrs, e.target, reloc)?;
                tpoffs.insert(e.target, v);
            }
        }
    }
    Ok(tpoffs)
}

/// Every live block with contents: `(offset in the image, block index)`,
/// in address order (the layout's order, the TLS image's blocks in their
/// place), and their total size.
fn block_places(p: &Prepared) -> (Vec<(usize, usize)>, usize) {
    let g = &p.graph;
    let base = p.alloc.base();
    let tls_data = g
        .sections
        .iter()
        .filter(|s| s.role == SectionRole::TlsData)
        .flat_map(|s| s.blocks.iter().copied());
    let mut places: Vec<(usize, usize)> = Vec::with_capacity(p.placed.len());
    let mut total_bytes = 0usize;
    for b in p.placed.iter().copied().chain(tls_data) {
        let block = &g.blocks[b.index()];
        let Some(v) = block.content.bytes() else {
            continue;
        };
        if !block.live || v.is_empty() {
            continue;
        }
        let at = match g.sections[block.section.index()].role {
            SectionRole::TlsData => p.tls.image_addr - base + block.addr,
            _ => block.addr - base,
        };
        total_bytes += v.len();
        places.push((at as usize, b.index()));
    }
    if !places.is_sorted() {
        places.sort_unstable();
    }
    (places, total_bytes)
}

/// The error for memory that is not writable when it must be.
pub(super) fn not_writable(env: &ImageEnv) -> LinkError {
    LinkError::Memory {
        detail: format!("{}: the image's memory is not writable", env.name),
        source: std::io::Error::other("bad memory state"),
    }
}

/// The error for block `i` not fitting the layout (a linker bug).
fn layout_bug(g: &LinkGraph, i: usize) -> LinkError {
    LinkError::Memory {
        detail: format!(
            "block {i} of {} does not fit the image's layout (linker bug)",
            g.object_name(g.blocks[i].object)
        ),
        source: std::io::Error::other("overlapping or out-of-range block"),
    }
}

/// Blocks placed back to back in the image whose bytes also lie back to
/// back in one input file (the sections of one object, in its order):
/// copied with one `memcpy`, then fixed up block by block.
struct Run<'p, 'm> {
    /// `(image offset, block)` of each block, in address order.
    places: &'p [(usize, usize)],
    /// The run's bytes in the image, from the first block's offset.
    mem: &'m mut [u8],
    /// The run's bytes in the input (or the one block's own bytes).
    src: &'p [u8],
}

/// Most bytes a [`Run`] spans: runs stay small enough to spread over
/// rayon's threads.
const RUN_BYTES: usize = 64 << 10;

/// Whether `next` continues the bytes of `prev` in the same input file.
fn continues(prev: &Content, next: &Content) -> bool {
    match (prev, next) {
        (
            Content::Input {
                file: f0,
                start: s0,
                len: l0,
            },
            Content::Input {
                file: f1,
                start: s1,
                ..
            },
        ) => std::sync::Arc::ptr_eq(f0, f1) && s0 + l0 == *s1,
        _ => false,
    }
}

/// The source bytes of the blocks `places` (one block, or blocks whose
/// input bytes continue one another: [`continues`]), `len` bytes in all.
fn run_source<'g>(g: &'g LinkGraph, places: &[(usize, usize)], len: usize) -> Option<&'g [u8]> {
    let &[(_, first), ..] = places else {
        return None;
    };
    match &g.blocks[first].content {
        Content::Input { file, start, .. } => file.get(*start..start.checked_add(len)?),
        c => c.bytes().filter(|_| places.len() == 1),
    }
}

/// Disjoint slices of `mem` in address order, one per [`Run`] of the blocks
/// of `places`.
fn carve<'p, 'm>(
    g: &'p LinkGraph,
    mem: &'m mut [u8],
    places: &'p [(usize, usize)],
) -> Result<Vec<Run<'p, 'm>>, LinkError> {
    let mut runs: Vec<Run<'p, 'm>> = Vec::new();
    let mut rest: &mut [u8] = mem;
    let mut next = 0usize;
    let mut first = 0usize;
    while first < places.len() {
        let (at, i) = places[first];
        let mut len = g.blocks[i].content.len() as usize;
        let mut end = first + 1;
        while let Some(&(at_j, j)) = places.get(end) {
            let len_j = g.blocks[j].content.len() as usize;
            let prev = &g.blocks[places[end - 1].1].content;
            if at_j != at + len || len + len_j > RUN_BYTES || !continues(prev, &g.blocks[j].content)
            {
                break;
            }
            len += len_j;
            end += 1;
        }
        let skip = at.checked_sub(next).ok_or_else(|| layout_bug(g, i))?;
        if skip.saturating_add(len) > rest.len() {
            return Err(layout_bug(g, i));
        }
        let src = run_source(g, &places[first..end], len)
            .filter(|s| s.len() == len)
            .ok_or_else(|| layout_bug(g, i))?;
        let (slot, tail) = std::mem::take(&mut rest)[skip..].split_at_mut(len);
        rest = tail;
        next = at + len;
        runs.push(Run {
            places: &places[first..end],
            mem: slot,
            src,
        });
        first = end;
    }
    Ok(runs)
}

/// Copy each live block's bytes into the image and fix it up there, run by
/// run (in parallel for large graphs): one copy, no intermediate buffers.
/// A kept graph ([`LinkOptions::keep_graph`]) gets the relocated bytes.
fn fix_blocks(
    p: &mut Prepared,
    addrs: &[u64],
    tpoffs: &FxHashMap<SymbolId, i64>,
    edge_count: usize,
    env: &ImageEnv,
    options: &LinkOptions,
    block_errors: BlockErrors,
) -> Result<Vec<(usize, LinkError)>, LinkError> {
    let (places, total_bytes) = block_places(p);
    let got_base = p.got_base();
    let plt_base = p.plt_block.map_or(0, |b| p.graph.blocks[b.index()].addr);
    let g = &p.graph;
    let mem = p.alloc.bytes_mut().ok_or_else(|| not_writable(env))?;
    let mut runs = carve(g, mem, &places)?;
    let ctx = FixupCtx {
        graph: g,
        addrs,
        got: &p.got,
        got_base,
        plt: &p.plt,
        plt_base,
        tpoffs,
        imaging: options.imaging,
    };
    let run = |r: &mut Run<'_, '_>| ctx.copy_and_fix(r, block_errors);
    let parallel = options.parallel
        && (edge_count >= options.parallel_threshold || total_bytes >= PARALLEL_COPY_BYTES);
    let results: Vec<Result<Vec<(usize, LinkError)>, LinkError>> = if parallel {
        runs.par_iter_mut().map(run).collect()
    } else {
        runs.iter_mut().map(run).collect()
    };
    let mut failed = Vec::new();
    for r in results {
        failed.extend(r?);
    }
    // A kept graph holds the relocated bytes.
    let relocated: Vec<(usize, Vec<u8>)> = if options.keep_graph {
        runs.iter()
            .flat_map(|r| {
                let base = r.places[0].0;
                r.places.iter().map(move |&(at, i)| {
                    let len = g.blocks[i].content.len() as usize;
                    (i, r.mem[at - base..at - base + len].to_vec())
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    drop(runs);
    for (i, bytes) in relocated {
        p.graph.blocks[i].content = Content::Bytes(bytes);
    }
    Ok(failed)
}

/// The first error of each object (in block order) among the blocks that
/// `failed` (block index, error), by object.
fn by_object(g: &LinkGraph, failed: Vec<(usize, LinkError)>) -> Vec<(Option<ObjectId>, LinkError)> {
    let mut failed: Vec<(Option<ObjectId>, usize, LinkError)> = failed
        .into_iter()
        .map(|(i, e)| (g.blocks[i].object, i, e))
        .collect();
    failed.sort_by_key(|&(o, i, _)| (o, i));
    failed.dedup_by_key(|(o, _, _)| *o);
    failed.into_iter().map(|(o, _, e)| (o, e)).collect()
}

/// What fixing up one edge reads; shared by the parallel tasks.
pub(super) struct FixupCtx<'a> {
    pub(super) graph: &'a LinkGraph,
    pub(super) addrs: &'a [u64],
    pub(super) got: &'a GotTable,
    pub(super) got_base: u64,
    pub(super) plt: &'a SymOffsets,
    pub(super) plt_base: u64,
    pub(super) tpoffs: &'a FxHashMap<SymbolId, i64>,
    /// Imaging mode: host symbols only through their slots.
    pub(super) imaging: bool,
}

impl FixupCtx<'_> {
    /// Copy a run's bytes into the image, then fix up each of its blocks;
    /// returns the blocks that could not be fixed up (with
    /// [`BlockErrors::Collect`]; otherwise the first fails the run).
    fn copy_and_fix(
        &self,
        run: &mut Run<'_, '_>,
        block_errors: BlockErrors,
    ) -> Result<Vec<(usize, LinkError)>, LinkError> {
        run.mem.copy_from_slice(run.src);
        let base = run.places[0].0;
        let mut failed = Vec::new();
        for &(at, i) in run.places {
            let len = self.graph.blocks[i].content.len() as usize;
            match self.fix_placed(i, &mut run.mem[at - base..at - base + len]) {
                Ok(()) => {}
                Err(e) if block_errors == BlockErrors::Collect => failed.push((i, e)),
                Err(e) => return Err(e),
            }
        }
        Ok(failed)
    }

    /// Fix up block `i`, copied to `slot`, its place in the image.
    fn fix_placed(&self, i: usize, slot: &mut [u8]) -> Result<(), LinkError> {
        let g = self.graph;
        let block = &g.blocks[i];
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
            self.fix_block(block, slot)
        }
    }

    /// Apply every edge of `block` to `bytes` (its place in the image),
    /// with the fixups of the graph's ISA.
    fn fix_block(&self, block: &Block, bytes: &mut [u8]) -> Result<(), LinkError> {
        match self.graph.isa() {
            Isa::X86_64 => self.fix_block_as::<X86_64>(block, bytes),
            Isa::Aarch64 => self.fix_block_as::<Aarch64>(block, bytes),
        }
    }

    fn fix_block_as<A: RelocArch>(&self, block: &Block, bytes: &mut [u8]) -> Result<(), LinkError> {
        for e in &block.edges {
            edges::fix_edge::<A>(self, block, e, bytes).map_err(|(source, hint)| {
                LinkError::Fixup {
                    object: self.graph.object_name(block.object).to_string(),
                    section: block.input_section.to_string(),
                    offset: block.input_offset + u64::from(e.offset),
                    reloc: edges::reloc_label(e),
                    symbol: self.graph.symbol_name(e.target),
                    source: crate::Cause::new(source),
                    hint,
                }
            })?;
        }
        Ok(())
    }

    /// The address of the GOT entry for `key`.
    pub(super) fn got_entry(&self, key: GotKey) -> Option<u64> {
        self.got.get(key).map(|o| self.got_base + o)
    }
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

/// The error for local-dynamic code (`e` in `b`) reaching a thread-local
/// of another image: its module offsets are its own image's.
#[cold]
fn local_dynamic_across_images(g: &LinkGraph, b: &Block, e: &Edge) -> LinkError {
    LinkError::tls(format!(
        "{} reaches thread-local `{}`, which another image defines, with local-dynamic code ({} at {}+{:#x}), which reaches its own image's thread-locals only: link the objects that share hidden thread-locals as one image (in one add_objects call; the codegen units of one Rust crate are such objects)",
        g.object_name(b.object),
        g.symbol_name(e.target),
        e.kind.name,
        b.input_section,
        b.input_offset + u64::from(e.offset),
    ))
}

fn no_tls(g: &LinkGraph, s: SymbolId) -> LinkError {
    LinkError::tls(format!(
        "`{}` ({}): no TLS support was provided to this link",
        g.symbol_name(s),
        g.object_name(g.symbols[s.index()].object)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Edges, InputBytes, Prot};

    /// Blocks of one input file back to back in the image and in the file
    /// share one run; a gap in the image, another file or owned bytes start
    /// a new one. Every block's bytes land at its place either way.
    #[test]
    fn carve_joins_blocks_back_to_back_in_image_and_input() {
        let mut g = LinkGraph::new();
        g.set_isa(Isa::X86_64);
        let s = g.section(".text", Prot::ReadExec, SectionRole::Ordinary);
        let file: InputBytes = std::sync::Arc::new((0..64u8).collect::<Vec<u8>>().into());
        let other: InputBytes = std::sync::Arc::new((100..164u8).collect::<Vec<u8>>().into());
        let input = |f: &InputBytes, start, len| Content::input(f, start, len).expect("in file");
        let contents = [
            input(&file, 0, 8),         // at 0
            input(&file, 8, 8),         // at 8: continues the first
            input(&file, 16, 4),        // at 20: a gap in the image
            input(&other, 20, 4),       // at 24: another file
            Content::Bytes(vec![7; 4]), // at 28: owned bytes
            input(&file, 40, 4),        // at 32: not next in the file
        ];
        let ats = [0usize, 8, 20, 24, 28, 32];
        let mut places = Vec::new();
        for (c, at) in contents.into_iter().zip(ats) {
            let b = g.add_block(Block {
                section: s,
                object: None,
                input_section: ".text".into(),
                input_offset: 0,
                content: c,
                align: 1,
                edges: Edges::new(),
                fde: None,
                live: true,
                addr: at as u64,
            });
            places.push((at, b.index()));
        }
        let mut mem = vec![0u8; 36];
        let mut runs = carve(&g, &mut mem, &places).expect("fits");
        let lens: Vec<usize> = runs.iter().map(|r| r.places.len()).collect();
        assert_eq!(lens, [2, 1, 1, 1, 1]);
        for r in &mut runs {
            r.mem.copy_from_slice(r.src);
        }
        drop(runs);
        let mut want = vec![0u8; 36];
        want[..16].copy_from_slice(&(0..16).collect::<Vec<u8>>());
        want[20..24].copy_from_slice(&[16, 17, 18, 19]);
        want[24..28].copy_from_slice(&[120, 121, 122, 123]);
        want[28..32].copy_from_slice(&[7; 4]);
        want[32..36].copy_from_slice(&[40, 41, 42, 43]);
        assert_eq!(mem, want);
    }
}
