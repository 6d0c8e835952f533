//! ELF relocatable objects (x86-64, aarch64) → [`LinkGraph`].
//!
//! One block per allocated input section (like JITLink), except `.eh_frame`,
//! which is split into one block per CIE and FDE so that FDEs of dropped code
//! disappear without leaving holes. COMDAT groups whose signature was already
//! seen are skipped whole, their FDEs included. Relocations are mapped by raw
//! `r_type` through the object's ISA ([`Isa::edge`], `kiln-arch`'s tables). Every failure is an error
//! naming the object, section, offset and relocation; nothing here panics on
//! bad input.

use object::elf::{self, FileHeader64, Rela64, SectionHeader64, Sym64};
use object::read::elf::{FileHeader, SectionHeader, SectionTable, Sym};
use object::{LittleEndian as LE, SectionIndex, SymbolIndex};

use kiln_arch::{EdgeDesc, EdgeTarget};

use crate::error::LinkError;
use crate::graph::{
    Block, BlockId, Content, Edge, Edges, FdeLinks, InputBytes, LinkGraph, Linkage, ObjectId, Prot,
    Scope, SectionRole, Symbol, SymbolDef, SymbolId,
};
use crate::isa::Isa;

/// `SHT_X86_64_UNWIND`: the type gcc gives `.eh_frame` on x86-64.
const SHT_X86_64_UNWIND: u32 = 0x7000_0001;

/// Largest alignment kiln accepts (1 GiB).
const MAX_ALIGN: u64 = 1 << 30;
/// Largest zero-fill section or COMMON symbol kiln accepts (1 TiB; memory
/// allocation fails long before).
const MAX_SIZE: u64 = 1 << 40;

