//! AArch64 ELF relocations: the table keyed by raw `r_type`, and fixup math.
//!
//! Names, formulas and overflow ranges follow "ELF for the Arm 64-bit
//! Architecture (AArch64)" (AAELF64), section "Relocation", tables "Static
//! Data relocations", "Group relocations to create a 16-, 32-, 48-, or
//! 64-bit unsigned data value or address inline", "Relocations to generate
//! 19, 21 and 33 bit PC-relative addresses", "Relocations for control-flow
//! instructions" and "GOT-relative instruction relocations".
//!
//! Notation: `S` is the symbol's address, `A` the addend, `P` the place's
//! address, `Page(x) = x & !0xfff`, `X` the value computed by the formula.
//! Ranges are checked on `X` before its bits are taken; `_NC` ("no check")
//! types skip the range check. GOT-indirect types (`ADR_GOT_PAGE`,
//! `LD64_GOT_LO12_NC`) compute on `G(GDAT(S + A))`, the GOT entry's address:
//! the linker passes that address as `s` and 0 as `a`, and puts `S + A` in
//! the entry.

use crate::FixupError;
use crate::template::place_mut;

/// Raw `R_AARCH64_*` relocation type numbers (AAELF64).
pub mod r_type {
    /// `S + A`, 64-bit data.
    pub const R_AARCH64_ABS64: u32 = 257;
    /// `S + A`, 32-bit data.
    pub const R_AARCH64_ABS32: u32 = 258;
    /// `S + A - P`, 64-bit data.
    pub const R_AARCH64_PREL64: u32 = 260;
    /// `S + A - P`, 32-bit data.
    pub const R_AARCH64_PREL32: u32 = 261;
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
    /// LD/ST quadword imm12 = `(S + A)[11:4]`.
    pub const R_AARCH64_LDST128_ABS_LO12_NC: u32 = 299;
    /// ADRP imm21 = `(Page(G(GDAT(S + A))) - Page(P))[32:12]`, checked.
    pub const R_AARCH64_ADR_GOT_PAGE: u32 = 311;
    /// LDR imm12 = `G(GDAT(S + A))[11:3]`.
    pub const R_AARCH64_LD64_GOT_LO12_NC: u32 = 312;
}

use r_type::*;

/// How `X` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Formula {
    /// `S + A`.
    Abs,
    /// `S + A - P`.
    Prel,
    /// `Page(S + A) - Page(P)`.
    Page,
}

/// Where the bits of `X` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// The whole 8-byte place (low 64 bits of `X`).
    Data64,
    /// The whole 4-byte place (low 32 bits of `X`).
    Data32,
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
    /// ADD/LDR/STR `imm12` (bits 21:10) = `X[11:shift]`.
    Imm12 {
        /// log2 of the access size (0 for ADD and byte accesses).
        shift: u8,
    },
    /// MOVZ/MOVK `imm16` (bits 20:5) = `X[shift + 15:shift]`.
    Movw {
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
    /// Width of the place in bytes.
    pub width: u32,
    /// Inclusive range `X` must lie in, or `None` for no check.
    pub range: Option<(i128, i128)>,
    /// `X` must be a multiple of this.
    pub align: u32,
    /// Needs a GOT entry (pass the entry's address as `s`).
    pub got: bool,
    /// Accepted instructions as `(mask, bits)`: `insn & mask == bits` for one of them. Empty for data.
    pub insns: &'static [(u32, u32)],
    /// What the accepted instructions are, for error messages.
    pub insn_desc: &'static str,
}

const ADRP: &[(u32, u32)] = &[(0x9f00_0000, 0x9000_0000)];
const ADR: &[(u32, u32)] = &[(0x9f00_0000, 0x1000_0000)];
const B_BL: &[(u32, u32)] = &[(0x7c00_0000, 0x1400_0000)];
const BCOND_CBZ: &[(u32, u32)] = &[(0xff00_0010, 0x5400_0000), (0x7e00_0000, 0x3400_0000)];
const TBZ: &[(u32, u32)] = &[(0x7e00_0000, 0x3600_0000)];
const ADD_IMM: &[(u32, u32)] = &[(0x1f80_0000, 0x1100_0000)];
const LDST_UIMM: &[(u32, u32)] = &[(0x3b00_0000, 0x3900_0000)];
const MOVW: &[(u32, u32)] = &[(0x1f80_0000, 0x1280_0000)];

const fn pow2(n: u32) -> i128 {
    1i128 << n
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
        Field::Data64 => 8,
        _ => 4,
    };
    let got = r_type == R_AARCH64_ADR_GOT_PAGE || r_type == R_AARCH64_LD64_GOT_LO12_NC;
    RelocInfo {
        r_type,
        name,
        formula,
        field,
        width,
        range,
        align,
        got,
        insns,
        insn_desc,
    }
}

/// [`row`] with the psABI name spelled once: taken from the constant.
macro_rules! row {
    ($r_type:ident, $($rest:expr),+ $(,)?) => {
        row($r_type, stringify!($r_type), $($rest),+)
    };
}

