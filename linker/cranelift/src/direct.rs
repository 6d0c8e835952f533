//! The direct path of `finalize_definitions`: a batch whose relocations
//! all reach either the batch itself or symbols already Ready is placed as
//! cranelift-jit places it — each function's bytes in kiln's code memory
//! (functions defined from bytes were copied there when defined, into the
//! stage, `stage.rs`; compiled ones are copied now), cranelift's
//! relocations applied there by declaration index through kiln-arch's
//! fixup math, the pages protected once — and published to the engine by
//! one `define_absolute`: the batch's symbols Ready at once, with no link
//! graph, no unit, no materialization and no dependency-graph node.
//!
//! # The Ready rule
//!
//! A symbol may be Ready only once everything its code reaches is emitted.
//! Publishing a batch Ready at once keeps that rule because every target
//! is either placed in this very batch (published by the same define, so
//! calls inside it, cycles too, are Ready together) or resolved to a
//! definition that is Ready *now*: an address the module looked up at
//! Ready before, or one the engine's Ready index answers
//! ([`kiln_engine::Session::ready_defs`]: no generator runs, nothing is
//! materialized, nothing waits). Anything else — a target absent, lazy,
//! still materializing elsewhere, behind a generator — makes [`place`]
//! answer `None`, and the batch takes the general path: a link unit whose
//! symbols become Ready only when what they depend on is.
//!
//! So does whatever the direct path does not do itself: relocations that
//! need a GOT entry or a PLT stub (PIC code, a call beyond ±2 GiB),
//! 32-bit absolute addresses (non-PIE code goes below 2 GiB), debugger and
//! profiler registration, code under any symbol but its declared name,
//! alignment beyond a page.
//!
//! # Memory
//!
//! A placed batch's memory — its own allocation (compiled functions, data)
//! and the stage's chunks its functions are in — belongs to the tracker
//! its symbols are defined through (the group's, or `app`'s default):
//! [`PlacedMemory`], a resource manager, releases it when the tracker is
//! removed (a freed group) or the session ends
//! ([`crate::KilnModule::free_memory`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::ir::LibCall;
use cranelift_module::{ModuleReloc, ModuleRelocTarget};
use kiln_arch::x86_64::reloc::{EdgeKind, apply, reloc_info};
use kiln_arch::{EdgeTarget, FixupValues};
use kiln_engine::{ResourceKey, ResourceManager, SymbolDef, SymbolFlags, SymbolName};
use kiln_linker::graph::{InputBytes, Prot};
use kiln_linker::isa::Isa;
use kiln_linker::memory::{Allocation, PAGE, Placement};

use crate::emit::{Arena, Code, DataCode, FuncCode, Names};
use crate::error::Error;
use crate::reloc::elf_r_type;
use crate::stage::{Chunk, Span};

/// Memory of directly placed batches, by the resource key of the tracker
/// owning their symbols: removing the tracker releases it.
#[derive(Default)]
pub(crate) struct PlacedMemory {
    by_key: Mutex<HashMap<ResourceKey, Vec<Allocation>>>,
}

impl PlacedMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ResourceKey, Vec<Allocation>>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Files `memory` under `key`.
    pub(crate) fn add(&self, key: ResourceKey, memory: Allocation) {
        self.lock().entry(key).or_default().push(memory);
    }

    /// Takes back the allocation at `base` filed under `key` (a batch whose
    /// definition the engine refused), if it is still there.
    pub(crate) fn take_back(&self, key: ResourceKey, base: u64) -> Option<Allocation> {
        let mut by_key = self.lock();
        let list = by_key.get_mut(&key)?;
        let i = list.iter().position(|a| a.base() == base)?;
        Some(list.swap_remove(i))
    }
}

impl ResourceManager for PlacedMemory {
    fn remove_resources(&self, key: ResourceKey) -> kiln_engine::Result<()> {
        let taken = self.lock().remove(&key);
        // Released outside the lock (munmap-like work).
        drop(taken);
        Ok(())
    }

