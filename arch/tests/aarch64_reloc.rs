//! AArch64 relocation math against hand-computed vectors: for every type in
//! the table, a value inside its range, the boundary values on both sides of
//! the range, and misaligned values where the type has an alignment. Every
//! expected instruction word was computed by hand from AAELF64's formula and
//! the A64 field layout, and `gnu_ld_agrees` links each one with GNU ld
//! (`aarch64-linux-gnu-as` + `aarch64-linux-gnu-ld`, same P, S, A, GOT
//! slot or TLS offset) and demands the same word, or the same overflow.

use kiln_arch::aarch64::reloc::{self, RELOCS, r_type::*};
use kiln_arch::{Aarch64, FixupError, FixupValues, RelocArch};

#[derive(Debug, Clone, Copy)]
enum Want {
    /// The place must hold this (instruction word, or data bytes as u64 LE of `width`).
    Word(u64),
    Range,
    Misaligned,
    BadInsn,
}
use Want::*;

/// `(r_type, initial place contents, P, S, A, expected)`.
type Vector = (u32, u64, u64, u64, i64, Want);

const P: u64 = 0x1000_0000;
const M64: u64 = 0x1_2345_6789_abcd;
const P2: u64 = 0x2_0000_0000;
const P3: u64 = 0x1_0000_0000_0000;

