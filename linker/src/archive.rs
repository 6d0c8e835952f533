//! Static archives (`.a`): an index from symbol name to member, and members
//! read into the graph on demand.

use std::collections::{HashMap, HashSet};

use object::read::archive::{ArchiveFile, ArchiveOffset};
use object::read::elf::{FileHeader, Sym};
use object::{LittleEndian as LE, elf};

use crate::error::LinkError;

/// An archive with its symbol index.
#[derive(Debug)]
pub struct Archive {
    name: String,
    data: Vec<u8>,
    /// Defined global name → offset of the member header.
    index: HashMap<Box<str>, u64>,
    /// Members already pulled into a graph.
    loaded: HashSet<u64>,
}

impl Archive {
    /// Parse `data` (called `name`) and index its symbols, from the archive
    /// symbol table or, when there is none, from the members' own tables.
    pub fn parse(name: &str, data: Vec<u8>) -> Result<Archive, LinkError> {
        let err = |d: &str, e| LinkError::malformed_by(name, d, e);
        let file = ArchiveFile::parse(&*data).map_err(|e| err("not an archive", e))?;
        if file.is_thin() {
            return Err(LinkError::malformed(
                name,
                "thin archives are not supported",
            ));
        }
        let mut index = HashMap::new();
        match file.symbols().map_err(|e| err("bad symbol index", e))? {
            Some(symbols) => {
                for s in symbols {
                    let s = s.map_err(|e| err("bad symbol index", e))?;
                    let n = String::from_utf8_lossy(s.name()).into_owned();
                    index.entry(n.into()).or_insert(s.offset().0);
                }
            }
            None => {
                for m in file.members() {
                    let m = m.map_err(|e| err("bad member", e))?;
                    let off = m.file_range().0.saturating_sub(60);
                    let Ok(bytes) = m.data(&*data) else { continue };
                    for n in defined_globals(bytes) {
                        index.entry(n.into()).or_insert(off);
                    }
                }
            }
        }
        Ok(Archive {
            name: name.to_string(),
            data,
            index,
            loaded: HashSet::new(),
        })
    }

    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of indexed symbols.
    pub fn symbol_count(&self) -> usize {
        self.index.len()
    }

    /// Whether `symbol` is defined by a member not yet loaded.
    pub(crate) fn defines_untaken(&self, symbol: &str) -> bool {
        self.index
            .get(symbol)
            .is_some_and(|off| !self.loaded.contains(off))
    }

    /// If `symbol` is defined by a member not yet loaded, mark it loaded and
    /// return `(member display name, bytes)`.
    pub fn take_member_for(&mut self, symbol: &str) -> Result<Option<(String, &[u8])>, LinkError> {
        let Some(&off) = self.index.get(symbol) else {
            return Ok(None);
        };
        if !self.loaded.insert(off) {
            return Ok(None);
        }
        let err = |d: String, e| LinkError::malformed_by(&self.name, d, e);
        let file = ArchiveFile::parse(&*self.data)
            .map_err(|e| err(format!("reading it again for `{symbol}`"), e))?;
        let m = file
            .member(ArchiveOffset(off))
            .map_err(|e| err(format!("member at {off:#x} for `{symbol}`"), e))?;
        let bytes = m
            .data(&*self.data)
            .map_err(|e| err(format!("member at {off:#x}"), e))?;
        let name = format!("{}({})", self.name, String::from_utf8_lossy(m.name()));
        Ok(Some((name, bytes)))
    }
}

/// Names of the defined global symbols of an ELF object (empty on any error).
fn defined_globals(data: &[u8]) -> Vec<String> {
    let Ok(h) = elf::FileHeader64::<LE>::parse(data) else {
        return Vec::new();
    };
    let Ok(sections) = h.sections(LE, data) else {
        return Vec::new();
    };
    let Ok(symtab) = sections.symbols(LE, data, elf::SHT_SYMTAB) else {
        return Vec::new();
    };
    symtab
        .iter()
        .filter(|s| s.st_bind() != elf::STB_LOCAL && !s.is_undefined(LE))
        .filter_map(|s| symtab.symbol_name(LE, s).ok())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}
