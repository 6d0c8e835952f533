//! Crafted malformed objects: each is rejected with an error that names the
//! object it is about (not the first input, not the image), the section and
//! the offset — and nothing panics. The objects are assembled from exact
//! bytes with gcc, so each test pins one defect.

mod common;

use std::path::PathBuf;

use common::*;
use kiln_linker::{HostSymbols, LinkError, Linker};

/// Assemble `body` (GNU as syntax) into `<scratch>/malformed/<name>.o`.
fn asm_object(name: &str, body: &str) -> PathBuf {
    let dir = scratch("malformed");
    let s = dir.join(format!("{name}.s"));
    std::fs::write(&s, body).unwrap_or_else(|e| panic!("write {}: {e}", s.display()));
    compile("gcc", &s, &[], &[], &dir.join(format!("{name}.o")))
}

/// Two well-formed C objects (with `.eh_frame`) that a bad object follows.
/// Compiled once: the tests run in parallel, and one recompiling a file
/// while another reads it would see a half-written object.
fn good_objects() -> Vec<PathBuf> {
    static OBJECTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    OBJECTS
        .get_or_init(|| {
            let dir = scratch("malformed");
            vec![
                compile_c_text(
                    &dir,
                    "driver",
                    "int helper(int);\nint main(void) { return helper(1); }",
                    &["-O2"],
                ),
                compile_c_text(
                    &dir,
                    "helper",
                    "int helper(int x) { return x + 1; }",
                    &["-O2"],
                ),
            ]
        })
        .clone()
}

/// Link `objs` without running anything.
fn link(objs: &[PathBuf]) -> Result<(), LinkError> {
    let mut l = Linker::new(Default::default());
    for o in objs {
        l.add_object_file(o)?;
    }
    l.link(&HostSymbols::new()).map(drop)
}

/// Link `good_objects()` with `bad` in third place; the error must name
/// `bad` (and only it) and contain each of `needles`.
fn assert_blames(bad: &str, body: &str, needles: &[&str]) {
    let mut objs = good_objects();
    objs.push(asm_object(bad, body));
    let err = link(&objs).expect_err("a malformed object links");
    let msg = err.to_string();
    assert!(
        matches!(err, LinkError::Malformed { .. }),
        "not Malformed: {err:?}"
    );
    assert!(
        msg.contains(&format!("{bad}.o")),
        "does not name {bad}.o: {msg}"
    );
    for good in ["driver.o", "helper.o"] {
        assert!(!msg.contains(good), "blames {good}: {msg}");
    }
    for n in needles {
        assert!(msg.contains(n), "no `{n}` in: {msg}");
    }
}

const TEXT: &str = ".text\n.globl bad_fn\nbad_fn: ret\n";

#[test]
fn eh_frame_record_shorter_than_its_id_is_an_error_not_a_panic() {
    // Record 0: length word 1 (5 bytes); the 4 bytes after its length word
    // (one of its own, three of the next record) are not zero, so it looks
    // like an FDE. Record 1 at offset 5: a 4-byte CIE.
    let body =
        format!("{TEXT}.section .eh_frame,\"a\",@progbits\n.long 1\n.byte 1\n.long 4\n.long 0\n");
    assert_blames(
        "short_fde",
        &body,
        &["section .eh_frame offset 0x0", "shorter than"],
    );
}

#[test]
fn eh_frame_record_of_odd_length_names_its_object() {
    // A 9-byte CIE (length 5), then at offset 9 an FDE of `bad_fn` using
    // it: laid out at 4-byte alignment, the FDE would leave a hole in the
    // image's `.eh_frame` (which libgcc's unwinder reads as its end).
    let body = format!(
        "{TEXT}.section .eh_frame,\"a\",@progbits\n.long 5\n.long 0\n.byte 1\n\
         .long 12\n.long 13\n.long bad_fn - .\n.long 1\n"
    );
    assert_blames(
        "odd_cie",
        &body,
        &["section .eh_frame offset 0x0", "multiple of 4"],
    );
}

