//! Writing an image file: the ELF64 container with `object::write`.

use object::elf;
use object::write::elf::{FileHeader, ProgramHeader, SectionHeader, Writer};

use super::format::{self, HEADER_AT, HEADER_SIZE, Header, PAGE};
use super::{BuildId, ImageError, ImagingRecord};
use crate::graph::Prot;

/// The tables' bytes, in [`format::TABLES`] order, and the strings.
fn tables(name: &str, r: &ImagingRecord) -> ([Vec<u8>; 8], (u32, u32)) {
    let mut strings: Vec<u8> = Vec::new();
    let mut string = |s: &str| {
        let at = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        (at, s.len() as u32)
    };
    let image_name = string(name);
    let rebase: Vec<u8> = format::relr_encode(&r.rebase)
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let mut imports = Vec::with_capacity(r.imports.len() * format::IMPORT_SIZE);
    for i in &r.imports {
        let (at, len) = string(&i.name);
        imports.extend_from_slice(&i.offset.to_le_bytes());
        imports.extend_from_slice(&at.to_le_bytes());
        imports.extend_from_slice(&len.to_le_bytes());
        imports.extend_from_slice(&i.addend.to_le_bytes());
        let flags = if i.weak { format::IMPORT_WEAK } else { 0 }
            | if i.slot { format::IMPORT_SLOT } else { 0 };
        imports.extend_from_slice(&[flags, format::SOURCE_BY_NAME, 0, 0]);
        imports.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut exports = Vec::with_capacity(r.exports.len() * format::EXPORT_SIZE);
    for e in &r.exports {
        let (at, len) = string(&e.name);
        exports.extend_from_slice(&e.offset.to_le_bytes());
        exports.extend_from_slice(&at.to_le_bytes());
        exports.extend_from_slice(&len.to_le_bytes());
        let flags = if e.callable {
            format::EXPORT_CALLABLE
        } else {
            0
        } | if e.weak { format::EXPORT_WEAK } else { 0 }
            | if e.exported {
                format::EXPORT_EXPORTED
            } else {
                0
            };
        exports.extend_from_slice(&flags.to_le_bytes());
        exports.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut init = Vec::new();
    let mut initents = Vec::new();
    for (section, entries) in &r.init_fini {
        let (at, len) = string(section);
        init.extend_from_slice(&at.to_le_bytes());
        init.extend_from_slice(&len.to_le_bytes());
        init.extend_from_slice(&((initents.len() / 8) as u32).to_le_bytes());
        init.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            initents.extend_from_slice(&e.to_le_bytes());
        }
    }
    (
        [
            rebase,
            imports,
            exports,
            init,
            initents,
            strings,
            Vec::new(),
            Vec::new(),
        ],
        image_name,
    )
}

/// How many bytes of each segment the file holds: up to the last non-zero
/// byte, a word the loader writes, or the `.eh_frame` end (the rest is
/// zero-filled at load).
fn file_sizes(r: &ImagingRecord) -> Vec<u64> {
    r.segments
        .iter()
        .map(|&(off, len, _)| {
            let end = (off + len).min(r.memory.len() as u64);
            let bytes = &r.memory[off as usize..end as usize];
            let mut keep = bytes
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |p| p as u64 + 1);
            let words = r
                .rebase
                .iter()
                .copied()
                .chain(r.imports.iter().map(|i| i.offset));
            for w in words.filter(|&w| w >= off && w < end) {
                keep = keep.max(w + 8 - off);
            }
            if let Some((e, l)) = r.eh_frame
                && e >= off
                && e < end
            {
                keep = keep.max(e + l - off);
            }
            keep.min(end - off)
        })
        .collect()
}

fn prot_names(p: Prot) -> (&'static [u8], u32, u64) {
    match p {
        Prot::ReadExec => (
            b".text",
            elf::PF_R.0 | elf::PF_X.0,
            elf::SHF_ALLOC.0 | elf::SHF_EXECINSTR.0,
        ),
        Prot::Read => (b".rodata", elf::PF_R.0, elf::SHF_ALLOC.0),
        Prot::ReadWrite => (
            b".data",
            elf::PF_R.0 | elf::PF_W.0,
            elf::SHF_ALLOC.0 | elf::SHF_WRITE.0,
        ),
    }
}

