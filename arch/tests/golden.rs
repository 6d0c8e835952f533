//! Golden tables `(kind, hex bytes, asm text)` for every template of both
//! ISAs. The bytes come from kiln's encoders; the asm text is what an
//! independent disassembler prints for them (iced-x86 for x86-64,
//! yaxpeax-arm for aarch64), so a wrong encoding fails twice: against the
//! hex and against the disassembly.

use kiln_arch::aarch64::reloc;
use kiln_arch::{
    Aarch64, Arch, FixupError, PatchTarget, RelocArch, Template, TemplateKind, X86_64,
};

/// One golden row: template kind, addresses used, expected hex, expected disassembly
/// (instructions joined by "; "; data bytes are not disassembled).
struct Golden {
    kind: TemplateKind,
    at: u64,
    /// Slot, target or resolver, depending on the kind.
    other: u64,
    hex: &'static str,
    asm: &'static str,
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn disasm_x86(bytes: &[u8], ip: u64) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Mnemonic};
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let mut formatter = GasFormatter::new();
    formatter.options_mut().set_uppercase_hex(false);
    let mut out = Vec::new();
    for insn in decoder.iter() {
        assert_ne!(
            insn.mnemonic(),
            Mnemonic::INVALID,
            "undecodable bytes at {:#x}: {}",
            insn.ip(),
            hex(bytes)
        );
        let mut text = String::new();
        formatter.format(&insn, &mut text);
        out.push(text);
    }
    out.join("; ")
}

