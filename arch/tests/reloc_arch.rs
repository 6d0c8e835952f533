//! The ISA-generic relocation surface ([`RelocArch`]) for both ISAs: the
//! descriptors agree with each ISA's own table, applying through the trait
//! is applying through the table, relaxation, fill bytes and branch reach;
//! and a property test that random inputs never panic and never touch bytes
//! outside the place.

use kiln_arch::aarch64::reloc::{self as a64, r_type::*};
use kiln_arch::x86_64::reloc as x86;
use kiln_arch::{Aarch64, EdgeTarget, FixupError, FixupValues, RelocArch, X86_64};
use proptest::prelude::*;

fn values(place: u64, target: u64, addend: i64) -> FixupValues {
    FixupValues {
        place,
        target,
        addend,
        got: 0x5000,
        size: 24,
    }
}

fn sorted_and_round_trips<A: RelocArch>(prefix: &str) {
    let edges = A::edges();
    assert!(!edges.is_empty());
    for w in edges.windows(2) {
        assert!(w[0].r_type < w[1].r_type, "{}: sorted, unique", w[1].name);
    }
    for e in edges {
        assert_eq!(A::edge(e.r_type), Some(e));
        assert!(e.name.starts_with(prefix), "{}", e.name);
        if e.relaxable {
            // A GOT or TLS access, or the descriptor call marker.
            assert!(
                e.target.needs_got_entry() || e.target == EdgeTarget::None,
                "{}: relaxes a GOT or TLS access",
                e.name
            );
        }
    }
}

#[test]
fn x86_64_descriptors_agree_with_its_table() {
    sorted_and_round_trips::<X86_64>("R_X86_64_");
    assert_eq!(X86_64::edges().len(), x86::RELOCATIONS.len());
    for info in x86::RELOCATIONS {
        let e = X86_64::edge(info.r_type).expect("every row has a descriptor");
        assert_eq!(
            (e.name, e.width, e.pc_relative),
            (info.name, info.width, info.pc_relative)
        );
        assert_eq!(
            e.target.needs_got_entry(),
            info.kind.needs_got_entry(),
            "{}",
            e.name
        );
        assert_eq!(e.target.is_tls(), info.kind.is_tls(), "{}", e.name);
    }
    let target = |r| X86_64::edge(r).map(|e| e.target);
    assert_eq!(target(2), Some(EdgeTarget::Symbol)); // PC32
    assert_eq!(target(4), Some(EdgeTarget::Branch)); // PLT32
    assert_eq!(target(0), Some(EdgeTarget::None));
    assert_eq!(target(19), Some(EdgeTarget::TlsGdPair));
    assert_eq!(target(22), Some(EdgeTarget::TlsIeEntry));
    assert_eq!(target(23), Some(EdgeTarget::TpOffset));
    assert_eq!(target(34), Some(EdgeTarget::TlsDescriptor));
    assert_eq!(
        target(41),
        Some(EdgeTarget::GotEntry {
            addend_in_entry: false
        })
    );
    assert!(X86_64::edge(41).is_some_and(|e| e.relaxable && e.pc_relative));
    assert!(X86_64::edge(26).is_some_and(|e| e.uses_got_base)); // GOTPC32
    assert!(X86_64::edge(25).is_some_and(|e| e.uses_got_base)); // GOTOFF64
    assert!(X86_64::edge(37).is_none(), "IRELATIVE is not for objects");
    assert!(X86_64::edge(1000).is_none());
}