/// Why a relocation cannot be read.
#[derive(Debug, Clone, Copy)]
enum BadReloc {
    /// An `r_type` kiln does not know.
    Unsupported(u32),
    /// Symbol index 0.
    NoSymbol(&'static EdgeDesc),
    /// A symbol index past the table (or of a symbol that is not kept).
    BadSymbol(&'static EdgeDesc, usize),
    /// In `.eh_frame`, between records.
    OutsideRecords(&'static EdgeDesc),
    /// More than 4 GiB into its section.
    Past4GiB(&'static EdgeDesc),
    /// The place does not fit the section (of this many bytes).
    OutsideSection(&'static EdgeDesc, u64),
    /// A TLS relocation to a symbol of this object that is not
    /// thread-local, or another to one that is (`true`).
    ThreadLocal(&'static EdgeDesc, usize, bool),
}

/// The error for a bad relocation at `offset` of `section` in `object`
/// (built out of line: the reading loop runs for every relocation).
#[cold]
#[inline(never)]
fn bad_reloc(object: &str, section: &str, offset: u64, why: BadReloc) -> LinkError {
    let at = format!("section {section} offset {offset:#x}");
    let detail = match why {
        BadReloc::Unsupported(r_type) => {
            return LinkError::UnsupportedRelocation {
                object: object.to_string(),
                section: section.to_string(),
                offset,
                r_type,
                name: None,
            };
        }
        BadReloc::NoSymbol(info) => format!("{at}: {} has no symbol", info.name),
        BadReloc::BadSymbol(info, sym) => format!(
            "{at}: {} refers to symbol index {sym}, which is invalid",
            info.name
        ),
        BadReloc::OutsideRecords(info) => {
            format!("{at}: {} lies outside every .eh_frame record", info.name)
        }
        BadReloc::Past4GiB(info) => {
            format!("{at}: {} lies past 4 GiB into the section", info.name)
        }
        BadReloc::OutsideSection(info, len) => format!(
            "{at}: {} place of {} bytes lies outside the section ({len:#x} bytes)",
            info.name, info.width
        ),
        BadReloc::ThreadLocal(info, sym, true) => format!(
            "{at}: {} is not a TLS relocation, but symbol index {sym} is defined in a \
             thread-local section (its value is an offset in a TLS block, not an address)",
            info.name
        ),
        BadReloc::ThreadLocal(info, sym, false) => format!(
            "{at}: {} is a TLS relocation, but symbol index {sym} is defined in a section \
             that is not thread-local (no SHF_TLS)",
            info.name
        ),
    };
    LinkError::malformed(object, detail)
}

/// What the reader made of a symbol-table entry: its symbol, and whether it
/// is defined in a thread-local section of this object (`None`: not
/// defined here), which the relocations to it must agree with.
#[derive(Debug, Clone, Copy, Default)]
struct Mapped {
    id: Option<SymbolId>,
    thread_local: Option<bool>,
}

/// What an input section became.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Not loaded (non-allocated, note, group…).
    Skipped,
    /// Dropped as a COMDAT duplicate.
    Discarded,
    /// One block.
    Block(BlockId),
    /// `.eh_frame`: its records, found through the record table.
    EhFrame,
}

/// One `.eh_frame` record while reading.
#[derive(Debug, Clone, Copy)]
struct Record {
    offset: u64,
    len: u64,
    block: BlockId,
    is_cie: bool,
}

/// Upper bounds of what an object adds to a graph, from its headers alone
/// (a quick pass before parsing, so that the merged graph's arrays are
/// allocated once instead of grown object by object). Bounds for objects
/// a compiler wrote; a malformed one may have more blocks (its arrays then
/// grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeHint {
    /// Symbol table entries.
    pub symbols: usize,
    /// Global symbol table entries.
    pub globals: usize,
    /// Allocated sections and `.eh_frame` records.
    pub blocks: usize,
}

impl std::ops::AddAssign for SizeHint {
    fn add_assign(&mut self, o: SizeHint) {
        self.symbols += o.symbols;
        self.globals += o.globals;
        self.blocks += o.blocks;
    }
}

/// CIEs an object's `.eh_frame` is expected to have (compilers emit one or
/// two), and its terminator.
const EH_FRAME_CIES: usize = 3;

/// [`SizeHint`] of the object `data` (all zero if it does not parse: the
/// parser then reports why).
pub fn size_hint(data: &[u8]) -> SizeHint {
    let mut hint = SizeHint::default();
    let Ok(header) = FileHeader64::<LE>::parse(data) else {
        return hint;
    };
    let Ok(sections) = header.sections(LE, data) else {
        return hint;
    };
    // Bounded by the file's size (a corrupt header must not make the
    // caller reserve gigabytes): sizes come from the bytes actually there.
    for sh in sections.iter() {
        match sh.sh_type(LE) {
            elf::SHT_SYMTAB => {
                let size = sh.data(LE, data).map_or(0, <[u8]>::len);
                let n = size / std::mem::size_of::<Sym64<LE>>();
                hint.symbols += n;
                hint.globals += n.saturating_sub(sh.sh_info(LE) as usize);
            }
            // Each FDE's start is relocated, so `.eh_frame` has at most as
            // many FDEs as `.rela.eh_frame` has entries, and a few CIEs
            // (counted from the headers: walking the records' lengths read
            // every object's unwind information once more, cold).
            elf::SHT_RELA if section_name_of(&sections, sh) == ".rela.eh_frame" => {
                let size = sh.data(LE, data).map_or(0, <[u8]>::len);
                hint.blocks += size / std::mem::size_of::<elf::Rela64<LE>>() + EH_FRAME_CIES;
            }
            _ if sh.sh_flags(LE).0 & elf::SHF_ALLOC.0 != 0 => hint.blocks += 1,
            _ => {}
        }
    }
    hint
}

/// Add the ELF x86-64 relocatable object `data`, called `name`, to `graph`.
pub fn read_object(graph: &mut LinkGraph, name: &str, data: &[u8]) -> Result<ObjectId, LinkError> {
    let parsed = parse_object(name, data)?;
    Ok(graph.merge(parsed))
}

/// [`parse_object`] for an object whose bytes the graph may keep: section
/// contents are not copied but refer to `file` ([`Content::Input`]).
pub fn parse_object_shared(name: &str, file: &InputBytes) -> Result<LinkGraph, LinkError> {
    parse(name, file, Some(file))
}

/// Parse one object into a graph of its own (objects parse in parallel;
/// [`LinkGraph::merge`] then joins them in order, deciding COMDAT groups
/// and symbol resolution).
pub fn parse_object(name: &str, data: &[u8]) -> Result<LinkGraph, LinkError> {
    parse(name, data, None)
}

fn parse(name: &str, data: &[u8], file: Option<&InputBytes>) -> Result<LinkGraph, LinkError> {
    let mut graph = LinkGraph::new();
    // Blocks at their final count up front: an object's blocks (one per
    // `.eh_frame` record) would otherwise be copied at each doubling.
    graph.blocks.reserve_exact(size_hint(data).blocks);
    let obj = graph.add_object(name);
    let mut reader = Reader {
        graph: &mut graph,
        name,
        data,
        file,
        obj,
    };
    reader.read()?;
    Ok(graph)
}

struct Reader<'g, 'd> {
    graph: &'g mut LinkGraph,
    name: &'d str,
    data: &'d [u8],
    /// `data` as a shared file, when contents may refer to it.
    file: Option<&'d InputBytes>,
    obj: ObjectId,
}

fn section_name_of<'d>(
    sections: &SectionTable<'d, FileHeader64<LE>>,
    sh: &SectionHeader64<LE>,
) -> &'d str {
    sections
        .section_name(LE, sh)
        .ok()
        .and_then(|n| std::str::from_utf8(n).ok())
        .unwrap_or("<bad name>")
}

/// `bytes` as a string if they are UTF-8: symbol names are nearly always
/// ASCII, checked a word at a time here (this runs for every symbol).
#[inline]
fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// Classify an allocated section by name and flags.
fn classify(name: &str, sh_type: u32, flags: u64) -> (Prot, SectionRole) {
    let prio = |prefix: &str| -> Option<u32> {
        let rest = name.strip_prefix(prefix)?;
        if rest.is_empty() {
            return Some(65536);
        }
        rest.strip_prefix('.')?
            .parse::<u32>()
            .ok()
            .map(|p| p.min(65535))
    };
    let role = if sh_type == elf::SHT_PREINIT_ARRAY.0 || name == ".preinit_array" {
        SectionRole::PreinitArray
    } else if let Some(p) = prio(".init_array") {
        SectionRole::InitArray(p)
    } else if sh_type == elf::SHT_INIT_ARRAY.0 {
        SectionRole::InitArray(65536)
    } else if let Some(p) = prio(".fini_array") {
        SectionRole::FiniArray(p)
    } else if sh_type == elf::SHT_FINI_ARRAY.0 {
        SectionRole::FiniArray(65536)
    } else if let Some(p) = prio(".ctors") {
        SectionRole::Ctors(p)
    } else if let Some(p) = prio(".dtors") {
        SectionRole::Dtors(p)
    } else if name == ".eh_frame" {
        SectionRole::EhFrame
    } else if flags & elf::SHF_TLS.0 != 0 {
        if sh_type == elf::SHT_NOBITS.0 {
            SectionRole::TlsBss
        } else {
            SectionRole::TlsData
        }
    } else {
        SectionRole::Ordinary
    };
    // Relocated-then-read-only data (RELRO): kiln applies every relocation
    // before finalizing, so these never need to stay writable.
    let relro = name.starts_with(".data.rel.ro") || role.is_init_fini();
    let prot = if flags & elf::SHF_EXECINSTR.0 != 0 {
        Prot::ReadExec
    } else if flags & elf::SHF_WRITE.0 != 0 && !relro {
        Prot::ReadWrite
    } else {
        Prot::Read
    };
    (prot, role)
}

impl<'d> Reader<'_, 'd> {
    fn err(&self, detail: impl Into<String>) -> LinkError {
        LinkError::malformed(self.name, detail)
    }

    /// `object`'s reader found the fault `detail` names the place of.
    fn err_by(&self, detail: impl Into<String>, e: object::read::Error) -> LinkError {
        LinkError::malformed_by(self.name, detail, e)
    }

    /// A block's contents: `bytes` (a part of the object) as a range of the
    /// shared file if there is one, else copied.
    fn content(&self, bytes: &[u8]) -> Content {
        let start = (bytes.as_ptr() as usize).wrapping_sub(self.data.as_ptr() as usize);
        self.file
            .and_then(|file| Content::input(file, start, bytes.len()))
            .filter(|c| c.bytes().map(<[u8]>::as_ptr) == Some(bytes.as_ptr()))
            .unwrap_or_else(|| Content::Bytes(bytes.to_vec()))
    }

    fn read(&mut self) -> Result<(), LinkError> {
        let data = self.data;
        let header = self.header()?;
        let sections = header
            .sections(LE, data)
            .map_err(|e| self.err_by("bad section table", e))?;
        let symtab = sections
            .symbols(LE, data, elf::SHT_SYMTAB)
            .map_err(|e| self.err_by("bad symbol table", e))?;
        let mut slots = vec![Slot::Skipped; sections.len()];
        let groups = self.read_groups(&sections, &symtab, &mut slots)?;
        let eh_frame = self.read_sections(&sections, &mut slots)?;
        for (sig, members) in groups {
            let blocks = members
                .iter()
                .filter_map(|&m| match slots.get(m) {
                    Some(Slot::Block(b)) => Some(*b),
                    _ => None,
                })
                .collect();
            self.graph.groups.push((sig.into(), blocks));
        }
        let symbol_map = self.read_symbols(&sections, &symtab, &slots, eh_frame.as_ref())?;
        let records = eh_frame.as_ref().map_or(&[][..], |(_, r)| r.as_slice());
        for sh in sections.iter() {
            self.read_relocation_section(&sections, &symtab, sh, &slots, records, &symbol_map)?;
        }
        if let Some((_, records)) = eh_frame {
            self.link_fdes(&records)?;
        }
        Ok(())
    }

    /// The file's ELF header, checked to be a relocatable object of an ISA
    /// kiln links (the graph takes that ISA).
    fn header(&mut self) -> Result<&'d FileHeader64<LE>, LinkError> {
        let header = FileHeader64::<LE>::parse(self.data)
            .map_err(|e| self.err_by("not an ELF64 little-endian file", e))?;
        let Some(isa) = Isa::from_machine(header.e_machine(LE).0) else {
            return Err(self.err(format!(
                "not an x86-64 or aarch64 object (e_machine {})",
                header.e_machine(LE).0
            )));
        };
        self.graph.set_isa(isa);
        if header.e_type(LE) != elf::ET_REL {
            return Err(self.err(format!(
                "not a relocatable object (e_type {}); kiln links .o files and .a archives",
                header.e_type(LE).0
            )));
        }
        Ok(header)
    }

