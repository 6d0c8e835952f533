//! Saving the images of many links as one image file: the code a host
//! linked into one dylib in separate links (a globals object first, then
//! each function object on its own, as a JIT links them) — or only the
//! code one resource tracker owns — saved by
//! [`ObjectLayer::save_image`] and [`ObjectLayer::save_tracker_image`].
//!
//! Each link (a *piece*) is one block of memory whose inside cannot move:
//! its code reaches its own data PC-relatively. The pieces are laid side by
//! side, in link order, each at a page-aligned offset, with their segments,
//! rebases, imports, exports and initializers shifted there. What a piece
//! bound to another piece's address — through the dylib, at link time —
//! becomes a rebase of the image (the word holds the target's offset in
//! the image); what it bound elsewhere stays an import (by name, by host
//! table index, or by another image's build id and offset), as in an image
//! of one link. The pieces' `.eh_frame` sections are copied, one after the
//! other, into one read-only segment at the end (their PC-relative
//! pointers adjusted), since the unwinder takes one section per image.

use std::collections::HashSet;

use kiln_engine::{Dylib, ResourceTracker};

use super::classify::{self, Import};
use super::format::PAGE;
use super::{BuildId, ImageError, ImagingRecord};
use crate::graph::Prot;
use crate::layer::ObjectLayer;

/// One link's image, as saved with the others.
pub(crate) struct Piece {
    /// The image's name (its first input).
    pub(crate) name: String,
    /// The dylib it was linked into.
    pub(crate) dylib: String,
    /// Its memory's first byte in this process.
    pub(crate) base: u64,
    /// What saving it needs (`None`: not linked in imaging mode).
    pub(crate) record: Option<ImagingRecord>,
    /// Files the link in the image registry as a piece of the saved image
    /// (held with the link, dropped when it is).
    pub(crate) register: Box<dyn Fn(super::registry::Registration) + Send + Sync>,
}

impl ObjectLayer {
    /// Saves the code this layer linked into `dylib` — in one link or in
    /// many (each object added with [`ObjectLayer::add_object`] is linked
    /// on its own) — as one image file (its bytes), with `build_id` (for
    /// example [`BuildId::of_inputs`] of every object, in the order added)
    /// combined with the layout of the links and the build ids of the
    /// images it links against ([`BuildId::with_dependencies`]).
    ///
    /// The links are laid side by side in the order their objects were
    /// added. A reference one of them bound to another's address becomes a
    /// rebase of the image; references to the host, to other dylibs and to
    /// images loaded from files stay imports (by name, host table index or
    /// build id and offset), as for [`crate::LinkedImage::save_image`].
    /// Image files added to `dylib` are not saved again: the image links
    /// against them by build id. Only links finished when it is called are
    /// saved (look up what should be in the image first: a link still
    /// running is left out, and references to it are saved by name).
    ///
    /// Fails with [`ImageError::NotImaging`] unless the layer links in
    /// imaging mode ([`ObjectLayer::with_options`] with
    /// [`crate::LinkOptions::imaging`]), and with [`ImageError::Empty`] when
    /// nothing was linked into `dylib`. The saved image joins the
    /// [registry](super::registry) piece by piece (each link's range
    /// answers with the image's offsets), so images linked later in this
    /// process record references into it by (build id, offset); as it is
    /// not one range here, loading an image that depends on it needs its
    /// file loaded.
    pub fn save_image(&self, dylib: &Dylib, build_id: &BuildId) -> Result<Vec<u8>, ImageError> {
        let pieces = self.pieces(Some(dylib.name()), None);
        save(
            &format!("dylib `{}`", dylib.name()),
            dylib.name(),
            &pieces,
            build_id,
        )
    }

    /// [`ObjectLayer::save_image`] of the code `tracker` owns: only the
    /// links whose units were defined with it. References to code another
    /// tracker owns — in the same dylib or not — are saved as imports by
    /// name, bound at load through the loading dylib's link order (the
    /// loading process provides them: that code's objects or its image).
    pub fn save_tracker_image(
        &self,
        tracker: &ResourceTracker,
        build_id: &BuildId,
    ) -> Result<Vec<u8>, ImageError> {
        let pieces = self.pieces(None, Some(tracker.key()));
        let name = pieces.first().map_or("", |p| p.dylib.as_str()).to_string();
        save(&format!("{tracker:?}"), &name, &pieces, build_id)
    }
}

