//! The in-memory ELF debug object of one image, for the GDB JIT interface.
//!
//! An `ET_EXEC` file without program headers: one section per graph
//! section with live blocks, at its runtime address (`sh_addr`; never 0 —
//! GDB treats an object with a section at address 0 on a slow path, and an
//! address 0 in DWARF as "no code"), `SHT_NOBITS` (GDB reads code and data
//! from the process); `.eh_frame` with its bytes (relocated, with its
//! terminator) for backtraces through optimized frames; `.symtab` with the image's functions and data; and
//! each input's `.debug_*` sections concatenated in input order, their
//! `.rela.debug_*` relocations applied against the final addresses (as a
//! static linker would), so line tables and variables name runtime
//! addresses. References to code that was not linked (COMDAT duplicates,
//! pruned archive code) get the tombstone 0 (1 in `.debug_ranges` and
//! `.debug_loc`, where 0,0 ends a list).
//!
//! Objects read from archives own copies of their sections' bytes, not the
//! input file: their DWARF is not carried (their symbols are).

use std::collections::HashMap;

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, Rela, SectionHeader, Sym};
use object::write::elf::{SectionHeader as OutSection, Writer};
use object::{Endianness, LittleEndian as LE};

use super::{ImageInfo, ImageSymbol};
use crate::graph::{Content, LinkGraph, ObjectId, SectionRole};

/// One allocated section of the debug object.
struct AllocSection<'a> {
    name: &'a str,
    addr: u64,
    size: u64,
    flags: u64,
    /// `None`: zero-fill (`SHT_NOBITS`).
    bytes: Option<&'a [u8]>,
}

/// The debug object's bytes.
pub(crate) fn build(
    info: &ImageInfo<'_>,
    symbols: &[ImageSymbol<'_>],
    dwarf: &[(String, Vec<u8>)],
) -> object::write::Result<Vec<u8>> {
    let alloc = alloc_sections(info, symbols);
    write(&alloc, dwarf, symbols)
}

/// What GDB is given of the image's memory, by address: one section per
/// protection — `.text` (code), `.rodata`, `.data` — spanning that
/// protection's live blocks (the layout puts each protection in one
/// segment), the latter two only when they hold a symbol of `symbols`;
/// and `.eh_frame`.
///
/// GDB's work per registration grows with the sections it already has
/// (it re-sorts every allocated section of every object file after each
/// new one, and walks every section header slot), so the object has as few
/// as it can: one code section rather than one per input section, and
/// `.eh_frame` not `SHF_ALLOC` (GDB reads CFI from any section of that name
/// at its `sh_addr`, but maps only allocated sections to addresses).
fn alloc_sections<'a>(info: &ImageInfo<'a>, symbols: &[ImageSymbol<'_>]) -> Vec<AllocSection<'a>> {
    use crate::graph::Prot;
    let g = info.graph;
    let classes = [Prot::ReadExec, Prot::Read, Prot::ReadWrite];
    let mut ranges: [Option<(u64, u64)>; 3] = [None; 3];
    for s in &g.sections {
        if matches!(
            s.role,
            SectionRole::TlsData | SectionRole::TlsBss | SectionRole::EhFrame
        ) {
            continue;
        }
        let Some(class) = classes.iter().position(|&p| p == s.prot) else {
            continue;
        };
        for &b in &s.blocks {
            let b = &g.blocks[b.index()];
            if !b.live || b.content.is_empty() || b.addr == 0 {
                continue;
            }
            let end = b.addr + b.content.len();
            let r = &mut ranges[class];
            *r = Some(r.map_or((b.addr, end), |(s, e)| (s.min(b.addr), e.max(end))));
        }
    }
    let mut out = Vec::new();
    for (class, range) in ranges.into_iter().enumerate() {
        let Some((start, end)) = range else {
            continue;
        };
        let named = symbols.iter().any(|sym| (start..end).contains(&sym.addr));
        if !(named || classes[class] == Prot::ReadExec) {
            continue;
        }
        let (name, flags) = match classes[class] {
            Prot::ReadExec => (".text", elf::SHF_EXECINSTR.0),
            Prot::Read => (".rodata", 0),
            Prot::ReadWrite => (".data", elf::SHF_WRITE.0),
        };
        out.push(AllocSection {
            name,
            addr: start,
            size: end - start,
            flags: elf::SHF_ALLOC.0 | flags,
            bytes: None,
        });
    }
    if let Some(eh) = eh_frame_section(info.eh_frame) {
        out.push(eh);
    }
    out.sort_by_key(|s| s.addr);
    out
}

/// `.eh_frame` at its runtime address (`sh_addr`), with its bytes (GDB
/// reads CFI from the object, not from the process), not `SHF_ALLOC` (see
/// [`alloc_sections`]).
fn eh_frame_section(eh_frame: Option<(u64, u64)>) -> Option<AllocSection<'static>> {
    let (start, len) = eh_frame.filter(|&(start, len)| start != 0 && len > 0)?;
    // SAFETY: the `.eh_frame` range lies inside the image's allocation
    // (placed there by the layout, or checked inside a read-only segment by
    // the image loader), which is finalized readable and outlives this call
    // (the caller holds it).
    let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, len as usize) };
    Some(AllocSection {
        name: ".eh_frame",
        addr: start,
        size: len,
        flags: 0,
        bytes: Some(bytes),
    })
}