    fn transfer_resources(&self, dst: ResourceKey, src: ResourceKey) {
        let mut by_key = self.lock();
        if let Some(moved) = by_key.remove(&src) {
            by_key.entry(dst).or_default().extend(moved);
        }
    }
}

/// What one batch defines: its functions' code (bytes in `arena` or their
/// own) and its data objects.
pub(crate) struct Batch<'a> {
    pub(crate) funcs: &'a [FuncCode],
    pub(crate) arena: &'a mut Arena,
    pub(crate) data: &'a [DataCode],
    /// Large memory may be mapped on a rayon thread
    /// ([`kiln_linker::LinkOptions::parallel`]).
    pub(crate) parallel: bool,
}

/// Addresses the module looked up at Ready in earlier batches, by id.
pub(crate) struct Known<'a> {
    pub(crate) funcs: &'a [Option<u64>],
    pub(crate) data: &'a [Option<(u64, usize)>],
}

/// How the batch's code finds what is outside it.
pub(crate) struct Outside<'a> {
    /// Definitions of `names`, by position, if all are Ready now.
    pub(crate) ready: &'a dyn Fn(&[SymbolName]) -> Option<Vec<SymbolDef>>,
    pub(crate) intern: &'a dyn Fn(&str) -> SymbolName,
    pub(crate) libcall_names: &'a dyn Fn(LibCall) -> String,
}

/// A batch placed and protected, not yet published.
pub(crate) struct Placed {
    /// The batch's own memory (if it copied anything) and the stage's
    /// chunks its functions are in, protected.
    pub(crate) memory: Vec<Allocation>,
    /// Each function's name and definition, then each data object's, in
    /// the batch's order.
    pub(crate) defs: Vec<(SymbolName, SymbolDef)>,
}

/// A [`Resolver`] slot not found yet (no definition is at the last byte
/// of the address space).
const UNRESOLVED: u64 = u64::MAX;

/// The addresses of relocation targets, by declaration, found as the
/// relocations meet them: the batch's own (placed), those Ready before
/// (the module's), and names the engine has Ready now; nothing else.
struct Resolver<'a> {
    names: &'a Names,
    known: &'a Known<'a>,
    outside: &'a Outside<'a>,
    /// By declaration index; [`UNRESOLVED`] until found (8 bytes a slot:
    /// a batch's relocations reach them at random).
    funcs: Vec<u64>,
    data: Vec<u64>,
    libcalls: Vec<(LibCall, u64)>,
    /// The fixup math of each relocation kind met (a handful).
    kinds: Vec<(Reloc, EdgeKind)>,
}

