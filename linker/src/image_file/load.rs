//! Loading an image file: one reservation in the JIT slab, segments at their
//! saved offsets, rebase, bind the imports, final protections — then the
//! same runtime duties as a fresh link ([`LinkedImage`]: `.eh_frame`
//! registration, initializers and finalizers by priority, `__dso_handle`).
//! A file opened for loading (`load_file`, [`ImageFile::load`]) is mapped
//! at its final protections where it can be (`map_final`): the pages the
//! load writes are prepared in memory and written without ever being
//! writable; otherwise (`map_from`) the image is mapped read-write,
//! written, then protected.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use std::sync::Arc;

use super::checked::{self, CheckedFile};
use super::read::{self, Parsed};
use super::registry::{self, Registration};
use super::{BuildId, ImageDependency, ImageError, format, verified};
use crate::graph::Prot;
use crate::host::SymbolResolver;
use crate::image::{LinkedImage, SortedSymbols};
use crate::memory::{Allocation, Placement};
use crate::passes::{Finalized, LinkStats, TlsLayout};
use crate::runtime;

fn link_err(name: &str, source: crate::LinkError) -> ImageError {
    ImageError::Link {
        name: name.to_string(),
        source: crate::Cause::new(source),
    }
}

/// Takes memory for the image and fills it: segments at their offsets,
/// zeros elsewhere, every rebased word plus the base. Writes no text after
/// this (binding writes only the non-text words the parser checked). With
/// `file` (the file `p` was parsed from), each segment's pages are mapped
/// from it copy-on-write instead of copied — its last, partial page too,
/// as `ld.so` does, with the part the segment zero-fills (`memsz` past
/// `filesz`) cleared — in one `mmap` for segments that lie alike in the
/// file and in memory, so that only the pages rebasing and binding write
/// are copied.
pub(crate) fn map_from(
    p: &Parsed<'_>,
    file_name: &str,
    file: Option<&std::fs::File>,
) -> Result<Allocation, ImageError> {
    let page = crate::memory::PAGE;
    // (image offset, file offset, length) of the file mappings; (file
    // offset, image offset, length) of the copies; image ranges to clear.
    let mut runs: Vec<(u64, u64, u64)> = Vec::with_capacity(p.segments.len());
    let mut copied = Vec::with_capacity(p.segments.len());
    let mut cleared = Vec::new();
    for s in &p.segments {
        // The parser checked both ranges (file and image), page-aligned
        // starts, ascending segments and `filesz <= memsz`: the rounded-up
        // file pages stay inside the segment's memory pages (and before the
        // next segment's), and past the file's end only within its last
        // page (which reads as zero there).
        match file {
            Some(_) if s.offset.is_multiple_of(page) && s.vaddr.is_multiple_of(page) => {
                let len = s.filesz.div_ceil(page) * page;
                match runs.last_mut() {
                    Some((v, o, l)) if *v + *l == s.vaddr && *o + *l == s.offset => *l += len,
                    _ if len > 0 => runs.push((s.vaddr, s.offset, len)),
                    _ => {}
                }
                let zero_end = (s.vaddr + s.memsz).min(s.vaddr + len);
                if s.vaddr + s.filesz < zero_end {
                    cleared.push((s.vaddr + s.filesz, zero_end));
                }
            }
            _ => copied.push((s.offset, s.vaddr, s.filesz)),
        }
    }
    // Pages the file will cover are not made read-write first: the file
    // mapping does that (one `mprotect` fewer per load).
    let covered: Vec<(u64, u64)> = runs.iter().map(|&(v, _, l)| (v, l)).collect();
    // At a multiple of the base alignment the header records (checked:
    // a power of two up to `MAX_BASE_ALIGN`): blocks aligned beyond a page
    // stay aligned.
    let (size, align) = (p.header.image_size, p.header.base_align);
    let mut alloc = Allocation::new_covered_aligned(size, align, Placement::Near, &covered)
        .map_err(|e| link_err(file_name, e))?
        .ok_or_else(|| ImageError::Malformed {
            name: file_name.into(),
            detail: "no JIT memory is available for the image".into(),
        })?;
    let base = alloc.base();
    if let Some(f) = file {
        for &(vaddr, offset, len) in &runs {
            alloc
                .map_file(vaddr, len, f, offset)
                .map_err(|e| link_err(file_name, e))?;
        }
    }
    let mem = alloc.bytes_mut().ok_or_else(|| ImageError::Malformed {
        name: file_name.into(),
        detail: "fresh JIT memory is not writable".into(),
    })?;
    // What the file does not hold stays as it is: zero, as fresh
    // allocations always are (`Allocation::new`). Writing zeros here would
    // touch, and so fault in, every page of the image, `.bss` included.
    for (offset, vaddr, len) in copied {
        let src = &p.file[offset as usize..(offset + len) as usize];
        mem[vaddr as usize..(vaddr + len) as usize].copy_from_slice(src);
    }
    for (start, end) in cleared {
        mem[start as usize..end as usize].fill(0);
    }
    rebase(mem, &p.rebase, base, file_name)?;
    Ok(alloc)
}

