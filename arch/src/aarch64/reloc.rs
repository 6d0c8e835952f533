//! AArch64 ELF relocations: the table keyed by raw `r_type`, and fixup math.
//!
//! Names, formulas and overflow ranges follow "ELF for the Arm 64-bit
//! Architecture (AAELF64)", section 5.7 "Relocation": tables "Static Data
//! relocations", "Group relocations to create a 16-, 32-, 48-, or 64-bit
//! unsigned data value or address inline", "Group relocations to create a
//! 16, 32, 48, or 64 bit PC-relative offset inline", "Relocations to
//! generate 19, 21 and 33 bit PC-relative addresses", "Relocations for
//! control-flow instructions", "GOT-relative instruction relocations",
//! "Initial Exec TLS relocations", "Local Exec TLS relocations" and "TLS
//! descriptor relocations".
//!
//! Notation: `S` is the symbol's address, `A` the addend, `P` the place's
//! address, `Page(x) = x & !0xfff`, `G` the address of the symbol's GOT entry
//! (or IE GOT slot, or TLS descriptor), `GOT` the address of the GOT,
//! `TPREL(S)` the symbol's offset from the thread pointer, `X` the value
//! computed by the formula. Ranges are checked on `X` before its bits are
//! taken; `_NC` ("no check") types skip the range check.
//!
//! GOT-indirect types compute on `G(GDAT(S + A))`: the entry holds `S + A`
//! and the addend does not enter the fixup. The linker passes `G` as the
//! target ([`FixupValues::target`]) and the addend is ignored. TLS
//! local-exec types take `TPREL(S)` (a signed value stored as `u64`) as the
//! target.
//!
//! | needs | types |
//! |---|---|
//! | GOT entry holding `S + A` | `ADR_GOT_PAGE`, `LD64_GOT_LO12_NC`, `LD64_GOTPAGE_LO15` (also `GOT`) |
//! | IE GOT slot holding `TPREL(S + A)` | `TLSIE_ADR_GOTTPREL_PAGE21`, `TLSIE_LD64_GOTTPREL_LO12_NC` |
//! | general-dynamic GOT pair `{module, offset}` for `__tls_get_addr` (`-mtls-dialect=trad`) | `TLSGD_ADR_PAGE21`, `TLSGD_ADD_LO12_NC` |
//! | TLS descriptor (16 bytes) | `TLSDESC_ADR_PAGE21`, `TLSDESC_LD64_LO12`, `TLSDESC_ADD_LO12` (`TLSDESC_CALL` marks the `blr`) |
//! | PLT stub or veneer when `S` is out of ±128 MiB | `CALL26`, `JUMP26` |
//!
//! Relaxations ([`RelocArch::relax`](crate::RelocArch::relax)), as GNU ld
//! and lld do them:
//!
//! | from | instruction becomes | then apply |
//! |---|---|---|
//! | `ADR_GOT_PAGE` | (unchanged `adrp`) | `ADR_PREL_PG_HI21` |
//! | `LD64_GOT_LO12_NC` | `add Xt, Xn, #0` | `ADD_ABS_LO12_NC` |
//! | `TLSIE_ADR_GOTTPREL_PAGE21`, `TLSDESC_ADR_PAGE21` | `movz Xd, #0, lsl #16` (`x0` for descriptors) | `TLSLE_MOVW_TPREL_G1` |
//! | `TLSIE_LD64_GOTTPREL_LO12_NC`, `TLSDESC_LD64_LO12` | `movk Xt, #0` (`x0` for descriptors) | `TLSLE_MOVW_TPREL_G0_NC` |
//! | `TLSDESC_ADD_LO12`, `TLSDESC_CALL` | `nop` | `NONE` |
//!
//! `CONDBR19` and `TSTBR14` have no veneer: AAELF64 lets a linker extend
//! only `CALL26`/`JUMP26`; compilers emit them within a function.

use crate::FixupError;
use crate::edge::{EdgeDesc, EdgeForm, EdgeTarget, FixupValues};
use crate::template::place_mut;