impl Resolver<'_> {
    /// The address of `name` if the engine has it Ready now. A
    /// thread-local has none (its value names a TLS module): the general
    /// path binds or refuses it.
    fn ready(&self, name: &SymbolName) -> Option<u64> {
        let defs = (self.outside.ready)(std::slice::from_ref(name))?;
        let def = defs.first()?;
        (!def.flags.is_thread_local()).then_some(def.address)
    }

    /// Function `index`'s address: the slot's (the common case), else
    /// resolved once.
    #[inline]
    fn func(&mut self, index: usize) -> Option<u64> {
        match self.funcs.get(index) {
            Some(&UNRESOLVED) => self.resolve_func(index),
            Some(&address) => Some(address),
            None => None,
        }
    }

    #[cold]
    fn resolve_func(&mut self, index: usize) -> Option<u64> {
        let address = match self.known.funcs.get(index).copied().flatten() {
            Some(address) => address,
            None => self.ready(&self.names.funcs.get(index)?.name)?,
        };
        self.funcs[index] = address;
        Some(address)
    }

    /// Data object `index`'s address: the slot's, else resolved once.
    #[inline]
    fn data(&mut self, index: usize) -> Option<u64> {
        match self.data.get(index) {
            Some(&UNRESOLVED) => self.resolve_data(index),
            Some(&address) => Some(address),
            None => None,
        }
    }

    #[cold]
    fn resolve_data(&mut self, index: usize) -> Option<u64> {
        let info = self.names.data.get(index)?;
        if info.tls {
            return None;
        }
        let address = match self.known.data.get(index).copied().flatten() {
            Some((address, _)) => address,
            None => self.ready(&info.name)?,
        };
        self.data[index] = address;
        Some(address)
    }

    fn libcall(&mut self, libcall: LibCall) -> Option<u64> {
        if let Some(&(_, address)) = self.libcalls.iter().find(|(l, _)| *l == libcall) {
            return Some(address);
        }
        let name = (self.outside.intern)(&(self.outside.libcall_names)(libcall));
        let address = self.ready(&name)?;
        self.libcalls.push((libcall, address));
        Some(address)
    }

    /// The fixup math of `reloc`, if the direct path applies it: no GOT,
    /// PLT or TLS entry; no 32-bit absolute address (non-PIE code is
    /// placed below 2 GiB, by the general path).
    #[inline]
    fn kind(&mut self, reloc: Reloc) -> Option<EdgeKind> {
        match self.kinds.iter().find(|(r, _)| *r == reloc) {
            Some(&(_, kind)) => Some(kind),
            None => self.new_kind(reloc),
        }
    }

    #[cold]
    fn new_kind(&mut self, reloc: Reloc) -> Option<EdgeKind> {
        let r_type = elf_r_type(reloc)?;
        let edge = Isa::X86_64.edge(r_type)?;
        if !matches!(edge.target, EdgeTarget::Symbol | EdgeTarget::Branch)
            || (!edge.pc_relative && edge.width != 8)
        {
            return None;
        }
        let kind = reloc_info(r_type)?.kind;
        self.kinds.push((reloc, kind));
        Some(kind)
    }

    /// `reloc`'s fixup math, target address and extra addend; `None` if
    /// the direct path cannot apply it.
    #[inline]
    fn resolve(&mut self, reloc: &ModuleReloc) -> Option<(EdgeKind, u64, i64)> {
        let kind = self.kind(reloc.kind)?;
        let (target, extra) = match reloc.name {
            ModuleRelocTarget::User {
                namespace: 0,
                index,
            } => (self.func(index as usize)?, 0),
            ModuleRelocTarget::User {
                namespace: 1,
                index,
            } => (self.data(index as usize)?, 0),
            ModuleRelocTarget::LibCall(libcall) => (self.libcall(libcall)?, 0),
            ModuleRelocTarget::FunctionOffset(id, offset) => {
                (self.func(id.as_u32() as usize)?, i64::from(offset))
            }
            ModuleRelocTarget::User { .. } | ModuleRelocTarget::KnownSymbol(_) => return None,
        };
        Some((kind, target, extra))
    }

    /// Applies `relocs` to `piece`, placed at `place`: kiln-arch's fixup
    /// math and range checks. `None` if one cannot be applied here.
    fn fix_up(&mut self, place: u64, piece: &mut [u8], relocs: &[ModuleReloc]) -> Option<()> {
        for reloc in relocs {
            let (kind, target, extra) = self.resolve(reloc)?;
            let offset = u64::from(reloc.offset);
            let values = FixupValues {
                place: place + offset,
                target,
                addend: reloc.addend.checked_add(extra)?,
                got: 0,
                size: 0,
            };
            if !patch(kind, piece, offset, &values) {
                apply(kind, piece, offset, &values).ok()?;
            }
        }
        Some(())
    }
}