/// The image file for `r`.
pub(crate) fn write(name: &str, r: &ImagingRecord, id: &BuildId) -> Result<Vec<u8>, ImageError> {
    let (tables, image_name) = tables(name, r);
    let filesz = file_sizes(r);
    let mut out: Vec<u8> = Vec::new();
    let mut w = Writer::new(object::Endianness::Little, true, &mut out);
    // Reserve: ELF header, kiln header, program headers, segments, tables.
    w.reserve_file_header();
    let header_at = w.reserve(HEADER_SIZE as u64, 1);
    let seg_count = r.segments.len() as u32;
    w.reserve_program_headers(seg_count);
    let seg_at: Vec<u64> = filesz.iter().map(|&n| w.reserve(n, PAGE)).collect();
    let table_at: Vec<u64> = tables
        .iter()
        .map(|t| w.reserve(t.len() as u64, 8))
        .collect();
    let header_name = w.add_section_name(b".kiln.header");
    let header_index = w.reserve_section_index();
    let seg_names: Vec<_> = r
        .segments
        .iter()
        .map(|s| {
            let n = w.add_section_name(prot_names(s.2).0);
            (n, w.reserve_section_index())
        })
        .collect();
    let eh = r.eh_frame.filter(|&(_, l)| l > 0).and_then(|(e, l)| {
        let i = r.segments.iter().position(|s| e >= s.0 && e < s.0 + s.1)?;
        Some((e, l, seg_at[i] + (e - r.segments[i].0)))
    });
    let eh_name = eh.map(|_| (w.add_section_name(b".eh_frame"), w.reserve_section_index()));
    let table_names: Vec<_> = format::TABLES
        .iter()
        .map(|t| (w.add_section_name(t.as_bytes()), w.reserve_section_index()))
        .collect();
    w.reserve_shstrtab_section_index();
    w.reserve_shstrtab().map_err(|e| write_error(name, e))?;
    w.reserve_section_headers();
    let file_size = w.reserved_len();
    if header_at != HEADER_AT as u64 {
        return Err(ImageError::Write {
            name: name.into(),
            detail: format!("the header landed at offset {header_at}, not {HEADER_AT}"),
        });
    }
    let header = Header {
        version: format::FORMAT_VERSION,
        header_size: HEADER_SIZE as u32,
        machine: format::MACHINE,
        pointer_width: 8,
        endianness: 1,
        page_size: PAGE as u32,
        cpu_features: 0,
        flags: 0,
        build_id: id.0,
        content_hash: [0; 32],
        file_size,
        image_size: r.memory.len() as u64,
        eh_frame: r.eh_frame.unwrap_or((0, 0)),
        tables: std::array::from_fn(|i| (table_at[i], tables[i].len() as u64)),
        segments: seg_count,
        imports: r.imports.len() as u32,
        exports: r.exports.len() as u32,
        rebased: r.rebase.len() as u32,
        name: image_name,
        tls: (0, 0),
    };
    // Write, in the same order.
    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_DYN,
        e_machine: elf::EM_X86_64,
        e_entry: 0,
        e_flags: elf::FileFlags(0),
    })
    .map_err(|e| write_error(name, e))?;
    w.write(&header.encode());
    w.write_align_program_headers();
    for (i, &(off, len, prot)) in r.segments.iter().enumerate() {
        w.write_program_header(&ProgramHeader {
            p_type: elf::PT_LOAD,
            p_flags: elf::ProgramFlags(prot_names(prot).1),
            p_offset: seg_at[i],
            p_vaddr: off,
            p_paddr: off,
            p_filesz: filesz[i],
            p_memsz: len,
            p_align: PAGE,
        });
    }
    for (i, &(off, _, _)) in r.segments.iter().enumerate() {
        w.pad_until(seg_at[i]);
        w.write(&r.memory[off as usize..(off + filesz[i]) as usize]);
    }
    for (i, t) in tables.iter().enumerate() {
        w.pad_until(table_at[i]);
        w.write(t);
    }
    w.write_shstrtab();
    w.write_null_section_header();
    let name_of = |w: &Writer<'_, _>, id| w.section_name_offset(Some(id));
    let sh =
        |sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_addralign| SectionHeader {
            sh_name,
            sh_type,
            sh_flags: elf::SectionFlags(sh_flags),
            sh_addr,
            sh_offset,
            sh_size,
            sh_link: 0,
            sh_info: 0,
            sh_addralign,
            sh_entsize: 0,
        };
    let _ = header_index;
    let h = sh(
        name_of(&w, header_name),
        elf::SHT_PROGBITS,
        0,
        0,
        header_at,
        HEADER_SIZE as u64,
        8,
    );
    w.write_section_header(&h);
    for (i, &(off, _, prot)) in r.segments.iter().enumerate() {
        let n = name_of(&w, seg_names[i].0);
        let h = sh(
            n,
            elf::SHT_PROGBITS,
            prot_names(prot).2,
            off,
            seg_at[i],
            filesz[i],
            PAGE,
        );
        w.write_section_header(&h);
    }
    if let (Some((e, l, at)), Some((n, _))) = (eh, eh_name) {
        let n = name_of(&w, n);
        w.write_section_header(&sh(n, elf::SHT_PROGBITS, elf::SHF_ALLOC.0, e, at, l, 8));
    }
    for (i, t) in tables.iter().enumerate() {
        let n = name_of(&w, table_names[i].0);
        let h = sh(n, elf::SHT_PROGBITS, 0, 0, table_at[i], t.len() as u64, 8);
        w.write_section_header(&h);
    }
    w.write_shstrtab_section_header();
    drop(w);
    format::reseal(&mut out);
    Ok(out)
}

fn write_error(name: &str, e: object::write::Error) -> ImageError {
    ImageError::Write {
        name: name.into(),
        detail: e.to_string(),
    }
}