/// Adds `base` to the little-endian word at each offset of `rebase` in
/// `mem` (536 words for Lua's image): one compare per word, no slice made.
fn rebase(mem: &mut [u8], rebase: &[u64], base: u64, file_name: &str) -> Result<(), ImageError> {
    // The last offset whose word fits.
    let last = (mem.len() as u64).checked_sub(8);
    let at = mem.as_mut_ptr();
    for &off in rebase {
        if last.is_none_or(|l| off > l) {
            return Err(ImageError::Malformed {
                name: file_name.into(),
                detail: format!("rebased word at {off:#x} is outside the image"),
            });
        }
        // SAFETY: `off + 8 <= mem.len()` (checked just above): the
        // unaligned 8-byte access stays inside `mem`, which is borrowed
        // exclusively.
        unsafe {
            let w = at.add(off as usize).cast::<u64>();
            w.write_unaligned(u64::from_le(w.read_unaligned()).wrapping_add(base).to_le());
        }
    }
    Ok(())
}

/// The most bytes [`map_final`] prepares in memory (from the first page a
/// load writes to the last): an image whose written words lie further
/// apart is mapped read-write instead ([`map_from`]).
const MAX_PREPARED: u64 = 1 << 20;

/// How [`map_final`] maps an image whose segments all lie page-aligned in
/// its file and that has no thread-locals, worked out once per file (a
/// kept file keeps it: see `checked.rs`).
pub(crate) struct FinalPlan {
    /// (image offset, file offset, length, protection) of the mappings.
    maps: Vec<(u64, u64, u64, Prot)>,
    /// (image offset, length) of the mappings.
    covered: Vec<(u64, u64)>,
    /// The pages a load writes, as runs `(offset, len)` of whole pages,
    /// ascending: those holding a rebased word, an import's word or a
    /// last page's bytes past its segment's file size (cleared).
    runs: Vec<(u64, u64)>,
    /// The image's bytes from the first written page to the end of the
    /// last one as the mappings show them (the file's, zero past its end
    /// and where nothing is mapped), the cleared ranges cleared: what a
    /// load rebases and binds.
    start: u64,
    template: Vec<u8>,
    /// The rebased words of the template, one bit per word (bit `k` of
    /// `rebased[i]`: the word at `start + 8 * (64 * i + k)`): 128 bytes
    /// for Lua's 536 words rather than their 4 kB list, read on each load.
    rebased: Vec<u64>,
}

/// The pages [`map_final`] writes, built before they are written: the
/// plan's template (at the plan's `start`), rebased, then bound.
pub(crate) struct Prepared<'a> {
    plan: &'a FinalPlan,
    bytes: Vec<u8>,
}

/// The plan for mapping `p` at its final protections, `None` if it does
/// not lie so (a segment not page-aligned in the file, thread-locals,
/// written words more than [`MAX_PREPARED`] apart).
pub(crate) fn final_plan(p: &Parsed<'_>) -> Option<FinalPlan> {
    let page = crate::memory::PAGE;
    if p.header.tls.size != 0 {
        return None;
    }
    let mut maps: Vec<(u64, u64, u64, Prot)> = Vec::with_capacity(p.segments.len());
    let mut cleared = Vec::new();
    for s in &p.segments {
        if !(s.offset.is_multiple_of(page) && s.vaddr.is_multiple_of(page)) {
            return None;
        }
        // As in `map_from` (the parser's checks keep the rounded-up file
        // pages inside the segment's memory pages).
        let len = s.filesz.div_ceil(page) * page;
        match maps.last_mut() {
            Some((v, o, l, pr)) if *v + *l == s.vaddr && *o + *l == s.offset && *pr == s.prot => {
                *l += len
            }
            _ if len > 0 => maps.push((s.vaddr, s.offset, len, s.prot)),
            _ => {}
        }
        let zero_end = (s.vaddr + s.memsz).min(s.vaddr + len);
        if s.vaddr + s.filesz < zero_end {
            cleared.push((s.vaddr + s.filesz, zero_end));
        }
    }
    let runs = written_pages(p, &cleared);
    let start = runs.first().map_or(0, |r| r.0);
    let end = runs.last().map_or(0, |r| r.0 + r.1);
    if end - start > MAX_PREPARED {
        return None;
    }
    let mut template = vec![0u8; (end - start) as usize];
    for &(vaddr, offset, len, _) in &maps {
        let (from, to) = (vaddr.max(start), (vaddr + len).min(end));
        if from >= to {
            continue;
        }
        let src_start = (offset + (from - vaddr)).min(p.file.len() as u64) as usize;
        let src_end = (offset + (to - vaddr)).min(p.file.len() as u64) as usize;
        let dst = (from - start) as usize;
        template[dst..dst + (src_end - src_start)].copy_from_slice(&p.file[src_start..src_end]);
    }
    for (from, to) in cleared {
        template[(from - start) as usize..(to - start) as usize].fill(0);
    }
    // Every rebased word lies in the window (its pages are written) at a
    // multiple of 8 (the parser checked) from `start` (a page).
    let mut rebased = vec![0u64; template.len().div_ceil(8 * 64)];
    for &w in &p.rebase {
        let word = w.checked_sub(start)? / 8;
        if !w.is_multiple_of(8) {
            return None;
        }
        *rebased.get_mut((word / 64) as usize)? |= 1 << (word % 64);
    }
    Some(FinalPlan {
        covered: maps.iter().map(|&(v, _, l, _)| (v, l)).collect(),
        maps,
        runs,
        start,
        template,
        rebased,
    })
}