/// The image file of `pieces`, named `name` (`what`, in errors).
fn save(
    what: &str,
    name: &str,
    pieces: &[Piece],
    build_id: &BuildId,
) -> Result<Vec<u8>, ImageError> {
    if pieces.is_empty() {
        return Err(ImageError::Empty { what: what.into() });
    }
    let (record, layout) = combine(name, pieces)?;
    let mut deps: Vec<BuildId> = record.deps.iter().map(|d| d.build_id).collect();
    deps.extend(record.host_table.as_ref().map(|t| t.0));
    let id = layout_id(build_id, &layout).with_dependencies(&deps);
    let bytes = super::write::write(name, &record, &id)?;
    // Images linked later in this process record references into it by
    // (build id, offset), as into an image saved from one link.
    let image_size = record.memory.len() as u64;
    for (p, &(start, len)) in pieces.iter().zip(&layout) {
        (p.register)(super::registry::Registration::new_piece(
            p.base,
            len,
            (start, image_size),
            id,
            name,
        ));
    }
    Ok(bytes)
}

/// `build_id` combined with where the pieces are (start, length): the
/// same inputs linked in other pieces make another image, with another
/// build id.
fn layout_id(build_id: &BuildId, layout: &[(u64, u64)]) -> BuildId {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln image build id of pieces\0");
    h.update(&build_id.0);
    h.update(&(layout.len() as u64).to_le_bytes());
    for (start, len) in layout {
        h.update(&start.to_le_bytes());
        h.update(&len.to_le_bytes());
    }
    BuildId(*h.finalize().as_bytes())
}

fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// Where each piece went: `(base in this process, length, start in the
/// image)`, sorted by base.
struct Places(Vec<(u64, u64, u64)>);

impl Places {
    /// The image offset of the process address `addr`, if a piece holds it.
    fn offset_of(&self, addr: u64) -> Option<u64> {
        let i = self.0.partition_point(|&(base, _, _)| base <= addr);
        let &(base, len, start) = self.0.get(i.checked_sub(1)?)?;
        (addr - base < len).then(|| start + (addr - base))
    }
}

fn write_word(memory: &mut [u8], at: u64, value: u64) {
    memory[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
}

/// Writes the signed `value` into the `size`-byte place at `at`; `None`
/// if it does not fit.
fn write_pc_relative(memory: &mut [u8], at: u64, size: u8, value: i64) -> Option<()> {
    let at = at as usize;
    let bytes: Vec<u8> = match size {
        1 => i8::try_from(value).ok()?.to_le_bytes().to_vec(),
        2 => i16::try_from(value).ok()?.to_le_bytes().to_vec(),
        4 => i32::try_from(value).ok()?.to_le_bytes().to_vec(),
        _ => value.to_le_bytes().to_vec(),
    };
    memory
        .get_mut(at..at + bytes.len())?
        .copy_from_slice(&bytes);
    Some(())
}

fn read_word(memory: &[u8], at: u64) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&memory[at as usize..at as usize + 8]);
    u64::from_le_bytes(w)
}

