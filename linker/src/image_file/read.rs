//! Reading an image file, cheap checks first: the header's fields, the file
//! size, the content hash; then the ELF container (with `object`) and every
//! table's bounds. Nothing here maps memory or runs code.

use object::LittleEndian as LE;
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _};

use super::format::{self, Fields, HEADER_AT, HEADER_SIZE, Header, PAGE};
use super::{BuildId, ImageDependency, ImageError, verified};
use crate::graph::Prot;

/// A loadable segment: `[vaddr, vaddr+memsz)` of the image, of which the
/// first `filesz` bytes come from the file at `offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub(crate) vaddr: u64,
    pub(crate) memsz: u64,
    pub(crate) offset: u64,
    pub(crate) filesz: u64,
    pub(crate) prot: Prot,
}

/// An import decoded from the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawImport<'a> {
    pub(crate) offset: u64,
    pub(crate) name: &'a str,
    pub(crate) addend: i64,
    pub(crate) weak: bool,
    pub(crate) slot: bool,
    /// A 4-byte PC-relative field (`S + A - P`), anywhere in the image
    /// (text included), rather than an 8-byte word of a non-text segment.
    pub(crate) pc32: bool,
    /// From a dependency: (its index in `deps`, the offset in it); the
    /// name is then empty.
    pub(crate) dep: Option<(u32, u64)>,
    /// A host table entry's index; the name is then empty.
    pub(crate) host: Option<u32>,
    /// A thread-local slot: (kind, variable offset in the TLS template);
    /// the name is then empty.
    pub(crate) tls: Option<(u32, u64)>,
}

/// An export decoded from the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawExport<'a> {
    pub(crate) name: &'a str,
    pub(crate) offset: u64,
    pub(crate) flags: u32,
}

/// A checked image file: every offset below is inside the image or file.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub(crate) header: Header,
    pub(crate) name: &'a str,
    pub(crate) file: &'a [u8],
    pub(crate) segments: Vec<Segment>,
    /// Offsets of the words to rebase (decoded, checked).
    pub(crate) rebase: Vec<u64>,
    pub(crate) imports: Vec<RawImport<'a>>,
    /// The images it links against.
    pub(crate) deps: Vec<ImageDependency>,
    /// The host table its imports use: (id, entry count, name).
    pub(crate) host_table: Option<(BuildId, u32, &'a str)>,
    pub(crate) exports: Vec<RawExport<'a>>,
    /// Initializer sections: name and entry offsets (`u64::MAX`: skipped).
    pub(crate) init_fini: Vec<(&'a str, Vec<u64>)>,
    /// `.kiln.strings` as a whole, if it is UTF-8: every name above is a
    /// slice of it.
    pub(crate) strings: Option<&'a str>,
    /// Whether `.eh_frame` was found whole and terminated, and beyond the
    /// reach of rebasing and binding ([`eh_frame_valid`]): a load need
    /// not walk its records again.
    pub(crate) eh_frame_valid: bool,
}

struct Ctx<'a> {
    /// The file's name, for errors.
    file_name: &'a str,
}

impl Ctx<'_> {
    fn field(
        &self,
        field: &'static str,
        found: impl ToString,
        expected: impl ToString,
    ) -> ImageError {
        ImageError::Field {
            name: self.file_name.to_string(),
            field,
            found: found.to_string(),
            expected: expected.to_string(),
        }
    }

    fn bad(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Malformed {
            name: self.file_name.to_string(),
            detail: detail.into(),
        }
    }

    /// The ELF reader refused `what`.
    fn container(&self, what: &'static str, source: object::read::Error) -> ImageError {
        ImageError::Container {
            name: self.file_name.to_string(),
            what,
            source,
        }
    }

    fn expect<T: PartialEq + std::fmt::Display>(
        &self,
        field: &'static str,
        found: T,
        expected: T,
    ) -> Result<(), ImageError> {
        if found == expected {
            Ok(())
        } else {
            Err(self.field(field, found, expected))
        }
    }
}

/// What an image is parsed for: to be loaded here (its code must suit this
/// process's ISA and CPU), or only described (`kiln image info`: any ISA
/// kiln saves images for).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Load,
    Describe,
}

const EM_X86_64: u16 = elf::EM_X86_64.0;
const EM_AARCH64: u16 = elf::EM_AARCH64.0;

/// The header's `machine` field: the host's when loading; any machine kiln
/// saves images for when describing. An image of another ISA is refused
/// saying what runs it.
fn check_machine(c: &Ctx<'_>, machine: u16, purpose: Purpose) -> Result<(), ImageError> {
    let known = [format::MACHINE, EM_AARCH64];
    match purpose {
        Purpose::Load if machine != format::MACHINE && known.contains(&machine) => Err(c.field(
            "machine",
            format!("{machine} ({})", machine_name(machine)),
            format!(
                "{} ({}, this process's ISA): run an image of another ISA with the C loader built for it (linker/loader/build.sh {} DIR; under qemu-{}-static on this machine)",
                format::MACHINE,
                machine_name(format::MACHINE),
                machine_name(machine),
                machine_name(machine),
            ),
        )),
        Purpose::Load => c.expect("machine", machine, format::MACHINE),
        Purpose::Describe if known.contains(&machine) => Ok(()),
        Purpose::Describe => Err(c.field(
            "machine",
            machine,
            format!("{} or {EM_AARCH64}", format::MACHINE),
        )),
    }
}

/// The ISA of an ELF machine number kiln saves images for.
fn machine_name(machine: u16) -> &'static str {
    match machine {
        EM_X86_64 => "x86_64",
        EM_AARCH64 => "aarch64",
        _ => "unknown",
    }
}