/// The debug object of a loaded image file: its segments as `.text`,
/// `.rodata` and `.data` (`SHT_NOBITS`, at their runtime addresses), its
/// `.eh_frame` (bytes copied, not allocated: see [`alloc_sections`]) and
/// `.symtab` with its exports. Like [`build`], only sections with code,
/// `.eh_frame` or a symbol are given.
pub(crate) fn build_loaded(
    image: &super::LoadedImage<'_>,
    symbols: &[ImageSymbol<'_>],
) -> object::write::Result<Vec<u8>> {
    let mut alloc = Vec::new();
    let mut push = |name: &'static str, start: u64, end: u64, prot| {
        let named = symbols.iter().any(|sym| (start..end).contains(&sym.addr));
        let code = prot == crate::graph::Prot::ReadExec;
        if start == 0 || start >= end || !(named || code) {
            return;
        }
        let flags = elf::SHF_ALLOC.0
            | match prot {
                crate::graph::Prot::ReadExec => elf::SHF_EXECINSTR.0,
                crate::graph::Prot::ReadWrite => elf::SHF_WRITE.0,
                crate::graph::Prot::Read => 0,
            };
        alloc.push(AllocSection {
            name,
            addr: start,
            size: end - start,
            flags,
            bytes: None,
        });
    };
    for &(start, size, prot) in &image.segments {
        let name = match prot {
            crate::graph::Prot::ReadExec => ".text",
            crate::graph::Prot::Read => ".rodata",
            crate::graph::Prot::ReadWrite => ".data",
        };
        push(name, start, start + size, prot);
    }
    if let Some(eh) = eh_frame_section(image.eh_frame) {
        alloc.push(eh);
    }
    alloc.sort_by_key(|s| s.addr);
    write(&alloc, &[], symbols)
}

/// The inputs' `.debug_*` sections, concatenated per name in input order
/// and relocated: `(name, bytes)`.
pub(crate) fn collect_dwarf(g: &LinkGraph) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (oi, file) in super::object_files(g).into_iter().enumerate() {
        let id = ObjectId(oi as u32);
        let Some(file) = file else {
            continue;
        };
        // A malformed input's DWARF is left out; its code still linked.
        let _ = add_object_dwarf(g, id, file, &mut out);
    }
    out
}