fn disasm_a64(bytes: &[u8]) -> String {
    use yaxpeax_arch::{Decoder, U8Reader};
    let decoder = yaxpeax_arm::armv8::a64::InstDecoder::default();
    bytes
        .chunks_exact(4)
        .map(|word| {
            let mut reader = U8Reader::new(word);
            match decoder.decode(&mut reader) {
                Ok(insn) => insn.to_string(),
                Err(e) => panic!("undecodable word {}: {e}", hex(word)),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn write<A: RelocArch>(
    kind: TemplateKind,
    buf: &mut [u8],
    at: u64,
    other: u64,
) -> Result<(), FixupError> {
    match kind {
        TemplateKind::GotEntry => A::write_got_entry(buf, at, other),
        TemplateKind::PltStub => A::write_plt_stub(buf, at, other),
        TemplateKind::RedirectableStub => A::write_redirectable_stub(buf, at, other),
        TemplateKind::ReentryTrampoline => A::write_reentry_trampoline(buf, at, other),
        TemplateKind::ReentryEntry => A::write_reentry_entry(buf, at, other),
        TemplateKind::Veneer => A::write_veneer(buf, at, other),
        other => panic!("no writer for {other:?}"),
    }
}

fn template<A: RelocArch>(kind: TemplateKind) -> Template {
    let t = match kind {
        TemplateKind::GotEntry => A::GOT_ENTRY,
        TemplateKind::PltStub => A::PLT_STUB,
        TemplateKind::RedirectableStub => A::REDIRECTABLE_STUB,
        TemplateKind::ReentryTrampoline => A::REENTRY_TRAMPOLINE,
        TemplateKind::ReentryEntry => A::REENTRY_ENTRY,
        TemplateKind::Veneer => A::VENEER.unwrap_or_else(|| panic!("{} has no veneer", A::NAME)),
        other => panic!("no template for {other:?}"),
    };
    assert_eq!(t.kind, kind);
    t
}

const X86_GOLDEN: &[Golden] = &[
    Golden {
        kind: TemplateKind::GotEntry,
        at: 0x2000,
        other: 0x1122_3344_5566_7788,
        hex: "88 77 66 55 44 33 22 11",
        asm: "",
    },
    Golden {
        kind: TemplateKind::PltStub,
        at: 0x1000,
        other: 0x2000,
        hex: "ff 25 fa 0f 00 00 cc cc",
        asm: "jmpq *0x2000; int3; int3",
    },
    Golden {
        kind: TemplateKind::RedirectableStub,
        at: 0x7f00_0000_1008,
        other: 0x7f00_0000_0000,
        hex: "ff 25 f2 ef ff ff cc cc",
        asm: "jmpq *0x7f0000000000; int3; int3",
    },
    // Farthest forward 8-aligned slot: disp32 = 0x7fff_fffa (i32::MAX - 5).
    Golden {
        kind: TemplateKind::RedirectableStub,
        at: 0x1_0000_0000,
        other: 0x1_8000_0000,
        hex: "ff 25 fa ff ff 7f cc cc",
        asm: "jmpq *0x180000000; int3; int3",
    },
    Golden {
        kind: TemplateKind::ReentryTrampoline,
        at: 0x1000,
        other: 0x2000,
        hex: "ff 15 fa 0f 00 00 cc cc",
        asm: "callq *0x2000; int3; int3",
    },
];

const A64_GOLDEN: &[Golden] = &[
    Golden {
        kind: TemplateKind::GotEntry,
        at: 0x2000,
        other: 0x1122_3344_5566_7788,
        hex: "88 77 66 55 44 33 22 11",
        asm: "",
    },
    Golden {
        kind: TemplateKind::PltStub,
        at: 0x10_0004,
        other: 0x20_1008,
        hex: "10 08 00 b0 10 06 40 f9 00 02 1f d6",
        asm: "adrp x16, $+0x101000; ldr x16, [x16, #0x8]; br x16",
    },
    // Slot on a lower page, at the top of its page.
    Golden {
        kind: TemplateKind::RedirectableStub,
        at: 0x40_0ffc,
        other: 0x3f_fff8,
        hex: "f0 ff ff f0 10 fe 47 f9 00 02 1f d6",
        asm: "adrp x16, $-0x1000; ldr x16, [x16, #0xff8]; br x16",
    },
    // Farthest forward page: Page(S) - Page(P) = 2^32 - 4096.
    Golden {
        kind: TemplateKind::RedirectableStub,
        at: 0x1_0000_0000,
        other: 0x1_ffff_f000 + 0x10,
        hex: "f0 ff 7f f0 10 0a 40 f9 00 02 1f d6",
        asm: "adrp x16, $+0xfffff000; ldr x16, [x16, #0x10]; br x16",
    },
    Golden {
        kind: TemplateKind::Veneer,
        at: 0x10_0000,
        other: 0x1234_5678,
        hex: "30 12 09 b0 10 e2 19 91 00 02 1f d6",
        asm: "adrp x16, $+0x12245000; add x16, x16, #0x678; br x16",
    },
    // Farthest backward page: Page(S) - Page(P) = -2^32.
    Golden {
        kind: TemplateKind::Veneer,
        at: 0x2_0000_0ffc,
        other: 0x1_0000_0010,
        hex: "10 00 80 90 10 42 00 91 00 02 1f d6",
        asm: "adrp x16, $-0x100000000; add x16, x16, #0x10; br x16",
    },
    Golden {
        kind: TemplateKind::ReentryTrampoline,
        at: 0x10_0004,
        other: 0x20_1008,
        hex: "fd 7b bf a9 10 08 00 b0 10 06 40 f9 00 02 3f d6",
        asm: "stp x29, x30, [sp, #-0x10]!; adrp x16, $+0x101000; ldr x16, [x16, #0x8]; blr x16",
    },
    Golden {
        kind: TemplateKind::ReentryEntry,
        at: 0x10_0000,
        other: 0x1122_3344_5566_7788,
        hex: "ff 83 03 d1 e0 07 00 a9 e2 0f 01 a9 e4 17 02 a9 e6 1f 03 a9 e8 23 00 f9 \
              e0 87 02 ad e2 8f 03 ad e4 97 04 ad e6 9f 05 ad fd 83 03 91 fd 7b 0d a9 \
              fd 43 03 91 c0 43 00 d1 10 02 00 58 00 02 3f d6 f0 03 00 aa e0 87 42 ad \
              e2 8f 43 ad e4 97 44 ad e6 9f 45 ad e8 23 40 f9 e6 1f 43 a9 e4 17 42 a9 \
              e2 0f 41 a9 e0 07 40 a9 ff 83 03 91 fd 7b c1 a8 00 02 1f d6 00 00 20 d4 \
              88 77 66 55 44 33 22 11",
        asm: "sub sp, sp, #0xe0; stp x0, x1, [sp]; stp x2, x3, [sp, #0x10]; stp x4, x5, [sp, #0x20]; \
              stp x6, x7, [sp, #0x30]; str x8, [sp, #0x40]; stp q0, q1, [sp, #0x50]; stp q2, q3, [sp, #0x70]; \
              stp q4, q5, [sp, #0x90]; stp q6, q7, [sp, #0xb0]; add x29, sp, #0xe0; stp x29, x30, [sp, #0xd0]; \
              add x29, sp, #0xd0; sub x0, x30, #0x10; ldr x16, $+0x40; blr x16; mov x16, x0; \
              ldp q0, q1, [sp, #0x50]; ldp q2, q3, [sp, #0x70]; ldp q4, q5, [sp, #0x90]; ldp q6, q7, [sp, #0xb0]; \
              ldr x8, [sp, #0x40]; ldp x6, x7, [sp, #0x30]; ldp x4, x5, [sp, #0x20]; ldp x2, x3, [sp, #0x10]; \
              ldp x0, x1, [sp]; add sp, sp, #0xe0; ldp x29, x30, [sp], #0x10; br x16; brk #0x0",
    },
];

/// Asserts that `err` is [`FixupError::OutOfRange`] naming template `reloc`.
fn assert_out_of_range(err: &FixupError, reloc: &str) {
    assert!(
        matches!(err, FixupError::OutOfRange { reloc: r, .. } if *r == reloc),
        "expected {reloc} out of range, got: {err}"
    );
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Bytes of the template for `g`, checked against the hex; returns the code part
/// (everything but trailing literal data) for disassembly.
fn check_row<A: RelocArch>(g: &Golden) -> Vec<u8> {
    let t = template::<A>(g.kind);
    let mut buf = vec![0xa5u8; t.size + 8];
    write::<A>(g.kind, &mut buf, g.at, g.other)
        .unwrap_or_else(|e| panic!("{} {:?} at {:#x}: {e}", A::NAME, g.kind, g.at));
    assert!(
        buf[t.size..].iter().all(|&b| b == 0xa5),
        "{} {:?} wrote past its size",
        A::NAME,
        g.kind
    );
    buf.truncate(t.size);
    assert_eq!(
        hex(&buf),
        normalize(g.hex),
        "{} {:?} bytes",
        A::NAME,
        g.kind
    );
    assert_eq!(g.at % t.align as u64, 0);
    buf
}

#[test]
fn x86_64_golden_bytes_and_disassembly() {
    for g in X86_GOLDEN {
        let bytes = check_row::<X86_64>(g);
        let text = if g.kind == TemplateKind::GotEntry {
            String::new()
        } else {
            disasm_x86(&bytes, g.at)
        };
        assert_eq!(text, normalize(g.asm), "x86-64 {:?} disassembly", g.kind);
    }
}

#[test]
fn x86_64_entry_block_golden() {
    let mut buf = [0u8; 24];
    kiln_arch::x86_64::write_entry_block(
        &mut buf,
        0x1000,
        0x1122_3344_5566_7788,
        0x99aa_bbcc_ddee_ff00,
    )
    .expect("entry block");
    assert_eq!(
        hex(&buf),
        "49 bb 88 77 66 55 44 33 22 11 ff 25 00 00 00 00 00 ff ee dd cc bb aa 99"
    );
    assert_eq!(
        disasm_x86(&buf[..16], 0x1000),
        "movabs $0x1122334455667788,%r11; jmpq *0x1010"
    );
    assert_eq!(X86_64::REENTRY_ENTRY.size, 24);
}

#[test]
fn aarch64_golden_bytes_and_disassembly() {
    for g in A64_GOLDEN {
        let bytes = check_row::<Aarch64>(g);
        let code_len = match g.kind {
            TemplateKind::GotEntry => 0,
            TemplateKind::ReentryEntry => kiln_arch::aarch64::ENTRY_RESOLVER_OFFSET,
            _ => bytes.len(),
        };
        assert_eq!(
            disasm_a64(&bytes[..code_len]),
            normalize(g.asm),
            "aarch64 {:?} disassembly",
            g.kind
        );
    }
}

/// Every kind has a golden row for each ISA (the entry block of x86-64 has its own test).
#[test]
fn every_template_has_a_golden_row() {
    let kinds = [
        TemplateKind::GotEntry,
        TemplateKind::PltStub,
        TemplateKind::RedirectableStub,
        TemplateKind::ReentryTrampoline,
        TemplateKind::ReentryEntry,
        TemplateKind::Veneer,
    ];
    assert_eq!(X86_64::VENEER, None, "x86-64 needs no veneer");
    for kind in kinds {
        assert!(
            A64_GOLDEN.iter().any(|g| g.kind == kind),
            "aarch64 {kind:?}"
        );
        assert!(
            matches!(kind, TemplateKind::ReentryEntry | TemplateKind::Veneer)
                || X86_GOLDEN.iter().any(|g| g.kind == kind),
            "x86-64 {kind:?}"
        );
    }
}

/// Independent x86-64 relocation math for the two types templates use.
fn apply_x86(r_type: u32, code: &mut [u8], at: u64, offset: u32, s: u64, a: i64) {
    let p = at + u64::from(offset);
    let off = offset as usize;
    match r_type {
        1 => code[off..off + 8].copy_from_slice(&(s as i64 + a).to_le_bytes()),
        2 => {
            let v = i32::try_from(s as i64 + a - p as i64).expect("test addresses are in range");
            code[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        other => panic!("template uses unexpected x86-64 r_type {other}"),
    }
}

/// Writing a template at address 0 with every referenced address 0, then
/// applying its declared patches, gives the same bytes as writing it at the
/// real addresses: the patch list is complete and correct, so a linker may
/// keep the references as link-graph edges instead.
fn patches_reproduce_writes<A: RelocArch>(
    rows: &[Golden],
    apply: impl Fn(u32, &mut [u8], u64, u32, u64, i64),
) {
    for g in rows {
        let t = template::<A>(g.kind);
        let mut direct = vec![0u8; t.size];
        write::<A>(g.kind, &mut direct, g.at, g.other).expect("golden row writes");
        let mut patched = vec![0u8; t.size];
        // Address 0 for everything, then relocate the copy to g.at.
        write::<A>(g.kind, &mut patched, g.at, g.at & !0xfff).expect("zero write");
        for p in t.patches {
            let s = match p.target {
                PatchTarget::Slot | PatchTarget::Target | PatchTarget::Resolver => g.other,
                other => panic!("unexpected patch target {other:?}"),
            };
            apply(p.r_type, &mut patched, g.at, p.offset, s, p.addend);
        }
        assert_eq!(
            hex(&patched),
            hex(&direct),
            "{} {:?}: patches disagree with the writer",
            A::NAME,
            g.kind
        );
    }
}

#[test]
fn x86_64_patches_reproduce_writes() {
    patches_reproduce_writes::<X86_64>(X86_GOLDEN, apply_x86);
}

#[test]
fn aarch64_patches_reproduce_writes() {
    patches_reproduce_writes::<Aarch64>(A64_GOLDEN, |r_type, code, at, offset, s, a| {
        reloc::apply(r_type, code, at, u64::from(offset), s, a).expect("patch applies");
    });
}

#[test]
fn x86_64_reach_limits() {
    let mut buf = [0u8; 8];
    let at = 0x1_0000_0000u64;
    // Backward limit: disp32 = i32::MIN (slot 8-aligned: at + 6 - 2^31 is not, so use the nearest aligned).
    let back = at + 6 - (1u64 << 31) + 2; // disp = -2^31 + 2, 8-aligned slot
    X86_64::write_redirectable_stub(&mut buf, at, back).expect("in range");
    assert_eq!(
        i32::from_le_bytes([buf[2], buf[3], buf[4], buf[5]]),
        i32::MIN + 2
    );
    // One slot further each way is out of reach.
    let err = X86_64::write_redirectable_stub(&mut buf, at, back - 8).expect_err("beyond -2 GiB");
    assert_out_of_range(&err, "redirectable-stub");
    let fwd = at + 0x8000_0000; // disp = 0x7fff_fffa, the largest with an 8-aligned slot
    X86_64::write_reentry_trampoline(&mut buf, at, fwd).expect("in range");
    let err = X86_64::write_reentry_trampoline(&mut buf, at, fwd + 8).expect_err("beyond +2 GiB");
    assert_out_of_range(&err, "reentry-trampoline");
}

#[test]
fn aarch64_reach_limits() {
    let mut buf = [0u8; 16];
    let at = 0x2_0000_0000u64;
    // Page delta must lie in [-2^32, 2^32 - 4096].
    Aarch64::write_redirectable_stub(&mut buf, at, at - (1 << 32)).expect("-4 GiB page");
    let err = Aarch64::write_redirectable_stub(&mut buf, at, at - (1 << 32) - 8)
        .expect_err("beyond -4 GiB");
    assert_out_of_range(&err, "redirectable-stub");
    Aarch64::write_plt_stub(&mut buf, at, at + (1 << 32) - 8).expect("last page below +4 GiB");
    let err = Aarch64::write_reentry_trampoline(&mut buf, at, at + (1 << 32)).expect_err("+4 GiB");
    assert_out_of_range(&err, "reentry-trampoline");
    // The veneer reaches the same pages, and any byte in them.
    Aarch64::write_veneer(&mut buf, at, at - (1 << 32)).expect("-4 GiB page");
    let err = Aarch64::write_veneer(&mut buf, at, at - (1 << 32) - 1).expect_err("beyond -4 GiB");
    assert_out_of_range(&err, "veneer");
    Aarch64::write_veneer(&mut buf, at, at + (1 << 32) - 1).expect("last byte below +4 GiB");
    let err = Aarch64::write_veneer(&mut buf, at, at + (1 << 32)).expect_err("+4 GiB");
    assert_out_of_range(&err, "veneer");
    assert!(matches!(
        Aarch64::write_veneer(&mut buf, at + 2, at),
        Err(FixupError::Misaligned { align: 4, .. })
    ));
    assert!(matches!(
        X86_64::write_veneer(&mut buf, at, at),
        Err(FixupError::NoTemplate { isa: "x86-64", .. })
    ));
}

#[test]
fn writers_reject_bad_buffers_and_alignment() {
    let mut short = [0u8; 7];
    assert!(matches!(
        X86_64::write_redirectable_stub(&mut short, 0x1000, 0x2000),
        Err(FixupError::OutOfBounds {
            width: 8,
            len: 7,
            ..
        })
    ));
    assert!(matches!(
        Aarch64::write_reentry_entry(&mut [0u8; 127], 0x1000, 0),
        Err(FixupError::OutOfBounds {
            width: 128,
            len: 127,
            ..
        })
    ));
    let mut buf = [0u8; 16];
    // Misaligned slots would make the stub's load non-atomic (x86-64) or unencodable (aarch64).
    assert!(matches!(
        X86_64::write_redirectable_stub(&mut buf, 0x1000, 0x2004),
        Err(FixupError::Misaligned { align: 8, .. })
    ));
    assert!(matches!(
        Aarch64::write_redirectable_stub(&mut buf, 0x1000, 0x2004),
        Err(FixupError::Misaligned { align: 8, .. })
    ));
    assert!(matches!(
        Aarch64::write_reentry_trampoline(&mut buf, 0x1002, 0x2000),
        Err(FixupError::Misaligned { align: 4, .. })
    ));
    assert!(matches!(
        X86_64::write_got_entry(&mut buf, 0x1004, 1),
        Err(FixupError::Misaligned { align: 8, .. })
    ));
}

/// The `global_asm!` entry as the assembler laid it out, read back from this
/// process's text and decoded by iced-x86: it saves and restores the same
/// registers in mirror order, uses XSAVE64/XRSTOR64 on a 64-byte aligned
/// area, and leaves with `ret` (into the implementation).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn x86_64_asm_entry_disassembles_as_designed() {
    use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Mnemonic};
    let entry = kiln_arch::x86_64::reentry_asm_entry_default().expect("XSAVE host");
    // SAFETY: the entry is code in this process's text segment, readable and
    // at least this long (the decoder stops at the first `ret`, well before).
    let bytes = unsafe { std::slice::from_raw_parts(entry as usize as *const u8, 512) };
    let mut decoder = Decoder::with_ip(64, bytes, entry, DecoderOptions::NONE);
    let mut formatter = GasFormatter::new();
    formatter.options_mut().set_uppercase_hex(false);
    let mut text = Vec::new();
    let (mut pushes, mut pops) = (Vec::new(), Vec::new());
    for insn in decoder.iter() {
        let mut s = String::new();
        formatter.format(&insn, &mut s);
        match insn.mnemonic() {
            Mnemonic::Push => pushes.push(s.clone()),
            Mnemonic::Pop => pops.push(s.clone()),
            _ => {}
        }
        let done = insn.mnemonic() == Mnemonic::Ret;
        text.push(s);
        if done {
            break;
        }
    }
    let all = text.join("; ");
    assert_eq!(text.last().map(String::as_str), Some("ret"), "{all}");
    assert!(
        text[0].starts_with("lea "),
        "default entry loads the Rust resolver into r11 first: {all}"
    );
    assert!(text.iter().any(|t| t == "xsave64 (%rsp)"), "{all}");
    assert!(text.iter().any(|t| t == "xrstor64 (%rsp)"), "{all}");
    assert!(
        text.iter().any(|t| t == "and $0xffffffffffffffc0,%rsp"),
        "64-byte alignment: {all}"
    );
    let pushed: Vec<&str> = pushes
        .iter()
        .map(|p| p.trim_start_matches("push ").trim_start_matches("pushq "))
        .collect();
    let mut popped: Vec<&str> = pops
        .iter()
        .map(|p| p.trim_start_matches("pop ").trim_start_matches("popq "))
        .collect();
    popped.reverse();
    assert_eq!(pushed, popped, "pops mirror pushes: {all}");
    for reg in [
        "%rbp", "%r11", "%rax", "%rdi", "%rsi", "%rdx", "%rcx", "%r8", "%r9", "%r10",
    ] {
        assert!(pushed.contains(&reg), "{reg} not saved: {all}");
    }
}