#[rustfmt::skip]
const VECTORS: &[Vector] = &[
    // Data.
    (R_AARCH64_ABS64, 0, 0x1000, 0x1122_3344_5566_7788, 0x10, Word(0x1122_3344_5566_7798)),
    (R_AARCH64_ABS64, 0, 0x1000, 0x10, -0x20, Word(0xffff_ffff_ffff_fff0)),
    (R_AARCH64_ABS32, 0, 0x1000, 0xffff_fff0, 0xf, Word(0xffff_ffff)),
    (R_AARCH64_ABS32, 0, 0x1000, 0xffff_fff0, 0x10, Range),
    (R_AARCH64_ABS32, 0, 0x1000, 0, -0x8000_0000, Word(0x8000_0000)),
    (R_AARCH64_ABS32, 0, 0x1000, 0, -0x8000_0001, Range),
    (R_AARCH64_PREL64, 0, 0x2000, 0x1000, 0, Word(0xffff_ffff_ffff_f000)),
    (R_AARCH64_PREL32, 0, 0x8000_1000, 0x8000_1000 + 0xffff_ffff, 0, Word(0xffff_ffff)),
    (R_AARCH64_PREL32, 0, 0x8000_1000, 0x8000_1000 + 0x1_0000_0000, 0, Range),
    (R_AARCH64_PREL32, 0, 0x8000_1000, 0x1000, 0, Word(0x8000_0000)),
    (R_AARCH64_PREL32, 0, 0x8000_1000, 0xfff, 0, Range),
    // Branches: BL / B imm26, range [-2^27, 2^27 - 4].
    (R_AARCH64_CALL26, 0x9400_0000, P, P + 0x7ff_fffc, 0, Word(0x95ff_ffff)),
    (R_AARCH64_CALL26, 0x9400_0000, P, P + 0x800_0000, 0, Range),
    (R_AARCH64_CALL26, 0x9400_0000, P, P - 0x800_0000, 0, Word(0x9600_0000)),
    (R_AARCH64_CALL26, 0x9400_0000, P, P - 0x800_0004, 0, Range),
    (R_AARCH64_CALL26, 0x9400_0000, P, P, 2, Misaligned),
    (R_AARCH64_CALL26, 0xd503_201f, P, P + 8, 0, BadInsn), // nop
    (R_AARCH64_JUMP26, 0x1400_0000, P, P, 8, Word(0x1400_0002)),
    (R_AARCH64_JUMP26, 0x1400_0000, P, P - 4, 0, Word(0x17ff_ffff)),
    (R_AARCH64_JUMP26, 0x1400_0000, P, P + 0x800_0000, 0, Range),
    (R_AARCH64_JUMP26, 0x1400_0000, P, P - 0x800_0004, 0, Range),
    (R_AARCH64_JUMP26, 0x1400_0000, P, P + 0x7ff_fffe, 0, Misaligned),
    // B.cond / CBZ imm19, range [-2^20, 2^20 - 4].
    (R_AARCH64_CONDBR19, 0x5400_0000, P, P + 0xf_fffc, 0, Word(0x547f_ffe0)),
    (R_AARCH64_CONDBR19, 0x5400_0000, P, P + 0x10_0000, 0, Range),
    (R_AARCH64_CONDBR19, 0x5400_0000, P, P - 0x10_0000, 0, Word(0x5480_0000)),
    (R_AARCH64_CONDBR19, 0x5400_0000, P, P - 0x10_0004, 0, Range),
    (R_AARCH64_CONDBR19, 0xb400_0000, P, P + 0x40, 0, Word(0xb400_0200)), // cbz x0
    (R_AARCH64_CONDBR19, 0x5400_0000, P, P + 6, 0, Misaligned),
    (R_AARCH64_CONDBR19, 0x9400_0000, P, P + 8, 0, BadInsn), // bl
    // LDR (literal) imm19, range [-2^20, 2^20 - 4].
    (R_AARCH64_LD_PREL_LO19, 0x5800_0010, P, P + 0xf_fffc, 0, Word(0x587f_fff0)),
    (R_AARCH64_LD_PREL_LO19, 0x5800_0010, P, P + 0x10_0000, 0, Range),
    (R_AARCH64_LD_PREL_LO19, 0x5800_0010, P, P - 0x10_0000, 0, Word(0x5880_0010)),
    (R_AARCH64_LD_PREL_LO19, 0x5800_0010, P, P - 0x10_0004, 0, Range),
    (R_AARCH64_LD_PREL_LO19, 0x1c00_0001, P, P + 0x40, 0, Word(0x1c00_0201)), // ldr s1
    (R_AARCH64_LD_PREL_LO19, 0x5800_0010, P, P + 2, 0, Misaligned),
    (R_AARCH64_LD_PREL_LO19, 0xf940_0010, P, P + 8, 0, BadInsn), // ldr (immediate)
    // TBZ imm14, range [-2^15, 2^15 - 4].
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P + 0x7ffc, 0, Word(0x3603_ffe0)),
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P + 0x8000, 0, Range),
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P - 0x8000, 0, Word(0x3604_0000)),
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P - 0x8004, 0, Range),
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P + 1, 0, Misaligned),
    (R_AARCH64_TSTBR14, 0x5400_0000, P, P + 8, 0, BadInsn), // b.eq
    // ADR imm21, range [-2^20, 2^20 - 1].
    (R_AARCH64_ADR_PREL_LO21, 0x1000_0000, P, P + 0xf_ffff, 0, Word(0x707f_ffe0)),
    (R_AARCH64_ADR_PREL_LO21, 0x1000_0000, P, P + 0x10_0000, 0, Range),
    (R_AARCH64_ADR_PREL_LO21, 0x1000_0000, P, P - 0x10_0000, 0, Word(0x1080_0000)),
    (R_AARCH64_ADR_PREL_LO21, 0x1000_0000, P, P - 0x10_0001, 0, Range),
    (R_AARCH64_ADR_PREL_LO21, 0x9000_0000, P, P, 0, BadInsn), // adrp
    // ADRP: page delta range [-2^32, 2^32 - 4096].
    (R_AARCH64_ADR_PREL_PG_HI21, 0x9000_0010, 0x1_0000_0000, 0x1_0000_0000 + 0xffff_fabc, 0, Word(0xf07f_fff0)),
    (R_AARCH64_ADR_PREL_PG_HI21, 0x9000_0010, 0x1_0000_0000, 0x2_0000_0000, 0, Range),
    (R_AARCH64_ADR_PREL_PG_HI21, 0x9000_0010, 0x1_0000_0000, 0, 0, Word(0x9080_0010)),
    (R_AARCH64_ADR_PREL_PG_HI21, 0x9000_0010, 0x1_0000_1000, 0xfff, 0, Range),
    (R_AARCH64_ADR_PREL_PG_HI21, 0x9000_0010, 0x1000, 0x3fff, 0, Word(0xd000_0010)),
    (R_AARCH64_ADR_PREL_PG_HI21, 0x1000_0010, 0x1000, 0x3fff, 0, BadInsn), // adr
    (R_AARCH64_ADR_PREL_PG_HI21_NC, 0x9000_0010, 0x1_0000_0000, 0x2_0000_0000, 0, Word(0x9080_0010)),
    (R_AARCH64_ADR_GOT_PAGE, 0x9000_0010, 0x1_0000_0000, 0x1_ffff_f008, 0, Word(0xf07f_fff0)),
    (R_AARCH64_ADR_GOT_PAGE, 0x9000_0010, 0x1_0000_0000, 0x2_0000_0008, 0, Range),
    // Low 12 bits.
    (R_AARCH64_ADD_ABS_LO12_NC, 0x9100_0020, P, 0x1234_5abc, 0, Word(0x912a_f020)),
    (R_AARCH64_ADD_ABS_LO12_NC, 0x9100_0020, P, 0x1234_5000, -1, Word(0x913f_fc20)),
    (R_AARCH64_ADD_ABS_LO12_NC, 0xf940_0020, P, 0x1234_5abc, 0, BadInsn), // ldr
    (R_AARCH64_LDST8_ABS_LO12_NC, 0x3940_0020, P, 0x1fff, 0, Word(0x397f_fc20)),
    (R_AARCH64_LDST8_ABS_LO12_NC, 0x9100_0020, P, 0x1fff, 0, BadInsn), // add
    (R_AARCH64_LDST16_ABS_LO12_NC, 0x7940_0020, P, 0x1ffe, 0, Word(0x795f_fc20)),
    (R_AARCH64_LDST16_ABS_LO12_NC, 0x7940_0020, P, 0x1fff, 0, Misaligned),
    (R_AARCH64_LDST32_ABS_LO12_NC, 0xb940_0020, P, 0x1ffc, 0, Word(0xb94f_fc20)),
    (R_AARCH64_LDST32_ABS_LO12_NC, 0xb940_0020, P, 0x1ffe, 0, Misaligned),
    (R_AARCH64_LDST64_ABS_LO12_NC, 0xf940_0020, P, 0x1ff8, 0, Word(0xf947_fc20)),
    (R_AARCH64_LDST64_ABS_LO12_NC, 0xf940_0020, P, 0x1ffc, 0, Misaligned),
    (R_AARCH64_LDST128_ABS_LO12_NC, 0x3dc0_0020, P, 0x1ff0, 0, Word(0x3dc3_fc20)),
    (R_AARCH64_LDST128_ABS_LO12_NC, 0x3dc0_0020, P, 0x1ff8, 0, Misaligned),
    (R_AARCH64_LD64_GOT_LO12_NC, 0xf940_0210, P, 0x1234_5ff8, 0, Word(0xf947_fe10)),
    (R_AARCH64_LD64_GOT_LO12_NC, 0xf940_0210, P, 0x1234_5ff4, 0, Misaligned),
    // MOVZ/MOVK groups.
    (R_AARCH64_MOVW_UABS_G0, 0xd280_0000, P, 0xffff, 0, Word(0xd29f_ffe0)),
    (R_AARCH64_MOVW_UABS_G0, 0xd280_0000, P, 0x1_0000, 0, Range),
    (R_AARCH64_MOVW_UABS_G0, 0xd280_0000, P, 0, -1, Range),
    (R_AARCH64_MOVW_UABS_G0, 0xd280_0000, P, 0, 0, Word(0xd280_0000)),
    (R_AARCH64_MOVW_UABS_G0_NC, 0xf280_0000, P, M64, 0, Word(0xf295_79a0)),
    (R_AARCH64_MOVW_UABS_G1, 0xd2a0_0000, P, 0xffff_ffff, 0, Word(0xd2bf_ffe0)),
    (R_AARCH64_MOVW_UABS_G1, 0xd2a0_0000, P, 0x1_0000_0000, 0, Range),
    (R_AARCH64_MOVW_UABS_G1_NC, 0xf2a0_0000, P, M64, 0, Word(0xf2ac_f120)),
    (R_AARCH64_MOVW_UABS_G2, 0xd2c0_0000, P, 0xffff_ffff_ffff, 0, Word(0xd2df_ffe0)),
    (R_AARCH64_MOVW_UABS_G2, 0xd2c0_0000, P, 0x1_0000_0000_0000, 0, Range),
    (R_AARCH64_MOVW_UABS_G2_NC, 0xf2c0_0000, P, M64, 0, Word(0xf2c4_68a0)),
    (R_AARCH64_MOVW_UABS_G3, 0xf2e0_0000, P, 0xfedc_0000_0000_0000, 0, Word(0xf2ff_db80)),
    (R_AARCH64_MOVW_UABS_G3, 0xf2e0_0000, P, 0, -1, Word(0xf2ff_ffe0)),
    (R_AARCH64_MOVW_UABS_G3, 0xd503_201f, P, 0, 0, BadInsn),
    (R_AARCH64_MOVW_UABS_G1, 0xd2a0_0000, P, 0, -1, Range),
    (R_AARCH64_MOVW_UABS_G2, 0xd2c0_0000, P, 0, -1, Range),
    // 16-bit data: [-2^15, 2^16 - 1].
    (R_AARCH64_ABS16, 0, 0x1000, 0xfff0, 0xf, Word(0xffff)),
    (R_AARCH64_ABS16, 0, 0x1000, 0xfff0, 0x10, Range),
    (R_AARCH64_ABS16, 0, 0x1000, 0, -0x8000, Word(0x8000)),
    (R_AARCH64_ABS16, 0, 0x1000, 0, -0x8001, Range),
    (R_AARCH64_PREL16, 0, 0x10000, 0x10000 + 0xffff, 0, Word(0xffff)),
    (R_AARCH64_PREL16, 0, 0x10000, 0x10000 + 0x10000, 0, Range),
    (R_AARCH64_PREL16, 0, 0x10000, 0x10000 - 0x8000, 0, Word(0x8000)),
    (R_AARCH64_PREL16, 0, 0x10000, 0x10000 - 0x8001, 0, Range),
    (R_AARCH64_PREL64, 0, 0x1000, 0xffff_ffff_ffff_f000, 0, Word(0xffff_ffff_ffff_e000)),
    // PC-relative MOV[NZ] groups: signed 17/33/49 bits; MOVN when X < 0.
    (R_AARCH64_MOVW_PREL_G0, 0xd280_0000, P, P + 0xffff, 0, Word(0xd29f_ffe0)),
    (R_AARCH64_MOVW_PREL_G0, 0xd280_0000, P, P + 0x1_0000, 0, Range),
    (R_AARCH64_MOVW_PREL_G0, 0xd280_0000, P, P - 0x1_0000, 0, Word(0x929f_ffe0)),
    (R_AARCH64_MOVW_PREL_G0, 0xd280_0000, P, P - 0x1_0001, 0, Range),
    (R_AARCH64_MOVW_PREL_G0, 0xf280_0000, P, P - 1, 0, Word(0xf29f_ffe0)), // movk kept
    (R_AARCH64_MOVW_PREL_G0, 0xd503_201f, P, P, 0, BadInsn),
    (R_AARCH64_MOVW_PREL_G0_NC, 0xf280_0000, P, P - 1, 0, Word(0xf29f_ffe0)),
    (R_AARCH64_MOVW_PREL_G1, 0xd2a0_0000, P2, P2 + 0xffff_ffff, 0, Word(0xd2bf_ffe0)),
    (R_AARCH64_MOVW_PREL_G1, 0xd2a0_0000, P2, P2 + 0x1_0000_0000, 0, Range),
    (R_AARCH64_MOVW_PREL_G1, 0xd2a0_0000, P2, P2 - 0x1_0000_0000, 0, Word(0x92bf_ffe0)),
    (R_AARCH64_MOVW_PREL_G1, 0xd2a0_0000, P2, P2 - 0x1_0000_0001, 0, Range),
    (R_AARCH64_MOVW_PREL_G1_NC, 0xf2a0_0000, P, P - 0x1_0000, 0, Word(0xf2bf_ffe0)),
    (R_AARCH64_MOVW_PREL_G2, 0xd2c0_0000, P3, P3 + 0xffff_ffff_ffff, 0, Word(0xd2df_ffe0)),
    (R_AARCH64_MOVW_PREL_G2, 0xd2c0_0000, P3, P3 + 0x1_0000_0000_0000, 0, Range),
    (R_AARCH64_MOVW_PREL_G2, 0xd2c0_0000, P3, 0, 0, Word(0x92df_ffe0)),
    (R_AARCH64_MOVW_PREL_G2, 0xd2c0_0000, P3, 0, -1, Range),
    (R_AARCH64_MOVW_PREL_G2_NC, 0xf2c0_0000, P, P - 1, 0, Word(0xf2df_ffe0)),
    (R_AARCH64_MOVW_PREL_G3, 0xd2e0_0000, 0x1000, 0x7fff_0000_0000_1000, 0, Word(0xd2ef_ffe0)),
    (R_AARCH64_MOVW_PREL_G3, 0xf2e0_0000, 0x1000, 0, 0, Word(0xf2ff_ffe0)),
    (R_AARCH64_MOVW_PREL_G3, 0xd2e0_0000, 0x1000, 0, 0, Word(0x92e0_0000)),
    // GOT page: both ends of [-2^32, 2^32).
    (R_AARCH64_ADR_GOT_PAGE, 0x9000_0010, 0x1_0000_0000, 0x8, 0, Word(0x9080_0010)),
    (R_AARCH64_ADR_GOT_PAGE, 0x9000_0010, 0x1_0000_1000, 0x8, 0, Range),
    // TLS initial exec: the IE GOT slot.
    (R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21, 0x9000_0010, 0x1_0000_0000, 0x1_ffff_f008, 0, Word(0xf07f_fff0)),
    (R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21, 0x9000_0010, 0x1_0000_0000, 0x2_0000_0008, 0, Range),
    (R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21, 0x9000_0010, 0x1_0000_0000, 0x8, 0, Word(0x9080_0010)),
    (R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21, 0x9000_0010, 0x1_0000_1000, 0x8, 0, Range),
    (R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC, 0xf940_0210, P, 0x1234_5ff8, 0, Word(0xf947_fe10)),
    (R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC, 0xf940_0210, P, 0x1234_5ff4, 0, Misaligned),
    (R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC, 0xb940_0210, P, 0x1234_5ff8, 0, BadInsn), // ldr w
    // TLS general dynamic (-mtls-dialect=trad): the GOT pair.
    (R_AARCH64_TLSGD_ADR_PAGE21, 0x9000_0000, 0x1_0000_0000, 0x1_ffff_f010, 0, Word(0xf07f_ffe0)),
    (R_AARCH64_TLSGD_ADR_PAGE21, 0x9000_0000, 0x1_0000_0000, 0x2_0000_0010, 0, Range),
    (R_AARCH64_TLSGD_ADR_PAGE21, 0x9000_0000, 0x1_0000_0000, 0x10, 0, Word(0x9080_0000)),
    (R_AARCH64_TLSGD_ADR_PAGE21, 0x9000_0000, 0x1_0000_1000, 0x10, 0, Range),
    (R_AARCH64_TLSGD_ADD_LO12_NC, 0x9100_0000, P, 0x1234_5ff0, 0, Word(0x913f_c000)),
    (R_AARCH64_TLSGD_ADD_LO12_NC, 0xf940_0000, P, 0x1234_5ff0, 0, BadInsn),
    // TLS descriptors.
    (R_AARCH64_TLSDESC_ADR_PAGE21, 0x9000_0000, 0x1_0000_0000, 0x1_ffff_f010, 0, Word(0xf07f_ffe0)),
    (R_AARCH64_TLSDESC_ADR_PAGE21, 0x9000_0000, 0x1_0000_0000, 0x2_0000_0010, 0, Range),
    (R_AARCH64_TLSDESC_ADR_PAGE21, 0x9000_0000, 0x1_0000_0000, 0x10, 0, Word(0x9080_0000)),
    (R_AARCH64_TLSDESC_ADR_PAGE21, 0x9000_0000, 0x1_0000_1000, 0x10, 0, Range),
    (R_AARCH64_TLSDESC_LD64_LO12, 0xf940_0001, P, 0x1234_5ff0, 0, Word(0xf947_f801)),
    (R_AARCH64_TLSDESC_LD64_LO12, 0xf940_0001, P, 0x1234_5ff4, 0, Misaligned),
    (R_AARCH64_TLSDESC_ADD_LO12, 0x9100_0000, P, 0x1234_5ff0, 0, Word(0x913f_c000)),
    (R_AARCH64_TLSDESC_ADD_LO12, 0xf940_0000, P, 0x1234_5ff0, 0, BadInsn),
    // Markers: width 0, the canaries around the place must stay intact.
    (R_AARCH64_TLSDESC_CALL, 0xd63f_0020, P, 0x1234_5ff0, 0, Word(0)),
    (R_AARCH64_NONE, 0, P, 0x1234, 0, Word(0)),
    // TLS local exec: S is TPREL(S), [0, 2^24) for HI12, [0, 2^12) for LO12.
    (R_AARCH64_TLSLE_ADD_TPREL_HI12, 0x9140_0000, P, 0xff_ffff, 0, Word(0x917f_fc00)),
    (R_AARCH64_TLSLE_ADD_TPREL_HI12, 0x9140_0000, P, 0x100_0000, 0, Range),
    (R_AARCH64_TLSLE_ADD_TPREL_HI12, 0x9140_0000, P, 0x10, -0x10, Word(0x9140_0000)),
    (R_AARCH64_TLSLE_ADD_TPREL_HI12, 0x9140_0000, P, 0x10, -0x11, Range),
    (R_AARCH64_TLSLE_ADD_TPREL_LO12, 0x9100_0000, P, 0xfff, 0, Word(0x913f_fc00)),
    (R_AARCH64_TLSLE_ADD_TPREL_LO12, 0x9100_0000, P, 0x1000, 0, Range),
    (R_AARCH64_TLSLE_ADD_TPREL_LO12, 0x9100_0000, P, 0x10, -0x10, Word(0x9100_0000)),
    (R_AARCH64_TLSLE_ADD_TPREL_LO12, 0x9100_0000, P, 0x10, -0x11, Range),
    (R_AARCH64_TLSLE_ADD_TPREL_LO12, 0x9000_0000, P, 0x10, 0, BadInsn),
    // TLS local exec MOV[NZ]/MOVK groups; the addend walks TPREL(S) = 0x10 to the limits.
    (R_AARCH64_TLSLE_MOVW_TPREL_G0, 0xd280_0000, P, 0x10, 0xffff - 0x10, Word(0xd29f_ffe0)),
    (R_AARCH64_TLSLE_MOVW_TPREL_G0, 0xd280_0000, P, 0x10, 0x1_0000 - 0x10, Range),
    (R_AARCH64_TLSLE_MOVW_TPREL_G0, 0xd280_0000, P, 0x10, -0x1_0000 - 0x10, Word(0x929f_ffe0)),
    (R_AARCH64_TLSLE_MOVW_TPREL_G0, 0xd280_0000, P, 0x10, -0x1_0001 - 0x10, Range),
    (R_AARCH64_TLSLE_MOVW_TPREL_G0_NC, 0xf280_0000, P, 0x10, 0x12345 - 0x10, Word(0xf284_68a0)),
    (R_AARCH64_TLSLE_MOVW_TPREL_G1, 0xd2a0_0000, P, 0x10, 0xffff_ffff - 0x10, Word(0xd2bf_ffe0)),
    (R_AARCH64_TLSLE_MOVW_TPREL_G1, 0xd2a0_0000, P, 0x10, 0x1_0000_0000 - 0x10, Range),
    (R_AARCH64_TLSLE_MOVW_TPREL_G1, 0xd2a0_0000, P, 0x10, -0x1_0000_0000 - 0x10, Word(0x92bf_ffe0)),
    (R_AARCH64_TLSLE_MOVW_TPREL_G1, 0xd2a0_0000, P, 0x10, -0x1_0000_0001 - 0x10, Range),
    (R_AARCH64_TLSLE_MOVW_TPREL_G1_NC, 0xf2a0_0000, P, 0x10, 0x1234_5678 - 0x10, Word(0xf2a2_4680)),
    (R_AARCH64_TLSLE_MOVW_TPREL_G2, 0xd2c0_0000, P, 0x10, 0xffff_ffff_ffff - 0x10, Word(0xd2df_ffe0)),
    (R_AARCH64_TLSLE_MOVW_TPREL_G2, 0xd2c0_0000, P, 0x10, 0x1_0000_0000_0000 - 0x10, Range),
    (R_AARCH64_TLSLE_MOVW_TPREL_G2, 0xd2c0_0000, P, 0x10, -0x1_0000_0000_0000 - 0x10, Word(0x92df_ffe0)),
    (R_AARCH64_TLSLE_MOVW_TPREL_G2, 0xd2c0_0000, P, 0x10, -0x1_0000_0000_0001 - 0x10, Range),
    (R_AARCH64_TLSLE_ADD_TPREL_LO12_NC, 0x9100_0000, P, 0x12345, 0, Word(0x910d_1400)),
    (R_AARCH64_TLSLE_ADD_TPREL_LO12_NC, 0x9100_0000, P, 0x1fff, 0, Word(0x913f_fc00)),
];

