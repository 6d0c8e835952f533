//! Writing an image file: the ELF64 container with `object::write`.

use object::elf;
use object::write::StringId;
use object::write::elf::{FileHeader, ProgramHeader, SectionHeader, Writer};
use object::write::{StreamingBuffer, WritableBuffer};
use std::io::{BufWriter, Seek, SeekFrom, Write};

use super::format::{self, HEADER_AT, HEADER_SIZE, Header, PAGE};
use super::{BuildId, ImageError, ImagingRecord, classify};
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
        imports.extend_from_slice(&i.offset.to_le_bytes());
        let (source, index) = match (i.dep, i.host, i.tls) {
            (_, _, Some((kind, var))) => {
                imports.extend_from_slice(&var.to_le_bytes());
                (format::SOURCE_TLS, kind)
            }
            (Some((index, offset)), _, _) => {
                imports.extend_from_slice(&offset.to_le_bytes());
                (format::SOURCE_DEPENDENCY, index)
            }
            (None, Some(index), None) => {
                imports.extend_from_slice(&0u64.to_le_bytes());
                (format::SOURCE_HOST_TABLE, index)
            }
            (None, None, None) => {
                let (at, len) = string(&i.name);
                imports.extend_from_slice(&at.to_le_bytes());
                imports.extend_from_slice(&len.to_le_bytes());
                (format::SOURCE_BY_NAME, 0)
            }
        };
        imports.extend_from_slice(&i.addend.to_le_bytes());
        let flags = if i.weak { format::IMPORT_WEAK } else { 0 }
            | if i.slot { format::IMPORT_SLOT } else { 0 }
            | if i.pc32 { format::IMPORT_PC32 } else { 0 };
        imports.extend_from_slice(&[flags, source, 0, 0]);
        imports.extend_from_slice(&index.to_le_bytes());
    }
    let mut deps = Vec::with_capacity(r.deps.len() * format::DEP_SIZE);
    for d in &r.deps {
        let (at, len) = string(&d.name);
        deps.extend_from_slice(&d.build_id.0);
        deps.extend_from_slice(&at.to_le_bytes());
        deps.extend_from_slice(&len.to_le_bytes());
        deps.extend_from_slice(&d.image_size.to_le_bytes());
    }
    let mut exports = Vec::with_capacity(r.exports.len() * format::EXPORT_SIZE);
    for e in &r.exports {
        let (at, len) = string(classify::export_name(&r.export_names, e));
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
    let mut hosttab = Vec::new();
    if let Some((id, count, table_name)) = &r.host_table {
        let (at, len) = string(table_name);
        hosttab.extend_from_slice(&id.0);
        hosttab.extend_from_slice(&count.to_le_bytes());
        hosttab.extend_from_slice(&at.to_le_bytes());
        hosttab.extend_from_slice(&len.to_le_bytes());
        hosttab.extend_from_slice(&0u32.to_le_bytes());
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
            rebase, imports, exports, init, initents, strings, deps, hosttab,
        ],
        image_name,
    )
}