/// Raw `R_AARCH64_*` relocation type numbers (AAELF64).
pub mod r_type {
    /// No fixup.
    pub const R_AARCH64_NONE: u32 = 0;
    /// `S + A`, 64-bit data.
    pub const R_AARCH64_ABS64: u32 = 257;
    /// `S + A`, 32-bit data, checked.
    pub const R_AARCH64_ABS32: u32 = 258;
    /// `S + A`, 16-bit data, checked.
    pub const R_AARCH64_ABS16: u32 = 259;
    /// `S + A - P`, 64-bit data.
    pub const R_AARCH64_PREL64: u32 = 260;
    /// `S + A - P`, 32-bit data, checked.
    pub const R_AARCH64_PREL32: u32 = 261;
    /// `S + A - P`, 16-bit data, checked.
    pub const R_AARCH64_PREL16: u32 = 262;
    /// MOVZ/MOVK imm16 = `X[15:0]`, checked.
    pub const R_AARCH64_MOVW_UABS_G0: u32 = 263;
    /// MOVK imm16 = `X[15:0]`.
    pub const R_AARCH64_MOVW_UABS_G0_NC: u32 = 264;
    /// MOVZ/MOVK imm16 = `X[31:16]`, checked.
    pub const R_AARCH64_MOVW_UABS_G1: u32 = 265;
    /// MOVK imm16 = `X[31:16]`.
    pub const R_AARCH64_MOVW_UABS_G1_NC: u32 = 266;
    /// MOVZ/MOVK imm16 = `X[47:32]`, checked.
    pub const R_AARCH64_MOVW_UABS_G2: u32 = 267;
    /// MOVK imm16 = `X[47:32]`.
    pub const R_AARCH64_MOVW_UABS_G2_NC: u32 = 268;
    /// MOVZ/MOVK imm16 = `X[63:48]`.
    pub const R_AARCH64_MOVW_UABS_G3: u32 = 269;
    /// LDR (literal) imm19 = `(S + A - P)[20:2]`.
    pub const R_AARCH64_LD_PREL_LO19: u32 = 273;
    /// ADR imm21 = `S + A - P`.
    pub const R_AARCH64_ADR_PREL_LO21: u32 = 274;
    /// ADRP imm21 = `(Page(S + A) - Page(P))[32:12]`, checked.
    pub const R_AARCH64_ADR_PREL_PG_HI21: u32 = 275;
    /// ADRP imm21 = `(Page(S + A) - Page(P))[32:12]`.
    pub const R_AARCH64_ADR_PREL_PG_HI21_NC: u32 = 276;
    /// ADD imm12 = `(S + A)[11:0]`.
    pub const R_AARCH64_ADD_ABS_LO12_NC: u32 = 277;
    /// LD/ST byte imm12 = `(S + A)[11:0]`.
    pub const R_AARCH64_LDST8_ABS_LO12_NC: u32 = 278;
    /// TBZ/TBNZ imm14 = `(S + A - P)[15:2]`.
    pub const R_AARCH64_TSTBR14: u32 = 279;
    /// B.cond/CBZ/CBNZ imm19 = `(S + A - P)[20:2]`.
    pub const R_AARCH64_CONDBR19: u32 = 280;
    /// B imm26 = `(S + A - P)[27:2]`.
    pub const R_AARCH64_JUMP26: u32 = 282;
    /// BL imm26 = `(S + A - P)[27:2]`.
    pub const R_AARCH64_CALL26: u32 = 283;
    /// LD/ST halfword imm12 = `(S + A)[11:1]`.
    pub const R_AARCH64_LDST16_ABS_LO12_NC: u32 = 284;
    /// LD/ST word imm12 = `(S + A)[11:2]`.
    pub const R_AARCH64_LDST32_ABS_LO12_NC: u32 = 285;
    /// LD/ST doubleword imm12 = `(S + A)[11:3]`.
    pub const R_AARCH64_LDST64_ABS_LO12_NC: u32 = 286;
    /// MOVN/MOVZ imm16 = `(S + A - P)[15:0]`, checked (signed 17 bits).
    pub const R_AARCH64_MOVW_PREL_G0: u32 = 287;
    /// MOVK imm16 = `(S + A - P)[15:0]`.
    pub const R_AARCH64_MOVW_PREL_G0_NC: u32 = 288;
    /// MOVN/MOVZ imm16 = `(S + A - P)[31:16]`, checked (signed 33 bits).
    pub const R_AARCH64_MOVW_PREL_G1: u32 = 289;
    /// MOVK imm16 = `(S + A - P)[31:16]`.
    pub const R_AARCH64_MOVW_PREL_G1_NC: u32 = 290;
    /// MOVN/MOVZ imm16 = `(S + A - P)[47:32]`, checked (signed 49 bits).
    pub const R_AARCH64_MOVW_PREL_G2: u32 = 291;
    /// MOVK imm16 = `(S + A - P)[47:32]`.
    pub const R_AARCH64_MOVW_PREL_G2_NC: u32 = 292;
    /// MOVN/MOVZ imm16 = `(S + A - P)[63:48]`.
    pub const R_AARCH64_MOVW_PREL_G3: u32 = 293;
    /// LD/ST quadword imm12 = `(S + A)[11:4]`.
    pub const R_AARCH64_LDST128_ABS_LO12_NC: u32 = 299;
    /// ADRP imm21 = `(Page(G(GDAT(S + A))) - Page(P))[32:12]`, checked.
    pub const R_AARCH64_ADR_GOT_PAGE: u32 = 311;
    /// LDR imm12 = `G(GDAT(S + A))[11:3]`.
    pub const R_AARCH64_LD64_GOT_LO12_NC: u32 = 312;
    /// LDR imm12 = `(G(GDAT(S + A)) - Page(GOT))[14:3]`, checked.
    pub const R_AARCH64_LD64_GOTPAGE_LO15: u32 = 313;
    /// ADRP imm21 = `(Page(G(GTLSIDX(S, A))) - Page(P))[32:12]`, checked.
    pub const R_AARCH64_TLSGD_ADR_PAGE21: u32 = 513;
    /// ADD imm12 = `G(GTLSIDX(S, A))[11:0]`.
    pub const R_AARCH64_TLSGD_ADD_LO12_NC: u32 = 514;
    /// ADRP imm21 = `(Page(G(GTPREL(S + A))) - Page(P))[32:12]`, checked.
    pub const R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21: u32 = 541;
    /// LDR imm12 = `G(GTPREL(S + A))[11:3]`.
    pub const R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC: u32 = 542;
    /// MOVN/MOVZ imm16 = `TPREL(S + A)[47:32]`, checked (signed 49 bits).
    pub const R_AARCH64_TLSLE_MOVW_TPREL_G2: u32 = 544;
    /// MOVN/MOVZ imm16 = `TPREL(S + A)[31:16]`, checked (signed 33 bits).
    pub const R_AARCH64_TLSLE_MOVW_TPREL_G1: u32 = 545;
    /// MOVK imm16 = `TPREL(S + A)[31:16]`.
    pub const R_AARCH64_TLSLE_MOVW_TPREL_G1_NC: u32 = 546;
    /// MOVN/MOVZ imm16 = `TPREL(S + A)[15:0]`, checked (signed 17 bits).
    pub const R_AARCH64_TLSLE_MOVW_TPREL_G0: u32 = 547;
    /// MOVK imm16 = `TPREL(S + A)[15:0]`.
    pub const R_AARCH64_TLSLE_MOVW_TPREL_G0_NC: u32 = 548;
    /// ADD imm12 = `TPREL(S + A)[23:12]`, checked.
    pub const R_AARCH64_TLSLE_ADD_TPREL_HI12: u32 = 549;
    /// ADD imm12 = `TPREL(S + A)[11:0]`, checked.
    pub const R_AARCH64_TLSLE_ADD_TPREL_LO12: u32 = 550;
    /// ADD imm12 = `TPREL(S + A)[11:0]`.
    pub const R_AARCH64_TLSLE_ADD_TPREL_LO12_NC: u32 = 551;
    /// ADRP imm21 = `(Page(G(GTLSDESC(S + A))) - Page(P))[32:12]`, checked.
    pub const R_AARCH64_TLSDESC_ADR_PAGE21: u32 = 562;
    /// LDR imm12 = `G(GTLSDESC(S + A))[11:3]`.
    pub const R_AARCH64_TLSDESC_LD64_LO12: u32 = 563;
    /// ADD imm12 = `G(GTLSDESC(S + A))[11:0]`.
    pub const R_AARCH64_TLSDESC_ADD_LO12: u32 = 564;
    /// Marks the `blr` of a TLS descriptor call: no fixup.
    pub const R_AARCH64_TLSDESC_CALL: u32 = 569;
}

use r_type::*;

/// How `X` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Formula {
    /// No value (marker relocations).
    None,
    /// `S + A`.
    Abs,
    /// `S + A - P`.
    Prel,
    /// `Page(S + A) - Page(P)`.
    Page,
    /// `G`: the address of the GOT entry, IE slot or descriptor.
    Got,
    /// `Page(G) - Page(P)`.
    GotPage,
    /// `G - Page(GOT)`.
    GotRelPage,
    /// `TPREL(S) + A` (the target is the signed thread-pointer offset).
    Tprel,
}

/// Where the bits of `X` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// Nothing is written (marker relocations).
    None,
    /// The whole 8-byte place (low 64 bits of `X`).
    Data64,
    /// The whole 4-byte place (low 32 bits of `X`).
    Data32,
    /// The whole 2-byte place (low 16 bits of `X`).
    Data16,
    /// B/BL `imm26` (bits 25:0) = `X[27:2]`.
    Imm26,
    /// B.cond/CBZ `imm19` (bits 23:5) = `X[20:2]`.
    Imm19,
    /// TBZ `imm14` (bits 18:5) = `X[15:2]`.
    Imm14,
    /// ADR/ADRP `immhi:immlo` (bits 23:5, 30:29) = `X[shift + 20:shift]`.
    Adr {
        /// 0 for ADR, 12 for ADRP.
        shift: u8,
    },
    /// ADD/LDR/STR `imm12` (bits 21:10) = `X[hi:lo]`.
    Imm12 {
        /// Lowest bit of `X` taken (log2 of the access size, or 12 for `HI12`).
        lo: u8,
        /// Highest bit of `X` taken (11, 14 for `LO15`, 23 for `HI12`).
        hi: u8,
    },
    /// MOVZ/MOVK `imm16` (bits 20:5) = `X[shift + 15:shift]`; the opcode is kept.
    Movw {
        /// 0, 16, 32 or 48.
        shift: u8,
    },
    /// As [`Field::Movw`], and a MOVZ/MOVN becomes MOVN holding
    /// `(!X)[shift + 15:shift]` when `X < 0`, MOVZ otherwise (a MOVK is kept).
    MovwSigned {
        /// 0, 16, 32 or 48.
        shift: u8,
    },
}