    /// COMDAT groups, each signature with its member sections: the first
    /// object to bring a signature keeps it. (Parsed alone, an object keeps
    /// all of its groups; [`LinkGraph::merge`] drops the ones an earlier
    /// object brought; members of a group already taken here are marked
    /// [`Slot::Discarded`].)
    fn read_groups(
        &mut self,
        sections: &SectionTable<'_, FileHeader64<LE>>,
        symtab: &object::read::elf::SymbolTable<'_, FileHeader64<LE>>,
        slots: &mut [Slot],
    ) -> Result<Vec<(String, Vec<usize>)>, LinkError> {
        let data = self.data;
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (index, sh) in sections.enumerate() {
            let Some((flags, members)) = sh
                .group(LE, data)
                .map_err(|e| self.err_by(format!("section {}", index.0), e))?
            else {
                continue;
            };
            if !flags.contains(elf::GRP_COMDAT) {
                continue;
            }
            let sig = symtab
                .symbol(SymbolIndex(sh.sh_info(LE) as usize))
                .and_then(|s| symtab.symbol_name(LE, s))
                .map_err(|e| {
                    self.err_by(
                        format!(
                            "group section {}: bad signature symbol",
                            section_name_of(sections, sh)
                        ),
                        e,
                    )
                })?;
            let sig = String::from_utf8_lossy(sig).into_owned();
            groups.push((
                sig.clone(),
                members
                    .iter()
                    .map(|m| m.get(LE) as usize)
                    .collect::<Vec<_>>(),
            ));
            if self.graph.comdats.contains_key(sig.as_str()) {
                for m in members {
                    let m = m.get(LE) as usize;
                    if let Some(slot) = slots.get_mut(m) {
                        *slot = Slot::Discarded;
                    }
                }
            } else {
                self.graph.comdats.insert(sig.into(), self.obj);
            }
        }
        Ok(groups)
    }

    /// Sections → blocks: one block per loadable section, one per
    /// `.eh_frame` record (returned with the section's index); `slots`
    /// says what became of each section.
    fn read_sections(
        &mut self,
        sections: &SectionTable<'_, FileHeader64<LE>>,
        slots: &mut [Slot],
    ) -> Result<Option<(usize, Vec<Record>)>, LinkError> {
        let data = self.data;
        let mut eh_frame: Option<(usize, Vec<Record>)> = None;
        for (index, sh) in sections.enumerate() {
            let i = index.0;
            if matches!(slots[i], Slot::Discarded) {
                continue;
            }
            let flags = sh.sh_flags(LE).0;
            let sh_type = sh.sh_type(LE).0;
            if sh_type == elf::SHT_NOTE.0 {
                let bits = crate::image_file::cpu::of_note_section(sh, data);
                self.graph.objects[self.obj.index()].cpu_features |= bits;
                continue;
            }
            if flags & elf::SHF_ALLOC.0 == 0 {
                continue;
            }
            let name = section_name_of(sections, sh);
            let loadable = matches!(
                sh.sh_type(LE),
                elf::SHT_PROGBITS
                    | elf::SHT_NOBITS
                    | elf::SHT_INIT_ARRAY
                    | elf::SHT_FINI_ARRAY
                    | elf::SHT_PREINIT_ARRAY
            ) || sh_type == SHT_X86_64_UNWIND;
            if !loadable {
                continue;
            }
            let (prot, role) = classify(name, sh_type, flags);
            if role == SectionRole::EhFrame {
                // Split straight from the input: each record is copied once.
                let Some(bytes) = self.section_bytes(sh, name)?.1 else {
                    return Err(self.err("section .eh_frame has no contents"));
                };
                let records = self.split_eh_frame(name, bytes)?;
                eh_frame = Some((i, records));
                slots[i] = Slot::EhFrame;
                continue;
            }
            let (align, bytes) = self.section_bytes(sh, name)?;
            let content = match bytes {
                Some(bytes) => self.content(bytes),
                None => Content::Zero(sh.sh_size(LE)),
            };
            let section = self.graph.section(name, prot, role);
            let block = self.graph.add_block(Block {
                section,
                object: Some(self.obj),
                input_section: name.into(),
                input_offset: 0,
                content,
                align,
                edges: Edges::new(),
                fde: None,
                live: true,
                addr: 0,
            });
            slots[i] = Slot::Block(block);
        }
        Ok(eh_frame)
    }