/// How many bytes of each segment the file holds: up to the last non-zero
/// byte, a word the loader writes, or the `.eh_frame` end (the rest is
/// zero-filled at load).
fn file_sizes(r: &ImagingRecord, memory: &[u8]) -> Vec<u64> {
    r.segments
        .iter()
        .map(|&(off, len, _)| {
            let end = (off + len).min(memory.len() as u64);
            let bytes = &memory[off as usize..end as usize];
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

/// One section header to write.
struct SectionPlan {
    name: StringId,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    align: u64,
}

/// File offsets chosen in the reserve phase.
struct Plan {
    header_at: u64,
    seg_at: Vec<u64>,
    table_at: Vec<u64>,
    sections: Vec<SectionPlan>,
    file_size: u64,
}

/// Reserve phase: ELF header, kiln header, program headers, segments
/// (page-aligned), tables, section names and headers.
fn reserve(
    w: &mut Writer<'_>,
    name: &str,
    r: &ImagingRecord,
    tables: &[Vec<u8>; 8],
    filesz: &[u64],
) -> Result<Plan, ImageError> {
    w.reserve_file_header();
    let header_at = w.reserve(HEADER_SIZE as u64, 1);
    w.reserve_program_headers(r.segments.len() as u32);
    let seg_at: Vec<u64> = filesz.iter().map(|&n| w.reserve(n, PAGE)).collect();
    let table_at: Vec<u64> = tables
        .iter()
        .map(|t| w.reserve(t.len() as u64, 8))
        .collect();
    let mut sections = Vec::new();
    let mut section = |w: &mut Writer<'_>, n: &'static [u8], flags, addr, offset, size, align| {
        let name = w.add_section_name(n);
        w.reserve_section_index();
        sections.push(SectionPlan {
            name,
            flags,
            addr,
            offset,
            size,
            align,
        });
    };
    section(w, b".kiln.header", 0, 0, header_at, HEADER_SIZE as u64, 8);
    for (i, &(off, _, prot)) in r.segments.iter().enumerate() {
        let (n, _, flags) = prot_names(prot);
        section(w, n, flags, off, seg_at[i], filesz[i], PAGE);
    }
    if let Some((e, l)) = r.eh_frame.filter(|&(_, l)| l > 0)
        && let Some(i) = r.segments.iter().position(|s| e >= s.0 && e < s.0 + s.1)
    {
        let at = seg_at[i] + (e - r.segments[i].0);
        section(w, b".eh_frame", elf::SHF_ALLOC.0, e, at, l, 8);
    }
    for (i, t) in format::TABLES.iter().enumerate() {
        section(
            w,
            t.as_bytes(),
            0,
            0,
            table_at[i],
            tables[i].len() as u64,
            8,
        );
    }
    w.reserve_shstrtab_section_index();
    w.reserve_shstrtab()
        .map_err(|e| write_error(name, "the section name table", e))?;
    w.reserve_section_headers();
    if header_at != HEADER_AT as u64 {
        return Err(ImageError::Write {
            name: name.into(),
            detail: format!("the header landed at offset {header_at}, not {HEADER_AT}"),
            source: None,
        });
    }
    Ok(Plan {
        header_at,
        seg_at,
        table_at,
        sections,
        file_size: w.reserved_len(),
    })
}

/// The header of the file `plan` lays out (content hash still zero), for
/// an image of `image_size` bytes.
fn header(
    r: &ImagingRecord,
    image_size: u64,
    id: &BuildId,
    plan: &Plan,
    tables: &[Vec<u8>; 8],
    name: (u32, u32),
) -> Header {
    Header {
        version: format::FORMAT_VERSION,
        header_size: HEADER_SIZE as u32,
        machine: r.machine,
        pointer_width: 8,
        endianness: 1,
        page_size: PAGE as u32,
        cpu_features: r.cpu_features,
        flags: if r.imports.iter().any(|i| i.pc32) {
            format::FLAG_PC32_IMPORTS
        } else {
            0
        },
        build_id: id.0,
        content_hash: [0; 32],
        file_size: plan.file_size,
        image_size,
        eh_frame: r.eh_frame.unwrap_or((0, 0)),
        tables: std::array::from_fn(|i| (plan.table_at[i], tables[i].len() as u64)),
        segments: r.segments.len() as u32,
        imports: r.imports.len() as u32,
        exports: r.exports.len() as u32,
        rebased: r.rebase.len() as u32,
        name,
        tls: r.tls,
        base_align: r.base_align.max(PAGE),
    }
}

/// The image file for `r` (whose memory is a copy), in memory.
pub(crate) fn write(name: &str, r: &ImagingRecord, id: &BuildId) -> Result<Vec<u8>, ImageError> {
    let mut out = std::io::Cursor::new(Vec::new());
    write_to(name, r, &r.memory, id, &mut out)?;
    Ok(out.into_inner())
}

/// The image file for `r`, with the normalized `memory`, written to `out`
/// from its current position and sealed. The segments go from the image's memory to `out` as they are,
/// hashed on the way, with no copy of the whole file in memory (on the
/// aarch64 synthetic input that copy was 7.5 MB of fresh heap pages, a
/// third of `kiln image save`'s page faults); the content hash is written
/// last, at its field, and `out` is left at the file's end.
pub(crate) fn write_to<W: Write + Seek + Send>(
    name: &str,
    r: &ImagingRecord,
    memory: &[u8],
    id: &BuildId,
    out: &mut W,
) -> Result<(), ImageError> {
    let io_error = |source| ImageError::Io {
        name: name.into(),
        what: "write",
        source,
    };
    let start = out.stream_position().map_err(io_error)?;
    let mut sealing = Sealing {
        out: &mut *out,
        hasher: blake3::Hasher::new(),
        beside: !r.serial,
    };
    let mut buffer = StreamingBuffer::new(BufWriter::with_capacity(1 << 16, &mut sealing));
    let file_size = write_container(name, r, memory, id, &mut buffer)?;
    buffer.result().map_err(io_error)?;
    buffer
        .into_inner()
        .into_inner()
        .map_err(|e| io_error(e.into_error()))?;
    let hash = sealing.hasher.finalize();
    out.seek(SeekFrom::Start(start + format::CONTENT_HASH_AT as u64))
        .and_then(|_| out.write_all(hash.as_bytes()))
        .and_then(|_| out.seek(SeekFrom::Start(start + file_size)))
        .map_err(io_error)?;
    Ok(())
}

/// What [`write_to`] writes through: every byte also goes to the content
/// hash (the file is written with its hash field zero, as the hash is
/// defined).
struct Sealing<'a, W> {
    out: &'a mut W,
    hasher: blake3::Hasher,
    /// Large segments are hashed on a rayon thread while written.
    beside: bool,
}

impl<W: Write + Send> Write for Sealing<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if bytes.len() < HASH_BESIDE_FROM || !self.beside {
            let n = self.out.write(bytes)?;
            self.hasher.update(&bytes[..n]);
            return Ok(n);
        }
        // A segment: hashed on another thread while the kernel copies it
        // into the file (on the 7.5 MB aarch64 synth image the two took
        // about as long as each other, one after the other).
        let (out, hasher) = (&mut *self.out, &mut self.hasher);
        let (written, _) = rayon::join(|| out.write_all(bytes), || hasher.update(bytes));
        // On an error the hash is of more than was written; the file is
        // not sealed then.
        written.map(|()| bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes of at least this many bytes are hashed beside the write.
const HASH_BESIDE_FROM: usize = 1 << 20;

/// Writes the ELF container of `r` with `memory` (content hash zero) into
/// `buffer`; returns the file's size.
fn write_container(
    name: &str,
    r: &ImagingRecord,
    memory: &[u8],
    id: &BuildId,
    buffer: &mut dyn WritableBuffer,
) -> Result<u64, ImageError> {
    let (tables, image_name) = tables(name, r);
    let filesz = file_sizes(r, memory);
    let mut w = Writer::new(object::Endianness::Little, true, buffer);
    let plan = reserve(&mut w, name, r, &tables, &filesz)?;
    let header = header(r, memory.len() as u64, id, &plan, &tables, image_name);
    // Write, in the order reserved.
    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_DYN,
        e_machine: elf::Machine(r.machine),
        e_entry: 0,
        e_flags: elf::FileFlags(0),
    })
    .map_err(|e| write_error(name, "the ELF file header", e))?;
    debug_assert_eq!(w.len(), plan.header_at);
    w.write(&header.encode());
    w.write_align_program_headers();
    for (i, &(off, len, prot)) in r.segments.iter().enumerate() {
        w.write_program_header(&ProgramHeader {
            p_type: elf::PT_LOAD,
            p_flags: elf::ProgramFlags(prot_names(prot).1),
            p_offset: plan.seg_at[i],
            p_vaddr: off,
            p_paddr: off,
            p_filesz: filesz[i],
            p_memsz: len,
            p_align: PAGE,
        });
    }
    for (i, &(off, _, _)) in r.segments.iter().enumerate() {
        w.pad_until(plan.seg_at[i]);
        w.write(&memory[off as usize..(off + filesz[i]) as usize]);
    }
    for (i, t) in tables.iter().enumerate() {
        w.pad_until(plan.table_at[i]);
        w.write(t);
    }
    w.write_shstrtab();
    w.write_null_section_header();
    for s in &plan.sections {
        let sh_name = w.section_name_offset(Some(s.name));
        w.write_section_header(&SectionHeader {
            sh_name,
            sh_type: elf::SHT_PROGBITS,
            sh_flags: elf::SectionFlags(s.flags),
            sh_addr: s.addr,
            sh_offset: s.offset,
            sh_size: s.size,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: s.align,
            sh_entsize: 0,
        });
    }
    w.write_shstrtab_section_header();
    Ok(plan.file_size)
}

fn write_error(name: &str, what: &str, e: object::write::Error) -> ImageError {
    ImageError::Write {
        name: name.into(),
        detail: what.into(),
        source: Some(e),
    }
}