/// `LD64_GOTPAGE_LO15`: `(instruction, P, G, GOT, expected)`; `X = G - Page(GOT)` in `[0, 2^15)`.
#[rustfmt::skip]
const GOTPAGE_VECTORS: &[(u64, u64, u64, u64, Want)] = &[
    (0xf940_0000, P, 0x2000_0ff8, 0x2000_0ff0, Word(0xf947_fc00)),
    (0xf940_0000, P, 0x2000_1008, 0x2000_1000, Word(0xf940_0400)),
    (0xf940_0000, P, 0x2000_7ff8, 0x2000_0000, Word(0xf97f_fc00)),
    (0xf940_0000, P, 0x2000_8000, 0x2000_0000, Range),
    (0xf940_0000, P, 0x2000_0000, 0x2000_0000, Word(0xf940_0000)),
    (0xf940_0000, P, 0x1fff_fff8, 0x2000_0000, Range),
    (0xf940_0000, P, 0x2000_0ffc, 0x2000_0000, Misaligned),
    (0xb940_0000, P, 0x2000_0ff8, 0x2000_0000, BadInsn),
];

/// The GOT base passed with every vector of [`VECTORS`] (only
/// `LD64_GOTPAGE_LO15` reads it; [`GOTPAGE_VECTORS`] give their own).
const GOT: u64 = 0x2000_0000;