/// The record of one image holding every piece, and each piece's (start,
/// length) in it.
pub(crate) fn combine(
    name: &str,
    pieces: &[Piece],
) -> Result<(ImagingRecord, Vec<(u64, u64)>), ImageError> {
    let mut records = Vec::with_capacity(pieces.len());
    for p in pieces {
        let record = p.record.as_ref().ok_or_else(|| ImageError::NotImaging {
            name: p.name.clone(),
        })?;
        // Each link has its own TLS template; one image has one.
        if record.tls != Default::default() || record.imports.iter().any(|i| i.tls.is_some()) {
            return Err(ImageError::ThreadLocalsInPieces {
                name: p.name.clone(),
            });
        }
        // (One layer links for the host ISA only: its records are copies.)
        if record.in_image {
            return Err(ImageError::Write {
                name: p.name.clone(),
                detail: "an image for another ISA is saved on its own".into(),
                source: None,
            });
        }
        records.push(record);
    }
    let mut layout = Vec::with_capacity(pieces.len());
    let mut end = 0u64;
    for r in &records {
        let segments_end = r.segments.iter().map(|&(off, len, _)| off + len).max();
        let len = segments_end.unwrap_or(0).max(r.memory.len() as u64);
        // Each piece at a multiple of its own base alignment (the combined
        // base is a multiple of the largest): its blocks stay aligned.
        let start = end.next_multiple_of(r.base_align.max(1));
        layout.push((start, len));
        end = page_up(start + len);
    }
    let mut places = Places(
        pieces
            .iter()
            .zip(&layout)
            .map(|(p, &(start, len))| (p.base, len, start))
            .collect(),
    );
    places.0.sort_unstable();
    let mut out = ImagingRecord {
        memory: vec![0; end as usize],
        // One layer links for the host ISA only: every piece has its machine.
        machine: records.first().map_or(0, |r| r.machine),
        base_align: records.iter().map(|r| r.base_align).fold(PAGE, u64::max),
        serial: records.iter().any(|r| r.serial),
        ..ImagingRecord::default()
    };
    let mut exported = HashSet::new();
    let mut eh_frames = Vec::new();
    for ((p, r), &(start, _)) in pieces.iter().zip(&records).zip(&layout) {
        out.memory[start as usize..start as usize + r.memory.len()].copy_from_slice(&r.memory);
        out.cpu_features |= r.cpu_features;
        out.segments.extend(
            r.segments
                .iter()
                .map(|&(off, len, prot)| (start + off, len, prot)),
        );
        for &w in &r.rebase {
            let v = read_word(&out.memory, start + w);
            write_word(&mut out.memory, start + w, v.wrapping_add(start));
            out.rebase.push(start + w);
        }
        add_imports(name, &p.name, r, start, &places, &mut out)?;
        fix_pc_relative(name, r, start, &places, &mut out.memory)?;
        for e in &r.exports {
            let n = classify::export_name(&r.export_names, e);
            if exported.insert(n) {
                let at = out.export_names.len() as u32;
                out.export_names.push_str(n);
                out.exports.push(classify::Export {
                    name: (at, e.name.1),
                    offset: e.offset + start,
                    ..e.clone()
                });
            }
        }
        for (section, entries) in &r.init_fini {
            let shifted = entries
                .iter()
                .map(|&e| if e == u64::MAX { e } else { e + start })
                .collect();
            out.init_fini.push((section.clone(), shifted));
        }
        if let Some((off, len)) = r.eh_frame.filter(|&(_, len)| len > 4) {
            eh_frames.push((&p.name, start + off, len));
        }
    }
    let names = &out.export_names;
    out.exports
        .sort_by(|a, b| classify::export_name(names, a).cmp(classify::export_name(names, b)));
    match eh_frames.as_slice() {
        [] => {}
        [(_, off, len)] => out.eh_frame = Some((*off, *len)),
        _ => merge_eh_frames(name, &eh_frames, &mut out)?,
    }
    out.rebase.sort_unstable();
    out.rebase.dedup();
    Ok((out, layout))
}

/// Writes the distance of each PC-relative reference of piece `r` (at
/// `start`) to its target in another piece; refuses one whose target's
/// code is not saved with it.
fn fix_pc_relative(
    name: &str,
    r: &ImagingRecord,
    start: u64,
    places: &Places,
    memory: &mut [u8],
) -> Result<(), ImageError> {
    for pc in &r.pc_relative {
        let target = places
            .offset_of(pc.target)
            .ok_or_else(|| ImageError::Link {
                name: name.into(),
                source: crate::Cause::new(pc.refusal()),
            })?;
        let place = start + pc.offset;
        let value = target.wrapping_add(pc.addend as u64).wrapping_sub(place) as i64;
        write_pc_relative(memory, place, pc.size, value).ok_or_else(|| ImageError::Write {
            name: name.into(),
            detail: format!(
                "{}: {} at {}+{:#x} to `{}` does not reach it in the image",
                pc.object, pc.reloc, pc.section, pc.input_offset, pc.symbol
            ),
            source: None,
        })?;
    }
    Ok(())
}