/// [`map_from`] for an image with a [`FinalPlan`]: each segment's pages
/// mapped from `file` at their final protection (text never writable, not
/// even at load), the pages the load writes (rebased words, imports, tails
/// to clear) prepared in memory instead ([`Prepared`]: rebased now, bound
/// by [`write_prepared`], which writes them into the image without a
/// writable mapping). A load then takes no `mprotect` and no page fault
/// of its own, and no TLB flush for pages that stop being writable.
pub(crate) fn map_final<'a>(
    p: &Parsed<'_>,
    plan: &'a FinalPlan,
    file_name: &str,
    file: &std::fs::File,
) -> Result<(Allocation, Prepared<'a>), ImageError> {
    let (size, align) = (p.header.image_size, p.header.base_align);
    let mut alloc = Allocation::new_covered_aligned(size, align, Placement::Near, &plan.covered)
        .map_err(|e| link_err(file_name, e))?
        .ok_or_else(|| ImageError::Malformed {
            name: file_name.into(),
            detail: "no JIT memory is available for the image".into(),
        })?;
    for &(vaddr, offset, len, prot) in &plan.maps {
        alloc
            .map_file_final(vaddr, len, file, offset, prot)
            .map_err(|e| link_err(file_name, e))?;
    }
    let mut prepared = Prepared {
        plan,
        bytes: plan.template.clone(),
    };
    rebase_marked(&mut prepared.bytes, &plan.rebased, alloc.base(), file_name)?;
    Ok((alloc, prepared))
}

/// Adds `base` to each little-endian word of `mem` whose bit `marks` sets
/// (bit `k` of `marks[i]`: the word at `8 * (64 * i + k)`).
fn rebase_marked(
    mem: &mut [u8],
    marks: &[u64],
    base: u64,
    file_name: &str,
) -> Result<(), ImageError> {
    // Every word a mark can name lies in `mem`: checked once.
    if marks
        .len()
        .checked_mul(8 * 64)
        .is_none_or(|n| n > mem.len())
    {
        return Err(ImageError::Malformed {
            name: file_name.into(),
            detail: "rebased words past the prepared pages".into(),
        });
    }
    let at = mem.as_mut_ptr();
    for (i, &bits) in marks.iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            let off = 8 * (64 * i + bits.trailing_zeros() as usize);
            bits &= bits - 1;
            // SAFETY: `off + 8 <= 8 * 64 * marks.len() <= mem.len()`
            // (checked above): the 8-byte access stays inside `mem`, which
            // is borrowed exclusively.
            unsafe {
                let w = at.add(off).cast::<u64>();
                w.write_unaligned(u64::from_le(w.read_unaligned()).wrapping_add(base).to_le());
            }
        }
    }
    Ok(())
}

/// Binds the imports into `prepared` (as [`bind`]) and writes its pages
/// into `alloc` ([`Allocation::write_at`]).
pub(crate) fn write_prepared(
    p: &Parsed<'_>,
    alloc: &mut Allocation,
    mut prepared: Prepared<'_>,
    file_name: &str,
    names: &ImportNames<'_>,
    answers: &[Option<u64>],
    deps: &[u64],
) -> Result<(), ImageError> {
    let start = prepared.plan.start;
    bind_into(
        p,
        &mut prepared.bytes,
        (alloc.base(), start),
        file_name,
        names,
        answers,
        deps,
    )?;
    for &(off, len) in &prepared.plan.runs {
        let at = (off - start) as usize;
        alloc
            .write_at(off, &prepared.bytes[at..at + len as usize])
            .map_err(|e| link_err(file_name, e))?;
    }
    Ok(())
}

