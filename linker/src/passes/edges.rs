//! What the passes ask of an edge, answered from its [`EdgeDesc`] (the
//! ISA's table row, `kiln-arch`): which edges ask for a GOT entry, a PLT
//! stub or a placement below 2 GiB, and the fixup of one edge through
//! [`RelocArch::apply`] (with GOT relaxation and PLT stubs where the ISA
//! allows them). No ISA is named here: the fixup is generic over
//! [`RelocArch`] and entered once per block ([`crate::isa::Isa`]).

use kiln_arch::{EdgeDesc, EdgeForm, EdgeTarget, FixupError, FixupValues, RelocArch};

use super::fixup::FixupCtx;
use super::got_plt::GotKey;
use crate::graph::{Block, Edge, Reach32, Symbol, SymbolDef};

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
#[inline]
pub(super) fn need(e: &Edge, external: bool) -> Need {
    let k = e.kind.desc();
    match k.target {
        // The common cases first: this runs for every live edge.
        EdgeTarget::Symbol if k.uses_got_base => Need::GotBase,
        EdgeTarget::Symbol if k.width == 4 && matches!(k.form, EdgeForm::Absolute { .. }) => {
            Need::Below2GiB
        }
        EdgeTarget::Symbol => Need::Nothing,
        EdgeTarget::Branch if external => Need::Plt,
        EdgeTarget::Branch => Need::Nothing,
        EdgeTarget::GotEntry { .. } => Need::Got(GotKey::Addr(e.target)),
        EdgeTarget::TlsGdPair => Need::Got(GotKey::TlsGd(e.target)),
        EdgeTarget::TlsLdPair => Need::Got(GotKey::TlsLd),
        EdgeTarget::TlsIeEntry => Need::Got(GotKey::TpOff(e.target)),
        EdgeTarget::TlsDescriptor => Need::Got(GotKey::TlsDesc(e.target)),
        EdgeTarget::GotBase => Need::GotBase,
        _ if k.uses_got_base => Need::GotBase,
        _ => Need::Nothing,
    }
}

/// What errors call edge `e`: its relocation's psABI name.
pub(super) fn reloc_label(e: &Edge) -> &'static str {
    e.kind.name
}

/// Whether `host` is out of reach of some place of the image at
/// `[base, base + len)` (placed below 2 GiB if `low`) for a 32-bit field.
pub(super) fn out_of_image_reach(host: u64, base: u64, len: u64, low: bool) -> bool {
    (low && host >= 1 << 31) || host.abs_diff(base).saturating_add(len) >= 1 << 31
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
/// ISA allows it and the target is in reach, GOT and TLS edges to their
/// entries.
#[inline]
pub(super) fn fix_edge<A: RelocArch>(
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
    let k: &'static EdgeDesc = e.kind.desc();
    let mut v = FixupValues {
        place,
        target: s,
        addend: e.addend(),
        got: ctx.got_base,
        size: 0,
    };
    let hint = || fixup_hint(k, sym().def);
    match k.target {
        EdgeTarget::Symbol => {}
        EdgeTarget::Branch => {
            // Through the PLT stub, if the symbol has one, when imaging
            // (host symbols only through their slots) or when the symbol
            // is out of the call's reach (the direct fixup fails, writing
            // nothing).
            if !ctx.imaging {
                match A::apply(k, bytes, u64::from(e.offset), &v) {
                    Ok(()) => return Ok(()),
                    Err(FixupError::OutOfRange { .. }) if ctx.plt.contains(e.target) => {}
                    Err(err) => return Err((err, hint())),
                }
            }
            if let Some(off) = ctx.plt.get(e.target) {
                v.target = ctx.plt_base + off;
            }
        }
        EdgeTarget::GotEntry { addend_in_entry } => {
            if k.relaxable
                && !sym().tls
                && s != 0
                && A::may_relax_got(place, s, e.addend())
                && !(ctx.imaging && sym().def == SymbolDef::External)
                && let Some(r) =
                    A::relax(k, bytes, u64::from(e.offset)).map_err(|err| (err, None))?
            {
                let offset = u64::from(e.offset).wrapping_add_signed(i64::from(r.place_delta));
                v.place = place.wrapping_add_signed(i64::from(r.place_delta));
                return A::apply(r.edge, bytes, offset, &v).map_err(|err| (err, hint()));
            }
            if addend_in_entry && e.addend() != 0 {
                return Err((
                    FixupError::AddendInGotEntry {
                        reloc: k.name,
                        addend: e.addend(),
                    },
                    None,
                ));
            }
            v.target = got_entry(ctx, GotKey::Addr(e.target))?;
        }
        EdgeTarget::TlsGdPair => v.target = got_entry(ctx, GotKey::TlsGd(e.target))?,
        EdgeTarget::TlsLdPair => v.target = got_entry(ctx, GotKey::TlsLd)?,
        EdgeTarget::TlsIeEntry => v.target = got_entry(ctx, GotKey::TpOff(e.target))?,
        EdgeTarget::TlsDescriptor => v.target = got_entry(ctx, GotKey::TlsDesc(e.target))?,
        EdgeTarget::TpOffset => {
            let Some(&off) = ctx.tpoffs.get(&e.target) else {
                return Err((
                    FixupError::BadInstruction {
                        reloc: k.name,
                        detail: "the target is not a thread-local variable of this image",
                    },
                    None,
                ));
            };
            v.target = off as u64;
        }
        EdgeTarget::Size => v.size = sym().size,
        _ => {}
    }
    A::apply(k, bytes, u64::from(e.offset), &v).map_err(|err| (err, hint()))
}

/// What the user can do about a fixup of `kind` to a symbol defined as
/// `def` that failed (out of range).
#[cold]
fn fixup_hint(kind: &'static EdgeDesc, def: SymbolDef) -> Option<&'static str> {
    let e = Edge::new(0, kind, crate::graph::SymbolId(0), 0);
    match (e.reach32(), def) {
        (Some(Reach32::Unsigned | Reach32::Signed), _) => {
            Some("non-PIE code must be placed below 2 GiB; compile with -fPIE or -fPIC")
        }
        (Some(Reach32::PcRelative), SymbolDef::External) => Some(
            "a host data symbol is out of ±2 GiB reach of PC-relative code; compile with -fPIC so it goes through the GOT",
        ),
        _ => None,
    }
}