/// Applies one vector through the table ([`reloc::RelocInfo::apply_values`])
/// and through the generic trait ([`RelocArch::apply`]), demanding the same
/// answer, and returns the 24-byte block (place at offset 8) and the result.
fn apply_both(r_type: u32, initial: u64, v: &FixupValues) -> ([u8; 24], Result<(), FixupError>) {
    let info = reloc::lookup(r_type).unwrap_or_else(|| panic!("{r_type} not in table"));
    let width = info.width as usize;
    let mut block = [0xa5u8; 24];
    block[8..8 + width].copy_from_slice(&initial.to_le_bytes()[..width]);
    let mut via_trait = block;
    let got = info.apply_values(&mut block, 8, v);
    let edge = Aarch64::edge(r_type).expect("every table row has a descriptor");
    let got_trait = Aarch64::apply(edge, &mut via_trait, 8, v);
    assert_eq!(
        (block, &got),
        (via_trait, &got_trait),
        "{}: table and trait disagree",
        info.name
    );
    (block, got)
}

fn check(ctx: &str, r_type: u32, initial: u64, v: &FixupValues, want: Want) {
    let info = reloc::lookup(r_type).unwrap_or_else(|| panic!("{ctx}: not in table"));
    let width = info.width as usize;
    let mut before = [0xa5u8; 24];
    before[8..8 + width].copy_from_slice(&initial.to_le_bytes()[..width]);
    let (block, got) = apply_both(r_type, initial, v);
    match (want, got) {
        (Word(w), Ok(())) => {
            let mut bytes = [0u8; 8];
            bytes[..width].copy_from_slice(&block[8..8 + width]);
            let word = u64::from_le_bytes(bytes);
            assert_eq!(word, w, "{ctx}: got {word:#x}");
            assert!(
                block[..8]
                    .iter()
                    .chain(&block[8 + width..])
                    .all(|&b| b == 0xa5),
                "{ctx}: wrote outside"
            );
        }
        (Range, Err(FixupError::OutOfRange { reloc, .. }))
        | (Misaligned, Err(FixupError::Misaligned { reloc, .. }))
        | (BadInsn, Err(FixupError::BadInstruction { reloc, .. })) => {
            assert_eq!(reloc, info.name, "{ctx}");
            assert_eq!(block, before, "{ctx}: block changed on error");
        }
        (want, got) => panic!("{ctx}: want {want:?}, got {got:?}"),
    }
}

fn values(p: u64, s: u64, a: i64, got: u64) -> FixupValues {
    FixupValues {
        place: p,
        target: s,
        addend: a,
        got,
        size: 0,
    }
}