/// The pages a load writes, as runs `(offset, len)` of whole pages,
/// ascending: those holding a rebased word, an import's word or a range of
/// `cleared`.
fn written_pages(p: &Parsed<'_>, cleared: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let page = crate::memory::PAGE;
    let mut pages: Vec<u64> = Vec::with_capacity(8);
    let mut add = |from: u64, to: u64| {
        for at in from / page..to.div_ceil(page) {
            if pages.last() != Some(&at) {
                pages.push(at);
            }
        }
    };
    for &w in &p.rebase {
        add(w, w.saturating_add(8));
    }
    for i in &p.imports {
        add(
            i.offset,
            i.offset.saturating_add(super::read::import_width(i)),
        );
    }
    for &(from, to) in cleared {
        add(from, to);
    }
    pages.sort_unstable();
    pages.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::with_capacity(pages.len());
    for at in pages {
        match runs.last_mut() {
            Some((o, l)) if *o + *l == at * page => *l += page,
            _ => runs.push((at * page, page)),
        }
    }
    runs
}

/// Files the mapped image in the registry (before anything can look up
/// its exports, so images bound to it find it).
pub(crate) fn register(p: &Parsed<'_>, alloc: &Allocation, file_name: &str) -> Registration {
    Registration::new(
        alloc.base(),
        p.header.image_size,
        BuildId(p.header.build_id),
        file_name,
    )
}

/// The base of every dependency of `p`, as `locate` finds them (`(base,
/// size)` of the loaded image with that build id); every missing one is
/// listed in one error, with the build ids `others` gives for its file name
/// (other builds of it that are loaded).
pub(crate) fn dependency_bases(
    p: &Parsed<'_>,
    file_name: &str,
    mut locate: impl FnMut(&ImageDependency) -> Result<Option<(u64, u64)>, ImageError>,
    others: impl Fn(&str) -> Vec<BuildId>,
) -> Result<Vec<u64>, ImageError> {
    let mut bases = Vec::with_capacity(p.deps.len());
    let mut missing = Vec::new();
    for d in &p.deps {
        match locate(d)? {
            Some((base, size)) if size == d.image_size => bases.push(base),
            Some((_, size)) => {
                return Err(ImageError::Field {
                    name: file_name.into(),
                    field: "dependency image size",
                    found: format!("{:#x} ({} {})", d.image_size, d.name, d.build_id),
                    expected: format!("{size:#x}, the loaded image's"),
                });
            }
            None => {
                let mut ids = others(super::file_name_of(&d.name));
                ids.retain(|i| *i != d.build_id);
                missing.push((d.clone(), ids));
            }
        }
    }
    if missing.is_empty() {
        Ok(bases)
    } else {
        Err(ImageError::MissingDependencies {
            name: file_name.into(),
            missing,
        })
    }
}

/// The distinct names imported by name (in table order, what a resolver
/// is asked), and for each import its name's index in them.
pub(crate) struct ImportNames<'a> {
    pub(crate) names: Vec<&'a str>,
    /// Per import: the index of its name in `names` (`u32::MAX`: not by
    /// name).
    index: Vec<u32>,
}

/// The import names of `p` (see [`ImportNames`]).
pub(crate) fn import_names<'a>(p: &Parsed<'a>) -> ImportNames<'a> {
    let mut seen: FxHashMap<&str, u32> =
        FxHashMap::with_capacity_and_hasher(p.imports.len(), Default::default());
    let mut names = Vec::with_capacity(p.imports.len());
    let index = p
        .imports
        .iter()
        .map(|i| {
            if i.dep.is_some() || i.host.is_some() || i.tls.is_some() {
                return u32::MAX;
            }
            *seen.entry(i.name).or_insert_with(|| {
                names.push(i.name);
                (names.len() - 1) as u32
            })
        })
        .collect();
    ImportNames { names, index }
}

/// Writes each import's address (plus addend) into its word: a name's
/// address from `found`, a dependency's base from `deps` plus the offset,
/// a host table entry's address from the process's table (which must be
/// the one saved against); every missing strong import by name is listed
/// in one error.
pub(crate) fn bind(
    p: &Parsed<'_>,
    alloc: &mut Allocation,
    file_name: &str,
    names: &ImportNames<'_>,
    answers: &[Option<u64>],
    deps: &[u64],
) -> Result<(), ImageError> {
    let base = alloc.base();
    let mem = alloc.bytes_mut().ok_or_else(|| ImageError::Malformed {
        name: file_name.into(),
        detail: "the image's memory is no longer writable".into(),
    })?;
    bind_into(p, mem, (base, 0), file_name, names, answers, deps)
}