#[test]
fn aarch64_descriptors_agree_with_its_table() {
    sorted_and_round_trips::<Aarch64>("R_AARCH64_");
    assert_eq!(Aarch64::edges().len(), a64::RELOCS.len());
    for info in a64::RELOCS {
        let e = Aarch64::edge(info.r_type).expect("every row has a descriptor");
        assert_eq!((e.name, u32::from(e.width)), (info.name, info.width));
        assert_eq!(e.target, info.target);
        assert_eq!(e.target.needs_got_entry(), info.got, "{}", e.name);
    }
    let e = |r| Aarch64::edge(r).expect("in table");
    assert_eq!(e(R_AARCH64_CALL26).target, EdgeTarget::Branch);
    assert_eq!(e(R_AARCH64_JUMP26).target, EdgeTarget::Branch);
    assert_eq!(e(R_AARCH64_CONDBR19).target, EdgeTarget::Symbol);
    assert!(e(R_AARCH64_CALL26).pc_relative && e(R_AARCH64_ADR_PREL_PG_HI21).pc_relative);
    assert!(!e(R_AARCH64_ADD_ABS_LO12_NC).pc_relative);
    let got = EdgeTarget::GotEntry {
        addend_in_entry: true,
    };
    for r in [
        R_AARCH64_ADR_GOT_PAGE,
        R_AARCH64_LD64_GOT_LO12_NC,
        R_AARCH64_LD64_GOTPAGE_LO15,
    ] {
        assert_eq!(e(r).target, got);
    }
    assert!(e(R_AARCH64_ADR_GOT_PAGE).relaxable && e(R_AARCH64_LD64_GOT_LO12_NC).relaxable);
    assert!(
        !e(R_AARCH64_LD64_GOTPAGE_LO15).relaxable && e(R_AARCH64_LD64_GOTPAGE_LO15).uses_got_base
    );
    for r in [
        R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21,
        R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC,
    ] {
        assert_eq!(e(r).target, EdgeTarget::TlsIeEntry);
    }
    for r in [
        R_AARCH64_TLSDESC_ADR_PAGE21,
        R_AARCH64_TLSDESC_LD64_LO12,
        R_AARCH64_TLSDESC_ADD_LO12,
    ] {
        assert!(e(r).target.needs_tls_descriptor());
    }
    assert_eq!(e(R_AARCH64_TLSDESC_CALL).width, 0);
    for r in [
        R_AARCH64_TLSLE_ADD_TPREL_HI12,
        R_AARCH64_TLSLE_ADD_TPREL_LO12,
        R_AARCH64_TLSLE_ADD_TPREL_LO12_NC,
    ] {
        assert_eq!(e(r).target, EdgeTarget::TpOffset);
    }
    assert!(Aarch64::edge(1).is_none() && Aarch64::edge(1000).is_none());
}

#[test]
fn x86_64_apply_is_the_table_apply() {
    let cases = [
        (0x1000u64, 0x2000u64, -4i64),
        (0x1000, 0x1_0000_1000, 0),
        (0x8000_1000, 0x1000, 0),
        (0, 0xffff_fff0, 0),
        (0x4000, 0x5100, 8),
    ];
    for info in x86::RELOCATIONS {
        let edge = X86_64::edge(info.r_type).expect("in table");
        for &(p, s, a) in &cases {
            let v = values(p, s, a);
            let (mut ours, mut theirs) = ([0x5au8; 12], [0x5au8; 12]);
            let r1 = X86_64::apply(edge, &mut ours, 2, &v);
            let r2 = x86::apply(info.kind, &mut theirs, 2, &v);
            assert_eq!((ours, r1), (theirs, r2), "{}", info.name);
        }
    }
}

#[test]
fn a_descriptor_of_another_isa_is_rejected() {
    let call26 = Aarch64::edge(R_AARCH64_CALL26).expect("in table");
    let pc32 = X86_64::edge(2).expect("in table");
    let mut block = [0u8; 16];
    assert!(matches!(
        X86_64::apply(call26, &mut block, 0, &values(0, 0, 0)),
        Err(FixupError::Unsupported { isa: "x86-64", .. })
    ));
    assert!(matches!(
        Aarch64::apply(pc32, &mut block, 0, &values(0, 0, 0)),
        Err(FixupError::Unsupported { isa: "aarch64", .. })
    ));
    assert!(matches!(
        Aarch64::relax(pc32, &mut block, 0),
        Err(FixupError::Unsupported { .. })
    ));
    assert_eq!(block, [0u8; 16]);
}

#[test]
fn x86_64_relaxation_names_the_direct_edge() {
    let gotpcrelx = X86_64::edge(41).expect("in table");
    // jmp *foo@GOTPCREL(%rip) = ff 25 <disp32>: becomes jmp foo; nop, field at P - 1.
    let mut jmp = [0xff, 0x25, 0, 0, 0, 0];
    let r = X86_64::relax(gotpcrelx, &mut jmp, 2)
        .expect("in bounds")
        .expect("relaxed");
    assert_eq!((r.edge.name, r.place_delta), ("R_X86_64_PC32", -1));
    let (p, target) = (0x1000_0002u64, 0x1234_5678u64);
    let at = (2 + i64::from(r.place_delta)) as u64;
    let place = p.wrapping_add_signed(i64::from(r.place_delta));
    X86_64::apply(r.edge, &mut jmp, at, &values(place, target, -4)).expect("in reach");
    let rel = i32::from_le_bytes([jmp[1], jmp[2], jmp[3], jmp[4]]);
    assert_eq!((p + 3).wrapping_add_signed(i64::from(rel)), target);
    // mov: same place.
    let mut mov = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
    let r = X86_64::relax(X86_64::edge(42).expect("REX_GOTPCRELX"), &mut mov, 3)
        .expect("in bounds")
        .expect("relaxed");
    assert_eq!((r.edge.r_type, r.place_delta, mov[1]), (2, 0, 0x8d));
    // Not relaxable: nothing happens.
    let mut other = [0u8; 8];
    assert_eq!(
        X86_64::relax(X86_64::edge(2).expect("PC32"), &mut other, 2),
        Ok(None)
    );
    assert_eq!(other, [0u8; 8]);
}