/// The target triple of an image's machine.
fn target_of(machine: u16) -> &'static str {
    match machine {
        EM_AARCH64 => "aarch64-unknown-linux-gnu",
        _ => super::TARGET,
    }
}

/// The header's own checks: fixed fields, CPU features, size, content hash.
fn check_header(
    c: &Ctx<'_>,
    file: &[u8],
    hash: bool,
    purpose: Purpose,
) -> Result<Header, ImageError> {
    if !super::is_image(file) {
        return Err(ImageError::NotAnImage {
            name: c.file_name.to_string(),
        });
    }
    let min = HEADER_AT + HEADER_SIZE;
    if file.len() < min {
        return Err(c.field("file size", file.len(), format!("at least {min}")));
    }
    let h = Header::decode(&file[HEADER_AT..min]);
    if h.version != format::FORMAT_VERSION {
        return Err(c.field(
            "format version",
            h.version,
            format!(
                "{} (this kiln's; save the image again with it)",
                format::FORMAT_VERSION
            ),
        ));
    }
    c.expect("header size", h.header_size, HEADER_SIZE as u32)?;
    check_machine(c, h.machine, purpose)?;
    c.expect("pointer width", h.pointer_width, 8)?;
    c.expect("endianness", h.endianness, 1)?;
    c.expect("page size", h.page_size, PAGE as u32)?;
    if h.flags & !format::FLAG_PC32_IMPORTS != 0 {
        return Err(c.field(
            "flags",
            format!("{:#x}", h.flags),
            "0 or 1 (PC32 imports; a later kiln wrote the image: save it again with this one)",
        ));
    }
    if purpose == Purpose::Load && format::missing_cpu_features(h.cpu_features) != 0 {
        return Err(c.field(
            "required CPU features",
            format::feature_names(h.cpu_features),
            format!(
                "a subset of this CPU's {}",
                format::feature_names(format::cpu_features())
            ),
        ));
    }
    c.expect("file size", h.file_size, file.len() as u64)?;
    let hash = if hash {
        format::content_hash(file)
    } else {
        h.content_hash
    };
    if hash != h.content_hash {
        return Err(c.field(
            "content hash",
            BuildId(h.content_hash),
            format!("{} (the file's bytes)", BuildId(hash)),
        ));
    }
    if !h.base_align.is_power_of_two() || !(PAGE..=format::MAX_BASE_ALIGN).contains(&h.base_align) {
        return Err(c.field(
            "base alignment",
            format!("{:#x}", h.base_align),
            format!(
                "a power of two from {PAGE:#x} to {:#x}",
                format::MAX_BASE_ALIGN
            ),
        ));
    }
    check_tls(c, &h.tls, h.machine)?;
    Ok(h)
}

/// The header's thread-local fields: consistent among themselves (the
/// template's place in the image is checked with the segments).
fn check_tls(c: &Ctx<'_>, t: &format::TlsHeader, machine: u16) -> Result<(), ImageError> {
    if t.size == 0 {
        if *t == format::TlsHeader::default() {
            return Ok(());
        }
        return Err(c.field(
            "TLS template size",
            "0 (with other TLS fields non-zero)",
            "non-zero, or every TLS field 0",
        ));
    }
    if t.size > MAX_IMAGE || t.image_size > t.size {
        return Err(c.field(
            "TLS template size",
            format!("{:#x} (initial image {:#x})", t.size, t.image_size),
            format!("1..={MAX_IMAGE:#x}, at least its initial image"),
        ));
    }
    if t.image_size == 0 && t.image_offset != 0 {
        return Err(c.field(
            "TLS initial image offset",
            t.image_offset,
            "0 (its size is 0)",
        ));
    }
    if !t.align.is_power_of_two() || t.align > format::PAGE {
        return Err(c.field(
            "TLS template alignment",
            t.align,
            "a power of two up to 4096",
        ));
    }
    match t.static_use {
        format::STATIC_TLS_FIXED => {
            let fits = t
                .area_offset
                .checked_add(t.size)
                .is_some_and(|end| end <= t.area_size);
            let (side_ok, expected) = super::tls::area_side(machine, t.area_tp_offset);
            if !fits || !side_ok {
                return Err(c.field(
                    "static TLS range",
                    format!(
                        "{:#x}+{:#x} of an area of {:#x} bytes at thread-pointer offset {}",
                        t.area_offset,
                        t.size,
                        t.area_size,
                        tp_offset(t.area_tp_offset)
                    ),
                    expected,
                ));
            }
            Ok(())
        }
        format::STATIC_TLS_NONE | format::STATIC_TLS_ANY => c.expect(
            "static TLS area (no local-exec code)",
            format!(
                "{}, {:#x}, {:#x}",
                t.area_tp_offset, t.area_size, t.area_offset
            ),
            "0, 0x0, 0x0".to_string(),
        ),
        other => Err(c.field(
            "static TLS use",
            other,
            "0 (none), 1 (initial-exec: any range) or 2 (local-exec: the recorded range)",
        )),
    }
}

/// A thread-pointer offset as `tp-0x…`.
pub(crate) fn tp_offset(v: i64) -> String {
    if v < 0 {
        format!("tp-{:#x}", v.unsigned_abs())
    } else {
        format!("tp+{v:#x}")
    }
}

/// Checks everything about `file` the loader relies on.
pub(crate) fn parse<'a>(file_name: &str, file: &'a [u8]) -> Result<Parsed<'a>, ImageError> {
    parse_with(file_name, file, true)
}