/// [`bind`] into `mem`, which holds the bytes of the image at `base` from
/// offset `start` on (each import's word must lie in it).
fn bind_into(
    p: &Parsed<'_>,
    mem: &mut [u8],
    (base, start): (u64, u64),
    file_name: &str,
    names: &ImportNames<'_>,
    answers: &[Option<u64>],
    deps: &[u64],
) -> Result<(), ImageError> {
    let table = host_table(p, file_name)?;
    let mut missing: Vec<String> = Vec::new();
    for (i, &n) in p.imports.iter().zip(&names.index) {
        // Thread-local slots are bound from the load's TLS module (`finish`).
        if i.tls.is_some() {
            continue;
        }
        // The parser checked the indices against the tables.
        let target = match (i.dep, i.host) {
            (Some((index, offset)), _) => deps.get(index as usize).map(|b| b.wrapping_add(offset)),
            (None, Some(index)) => table.as_ref().and_then(|t| t.address(index)),
            (None, None) => answers.get(n as usize).copied().flatten(),
        };
        if target.is_none() && i.dep.is_none() && i.host.is_none() && !i.weak {
            missing.push(i.name.to_string());
        }
        let v = target.map_or(0, |a| a.wrapping_add(i.addend as u64));
        let width = super::read::import_width(i) as usize;
        let word = (i.offset.checked_sub(start))
            .and_then(|o| mem.get_mut(o as usize..(o as usize).checked_add(width)?))
            .ok_or_else(|| ImageError::Malformed {
                name: file_name.into(),
                detail: format!("imported word at {:#x} is outside the image", i.offset),
            })?;
        if !i.pc32 {
            word.copy_from_slice(&v.to_le_bytes());
            continue;
        }
        // `S + A - P`, P the field's address in the image at `base`.
        let Some(s) = target else { continue };
        let field = base.wrapping_add(i.offset);
        let distance = v.wrapping_sub(field) as i64;
        let Ok(distance) = i32::try_from(distance) else {
            return Err(ImageError::OutOfReach {
                name: file_name.into(),
                symbol: match i.host {
                    Some(index) => format!("host table entry {index}"),
                    None => i.name.to_string(),
                },
                target: s,
                offset: i.offset,
                base,
            });
        };
        word.copy_from_slice(&distance.to_le_bytes());
    }
    // Nothing runs before the image is finished: the words written above
    // are never used when this fails (the memory is released).
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(ImageError::MissingImports {
            name: file_name.into(),
            missing,
        });
    }
    Ok(())
}

/// The process's host table, if the image was saved against one: it must
/// be the same table (by id).
fn host_table(
    p: &Parsed<'_>,
    file_name: &str,
) -> Result<Option<std::sync::Arc<super::HostTable>>, ImageError> {
    let Some((id, entries, name)) = p.host_table else {
        return Ok(None);
    };
    let current = super::host_table::current();
    match current {
        Some(t) if t.id() == id => Ok(Some(t)),
        other => Err(ImageError::Field {
            name: file_name.into(),
            field: "host table",
            found: format!("{id} (`{name}`, {entries} entries)"),
            expected: other.map_or_else(
                || "a host table registered in this process (none is)".to_string(),
                |t| {
                    format!(
                        "this process's {} (`{}`, {} entries)",
                        t.id(),
                        t.name(),
                        t.len()
                    )
                },
            ),
        }),
    }
}

fn tls_layout(p: &Parsed<'_>, base: u64) -> TlsLayout {
    let t = &p.header.tls;
    TlsLayout {
        image_addr: base.wrapping_add(t.image_offset),
        filesz: t.image_size,
        memsz: t.size,
        align: t.align,
    }
}

/// Debuggers and profilers see the image as they see a link (one GDB
/// object per load), as the process's debug options ask; nothing is
/// built for them when they ask for nothing.
fn announce(
    p: &Parsed<'_>,
    base: u64,
    segments: &[(u64, u64, Prot)],
    eh_frame: Option<(u64, u64)>,
    file_name: &str,
) -> Result<Option<crate::debug::DebugRegistration>, ImageError> {
    let options = crate::debug::DebugOptions::process_default();
    if !options.any() {
        return Ok(None);
    }
    let image = crate::debug::LoadedImage {
        name: p.name,
        segments: segments
            .iter()
            .map(|&(v, m, pr)| (base + v, m, pr))
            .collect(),
        eh_frame,
        exports: (p.exports.iter())
            .map(|e| {
                (
                    e.name,
                    base + e.offset,
                    e.flags & super::format::EXPORT_CALLABLE != 0,
                )
            })
            .collect(),
    };
    crate::debug::register_loaded(&image, &options).map_err(|source| {
        let image = p.name.to_string();
        link_err(file_name, crate::LinkError::Debug { image, source })
    })
}