/// Piece `r`'s imports at `start`: into another piece, a rebase; else an
/// import, its dependency renumbered in the image's table.
fn add_imports(
    name: &str,
    piece: &str,
    r: &ImagingRecord,
    start: u64,
    places: &Places,
    out: &mut ImagingRecord,
) -> Result<(), ImageError> {
    for i in &r.imports {
        let at = start + i.offset;
        // (A PC32 import reaches host data, never a piece.)
        if i.dep.is_none()
            && i.host.is_none()
            && !i.pc32
            && let Some(target) = places.offset_of(i.target)
        {
            write_word(&mut out.memory, at, target.wrapping_add(i.addend as u64));
            out.rebase.push(at);
            continue;
        }
        let mut i = i.clone();
        i.offset = at;
        if let Some((index, offset)) = i.dep {
            let d = &r.deps[index as usize];
            let new = match out.deps.iter().position(|o| o.build_id == d.build_id) {
                Some(n) => n,
                None => {
                    out.deps.push(d.clone());
                    out.deps.len() - 1
                }
            };
            i.dep = Some((new as u32, offset));
        }
        if i.host.is_some() {
            match (&out.host_table, &r.host_table) {
                (Some(a), Some(b)) if a.0 != b.0 => {
                    return Err(ImageError::Write {
                        name: name.into(),
                        detail: format!(
                            "`{piece}` was linked against host table `{}` ({}), an earlier link against `{}` ({}): one image uses one host table",
                            b.2, b.0, a.2, a.0
                        ),
                        source: None,
                    });
                }
                (None, Some(b)) => out.host_table = Some(b.clone()),
                _ => {}
            }
        }
        out.imports.push(i);
    }
    Ok(())
}

/// DWARF pointer encodings (`DW_EH_PE_*`).
const PE_OMIT: u8 = 0xff;
const PE_PCREL: u8 = 0x10;

/// Copies the pieces' `.eh_frame` records (`frames`: piece, image offset,
/// length with the terminator) into one section in a read-only segment at
/// the end of `out`, ended by one terminator; PC-relative pointers are
/// adjusted by how far each record moved, and rebased words and imports
/// inside the records are copied with them.
fn merge_eh_frames(
    name: &str,
    frames: &[(&String, u64, u64)],
    out: &mut ImagingRecord,
) -> Result<(), ImageError> {
    let at = out.memory.len() as u64;
    let mut merged: Vec<u8> = Vec::new();
    let mut rebase = Vec::new();
    let mut imports: Vec<Import> = Vec::new();
    for &(piece, off, len) in frames {
        let bytes = &out.memory[off as usize..(off + len) as usize];
        let body = records_len(bytes);
        let delta = at + merged.len() as u64 - off;
        let mut copy = bytes[..body].to_vec();
        relocate_records(&mut copy, delta).map_err(|detail| ImageError::Write {
            name: name.into(),
            detail: format!("the .eh_frame of `{piece}` cannot be moved: {detail}"),
            source: None,
        })?;
        let inside = |w: u64| w >= off && w < off + body as u64;
        rebase.extend(out.rebase.iter().filter(|&&w| inside(w)).map(|w| w + delta));
        imports.extend(out.imports.iter().filter(|i| inside(i.offset)).map(|i| {
            let mut i = i.clone();
            i.offset += delta;
            i
        }));
        merged.extend_from_slice(&copy);
    }
    merged.extend_from_slice(&[0; 4]);
    let len = merged.len() as u64;
    out.memory.extend_from_slice(&merged);
    out.memory.resize(page_up(at + len) as usize, 0);
    out.segments.push((at, page_up(len), Prot::Read));
    out.eh_frame = Some((at, len));
    out.rebase.extend(rebase);
    out.imports.extend(imports);
    Ok(())
}

/// The length of the records of an `.eh_frame` section: up to its zero
/// terminator (or its end).
fn records_len(bytes: &[u8]) -> usize {
    let mut p = 0;
    while p + 4 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]]);
        if len == 0 || len == u32::MAX {
            break;
        }
        let next = p + 4 + len as usize;
        if next > bytes.len() {
            break;
        }
        p = next;
    }
    p
}

/// A cursor over one record.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("a record ends early")?;
        self.at += 1;
        Ok(b)
    }

    fn leb(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a LEB128 number is too long".into())
    }

    fn cstr(&mut self) -> Result<Vec<u8>, String> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated string")?;
        self.at += n + 1;
        Ok(rest[..n].to_vec())
    }
}