/// [`parse`] of the bytes of a file with identity `id` (taken before the
/// bytes were read: [`verified::Identity::new`]): the content hash is
/// skipped if this process hashed that very file before and it has not
/// changed since ([`verified`]); otherwise it is checked and, if it
/// matches, the file is remembered.
pub(crate) fn parse_file<'a>(
    file_name: &str,
    file: &'a [u8],
    id: &verified::Identity,
) -> Result<Parsed<'a>, ImageError> {
    let known = id.size() == file.len() as u64
        && format::header_content_hash(file).is_some_and(|h| verified::is_verified(id, &h));
    let p = parse_with(file_name, file, !known)?;
    if !known && id.size() == file.len() as u64 {
        verified::remember(*id, p.header.content_hash);
    }
    Ok(p)
}

/// [`parse`], skipping the content hash when `hash` is false: only for
/// bytes that already passed [`parse`] and have not changed since (an image
/// unit's own copy, checked when it was added).
pub(crate) fn parse_with<'a>(
    file_name: &str,
    file: &'a [u8],
    hash: bool,
) -> Result<Parsed<'a>, ImageError> {
    parse_for(file_name, file, hash, Purpose::Load)
}

fn parse_for<'a>(
    file_name: &str,
    file: &'a [u8],
    hash: bool,
    purpose: Purpose,
) -> Result<Parsed<'a>, ImageError> {
    let c = Ctx { file_name };
    let h = check_header(&c, file, hash, purpose)?;
    let elf_err = |e: object::read::Error| c.container("ELF container", e);
    let ehdr = FileHeader64::<LE>::parse(file).map_err(elf_err)?;
    c.expect("ELF e_machine", ehdr.e_machine(LE).0, h.machine)?;
    let segments = segments(&c, &h, ehdr, file)?;
    check_tls_image(&c, &h, &segments)?;
    let (tables, eh_section) = tables(&c, &h, ehdr, file)?;
    check_eh_frame(&c, &h, &segments, eh_section)?;
    let strings = tables[format::T_STRINGS];
    // The whole table checked as UTF-8 once (kiln writes only names): then
    // each string is a slice at char boundaries. Otherwise each string is
    // checked on its own, as it is used.
    let string = Strings {
        c: &c,
        bytes: strings,
        whole: std::str::from_utf8(strings).ok(),
    };
    let name = string.get(h.name, "image name")?;
    // The segment the last word checked was in: rebased words and imports
    // come in ascending order, mostly in one segment.
    let last = std::cell::Cell::new(None::<&Segment>);
    let writable = |off: u64, pc32: bool, what: &str| -> Result<(), ImageError> {
        // A PC32 field: 4 bytes in any segment; else a word of a non-text one.
        let width = if pc32 { 4 } else { 8 };
        let inside = |s: &Segment| {
            (pc32 || s.prot != Prot::ReadExec)
                && off >= s.vaddr
                && off.saturating_add(width) <= s.vaddr + s.memsz
        };
        let ok = last.get().is_some_and(inside) || {
            let found = segments.iter().find(|s| inside(s));
            last.set(found);
            found.is_some()
        };
        if ok {
            Ok(())
        } else {
            Err(c.bad(if pc32 {
                format!("{what} at {off:#x} is not a 4-byte field of a segment")
            } else {
                format!("{what} at {off:#x} is not a word of a non-text segment")
            }))
        }
    };
    let rebase = rebase_list(&c, &h, tables[format::T_REBASE], &segments)?;
    let deps = deps(&c, &h, tables[format::T_DEPS], &string)?;
    let host_table = host_table(&c, tables[format::T_HOSTTAB], &string)?;
    let sources = Sources {
        deps: &deps,
        host_entries: host_table.map(|t| t.1),
        tls: &h.tls,
        pc32_allowed: h.flags & format::FLAG_PC32_IMPORTS != 0,
    };
    let imports = imports(
        &c,
        &h,
        tables[format::T_IMPORTS],
        &sources,
        &string,
        &writable,
    )?;
    let exports = exports(&c, &h, tables[format::T_EXPORTS], &string)?;
    let init_fini = init_fini(
        &c,
        &segments,
        tables[format::T_INIT],
        tables[format::T_INITENTS],
        &string,
    )?;
    let eh_frame_valid = eh_frame_valid(&h, &segments, file, &rebase, &imports);
    Ok(Parsed {
        header: h,
        name,
        file,
        segments,
        rebase,
        imports,
        deps,
        host_table,
        exports,
        init_fini,
        strings: string.whole,
        eh_frame_valid,
    })
}

/// The TLS initial image lies inside a read-only segment.
fn check_tls_image(c: &Ctx<'_>, h: &Header, segments: &[Segment]) -> Result<(), ImageError> {
    let (at, len) = (h.tls.image_offset, h.tls.image_size);
    if len > 0
        && !segments.iter().any(|s| {
            s.prot == Prot::Read && at >= s.vaddr && at.saturating_add(len) <= s.vaddr + s.memsz
        })
    {
        return Err(c.bad(format!(
            "the TLS initial image {at:#x}+{len:#x} is not inside a read-only segment"
        )));
    }
    Ok(())
}