/// Final protections and the runtime: the loaded image, initializers not
/// yet run; its TLS module made and its thread-local slots bound first.
/// `exports` is `p`'s [`export_table`].
pub(crate) fn finish(
    p: &Parsed<'_>,
    exports: &SortedSymbols,
    mut alloc: Allocation,
    file_name: &str,
) -> Result<LinkedImage, ImageError> {
    let segments: Vec<(u64, u64, Prot)> = p
        .segments
        .iter()
        .map(|s| (s.vaddr, s.memsz, s.prot))
        .collect();
    let tls_module = super::tls::set_up(p, &mut alloc, file_name)?;
    alloc
        .finalize(&segments)
        .map_err(|e| link_err(file_name, e))?;
    let base = alloc.base();
    let init_fini = p
        .init_fini
        .iter()
        .map(|(section, offs)| {
            let entries = offs
                .iter()
                .map(|&o| {
                    if o == u64::MAX {
                        0
                    } else {
                        (base + o) as usize
                    }
                })
                .collect();
            (Box::from(*section), entries)
        })
        .collect();
    let (eh, eh_len) = p.header.eh_frame;
    let eh_frame = (eh_len > 0).then_some((base + eh, eh_len));
    let debug = announce(p, base, &segments, eh_frame, file_name)?;
    let finalized = Finalized {
        // Set below, from the export table as it is (sorted by name).
        symbols: HashMap::new(),
        eh_frame,
        init_fini,
        tls: tls_layout(p, base),
        tls_module,
        stats: LinkStats {
            bytes: alloc.len(),
            ..LinkStats::default()
        },
        graph: None,
        imaging: None,
        debug,
        // The image is named by its base (see below).
        dso_handle: base,
        alloc,
    };
    // The image is named by its base; its `__dso_handle` slot, like any
    // address inside it, names it too (the range `LinkedImage::start` adds).
    let dso = runtime::DsoHandle::new_at(p.name.to_string(), base as usize).map_err(|e| {
        link_err(
            file_name,
            crate::LinkError::runtime("the image's __dso_handle", e),
        )
    })?;
    let mut image =
        LinkedImage::start_with(p.name.to_string(), finalized, dso, false, p.eh_frame_valid)
            .map_err(|e| link_err(file_name, e))?;
    image.set_sorted_symbols(exports.at(base));
    Ok(image)
}

/// The export table of `p` as the loaded image's symbols, at base 0 (a
/// load moves it to its base: [`SortedSymbols::at`]).
pub(crate) fn export_table(p: &Parsed<'_>) -> SortedSymbols {
    let exports = p.exports.iter().map(|e| (e.name, e.offset));
    match p.strings {
        Some(table) => SortedSymbols::from_table(table, exports),
        None => SortedSymbols::from_sorted(exports),
    }
}

/// Loads the image file `bytes` (called `file_name` in errors) into this
/// process: checks it (header fields, CPU features, size, content hash,
/// then every table), finds the images it links against in the
/// [registry](super::registry) by build id (all missing ones listed in one
/// error, naming other builds of them that are loaded), maps it into the
/// JIT slab at one reservation, rebases it, binds its imports by name
/// through `resolver` (all missing ones listed in one error) and into its
/// dependencies by offset (and from the [host table](super::HostTable) by
/// index), and applies its final protections. The image joins the
/// registry; it must be dropped before its dependencies. Initializers have
/// not run: call [`LinkedImage::run_initializers`]. Dropping the image runs
/// its finalizers (if initialized), deregisters its unwind info and unmaps
/// it.
///
/// Every refusal names the field and both values (or what is inconsistent).
///
/// # Safety
///
/// An image whose content hash checks out is trusted: its code is the code
/// that will run (initializers when asked, functions when called), and
/// loading registers its `.eh_frame` with the unwinder, which reads it.
/// Like `dlopen` (libloading's `Library::new`), the caller promises that the
/// file comes from a trusted source (written by kiln's saver, not by
/// someone who could also recompute its hash) and that the host symbols
/// `resolver` gives are the ones the image was saved against, with the same
/// types. The hash protects against damage, not against an attacker. The
/// images it links against must stay loaded until it is dropped (the
/// loader binds addresses into them and does not keep them alive).
pub unsafe fn load(
    file_name: &str,
    bytes: &[u8],
    resolver: &dyn SymbolResolver,
) -> Result<LinkedImage, ImageError> {
    // SAFETY: `load_parsed` asks what this function's callers promise.
    unsafe { load_parsed(file_name, bytes, None, resolver) }
}

/// [`load`] of the image file at `path`, mapped rather than read: its
/// segments' pages are mapped from the file copy-on-write (their last,
/// partial pages included), so a load copies only the pages it writes
/// (those holding rebased or imported words) and text pages come from the
/// page cache, as `dlopen` does. The content hash is checked over the whole
/// file, once per process for a file whose device, inode, size, mtime and
/// ctime stay the same (a file changed in the last 2 s is hashed on every
/// load). Such a file is also kept checked and parsed (up to 64 files, each
/// with an open descriptor and a read-only mapping): a later load finds it
/// by a `stat` of `path` and only maps, rebases, binds and protects; a file
/// whose identity changed is opened, hashed and checked again.
///
/// # Safety
///
/// As for [`load`]; moreover the file must not be changed in place while
/// the image is loaded (replacing it by a rename is fine), as for a shared
/// library under `dlopen`: pages not yet touched are read from it when
/// first used.
pub unsafe fn load_file(
    path: &std::path::Path,
    resolver: &dyn SymbolResolver,
) -> Result<LinkedImage, ImageError> {
    let file_name = path.display().to_string();
    let c = checked::open(path, &file_name)?;
    // SAFETY: as this function's callers promise.
    unsafe { load_checked_file(&file_name, &c, resolver) }
}