#[test]
fn hand_computed_vectors() {
    for (i, &(r_type, initial, p, s, a, want)) in VECTORS.iter().enumerate() {
        let name = reloc::lookup(r_type).map_or("?", |r| r.name);
        let ctx = format!("vector {i} ({name} P={p:#x} S={s:#x} A={a})");
        check(&ctx, r_type, initial, &values(p, s, a, GOT), want);
        // The (P, S, A) entry point agrees where the GOT base is not read.
        let mut block = [0xa5u8; 24];
        let width = reloc::lookup(r_type).map_or(0, |r| r.width as usize);
        block[8..8 + width].copy_from_slice(&initial.to_le_bytes()[..width]);
        let mut expect = block;
        let short = reloc::apply(r_type, &mut block, p - 8, 8, s, a);
        let long = reloc::lookup(r_type).expect("in table").apply_values(
            &mut expect,
            8,
            &values(p, s, a, 0),
        );
        assert_eq!((block, short), (expect, long), "{ctx}");
    }
    for (i, &(initial, p, g, got, want)) in GOTPAGE_VECTORS.iter().enumerate() {
        let ctx = format!("GOTPAGE vector {i} (P={p:#x} G={g:#x} GOT={got:#x})");
        check(
            &ctx,
            R_AARCH64_LD64_GOTPAGE_LO15,
            initial,
            &values(p, g, 0, got),
            want,
        );
    }
}

#[test]
fn every_type_in_the_table_has_vectors_and_each_checked_range_both_boundaries() {
    let all: Vec<(u32, Want)> = VECTORS
        .iter()
        .map(|v| (v.0, v.5))
        .chain(
            GOTPAGE_VECTORS
                .iter()
                .map(|v| (R_AARCH64_LD64_GOTPAGE_LO15, v.4)),
        )
        .collect();
    for info in RELOCS {
        let rows: Vec<_> = all.iter().filter(|v| v.0 == info.r_type).collect();
        assert!(
            rows.iter().any(|v| matches!(v.1, Word(_))),
            "{}: no in-range vector",
            info.name
        );
        if info.range.is_some() {
            let over = rows.iter().filter(|v| matches!(v.1, Range)).count();
            assert_eq!(
                over, 2,
                "{}: want one vector past each end of the range",
                info.name
            );
        }
        if info.align > 1 {
            assert!(
                rows.iter().any(|v| matches!(v.1, Misaligned)),
                "{}: no misaligned vector",
                info.name
            );
        }
    }
    // A wrong-instruction vector for every instruction class.
    let classes_with_bad: Vec<&str> = all
        .iter()
        .filter(|v| matches!(v.1, BadInsn))
        .filter_map(|v| reloc::lookup(v.0).map(|r| r.insn_desc))
        .collect();
    for info in RELOCS.iter().filter(|r| !r.insns.is_empty()) {
        assert!(
            classes_with_bad.contains(&info.insn_desc),
            "{}: no wrong-instruction vector for {}",
            info.name,
            info.insn_desc
        );
    }
}

#[test]
fn ranges_match_the_psabi() {
    let range = |r| reloc::lookup(r).and_then(|i| i.range);
    assert_eq!(range(R_AARCH64_CALL26), Some((-(1 << 27), (1 << 27) - 1)));
    assert_eq!(range(R_AARCH64_CONDBR19), Some((-(1 << 20), (1 << 20) - 1)));
    assert_eq!(range(R_AARCH64_TSTBR14), Some((-(1 << 15), (1 << 15) - 1)));
    assert_eq!(
        range(R_AARCH64_ADR_PREL_PG_HI21),
        Some((-(1 << 32), (1 << 32) - 1))
    );
    assert_eq!(range(R_AARCH64_ABS32), Some((-(1 << 31), (1 << 32) - 1)));
    assert_eq!(range(R_AARCH64_MOVW_UABS_G3), None);
    assert_eq!(range(R_AARCH64_ABS16), Some((-(1 << 15), (1 << 16) - 1)));
    assert_eq!(range(R_AARCH64_PREL16), Some((-(1 << 15), (1 << 16) - 1)));
    assert_eq!(
        range(R_AARCH64_MOVW_PREL_G0),
        Some((-(1 << 16), (1 << 16) - 1))
    );
    assert_eq!(
        range(R_AARCH64_MOVW_PREL_G2),
        Some((-(1 << 48), (1 << 48) - 1))
    );
    assert_eq!(range(R_AARCH64_MOVW_PREL_G3), None);
    assert_eq!(range(R_AARCH64_LD64_GOTPAGE_LO15), Some((0, (1 << 15) - 1)));
    assert_eq!(
        range(R_AARCH64_TLSLE_ADD_TPREL_HI12),
        Some((0, (1 << 24) - 1))
    );
    assert_eq!(
        range(R_AARCH64_TLSLE_ADD_TPREL_LO12),
        Some((0, (1 << 12) - 1))
    );
    assert_eq!(range(R_AARCH64_TLSLE_ADD_TPREL_LO12_NC), None);
    assert_eq!(
        range(R_AARCH64_TLSDESC_ADR_PAGE21),
        Some((-(1 << 32), (1 << 32) - 1))
    );
    assert_eq!(range(R_AARCH64_ADD_ABS_LO12_NC), None);
    assert!(reloc::lookup(R_AARCH64_ADR_GOT_PAGE).is_some_and(|i| i.got));
    assert!(reloc::lookup(R_AARCH64_CALL26).is_some_and(|i| !i.got));
}

#[test]
fn bad_places_and_unknown_types_are_errors() {
    let mut block = [0u8; 8];
    assert!(matches!(
        reloc::apply(R_AARCH64_ABS64, &mut block, 0, 1, 0, 0),
        Err(FixupError::OutOfBounds {
            offset: 1,
            width: 8,
            len: 8,
            ..
        })
    ));
    assert!(matches!(
        reloc::apply(R_AARCH64_CALL26, &mut block, 0, u64::MAX, 0, 0),
        Err(FixupError::OutOfBounds { .. })
    ));
    assert!(matches!(
        reloc::apply(1000, &mut block, 0, 0, 0, 0),
        Err(FixupError::Unsupported {
            isa: "aarch64",
            r_type: 1000
        })
    ));
    // An instruction place must be 4-byte aligned.
    block[2..6].copy_from_slice(&0x9400_0000u32.to_le_bytes());
    assert!(matches!(
        reloc::apply(R_AARCH64_CALL26, &mut block, 0x1000, 2, 0x2000, 0),
        Err(FixupError::Misaligned { align: 4, .. })
    ));
}

/// The branch encodings agree with an independent disassembler's idea of
/// the target.
#[test]
fn branch_targets_agree_with_yaxpeax() {
    use yaxpeax_arch::{Decoder, U8Reader};
    let decoder = yaxpeax_arm::armv8::a64::InstDecoder::default();
    let cases = [
        (
            R_AARCH64_CALL26,
            0x9400_0000u32,
            0x7ff_fffci64,
            "bl $+0x7fffffc",
        ),
        (R_AARCH64_CALL26, 0x9400_0000, -0x800_0000, "bl $-0x8000000"),
        (
            R_AARCH64_CONDBR19,
            0x5400_0000,
            -0x10_0000,
            "b.eq $-0x100000",
        ),
        (
            R_AARCH64_TSTBR14,
            0x3600_0000,
            0x7ffc,
            "tbz w0, #0x0, $+0x7ffc",
        ),
        (
            R_AARCH64_ADR_PREL_LO21,
            0x1000_0000,
            0xf_ffff,
            "adr x0, $+0xfffff",
        ),
    ];
    for (r_type, insn, delta, text) in cases {
        let mut block = insn.to_le_bytes();
        let s = (P as i64 + delta) as u64;
        reloc::apply(r_type, &mut block, P, 0, s, 0).expect("in range");
        let decoded = decoder.decode(&mut U8Reader::new(&block)).expect("decodes");
        assert_eq!(decoded.to_string(), text);
    }
}