    /// A loadable section's alignment and bytes (`None` for `SHT_NOBITS`),
    /// both checked: a power-of-two alignment up to [`MAX_ALIGN`], a
    /// zero-fill size up to [`MAX_SIZE`], bytes inside the file.
    fn section_bytes(
        &self,
        sh: &'d SectionHeader64<LE>,
        name: &str,
    ) -> Result<(u64, Option<&'d [u8]>), LinkError> {
        let align = sh.sh_addralign(LE).max(1);
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(self.err(format!(
                "section {name}: alignment {align} is not a power of two up to {MAX_ALIGN}"
            )));
        }
        if sh.sh_type(LE) == elf::SHT_NOBITS {
            let size = sh.sh_size(LE);
            if size > MAX_SIZE {
                return Err(self.err(format!("section {name}: size {size:#x} is too large")));
            }
            return Ok((align, None));
        }
        let bytes = sh
            .data(LE, self.data)
            .map_err(|e| self.err_by(format!("section {name}"), e))?;
        Ok((align, Some(bytes)))
    }

    /// Every symbol of the symbol table, by index (`None` for index 0 and
    /// symbols that need no graph symbol).
    fn read_symbols(
        &mut self,
        sections: &SectionTable<'_, FileHeader64<LE>>,
        symtab: &object::read::elf::SymbolTable<'_, FileHeader64<LE>>,
        slots: &[Slot],
        eh_frame: Option<&(usize, Vec<Record>)>,
    ) -> Result<Vec<Mapped>, LinkError> {
        let syms = symtab.symbols();
        self.graph.symbols.reserve(syms.len());
        self.graph.unmerged_globals.reserve(syms.len());
        self.graph.name_arena.reserve(syms.len() * 16);
        let mut symbol_map = vec![Mapped::default(); syms.len()];
        for (index, sym) in symtab.enumerate().skip(1) {
            let id = self.read_symbol(sections, symtab, slots, eh_frame, index, sym)?;
            symbol_map[index.0] = Mapped {
                id,
                thread_local: match id {
                    Some(id) => self.defined_thread_local(id, || {
                        let name = symtab.symbol_name(LE, sym).ok();
                        name.and_then(utf8).unwrap_or("?").to_string()
                    })?,
                    None => None,
                },
            };
        }
        Ok(symbol_map)
    }

    /// The edges of relocation section `sh` (nothing for other sections,
    /// or relocations of a section that was not loaded).
    fn read_relocation_section(
        &mut self,
        sections: &SectionTable<'_, FileHeader64<LE>>,
        symtab: &object::read::elf::SymbolTable<'_, FileHeader64<LE>>,
        sh: &'d SectionHeader64<LE>,
        slots: &[Slot],
        records: &[Record],
        symbol_map: &[Mapped],
    ) -> Result<(), LinkError> {
        if sh.sh_type(LE) == elf::SHT_REL {
            return Err(self.err(format!(
                "section {}: SHT_REL relocations are not used on x86-64; expected SHT_RELA",
                section_name_of(sections, sh)
            )));
        }
        let Some((relas, _)) = sh
            .rela(LE, self.data)
            .map_err(|e| self.err_by(format!("section {}", section_name_of(sections, sh)), e))?
        else {
            return Ok(());
        };
        if sh.sh_link(LE) as usize != symtab.section().0 {
            return Err(self.err(format!(
                "relocation section {} does not use the symbol table",
                section_name_of(sections, sh)
            )));
        }
        let target = sh.sh_info(LE) as usize;
        let Some(slot) = slots.get(target).copied() else {
            return Err(self.err(format!(
                "relocation section {} applies to section {target}, which does not exist",
                section_name_of(sections, sh)
            )));
        };
        let tsh = sections
            .section(SectionIndex(target))
            .map_err(|e| self.err_by(format!("section {target}"), e))?;
        let tname = section_name_of(sections, tsh);
        match slot {
            Slot::Skipped | Slot::Discarded => Ok(()),
            Slot::Block(block) => {
                self.read_relocs(tname, relas, symbol_map, &[(0, u64::MAX, block)])
            }
            Slot::EhFrame => {
                let ranges: Vec<_> = records
                    .iter()
                    .map(|r| (r.offset, r.offset + r.len, r.block))
                    .collect();
                self.read_relocs(tname, relas, symbol_map, &ranges)
            }
        }
    }

    /// Split `.eh_frame` into CIE and FDE blocks (zero terminators dropped).
    fn split_eh_frame(&mut self, name: &str, bytes: &[u8]) -> Result<Vec<Record>, LinkError> {
        let section = self
            .graph
            .section(".eh_frame", Prot::Read, SectionRole::EhFrame);
        let input_section: std::sync::Arc<str> = name.into();
        let mut records = Vec::new();
        let mut off = 0usize;
        while off < bytes.len() {
            let word = |at: usize| -> Option<u32> {
                bytes
                    .get(at..at.checked_add(4)?)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            let Some(len) = word(off) else {
                return Err(self.err(format!(
                    "section {name} offset {off:#x}: truncated record length"
                )));
            };
            if len == 0 {
                // A terminator (or padding): skip it.
                off += 4;
                continue;
            }
            if len == u32::MAX {
                return Err(self.err(format!(
                    "section {name} offset {off:#x}: 64-bit DWARF .eh_frame records are not supported"
                )));
            }
            // The CIE id (or an FDE's CIE pointer) is the record's first
            // word; records are laid out back to back at 4-byte alignment,
            // so a length that is not a multiple of 4 would leave a hole
            // (read by the unwinder as the end of the section).
            if len < 4 {
                return Err(self.err(format!(
                    "section {name} offset {off:#x}: record of {len} bytes is shorter than its 4-byte CIE id"
                )));
            }
            if len % 4 != 0 {
                return Err(self.err(format!(
                    "section {name} offset {off:#x}: record length {len} is not a multiple of 4"
                )));
            }
            let total = 4 + len as usize;
            let end = off.checked_add(total).filter(|&e| e <= bytes.len());
            let (Some(end), Some(id)) = (end, word(off + 4)) else {
                return Err(self.err(format!(
                    "section {name} offset {off:#x}: record of {len} bytes runs past the end"
                )));
            };
            let is_cie = id == 0;
            let block = self.graph.add_block(Block {
                section,
                object: Some(self.obj),
                input_section: input_section.clone(),
                input_offset: off as u64,
                content: self.content(&bytes[off..end]),
                // Records follow one another with no gap across objects:
                // padding would be a zero length word, which the unwinder
                // reads as the end of the section. Their fields are 4-byte.
                align: 4,
                edges: Edges::new(),
                fde: None,
                live: true,
                addr: 0,
            });
            records.push(Record {
                offset: off as u64,
                len: total as u64,
                block,
                is_cie,
            });
            off = end;
        }
        Ok(records)
    }

    /// Attach each FDE to its CIE and to the block it describes.
    fn link_fdes(&mut self, records: &[Record]) -> Result<(), LinkError> {
        for r in records.iter().filter(|r| !r.is_cie) {
            let block = &self.graph.blocks[r.block.index()];
            let Some(bytes) = block.content.bytes() else {
                continue;
            };
            // `split_eh_frame` keeps only records of at least 8 bytes.
            let Some(&[b0, b1, b2, b3]) = bytes.get(4..8) else {
                return Err(self.err(format!(
                    "section .eh_frame offset {:#x}: FDE of {} bytes has no CIE pointer",
                    r.offset,
                    bytes.len()
                )));
            };
            let ptr = u32::from_le_bytes([b0, b1, b2, b3]) as u64;
            let cie_off = (r.offset + 4).checked_sub(ptr);
            let cie = records
                .iter()
                .find(|c| c.is_cie && Some(c.offset) == cie_off)
                .map(|c| c.block);
            let Some(cie) = cie else {
                return Err(self.err(format!(
                    "section .eh_frame offset {:#x}: FDE's CIE pointer {ptr:#x} does not point at a CIE",
                    r.offset
                )));
            };
            // The PC-begin field is at offset 8 of the FDE.
            let described = block
                .edges
                .iter()
                .find(|e| e.offset == 8)
                .map(|e| self.graph.symbols[e.target.index()].def);
            let function = match described {
                Some(SymbolDef::Defined { block, .. }) => Some(block),
                _ => None,
            };
            let block = &mut self.graph.blocks[r.block.index()];
            // Describes code that was dropped (COMDAT): drop it now.
            if described == Some(SymbolDef::Discarded) {
                block.live = false;
                block.edges.clear();
            }
            block.fde = Some(FdeLinks { cie, function });
        }
        Ok(())
    }

    fn read_symbol(
        &mut self,
        sections: &SectionTable<'_, FileHeader64<LE>>,
        symtab: &object::read::elf::SymbolTable<'_, FileHeader64<LE>>,
        slots: &[Slot],
        eh_frame: Option<&(usize, Vec<Record>)>,
        index: SymbolIndex,
        sym: &Sym64<LE>,
    ) -> Result<Option<SymbolId>, LinkError> {
        let st_type = sym.st_type();
        if st_type == elf::STT_FILE {
            return Ok(None);
        }
        let name = symtab
            .symbol_name(LE, sym)
            .map_err(|e| self.err_by(format!("symbol {}", index.0), e))?;
        let name =
            utf8(name).ok_or_else(|| self.err(format!("symbol {}: name is not UTF-8", index.0)))?;
        let bind = sym.st_bind();
        let local = bind == elf::STB_LOCAL;
        // STB_GNU_UNIQUE (inline variables, template statics) may be defined
        // by every object that uses it, like a weak symbol.
        let linkage = if bind == elf::STB_WEAK || bind == elf::STB_GNU_UNIQUE {
            Linkage::Weak
        } else {
            Linkage::Strong
        };
        let scope = if local {
            Scope::Local
        } else if matches!(sym.st_visibility(), elf::STV_HIDDEN | elf::STV_INTERNAL) {
            Scope::Hidden
        } else {
            Scope::Default
        };
        let shndx = sym.st_shndx(LE);
        if shndx == elf::SHN_UNDEF {
            if local || name.is_empty() {
                return Ok(None);
            }
            return Ok(Some(self.global_ref(
                name,
                bind == elf::STB_WEAK,
                st_type == elf::STT_TLS,
            )));
        }
        let value = sym.st_value(LE);
        let size = sym.st_size(LE);
        let mut symbol = Symbol {
            // A global's name is kept once, in the object's name arena
            // (below), not also boxed here.
            name: (local && !name.is_empty() && st_type != elf::STT_SECTION).then(|| name.into()),
            def: SymbolDef::External,
            object: Some(self.obj),
            size,
            scope,
            linkage,
            callable: st_type == elf::STT_FUNC || st_type == elf::STT_GNU_IFUNC,
            tls: st_type == elf::STT_TLS,
            weak_ref: true,
        };
        if st_type == elf::STT_GNU_IFUNC {
            return Err(self.err(format!(
                "symbol `{name}`: STT_GNU_IFUNC symbols are not supported"
            )));
        }
        if shndx == elf::SHN_ABS {
            symbol.def = SymbolDef::Absolute(value);
        } else if shndx == elf::SHN_COMMON {
            let align = value.max(1);
            if !align.is_power_of_two() || align > MAX_ALIGN || size > MAX_SIZE {
                return Err(self.err(format!(
                    "COMMON symbol `{name}`: alignment {align} or size {size:#x} out of range"
                )));
            }
            symbol.def = SymbolDef::Common { size, align };
            symbol.linkage = Linkage::Weak;
        } else {
            let def =
                self.section_symbol_def(sections, symtab, slots, eh_frame, (index, sym), name)?;
            symbol.def = match def {
                Some(def) => def,
                // In a COMDAT group this object dropped: the kept copy (from
                // the first object with the group) defines it; refer to that.
                None if !local && !name.is_empty() => {
                    return Ok(Some(self.global_ref(name, false, symbol.tls)));
                }
                None => SymbolDef::Discarded,
            };
        }
        if local || name.is_empty() {
            return Ok(Some(self.graph.add_symbol(symbol)));
        }
        self.check_tls_agrees(&symbol, name)?;
        // Named at merge time, from the object's name arena.
        let id = self.graph.add_symbol(symbol);
        self.graph.push_unmerged_global(id, name);
        Ok(Some(id))
    }

    /// Whether symbol `id` is defined in a thread-local section (`None`:
    /// not defined in a block of this object); an error if it is and does
    /// not lie within the section (what lies past it is not this object's:
    /// another's variables, in an image of several).
    fn defined_thread_local(
        &self,
        id: SymbolId,
        name: impl FnOnce() -> String,
    ) -> Result<Option<bool>, LinkError> {
        let symbol = &self.graph.symbols[id.index()];
        let SymbolDef::Defined { block, offset } = symbol.def else {
            return Ok(None);
        };
        let tls = self.in_tls_section(block);
        let block = &self.graph.blocks[block.index()];
        let len = block.content.len();
        if tls && offset.checked_add(symbol.size).is_none_or(|end| end > len) {
            return Err(self.err(format!(
                "thread-local `{}` ({} bytes at {offset:#x}) lies outside its section {} \
                 ({len:#x} bytes)",
                name(),
                symbol.size,
                block.input_section
            )));
        }
        Ok(Some(tls))
    }

    /// Whether `block` is thread-local data (`.tdata`, `.tbss`).
    fn in_tls_section(&self, block: BlockId) -> bool {
        let section = self.graph.blocks[block.index()].section;
        let role = self.graph.sections[section.index()].role;
        matches!(role, SectionRole::TlsData | SectionRole::TlsBss)
    }

    /// A global defined in a thread-local section is `STT_TLS`, and one of
    /// type `STT_TLS` is defined in such a section: its address is a TLS
    /// offset exactly when it is thread-local, for the image's own
    /// references and the engine's alike (assemblers type every symbol of
    /// a TLS section so).
    fn check_tls_agrees(&self, symbol: &Symbol, name: &str) -> Result<(), LinkError> {
        let SymbolDef::Defined { block, .. } = symbol.def else {
            return Ok(());
        };
        if self.in_tls_section(block) == symbol.tls {
            return Ok(());
        }
        let block = &self.graph.blocks[block.index()];
        let (what, section) = if symbol.tls {
            ("thread-local", "a section that is not (no SHF_TLS)")
        } else {
            ("not thread-local (not STT_TLS)", "a thread-local section")
        };
        Err(self.err(format!(
            "symbol `{name}` is {what} but defined in {section}: {}",
            block.input_section
        )))
    }

    /// What symbol `sym` (`index`, called `name`), defined in a section,
    /// stands for: a place in a block, or [`SymbolDef::Discarded`] with its
    /// section; `None` if that section was dropped as a COMDAT duplicate.
    fn section_symbol_def(
        &self,
        sections: &SectionTable<'_, FileHeader64<LE>>,
        symtab: &object::read::elf::SymbolTable<'_, FileHeader64<LE>>,
        slots: &[Slot],
        eh_frame: Option<&(usize, Vec<Record>)>,
        (index, sym): (SymbolIndex, &Sym64<LE>),
        name: &str,
    ) -> Result<Option<SymbolDef>, LinkError> {
        let value = sym.st_value(LE);
        let sec = symtab
            .symbol_section(LE, sym, index)
            .map_err(|e| self.err_by(format!("symbol `{name}`"), e))?;
        let Some(sec) = sec else {
            return Err(self.err(format!(
                "symbol `{name}`: unsupported special section index {:#x}",
                sym.st_shndx(LE).0
            )));
        };
        let Some(slot) = slots.get(sec.0).copied() else {
            return Err(self.err(format!(
                "symbol `{name}`: section index {} is out of range",
                sec.0
            )));
        };
        Ok(Some(match slot {
            Slot::Discarded => return Ok(None),
            Slot::Skipped => SymbolDef::Discarded,
            Slot::Block(block) => {
                let len = self.graph.blocks[block.index()].content.len();
                if value > len {
                    let sh = sections.section(sec).map_err(|e| {
                        self.err_by(format!("symbol `{name}`: section {}", sec.0), e)
                    })?;
                    return Err(self.err(format!(
                        "symbol `{name}`: value {value:#x} lies past the end of section {} ({len:#x} bytes)",
                        section_name_of(sections, sh)
                    )));
                }
                SymbolDef::Defined {
                    block,
                    offset: value,
                }
            }
            Slot::EhFrame => {
                let records = eh_frame.map(|(_, r)| r.as_slice()).unwrap_or(&[]);
                match records
                    .iter()
                    .find(|r| value >= r.offset && value < r.offset + r.len)
                {
                    Some(r) => SymbolDef::Defined {
                        block: r.block,
                        offset: value - r.offset,
                    },
                    None => SymbolDef::Discarded,
                }
            }
        }))
    }

    /// A reference to global `name`, resolved by name when the object's
    /// graph is merged ([`LinkGraph::merge`]).
    fn global_ref(&mut self, name: &str, weak: bool, tls: bool) -> SymbolId {
        let id = self.graph.add_symbol(Symbol {
            tls,
            weak_ref: weak,
            ..Symbol::reference(None, self.obj)
        });
        self.graph.push_unmerged_global(id, name);
        id
    }

    /// [`Reader::read_relocs`] for a section that is one block, `block`.
    fn read_block_relocs(
        &mut self,
        section: &str,
        relas: &[Rela64<LE>],
        decode: &mut Decoder<'_>,
        block: BlockId,
    ) -> Result<(), LinkError> {
        let object = self.name;
        let b = &mut self.graph.blocks[block.index()];
        let len = b.content.len();
        let zero = matches!(b.content, Content::Zero(_));
        // Pushed to a `Vec` (a `SmallVec` checks where its items live at
        // every push: 7.8 M instructions on synth), the block's edges after.
        let mut edges = std::mem::take(&mut b.edges).into_vec();
        edges.reserve_exact(relas.len());
        // Whether the edges come sorted (they usually do), checked as
        // they are read instead of in a second pass.
        let (mut sorted, mut last) = (edges.is_empty(), 0u32);
        for rela in relas {
            let offset = rela.r_offset.get(LE);
            let fail = |why: BadReloc| bad_reloc(object, section, offset, why);
            let Some((info, target)) = decode.edge(rela).map_err(fail)? else {
                continue;
            };
            if offset == u64::MAX {
                return Err(fail(BadReloc::OutsideRecords(info)));
            }
            let Ok(rel_off) = u32::try_from(offset) else {
                return Err(fail(BadReloc::Past4GiB(info)));
            };
            if zero || u64::from(rel_off) + u64::from(info.width) > len {
                return Err(fail(BadReloc::OutsideSection(info, len)));
            }
            sorted &= rel_off >= last;
            last = rel_off;
            edges.push(Edge::new(rel_off, info, target, rela.r_addend.get(LE)));
        }
        if !sorted {
            crate::graph::sort_edges(&mut edges);
        }
        self.graph.blocks[block.index()].edges = Edges::from_vec(edges);
        Ok(())
    }

    /// Read the relocations of one section. `ranges` maps section offsets to
    /// blocks: `(start, end, block)`, sorted.
    fn read_relocs(
        &mut self,
        section: &str,
        relas: &[Rela64<LE>],
        symbol_map: &[Mapped],
        ranges: &[(u64, u64, BlockId)],
    ) -> Result<(), LinkError> {
        // Edges go straight into their blocks: on an error the whole
        // object's graph is dropped (see `parse_object`).
        let object = self.name;
        let mut decode = Decoder::new(self.graph.isa(), symbol_map);
        if let [(0, u64::MAX, block)] = *ranges {
            // One block (every section but `.eh_frame`): no range lookup.
            return self.read_block_relocs(section, relas, &mut decode, block);
        }
        let blocks = &mut self.graph.blocks;
        // Per range: start, end, block, size, zero-fill (looked up once, not
        // per relocation: this loop runs for every relocation of the link).
        let targets: Vec<(u64, u64, BlockId, u64, bool)> = ranges
            .iter()
            .map(|&(start, end, block)| {
                let content = &blocks[block.index()].content;
                let zero = matches!(content, Content::Zero(_));
                (start, end, block, content.len(), zero)
            })
            .collect();
        // The range holding `offset` (ranges are sorted and disjoint).
        let range_of = |offset: u64| targets.partition_point(|t| t.1 <= offset);
        let hit = |i: usize, offset: u64| {
            targets
                .get(i)
                .filter(|t| offset >= t.0 && offset < t.1)
                .is_some()
        };
        // Relocations usually come sorted by offset: try the range of the
        // previous one (or the next) first.
        let mut cursor = 0usize;
        let mut find = |offset: u64| {
            if !hit(cursor, offset) {
                cursor = if hit(cursor + 1, offset) {
                    cursor + 1
                } else {
                    range_of(offset)
                };
            }
            cursor
        };
        // Exact capacities: `.eh_frame` has one small block per record.
        let mut counts = vec![0u32; ranges.len()];
        for rela in relas {
            if let Some(c) = counts.get_mut(find(rela.r_offset.get(LE))) {
                *c += 1;
            }
        }
        for (&(_, _, block), &n) in ranges.iter().zip(&counts) {
            blocks[block.index()].edges.reserve_exact(n as usize);
        }
        for rela in relas {
            let offset = rela.r_offset.get(LE);
            let fail = |why: BadReloc| bad_reloc(object, section, offset, why);
            let Some((info, target)) = decode.edge(rela).map_err(fail)? else {
                continue;
            };
            let i = find(offset);
            let Some(&(start, _, block, len, zero)) = targets.get(i).filter(|_| hit(i, offset))
            else {
                return Err(fail(BadReloc::OutsideRecords(info)));
            };
            let Ok(rel_off) = u32::try_from(offset - start) else {
                return Err(fail(BadReloc::Past4GiB(info)));
            };
            if zero || u64::from(rel_off) + u64::from(info.width) > len {
                return Err(fail(BadReloc::OutsideSection(info, len)));
            }
            blocks[block.index()].edges.push(Edge::new(
                rel_off,
                info,
                target,
                rela.r_addend.get(LE),
            ));
        }
        for &(_, _, block) in ranges {
            crate::graph::sort_edges(&mut blocks[block.index()].edges);
        }
        Ok(())
    }
}