/// [`load_file`] of a file already opened and checked.
///
/// # Safety
///
/// As for [`load_file`].
unsafe fn load_checked_file(
    file_name: &str,
    c: &CheckedFile,
    resolver: &dyn SymbolResolver,
) -> Result<LinkedImage, ImageError> {
    // SAFETY: `load_checked` asks what `load` asks, which this function's
    // callers promise; `c.file()` is the file `c.parsed()` was read from,
    // open while `c` lives, and its pages stay unchanged as long as the
    // image lives (this function's contract).
    unsafe {
        load_checked(
            file_name,
            c.parsed(),
            c.names(),
            c.exports(),
            Some((c.file(), c.final_plan())),
            resolver,
            Some(c.answers()),
        )
    }
}

/// An image file opened for loading: the file mapped read-only (not read
/// into memory) and checked once, content hash included, when opened. Hand
/// it to [`crate::layer::ObjectLayer::add_image_from_file`], which maps the
/// segments' pages from the file copy-on-write and does not hash it again
/// — a `kiln run --cache` hit checks its entry and loads it with one hash
/// and no copy of the file.
pub struct ImageFile {
    name: String,
    /// The file, mapped and checked (shared with `load_file`'s kept
    /// entries: see `checked.rs`).
    checked: Arc<CheckedFile>,
}

/// What another process needs to open an unchanged image file without
/// hashing it again: the file's identity (device, inode, size, mtime,
/// ctime) when its content hash was checked, and that hash. See
/// [`ImageFile::stamp`] and [`ImageFile::open_stamped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStamp {
    words: [i64; 7],
    hash: [u8; 32],
}

impl ImageStamp {
    /// One line of text (decimal words, then the hash in hex).
    pub fn to_text(&self) -> String {
        let mut t: Vec<String> = self.words.iter().map(i64::to_string).collect();
        t.push(self.hash.iter().map(|b| format!("{b:02x}")).collect());
        t.join(" ")
    }

    /// Parses [`ImageStamp::to_text`]; `None` for anything else.
    pub fn from_text(text: &str) -> Option<ImageStamp> {
        let mut fields = text.split(' ');
        let mut words = [0i64; 7];
        for w in &mut words {
            *w = fields.next()?.parse().ok()?;
        }
        let hex = fields.next()?.as_bytes();
        if hex.len() != 64 || fields.next().is_some() {
            return None;
        }
        let mut hash = [0u8; 32];
        for (b, pair) in hash.iter_mut().zip(hex.chunks(2)) {
            *b = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(ImageStamp { words, hash })
    }
}

impl ImageFile {
    /// Opens and maps the image file at `path` and checks it as the loader
    /// does (header, content hash — once per unchanged file, as
    /// [`load_file`] —, tables). Errors name `path`.
    pub fn open(path: &std::path::Path) -> Result<ImageFile, ImageError> {
        let name = path.display().to_string();
        let checked = checked::open(path, &name)?;
        Ok(ImageFile { name, checked })
    }

    /// [`ImageFile::open`] of `file`, already open (at any position),
    /// called `path` in errors.
    pub fn from_file(path: &std::path::Path, file: std::fs::File) -> Result<ImageFile, ImageError> {
        let name = path.display().to_string();
        let checked = checked::from_file(file, &name)?;
        Ok(ImageFile { name, checked })
    }

    /// [`ImageFile::open`] of a file whose content hash a process checked
    /// before, as `stamp` records (from [`ImageFile::stamp`]): if the file
    /// still has that identity and its header that hash, it is not hashed
    /// again (every other check runs). This trusts what the process-wide
    /// "hashed once" rule trusts (see `image_file/verified.rs`): a write
    /// through the kernel changes the ctime, which cannot be set back.
    pub fn open_stamped(
        path: &std::path::Path,
        stamp: &ImageStamp,
    ) -> Result<ImageFile, ImageError> {
        verified::remember(verified::Identity::from_words(stamp.words), stamp.hash);
        ImageFile::open(path)
    }