// ---------------------------------------------------------------------------
// Cross-check with GNU ld: each vector assembled (`.reloc` keeps the
// instruction word and puts A in the RELA addend) and linked so that ld sees
// the same P and the same S, G (GOT entry, IE slot, TLS descriptor) or
// TPREL(S). ld's word must equal kiln's; where kiln reports overflow, ld
// must too ("relocation truncated to fit"), or, for CALL26/JUMP26, must
// have routed the branch through a stub of its own, and that stub must be
// byte for byte kiln's veneer (`RelocArch::write_veneer`) to the same target.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_arch::EdgeTarget;

const AS: &str = "aarch64-linux-gnu-as";
const LD: &str = "aarch64-linux-gnu-ld";
/// The value of `sym` when a vector goes through a GOT entry.
const GOT_SYM_VALUE: u64 = 0x1234_5678_9abc;
/// Where the probe link puts the GOT section, to learn the slot's offset in it.
const PROBE_AT: u64 = 0x4000_0000;

/// How ld is made to see the vector's target.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setup {
    /// `--defsym sym=S`, static.
    Abs,
    /// A GOT entry for `sym` in `.got`, static.
    Got,
    /// An IE slot in `.got`, shared (a static link relaxes IE to LE).
    Ie,
    /// A TLS descriptor in `.got.plt`, shared.
    Desc,
    /// A general-dynamic GOT pair in `.got`, shared.
    Gd,
    /// `tsym` at TPREL(S) in `.tbss`, static.
    Tle,
}

impl Setup {
    fn of(r_type: u32) -> Option<Setup> {
        Some(match Aarch64::edge(r_type)?.target {
            EdgeTarget::Symbol | EdgeTarget::Branch => Setup::Abs,
            EdgeTarget::GotEntry { .. } => Setup::Got,
            EdgeTarget::TlsIeEntry => Setup::Ie,
            EdgeTarget::TlsDescriptor => Setup::Desc,
            EdgeTarget::TlsGdPair => Setup::Gd,
            EdgeTarget::TpOffset => Setup::Tle,
            _ => return None,
        })
    }
    fn section(self) -> Option<&'static str> {
        match self {
            Setup::Got | Setup::Ie | Setup::Gd => Some(".got"),
            Setup::Desc => Some(".got.plt"),
            Setup::Abs | Setup::Tle => None,
        }
    }
}

struct Linked {
    /// The place's bytes, zero-extended.
    word: u64,
    /// Address of the GOT entry, IE slot or descriptor ld made.
    g: Option<u64>,
    /// Address of `.got`.
    got: Option<u64>,
    /// Every section with contents: `(address, bytes)`.
    sections: Vec<(u64, Vec<u8>)>,
}

impl Linked {
    /// `len` bytes at address `addr`, if one section holds them all.
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.sections.iter().find_map(|(at, bytes)| {
            let start = usize::try_from(addr.checked_sub(*at)?).ok()?;
            bytes.get(start..start.checked_add(len)?)
        })
    }
}

struct Ld {
    dir: PathBuf,
    n: usize,
}