const DATA32: Option<(i128, i128)> = Some((-pow2(31), pow2(32) - 1));
const PAGE33: Option<(i128, i128)> = Some((-pow2(32), pow2(32) - 1));

/// The table, sorted by `r_type`.
#[rustfmt::skip]
pub static RELOCS: &[RelocInfo] = &[
    row!(R_AARCH64_ABS64, Formula::Abs, Field::Data64, None, 1, &[], "data"),
    row!(R_AARCH64_ABS32, Formula::Abs, Field::Data32, DATA32, 1, &[], "data"),
    row!(R_AARCH64_PREL64, Formula::Prel, Field::Data64, None, 1, &[], "data"),
    row!(R_AARCH64_PREL32, Formula::Prel, Field::Data32, DATA32, 1, &[], "data"),
    row!(R_AARCH64_MOVW_UABS_G0, Formula::Abs, Field::Movw { shift: 0 },
        Some((0, pow2(16) - 1)), 1, MOVW, "MOVZ/MOVK"),
    row!(R_AARCH64_MOVW_UABS_G0_NC, Formula::Abs, Field::Movw { shift: 0 },
        None, 1, MOVW, "MOVZ/MOVK"),
    row!(R_AARCH64_MOVW_UABS_G1, Formula::Abs, Field::Movw { shift: 16 },
        Some((0, pow2(32) - 1)), 1, MOVW, "MOVZ/MOVK"),
    row!(R_AARCH64_MOVW_UABS_G1_NC, Formula::Abs, Field::Movw { shift: 16 },
        None, 1, MOVW, "MOVZ/MOVK"),
    row!(R_AARCH64_MOVW_UABS_G2, Formula::Abs, Field::Movw { shift: 32 },
        Some((0, pow2(48) - 1)), 1, MOVW, "MOVZ/MOVK"),
    row!(R_AARCH64_MOVW_UABS_G2_NC, Formula::Abs, Field::Movw { shift: 32 },
        None, 1, MOVW, "MOVZ/MOVK"),
    row!(R_AARCH64_MOVW_UABS_G3, Formula::Abs, Field::Movw { shift: 48 },
        None, 1, MOVW, "MOVZ/MOVK"), // every 64-bit value fits: no check (AAELF64)
    row!(R_AARCH64_ADR_PREL_LO21, Formula::Prel, Field::Adr { shift: 0 },
        Some((-pow2(20), pow2(20) - 1)), 1, ADR, "ADR"),
    row!(R_AARCH64_ADR_PREL_PG_HI21, Formula::Page, Field::Adr { shift: 12 },
        PAGE33, 1, ADRP, "ADRP"),
    row!(R_AARCH64_ADR_PREL_PG_HI21_NC, Formula::Page, Field::Adr { shift: 12 },
        None, 1, ADRP, "ADRP"),
    row!(R_AARCH64_ADD_ABS_LO12_NC, Formula::Abs, Field::Imm12 { shift: 0 },
        None, 1, ADD_IMM, "ADD/SUB (immediate)"),
    row!(R_AARCH64_LDST8_ABS_LO12_NC, Formula::Abs, Field::Imm12 { shift: 0 },
        None, 1, LDST_UIMM, "LDR/STR (unsigned immediate)"),
    row!(R_AARCH64_TSTBR14, Formula::Prel, Field::Imm14,
        Some((-pow2(15), pow2(15) - 1)), 4, TBZ, "TBZ/TBNZ"),
    row!(R_AARCH64_CONDBR19, Formula::Prel, Field::Imm19,
        Some((-pow2(20), pow2(20) - 1)), 4, BCOND_CBZ, "B.cond/CBZ/CBNZ"),
    row!(R_AARCH64_JUMP26, Formula::Prel, Field::Imm26,
        Some((-pow2(27), pow2(27) - 1)), 4, B_BL, "B/BL"),
    row!(R_AARCH64_CALL26, Formula::Prel, Field::Imm26,
        Some((-pow2(27), pow2(27) - 1)), 4, B_BL, "B/BL"),
    row!(R_AARCH64_LDST16_ABS_LO12_NC, Formula::Abs, Field::Imm12 { shift: 1 },
        None, 2, LDST_UIMM, "LDR/STR (unsigned immediate)"),
    row!(R_AARCH64_LDST32_ABS_LO12_NC, Formula::Abs, Field::Imm12 { shift: 2 },
        None, 4, LDST_UIMM, "LDR/STR (unsigned immediate)"),
    row!(R_AARCH64_LDST64_ABS_LO12_NC, Formula::Abs, Field::Imm12 { shift: 3 },
        None, 8, LDST_UIMM, "LDR/STR (unsigned immediate)"),
    row!(R_AARCH64_LDST128_ABS_LO12_NC, Formula::Abs, Field::Imm12 { shift: 4 },
        None, 16, LDST_UIMM, "LDR/STR (unsigned immediate)"),
    row!(R_AARCH64_ADR_GOT_PAGE, Formula::Page, Field::Adr { shift: 12 },
        PAGE33, 1, ADRP, "ADRP"),
    row!(R_AARCH64_LD64_GOT_LO12_NC, Formula::Abs, Field::Imm12 { shift: 3 },
        None, 8, LDST_UIMM, "LDR/STR (unsigned immediate)"),
];