fn disasm_a64(word: [u8; 4]) -> String {
    use yaxpeax_arch::{Decoder, U8Reader};
    let decoder = yaxpeax_arm::armv8::a64::InstDecoder::default();
    decoder
        .decode(&mut U8Reader::new(&word))
        .map(|i| i.to_string())
        .unwrap_or_else(|e| panic!("undecodable {word:02x?}: {e}"))
}

#[test]
fn aarch64_got_load_relaxes_to_adrp_add() {
    // adrp x0, :got:sym; ldr x0, [x0, :got_lo12:sym]
    let p = 0x10_0000u64;
    let sym = 0x1234_5678u64;
    let mut code = [0u8; 8];
    code[..4].copy_from_slice(&0x9000_0000u32.to_le_bytes());
    code[4..].copy_from_slice(&0xf940_0000u32.to_le_bytes());
    for (offset, r_type) in [
        (0u64, R_AARCH64_ADR_GOT_PAGE),
        (4, R_AARCH64_LD64_GOT_LO12_NC),
    ] {
        let edge = Aarch64::edge(r_type).expect("in table");
        let r = Aarch64::relax(edge, &mut code, offset)
            .expect("in bounds")
            .expect("relaxed");
        assert_eq!(r.place_delta, 0);
        Aarch64::apply(r.edge, &mut code, offset, &values(p + offset, sym, 0)).expect("in reach");
    }
    let words: Vec<String> = code
        .chunks_exact(4)
        .map(|w| disasm_a64([w[0], w[1], w[2], w[3]]))
        .collect();
    assert_eq!(words, ["adrp x0, $+0x12245000", "add x0, x0, #0x678"]);
    // A branch is not relaxable; an LDR of another size is left alone.
    let mut bl = 0x9400_0000u32.to_le_bytes();
    let call26 = Aarch64::edge(R_AARCH64_CALL26).expect("in table");
    assert_eq!(Aarch64::relax(call26, &mut bl, 0), Ok(None));
    let mut ldr_w = 0xb940_0000u32.to_le_bytes();
    let lo12 = Aarch64::edge(R_AARCH64_LD64_GOT_LO12_NC).expect("in table");
    assert_eq!(Aarch64::relax(lo12, &mut ldr_w, 0), Ok(None));
    assert_eq!(u32::from_le_bytes(ldr_w), 0xb940_0000);
    assert!(Aarch64::relax(lo12, &mut ldr_w, 1).is_err());
}

#[test]
fn code_fill_traps_at_any_phase() {
    let mut buf = [0u8; 7];
    X86_64::fill_code(&mut buf, 0x1003);
    assert_eq!(buf, [0xcc; 7]);
    let mut buf = [0u8; 10];
    Aarch64::fill_code(&mut buf, 0x1002);
    // Byte i of brk #0 sits at addresses ≡ i (mod 4).
    assert_eq!(buf[2..6], [0x00, 0x00, 0x20, 0xd4]);
    assert_eq!(buf[..2], [0x20, 0xd4]);
    assert_eq!(disasm_a64([buf[6], buf[7], buf[8], buf[9]]), "brk #0x0");
}

#[test]
fn branch_reach_is_what_the_branch_fixup_accepts() {
    fn agrees<A: RelocArch>(r_type: u32, insn: &[u8], addend: i64, p: u64, deltas: &[i64]) {
        let edge = A::edge(r_type).expect("in table");
        for &d in deltas {
            let target = p.wrapping_add_signed(d);
            let mut code = insn.to_vec();
            let fits = A::apply(edge, &mut code, 0, &values(p, target, addend)).is_ok();
            assert_eq!(
                A::branch_reaches(p, target),
                fits,
                "{} S - P = {d:#x}",
                A::NAME
            );
        }
    }
    let p = 0x1_0000_0000u64;
    let a64 = 1i64 << 27;
    agrees::<Aarch64>(
        R_AARCH64_CALL26,
        &0x9400_0000u32.to_le_bytes(),
        0,
        p,
        &[a64 - 4, a64, -a64, -a64 - 4, 0],
    );
    let x = 1i64 << 31;
    agrees::<X86_64>(4, &[0; 4], -4, p, &[x + 3, x + 4, -x + 4, -x + 3, 0]);
}

