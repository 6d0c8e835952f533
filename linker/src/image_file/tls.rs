//! Thread-locals of a loaded image: a TLS module made for each load, its
//! initial image taken from the (rebased) image, and the thread-local
//! slots bound from it. Local-exec code needs exactly the static range it
//! was linked against (recorded in the header): the process's static TLS
//! area must be the same and that range free, otherwise the image is
//! refused naming the field and both values.

use super::ImageError;
use super::format::{self, TlsHeader};
use super::read::{Parsed, tp_offset};
use crate::memory::Allocation;
use crate::runtime::tls::{TlsModule, TlsPlacement, static_area};

/// The static TLS area of the C loader (`linker/loader/kiln-load.c`,
/// `kl_area`), which an image for another ISA than kiln's is linked
/// against: its thread-pointer offset and size. aarch64 (TLS variant I):
/// the loader's only thread-local, 64-byte aligned, follows the 16-byte
/// TCB at `tp+64` (glibc rounds the TCB up to the block's alignment); the
/// loader checks at load that it is there.
pub(crate) const LOADER_AREA_AARCH64: (i64, u64) = (64, 0x10000);
/// Largest alignment of a TLS template in the C loader's area.
pub(crate) const LOADER_AREA_ALIGN: u64 = 64;

/// For an image of `isa` that is not kiln's own: the static TLS area it is
/// linked against (the C loader's; the image's block at its start), or
/// `None` for kiln's ISA (kiln's own area, `static_area`).
pub(crate) fn foreign_area(isa: crate::isa::Isa) -> Option<(i64, u64)> {
    match isa {
        i if i == crate::isa::Isa::HOST => None,
        crate::isa::Isa::Aarch64 => Some(LOADER_AREA_AARCH64),
        crate::isa::Isa::X86_64 => None,
    }
}

/// The thread-pointer offset of the variable at `offset` in the TLS
/// template of an image of `isa` that is not kiln's own (its block at the
/// start of the C loader's area, [`foreign_area`]); `None` for kiln's ISA.
pub(crate) fn foreign_tp_offset(isa: crate::isa::Isa, offset: u64) -> Option<i64> {
    foreign_area(isa).map(|(tp, _)| tp + offset as i64)
}

/// Refuses a TLS template (`size` bytes aligned to `align`) of an image of
/// `isa` that does not fit the C loader's static TLS area (kiln's ISA:
/// nothing to check here).
pub(crate) fn check_foreign_template(
    isa: crate::isa::Isa,
    size: u64,
    align: u64,
) -> Result<(), crate::LinkError> {
    match foreign_area(isa) {
        Some((tp, area_size)) if size > area_size || align > LOADER_AREA_ALIGN => {
            Err(crate::LinkError::tls(format!(
                "the image's thread-locals ({size:#x} bytes, align {align}) do not fit the C loader's static TLS area for {} ({area_size:#x} bytes at {}, align {LOADER_AREA_ALIGN}), where its thread-locals live",
                isa.name(),
                tp_offset(tp)
            )))
        }
        _ => Ok(()),
    }
}

/// Whether a static TLS area at thread-pointer offset `tp` is on the side
/// of the thread pointer where `machine`'s TLS ABI puts the executable's
/// block: below it on x86-64 (variant II), after the 16-byte TCB on
/// aarch64 (variant I). And the words for the refusal.
pub(crate) fn area_side(machine: u16, tp: i64) -> (bool, &'static str) {
    if machine == crate::isa::Isa::Aarch64.machine() {
        (
            tp >= 16,
            "a range inside an area after the thread pointer's 16-byte TCB",
        )
    } else {
        (tp < 0, "a range inside an area below the thread pointer")
    }
}

fn field(file_name: &str, field: &'static str, found: String, expected: String) -> ImageError {
    ImageError::Field {
        name: file_name.into(),
        field,
        found,
        expected,
    }
}

fn area(t: &TlsHeader) -> String {
    format!("{} ({:#x} bytes)", tp_offset(t.area_tp_offset), t.area_size)
}

/// Whether this process can give the image the static TLS it was linked
/// against (local-exec code): the same area, the recorded range free. For
/// a cache, which relinks instead of loading when it cannot.
pub(crate) fn check_process(p: &Parsed<'_>, file_name: &str) -> Result<(), ImageError> {
    let t = &p.header.tls;
    if t.size == 0 || t.static_use != format::STATIC_TLS_FIXED {
        return Ok(());
    }
    check_area(t, file_name)?;
    let taken = static_area::overlapping(t.area_offset as usize, t.size as usize);
    if taken.is_empty() {
        Ok(())
    } else {
        Err(range_taken(t, file_name, &taken))
    }
}