/// The offsets of the rebased words `table` (RELR) encodes, checked: each
/// a word of a non-text segment, as many as the header says.
fn rebase_list(
    c: &Ctx<'_>,
    h: &Header,
    table: &[u8],
    segments: &[Segment],
) -> Result<Vec<u64>, ImageError> {
    // Sized by the header's count, bounded by what the table can encode
    // (63 words per 8-byte entry; the count is checked after decoding).
    let mut rebase = Vec::with_capacity((h.rebased as usize).min(table.len() / 8 * 63));
    let words = table.chunks_exact(8).map(|w| Fields(w).u64(0));
    if !table.len().is_multiple_of(8) {
        return Err(c.bad(".kiln.rebase size is not a multiple of 8"));
    }
    let count = format::relr_decode(words, h.image_size / 8, |off| {
        rebase.push(off);
        Ok(())
    })
    .map_err(|e| c.bad(format!(".kiln.rebase: {e}")))?;
    rebased_words_writable(c, segments, &rebase)?;
    c.expect("rebased word count", count, u64::from(h.rebased))?;
    Ok(rebase)
}

/// Whether the image's `.eh_frame` (the header's range, which
/// [`check_eh_frame`] found inside a read-only segment's file bytes) will
/// be, once loaded, a whole sequence of records followed by its zero
/// terminator, as `runtime::eh_frame::register` checks it: its file bytes
/// are, and no rebased or imported word lies in it (nothing else writes
/// a read-only segment's file bytes at load). Then a load registers it
/// without walking it again — once per file for `load_file`'s kept form.
/// `false` leaves that check to the load, which refuses it as before.
fn eh_frame_valid(
    h: &Header,
    segments: &[Segment],
    file: &[u8],
    rebase: &[u64],
    imports: &[RawImport<'_>],
) -> bool {
    let (off, len) = h.eh_frame;
    if len < 4 {
        return false;
    }
    let end = off.saturating_add(len);
    let Some(s) = segments
        .iter()
        .find(|s| s.prot == Prot::Read && off >= s.vaddr && end <= s.vaddr + s.filesz)
    else {
        return false;
    };
    let at = s.offset + (off - s.vaddr);
    let Some(bytes) = usize::try_from(at)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(at, len)| file.get(at..at.checked_add(len)?))
    else {
        return false;
    };
    // Both lists ascend (checked): the first word ending after `off` is
    // the only one that can start before `end` first. Words are 8 bytes.
    let overlaps = |w: u64| w.saturating_add(8) > off && w < end;
    let rebased = rebase[rebase.partition_point(|&w| w.saturating_add(8) <= off)..]
        .first()
        .is_some_and(|&w| overlaps(w));
    let imported = imports[imports.partition_point(|i| i.offset.saturating_add(8) <= off)..]
        .first()
        .is_some_and(|i| overlaps(i.offset));
    let (section, terminator) = bytes.split_at(bytes.len() - 4);
    !rebased
        && !imported
        && terminator == [0; 4]
        && crate::runtime::eh_frame::validate(section).is_ok()
}

/// Every rebased word (ascending: the decoder checks) lies in a non-text
/// segment: one walk over both, as segments ascend too.
fn rebased_words_writable(
    c: &Ctx<'_>,
    segments: &[Segment],
    rebase: &[u64],
) -> Result<(), ImageError> {
    let mut writable = segments.iter().filter(|s| s.prot != Prot::ReadExec);
    let mut cur = writable.next();
    for &off in rebase {
        while let Some(s) = cur
            && off >= s.vaddr + s.memsz
        {
            cur = writable.next();
        }
        let inside =
            cur.is_some_and(|s| off >= s.vaddr && off.saturating_add(8) <= s.vaddr + s.memsz);
        if !inside {
            return Err(c.bad(format!(
                ".kiln.rebase: rebased word at {off:#x} is not a word of a non-text segment"
            )));
        }
    }
    Ok(())
}

/// The tables' bytes (in [`format::TABLES`] order) and the `.eh_frame`
/// section's (address, size).
type Tables<'a> = (Vec<&'a [u8]>, Option<(u64, u64)>);

/// Each table as the header and the section table both say (they must
/// agree), and the `.eh_frame` section's (address, size).
fn tables<'a>(
    c: &Ctx<'_>,
    h: &Header,
    ehdr: &FileHeader64<LE>,
    file: &'a [u8],
) -> Result<Tables<'a>, ImageError> {
    let sections = ehdr
        .sections(LE, file)
        .map_err(|e| c.container("ELF container", e))?;
    // Names compared in place (`name\0` at `sh_name`), not through
    // `section_by_name`: its string-table reads use the memchr crate, whose
    // first call probes the CPU (cpuid traps on virtual machines: ~50 µs of
    // a `kiln run` of an image).
    let elf_err = |e: object::read::Error| c.container("ELF container", e);
    let shstrndx = ehdr.shstrndx(LE, file).map_err(elf_err)?;
    let names: &[u8] = sections
        .section(object::SectionIndex(shstrndx as usize))
        .and_then(|s| s.data(LE, file))
        .map_err(elf_err)?;
    let find = |name: &str| {
        let want = name.as_bytes();
        sections.iter().find(|s| {
            let at = s.sh_name(LE) as usize;
            names
                .get(at..)
                .is_some_and(|n| n.len() > want.len() && n.starts_with(want) && n[want.len()] == 0)
        })
    };
    let hs = find(".kiln.header").ok_or_else(|| c.bad("no .kiln.header section"))?;
    c.expect(".kiln.header offset", hs.sh_offset(LE), HEADER_AT as u64)?;
    let mut tables: Vec<&'a [u8]> = Vec::with_capacity(format::TABLES.len());
    for (i, t) in format::TABLES.iter().enumerate() {
        let (off, size) = h.tables[i];
        let s = find(t).ok_or_else(|| c.bad(format!("no {t} section")))?;
        if (s.sh_offset(LE), s.sh_size(LE)) != (off, size) {
            return Err(c.bad(format!(
                "{t}: the header says offset {off:#x} size {size:#x}, the section table offset {:#x} size {:#x}",
                s.sh_offset(LE),
                s.sh_size(LE)
            )));
        }
        let bytes = off
            .checked_add(size)
            .and_then(|end| file.get(off as usize..end as usize))
            .ok_or_else(|| c.bad(format!("{t} ({off:#x}+{size:#x}) is outside the file")))?;
        tables.push(bytes);
    }
    let eh = find(".eh_frame").map(|s| (s.sh_addr(LE), s.sh_size(LE)));
    Ok((tables, eh))
}