/// Decodes relocations' type and symbol (the per-relocation part of
/// [`Reader::read_relocs`] that does not depend on the section).
struct Decoder<'m> {
    isa: Isa,
    symbol_map: &'m [Mapped],
    /// The last `r_type` decoded and its edge (relocations of a section
    /// mostly repeat a few types).
    last: Option<(u32, Option<&'static EdgeDesc>)>,
}

impl<'m> Decoder<'m> {
    fn new(isa: Isa, symbol_map: &'m [Mapped]) -> Self {
        Decoder {
            isa,
            symbol_map,
            last: None,
        }
    }

    /// The edge kind and target symbol of `rela`, `None` for a relocation
    /// that makes no edge (`R_*_NONE`), or why it cannot be read.
    #[inline(always)]
    fn edge(
        &mut self,
        rela: &Rela64<LE>,
    ) -> Result<Option<(&'static EdgeDesc, SymbolId)>, BadReloc> {
        let r_info = rela.r_info.get(LE);
        let r_type = r_info as u32;
        let info = match self.last {
            Some((t, info)) if t == r_type => info,
            _ => {
                let info = self.isa.edge(r_type);
                self.last = Some((r_type, info));
                info
            }
        };
        let Some(info) = info else {
            return Err(BadReloc::Unsupported(r_type));
        };
        if info.target == EdgeTarget::None {
            return Ok(None);
        }
        let sym = (r_info >> 32) as usize;
        match self.symbol_map.get(sym) {
            Some(&Mapped {
                id: Some(t),
                thread_local,
            }) => match thread_local {
                // A thread-local's value is an offset in its module's
                // block, not an address: only TLS relocations (and the
                // size) may use it, and they only a thread-local's.
                Some(tls) if tls != info.target.is_tls() && info.target != EdgeTarget::Size => {
                    Err(BadReloc::ThreadLocal(info, sym, tls))
                }
                _ => Ok(Some((info, t))),
            },
            Some(Mapped { id: None, .. }) if sym == 0 => Err(BadReloc::NoSymbol(info)),
            _ => Err(BadReloc::BadSymbol(info, sym)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_init_sections() {
        let w = elf::SHF_WRITE.0 | elf::SHF_ALLOC.0;
        assert_eq!(
            classify(".init_array.00101", elf::SHT_INIT_ARRAY.0, w).1,
            SectionRole::InitArray(101)
        );
        assert_eq!(
            classify(".init_array.101", elf::SHT_INIT_ARRAY.0, w).1,
            SectionRole::InitArray(101)
        );
        assert_eq!(
            classify(".init_array", elf::SHT_INIT_ARRAY.0, w).1,
            SectionRole::InitArray(65536)
        );
        assert_eq!(
            classify(".ctors.65434", elf::SHT_PROGBITS.0, w).1,
            SectionRole::Ctors(65434)
        );
        assert_eq!(
            classify(".text", elf::SHT_PROGBITS.0, elf::SHF_EXECINSTR.0).0,
            Prot::ReadExec
        );
        assert_eq!(
            classify(".tbss", elf::SHT_NOBITS.0, elf::SHF_TLS.0 | w).1,
            SectionRole::TlsBss
        );
    }

    #[test]
    fn arch_table_matches_object_constants() {
        use kiln_arch::x86_64::reloc::reloc_info as info;
        let fast = |r: u32| Isa::X86_64.edge(r).map(|e| (e.r_type, e.name));
        let named = [
            (elf::R_X86_64_64, "R_X86_64_64"),
            (elf::R_X86_64_PC32, "R_X86_64_PC32"),
            (elf::R_X86_64_PLT32, "R_X86_64_PLT32"),
            (elf::R_X86_64_GOTPCREL, "R_X86_64_GOTPCREL"),
            (elf::R_X86_64_32, "R_X86_64_32"),
            (elf::R_X86_64_32S, "R_X86_64_32S"),
            (elf::R_X86_64_TLSGD, "R_X86_64_TLSGD"),
            (elf::R_X86_64_TLSLD, "R_X86_64_TLSLD"),
            (elf::R_X86_64_DTPOFF32, "R_X86_64_DTPOFF32"),
            (elf::R_X86_64_DTPOFF64, "R_X86_64_DTPOFF64"),
            (elf::R_X86_64_GOTTPOFF, "R_X86_64_GOTTPOFF"),
            (elf::R_X86_64_TPOFF32, "R_X86_64_TPOFF32"),
            (elf::R_X86_64_TPOFF64, "R_X86_64_TPOFF64"),
            (elf::R_X86_64_PC64, "R_X86_64_PC64"),
            (elf::R_X86_64_GOTOFF64, "R_X86_64_GOTOFF64"),
            (elf::R_X86_64_GOTPC32, "R_X86_64_GOTPC32"),
            (elf::R_X86_64_GOTPC64, "R_X86_64_GOTPC64"),
            (elf::R_X86_64_SIZE32, "R_X86_64_SIZE32"),
            (elf::R_X86_64_SIZE64, "R_X86_64_SIZE64"),
            (elf::R_X86_64_GOTPC32_TLSDESC, "R_X86_64_GOTPC32_TLSDESC"),
            (elf::R_X86_64_TLSDESC_CALL, "R_X86_64_TLSDESC_CALL"),
            (elf::R_X86_64_GOTPCRELX, "R_X86_64_GOTPCRELX"),
            (elf::R_X86_64_REX_GOTPCRELX, "R_X86_64_REX_GOTPCRELX"),
        ];
        for (r, name) in named {
            assert_eq!(info(r.0).map(|i| i.name), Some(name));
            assert_eq!(fast(r.0), info(r.0).map(|i| (i.r_type, i.name)), "{name}");
        }
        for r in 0..1000 {
            assert_eq!(fast(r), info(r).map(|i| (i.r_type, i.name)), "r_type {r}");
            let a64 = kiln_arch::aarch64::reloc::lookup(r).map(|i| (i.r_type, i.name));
            assert_eq!(Isa::Aarch64.edge(r).map(|e| (e.r_type, e.name)), a64);
        }
        assert!(info(elf::R_X86_64_COPY.0).is_none());
        assert!(info(elf::R_X86_64_IRELATIVE.0).is_none());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut g = LinkGraph::new();
        assert!(read_object(&mut g, "x.o", b"not an elf").is_err());
        assert!(read_object(&mut g, "x.o", &[]).is_err());
        let file: InputBytes = std::sync::Arc::new(b"not an elf".to_vec().into());
        assert!(parse_object_shared("x.o", &file).is_err());
        assert_eq!(size_hint(b"not an elf"), SizeHint::default());
    }
}