/// One row of the table: everything needed to apply a relocation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelocInfo {
    /// Raw ELF `r_type`.
    pub r_type: u32,
    /// psABI name (`"R_AARCH64_CALL26"`).
    pub name: &'static str,
    /// How `X` is computed.
    pub formula: Formula,
    /// Where its bits go.
    pub field: Field,
    /// Width of the place in bytes (0 for markers).
    pub width: u32,
    /// Inclusive range `X` must lie in, or `None` for no check.
    pub range: Option<(i128, i128)>,
    /// `X` must be a multiple of this.
    pub align: u32,
    /// Needs a GOT entry, IE slot or TLS descriptor (pass its address as the target).
    pub got: bool,
    /// What the linker passes as the target and what it must create for it.
    pub target: EdgeTarget,
    /// Accepted instructions as `(mask, bits)`: `insn & mask == bits` for one of them. Empty for data.
    pub insns: &'static [(u32, u32)],
    /// What the accepted instructions are, for error messages.
    pub insn_desc: &'static str,
    /// The columns above as [`RelocInfo::apply_values`]'s common case
    /// reads them.
    fast: Fast,
}

/// A row as 64-bit masks and bounds, made from it once ([`Fast::of`]): the
/// common case of a fixup — `X` fits in 64 bits, in range, aligned, the
/// expected instruction at the place — checked with 64-bit compares and
/// written without a second match on the field or a loop over the
/// accepted instructions. Anything else goes the row's exact way, which
/// names the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fast {
    /// How the place is written.
    store: Store,
    /// `X - min` (wrapping) must not exceed `span` (`u64::MAX`: no check).
    min: i64,
    span: u64,
    /// Whether a range is checked: `X` must then fit in 64 bits exactly.
    checked: bool,
    /// `align - 1`: these bits of `X` must be clear.
    align_mask: u64,
    /// A GOT formula: the addend must be 0.
    no_addend: bool,
    /// Accepted instructions: `insn & mask == bits` for one of the two
    /// (the second repeats the first when the row has one).
    insns: [(u32, u32); 2],
}

/// How [`Fast`] writes a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Store {
    /// A marker: nothing.
    None,
    /// Data of 8, 4 or 2 bytes: the low bits of `X`.
    Data64,
    Data32,
    Data16,
    /// An instruction field: the instruction keeps the bits of `keep`
    /// and takes `(X >> shift) & mask` at bit `pos`.
    Bits {
        shift: u8,
        mask: u32,
        pos: u8,
        keep: u32,
    },
    /// ADR/ADRP's `immhi:immlo`: [`encode`] of [`Field::Adr`], the field
    /// known here (the most common instruction field, with `imm12`).
    Adr {
        shift: u8,
    },
    /// An instruction field [`encode`] writes (signed MOVW).
    Encode,
}

/// [`Store::Bits`] for a field of `width_mask` at bit `pos` taking
/// `(X >> shift) & mask`.
const fn bits(shift: u8, mask: u32, pos: u8, width_mask: u32) -> Store {
    Store::Bits {
        shift,
        mask,
        pos,
        keep: !(width_mask << pos),
    }
}

impl Fast {
    /// The form of a row with these columns.
    const fn of(
        formula: Formula,
        field: Field,
        range: Option<(i128, i128)>,
        align: u32,
        insns: &'static [(u32, u32)],
    ) -> Fast {
        let store = match field {
            Field::None => Store::None,
            Field::Data64 => Store::Data64,
            Field::Data32 => Store::Data32,
            Field::Data16 => Store::Data16,
            Field::Imm26 => bits(2, 0x03ff_ffff, 0, 0x03ff_ffff),
            Field::Imm19 => bits(2, 0x7_ffff, 5, 0x7_ffff),
            Field::Imm14 => bits(2, 0x3fff, 5, 0x3fff),
            // The whole imm12 is rewritten, whatever part of `X` it takes.
            Field::Imm12 { lo, hi } => bits(lo, (1 << (hi - lo + 1)) - 1, 10, 0xfff),
            Field::Movw { shift } => bits(shift, 0xffff, 5, 0xffff),
            Field::Adr { shift } => Store::Adr { shift },
            Field::MovwSigned { .. } => Store::Encode,
        };
        // Every range of the table lies inside `i64` (the table's test
        // checks).
        let (min, span, checked) = match range {
            Some((min, max)) => (min as i64, (max - min) as u64, true),
            None => (i64::MIN, u64::MAX, false),
        };
        let insns = match insns {
            [] => [(0, 0); 2],
            [one] => [*one, *one],
            [one, two, ..] => [*one, *two],
        };
        Fast {
            store,
            min,
            span,
            checked,
            align_mask: align as u64 - 1,
            no_addend: matches!(
                formula,
                Formula::Got | Formula::GotPage | Formula::GotRelPage
            ),
            insns,
        }
    }

    /// The instruction place at `offset` in `block` (address `place`) and
    /// the instruction in it, if in the block, aligned and accepted.
    #[inline(always)]
    fn insn_place<'b>(
        &self,
        block: &'b mut [u8],
        offset: u64,
        place: u64,
    ) -> Option<(&'b mut [u8; 4], u32)> {
        let bytes = place_array::<4>("", block, offset).ok()?;
        let insn = u32::from_le_bytes(*bytes);
        let [(m0, b0), (m1, b1)] = self.insns;
        (place.is_multiple_of(4) && (insn & m0 == b0 || insn & m1 == b1)).then_some((bytes, insn))
    }
}

const ADRP: &[(u32, u32)] = &[(0x9f00_0000, 0x9000_0000)];
const ADR: &[(u32, u32)] = &[(0x9f00_0000, 0x1000_0000)];
const B_BL: &[(u32, u32)] = &[(0x7c00_0000, 0x1400_0000)];
const BCOND_CBZ: &[(u32, u32)] = &[(0xff00_0010, 0x5400_0000), (0x7e00_0000, 0x3400_0000)];
/// `ldr`/`ldrsw`/`prfm` (literal), general and SIMD registers.
const LDR_LIT: &[(u32, u32)] = &[(0x3b00_0000, 0x1800_0000)];
const TBZ: &[(u32, u32)] = &[(0x7e00_0000, 0x3600_0000)];
const ADD_IMM: &[(u32, u32)] = &[(0x1f80_0000, 0x1100_0000)];
const LDST_UIMM: &[(u32, u32)] = &[(0x3b00_0000, 0x3900_0000)];
/// 64-bit `ldr Xt, [Xn, #imm]` only: GOT, IE and descriptor loads.
const LDR_X: &[(u32, u32)] = &[(0xffc0_0000, 0xf940_0000)];
/// MOVN (opc 00), MOVZ (10), MOVK (11); opc 01 is unallocated.
const MOVW: &[(u32, u32)] = &[(0x7f80_0000, 0x1280_0000), (0x5f80_0000, 0x5280_0000)];

