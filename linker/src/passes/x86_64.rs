//! Everything x86-64-specific the passes use, in one place: which edge
//! kinds ask for a GOT entry, a PLT stub or a placement below 2 GiB, which
//! are 32-bit references that may not reach the host, the PLT stub, GOT
//! load relaxation and the fixup of one edge, and relocation names for
//! errors.
//!
//! This module is the seam of the ISA-generic step (issue 10 §1): it moves
//! behind `kiln-arch`'s relocation trait next, and the generic passes then
//! ask the target's `Arch` instead of calling these functions. Until then
//! it is the only file under `passes/` that names an x86-64 edge kind.

use kiln_arch::FixupError;
use kiln_arch::x86_64::reloc::{self, EdgeKind, FixupValues, Relaxed, kind_name, reloc_name};

use super::fixup::FixupCtx;
use super::got_plt::GotKey;
use crate::graph::{Block, Edge, Symbol, SymbolDef, SymbolId};

/// Bytes of one PLT stub.
pub(super) const PLT_STUB_SIZE: usize = reloc::PLT_STUB_SIZE;

/// What fills the PLT block where no stub is written (`int3`).
pub(super) const PLT_FILL: u8 = 0xcc;

/// The relocation named in errors about a GOT thread-pointer offset.
pub(super) const GOT_TP_OFF_NAME: &str = "R_X86_64_GOTTPOFF";

/// The relocation named when a 32-bit absolute place is not known.
pub(super) const ABS32_NAME: &str = "R_X86_64_32";

/// What one edge asks of the GOT/PLT pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Nothing,
    /// A GOT entry.
    Got(GotKey),
    /// A PLT stub (a call to an external) and the GOT entry it jumps through.
    Plt,
    /// A GOT, even without entries (GOT-relative offsets).
    GotBase,
    /// The image below 2 GiB (32-bit absolute addresses: non-PIE code).
    Below2GiB,
}

/// What edge `e` asks of the GOT/PLT pass; `external`: its target is not
/// defined in the graph.
pub(super) fn need(e: &Edge, external: bool) -> Need {
    match e.kind {
        EdgeKind::GotDelta32
        | EdgeKind::GotLoadRelaxable { .. }
        | EdgeKind::GotDelta64
        | EdgeKind::GotOffsetOfEntry64 => Need::Got(GotKey::Addr(e.target)),
        EdgeKind::TlsGd => Need::Got(GotKey::TlsGd(e.target)),
        EdgeKind::TlsLd => Need::Got(GotKey::TlsLd),
        EdgeKind::GotTpOff => Need::Got(GotKey::TpOff(e.target)),
        EdgeKind::TlsDescGot => Need::Got(GotKey::TlsDesc(e.target)),
        EdgeKind::Branch32 if external => Need::Plt,
        EdgeKind::GotOff64 | EdgeKind::GotPc32 | EdgeKind::GotPc64 => Need::GotBase,
        EdgeKind::Pointer32 | EdgeKind::Pointer32Signed => Need::Below2GiB,
        _ => Need::Nothing,
    }
}

/// How far a 32-bit reference reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach32 {
    /// ±2 GiB of the place.
    PcRelative,
    /// The low 4 GiB.
    Unsigned,
    /// The low 2 GiB.
    Signed,
}

/// The reach of `kind` if it is a 32-bit reference that may not reach a
/// host symbol.
pub(super) fn reach32(kind: EdgeKind) -> Option<Reach32> {
    match kind {
        EdgeKind::Delta32 => Some(Reach32::PcRelative),
        EdgeKind::Pointer32 => Some(Reach32::Unsigned),
        EdgeKind::Pointer32Signed => Some(Reach32::Signed),
        _ => None,
    }
}

/// Whether `kind` is a thread-pointer-relative value (TLS local-exec).
pub(super) fn is_tp_relative(kind: EdgeKind) -> bool {
    matches!(kind, EdgeKind::TpOff32 | EdgeKind::TpOff64)
}

/// Whether `kind` asks for the module's TLS block (local-dynamic).
pub(super) fn is_tls_ld(kind: EdgeKind) -> bool {
    kind == EdgeKind::TlsLd
}

/// The name of relocation type `r_type`, or `fallback`.
pub(super) fn reloc_name_or(r_type: u32, fallback: &'static str) -> &'static str {
    reloc_name(r_type).unwrap_or(fallback)
}

/// The name of relocation type `r_type`, or `R_X86_64_32`.
pub(super) fn reloc_name_or_abs32(r_type: u32) -> &'static str {
    reloc_name_or(r_type, ABS32_NAME)
}

/// What errors call edge `e`: its relocation, or its kind.
pub(super) fn reloc_label(e: &Edge) -> &'static str {
    reloc_name(e.r_type).unwrap_or(kind_name(e.kind))
}

/// An edge that stands for no relocation (for an error without a place).
pub(super) fn placeholder_edge() -> Edge {
    Edge {
        offset: 0,
        kind: EdgeKind::None,
        r_type: 0,
        target: SymbolId(0),
        addend: 0,
    }
}

/// Write the PLT stub at `stub_addr` (its `PLT_STUB_SIZE` bytes `out`),
/// jumping through the GOT entry at `got_entry`.
pub(super) fn write_plt_stub(
    out: &mut [u8],
    stub_addr: u64,
    got_entry: u64,
) -> Result<(), FixupError> {
    let mut stub = [0u8; PLT_STUB_SIZE];
    reloc::write_plt_stub(&mut stub, stub_addr, got_entry)?;
    out.copy_from_slice(&stub);
    Ok(())
}