impl Ld {
    /// A scratch directory of its own per test (`test`), removed by the test.
    fn new(test: &str) -> Ld {
        let dir = std::env::temp_dir().join(format!("kiln-arch-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Ld { dir, n: 0 }
    }

    fn source(r_type: u32, initial: u64, s: u64, a: i64, setup: Setup) -> String {
        let info = reloc::lookup(r_type).expect("in table");
        let sym = match setup {
            Setup::Abs | Setup::Got => format!("sym{a:+}"),
            Setup::Ie | Setup::Desc | Setup::Gd => "tsym".to_string(),
            Setup::Tle => format!("tsym{a:+}"),
        };
        let data = match (info.width, info.insns.is_empty()) {
            (8, true) => format!(".xword {initial:#x}"),
            (4, true) => format!(".word {initial:#x}"),
            (2, true) => format!(".hword {initial:#x}"),
            _ => format!(".inst {initial:#x}"),
        };
        let tls_skip = match setup {
            Setup::Tle => s
                .checked_sub(16)
                .expect("TPREL vectors start at 16 (the TCB)"),
            _ => 0,
        };
        format!(
            ".text\n.globl _start\n_start:\n.reloc ., {name}, {sym}\n{data}\n\
             .section .tbss,\"awT\",@nobits\n.p2align 4\n.skip {tls_skip:#x}\n\
             .globl tsym\ntsym: .skip 8\n",
            name = info.name
        )
    }

    /// Assembles and links one relocation; `Err` is ld's complaint.
    fn link(
        &mut self,
        r_type: u32,
        initial: u64,
        (p, s, a): (u64, u64, i64),
        setup: Setup,
        sec_at: Option<u64>,
    ) -> Result<Linked, String> {
        self.n += 1;
        let base = self.dir.join(format!("v{}", self.n));
        let (src, obj, out) = (
            base.with_extension("s"),
            base.with_extension("o"),
            base.with_extension("out"),
        );
        std::fs::write(&src, Self::source(r_type, initial, s, a, setup)).expect("write source");
        run(Command::new(AS).arg(&src).arg("-o").arg(&obj)).expect("as assembles the vector");
        let mut ld = Command::new(LD);
        ld.arg(&obj).arg("-o").arg(&out);
        match (setup.section(), sec_at) {
            (Some(sec), Some(at)) => {
                // A script, not --section-start: ld 2.40 fails (internal
                // error) when .got is asked to go below .text.
                let mut outs = [(p, ".text"), (at, sec)];
                outs.sort();
                let script = base.with_extension("ld");
                let body: String = outs
                    .iter()
                    .map(|(addr, name)| format!("  {name} {addr:#x} : {{ *({name}) }}\n"))
                    .collect();
                std::fs::write(&script, format!("SECTIONS {{\n{body}}}\n")).expect("write script");
                ld.arg("-T").arg(&script);
            }
            _ => {
                ld.arg(format!("--section-start=.text={p:#x}"));
            }
        }
        let sym = if setup == Setup::Abs {
            s
        } else {
            GOT_SYM_VALUE
        };
        ld.arg(format!("--defsym=sym={sym:#x}"));
        if matches!(setup, Setup::Ie | Setup::Desc | Setup::Gd) {
            ld.arg("-shared");
        }
        run(&mut ld)?;
        let width = reloc::lookup(r_type).map_or(0, |r| r.width as usize);
        Ok(read_linked(&out, width, setup))
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn read_linked(path: &Path, width: usize, setup: Setup) -> Linked {
    use object::{Object, ObjectSection};
    let data = std::fs::read(path).expect("read ld output");
    let file = object::File::parse(&*data).expect("ld output parses");
    let text = file.section_by_name(".text").expect(".text");
    let bytes = text.data().expect(".text data");
    let mut word = [0u8; 8];
    word[..width].copy_from_slice(&bytes[..width]);
    let got_sec = file.section_by_name(".got");
    let got = got_sec.as_ref().map(|s| s.address());
    let dyn_reloc = |want| {
        file.dynamic_relocations()?.find_map(|(off, r)| {
            matches!(r.flags(), object::RelocationFlags::Elf { r_type } if r_type == want)
                .then_some(off)
        })
    };
    let g = match setup {
        Setup::Got => got_sec.and_then(|s| {
            let d = s.data().ok()?;
            let i = d
                .chunks_exact(8)
                .position(|c| c == GOT_SYM_VALUE.to_le_bytes())?;
            Some(s.address() + 8 * i as u64)
        }),
        Setup::Ie => dyn_reloc(object::elf::R_AARCH64_TLS_TPREL),
        Setup::Desc => dyn_reloc(object::elf::R_AARCH64_TLSDESC),
        Setup::Gd => dyn_reloc(object::elf::R_AARCH64_TLS_DTPMOD),
        Setup::Abs | Setup::Tle => None,
    };
    let sections = file
        .sections()
        .filter_map(|s| Some((s.address(), s.data().ok()?.to_vec())))
        .collect();
    Linked {
        word: u64::from_le_bytes(word),
        g,
        got,
        sections,
    }
}

/// What kiln makes of one vector: the place's word, or the error.
fn kiln(r_type: u32, initial: u64, v: &FixupValues) -> Result<u64, FixupError> {
    let (block, got) = apply_both(r_type, initial, v);
    let width = reloc::lookup(r_type).map_or(0, |r| r.width as usize);
    got.map(|()| {
        let mut w = [0u8; 8];
        w[..width].copy_from_slice(&block[8..8 + width]);
        u64::from_le_bytes(w)
    })
}

/// The target of a B/BL word at `p`.
fn branch_target(p: u64, word: u64) -> u64 {
    let imm26 = (word & 0x03ff_ffff) as i64;
    let off = (imm26 << 38) >> 36; // sign-extend 26 bits, times 4
    p.wrapping_add_signed(off)
}

/// Links one vector so that ld's G (or TPREL, or S) is the vector's, and
/// compares. Returns false if the vector is not one ld can express.
fn cross_check(ld: &mut Ld, ctx: &str, r_type: u32, initial: u64, v: &FixupValues) -> bool {
    let Some(setup) = Setup::of(r_type) else {
        return false;
    };
    let (p, s, a) = (v.place, v.target, v.addend);
    let ours = kiln(r_type, initial, v);
    if let Err(FixupError::Misaligned { .. } | FixupError::BadInstruction { .. }) = ours {
        // ld checks neither (and cannot place a GOT slot off 8 bytes).
        return false;
    }
    let sec_at = match setup.section() {
        None => None,
        Some(sec) => {
            let probe = ld
                .link(r_type, initial, (p, PROBE_AT, 0), setup, Some(PROBE_AT))
                .unwrap_or_else(|e| panic!("{ctx}: probe link failed: {e}"));
            let g0 = probe.g.unwrap_or_else(|| panic!("{ctx}: no slot in {sec}"));
            let Some(at) = s.checked_sub(g0 - PROBE_AT) else {
                return false;
            };
            Some(at)
        }
    };
    let theirs = ld.link(r_type, initial, (p, s, a), setup, sec_at);
    if let Ok(linked) = &theirs
        && setup.section().is_some()
    {
        assert_eq!(linked.g, Some(s), "{ctx}: ld put the slot elsewhere");
    }
    match (ours, theirs) {
        (Ok(w), Ok(linked)) => assert_eq!(
            linked.word, w,
            "{ctx}: ld wrote {:#x}, kiln {w:#x}",
            linked.word
        ),
        (Err(FixupError::OutOfRange { .. }), Err(e)) => {
            assert!(
                e.contains("truncated to fit"),
                "{ctx}: ld failed otherwise: {e}"
            )
        }
        (Err(FixupError::OutOfRange { .. }), Ok(linked))
            if matches!(r_type, R_AARCH64_CALL26 | R_AARCH64_JUMP26) =>
        {
            let stub = branch_target(p, linked.word);
            assert_ne!(
                stub, s,
                "{ctx}: ld branched straight to a target kiln finds out of reach"
            );
            // ld's long-branch stub is kiln's veneer (adrp/add/br x16).
            let theirs = linked.read(stub, 12).expect("ld's stub is in the output");
            let mut ours = [0u8; 12];
            Aarch64::write_veneer(&mut ours, stub, s).expect("in the veneer's reach");
            assert_eq!(
                theirs, ours,
                "{ctx}: ld's stub at {stub:#x} is not kiln's veneer"
            );
        }
        (ours, theirs) => panic!(
            "{ctx}: kiln {ours:?}, ld {:?}",
            theirs.map(|l| format!("{:#x}", l.word))
        ),
    }
    true
}

/// Where GNU ld 2.40 departs from AAELF64 (kiln follows AAELF64, as lld
/// does), so the vector is checked by hand only.
fn gnu_ld_deviates(r_type: u32, initial: u64, p: u64, s: u64, a: i64) -> bool {
    let x = i128::from(s) + i128::from(a);
    match r_type {
        // AAELF64: -2^31 <= X < 2^32 (-2^15 <= X < 2^16); bfd checks ABS32
        // and ABS16 as unsigned and rejects negative X.
        R_AARCH64_ABS32 | R_AARCH64_ABS16 => x < 0,
        // Same range for PREL32 (PREL16); bfd checks them as signed and
        // rejects X >= 2^31 (2^15).
        R_AARCH64_PREL32 => x - i128::from(p) >= 1 << 31,
        R_AARCH64_PREL16 => x - i128::from(p) >= 1 << 15,
        // AAELF64 (and lld) check the TLS local-exec MOV[NZ] groups as
        // signed 17/33/49 bits and pick MOVN for X < 0; bfd accepts X up to
        // 2^17/2^33/2^49 and keeps the MOVZ for X < 0 (which aarch64's
        // variant-1 TLS never produces: TPREL >= 16).
        R_AARCH64_TLSLE_MOVW_TPREL_G0 => !(0..1 << 16).contains(&x),
        R_AARCH64_TLSLE_MOVW_TPREL_G1 => !(0..1 << 32).contains(&x),
        R_AARCH64_TLSLE_MOVW_TPREL_G2 => !(0..1 << 48).contains(&x),
        // AAELF64 checks -2^32 <= X < 2^32 for the GOT, IE and descriptor
        // ADRPs; bfd does not check them at all and wraps.
        R_AARCH64_ADR_GOT_PAGE
        | R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21
        | R_AARCH64_TLSGD_ADR_PAGE21
        | R_AARCH64_TLSDESC_ADR_PAGE21 => {
            let d = i128::from(s & !0xfff) - i128::from(p & !0xfff);
            !(-(1i128 << 32)..1i128 << 32).contains(&d)
        }
        // A MOVK under a checked group: bfd rewrites its opc to MOVN/MOVZ
        // regardless (a MOVK becomes the unallocated opc 01); kiln and lld
        // keep the MOVK.
        R_AARCH64_MOVW_PREL_G0
        | R_AARCH64_MOVW_PREL_G1
        | R_AARCH64_MOVW_PREL_G2
        | R_AARCH64_MOVW_PREL_G3 => initial >> 29 & 3 == 3,
        _ => false,
    }
}

#[test]
fn gnu_ld_agrees() {
    if !common::need_tool(AS) || !common::need_tool(LD) {
        return;
    }
    let mut ld = Ld::new("gnu-ld-agrees");
    let mut checked = std::collections::BTreeSet::new();
    for (i, &(r_type, initial, p, s, a, _)) in VECTORS.iter().enumerate() {
        let name = reloc::lookup(r_type).map_or("?", |r| r.name);
        let ctx = format!("vector {i} ({name} P={p:#x} S={s:#x} A={a})");
        if !gnu_ld_deviates(r_type, initial, p, s, a)
            && cross_check(&mut ld, &ctx, r_type, initial, &values(p, s, a, GOT))
        {
            checked.insert(r_type);
        }
    }
    // LD64_GOTPAGE_LO15 where ld's one entry (at GOT + 8) is the vector's G.
    for (i, &(initial, p, g, got, _)) in GOTPAGE_VECTORS.iter().enumerate() {
        if g != got + 8 {
            continue;
        }
        let ctx = format!("GOTPAGE vector {i} (P={p:#x} G={g:#x} GOT={got:#x})");
        let linked = ld
            .link(
                R_AARCH64_LD64_GOTPAGE_LO15,
                initial,
                (p, 0, 0),
                Setup::Got,
                Some(got),
            )
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(
            (linked.g, linked.got),
            (Some(g), Some(got)),
            "{ctx}: layout"
        );
        let ours = kiln(R_AARCH64_LD64_GOTPAGE_LO15, initial, &values(p, g, 0, got));
        assert_eq!(ours, Ok(linked.word), "{ctx}");
        checked.insert(R_AARCH64_LD64_GOTPAGE_LO15);
    }
    let _ = std::fs::remove_dir_all(&ld.dir);
    let missing: Vec<&str> = RELOCS
        .iter()
        .filter(|r| r.width > 0 && !checked.contains(&r.r_type))
        .map(|r| r.name)
        .collect();
    assert!(missing.is_empty(), "not cross-checked with ld: {missing:?}");
}

/// kiln's raw numbers are `object`'s (and so binutils') named constants.
#[test]
fn type_numbers_match_object() {
    use object::elf;
    let pairs = [
        (R_AARCH64_ABS16, elf::R_AARCH64_ABS16),
        (R_AARCH64_PREL16, elf::R_AARCH64_PREL16),
        (R_AARCH64_MOVW_PREL_G0, elf::R_AARCH64_MOVW_PREL_G0),
        (R_AARCH64_MOVW_PREL_G3, elf::R_AARCH64_MOVW_PREL_G3),
        (
            R_AARCH64_LD64_GOTPAGE_LO15,
            elf::R_AARCH64_LD64_GOTPAGE_LO15,
        ),
        (
            R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21,
            elf::R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21,
        ),
        (
            R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC,
            elf::R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC,
        ),
        (
            R_AARCH64_TLSLE_ADD_TPREL_HI12,
            elf::R_AARCH64_TLSLE_ADD_TPREL_HI12,
        ),
        (
            R_AARCH64_TLSLE_ADD_TPREL_LO12_NC,
            elf::R_AARCH64_TLSLE_ADD_TPREL_LO12_NC,
        ),
        (
            R_AARCH64_TLSDESC_ADR_PAGE21,
            elf::R_AARCH64_TLSDESC_ADR_PAGE21,
        ),
        (R_AARCH64_TLSDESC_ADD_LO12, elf::R_AARCH64_TLSDESC_ADD_LO12),
        (R_AARCH64_TLSDESC_CALL, elf::R_AARCH64_TLSDESC_CALL),
        (R_AARCH64_TLSGD_ADR_PAGE21, elf::R_AARCH64_TLSGD_ADR_PAGE21),
        (
            R_AARCH64_TLSGD_ADD_LO12_NC,
            elf::R_AARCH64_TLSGD_ADD_LO12_NC,
        ),
        (
            R_AARCH64_LDST128_ABS_LO12_NC,
            elf::R_AARCH64_LDST128_ABS_LO12_NC,
        ),
    ];
    for (ours, theirs) in pairs {
        assert_eq!(elf::RelocationType(ours), theirs);
    }
}

/// A static link relaxes the IE and descriptor sequences to local exec;
/// kiln's `RelocArch::relax` followed by the relaxed edges writes the same
/// words for the same TP offsets.
#[test]
fn gnu_ld_relaxes_tls_like_kiln() {
    if !common::need_tool(AS) || !common::need_tool(LD) {
        return;
    }
    // (r_type, instruction, symbol): adrp x3; ldr x3, [x3] (IE), then the
    // descriptor call adrp x0; ldr x1, [x0]; add x0, x0; blr x1.
    let seq: [(u32, u32, &str); 6] = [
        (R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21, 0x9000_0003, "tie"),
        (R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC, 0xf940_0063, "tie"),
        (R_AARCH64_TLSDESC_ADR_PAGE21, 0x9000_0000, "tdesc"),
        (R_AARCH64_TLSDESC_LD64_LO12, 0xf940_0001, "tdesc"),
        (R_AARCH64_TLSDESC_ADD_LO12, 0x9100_0000, "tdesc"),
        (R_AARCH64_TLSDESC_CALL, 0xd63f_0020, "tdesc"),
    ];
    // TPREL = 16 (the TCB) + offset in .tbss (16-aligned).
    let (skip, tie, tdesc) = (0x1_2340u64, 0x1_2350u64, 0x1_2358u64);
    let mut src = String::from(".text\n.globl _start\n_start:\n");
    for (r_type, insn, sym) in seq {
        let name = reloc::lookup(r_type).expect("in table").name;
        src += &format!(".reloc ., {name}, {sym}\n.inst {insn:#x}\n");
    }
    src += &format!(
        ".section .tbss,\"awT\",@nobits\n.p2align 4\n.skip {skip:#x}\ntie: .skip 8\ntdesc: .skip 8\n"
    );
    let ld = Ld::new("gnu-ld-tls");
    let (s, o, out) = (
        ld.dir.join("tls.s"),
        ld.dir.join("tls.o"),
        ld.dir.join("tls.out"),
    );
    std::fs::write(&s, src).expect("write source");
    run(Command::new(AS).arg(&s).arg("-o").arg(&o)).expect("as");
    run(Command::new(LD)
        .arg(&o)
        .arg("-o")
        .arg(&out)
        .arg(format!("--section-start=.text={P:#x}")))
    .expect("ld links the TLS sequence");
    let linked = read_linked(&out, 0, Setup::Abs);
    let theirs = linked.read(P, 24).expect(".text").to_vec();
    let _ = std::fs::remove_dir_all(&ld.dir);

    let mut ours: Vec<u8> = seq.iter().flat_map(|s| s.1.to_le_bytes()).collect();
    for (i, &(r_type, _, sym)) in seq.iter().enumerate() {
        let offset = 4 * i as u64;
        let edge = Aarch64::edge(r_type).expect("in table");
        assert!(edge.relaxable, "{}", edge.name);
        let r = Aarch64::relax(edge, &mut ours, offset)
            .expect("in bounds")
            .unwrap_or_else(|| panic!("{} relaxes", edge.name));
        let tprel = if sym == "tie" { tie } else { tdesc };
        assert!(matches!(
            r.edge.target,
            EdgeTarget::TpOffset | EdgeTarget::None
        ));
        let v = values(P + offset, tprel, 0, 0);
        Aarch64::apply(r.edge, &mut ours, offset, &v).expect("TP offset in reach");
    }
    let words = |b: &[u8]| -> Vec<String> {
        b.chunks_exact(4)
            .map(|w| format!("{:08x}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    };
    assert_eq!(words(&ours), words(&theirs));
}