fn segments(
    c: &Ctx<'_>,
    h: &Header,
    ehdr: &FileHeader64<LE>,
    file: &[u8],
) -> Result<Vec<Segment>, ImageError> {
    let phdrs = ehdr
        .program_headers(LE, file)
        .map_err(|e| c.container("program headers", e))?;
    c.expect("segment count", phdrs.len(), h.segments as usize)?;
    let mut out: Vec<Segment> = Vec::new();
    for (i, p) in phdrs.iter().enumerate() {
        c.expect("segment type", p.p_type(LE).0, elf::PT_LOAD.0)?;
        let prot = match p.p_flags(LE).0 {
            f if f == elf::PF_R.0 | elf::PF_X.0 => Prot::ReadExec,
            f if f == elf::PF_R.0 => Prot::Read,
            f if f == elf::PF_R.0 | elf::PF_W.0 => Prot::ReadWrite,
            f => return Err(c.field("segment flags", format!("{f:#x}"), "R, RX or RW")),
        };
        let s = Segment {
            vaddr: p.p_vaddr(LE),
            memsz: p.p_memsz(LE),
            offset: p.p_offset(LE),
            filesz: p.p_filesz(LE),
            prot,
        };
        let prev_end = out.last().map_or(0, |p| p.vaddr + p.memsz);
        let in_file = s
            .offset
            .checked_add(s.filesz)
            .is_some_and(|e| e <= file.len() as u64);
        let in_image = s
            .vaddr
            .checked_add(s.memsz)
            .is_some_and(|e| e <= h.image_size);
        if !s.vaddr.is_multiple_of(PAGE)
            || !s.offset.is_multiple_of(PAGE)
            || s.filesz > s.memsz
            || s.vaddr < prev_end
            || !in_file
            || !in_image
        {
            return Err(c.bad(format!(
                "segment {i} (image {:#x}+{:#x}, file {:#x}+{:#x}) is misaligned, overlapping or out of bounds (image size {:#x})",
                s.vaddr, s.memsz, s.offset, s.filesz, h.image_size
            )));
        }
        out.push(s);
    }
    // One reservation: refuse absurd sizes before asking for memory.
    if h.image_size > MAX_IMAGE || h.image_size == 0 {
        return Err(c.field("image size", h.image_size, format!("1..={MAX_IMAGE}")));
    }
    Ok(out)
}

fn check_eh_frame(
    c: &Ctx<'_>,
    h: &Header,
    segments: &[Segment],
    section: Option<(u64, u64)>,
) -> Result<(), ImageError> {
    let (off, len) = h.eh_frame;
    if len == 0 {
        return Ok(());
    }
    if section != Some((off, len)) {
        return Err(c.bad(format!(
            "the header's .eh_frame {off:#x}+{len:#x} does not match the section table's {section:?}"
        )));
    }
    let ok = len >= 4
        && segments.iter().any(|s| {
            s.prot == Prot::Read && off >= s.vaddr && off.saturating_add(len) <= s.vaddr + s.filesz
        });
    if ok {
        Ok(())
    } else {
        Err(c.bad(format!(
            ".eh_frame {off:#x}+{len:#x} is not inside a read-only segment's file bytes"
        )))
    }
}

type StringFn<'s, 'a> = Strings<'s, 'a>;

/// The strings table: names by (offset, length).
struct Strings<'s, 'a> {
    c: &'s Ctx<'s>,
    bytes: &'a [u8],
    /// The whole table, if it is UTF-8.
    whole: Option<&'a str>,
}

impl<'a> Strings<'_, 'a> {
    /// The string at `at`, `len` bytes (`what`, for the error).
    #[inline(always)]
    fn get(&self, (at, len): (u32, u32), what: &str) -> Result<&'a str, ImageError> {
        let range = at as usize..at as usize + len as usize;
        let s = match self.whole {
            Some(all) => all.get(range),
            None => (self.bytes.get(range)).and_then(|b| std::str::from_utf8(b).ok()),
        };
        match s {
            Some(s) => Ok(s),
            None => Err(self.bad((at, len), what)),
        }
    }

    #[cold]
    #[inline(never)]
    fn bad(&self, (at, len): (u32, u32), what: &str) -> ImageError {
        self.c.bad(format!(
            "{what}: string {at:#x}+{len:#x} is outside .kiln.strings or not UTF-8"
        ))
    }
}

/// The largest image a loader maps.
const MAX_IMAGE: u64 = 1 << 32;