/// Adjusts, in `records` (whole CIE and FDE records, moved `delta` bytes
/// up), every PC-relative pointer: personality, initial location, LSDA.
fn relocate_records(records: &mut [u8], delta: u64) -> Result<(), String> {
    // CIE offset → (FDE pointer encoding, LSDA encoding, has augmentation data).
    let mut cies: Vec<(usize, u8, u8, bool)> = Vec::new();
    let mut p = 0;
    while p + 8 <= records.len() {
        let word = |at: usize| {
            u32::from_le_bytes([
                records[at],
                records[at + 1],
                records[at + 2],
                records[at + 3],
            ])
        };
        let (len, id) = (word(p) as usize, word(p + 4));
        let end = p + 4 + len;
        let mut fields: Vec<(usize, u8)> = Vec::new();
        let mut c = Cursor {
            bytes: &records[..end],
            at: p + 8,
        };
        if id == 0 {
            let (fde, lsda, z) = cie(&mut c, &mut fields)?;
            cies.push((p, fde, lsda, z));
        } else {
            let cie_at = (p + 4)
                .checked_sub(id as usize)
                .ok_or("an FDE's CIE pointer leaves the section")?;
            let &(_, fde, lsda, z) = cies
                .iter()
                .find(|c| c.0 == cie_at)
                .ok_or("an FDE's CIE is not an earlier record of the section")?;
            fields.push((c.at, fde));
            c.at += pointer_size(fde, &c)?;
            c.at += pointer_size(fde & 0x0f, &c)?;
            if z {
                let aug = c.leb()?;
                if aug > 0 && lsda != PE_OMIT {
                    fields.push((c.at, lsda));
                }
            }
        }
        for (at, enc) in fields {
            adjust(records, at, enc, delta)?;
        }
        p = end;
    }
    Ok(())
}

/// Reads a CIE after its id: its encodings; its personality pointer joins
/// `fields`.
fn cie(c: &mut Cursor<'_>, fields: &mut Vec<(usize, u8)>) -> Result<(u8, u8, bool), String> {
    let version = c.byte()?;
    let aug = c.cstr()?;
    c.leb()?; // code alignment
    c.leb()?; // data alignment (signed, same length)
    if version == 1 {
        c.byte()?;
    } else {
        c.leb()?;
    }
    let (mut fde, mut lsda) = (0u8, PE_OMIT);
    let z = aug.first() == Some(&b'z');
    if !z && !aug.is_empty() {
        return Err(format!(
            "CIE augmentation `{}` is not understood",
            String::from_utf8_lossy(&aug)
        ));
    }
    if z {
        c.leb()?;
        for &ch in &aug[1..] {
            match ch {
                b'L' => lsda = c.byte()?,
                b'R' => fde = c.byte()?,
                b'P' => {
                    let enc = c.byte()?;
                    fields.push((c.at, enc));
                    c.at += pointer_size(enc, c)?;
                }
                b'S' | b'B' | b'G' => {}
                other => {
                    return Err(format!(
                        "CIE augmentation letter `{}` is not understood",
                        other as char
                    ));
                }
            }
        }
    }
    Ok((fde, lsda, z))
}

/// The size of a pointer encoded with `enc` at `c`.
fn pointer_size(enc: u8, c: &Cursor<'_>) -> Result<usize, String> {
    if enc == PE_OMIT {
        return Ok(0);
    }
    match enc & 0x0f {
        0x00 | 0x04 | 0x0c => Ok(8),
        0x02 | 0x0a => Ok(2),
        0x03 | 0x0b => Ok(4),
        0x01 | 0x09 => {
            let mut probe = Cursor {
                bytes: c.bytes,
                at: c.at,
            };
            probe.leb()?;
            Ok(probe.at - c.at)
        }
        f => Err(format!("pointer format {f:#x} is not a DWARF one")),
    }
}