/// Cranelift's common x86-64 fix-ups — calls and PC-relative references
/// (`S + A - P`, signed 32 bits) and absolute pointers (`S + A`, 64 bits,
/// wrapping) — written inline: kiln-arch's formulas ([`kiln_arch::x86_64::reloc::compute`]).
/// `false` (nothing written) for any other kind, a value out of range or a
/// field outside `piece`: [`apply`] then does it, or reports why not, with
/// its own checks.
#[inline(always)]
fn patch(kind: EdgeKind, piece: &mut [u8], offset: u64, values: &FixupValues) -> bool {
    let (s, a) = (i128::from(values.target), i128::from(values.addend));
    let Ok(at) = usize::try_from(offset) else {
        return false;
    };
    match kind {
        EdgeKind::Delta32 | EdgeKind::Branch32 => {
            let Ok(value) = i32::try_from(s + a - i128::from(values.place)) else {
                return false;
            };
            put(piece, at, value.to_le_bytes())
        }
        EdgeKind::Pointer64 => put(piece, at, ((s + a) as u64).to_le_bytes()),
        _ => false,
    }
}

/// Writes `bytes` at `at` in `piece`; `false` if they do not fit there.
#[inline(always)]
fn put<const N: usize>(piece: &mut [u8], at: usize, bytes: [u8; N]) -> bool {
    match at.checked_add(N).and_then(|end| piece.get_mut(at..end)) {
        Some(field) => {
            field.copy_from_slice(&bytes);
            true
        }
        None => false,
    }
}

/// Offsets of a batch's pieces in its memory: text (read-exec) from 0,
/// then read-only data, then writable data, each part on pages of its own.
/// Functions already in code memory (staged) are not in it.
struct Layout {
    funcs: Vec<u64>,
    data: Vec<u64>,
    text_len: u64,
    ro: (u64, u64),
    rw: (u64, u64),
}

fn align_up(at: u64, align: u64) -> u64 {
    at.next_multiple_of(align.max(1).next_power_of_two())
}