/// Whether `host` is out of reach of some place of the image at
/// `[base, base + len)` (placed below 2 GiB if `low`) for a 32-bit field.
pub(super) fn out_of_image_reach(host: u64, base: u64, len: u64, low: bool) -> bool {
    (low && host >= 1 << 31) || host.abs_diff(base).saturating_add(len) >= 1 << 31
}

/// Whether `target + addend - place` fits a signed 32-bit field.
fn in_reach(place: u64, target: u64, addend: i64) -> bool {
    let v = i128::from(target) + i128::from(addend) - i128::from(place);
    (i128::from(i32::MIN)..=i128::from(i32::MAX)).contains(&v)
}

/// A fixup error, with a hint for the user where one helps.
pub(super) type EdgeError = (FixupError, Option<&'static str>);

/// The GOT entry for `key`, or the error for a missing one (a linker bug).
fn got_entry(ctx: &FixupCtx<'_>, key: GotKey) -> Result<u64, EdgeError> {
    ctx.got_entry(key).ok_or((
        FixupError::BadInstruction {
            reloc: "GOT",
            detail: "no GOT entry was created for this edge (linker bug)",
        },
        None,
    ))
}

/// Apply edge `e` of `block` to `bytes` (the block's place in the image):
/// calls to far externals through their stub, GOT loads relaxed where the
/// target is in reach, GOT and TLS edges to their entries.
pub(super) fn fix_edge(
    ctx: &FixupCtx<'_>,
    block: &Block,
    e: &Edge,
    bytes: &mut [u8],
) -> Result<(), EdgeError> {
    // The symbol itself (64 bytes, a cache miss for most edges) is read
    // only by the kinds that need more than its address.
    let sym = || -> &Symbol { &ctx.graph.symbols[e.target.index()] };
    let s = ctx.addrs[e.target.index()];
    let place = block.addr.wrapping_add(u64::from(e.offset));
    let mut v = FixupValues {
        place,
        target: s,
        addend: e.addend,
        got: ctx.got_base,
        size: match e.kind {
            EdgeKind::Size32 | EdgeKind::Size64 => sym().size,
            _ => 0,
        },
    };
    let mut kind = e.kind;
    let mut offset = u64::from(e.offset);
    match e.kind {
        EdgeKind::Branch32 => {
            if (ctx.imaging || !in_reach(place, s, e.addend))
                && let Some(off) = ctx.plt.get(&e.target)
            {
                v.target = ctx.plt_base + off;
            }
        }
        EdgeKind::GotLoadRelaxable { rex } => {
            let direct = !sym().tls
                && s != 0
                && in_reach(place, s, e.addend)
                && !(ctx.imaging && sym().def == SymbolDef::External);
            let relaxed = if direct {
                reloc::relax_got_load(bytes, u64::from(e.offset), rex).map_err(|err| (err, None))?
            } else {
                None
            };
            match relaxed {
                Some(Relaxed::MovToLea | Relaxed::CallToDirect) => kind = EdgeKind::Delta32,
                Some(Relaxed::JmpToDirect) => {
                    kind = EdgeKind::Delta32;
                    offset -= 1;
                    v.place -= 1;
                }
                None => {
                    kind = EdgeKind::GotDelta32;
                    v.target = got_entry(ctx, GotKey::Addr(e.target))?;
                }
            }
        }
        EdgeKind::GotDelta32 | EdgeKind::GotDelta64 | EdgeKind::GotOffsetOfEntry64 => {
            v.target = got_entry(ctx, GotKey::Addr(e.target))?;
        }
        EdgeKind::TlsGd => v.target = got_entry(ctx, GotKey::TlsGd(e.target))?,
        EdgeKind::TlsLd => v.target = got_entry(ctx, GotKey::TlsLd)?,
        EdgeKind::GotTpOff => v.target = got_entry(ctx, GotKey::TpOff(e.target))?,
        EdgeKind::TlsDescGot => v.target = got_entry(ctx, GotKey::TlsDesc(e.target))?,
        EdgeKind::TpOff32 | EdgeKind::TpOff64 => {
            let Some(&off) = ctx.tpoffs.get(&e.target) else {
                return Err((
                    FixupError::BadInstruction {
                        reloc: kind_name(e.kind),
                        detail: "the target is not a thread-local variable of this image",
                    },
                    None,
                ));
            };
            v.target = off as u64;
        }
        _ => {}
    }
    reloc::apply(kind, bytes, offset, &v).map_err(|err| (err, fixup_hint(e.kind, sym().def)))
}

/// What the user can do about a fixup of `kind` to a symbol defined as
/// `def` that failed (out of range).
fn fixup_hint(kind: EdgeKind, def: SymbolDef) -> Option<&'static str> {
    match (kind, def) {
        (EdgeKind::Pointer32 | EdgeKind::Pointer32Signed, _) => {
            Some("non-PIE code must be placed below 2 GiB; compile with -fPIE or -fPIC")
        }
        (EdgeKind::Delta32, SymbolDef::External) => Some(
            "a host data symbol is out of ±2 GiB reach of PC-relative code; compile with -fPIC so it goes through the GOT",
        ),
        _ => None,
    }
}