/// The dependency table: distinct build ids (not the image's own), names,
/// sizes a loader would map.
fn deps(
    c: &Ctx<'_>,
    h: &Header,
    table: &[u8],
    string: &StringFn<'_, '_>,
) -> Result<Vec<ImageDependency>, ImageError> {
    if !table.len().is_multiple_of(format::DEP_SIZE) {
        return Err(c.field(
            ".kiln.deps size",
            table.len(),
            format!("a multiple of {}", format::DEP_SIZE),
        ));
    }
    let mut out: Vec<ImageDependency> = Vec::new();
    for (i, r) in table.chunks_exact(format::DEP_SIZE).enumerate() {
        let f = Fields(r);
        let d = ImageDependency {
            build_id: BuildId(f.array(0)),
            name: string
                .get((f.u32(32), f.u32(36)), "dependency name")?
                .to_string(),
            image_size: f.u64(40),
        };
        if d.build_id.0 == h.build_id || out.iter().any(|o| o.build_id == d.build_id) {
            return Err(c.bad(format!(
                "dependency {i} ({}, build id {}) is the image itself or listed twice",
                d.name, d.build_id
            )));
        }
        if d.image_size == 0 || d.image_size > MAX_IMAGE {
            return Err(c.field(
                "dependency image size",
                d.image_size,
                format!("1..={MAX_IMAGE}"),
            ));
        }
        out.push(d);
    }
    Ok(out)
}

/// The host table record: none, or (id, entry count, name).
fn host_table<'a>(
    c: &Ctx<'_>,
    table: &[u8],
    string: &StringFn<'_, 'a>,
) -> Result<Option<(BuildId, u32, &'a str)>, ImageError> {
    match table.len() {
        0 => Ok(None),
        format::HOSTTAB_SIZE => {
            let f = Fields(table);
            let name = string.get((f.u32(36), f.u32(40)), "host table name")?;
            c.expect("host table reserved word", f.u32(44), 0)?;
            Ok(Some((BuildId(f.array(0)), f.u32(32), name)))
        }
        n => Err(c.field(
            ".kiln.hosttab size",
            n,
            format!("0 or {}", format::HOSTTAB_SIZE),
        )),
    }
}

/// What an import may come from besides a name.
struct Sources<'d> {
    deps: &'d [ImageDependency],
    host_entries: Option<u32>,
    tls: &'d format::TlsHeader,
    /// The header announces PC32 imports.
    pc32_allowed: bool,
}

/// One import record: by name, a host table entry, or an offset in a
/// dependency.
fn import<'a>(
    c: &Ctx<'_>,
    r: &[u8],
    sources: &Sources<'_>,
    string: &StringFn<'_, 'a>,
) -> Result<RawImport<'a>, ImageError> {
    let deps = sources.deps;
    let f = Fields(r);
    let (flags, source, index) = (f.u8(24), f.u8(25), f.u32(28));
    if flags & !(format::IMPORT_WEAK | format::IMPORT_SLOT | format::IMPORT_PC32) != 0 {
        return Err(c.field(
            "import flags",
            flags,
            "a combination of WEAK (1), SLOT (2) and PC32 (4)",
        ));
    }
    let pc32 = flags & format::IMPORT_PC32 != 0;
    if pc32 {
        pc32_import(c, flags, source, sources.pc32_allowed)?;
    }
    let mut tls = None;
    let (name, dep, host) = match source {
        format::SOURCE_BY_NAME => {
            c.expect("import index", index, 0)?;
            (
                string.get((f.u32(8), f.u32(12)), "import name")?,
                None,
                None,
            )
        }
        format::SOURCE_TLS => {
            tls = Some(tls_slot(c, f.u64(8), index, f.u64(16), sources.tls)?);
            ("", None, None)
        }
        format::SOURCE_HOST_TABLE => {
            let entries = sources.host_entries.unwrap_or(0);
            if index >= entries {
                return Err(c.field(
                    "import host table index",
                    index,
                    format!("below the host table's entry count {entries}"),
                ));
            }
            c.expect("import host table word", f.u64(8), 0)?;
            ("", None, Some(index))
        }
        format::SOURCE_DEPENDENCY => {
            let Some(d) = deps.get(index as usize) else {
                return Err(c.field(
                    "import dependency index",
                    index,
                    format!("below the dependency count {}", deps.len()),
                ));
            };
            let offset = f.u64(8);
            if offset > d.image_size {
                return Err(c.field(
                    "import offset in a dependency",
                    format!("{offset:#x} (in {})", d.name),
                    format!("at most its image size {:#x}", d.image_size),
                ));
            }
            ("", Some((index, offset)), None)
        }
        s => {
            return Err(c.field(
                "import source",
                s,
                "0 (by name), 1 (a host table entry), 2 (a dependency's build id and offset) or 3 (a thread-local slot)",
            ));
        }
    };
    Ok(RawImport {
        offset: f.u64(0),
        name,
        addend: f.u64(16) as i64,
        weak: flags & format::IMPORT_WEAK != 0,
        slot: flags & format::IMPORT_SLOT != 0,
        pc32,
        dep,
        host,
        tls,
    })
}

/// A PC32 import: announced by the header, by name or a host table entry,
/// neither a slot nor weak (a missing symbol has no address to reach).
fn pc32_import(c: &Ctx<'_>, flags: u8, source: u8, allowed: bool) -> Result<(), ImageError> {
    if !allowed {
        return Err(c.field("flags", 0, "1 (PC32 imports): an import has the PC32 flag"));
    }
    if flags != format::IMPORT_PC32 {
        return Err(c.field(
            "import flags",
            flags,
            "PC32 (4) alone: a PC32 import is neither weak nor a slot",
        ));
    }
    if !matches!(source, format::SOURCE_BY_NAME | format::SOURCE_HOST_TABLE) {
        return Err(c.field(
            "import source",
            source,
            "0 (by name) or 1 (a host table entry) for a PC32 import",
        ));
    }
    Ok(())
}