#[test]
fn eh_frame_ending_off_the_next_object_s_alignment_leaves_no_hole() {
    // Well formed: a 20-byte CIE and a 24-byte FDE (absolute pointers) in
    // an 8-aligned section, 44 bytes in all. The next object's records
    // (8-aligned section) must follow without the 4 bytes of padding that
    // the unwinder would read as the end of the image's `.eh_frame`.
    let odd = asm_object(
        "eh_frame_44",
        ".text\n.globl odd_fn\nodd_fn: ret\n\
         .section .eh_frame,\"a\",@unwind\n.balign 8\n\
         .long 16\n.long 0\n.byte 1, 0, 1, 0x78, 16, 0x0c, 7, 8, 0x90, 1, 0, 0\n\
         .long 20\n.long 24\n.quad odd_fn\n.quad 1\n",
    );
    let mut objs = vec![odd];
    objs.extend(good_objects());
    link(&objs).unwrap_or_else(|e| panic!("{e}"));
}

/// A global's type and its section disagree on being thread-local: its
/// address would be a TLS offset for some references and a place in the
/// image for others (a batch of JIT units and the units linked alone
/// answered differently).
#[test]
fn a_thread_local_global_outside_a_tls_section_is_an_error() {
    assert_blames(
        "tls_in_data",
        ".data\n.globl y\n.type y, @tls_object\ny: .long 2\n",
        &["`y`", "thread-local", ".data"],
    );
}

/// `path`'s section `name` with flags `change(flags)`: what an assembler
/// would not write (it types every symbol of a TLS section STT_TLS, and
/// refuses TLS accesses to other symbols).
fn change_section_flags(path: &std::path::Path, name: &str, change: impl Fn(u64) -> u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let index = {
        use object::{Object as _, ObjectSection as _};
        let file = object::File::parse(&*bytes).unwrap();
        file.section_by_name(name).unwrap().index().0
    };
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let shoff = u64_at(&bytes, 0x28) as usize;
    let shentsize = u16::from_le_bytes([bytes[0x3a], bytes[0x3b]]) as usize;
    let flags_at = shoff + index * shentsize + 8;
    let flags = change(u64_at(&bytes, flags_at));
    bytes[flags_at..flags_at + 8].copy_from_slice(&flags.to_le_bytes());
    std::fs::write(path, &bytes).unwrap();
}

/// Links `good_objects()` with `bad` (a path): the error names `bad` and
/// contains each of `needles`.
fn assert_blames_object(bad: PathBuf, needles: &[&str]) {
    let mut objs = good_objects();
    objs.push(bad);
    let err = link(&objs).expect_err("a malformed object links");
    let msg = err.to_string();
    assert!(matches!(err, LinkError::Malformed { .. }), "{err:?}");
    for n in needles {
        assert!(msg.contains(n), "no `{n}` in: {msg}");
    }
}

#[test]
fn a_global_that_is_not_thread_local_in_a_tls_section_is_an_error() {
    let path = asm_object("data_made_tls", ".data\n.globl counter\ncounter: .long 3\n");
    change_section_flags(&path, ".data", |f| f | object::elf::SHF_TLS.0);
    let needles = ["data_made_tls.o", "`counter`", "not thread-local", ".data"];
    assert_blames_object(path, &needles);
}

/// A thread-local's value is an offset in a TLS block, not an address.
#[test]
fn a_plain_relocation_to_a_thread_local_is_an_error() {
    assert_blames(
        "plain_to_tls",
        ".section .tbss,\"awT\",@nobits\nt: .zero 4\n.text\n.globl f\n\
         f: leaq t(%rip), %rax\nret\n",
        &[
            "R_X86_64_PC32",
            "section .text offset 0x3",
            "thread-local section",
        ],
    );
}

#[test]
fn a_tls_relocation_to_a_symbol_outside_the_tls_sections_is_an_error() {
    let path = asm_object(
        "tls_to_plain",
        ".section .tdata,\"awT\",@progbits\nt: .long 1\n.text\n.globl f\n\
         f: movq t@gottpoff(%rip), %rax\nret\n",
    );
    change_section_flags(&path, ".tdata", |f| f & !object::elf::SHF_TLS.0);
    let needles = ["tls_to_plain.o", "R_X86_64_GOTTPOFF", "not thread-local"];
    assert_blames_object(path, &needles);
}

/// What lies past a thread-local's section is not its object's: another
/// object's variables, in an image of several.
#[test]
fn a_thread_local_larger_than_its_section_is_an_error() {
    assert_blames(
        "tls_too_large",
        ".section .tbss,\"awT\",@nobits\n.globl t\n.type t,@tls_object\n.size t, 100\n\
         t: .zero 4\n.text\n.globl f\nf: movq t@gottpoff(%rip), %rax\nret\n",
        &["`t`", "100 bytes", "outside its section .tbss"],
    );
}