/// Makes the pointer encoded with `enc` at `at` right again after its
/// record moved `delta` bytes up: a PC-relative one is `delta` smaller; an
/// absolute one is a word rebased or imported like any other.
fn adjust(records: &mut [u8], at: usize, enc: u8, delta: u64) -> Result<(), String> {
    if enc == PE_OMIT || enc & 0x70 == 0 {
        return Ok(());
    }
    if enc & 0x70 != PE_PCREL {
        return Err(format!(
            "pointer encoding {enc:#x} is not absolute or PC-relative"
        ));
    }
    let out_of_range = || format!("a PC-relative pointer (encoding {enc:#x}) moved out of range");
    let field = records
        .get_mut(at..)
        .ok_or("a pointer lies outside its record")?;
    match enc & 0x0f {
        0x0b => {
            let v = i32::from_le_bytes(field[..4].try_into().map_err(|_| out_of_range())?);
            let new = i64::from(v) - delta as i64;
            let new = i32::try_from(new).map_err(|_| out_of_range())?;
            field[..4].copy_from_slice(&new.to_le_bytes());
        }
        0x03 => {
            let v = u32::from_le_bytes(field[..4].try_into().map_err(|_| out_of_range())?);
            let new = u32::try_from(i64::from(v) - delta as i64).map_err(|_| out_of_range())?;
            field[..4].copy_from_slice(&new.to_le_bytes());
        }
        0x00 | 0x04 | 0x0c => {
            let v = u64::from_le_bytes(field[..8].try_into().map_err(|_| out_of_range())?);
            field[..8].copy_from_slice(&v.wrapping_sub(delta).to_le_bytes());
        }
        _ => {
            return Err(format!(
                "PC-relative pointer encoding {enc:#x} is not supported"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIE with `zPLR` (personality, LSDA, FDE encodings all pcrel
    /// sdata4) and an FDE with an LSDA pointer, moved 0x1000 bytes up: the
    /// three pointers shrink by 0x1000, nothing else changes.
    #[test]
    fn pc_relative_pointers_shrink_by_the_distance_moved() {
        let mut cie = vec![0, 0, 0, 0, 0, 0, 0, 0, 1];
        cie.extend_from_slice(b"zPLR\0");
        cie.extend_from_slice(&[1, 0x78, 16, 7, 0x9b]);
        let personality_at = cie.len();
        cie.extend_from_slice(&0x100i32.to_le_bytes());
        cie.extend_from_slice(&[0x1b, 0x1b]);
        while cie.len() % 4 != 0 {
            cie.push(0);
        }
        let len = (cie.len() - 4) as u32;
        cie[..4].copy_from_slice(&len.to_le_bytes());
        let fde_at = cie.len();
        let mut fde = vec![0, 0, 0, 0];
        fde.extend_from_slice(&((fde_at + 4) as u32).to_le_bytes());
        fde.extend_from_slice(&(-0x2000i32).to_le_bytes());
        fde.extend_from_slice(&0x40u32.to_le_bytes());
        fde.push(4);
        fde.extend_from_slice(&0x300i32.to_le_bytes());
        while fde.len() % 4 != 0 {
            fde.push(0);
        }
        let len = (fde.len() - 4) as u32;
        fde[..4].copy_from_slice(&len.to_le_bytes());
        let mut records = [cie, fde].concat();
        let before = records.clone();
        relocate_records(&mut records, 0x1000).expect("relocates");
        let i32_at = |b: &[u8], at: usize| i32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(i32_at(&records, personality_at), 0x100 - 0x1000);
        assert_eq!(i32_at(&records, fde_at + 8), -0x2000 - 0x1000);
        assert_eq!(i32_at(&records, fde_at + 12), 0x40, "the range stays");
        assert_eq!(i32_at(&records, fde_at + 17), 0x300 - 0x1000);
        let changed = records.iter().zip(&before).filter(|(a, b)| a != b).count();
        assert!(changed <= 12, "only the three pointers change");
        assert_eq!(
            records_len(&[records.clone(), vec![0; 4]].concat()),
            records.len()
        );
    }

    #[test]
    fn offsets_are_found_in_the_piece_holding_the_address() {
        let places = Places(vec![(0x1000, 0x800, 0), (0x9000, 0x100, 0x1000)]);
        assert_eq!(places.offset_of(0x1010), Some(0x10));
        assert_eq!(places.offset_of(0x1800), None);
        assert_eq!(places.offset_of(0x9050), Some(0x1050));
        assert_eq!(places.offset_of(0xfff), None);
        assert_eq!(places.offset_of(0), None);
    }
}