    /// This file's identity when it was opened and its (checked) content
    /// hash, for [`ImageFile::open_stamped`] in a later process; `None` if
    /// the file was changed too recently for its identity to be trusted
    /// (its ctime within 2 s of the clock).
    pub fn stamp(&self) -> Option<ImageStamp> {
        let hash = format::header_content_hash(self.checked.bytes())?;
        Some(ImageStamp {
            words: self.checked.identity().to_words()?,
            hash,
        })
    }

    /// Whether this process can give the image what it needs from the
    /// process rather than the image: today the static TLS range its
    /// local-exec code was linked against (same static TLS area, range not
    /// used yet). Loading checks it too; a cache calls this first to relink
    /// instead.
    pub fn check_process(&self) -> Result<(), ImageError> {
        super::tls::check_process(self.checked.parsed(), &self.name)
    }

    /// Loads the file this value opened and checked, as [`load_file`]
    /// loads a path: the segments' pages mapped from its descriptor
    /// copy-on-write, with neither a `stat` of the path nor another check
    /// (a `kiln run --cache` hit's entry is opened once). Each call loads
    /// the image again, at its own base.
    ///
    /// # Safety
    ///
    /// As for [`load_file`].
    pub unsafe fn load(&self, resolver: &dyn SymbolResolver) -> Result<LinkedImage, ImageError> {
        // SAFETY: as this function's callers promise; `self.checked` was
        // checked when opened (content hash included).
        unsafe { load_checked_file(&self.name, &self.checked, resolver) }
    }

    /// The path it was opened as (the name errors use).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file's bytes (the read-only mapping).
    pub fn bytes(&self) -> &[u8] {
        self.checked.bytes()
    }

    /// The open file, to map segments from.
    pub(crate) fn file(&self) -> &std::fs::File {
        self.checked.file()
    }

    /// The file's parsed, checked tables.
    pub(crate) fn parsed(&self) -> &Parsed<'_> {
        self.checked.parsed()
    }

    /// The file's export table (see [`export_table`]).
    pub(crate) fn exports(&self) -> &SortedSymbols {
        self.checked.exports()
    }
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("name", &self.name)
            .field("len", &self.checked.bytes().len())
            .finish()
    }
}

/// How many bytes [`super::is_image`] needs to tell an image file.
pub const IMAGE_MAGIC_END: usize = super::format::HEADER_AT + super::MAGIC.len();

/// [`load`], with the segments mapped from `file` (whose bytes are
/// `bytes`) when given.
///
/// # Safety
///
/// As for [`load`] (and [`load_file`] when `file` is given).
unsafe fn load_parsed(
    file_name: &str,
    bytes: &[u8],
    file: Option<&std::fs::File>,
    resolver: &dyn SymbolResolver,
) -> Result<LinkedImage, ImageError> {
    let p = read::parse(file_name, bytes)?;
    let names = import_names(&p);
    let exports = export_table(&p);
    let file = file.map(|f| (f, None));
    // SAFETY: as this function's.
    unsafe { load_checked(file_name, &p, &names, &exports, file, resolver, None) }
}

/// [`load_parsed`] of bytes already checked (`p`, whose import names are
/// `names` and export table `exports`), the segments mapped from `file`
/// when given (at their final protections when its [`FinalPlan`] is given:
/// [`map_final`]); the resolver's answers kept in `kept` when given (a
/// kept file's).
///
/// # Safety
///
/// As for [`load_parsed`].
unsafe fn load_checked(
    file_name: &str,
    p: &Parsed<'_>,
    names: &ImportNames<'_>,
    exports: &SortedSymbols,
    file: Option<(&std::fs::File, Option<&FinalPlan>)>,
    resolver: &dyn SymbolResolver,
    kept: Option<&checked::KeptAnswers>,
) -> Result<LinkedImage, ImageError> {
    let deps = dependency_bases(
        p,
        file_name,
        |d| Ok(registry::find(&d.build_id).map(|i| (i.base, i.size))),
        registry::named,
    )?;
    // Mapped at the final protections when the image allows it.
    let (mut alloc, prepared) = match file {
        Some((f, Some(plan))) => {
            let (alloc, prepared) = map_final(p, plan, file_name, f)?;
            (alloc, Some(prepared))
        }
        _ => (map_from(p, file_name, file.map(|(f, _)| f))?, None),
    };
    let registration = register(p, &alloc, file_name);
    let (kept_answers, fresh);
    let answers: &[Option<u64>] = match kept {
        Some(k) => {
            kept_answers = k.resolve(resolver, &names.names);
            &kept_answers
        }
        None => {
            fresh = resolver.resolve(&names.names);
            &fresh
        }
    };
    match prepared {
        Some(prepared) => {
            write_prepared(p, &mut alloc, prepared, file_name, names, answers, &deps)?
        }
        None => bind(p, &mut alloc, file_name, names, answers, &deps)?,
    }
    let image = finish(p, exports, alloc, file_name)?;
    image.register_once(|| registration);
    Ok(image)
}