fn check_area(t: &TlsHeader, file_name: &str) -> Result<(), ImageError> {
    let here = static_area::area_tp_offset().map_err(|why| {
        field(
            file_name,
            "static TLS area",
            area(t),
            format!("kiln's static TLS area, which this process lacks: {why}"),
        )
    })?;
    let size = static_area::AREA_SIZE as u64;
    if (here, size) != (t.area_tp_offset, t.area_size) {
        return Err(field(
            file_name,
            "static TLS area",
            area(t),
            format!(
                "{} ({size:#x} bytes), this process's (the image's local-exec code addresses its thread-locals at thread-pointer offsets fixed when it was linked; save it with the kiln that loads it)",
                tp_offset(here)
            ),
        ));
    }
    Ok(())
}

fn range_taken(t: &TlsHeader, file_name: &str, taken: &[(usize, usize)]) -> ImageError {
    let taken: Vec<String> = taken
        .iter()
        .map(|(s, e)| format!("{s:#x}..{e:#x}"))
        .collect();
    field(
        file_name,
        "static TLS range",
        format!(
            "{:#x}..{:#x} of kiln's static TLS area at {}",
            t.area_offset,
            t.area_offset + t.size,
            tp_offset(t.area_tp_offset)
        ),
        format!(
            "a range no other TLS module of this process has used (taken: {}; a used range is never reused, so an image with local-exec code loads once per process)",
            taken.join(", ")
        ),
    )
}

/// The image's TLS module, placed as its code needs, with its initial
/// image (read from the rebased memory); `None` without thread-locals.
fn module(p: &Parsed<'_>, mem: &[u8], file_name: &str) -> Result<TlsModule, ImageError> {
    let t = &p.header.tls;
    let (size, align) = (t.size as usize, t.align as usize);
    let module = match t.static_use {
        format::STATIC_TLS_FIXED => {
            check_area(t, file_name)?;
            TlsModule::claim_static(p.name, size, align, t.area_offset as usize).map_err(|e| {
                match e {
                    static_area::ClaimError::Taken(taken) => range_taken(t, file_name, &taken),
                    static_area::ClaimError::Unavailable(why) => field(
                        file_name,
                        "static TLS area",
                        area(t),
                        format!("kiln's static TLS area, which this process lacks: {why}"),
                    ),
                    static_area::ClaimError::OutOfBounds => field(
                        file_name,
                        "static TLS range",
                        format!("{:#x}+{size:#x} aligned to {align}", t.area_offset),
                        format!(
                            "an aligned range inside the {:#x}-byte area",
                            static_area::AREA_SIZE
                        ),
                    ),
                }
            })?
        }
        format::STATIC_TLS_ANY => TlsModule::new(p.name, size, align, TlsPlacement::Static)
            .map_err(|e| {
                field(
                    file_name,
                    "static TLS use",
                    "1 (initial-exec code: any static range)".into(),
                    format!("a static range this process can give: {e}"),
                )
            })?,
        _ => TlsModule::new(p.name, size, align, TlsPlacement::PreferStatic)
            .map_err(|e| tls_err(file_name, e))?,
    };
    let at = t.image_offset as usize;
    // The parser checked the initial image lies in a segment.
    let image = mem.get(at..at + t.image_size as usize).unwrap_or_default();
    module
        .initialize(image)
        .map_err(|e| tls_err(file_name, e))?;
    Ok(module)
}

fn tls_err(file_name: &str, e: crate::runtime::tls::TlsError) -> ImageError {
    ImageError::Link {
        name: file_name.into(),
        source: crate::Cause::new(crate::LinkError::tls_refused(
            "the image's thread-locals",
            e,
        )),
    }
}

/// Makes the image's TLS module (if it has thread-locals) and binds every
/// thread-local slot from it: module ids, thread-pointer offsets, TLSDESC
/// descriptors. Before the final protections.
pub(crate) fn set_up(
    p: &Parsed<'_>,
    alloc: &mut Allocation,
    file_name: &str,
) -> Result<Option<TlsModule>, ImageError> {
    if p.header.tls.size == 0 {
        return Ok(None);
    }
    let mem = alloc.bytes_mut().ok_or_else(|| ImageError::Malformed {
        name: file_name.into(),
        detail: "the image's memory is no longer writable".into(),
    })?;
    let module = module(p, mem, file_name)?;
    let mut desc = None;
    for i in &p.imports {
        let Some((kind, var)) = i.tls else { continue };
        let v = match kind {
            format::TLS_MODULE_ID => module.module_id(),
            format::TLS_TP_OFFSET => module
                .static_tp_offset(var, "?", p.name, "R_X86_64_GOTTPOFF")
                .map_err(|e| tls_err(file_name, e))? as u64,
            _ => {
                // A resolver word comes first, its argument 8 bytes after.
                let d = match desc {
                    Some((v, d)) if v == var && kind == format::TLS_DESC_ARGUMENT => d,
                    _ => module.tlsdesc(var).map_err(|e| tls_err(file_name, e))?,
                };
                desc = Some((var, d));
                if kind == format::TLS_DESC_RESOLVER {
                    d.resolver as u64
                } else {
                    d.argument as u64
                }
            }
        };
        // The parser checked the word lies in a non-text segment.
        mem[i.offset as usize..i.offset as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
    Ok(Some(module))
}