/// Where each of `id`'s input sections landed: by section index, the
/// runtime address of its offset 0.
fn section_addresses(
    g: &LinkGraph,
    id: ObjectId,
    sections: &object::read::elf::SectionTable<'_, FileHeader64<LE>>,
) -> Vec<Option<u64>> {
    let mut by_offset: HashMap<u64, usize> = HashMap::new();
    let mut nobits: HashMap<&[u8], Option<usize>> = HashMap::new();
    for (i, sh) in sections.iter().enumerate() {
        if sh.sh_flags(LE).0 & elf::SHF_ALLOC.0 == 0 {
            continue;
        }
        if sh.sh_type(LE) == elf::SHT_NOBITS {
            let name = sections.section_name(LE, sh).unwrap_or_default();
            // A name two NOBITS sections share is ambiguous: neither is used.
            nobits
                .entry(name)
                .and_modify(|v| *v = None)
                .or_insert(Some(i));
        } else if sh.sh_size(LE) > 0 {
            by_offset.insert(sh.sh_offset(LE), i);
        }
    }
    let mut addrs = vec![None; sections.len()];
    for b in g.blocks.iter().filter(|b| b.object == Some(id) && b.live) {
        let index = match &b.content {
            Content::Input { start, .. } => (*start as u64)
                .checked_sub(b.input_offset)
                .and_then(|o| by_offset.get(&o).copied()),
            Content::Zero(_) => nobits.get(b.input_section.as_bytes()).copied().flatten(),
            Content::Bytes(_) => None,
        };
        if let Some(i) = index
            && addrs[i].is_none()
        {
            addrs[i] = Some(b.addr.wrapping_sub(b.input_offset));
        }
    }
    addrs
}

fn add_object_dwarf(
    g: &LinkGraph,
    id: ObjectId,
    data: &[u8],
    out: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), object::read::Error> {
    let header = FileHeader64::<LE>::parse(data)?;
    let sections = header.sections(LE, data)?;
    // Each `.debug_*` section of this object: (output index, its offset there).
    let mut contrib: Vec<Option<(usize, usize)>> = vec![None; sections.len()];
    for (i, sh) in sections.iter().enumerate() {
        // Type and flags first (DWARF is unallocated `SHT_PROGBITS`): most
        // sections are ruled out without looking their names up.
        let flags = sh.sh_flags(LE).0;
        if sh.sh_type(LE) != elf::SHT_PROGBITS
            || flags & (elf::SHF_ALLOC.0 | elf::SHF_COMPRESSED.0) != 0
        {
            continue;
        }
        let name = sections.section_name(LE, sh)?;
        if !name.starts_with(b".debug_") {
            continue;
        }
        let name = String::from_utf8_lossy(name);
        let bytes = sh.data(LE, data)?;
        let o = match out.iter().position(|(n, _)| *n == name) {
            Some(o) => o,
            None => {
                out.push((name.into_owned(), Vec::new()));
                out.len() - 1
            }
        };
        contrib[i] = Some((o, out[o].1.len()));
        out[o].1.extend_from_slice(bytes);
    }
    if contrib.iter().all(Option::is_none) {
        return Ok(());
    }
    let addrs = section_addresses(g, id, &sections);
    let symtab = sections.symbols(LE, data, elf::SHT_SYMTAB)?;
    for sh in sections.iter() {
        // (`rela` returns the linked symbol table; the target is `sh_info`.)
        let Some((relas, _)) = sh.rela(LE, data)? else {
            continue;
        };
        let Some(Some((o, base))) = contrib.get(sh.sh_info(LE) as usize) else {
            continue;
        };
        let tombstone = match out[*o].0.as_str() {
            ".debug_ranges" | ".debug_loc" => 1,
            _ => 0,
        };
        for r in relas {
            let sym = symtab.symbol(object::SymbolIndex(r.r_sym(LE, false) as usize))?;
            let shndx = usize::from(sym.st_shndx(LE).0);
            let value = if shndx == usize::from(elf::SHN_ABS.0) {
                Some(sym.st_value(LE))
            } else if shndx == 0 || shndx >= usize::from(elf::SHN_LORESERVE) {
                None
            } else if let Some(Some((_, b))) = contrib.get(shndx) {
                Some(*b as u64 + sym.st_value(LE))
            } else {
                addrs
                    .get(shndx)
                    .copied()
                    .flatten()
                    .map(|a| a.wrapping_add(sym.st_value(LE)))
            };
            let value = value.map_or(tombstone, |v| v.wrapping_add(r.r_addend(LE) as u64));
            let at = *base + r.r_offset(LE) as usize;
            let buf = &mut out[*o].1;
            match r.r_type(LE, false) {
                elf::R_X86_64_64 | elf::R_X86_64_DTPOFF64 => {
                    if let Some(f) = buf.get_mut(at..at + 8) {
                        f.copy_from_slice(&value.to_le_bytes());
                    }
                }
                elf::R_X86_64_32 | elf::R_X86_64_32S | elf::R_X86_64_DTPOFF32 => {
                    if let Some(f) = buf.get_mut(at..at + 4) {
                        f.copy_from_slice(&(value as u32).to_le_bytes());
                    }
                }
                // Nothing else appears in x86-64 DWARF sections.
                _ => {}
            }
        }
    }
    Ok(())
}