/// Looks up a relocation type in [`RELOCS`].
pub fn lookup(r_type: u32) -> Option<&'static RelocInfo> {
    RELOCS
        .binary_search_by_key(&r_type, |r| r.r_type)
        .ok()
        .map(|i| &RELOCS[i])
}

/// Applies relocation `r_type` at `offset` in `block`, whose byte 0 is at
/// address `block_addr`, with symbol value `s` and addend `a`.
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

/// Writes the bits of `x` into instruction `insn` for `field` (data fields
/// are not instructions and are returned unchanged).
pub(crate) const fn encode(field: Field, insn: u32, x: i128) -> u32 {
    let x = x as u64; // two's complement: the field takes its low bits
    match field {
        Field::Data64 | Field::Data32 => insn,
        Field::Imm26 => (insn & !0x03ff_ffff) | ((x >> 2) as u32 & 0x03ff_ffff),
        Field::Imm19 => (insn & !(0x7_ffff << 5)) | (((x >> 2) as u32 & 0x7_ffff) << 5),
        Field::Imm14 => (insn & !(0x3fff << 5)) | (((x >> 2) as u32 & 0x3fff) << 5),
        Field::Adr { shift } => {
            let imm = (x >> shift) as u32 & 0x1f_ffff;
            (insn & !((3 << 29) | (0x7_ffff << 5))) | ((imm & 3) << 29) | ((imm >> 2) << 5)
        }
        Field::Imm12 { shift } => (insn & !(0xfff << 10)) | ((((x & 0xfff) >> shift) as u32) << 10),
        Field::Movw { shift } => (insn & !(0xffff << 5)) | ((((x >> shift) & 0xffff) as u32) << 5),
    }
}

impl RelocInfo {
    /// `X` for place address `p`, symbol value `s` and addend `a`, computed
    /// without wrap-around.
    pub fn value(&self, p: u64, s: u64, a: i64) -> i128 {
        let sa = i128::from(s) + i128::from(a);
        match self.formula {
            Formula::Abs => sa,
            Formula::Prel => sa - i128::from(p),
            Formula::Page => page(sa) - page(i128::from(p)),
        }
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
        if self.align > 1 && x.rem_euclid(i128::from(self.align)) != 0 {
            return Err(FixupError::Misaligned {
                reloc: self.name,
                value: x,
                align: self.align,
            });
        }
        Ok(())
    }

    /// Applies this relocation at `offset` in `block` (byte 0 at address
    /// `block_addr`) with symbol value `s` and addend `a`.
    ///
    /// # Errors
    /// [`FixupError::OutOfBounds`] if the place runs past the block,
    /// [`FixupError::Misaligned`] if an instruction place is not 4-byte
    /// aligned or `X` is misaligned, [`FixupError::OutOfRange`] on overflow,
    /// [`FixupError::BadInstruction`] if the instruction at the place is not
    /// one this type applies to. The block is unchanged on error.
    pub fn apply(
        &self,
        block: &mut [u8],
        block_addr: u64,
        offset: u64,
        s: u64,
        a: i64,
    ) -> Result<(), FixupError> {
        let place = place_mut(self.name, block, offset, self.width)?;
        let p = block_addr.wrapping_add(offset);
        let x = self.value(p, s, a);
        self.check(x)?;
        match self.field {
            Field::Data64 => place.copy_from_slice(&(x as u64).to_le_bytes()),
            Field::Data32 => place.copy_from_slice(&(x as u32).to_le_bytes()),
            field => {
                if !p.is_multiple_of(4) {
                    return Err(FixupError::Misaligned {
                        reloc: self.name,
                        value: i128::from(p),
                        align: 4,
                    });
                }
                let insn = u32::from_le_bytes([place[0], place[1], place[2], place[3]]);
                if !self.insns.iter().any(|&(mask, bits)| insn & mask == bits) {
                    return Err(FixupError::BadInstruction {
                        reloc: self.name,
                        detail: self.insn_desc,
                    });
                }
                place.copy_from_slice(&encode(field, insn, x).to_le_bytes());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_named_consistently() {
        assert!(RELOCS.windows(2).all(|w| w[0].r_type < w[1].r_type));
        for r in RELOCS {
            assert!(r.name.starts_with("R_AARCH64_"), "{}", r.name);
            assert_eq!(lookup(r.r_type), Some(r));
            assert_eq!(
                r.insns.is_empty(),
                matches!(r.field, Field::Data32 | Field::Data64),
                "{}",
                r.name
            );
        }
        assert_eq!(lookup(0), None);
        assert_eq!(lookup(1000), None);
    }
}