/// Relocation types to draw from: every row of the table, plus neighbours
/// and arbitrary numbers that are not in it.
fn a64_r_type() -> impl Strategy<Value = u32> {
    let known: Vec<u32> = a64::RELOCS.iter().map(|r| r.r_type).collect();
    prop_oneof![
        4 => proptest::sample::select(known),
        1 => 0u32..1100,
        1 => any::<u32>(),
    ]
}

/// Words biased towards the instruction classes the table accepts, so
/// most cases reach the fixup math rather than the instruction check.
fn a64_word() -> impl Strategy<Value = u32> {
    let classes = vec![
        0x9000_0000u32,
        0x1000_0000,
        0x9400_0000,
        0x1400_0000,
        0x5400_0000,
        0xb400_0000,
        0x3600_0000,
        0x9100_0000,
        0x9140_0000,
        0xf940_0000,
        0x3940_0000,
        0x3dc0_0000,
        0xd280_0000,
        0x9280_0000,
        0xf280_0000,
        0x5800_0000,
        0xd63f_0000,
    ];
    prop_oneof![
        3 => (proptest::sample::select(classes), 0u32..0x20_0000).prop_map(|(c, low)| c | low),
        1 => any::<u32>(),
    ]
}

fn near(anchor: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => (-0x2_0000_0000i64..0x2_0000_0000).prop_map(move |d| anchor.wrapping_add_signed(d)),
        1 => any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Any r_type, place, symbol, addend, GOT and place bytes: the aarch64
    /// table returns a value or an error and never panics; on error the
    /// block is unchanged, on success only the place's bytes changed; the
    /// trait agrees with the table; relaxing never panics either.
    #[test]
    fn aarch64_fixups_never_panic(
        r_type in a64_r_type(),
        word in a64_word(),
        len in 0usize..24,
        offset in prop_oneof![4 => 0u64..24, 1 => any::<u64>()],
        p in any::<u64>(),
        (s, got) in any::<u64>().prop_flat_map(|p| (near(p), near(p))),
        a in prop_oneof![3 => -0x1_0000i64..0x1_0000, 1 => any::<i64>()],
    ) {
        let mut block = vec![0u8; len];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (word >> (8 * (i % 4))) as u8;
        }
        let before = block.clone();
        let v = FixupValues { place: p, target: s, addend: a, got, size: 0 };
        let result = a64::lookup(r_type).map(|info| {
            let r = info.apply_values(&mut block, offset, &v);
            (r, info.width)
        });
        match result {
            None => {
                prop_assert!(Aarch64::edge(r_type).is_none());
                prop_assert!(a64::apply(r_type, &mut block, p, offset, s, a).is_err());
            }
            Some((r, width)) => {
                let edge = Aarch64::edge(r_type).expect("row has a descriptor");
                let mut via_trait = before.clone();
                let r2 = Aarch64::apply(edge, &mut via_trait, offset, &v);
                prop_assert_eq!(&r, &r2);
                prop_assert_eq!(&block, &via_trait);
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (x, y)) in block.iter().zip(&before).enumerate() {
                    let in_place = r.is_ok() && i >= start && i - start < width as usize;
                    prop_assert!(in_place || x == y, "byte {} changed outside the place", i);
                }
                let mut relaxed = before.clone();
                let _ = Aarch64::relax(edge, &mut relaxed, offset);
            }
        }
    }

    /// The same for x86-64 through the trait.
    #[test]
    fn x86_64_fixups_never_panic(
        r_type in prop_oneof![3 => 0u32..45, 1 => any::<u32>()],
        bytes in proptest::collection::vec(any::<u8>(), 0..24),
        offset in prop_oneof![4 => 0u64..24, 1 => any::<u64>()],
        p in any::<u64>(),
        s in any::<u64>(),
        a in any::<i64>(),
        got in any::<u64>(),
    ) {
        let Some(edge) = X86_64::edge(r_type) else { return Ok(()); };
        let mut block = bytes.clone();
        let v = FixupValues { place: p, target: s, addend: a, got, size: s ^ got };
        if X86_64::apply(edge, &mut block, offset, &v).is_err() {
            prop_assert_eq!(&block, &bytes);
        }
        let mut relaxed = bytes.clone();
        let _ = X86_64::relax(edge, &mut relaxed, offset);
    }
}
