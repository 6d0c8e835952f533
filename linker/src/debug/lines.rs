//! Line tables of an image's relocated DWARF (read with `gimli`), for
//! jitdump's debug-info records.

use std::collections::HashMap;
use std::sync::Arc;

use gimli::{EndianSlice, LittleEndian, SectionId};

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// One row of a line table: a runtime address and its source position.
#[derive(Debug, Clone)]
pub(crate) struct LineRow {
    pub(crate) addr: u64,
    pub(crate) line: u32,
    pub(crate) file: Arc<str>,
}

/// Every row of every line program in `dwarf` (an image's relocated
/// `.debug_*` sections), by address. Rows at address 0 (code that was not
/// linked) are left out; malformed tables end the walk early.
pub(crate) fn line_rows(dwarf: &[(String, Vec<u8>)]) -> Vec<LineRow> {
    let section = |id: SectionId| -> Result<Reader<'_>, gimli::Error> {
        let data = dwarf
            .iter()
            .find(|(n, _)| n == id.name())
            .map_or(&[][..], |(_, b)| b.as_slice());
        Ok(EndianSlice::new(data, LittleEndian))
    };
    let mut rows = Vec::new();
    if let Ok(d) = gimli::Dwarf::load(section) {
        let _ = collect(&d, &mut rows);
    }
    rows.sort_by_key(|r| r.addr);
    rows
}

fn collect(d: &gimli::Dwarf<Reader<'_>>, out: &mut Vec<LineRow>) -> gimli::Result<()> {
    let mut units = d.units();
    while let Some(header) = units.next()? {
        let unit = d.unit(header)?;
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let mut files: HashMap<u64, Arc<str>> = HashMap::new();
        let mut rows = program.rows();
        while let Some((header, row)) = rows.next_row()? {
            let Some(line) = row.line() else {
                continue;
            };
            if row.end_sequence() || row.address() == 0 {
                continue;
            }
            let index = row.file_index();
            let file = match files.get(&index) {
                Some(f) => f.clone(),
                None => {
                    let name: Arc<str> = file_name(d, &unit, header, index)
                        .unwrap_or_else(|| "??".into())
                        .into();
                    files.insert(index, name.clone());
                    name
                }
            };
            out.push(LineRow {
                addr: row.address(),
                line: u32::try_from(line.get()).unwrap_or(u32::MAX),
                file,
            });
        }
    }
    Ok(())
}

/// The path of file `index` of a line program (joined with its directory).
fn file_name(
    d: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    header: &gimli::LineProgramHeader<Reader<'_>>,
    index: u64,
) -> Option<String> {
    let file = header.file(index)?;
    let name = d.attr_string(unit, file.path_name()).ok()?;
    let name = name.to_string_lossy().into_owned();
    if name.starts_with('/') {
        return Some(name);
    }
    let dir = file
        .directory(header)
        .and_then(|a| d.attr_string(unit, a).ok())
        .map(|s| s.to_string_lossy().into_owned());
    Some(match dir {
        Some(dir) if !dir.is_empty() => format!("{dir}/{name}"),
        _ => name,
    })
}