fn layout(funcs: &[FuncCode], data_code: &[DataCode], code: &[Own<'_>]) -> Layout {
    let mut at = 0;
    let funcs = code
        .iter()
        .map(|&(i, bytes, _)| {
            let start = align_up(at, funcs[i].align);
            at = start + bytes.len() as u64;
            start
        })
        .collect();
    let text_len = at;
    // Read-only data on the pages after the text, writable data after it.
    let mut data = vec![0; data_code.len()];
    let mut part = |start: u64, writable: bool| {
        let mut end = start;
        for (d, at) in data_code.iter().zip(&mut data) {
            if d.writable == writable {
                *at = align_up(end, d.align);
                end = *at + d.size;
            }
        }
        (start, end - start)
    };
    let ro = part(align_up(text_len, PAGE), false);
    let rw = part(align_up(ro.0 + ro.1, PAGE), true);
    Layout {
        funcs,
        data,
        text_len,
        ro,
        rw,
    }
}

/// A function the batch copies into its own memory: its index in the
/// batch, its bytes and relocations.
type Own<'a> = (usize, &'a [u8], &'a [ModuleReloc]);

/// Places `batch` — the functions staged in code memory where they are,
/// everything else in fresh memory — fixed up and protected, if the direct
/// path can (see the module's documentation); `Ok(None)` leaves the batch
/// to the general path, with nothing published (memory written for it is
/// released; staged chunks stay in the arena, for the link to read).
pub(crate) fn place(
    batch: &mut Batch<'_>,
    names: &Names,
    known: &Known<'_>,
    outside: &Outside<'_>,
) -> Result<Option<Placed>, Error> {
    if !placeable(batch) {
        return Ok(None);
    }
    let Arena {
        bytes: chunks,
        relocs: reloc_chunks,
        staged,
    } = &mut *batch.arena;
    let Some((own, used)) = sort_code(batch.funcs, chunks, reloc_chunks, staged) else {
        return Ok(None);
    };
    let layout = layout(batch.funcs, batch.data, &own);
    let mut memory = None;
    if !(own.is_empty() && batch.data.is_empty()) {
        let total = layout.rw.0 + layout.rw.1;
        match Allocation::new(total.max(1), Placement::Near)? {
            Some(fresh) => memory = Some(fresh),
            None => return Ok(None),
        }
    }
    let base = memory.as_ref().map_or(0, Allocation::base);
    let mut resolver = Resolver {
        names,
        known,
        outside,
        funcs: vec![UNRESOLVED; names.funcs.len()],
        data: vec![UNRESOLVED; names.data.len()],
        libcalls: Vec::new(),
        kinds: Vec::new(),
    };
    // The batch's own definitions first: references to them stay inside.
    let addresses = Addresses {
        own: &own,
        layout: &layout,
        base,
    };
    if addresses
        .fill(batch.funcs, batch.data, staged, &mut resolver)
        .is_none()
    {
        return Ok(None);
    }
    if let Some(memory) = &mut memory {
        let prefault = memory.prefault(batch.parallel);
        let Some(bytes) = memory.bytes_mut() else {
            return Ok(None);
        };
        if write(batch.data, &own, &layout, &mut resolver, bytes, base).is_none() {
            // A target not Ready, a relocation needing a GOT or a stub, a
            // call out of reach: the general path links the batch. The
            // memory is released when dropped, unpublished.
            return Ok(None);
        }
        drop(prefault);
    }
    if fix_up_staged(batch.funcs, reloc_chunks, staged, &mut resolver).is_none() {
        return Ok(None);
    }
    let memory = protect(memory, &layout, used, staged)?;
    let defs = definitions(batch.funcs, batch.data, names, &resolver, &layout, base);
    Ok(Some(Placed { memory, defs }))
}

/// Whether the direct path may take `batch` at all: other symbols than
/// declared names are lazy and replacement bodies' (linked alone), and
/// alignments beyond a page, the allocation's, are left to the link.
fn placeable(batch: &Batch<'_>) -> bool {
    !batch
        .funcs
        .iter()
        .any(|f| f.symbol().is_some() || f.align > PAGE)
        && !batch.data.iter().any(|d| d.align > PAGE)
}

/// The functions the batch copies (all but the staged ones), and the
/// stage's chunks the others are in (each holds one group's, so they are
/// the batch's alone); `None` if a span or a chunk is missing.
fn sort_code<'a>(
    funcs: &'a [FuncCode],
    chunks: &'a [InputBytes],
    reloc_chunks: &'a [Vec<ModuleReloc>],
    staged: &[Option<Chunk>],
) -> Option<(Vec<Own<'a>>, Vec<usize>)> {
    let mut own: Vec<Own<'a>> = Vec::new();
    let mut used: Vec<usize> = Vec::new();
    for (i, f) in funcs.iter().enumerate() {
        match &f.code {
            Code::Owned(owned) => own.push((i, &owned.bytes, &owned.relocs)),
            Code::Arena { bytes, relocs } => {
                let (start, len) = (bytes.start as usize, bytes.len as usize);
                let bytes = chunks.get(bytes.chunk as usize)?.get(start..start + len)?;
                own.push((i, bytes, span_of(reloc_chunks, *relocs)?));
            }
            Code::Staged { bytes, .. } => {
                let chunk = bytes.chunk as usize;
                if used.last() != Some(&chunk) && !used.contains(&chunk) {
                    used.push(chunk);
                }
            }
        }
    }
    let all_staged = used.iter().all(|&c| matches!(staged.get(c), Some(Some(_))));
    all_staged.then_some((own, used))
}

/// Where the batch's own functions and data go: staged functions where
/// they are, the rest at their place in the batch's memory at `base`.
struct Addresses<'a, 'b> {
    own: &'a [Own<'b>],
    layout: &'a Layout,
    base: u64,
}