/// A thread-local slot: a known kind, inside the template, no addend; a
/// thread-pointer offset only with static TLS.
fn tls_slot(
    c: &Ctx<'_>,
    var: u64,
    kind: u32,
    addend: u64,
    t: &format::TlsHeader,
) -> Result<(u32, u64), ImageError> {
    if t.size == 0 {
        return Err(c.field(
            "import source",
            format::SOURCE_TLS,
            "not 3 (a thread-local slot): the image has no TLS template",
        ));
    }
    if kind > format::TLS_DESC_ARGUMENT {
        return Err(c.field("thread-local slot kind", kind, "0..=3"));
    }
    if kind == format::TLS_TP_OFFSET && t.static_use == format::STATIC_TLS_NONE {
        return Err(c.field(
            "static TLS use",
            t.static_use,
            "1 or 2 (the image has initial-exec slots)",
        ));
    }
    if var > t.size {
        return Err(c.field(
            "thread-local slot offset",
            format!("{var:#x}"),
            format!("at most the TLS template size {:#x}", t.size),
        ));
    }
    c.expect("thread-local slot addend", addend, 0)?;
    Ok((kind, var))
}

fn imports<'a>(
    c: &Ctx<'_>,
    h: &Header,
    table: &'a [u8],
    sources: &Sources<'_>,
    string: &StringFn<'_, 'a>,
    writable: &dyn Fn(u64, bool, &str) -> Result<(), ImageError>,
) -> Result<Vec<RawImport<'a>>, ImageError> {
    c.expect(
        ".kiln.imports size",
        table.len(),
        h.imports as usize * format::IMPORT_SIZE,
    )?;
    let mut out: Vec<RawImport<'a>> = Vec::with_capacity(h.imports as usize);
    for (i, r) in table.chunks_exact(format::IMPORT_SIZE).enumerate() {
        let imp = import(c, r, sources, string)?;
        if out
            .last()
            .is_some_and(|p| p.offset + import_width(p) > imp.offset)
        {
            return Err(c.bad(format!(
                "import {i} ({}) is not sorted by offset or overlaps the previous",
                imp.name
            )));
        }
        writable(imp.offset, imp.pc32, "import")?;
        out.push(imp);
    }
    if h.flags & format::FLAG_PC32_IMPORTS != 0 && !out.iter().any(|i| i.pc32) {
        return Err(c.field("flags", 1, "0: the image has no PC32 import"));
    }
    Ok(out)
}

/// Bytes an import writes.
pub(crate) fn import_width(i: &RawImport<'_>) -> u64 {
    if i.pc32 { 4 } else { 8 }
}

fn exports<'a>(
    c: &Ctx<'_>,
    h: &Header,
    table: &'a [u8],
    string: &StringFn<'_, 'a>,
) -> Result<Vec<RawExport<'a>>, ImageError> {
    c.expect(
        ".kiln.exports size",
        table.len(),
        h.exports as usize * format::EXPORT_SIZE,
    )?;
    let mut out: Vec<RawExport<'a>> = Vec::with_capacity(h.exports as usize);
    for r in table.chunks_exact(format::EXPORT_SIZE) {
        let f = Fields(r);
        let e = RawExport {
            offset: f.u64(0),
            name: string.get((f.u32(8), f.u32(12)), "export name")?,
            flags: f.u32(16),
        };
        if e.offset >= h.image_size {
            return Err(c.field(
                "export offset",
                format!("{:#x} ({})", e.offset, e.name),
                format!("below the image size {:#x}", h.image_size),
            ));
        }
        if e.name.is_empty() || out.last().is_some_and(|p| p.name >= e.name) {
            return Err(c.bad(format!(
                "export `{}` is empty, out of order or a duplicate",
                e.name
            )));
        }
        out.push(e);
    }
    Ok(out)
}

fn init_fini<'a>(
    c: &Ctx<'_>,
    segments: &[Segment],
    table: &'a [u8],
    entries: &'a [u8],
    string: &StringFn<'_, 'a>,
) -> Result<Vec<(&'a str, Vec<u64>)>, ImageError> {
    if !table.len().is_multiple_of(format::INIT_SIZE) || !entries.len().is_multiple_of(8) {
        return Err(c.bad(".kiln.init or .kiln.initents has a partial record"));
    }
    let code = |off: u64| {
        off == u64::MAX
            || segments
                .iter()
                .any(|s| s.prot == Prot::ReadExec && off >= s.vaddr && off < s.vaddr + s.filesz)
    };
    let mut out = Vec::new();
    for r in table.chunks_exact(format::INIT_SIZE) {
        let f = Fields(r);
        let name = string.get((f.u32(0), f.u32(4)), "initializer section name")?;
        if crate::runtime::init_priority(name).is_none() {
            return Err(c.field(
                "initializer section",
                name,
                ".init_array*, .fini_array*, .ctors*, .dtors* or .preinit_array",
            ));
        }
        let (first, count) = (f.u32(8) as usize, f.u32(12) as usize);
        let slice = entries.get(first * 8..(first + count) * 8).ok_or_else(|| {
            c.bad(format!(
                "{name}: entries {first}+{count} are outside .kiln.initents"
            ))
        })?;
        let offs: Vec<u64> = slice.chunks_exact(8).map(|e| Fields(e).u64(0)).collect();
        if let Some(bad) = offs.iter().find(|&&o| !code(o)) {
            return Err(c.bad(format!("{name}: entry {bad:#x} is not in text")));
        }
        out.push((name, offs));
    }
    Ok(out)
}