const fn pow2(n: u32) -> i128 {
    1i128 << n
}

/// What the target of a type is, decided by its `r_type`.
const fn target_of(r_type: u32) -> EdgeTarget {
    match r_type {
        R_AARCH64_NONE | R_AARCH64_TLSDESC_CALL => EdgeTarget::None,
        R_AARCH64_CALL26 | R_AARCH64_JUMP26 => EdgeTarget::Branch,
        R_AARCH64_ADR_GOT_PAGE | R_AARCH64_LD64_GOT_LO12_NC | R_AARCH64_LD64_GOTPAGE_LO15 => {
            EdgeTarget::GotEntry {
                addend_in_entry: true,
            }
        }
        R_AARCH64_TLSGD_ADR_PAGE21 | R_AARCH64_TLSGD_ADD_LO12_NC => EdgeTarget::TlsGdPair,
        R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21 | R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC => {
            EdgeTarget::TlsIeEntry
        }
        R_AARCH64_TLSDESC_ADR_PAGE21 | R_AARCH64_TLSDESC_LD64_LO12 | R_AARCH64_TLSDESC_ADD_LO12 => {
            EdgeTarget::TlsDescriptor
        }
        R_AARCH64_TLSLE_MOVW_TPREL_G2
        | R_AARCH64_TLSLE_MOVW_TPREL_G1
        | R_AARCH64_TLSLE_MOVW_TPREL_G1_NC
        | R_AARCH64_TLSLE_MOVW_TPREL_G0
        | R_AARCH64_TLSLE_MOVW_TPREL_G0_NC
        | R_AARCH64_TLSLE_ADD_TPREL_HI12
        | R_AARCH64_TLSLE_ADD_TPREL_LO12
        | R_AARCH64_TLSLE_ADD_TPREL_LO12_NC => EdgeTarget::TpOffset,
        _ => EdgeTarget::Symbol,
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one table row, one argument per column"
)]
const fn row(
    r_type: u32,
    name: &'static str,
    formula: Formula,
    field: Field,
    range: Option<(i128, i128)>,
    align: u32,
    insns: &'static [(u32, u32)],
    insn_desc: &'static str,
) -> RelocInfo {
    let width = match field {
        Field::None => 0,
        Field::Data64 => 8,
        Field::Data16 => 2,
        _ => 4,
    };
    let target = target_of(r_type);
    let got = matches!(
        target,
        EdgeTarget::GotEntry { .. }
            | EdgeTarget::TlsIeEntry
            | EdgeTarget::TlsDescriptor
            | EdgeTarget::TlsGdPair
    );
    RelocInfo {
        r_type,
        name,
        formula,
        field,
        width,
        range,
        align,
        got,
        target,
        insns,
        insn_desc,
        fast: Fast::of(formula, field, range, align, insns),
    }
}

/// [`row`] with the psABI name spelled once: taken from the constant.
macro_rules! row {
    ($r_type:ident, $($rest:expr),+ $(,)?) => {
        row($r_type, stringify!($r_type), $($rest),+)
    };
}

const fn signed(bits: u32) -> Option<(i128, i128)> {
    Some((-pow2(bits - 1), pow2(bits - 1) - 1))
}
const fn unsigned(bits: u32) -> Option<(i128, i128)> {
    Some((0, pow2(bits) - 1))
}
/// Data fields accept both signed and unsigned readings: `[-2^(n-1), 2^n)`.
const fn either(bits: u32) -> Option<(i128, i128)> {
    Some((-pow2(bits - 1), pow2(bits) - 1))
}
const PAGE33: Option<(i128, i128)> = signed(33);
const fn lo(lo: u8) -> Field {
    Field::Imm12 { lo, hi: 11 }
}
const ADD_D: &str = "ADD (immediate)";
const LDST_D: &str = "LDR/STR (unsigned immediate)";
const LDR_D: &str = "LDR Xt (unsigned immediate)";
const MOVW_D: &str = "MOVN/MOVZ/MOVK";

