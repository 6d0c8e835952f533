//! AArch64 relocation math against hand-computed vectors: for every type in
//! the table, a value inside its range, the boundary values on both sides of
//! the range, and misaligned values where the type has an alignment. Every
//! expected instruction word was computed by hand from AAELF64's formula and
//! the A64 field layout (and spot-checked with GNU as/objdump).

use kiln_arch::FixupError;
use kiln_arch::aarch64::reloc::{self, RELOCS, r_type::*};

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
    // TBZ imm14, range [-2^15, 2^15 - 4].
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P + 0x7ffc, 0, Word(0x3603_ffe0)),
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P + 0x8000, 0, Range),
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P - 0x8000, 0, Word(0x3604_0000)),
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P - 0x8004, 0, Range),
    (R_AARCH64_TSTBR14, 0x3600_0000, P, P + 1, 0, Misaligned),
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
];

#[test]
fn hand_computed_vectors() {
    for (i, &(r_type, initial, p, s, a, want)) in VECTORS.iter().enumerate() {
        let info =
            reloc::lookup(r_type).unwrap_or_else(|| panic!("vector {i}: {r_type} not in table"));
        let width = info.width as usize;
        // The place at offset 8 of a 24-byte block, surrounded by a canary.
        let mut block = [0xa5u8; 24];
        block[8..8 + width].copy_from_slice(&initial.to_le_bytes()[..width]);
        let before = block;
        let got = reloc::apply(r_type, &mut block, p - 8, 8, s, a);
        let ctx = format!("vector {i} ({} P={p:#x} S={s:#x} A={a})", info.name);
        match (want, got) {
            (Word(w), Ok(())) => {
                let mut bytes = [0u8; 8];
                bytes[..width].copy_from_slice(&block[8..8 + width]);
                assert_eq!(
                    u64::from_le_bytes(bytes),
                    w,
                    "{ctx}: got {:#x}",
                    u64::from_le_bytes(bytes)
                );
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
}

#[test]
fn every_type_in_the_table_has_vectors_and_each_checked_range_both_boundaries() {
    for info in RELOCS {
        let rows: Vec<_> = VECTORS.iter().filter(|v| v.0 == info.r_type).collect();
        assert!(
            rows.iter().any(|v| matches!(v.5, Word(_))),
            "{}: no in-range vector",
            info.name
        );
        if info.range.is_some() {
            let over = rows.iter().filter(|v| matches!(v.5, Range)).count();
            assert!(over >= 1, "{}: no out-of-range vector", info.name);
        }
        if info.align > 1 {
            assert!(
                rows.iter().any(|v| matches!(v.5, Misaligned)),
                "{}: no misaligned vector",
                info.name
            );
        }
    }
    // Both sides of every branch/ADR/ADRP/data range.
    for r in [
        R_AARCH64_ABS32,
        R_AARCH64_PREL32,
        R_AARCH64_CALL26,
        R_AARCH64_CONDBR19,
        R_AARCH64_TSTBR14,
        R_AARCH64_ADR_PREL_LO21,
        R_AARCH64_ADR_PREL_PG_HI21,
    ] {
        let n = VECTORS
            .iter()
            .filter(|v| v.0 == r && matches!(v.5, Range))
            .count();
        assert_eq!(
            n, 2,
            "r_type {r}: want one vector past each end of the range"
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