impl Addresses<'_, '_> {
    /// Writes each of the batch's own addresses into `resolver`'s slots;
    /// `None` if a chunk or a declaration is missing.
    fn fill(
        &self,
        funcs: &[FuncCode],
        data: &[DataCode],
        staged: &[Option<Chunk>],
        resolver: &mut Resolver<'_>,
    ) -> Option<()> {
        let mut own_at = self.own.iter().zip(&self.layout.funcs);
        for (i, f) in funcs.iter().enumerate() {
            let address = match &f.code {
                Code::Staged { bytes, .. } => {
                    let chunk = staged[bytes.chunk as usize].as_ref()?;
                    chunk.memory.base() + u64::from(bytes.start)
                }
                _ => match own_at.next() {
                    Some((&(j, _, _), at)) if j == i => self.base + at,
                    _ => return None,
                },
            };
            *resolver.funcs.get_mut(f.id.as_u32() as usize)? = address;
        }
        for (d, at) in data.iter().zip(&self.layout.data) {
            *resolver.data.get_mut(d.id.as_u32() as usize)? = self.base + at;
        }
        Some(())
    }
}

/// Gives the batch's own memory (if any) and the stage's chunks it used
/// their final protection; the allocations, for the tracker to own.
fn protect(
    memory: Option<Allocation>,
    layout: &Layout,
    used: Vec<usize>,
    staged: &mut [Option<Chunk>],
) -> Result<Vec<Allocation>, Error> {
    let mut placed = Vec::with_capacity(used.len() + 1);
    if let Some(mut memory) = memory {
        let segments = [
            (0, layout.text_len, Prot::ReadExec),
            (layout.ro.0, layout.ro.1, Prot::Read),
            (layout.rw.0, layout.rw.1, Prot::ReadWrite),
        ];
        memory.finalize(&segments)?;
        placed.push(memory);
    }
    for i in used {
        let Some(mut chunk) = staged.get_mut(i).and_then(Option::take) else {
            continue;
        };
        chunk.settle();
        chunk.memory.finalize(&[(0, chunk.used, Prot::ReadExec)])?;
        placed.push(chunk.memory);
    }
    Ok(placed)
}

/// Each function's name and definition, then each data object's, in the
/// batch's order.
fn definitions(
    funcs: &[FuncCode],
    data: &[DataCode],
    names: &Names,
    resolver: &Resolver<'_>,
    layout: &Layout,
    base: u64,
) -> Vec<(SymbolName, SymbolDef)> {
    let mut defs = Vec::with_capacity(funcs.len() + data.len());
    let code = SymbolFlags::EXPORTED | SymbolFlags::CALLABLE;
    for f in funcs {
        let i = f.id.as_u32() as usize;
        let name = names.funcs[i].name.clone();
        defs.push((name, SymbolDef::new(resolver.funcs[i], code)));
    }
    for (d, at) in data.iter().zip(&layout.data) {
        let name = names.data[d.id.as_u32() as usize].name.clone();
        defs.push((name, SymbolDef::new(base + at, SymbolFlags::EXPORTED)));
    }
    defs
}

/// Applies the staged functions' relocations where they are; `None` if
/// one cannot be applied here (fields written before stay written: the
/// link that takes the batch then writes each again).
fn fix_up_staged(
    funcs: &[FuncCode],
    reloc_chunks: &[Vec<ModuleReloc>],
    staged: &mut [Option<Chunk>],
    resolver: &mut Resolver<'_>,
) -> Option<()> {
    for f in funcs {
        let Code::Staged {
            bytes: span,
            relocs,
        } = &f.code
        else {
            continue;
        };
        let relocs = span_of(reloc_chunks, *relocs)?;
        if relocs.is_empty() {
            continue;
        }
        let chunk = staged.get_mut(span.chunk as usize)?.as_mut()?;
        let place = chunk.memory.base() + u64::from(span.start);
        let start = span.start as usize;
        let piece = (chunk.memory.bytes_mut()?).get_mut(start..start + span.len as usize)?;
        resolver.fix_up(place, piece, relocs)?;
    }
    Some(())
}