/// A section's name, index and file offset in the object being written.
type Placed = (
    object::write::StringId,
    object::write::elf::SectionIndex,
    u64,
);

/// `.symtab` and `.strtab`, encoded here (names are not deduplicated:
/// the writer's string table sorts every name for suffix merging, which
/// cost more than the rest of the object).
struct SymbolTables {
    symtab: Vec<u8>,
    strtab: Vec<u8>,
    num_local: u32,
}

fn symbol_tables(
    symbols: &[ImageSymbol<'_>],
    section_of: impl Fn(u64) -> Option<u32>,
) -> SymbolTables {
    // Sized exactly: growing by doubling copied and faulted in pages.
    let mut symtab = Vec::with_capacity((symbols.len() + 1) * 24);
    symtab.resize(24, 0);
    let names: usize = symbols.iter().map(|s| s.name_len() + 1).sum();
    let mut strtab = Vec::with_capacity(names + 1);
    strtab.push(0);
    let mut num_local = 1;
    // Locals first (ELF's rule), then globals: two passes.
    for local in [true, false] {
        for s in symbols.iter().filter(|s| s.local == local) {
            num_local += u32::from(local);
            let name = strtab.len() as u32;
            s.push_name(&mut strtab);
            strtab.push(0);
            let kind = if s.code {
                elf::STT_FUNC
            } else {
                elf::STT_OBJECT
            };
            let bind = if local {
                elf::STB_LOCAL
            } else {
                elf::STB_GLOBAL
            };
            let shndx = section_of(s.addr).map_or(elf::SHN_ABS.0, |i| i as u16);
            // One `Elf64_Sym`, made on the stack and appended at once.
            let mut sym = [0u8; 24];
            sym[0..4].copy_from_slice(&name.to_le_bytes());
            sym[4] = (bind.0 << 4) | kind.0;
            sym[5] = elf::STV_DEFAULT.0;
            sym[6..8].copy_from_slice(&shndx.to_le_bytes());
            sym[8..16].copy_from_slice(&s.addr.to_le_bytes());
            sym[16..24].copy_from_slice(&s.size.to_le_bytes());
            symtab.extend_from_slice(&sym);
        }
    }
    SymbolTables {
        symtab,
        strtab,
        num_local,
    }
}

/// Lays the object out with `object`'s ELF writer.
fn write(
    alloc: &[AllocSection<'_>],
    dwarf: &[(String, Vec<u8>)],
    symbols: &[ImageSymbol<'_>],
) -> object::write::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = Writer::new(Endianness::Little, true, &mut buf);
    w.reserve_file_header();
    w.reserve_null_section_index();
    let mut alloc_out = Vec::with_capacity(alloc.len());
    for s in alloc {
        let name = w.add_section_name(s.name.as_bytes());
        let index = w.reserve_section_index();
        let offset = match s.bytes {
            Some(b) => w.reserve(b.len() as u64, 16),
            None => 0,
        };
        alloc_out.push((name, index, offset));
    }
    let mut dwarf_out = Vec::with_capacity(dwarf.len());
    for (name, bytes) in dwarf {
        let n = w.add_section_name(name.as_bytes());
        let index = w.reserve_section_index();
        let offset = w.reserve(bytes.len() as u64, 1);
        dwarf_out.push((n, index, offset));
    }
    // Symbols: locals first (ELF's rule), each in the section holding it.
    // (A handful of sections; `.eh_frame`, not allocated, holds none.)
    let section_of = |addr: u64| {
        alloc
            .iter()
            .position(|s| {
                s.flags & elf::SHF_ALLOC.0 != 0 && (s.addr..s.addr + s.size.max(1)).contains(&addr)
            })
            .map(|i| alloc_out[i].1.0)
    };
    let tables = symbol_tables(symbols, section_of);
    let symtab_name = w.add_section_name(b".symtab");
    let symtab_index = w.reserve_section_index();
    let symtab_offset = w.reserve(tables.symtab.len() as u64, 8);
    let strtab_name = w.add_section_name(b".strtab");
    let strtab_index = w.reserve_section_index();
    let strtab_offset = w.reserve(tables.strtab.len() as u64, 1);
    w.reserve_shstrtab_section_index();
    w.reserve_shstrtab()?;
    w.reserve_section_headers();

    w.write_file_header(&object::write::elf::FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_EXEC,
        e_machine: elf::EM_X86_64,
        e_entry: 0,
        e_flags: elf::FileFlags(0),
    })?;
    for (s, &(_, _, offset)) in alloc.iter().zip(&alloc_out) {
        if let Some(b) = s.bytes {
            w.pad_until(offset);
            w.write(b);
        }
    }
    for ((_, bytes), &(_, _, offset)) in dwarf.iter().zip(&dwarf_out) {
        w.pad_until(offset);
        w.write(bytes);
    }
    w.pad_until(symtab_offset);
    w.write(&tables.symtab);
    w.pad_until(strtab_offset);
    w.write(&tables.strtab);
    w.write_shstrtab();
    write_section_headers(&mut w, alloc, &alloc_out, dwarf, &dwarf_out);
    debug_assert_eq!(symtab_index.0 + 1, strtab_index.0);
    write_symbol_table_headers(
        &mut w,
        &tables,
        (symtab_name, symtab_offset),
        (strtab_name, strtab_index, strtab_offset),
    );
    w.write_shstrtab_section_header();
    Ok(buf)
}

/// The headers of `.symtab` and `.strtab` (placed: name, [index,] offset),
/// which follow the allocated and DWARF sections.
fn write_symbol_table_headers(
    w: &mut Writer<'_>,
    tables: &SymbolTables,
    (symtab_name, symtab_offset): (object::write::StringId, u64),
    (strtab_name, strtab_index, strtab_offset): (
        object::write::StringId,
        object::write::elf::SectionIndex,
        u64,
    ),
) {
    let header = |w: &Writer<'_>, name, sh_type, offset: u64, size: usize| OutSection {
        sh_name: w.section_name_offset(Some(name)),
        sh_type,
        sh_flags: elf::SectionFlags(0),
        sh_addr: 0,
        sh_offset: offset,
        sh_size: size as u64,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 1,
        sh_entsize: 0,
    };
    let symtab = OutSection {
        sh_link: strtab_index.0,
        sh_info: tables.num_local,
        sh_addralign: 8,
        sh_entsize: 24,
        ..header(
            w,
            symtab_name,
            elf::SHT_SYMTAB,
            symtab_offset,
            tables.symtab.len(),
        )
    };
    let strtab = header(
        w,
        strtab_name,
        elf::SHT_STRTAB,
        strtab_offset,
        tables.strtab.len(),
    );
    w.write_section_header(&symtab);
    w.write_section_header(&strtab);
}

/// The headers of the allocated and DWARF sections, in the order their
/// indexes were reserved (after the null header).
fn write_section_headers(
    w: &mut Writer<'_>,
    alloc: &[AllocSection<'_>],
    alloc_out: &[Placed],
    dwarf: &[(String, Vec<u8>)],
    dwarf_out: &[Placed],
) {
    w.write_null_section_header();
    for (s, &(name, _, offset)) in alloc.iter().zip(alloc_out) {
        w.write_section_header(&OutSection {
            sh_name: w.section_name_offset(Some(name)),
            sh_type: if s.bytes.is_some() {
                elf::SHT_PROGBITS
            } else {
                elf::SHT_NOBITS
            },
            sh_flags: elf::SectionFlags(s.flags),
            sh_addr: s.addr,
            sh_offset: offset,
            sh_size: s.size,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 16,
            sh_entsize: 0,
        });
    }
    for ((_, bytes), &(name, _, offset)) in dwarf.iter().zip(dwarf_out) {
        w.write_section_header(&OutSection {
            sh_name: w.section_name_offset(Some(name)),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: elf::SectionFlags(0),
            sh_addr: 0,
            sh_offset: offset,
            sh_size: bytes.len() as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 1,
            sh_entsize: 0,
        });
    }
}