/// What `kiln image info` prints.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImageInfo {
    /// The name the image was saved under.
    pub name: String,
    /// Its build id.
    pub build_id: BuildId,
    /// Format version.
    pub format_version: u32,
    /// Target triple.
    pub target: &'static str,
    /// Required CPU features (comma-separated, or `none`).
    pub cpu_features: String,
    /// The images it links against (loaded before it), in table order.
    pub dependencies: Vec<ImageDependency>,
    /// Exported symbols.
    pub exports: usize,
    /// Imported host symbols.
    pub imports: usize,
    /// Of which slots (GOT entries).
    pub import_slots: usize,
    /// Of which bound into a dependency by offset (not by name).
    pub dependency_imports: usize,
    /// The host table it was saved against: (id, entry count, name).
    pub host_table: Option<(BuildId, u32, String)>,
    /// Imports bound from host table entries by index (not by name).
    pub host_table_imports: usize,
    /// Imports that are 4-byte PC-relative fields (code reaching host data
    /// directly; the loader places the image within ±2 GiB of each).
    pub pc_relative_imports: usize,
    /// Rebased words.
    pub rebases: usize,
    /// Initializer and finalizer entries.
    pub initializers: usize,
    /// Memory span of the image.
    pub image_size: u64,
    /// The alignment its load base needs (the largest of its blocks, at
    /// least a page).
    pub base_align: u64,
    /// File size.
    pub file_size: u64,
    /// Segments: name, offset, memory size, file size, protection (`r-x`…).
    pub sections: Vec<(String, u64, u64, u64, &'static str)>,
    /// Its thread-locals, if any.
    pub thread_locals: Option<ImageTls>,
}

/// The thread-locals of an image (`kiln image info`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImageTls {
    /// TLS template size and alignment.
    pub size: u64,
    /// Alignment.
    pub align: u64,
    /// Bytes of initial values (`.tdata`; the rest is zero).
    pub initialized: u64,
    /// Thread-local slots bound at load.
    pub slots: usize,
    /// What it needs of static TLS: `none`, `initial-exec` (any range) or
    /// `local-exec` (the recorded range).
    pub static_use: &'static str,
    /// For local-exec: the static TLS area's thread-pointer offset and
    /// size, and the range's offset in it (its size is `size`).
    pub static_range: Option<(i64, u64, u64)>,
}

/// The build id of `file` and the images it links against, with the checks
/// of [`inspect`] but the content hash (a loader checks that later): for finding the files to
/// load before it.
pub fn dependencies(
    file_name: &str,
    file: &[u8],
) -> Result<(BuildId, Vec<ImageDependency>), ImageError> {
    let p = parse_with(file_name, file, false)?;
    Ok((BuildId(p.header.build_id), p.deps))
}

/// The names `file` exports with default visibility (what a link against
/// it may bind to), with the checks of [`dependencies`].
pub fn exported_names(file_name: &str, file: &[u8]) -> Result<Vec<String>, ImageError> {
    Ok(parse_with(file_name, file, false)?
        .exports
        .iter()
        .filter(|e| e.flags & format::EXPORT_EXPORTED != 0)
        .map(|e| e.name.to_string())
        .collect())
}

/// An image file of any ISA kiln saves, checked as [`inspect`] checks it.
pub(crate) fn parse_described<'a>(
    file_name: &str,
    file: &'a [u8],
) -> Result<Parsed<'a>, ImageError> {
    parse_for(file_name, file, true, Purpose::Describe)
}

/// Checks an image file (the same checks as [`super::load`], without
/// mapping it) and describes it.
pub fn inspect(file_name: &str, file: &[u8]) -> Result<ImageInfo, ImageError> {
    let p = parse_described(file_name, file)?;
    let prot = |p: Prot| match p {
        Prot::ReadExec => ("text", "r-x"),
        Prot::Read => ("rodata", "r--"),
        Prot::ReadWrite => ("data", "rw-"),
    };
    Ok(ImageInfo {
        name: p.name.to_string(),
        build_id: BuildId(p.header.build_id),
        format_version: p.header.version,
        target: target_of(p.header.machine),
        cpu_features: format::feature_names(p.header.cpu_features),
        dependencies: p.deps.clone(),
        exports: p.exports.len(),
        imports: p.imports.len(),
        import_slots: p.imports.iter().filter(|i| i.slot).count(),
        dependency_imports: p.imports.iter().filter(|i| i.dep.is_some()).count(),
        host_table: p.host_table.map(|(id, n, name)| (id, n, name.to_string())),
        host_table_imports: p.imports.iter().filter(|i| i.host.is_some()).count(),
        pc_relative_imports: p.imports.iter().filter(|i| i.pc32).count(),
        rebases: p.rebase.len(),
        initializers: p.init_fini.iter().map(|(_, e)| e.len()).sum(),
        image_size: p.header.image_size,
        base_align: p.header.base_align,
        file_size: file.len() as u64,
        sections: p
            .segments
            .iter()
            .map(|s| {
                let (n, pr) = prot(s.prot);
                (format!(".{n}"), s.vaddr, s.memsz, s.filesz, pr)
            })
            .collect(),
        thread_locals: image_tls(&p),
    })
}

fn image_tls(p: &Parsed<'_>) -> Option<ImageTls> {
    let t = &p.header.tls;
    (t.size > 0).then(|| ImageTls {
        size: t.size,
        align: t.align,
        initialized: t.image_size,
        slots: p.imports.iter().filter(|i| i.tls.is_some()).count(),
        static_use: match t.static_use {
            format::STATIC_TLS_FIXED => "local-exec",
            format::STATIC_TLS_ANY => "initial-exec",
            _ => "none",
        },
        static_range: (t.static_use == format::STATIC_TLS_FIXED).then_some((
            t.area_tp_offset,
            t.area_size,
            t.area_offset,
        )),
    })
}