/// The items `span` names in `chunks`.
fn span_of<T, C: std::ops::Deref<Target = [T]>>(chunks: &[C], span: Span) -> Option<&[T]> {
    let start = span.start as usize;
    (chunks.get(span.chunk as usize)?).get(start..start + span.len as usize)
}

/// Copies the batch's own functions and its data into `bytes` (its
/// memory, at `base`) and applies their relocations; `None` if one cannot
/// be applied here.
fn write(
    data: &[DataCode],
    own: &[Own<'_>],
    layout: &Layout,
    resolver: &mut Resolver<'_>,
    bytes: &mut [u8],
    base: u64,
) -> Option<()> {
    for (&(_, code, relocs), &at) in own.iter().zip(&layout.funcs) {
        let piece = bytes.get_mut(at as usize..at as usize + code.len())?;
        piece.copy_from_slice(code);
        resolver.fix_up(base + at, piece, relocs)?;
    }
    for (d, &at) in data.iter().zip(&layout.data) {
        let piece = bytes.get_mut(at as usize..(at + d.size) as usize)?;
        // Zero-filled objects stay as the fresh memory is: zero.
        if let Some(init) = &d.bytes {
            piece.copy_from_slice(init);
        }
        resolver.fix_up(base + at, piece, &d.relocs)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inline fix-ups write what kiln-arch's `apply` writes, and leave
    /// to it (write nothing) whatever it refuses: values out of range,
    /// fields past the end, kinds they do not know.
    #[test]
    fn inline_fixups_agree_with_kiln_arch() {
        let kinds = [
            EdgeKind::Delta32,
            EdgeKind::Branch32,
            EdgeKind::Pointer64,
            EdgeKind::Pointer32,
            EdgeKind::Delta64,
        ];
        let places = [0x1000u64, 0x7fff_0000_0000, u64::MAX - 16];
        let targets = [0u64, 0x1000, 0x8000_1000, 0x7fff_8000_0000, u64::MAX];
        let addends = [0i64, -4, 4, i64::MIN, i64::MAX, -(1 << 31)];
        let offsets = [0u64, 4, 12, 13, 16, u64::MAX];
        let mut checked = 0;
        for kind in kinds {
            for (place, target, addend, offset) in
                itertools_product(&places, &targets, &addends, &offsets)
            {
                let values = FixupValues {
                    place,
                    target,
                    addend,
                    got: 0,
                    size: 0,
                };
                let (mut fast, mut slow) = ([0xaau8; 16], [0xaau8; 16]);
                let wrote = patch(kind, &mut fast, offset, &values);
                let applied = apply(kind, &mut slow, offset, &values).is_ok();
                if wrote {
                    assert!(
                        applied,
                        "{kind:?} {values:?} at {offset}: written inline, refused by apply"
                    );
                    assert_eq!(fast, slow, "{kind:?} {values:?} at {offset}");
                } else {
                    assert_eq!(fast, [0xaa; 16], "nothing written when left to apply");
                    assert!(
                        !applied
                            || !matches!(
                                kind,
                                EdgeKind::Delta32 | EdgeKind::Branch32 | EdgeKind::Pointer64
                            ),
                        "{kind:?} {values:?} at {offset}: apply took what the inline path refused"
                    );
                }
                checked += usize::from(wrote);
            }
        }
        assert!(checked > 100, "the inline path wrote {checked} times");
    }

    fn itertools_product<'a>(
        places: &'a [u64],
        targets: &'a [u64],
        addends: &'a [i64],
        offsets: &'a [u64],
    ) -> impl Iterator<Item = (u64, u64, i64, u64)> + 'a {
        places.iter().flat_map(move |&p| {
            targets.iter().flat_map(move |&t| {
                addends
                    .iter()
                    .flat_map(move |&a| offsets.iter().map(move |&o| (p, t, a, o)))
            })
        })
    }
}