/// The table, sorted by `r_type`.
#[rustfmt::skip]
pub static RELOCS: &[RelocInfo] = &[
    row!(R_AARCH64_NONE, Formula::None, Field::None, None, 1, &[], "nothing"),
    row!(R_AARCH64_ABS64, Formula::Abs, Field::Data64, None, 1, &[], "data"),
    row!(R_AARCH64_ABS32, Formula::Abs, Field::Data32, either(32), 1, &[], "data"),
    row!(R_AARCH64_ABS16, Formula::Abs, Field::Data16, either(16), 1, &[], "data"),
    row!(R_AARCH64_PREL64, Formula::Prel, Field::Data64, None, 1, &[], "data"),
    row!(R_AARCH64_PREL32, Formula::Prel, Field::Data32, either(32), 1, &[], "data"),
    row!(R_AARCH64_PREL16, Formula::Prel, Field::Data16, either(16), 1, &[], "data"),
    row!(R_AARCH64_MOVW_UABS_G0, Formula::Abs, Field::Movw { shift: 0 }, unsigned(16), 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_UABS_G0_NC, Formula::Abs, Field::Movw { shift: 0 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_UABS_G1, Formula::Abs, Field::Movw { shift: 16 }, unsigned(32), 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_UABS_G1_NC, Formula::Abs, Field::Movw { shift: 16 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_UABS_G2, Formula::Abs, Field::Movw { shift: 32 }, unsigned(48), 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_UABS_G2_NC, Formula::Abs, Field::Movw { shift: 32 }, None, 1, MOVW, MOVW_D),
    // Every 64-bit value fits: no check (AAELF64).
    row!(R_AARCH64_MOVW_UABS_G3, Formula::Abs, Field::Movw { shift: 48 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_LD_PREL_LO19, Formula::Prel, Field::Imm19, signed(21), 4, LDR_LIT, "LDR (literal)"),
    row!(R_AARCH64_ADR_PREL_LO21, Formula::Prel, Field::Adr { shift: 0 }, signed(21), 1, ADR, "ADR"),
    row!(R_AARCH64_ADR_PREL_PG_HI21, Formula::Page, Field::Adr { shift: 12 }, PAGE33, 1, ADRP, "ADRP"),
    row!(R_AARCH64_ADR_PREL_PG_HI21_NC, Formula::Page, Field::Adr { shift: 12 }, None, 1, ADRP, "ADRP"),
    row!(R_AARCH64_ADD_ABS_LO12_NC, Formula::Abs, lo(0), None, 1, ADD_IMM, ADD_D),
    row!(R_AARCH64_LDST8_ABS_LO12_NC, Formula::Abs, lo(0), None, 1, LDST_UIMM, LDST_D),
    row!(R_AARCH64_TSTBR14, Formula::Prel, Field::Imm14, signed(16), 4, TBZ, "TBZ/TBNZ"),
    row!(R_AARCH64_CONDBR19, Formula::Prel, Field::Imm19, signed(21), 4, BCOND_CBZ, "B.cond/CBZ/CBNZ"),
    row!(R_AARCH64_JUMP26, Formula::Prel, Field::Imm26, signed(28), 4, B_BL, "B/BL"),
    row!(R_AARCH64_CALL26, Formula::Prel, Field::Imm26, signed(28), 4, B_BL, "B/BL"),
    row!(R_AARCH64_LDST16_ABS_LO12_NC, Formula::Abs, lo(1), None, 2, LDST_UIMM, LDST_D),
    row!(R_AARCH64_LDST32_ABS_LO12_NC, Formula::Abs, lo(2), None, 4, LDST_UIMM, LDST_D),
    row!(R_AARCH64_LDST64_ABS_LO12_NC, Formula::Abs, lo(3), None, 8, LDST_UIMM, LDST_D),
    row!(R_AARCH64_MOVW_PREL_G0, Formula::Prel, Field::MovwSigned { shift: 0 }, signed(17), 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_PREL_G0_NC, Formula::Prel, Field::Movw { shift: 0 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_PREL_G1, Formula::Prel, Field::MovwSigned { shift: 16 }, signed(33), 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_PREL_G1_NC, Formula::Prel, Field::Movw { shift: 16 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_PREL_G2, Formula::Prel, Field::MovwSigned { shift: 32 }, signed(49), 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_PREL_G2_NC, Formula::Prel, Field::Movw { shift: 32 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_MOVW_PREL_G3, Formula::Prel, Field::MovwSigned { shift: 48 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_LDST128_ABS_LO12_NC, Formula::Abs, lo(4), None, 16, LDST_UIMM, LDST_D),
    row!(R_AARCH64_ADR_GOT_PAGE, Formula::GotPage, Field::Adr { shift: 12 }, PAGE33, 1, ADRP, "ADRP"),
    row!(R_AARCH64_LD64_GOT_LO12_NC, Formula::Got, lo(3), None, 8, LDR_X, LDR_D),
    row!(R_AARCH64_LD64_GOTPAGE_LO15, Formula::GotRelPage, Field::Imm12 { lo: 3, hi: 14 },
        unsigned(15), 8, LDR_X, LDR_D),
    row!(R_AARCH64_TLSGD_ADR_PAGE21, Formula::GotPage, Field::Adr { shift: 12 }, PAGE33, 1, ADRP, "ADRP"),
    row!(R_AARCH64_TLSGD_ADD_LO12_NC, Formula::Got, lo(0), None, 1, ADD_IMM, ADD_D),
    row!(R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21, Formula::GotPage, Field::Adr { shift: 12 },
        PAGE33, 1, ADRP, "ADRP"),
    row!(R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC, Formula::Got, lo(3), None, 8, LDR_X, LDR_D),
    row!(R_AARCH64_TLSLE_MOVW_TPREL_G2, Formula::Tprel, Field::MovwSigned { shift: 32 }, signed(49), 1, MOVW, MOVW_D),
    row!(R_AARCH64_TLSLE_MOVW_TPREL_G1, Formula::Tprel, Field::MovwSigned { shift: 16 }, signed(33), 1, MOVW, MOVW_D),
    row!(R_AARCH64_TLSLE_MOVW_TPREL_G1_NC, Formula::Tprel, Field::Movw { shift: 16 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_TLSLE_MOVW_TPREL_G0, Formula::Tprel, Field::MovwSigned { shift: 0 }, signed(17), 1, MOVW, MOVW_D),
    row!(R_AARCH64_TLSLE_MOVW_TPREL_G0_NC, Formula::Tprel, Field::Movw { shift: 0 }, None, 1, MOVW, MOVW_D),
    row!(R_AARCH64_TLSLE_ADD_TPREL_HI12, Formula::Tprel, Field::Imm12 { lo: 12, hi: 23 },
        unsigned(24), 1, ADD_IMM, ADD_D),
    row!(R_AARCH64_TLSLE_ADD_TPREL_LO12, Formula::Tprel, lo(0), unsigned(12), 1, ADD_IMM, ADD_D),
    row!(R_AARCH64_TLSLE_ADD_TPREL_LO12_NC, Formula::Tprel, lo(0), None, 1, ADD_IMM, ADD_D),
    row!(R_AARCH64_TLSDESC_ADR_PAGE21, Formula::GotPage, Field::Adr { shift: 12 }, PAGE33, 1, ADRP, "ADRP"),
    row!(R_AARCH64_TLSDESC_LD64_LO12, Formula::Got, lo(3), None, 8, LDR_X, LDR_D),
    row!(R_AARCH64_TLSDESC_ADD_LO12, Formula::Got, lo(0), None, 1, ADD_IMM, ADD_D),
    // Marks the `blr` for relaxation; the place is left alone.
    row!(R_AARCH64_TLSDESC_CALL, Formula::None, Field::None, None, 1, &[], "nothing"),
];

/// The generic form of a row (see [`EdgeForm`]).
const fn form_of(formula: Formula, field: Field) -> EdgeForm {
    match (formula, field) {
        (_, Field::None | Field::Data64) => EdgeForm::Full,
        (Formula::Prel | Formula::Page | Formula::GotPage, _) => EdgeForm::PcRelative,
        (_, Field::Imm12 { .. }) => EdgeForm::PageOffset,
        (_, Field::Movw { .. } | Field::MovwSigned { .. }) => EdgeForm::AbsoluteInsn,
        _ => EdgeForm::Absolute { signed: false },
    }
}

/// The generic descriptors of [`RELOCS`], index for index (the rows of
/// [`crate::edge::ALL_EDGES`] from [`crate::edge::AARCH64_ROW`]).
pub(crate) const EDGES: [EdgeDesc; RELOCS.len()] = {
    let mut out = [EdgeDesc::EMPTY; RELOCS.len()];
    let mut i = 0;
    while i < RELOCS.len() {
        let r = &RELOCS[i];
        out[i] = EdgeDesc {
            r_type: r.r_type,
            name: r.name,
            width: r.width as u8,
            pc_relative: matches!(r.formula, Formula::Prel | Formula::Page | Formula::GotPage),
            target: r.target,
            form: form_of(r.formula, r.field),
            uses_got_base: matches!(r.formula, Formula::GotRelPage),
            relaxable: relaxed_to(r.r_type).is_some(),
            index: i as u16,
        };
        i += 1;
    }
    out
};

/// Looks up a relocation type in [`RELOCS`]. `None` means kiln does not
/// support it; the linker reports it with the object, section, offset and
/// type it came from.
pub fn lookup(r_type: u32) -> Option<&'static RelocInfo> {
    RELOCS
        .binary_search_by_key(&r_type, |r| r.r_type)
        .ok()
        .map(|i| &RELOCS[i])
}

/// Applies relocation `r_type` at `offset` in `block`, whose byte 0 is at
/// address `block_addr`, with target `s` and addend `a`; the GOT base is 0
/// (use [`RelocInfo::apply_values`] for `LD64_GOTPAGE_LO15`).
///
/// # Errors
/// [`FixupError::Unsupported`] for a type not in the table; otherwise as
/// [`RelocInfo::apply`].
pub fn apply(
    r_type: u32,
    block: &mut [u8],
    block_addr: u64,
    offset: u64,
    s: u64,
    a: i64,
) -> Result<(), FixupError> {
    lookup(r_type)
        .ok_or(FixupError::Unsupported {
            isa: "aarch64",
            r_type,
        })?
        .apply(block, block_addr, offset, s, a)
}

const fn page(x: i128) -> i128 {
    x & !0xfff
}

/// MOVZ/MOVN/MOVK `opc` (bits 30:29).
const MOVW_OPC: u32 = 3 << 29;
const MOVK_OPC: u32 = 3 << 29;
const MOVZ_OPC: u32 = 2 << 29;

/// Writes the bits of `x` into instruction `insn` for `field` (data and
/// marker fields are not instructions and are returned unchanged).
// Always inlined: per fixup, after the caller's own match on the field.
#[inline(always)]
pub(crate) const fn encode(field: Field, insn: u32, x: i128) -> u32 {
    let x = x as u64; // two's complement: the field takes its low bits
    match field {
        Field::None | Field::Data64 | Field::Data32 | Field::Data16 => insn,
        Field::Imm26 => (insn & !0x03ff_ffff) | ((x >> 2) as u32 & 0x03ff_ffff),
        Field::Imm19 => (insn & !(0x7_ffff << 5)) | (((x >> 2) as u32 & 0x7_ffff) << 5),
        Field::Imm14 => (insn & !(0x3fff << 5)) | (((x >> 2) as u32 & 0x3fff) << 5),
        Field::Adr { shift } => {
            let imm = (x >> shift) as u32 & 0x1f_ffff;
            (insn & !((3 << 29) | (0x7_ffff << 5))) | ((imm & 3) << 29) | ((imm >> 2) << 5)
        }
        Field::Imm12 { lo, hi } => {
            let mask = (1u64 << (hi - lo + 1)) - 1;
            (insn & !(0xfff << 10)) | ((((x >> lo) & mask) as u32) << 10)
        }
        Field::Movw { shift } => movw(insn, x, shift),
        Field::MovwSigned { shift } => {
            if insn & MOVW_OPC == MOVK_OPC {
                movw(insn, x, shift)
            } else if (x as i64) < 0 {
                // MOVN (opc 00) of the inverted value.
                movw(insn & !MOVW_OPC, !x, shift)
            } else {
                movw((insn & !MOVW_OPC) | MOVZ_OPC, x, shift)
            }
        }
    }
}

/// MOVZ/MOVN/MOVK's imm16 (bits 20:5) set to bits `shift..shift + 16` of `x`.
const fn movw(insn: u32, x: u64, shift: u8) -> u32 {
    (insn & !(0xffff << 5)) | ((((x >> shift) & 0xffff) as u32) << 5)
}

impl RelocInfo {
    /// `X` for these inputs, computed without wrap-around.
    #[inline]
    pub fn value_of(&self, v: &FixupValues) -> i128 {
        let t = i128::from(v.target);
        let sa = t + i128::from(v.addend);
        let p = i128::from(v.place);
        match self.formula {
            Formula::None => 0,
            Formula::Abs => sa,
            Formula::Prel => sa - p,
            Formula::Page => page(sa) - page(p),
            Formula::Got => t,
            Formula::GotPage => page(t) - page(p),
            Formula::GotRelPage => t - page(i128::from(v.got)),
            Formula::Tprel => i128::from(v.target as i64) + i128::from(v.addend),
        }
    }

    /// `X` for place address `p`, target `s` and addend `a` (GOT base 0).
    pub fn value(&self, p: u64, s: u64, a: i64) -> i128 {
        self.value_of(&values(p, s, a))
    }

    /// Checks `x` against the range and alignment of this type.
    ///
    /// # Errors
    /// [`FixupError::OutOfRange`] or [`FixupError::Misaligned`].
    pub fn check(&self, x: i128) -> Result<(), FixupError> {
        if let Some((min, max)) = self.range
            && !(min..=max).contains(&x)
        {
            return Err(FixupError::OutOfRange {
                reloc: self.name,
                value: x,
                min,
                max,
            });
        }
        // `align` is a power of two (the table's test checks): a multiple
        // of it has its low bits clear, negative or not (two's complement),
        // without an `i128` division per fixup.
        if self.align > 1 && x & i128::from(self.align - 1) != 0 {
            return Err(FixupError::Misaligned {
                reloc: self.name,
                value: x,
                align: self.align,
            });
        }
        Ok(())
    }

    /// Applies this relocation at `offset` in `block` (byte 0 at address
    /// `block_addr`) with target `s` and addend `a` (GOT base 0).
    ///
    /// # Errors
    /// As [`RelocInfo::apply_values`].
    pub fn apply(
        &self,
        block: &mut [u8],
        block_addr: u64,
        offset: u64,
        s: u64,
        a: i64,
    ) -> Result<(), FixupError> {
        let p = block_addr.wrapping_add(offset);
        self.apply_values(block, offset, &values(p, s, a))
    }

    /// Applies this relocation at `offset` in `block`; `v.place` is the
    /// place's address.
    ///
    /// # Errors
    /// [`FixupError::OutOfBounds`] if the place runs past the block,
    /// [`FixupError::Misaligned`] if an instruction place is not 4-byte
    /// aligned or `X` is misaligned, [`FixupError::OutOfRange`] on overflow,
    /// [`FixupError::BadInstruction`] if the instruction at the place is not
    /// one this type applies to, [`FixupError::AddendInGotEntry`] for a GOT
    /// formula with a non-zero addend. The block is unchanged on error.
    #[inline]
    pub fn apply_values(
        &self,
        block: &mut [u8],
        offset: u64,
        v: &FixupValues,
    ) -> Result<(), FixupError> {
        if self.apply_fast(block, offset, v) {
            return Ok(());
        }
        self.apply_exact(block, offset, v)
    }

    /// The common case of [`RelocInfo::apply_values`], from the row's
    /// [`Fast`] form: `true` once the place is written. `false` (nothing
    /// written) for whatever it does not decide — an `X` out of range or
    /// misaligned, a misaligned place, another instruction, an addend on
    /// a GOT formula, a place past the block — which
    /// [`RelocInfo::apply_exact`] then refuses with its error. Where both
    /// write, they write the same bits: `X`'s low 64 bits are the same
    /// computed exactly or narrowed, and [`Store::Bits`] is [`encode`]'s
    /// arithmetic for those fields (the golden tests go through here).
    #[inline(always)]
    fn apply_fast(&self, block: &mut [u8], offset: u64, v: &FixupValues) -> bool {
        let f = &self.fast;
        if f.no_addend && v.addend != 0 {
            return false;
        }
        let exact = self.value_of(v);
        let x = exact as i64;
        if (f.checked && i128::from(x) != exact)
            || (x.wrapping_sub(f.min) as u64) > f.span
            || (x as u64) & f.align_mask != 0
        {
            return false;
        }
        let insn_place = |block| f.insn_place(block, offset, v.place);
        match f.store {
            Store::None => true,
            Store::Data64 => place_array::<8>("", block, offset)
                .map(|p| *p = (x as u64).to_le_bytes())
                .is_ok(),
            Store::Data32 => place_array::<4>("", block, offset)
                .map(|p| *p = (x as u32).to_le_bytes())
                .is_ok(),
            Store::Data16 => place_array::<2>("", block, offset)
                .map(|p| *p = (x as u16).to_le_bytes())
                .is_ok(),
            Store::Bits {
                shift,
                mask,
                pos,
                keep,
            } => insn_place(block)
                .map(|(place, insn)| {
                    let bits = ((x as u64 >> shift) as u32) & mask;
                    *place = ((insn & keep) | (bits << pos)).to_le_bytes();
                })
                .is_some(),
            Store::Adr { shift } => insn_place(block)
                .map(|(place, insn)| {
                    *place = encode(Field::Adr { shift }, insn, exact).to_le_bytes();
                })
                .is_some(),
            Store::Encode => insn_place(block)
                .map(|(place, insn)| *place = encode(self.field, insn, exact).to_le_bytes())
                .is_some(),
        }
    }

    /// [`RelocInfo::apply_values`] computed on the exact `X` (`i128`),
    /// each check in turn: the error of the first that fails.
    #[cold]
    #[inline(never)]
    fn apply_exact(
        &self,
        block: &mut [u8],
        offset: u64,
        v: &FixupValues,
    ) -> Result<(), FixupError> {
        if self.width == 0 {
            return Ok(());
        }
        // `G(GDAT(S + A))`, `G(GTPREL(S + A))`, `G(GTLSDESC(S + A))`: the
        // addend belongs in the entry, and the entry passed in is the
        // symbol's own; refused rather than silently dropped.
        if v.addend != 0
            && matches!(
                self.formula,
                Formula::Got | Formula::GotPage | Formula::GotRelPage
            )
        {
            return Err(FixupError::AddendInGotEntry {
                reloc: self.name,
                addend: v.addend,
            });
        }
        // The place as a fixed-size array: one load and one store, no
        // `memcpy` call per fixup (bounds checked first, as before).
        match self.field {
            Field::None => {}
            Field::Data64 => {
                let place = place_array::<8>(self.name, block, offset)?;
                *place = (self.checked_value(v)? as u64).to_le_bytes();
            }
            Field::Data32 => {
                let place = place_array::<4>(self.name, block, offset)?;
                *place = (self.checked_value(v)? as u32).to_le_bytes();
            }
            Field::Data16 => {
                let place = place_array::<2>(self.name, block, offset)?;
                *place = (self.checked_value(v)? as u16).to_le_bytes();
            }
            field => {
                let place = place_array::<4>(self.name, block, offset)?;
                let x = self.checked_value(v)?;
                if !v.place.is_multiple_of(4) {
                    return Err(FixupError::Misaligned {
                        reloc: self.name,
                        value: i128::from(v.place),
                        align: 4,
                    });
                }
                let insn = u32::from_le_bytes(*place);
                if !self.insns.iter().any(|&(mask, bits)| insn & mask == bits) {
                    return Err(FixupError::BadInstruction {
                        reloc: self.name,
                        detail: self.insn_desc,
                    });
                }
                *place = encode(field, insn, x).to_le_bytes();
            }
        }
        Ok(())
    }

    /// `X`, checked against the range and alignment of this type.
    #[inline]
    fn checked_value(&self, v: &FixupValues) -> Result<i128, FixupError> {
        let x = self.value_of(v);
        self.check(x)?;
        Ok(x)
    }
}

/// The `N`-byte place at `offset` in `block`, or
/// [`FixupError::OutOfBounds`] naming `reloc` if it runs past the block.
#[inline]
fn place_array<'b, const N: usize>(
    reloc: &'static str,
    block: &'b mut [u8],
    offset: u64,
) -> Result<&'b mut [u8; N], FixupError> {
    let len = block.len() as u64;
    usize::try_from(offset)
        .ok()
        .and_then(|start| block.get_mut(start..start.checked_add(N)?))
        .and_then(|place| <&mut [u8; N]>::try_from(place).ok())
        .ok_or(FixupError::OutOfBounds {
            reloc,
            offset,
            width: N as u32,
            len,
        })
}

fn values(place: u64, target: u64, addend: i64) -> FixupValues {
    FixupValues {
        place,
        target,
        addend,
        got: 0,
        size: 0,
    }
}

/// What a relaxable type becomes (see the module's relaxation table). The
/// IE and descriptor sequences become local exec: valid when the symbol's
/// TP offset is fixed at link time (an executable image's static TLS block)
/// and every instruction of the sequence is relaxed. The descriptor
/// sequence's result register is `x0` by the ABI; the IE sequence keeps
/// each instruction's own register (compilers use one).
pub(crate) const fn relaxed_to(r_type: u32) -> Option<u32> {
    Some(match r_type {
        R_AARCH64_ADR_GOT_PAGE => R_AARCH64_ADR_PREL_PG_HI21,
        R_AARCH64_LD64_GOT_LO12_NC => R_AARCH64_ADD_ABS_LO12_NC,
        R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21 | R_AARCH64_TLSDESC_ADR_PAGE21 => {
            R_AARCH64_TLSLE_MOVW_TPREL_G1
        }
        R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC | R_AARCH64_TLSDESC_LD64_LO12 => {
            R_AARCH64_TLSLE_MOVW_TPREL_G0_NC
        }
        R_AARCH64_TLSDESC_ADD_LO12 | R_AARCH64_TLSDESC_CALL => R_AARCH64_NONE,
        _ => return None,
    })
}

const NOP: u32 = 0xd503_201f;

/// Rewrites the instruction at `offset` for relaxing `info` (see
/// [`relaxed_to`]). Returns `Ok(false)` (nothing changed) if the place does
/// not hold the instruction the type expects.
///
/// # Errors
/// [`FixupError::OutOfBounds`] if the instruction runs past `block`.
pub(crate) fn relax_insn(
    info: &RelocInfo,
    block: &mut [u8],
    offset: u64,
) -> Result<bool, FixupError> {
    let place = place_mut(info.name, block, offset, 4)?;
    let insn = u32::from_le_bytes([place[0], place[1], place[2], place[3]]);
    let expected = match info.r_type {
        R_AARCH64_TLSDESC_CALL => insn & 0xffff_fc1f == 0xd63f_0000, // blr Xn
        _ => info.insns.iter().any(|&(mask, bits)| insn & mask == bits),
    };
    if !expected {
        return Ok(false);
    }
    let new = match info.r_type {
        R_AARCH64_ADR_GOT_PAGE => insn,
        // Keep Rn (9:5) and Rt (4:0); imm12 is rewritten by the ADD fixup.
        R_AARCH64_LD64_GOT_LO12_NC => 0x9100_0000 | (insn & 0x3ff),
        R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21 => 0xd2a0_0000 | (insn & 0x1f),
        R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC => 0xf280_0000 | (insn & 0x1f),
        R_AARCH64_TLSDESC_ADR_PAGE21 => 0xd2a0_0000,
        R_AARCH64_TLSDESC_LD64_LO12 => 0xf280_0000,
        R_AARCH64_TLSDESC_ADD_LO12 | R_AARCH64_TLSDESC_CALL => NOP,
        _ => return Ok(false),
    };
    place.copy_from_slice(&new.to_le_bytes());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Aarch64, RelocArch};

    #[test]
    fn table_is_sorted_and_named_consistently() {
        assert!(RELOCS.windows(2).all(|w| w[0].r_type < w[1].r_type));
        for (i, r) in RELOCS.iter().enumerate() {
            assert!(r.name.starts_with("R_AARCH64_"), "{}", r.name);
            assert_eq!(lookup(r.r_type), Some(r));
            assert_eq!(
                (Aarch64::edges()[i].index, Aarch64::edges()[i].r_type),
                (i as u16 + crate::edge::AARCH64_ROW, r.r_type)
            );
            assert_eq!(
                r.insns.is_empty(),
                matches!(
                    r.field,
                    Field::None | Field::Data16 | Field::Data32 | Field::Data64
                ),
                "{}",
                r.name
            );
            // `RelocInfo::check` tests alignment with a mask.
            assert!(r.align.is_power_of_two(), "{}", r.name);
            // `Fast` checks ranges in 64 bits.
            if let Some((min, max)) = r.range {
                assert!(i64::try_from(min).is_ok() && i64::try_from(max).is_ok());
            }
            assert!(r.insns.len() <= 2, "{}: Fast keeps two", r.name);
        }
        assert_eq!(lookup(1), None);
        assert_eq!(lookup(1000), None);
    }

    /// Every type whose value is a GOT entry's (`G(GDAT(S + A))`,
    /// `G(GTPREL(S + A))`, `G(GTLSDESC(S + A))`, the GD pair) refuses a
    /// non-zero addend instead of dropping it; with addend 0 it applies.
    #[test]
    fn got_formulas_refuse_an_addend() {
        let mut refused = 0;
        for r in RELOCS {
            if !matches!(
                r.formula,
                Formula::Got | Formula::GotPage | Formula::GotRelPage
            ) {
                continue;
            }
            // The instruction the type expects, at a page-aligned place.
            let insn = r.insns.first().map_or(0, |&(_, bits)| bits);
            let mut b = insn.to_le_bytes();
            assert_eq!(
                r.apply_values(
                    &mut b,
                    0,
                    &FixupValues {
                        place: 0x1000,
                        target: 0x2000,
                        addend: 8,
                        got: 0x2000,
                        size: 0
                    }
                ),
                Err(FixupError::AddendInGotEntry {
                    reloc: r.name,
                    addend: 8
                }),
                "{}",
                r.name
            );
            assert_eq!(b, insn.to_le_bytes(), "{}: the place is unchanged", r.name);
            let ok = r.apply_values(
                &mut b,
                0,
                &FixupValues {
                    place: 0x1000,
                    target: 0x2000,
                    addend: 0,
                    got: 0x2000,
                    size: 0,
                },
            );
            assert_eq!(ok, Ok(()), "{}", r.name);
            refused += 1;
        }
        // ADR_GOT_PAGE, LD64_GOT_LO12_NC, LD64_GOTPAGE_LO15, the two
        // TLSGD, the two TLSIE and the three TLSDESC types.
        assert_eq!(refused, 10);
    }

    /// The common case ([`RelocInfo::apply_fast`] first) and the exact
    /// path alone give the same result and the same bytes for every row,
    /// on values near each range's ends and the 64-bit edges, places
    /// aligned or not, in the block or past it, the expected instructions
    /// and others (with random bits in their fields), addends or none.
    #[test]
    fn common_case_agrees_with_the_exact_path() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut fast_taken = 0;
        for r in RELOCS {
            let (min, max) = r.range.unwrap_or((-(1 << 40), 1 << 40));
            let xs = [0, 4, -4, 1, min, max, min - 1, max + 1, min + 4, max - 3];
            for round in 0..400 {
                let place = match round % 4 {
                    0 => 0x40_0000 + (next() & 0xffff_fffc),
                    1 => next(),
                    2 => next() & !3,
                    _ => 0x1000 + (next() & 0xfff),
                };
                let addend = if round % 3 == 0 {
                    0
                } else {
                    (next() as i64) >> (next() % 64)
                };
                let want = xs[round % xs.len()] as i64;
                let target = match round % 5 {
                    4 => next(),
                    3 => u64::MAX - (next() & 0xff),
                    _ => place.wrapping_add(want as u64).wrapping_sub(addend as u64),
                };
                let insn = match (r.insns, round % 3) {
                    ([], _) | (_, 0) => next() as u32,
                    (insns, _) => {
                        let (mask, bits) = insns[(next() as usize) % insns.len()];
                        (next() as u32 & !mask) | bits
                    }
                };
                let got = next() & 0xffff_f000;
                let v = FixupValues {
                    place,
                    target,
                    addend,
                    got,
                    size: 0,
                };
                let offset = [0u64, 4, 8, 12, 13][(next() % 5) as usize];
                let mut block = [0u8; 16];
                for (i, b) in block.iter_mut().enumerate() {
                    *b = (next() >> i) as u8;
                }
                block[8..12].copy_from_slice(&insn.to_le_bytes());
                let mut a = block;
                let mut b = block;
                let fast = r.apply_values(&mut a, offset, &v);
                let exact = r.apply_exact(&mut b, offset, &v);
                assert_eq!(fast, exact, "{} {v:?} at {offset}", r.name);
                assert_eq!(a, b, "{} {v:?} at {offset}", r.name);
                let mut c = block;
                fast_taken += usize::from(r.apply_fast(&mut c, offset, &v));
            }
        }
        // The common case is the one taken.
        assert!(fast_taken > RELOCS.len() * 20, "{fast_taken}");
    }

    #[test]
    fn movw_signed_picks_movn_or_movz() {
        let f = Field::MovwSigned { shift: 0 };
        // movz x0, #0 with X = -1 → movn x0, #0.
        assert_eq!(encode(f, 0xd280_0000, -1), 0x9280_0000);
        // movn x0, #0 with X = 5 → movz x0, #5.
        assert_eq!(encode(f, 0x9280_0000, 5), 0xd280_00a0);
        // movk keeps its opcode and takes the raw bits.
        assert_eq!(encode(f, 0xf280_0000, -1), 0xf29f_ffe0);
    }

    #[test]
    fn relaxing_keeps_the_registers() {
        let row = |r| lookup(r).expect("in table");
        let mut b = 0xf940_0211u32.to_le_bytes(); // ldr x17, [x16]
        assert_eq!(
            relax_insn(row(R_AARCH64_LD64_GOT_LO12_NC), &mut b, 0),
            Ok(true)
        );
        assert_eq!(u32::from_le_bytes(b), 0x9100_0211); // add x17, x16, #0
        let mut b = 0x9000_0003u32.to_le_bytes(); // adrp x3
        assert_eq!(
            relax_insn(row(R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21), &mut b, 0),
            Ok(true)
        );
        assert_eq!(u32::from_le_bytes(b), 0xd2a0_0003); // movz x3, #0, lsl #16
        let mut b = 0xf940_0063u32.to_le_bytes(); // ldr x3, [x3]
        assert_eq!(
            relax_insn(row(R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC), &mut b, 0),
            Ok(true)
        );
        assert_eq!(u32::from_le_bytes(b), 0xf280_0003); // movk x3, #0
        let mut nop = NOP.to_le_bytes();
        assert_eq!(
            relax_insn(row(R_AARCH64_LD64_GOT_LO12_NC), &mut nop, 0),
            Ok(false)
        );
        assert_eq!(
            relax_insn(row(R_AARCH64_TLSDESC_CALL), &mut nop, 0),
            Ok(false)
        );
        assert!(relax_insn(row(R_AARCH64_LD64_GOT_LO12_NC), &mut nop, 2).is_err());
        for r in RELOCS {
            if let Some(to) = relaxed_to(r.r_type) {
                assert!(lookup(to).is_some(), "{} relaxes into the table", r.name);
            }
        }
    }
}
