//! Image files: code linked in imaging mode, saved by one `kiln` process and
//! run from the image by another — output and exit status equal to the
//! native build; identical inputs give byte-identical images; what an image
//! cannot express is refused; damaged files are refused naming the field;
//! mutants of a real image load or fail with an error, never crash.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::images::{assert_like_native, info_of, kiln, save_against, show};
use common::lua::build_lua;
use common::*;
use kiln_linker::image_file::{self, BuildId, ImageError};
use kiln_linker::{HostSymbols, LinkOptions, Linker, SymbolResolver as _};

/// `kiln image save -o out inputs...`, asserting success.
fn save(out: &Path, inputs: &[PathBuf], libs: &[&str]) {
    let mut cmd = kiln();
    cmd.args(["image", "save", "-o"]).arg(out).args(inputs);
    for l in libs {
        cmd.args(["-l", l]);
    }
    let o = cmd.output().expect("kiln runs");
    assert!(o.status.success(), "image save: {}", show(&o));
}

/// Saves `objs` as an image in one process, runs it with `kiln run` in
/// another, and demands the native build's stdout and exit status.
fn check_image_matches_native(
    cc: &str,
    objs: &[PathBuf],
    flags: &[&str],
    libs: &[&str],
    tag: &str,
) {
    let dir = scratch(&format!("images-{tag}"));
    let (native_out, native_ret) = run_native(cc, objs, flags, libs, &dir.join("native"));
    assert!(
        !native_out.is_empty(),
        "{tag}: the native build printed nothing"
    );
    let image = dir.join("prog.kimg");
    let _ = std::fs::remove_file(&image);
    save(&image, objs, &[]);
    let o = kiln().arg("run").arg(&image).output().expect("kiln runs");
    assert_like_native(&o, &native_out, native_ret, tag);
    // --noexec loads and binds without running anything.
    let o = kiln()
        .args(["run", "--noexec"])
        .arg(&image)
        .output()
        .expect("kiln runs");
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "{tag} --noexec: {}",
        show(&o)
    );
}

fn prog_ab(cc: &str, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let dir = scratch(&format!("images-{tag}"));
    ["prog_a", "prog_b"]
        .iter()
        .map(|s| {
            compile(
                cc,
                &c_dir().join(format!("{s}.c")),
                flags,
                &[],
                &dir.join(format!("{s}.o")),
            )
        })
        .collect()
}

#[test]
fn c_program_clang_pie_saved_then_run_from_the_image_matches_native() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIE", "-fcommon"];
    let objs = prog_ab("clang", &flags, "c-clang");
    check_image_matches_native("clang", &objs, &flags, &[], "c-clang");
}

#[test]
fn c_program_gcc_pic_saved_then_run_from_the_image_matches_native() {
    if !need_tool("gcc") {
        return;
    }
    let flags = ["-O2", "-fPIC", "-fcommon"];
    let objs = prog_ab("gcc", &flags, "c-gcc-pic");
    check_image_matches_native("gcc", &objs, &flags, &[], "c-gcc-pic");
}

#[test]
fn lua_clang_pie_saved_then_run_from_the_image_matches_native() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_lua("clang", &flags, "image-clang-O2-fPIE");
    check_image_matches_native("clang", &objs, &flags, &["m", "dl"], "lua-clang");
}

/// A C++ program without thread-locals: constructors and destructors with
/// priorities, an exception thrown in one object and caught in another,
/// virtual calls — initializers, finalizers and `.eh_frame` from an image.
#[test]
fn cxx_constructors_exceptions_and_virtual_calls_run_from_an_image() {
    if !need_tool("clang++") {
        return;
    }
    let dir = scratch("images-cxx");
    let a = r#"
#include <cstdio>
#include <stdexcept>
struct Shape { virtual ~Shape() {} virtual int area() const = 0; };
Shape *make(int which);
int risky(int x);
struct Log { const char *n; Log(const char *n) : n(n) { std::printf("ctor %s\n", n); }
             ~Log() { std::printf("dtor %s\n", n); } };
__attribute__((init_priority(200))) Log early("early");
Log plain("plain");
__attribute__((constructor(150))) static void first() { std::printf("constructor 150\n"); }
int main() {
    int sum = 0;
    for (int i = 0; i < 3; i++) { Shape *s = make(i); sum += s->area(); delete s; }
    std::printf("areas %d\n", sum);
    try { risky(7); } catch (const std::runtime_error &e) { std::printf("caught %s\n", e.what()); }
    try { risky(-1); } catch (int v) { std::printf("caught int %d\n", v); }
    return sum % 100;
}
"#;
    let b = programs::CXX_SHAPES;
    let flags = ["-O2", "-fPIE"];
    let mut objs = Vec::new();
    for (name, src) in [("a", a), ("b", b)] {
        let path = dir.join(format!("{name}.cpp"));
        std::fs::write(&path, src).expect("write source");
        objs.push(compile(
            "clang++",
            &path,
            &flags,
            &[],
            &dir.join(format!("{name}.o")),
        ));
    }
    check_image_matches_native("clang++", &objs, &flags, &[], "cxx");
}

#[test]
fn identical_inputs_give_the_same_build_id_and_a_byte_identical_image() {
    if !need_tool("clang") {
        return;
    }
    let objs = prog_ab("clang", &["-O2", "-fPIE"], "determinism");
    let dir = scratch("images-determinism");
    let (one, two) = (dir.join("one.kimg"), dir.join("two.kimg"));
    save(&one, &objs, &[]);
    save(&two, &objs, &[]);
    let (x, y) = (
        std::fs::read(&one).expect("read"),
        std::fs::read(&two).expect("read"),
    );
    assert!(x == y, "two saves of the same inputs differ");
    let info = |p: &Path| {
        let o = kiln()
            .args(["image", "info", "--json"])
            .arg(p)
            .output()
            .expect("kiln runs");
        assert!(o.status.success(), "{}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let j = info(&one);
    let id = j
        .split("\"build_id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("build id in JSON");
    assert_eq!(id.len(), 64, "{j}");
    assert!(
        j.contains("\"format_version\":2") && j.contains("\"base_align\":4096"),
        "{j}"
    );
    // Another input, another build id.
    let reversed: Vec<PathBuf> = objs.iter().rev().cloned().collect();
    let three = dir.join("three.kimg");
    save(&three, &reversed, &[]);
    assert!(
        !info(&three).contains(id),
        "different inputs kept the build id"
    );
    let opts = {
        let mut o = LinkOptions::default();
        o.imaging = true;
        o
    };
    let a = BuildId::of_inputs(&opts, [("a.o", &b"x"[..])]);
    assert_eq!(a, BuildId::of_inputs(&opts, [("a.o", &b"x"[..])]));
    assert_ne!(a, BuildId::of_inputs(&opts, [("a.o", &b"y"[..])]));
}

#[test]
fn saving_code_not_linked_in_imaging_mode_fails_saying_so() {
    if !need_tool("clang") {
        return;
    }
    let objs = prog_ab("clang", &["-O2", "-fPIE"], "not-imaging");
    let mut linker = Linker::new(LinkOptions::default());
    for o in &objs {
        linker.add_object_file(o).expect("read object");
    }
    let image = linker.link(&HostSymbols::new()).expect("links");
    let err = image
        .save_image(&BuildId([0; 32]))
        .expect_err("not imaging");
    assert!(matches!(err, ImageError::NotImaging { .. }), "{err}");
    assert!(
        err.to_string().contains("not linked in imaging mode"),
        "{err}"
    );
}

#[test]
fn absolute_addresses_of_no_pie_code_are_refused_naming_the_relocation() {
    if !need_tool("gcc") {
        return;
    }
    let objs = prog_ab("gcc", &["-O2", "-fno-pie"], "no-pie");
    let out = scratch("images-no-pie").join("x.kimg");
    let _ = std::fs::remove_file(&out);
    let o = kiln()
        .args(["image", "save", "-o"])
        .arg(&out)
        .args(&objs)
        .output()
        .expect("kiln runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        err.contains("prog_a.o")
            && err.contains("section .text")
            && err.contains("offset 0x")
            && err.contains("R_X86_64_32")
            && err.contains("-fPIE"),
        "{err}"
    );
    assert!(!out.exists(), "no image is written when saving fails");
    // gcc -fPIE reaches host data PC-relatively (it assumes copy
    // relocations): saved as PC32 imports, the image runs.
    let objs = prog_ab("gcc", &["-O2", "-fPIE"], "gcc-pie");
    let o = kiln()
        .args(["image", "save", "-o"])
        .arg(&out)
        .args(&objs)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{}", show(&o));
    let bytes = std::fs::read(&out).expect("read the image");
    let info = image_file::inspect("x.kimg", &bytes).expect("inspects");
    assert!(info.pc_relative_imports > 0, "{info:?}");
    let native = run_native(
        "gcc",
        &objs,
        &["-O2", "-fPIE"],
        &[],
        &scratch("images-gcc-pie").join("native"),
    );
    let run = kiln().arg("run").arg(&out).output().expect("kiln runs");
    assert_like_native(&run, &native.0, native.1, "gcc -fPIE image");
}

/// A real image, saved in this process.
fn real_image() -> Vec<u8> {
    let (image, id) = real_linked_image();
    image.save_image(&id).expect("saves")
}

/// A real image linked in imaging mode, with its inputs' build id.
fn real_linked_image() -> (kiln_linker::LinkedImage, BuildId) {
    let objs = prog_ab("clang", &["-O2", "-fPIE", "-fcommon"], "mutation");
    let (mut linker, id) = common::images::imaging_linker(&objs);
    (linker.link(&HostSymbols::new()).expect("links"), id)
}

#[test]
fn an_image_saved_to_a_writer_is_what_save_image_returns_sealed_where_the_writer_was() {
    let (image, id) = real_linked_image();
    let bytes = image.save_image(&id).expect("saves");
    // Streamed after a prefix: the file starts where the writer was, its
    // content hash is patched in at the file's own offset, and the writer
    // is left at the file's end.
    let prefix = b"not an image";
    let mut out = std::io::Cursor::new(prefix.to_vec());
    out.set_position(prefix.len() as u64);
    image.save_image_to(&id, &mut out).expect("saves");
    assert_eq!(out.position() as usize, prefix.len() + bytes.len());
    let streamed = out.into_inner();
    assert_eq!(&streamed[..prefix.len()], prefix);
    assert!(
        streamed[prefix.len()..] == bytes[..],
        "streamed bytes differ"
    );
    load(&bytes).expect("the saved image loads");
}

/// A writer that fails after `left` bytes.
struct FailingWriter {
    left: usize,
    position: u64,
}

impl std::io::Write for FailingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk full"));
        }
        let n = bytes.len().min(self.left);
        self.left -= n;
        self.position += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for FailingWriter {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        match to {
            std::io::SeekFrom::Start(at) => self.position = at,
            std::io::SeekFrom::Current(by) => self.position = self.position.wrapping_add_signed(by),
            std::io::SeekFrom::End(_) => return Err(std::io::Error::other("no end")),
        }
        Ok(self.position)
    }
}

#[test]
fn a_failing_writer_fails_the_save_with_the_io_error_as_its_source() {
    let (image, id) = real_linked_image();
    // Inside the header, inside the code, and at the very end (the hash).
    let size = image.save_image(&id).expect("saves").len();
    for left in [100, size / 2, size] {
        let mut out = FailingWriter { left, position: 0 };
        let e = image
            .save_image_to(&id, &mut out)
            .expect_err("the writer fails");
        assert!(matches!(e, ImageError::Io { what: "write", .. }), "{e:?}");
        let source = std::error::Error::source(&e).expect("keeps the io error");
        assert_eq!(source.to_string(), "disk full", "{e}");
    }
}

fn load(bytes: &[u8]) -> Result<kiln_linker::LinkedImage, ImageError> {
    // SAFETY: the tests' own image (or a mutant of it); its initializers
    // are never run and none of its functions is called.
    unsafe { image_file::load("test.kimg", bytes, &HostSymbols::new()) }
}

#[test]
fn damaged_images_are_refused_naming_the_field_and_both_values() {
    if !need_tool("clang") {
        return;
    }
    let good = real_image();
    let image = load(&good).expect("the real image loads");
    assert!(image.symbol("main").is_some() && image.symbol("is_even").is_some());
    drop(image);
    let refuse = |bytes: &[u8]| load(bytes).expect_err("refused").to_string();
    // Not an image.
    assert!(refuse(b"\x7fELF not an image").contains("not a kiln image"));
    // Header field (resealed, so the field check speaks).
    let mut v = good.clone();
    // A file of the previous version (no base alignment field).
    v[64 + 8] = 1;
    image_file::reseal(&mut v);
    let e = refuse(&v);
    assert!(
        e.contains("`format version` is 1, expected 2 (this kiln's; save the image again"),
        "{e}"
    );
    let mut v = good.clone();
    v[64 + 352] = 3; // base alignment 0x1003
    image_file::reseal(&mut v);
    let e = refuse(&v);
    assert!(
        e.contains("`base alignment` is 0x1003, expected a power of two from 0x1000 to 0x40000000"),
        "{e}"
    );
    let mut v = good.clone();
    v[64 + 16] = 183; // EM_AARCH64
    image_file::reseal(&mut v);
    let e = refuse(&v);
    assert!(
        e.contains("`machine` is 183 (aarch64), expected 62 (x86_64"),
        "{e}"
    );
    // A CPU feature this loader does not know (so no CPU has it).
    let mut v = good.clone();
    v[64 + 24 + 7] = 0x80;
    image_file::reseal(&mut v);
    let e = refuse(&v);
    assert!(
        e.contains("`required CPU features` is bit63, expected a subset of this CPU's"),
        "{e}"
    );
    // A byte of code changed: the content hash.
    let mut v = good.clone();
    v[0x1000 + 10] ^= 0x40;
    let e = refuse(&v);
    assert!(
        e.contains("`content hash` is") && e.contains("expected"),
        "{e}"
    );
    // Truncated: the size, before hashing.
    let e = refuse(&good[..good.len() - 100]);
    assert!(
        e.contains("`file size` is") && e.contains(&good.len().to_string()),
        "{e}"
    );
}

/// Mutants of a real image — byte flips anywhere, truncations, and damage
/// to the header, ELF headers and tables with the content hash recomputed
/// (so the table checks, not the hash, must catch it) — each loads (and is
/// unloaded) or fails with an error: no panic, no crash, no hang. Mutants
/// with a valid hash leave the code and `.eh_frame` alone: whoever can
/// recompute the hash is trusted to run code (the loader's contract).
#[test]
fn mutants_of_a_real_image_load_or_fail_with_an_error() {
    if !need_tool("clang") {
        return;
    }
    let good = real_image();
    let sections = kiln_linker_test_ranges(&good);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut loaded, mut refused, mut resealed_refused) = (0usize, 0usize, 0usize);
    for i in 0..12_000 {
        let mut v = good.clone();
        match i % 3 {
            // Unsealed flips: the hash refuses every one.
            0 => rng.flip_bits(&mut v),
            // Truncations.
            1 => v.truncate(rng.below(good.len())),
            // Resealed damage to metadata: header, ELF headers, tables.
            _ => {
                for _ in 0..=rng.below(3) {
                    let (start, end) = sections[rng.below(sections.len())];
                    let at = start + rng.below(end - start);
                    if rng.below(2) == 0 {
                        v[at] ^= 1 << rng.below(8);
                    } else {
                        v[at] = rng.next() as u8;
                    }
                }
                image_file::reseal(&mut v);
            }
        }
        match load(&v) {
            Ok(image) => {
                assert!(
                    i % 3 == 2 || v == good,
                    "mutant {i} loaded without a valid hash"
                );
                loaded += 1;
                drop(image);
            }
            Err(e) => {
                let e = e.to_string();
                assert!(!e.is_empty());
                if i % 3 == 2 {
                    // Resealed: the table checks refused it, not the hash.
                    assert!(!e.contains("content hash"), "mutant {i}: {e}");
                    resealed_refused += 1;
                }
                refused += 1;
            }
        }
    }
    eprintln!("{loaded} mutants loaded, {refused} refused ({resealed_refused} of 4000 resealed)");
    assert_eq!(loaded + refused, 12_000);
    assert!(refused >= 8000, "only {refused} of 12000 mutants refused");
    // Damage to the tables is mostly caught by their own checks.
    assert!(
        resealed_refused >= 2000,
        "only {resealed_refused} resealed mutants refused"
    );
}

/// File ranges of the metadata a resealed mutant may damage: the ELF file
/// header, the kiln header, the program headers, the section headers and
/// the tables (everything except segment contents).
fn kiln_linker_test_ranges(file: &[u8]) -> Vec<(usize, usize)> {
    use object::read::elf::{FileHeader as _, SectionHeader as _};
    let h = object::elf::FileHeader64::<object::LittleEndian>::parse(file).expect("parses");
    let e = object::LittleEndian;
    let mut out = vec![(0, 64), (64, 64 + 360)];
    let phoff = h.e_phoff.get(e) as usize;
    out.push((phoff, phoff + 56 * h.e_phnum.get(e) as usize));
    let shoff = h.e_shoff.get(e) as usize;
    out.push((shoff, shoff + 64 * h.e_shnum.get(e) as usize));
    let sections = h.sections(e, file).expect("sections");
    for s in sections.iter() {
        let name = sections.section_name(e, s).unwrap_or_default();
        if name.starts_with(b".kiln.") && s.sh_size(e) > 0 && name != b".kiln.header" {
            let o = s.sh_offset(e) as usize;
            out.push((o, o + s.sh_size(e) as usize));
        }
    }
    out
}

/// Saves `src` (compiled by gcc with -fPIC) as an image in this process,
/// leaving undefined symbols as imports.
fn image_of_c(dir: &Path, name: &str, src: &str) -> Vec<u8> {
    let obj = compile_c_text(dir, name, src, &["-O2", "-fPIC"]);
    let mut options = LinkOptions::default();
    options.imaging = true;
    let bytes = std::fs::read(&obj).expect("read object");
    let id = BuildId::of_inputs(&options, [(name, bytes.as_slice())]);
    let mut linker = Linker::new(options);
    linker.add_object_bytes(name, bytes);
    let host = HostSymbols::new();
    let resolver = |names: &[&str]| -> Vec<Option<u64>> {
        use kiln_linker::SymbolResolver as _;
        host.resolve(names)
            .into_iter()
            .map(|a| Some(a.unwrap_or(0)))
            .collect()
    };
    let image = linker.link(&resolver).expect("links");
    image.save_image(&id).expect("saves")
}

/// Through the engine: an image's exports are defined in a dylib; the first
/// lookup maps it and binds its imports through the dylib's link order
/// (here an object in another dylib); its initializers run after Ready;
/// removing its tracker runs its finalizers and unmaps it.
#[test]
fn an_image_in_a_dylib_binds_through_the_link_order_and_goes_with_its_tracker() {
    // It checks that the removed image is unmapped: alone in its process.
    if !in_own_process("an_image_in_a_dylib_binds_through_the_link_order_and_goes_with_its_tracker")
    {
        return;
    }
    use kiln_engine::{DylibLookup, Session, WorkerPool};
    use kiln_linker::layer::{HostGenerator, ObjectLayer};
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-engine");
    let image = image_of_c(
        &dir,
        "probe",
        "#include <stdlib.h>\n\
         int is_odd(int);\n\
         static int ready;\n\
         __attribute__((constructor)) static void init(void) { ready = 40; }\n\
         __attribute__((destructor)) static void fini(void) { setenv(\"KILN_IMAGE_TEST_FINI\", \"ran\", 1); }\n\
         int probe(int n) { return ready + is_odd(n); }\n",
    );
    let odd = compile_c_text(
        &dir,
        "odd",
        "int is_odd(int n) { return n & 1; }\n",
        &["-O2", "-fPIC"],
    );
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::new(&session);
    let host = session.create_dylib("<host>").expect("dylib");
    host.add_generator(HostGenerator::new(HostSymbols::new()))
        .expect("generator");
    let lib = session.create_dylib("lib").expect("dylib");
    lib.set_link_order(&[(host.clone(), DylibLookup::ExportedOnly)])
        .expect("order");
    layer
        .add_object(&lib, None, "odd.o", &std::fs::read(&odd).expect("read"))
        .expect("adds odd.o");
    let app = session.create_dylib("app").expect("dylib");
    app.set_link_order(&[
        (lib.clone(), DylibLookup::ExportedOnly),
        (host.clone(), DylibLookup::ExportedOnly),
    ])
    .expect("order");
    let rt = app.create_tracker().expect("tracker");
    // SAFETY: the test's own image; `probe` is `int probe(int)`.
    unsafe { layer.add_image(&app, Some(&rt), "probe.kimg", image) }.expect("adds the image");
    let found = app.lookup_ready(&["probe"]).expect("probe is Ready");
    let address = found.get_str("probe").expect("probe").address as usize;
    // SAFETY: the test's own image's initializer.
    unsafe { layer.run_initializers() };
    // SAFETY: `probe` is Ready (mapped, bound, finalized) and is `int probe(int)`.
    let probe: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute(address) };
    assert_eq!(
        probe(3),
        41,
        "initializer ran, is_odd bound through the link order"
    );
    assert_eq!(probe(2), 40);
    let mapped = |addr: usize| {
        std::fs::read_to_string("/proc/self/maps")
            .expect("maps")
            .lines()
            .any(|l| {
                let mut f = l.split_whitespace();
                let (range, perms) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                let (lo, hi) = range.split_once('-').unwrap_or(("0", "0"));
                let lo = usize::from_str_radix(lo, 16).unwrap_or(0);
                let hi = usize::from_str_radix(hi, 16).unwrap_or(0);
                lo <= addr && addr < hi && perms.contains('x')
            })
    };
    assert!(mapped(address));
    assert!(std::env::var("KILN_IMAGE_TEST_FINI").is_err());
    rt.remove().expect("removes");
    assert_eq!(
        std::env::var("KILN_IMAGE_TEST_FINI").as_deref(),
        Ok("ran"),
        "finalizer ran at removal"
    );
    assert!(
        !mapped(address),
        "code still mapped executable after removal"
    );
    assert!(app.lookup_ready(&["probe"]).is_err());
    session.end();
}

/// `kiln run` mixes images and objects in one dylib: a library image whose
/// imports (here `is_even`, a cycle back into the object) are bound by name
/// at load, and the object that uses it.
#[test]
fn an_image_and_an_object_mixed_in_kiln_run_close_a_cycle() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIE", "-fcommon"];
    let objs = prog_ab("clang", &flags, "mixed");
    let dir = scratch("images-mixed");
    let (native_out, native_ret) = run_native("clang", &objs, &flags, &[], &dir.join("native"));
    let lib = dir.join("b.kimg");
    let o = kiln()
        .args(["image", "save", "--allow-undefined", "-o"])
        .arg(&lib)
        .arg(&objs[1])
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{}", show(&o));
    for order in [[&lib, &objs[0]], [&objs[0], &lib]] {
        let o = kiln().arg("run").args(order).output().expect("kiln runs");
        assert_like_native(&o, &native_out, native_ret, &format!("kiln run {order:?}"));
    }
}

/// Imports nobody defines fail the lookup of the image's exports, every
/// missing name listed at once.
#[test]
fn missing_imports_are_all_named_when_the_image_is_looked_up() {
    use kiln_engine::{DylibLookup, Session, WorkerPool};
    use kiln_linker::layer::{HostGenerator, ObjectLayer};
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-missing");
    let image = image_of_c(
        &dir,
        "needy",
        "int nobody_defines_this(int);\n\
         int nor_this(int);\n\
         int needy(int n) { return nobody_defines_this(n) + nor_this(n); }\n",
    );
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::new(&session);
    let host = session.create_dylib("<host>").expect("dylib");
    host.add_generator(HostGenerator::new(HostSymbols::new()))
        .expect("generator");
    let app = session.create_dylib("app").expect("dylib");
    app.set_link_order(&[(host.clone(), DylibLookup::ExportedOnly)])
        .expect("order");
    // SAFETY: the test's own image; nothing of it is called.
    unsafe { layer.add_image(&app, None, "needy.kimg", image) }.expect("adds the image");
    let err = app
        .lookup_ready(&["needy"])
        .expect_err("imports are missing")
        .to_string();
    assert!(
        err.contains("nobody_defines_this")
            && err.contains("nor_this")
            && err.contains("needy.kimg"),
        "{err}"
    );
    session.end();
}

/// The container is ordinary ELF: readelf lists the kiln header, the
/// segments with their protections and the tables, without a warning; `kiln
/// image info` describes the same file.
#[test]
fn readelf_reads_the_container_and_image_info_describes_it() {
    if !need_tool("clang") || !need_tool("readelf") {
        return;
    }
    let objs = prog_ab("clang", &["-O2", "-fPIE", "-fcommon"], "readelf");
    let image = scratch("images-readelf").join("p.kimg");
    save(&image, &objs, &[]);
    let o = Command::new("readelf")
        .args(["-W", "-S", "-l"])
        .arg(&image)
        .output()
        .expect("readelf runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", show(&o));
    for s in [
        ".kiln.header",
        ".text",
        ".rodata",
        ".eh_frame",
        ".kiln.rebase",
        ".kiln.imports",
        ".kiln.exports",
        ".kiln.strings",
        "R E",
        "RW",
    ] {
        assert!(out.contains(s), "readelf output lacks {s:?}:\n{out}");
    }
    assert_eq!(out.matches("LOAD").count(), 3, "{out}");
    let o = kiln()
        .args(["image", "info"])
        .arg(&image)
        .output()
        .expect("kiln runs");
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", show(&o));
    for s in [
        "build id",
        "format version  2",
        "base alignment  0x1000",
        "exports ",
        "imports ",
        "rebases ",
        ".text",
        "r-x",
    ] {
        assert!(info.contains(s), "info lacks {s:?}:\n{info}");
    }
}

/// `kiln run --cache DIR`: a miss links and stores an image keyed by the
/// inputs' content hash, a hit loads it, a damaged entry is reported in one
/// line, relinked and replaced; a directory others may write is refused;
/// inputs that cannot be imaged run uncached.
/// Rewrites the byte at `at` of `path` in place (same inode and size) and
/// puts its mtime back: only the ctime tells the change.
fn rewrite_byte_in_place(path: &Path, at: usize, f: impl Fn(u8) -> u8) {
    use std::io::{Read as _, Seek as _, Write as _};
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8];
    file.seek(std::io::SeekFrom::Start(at as u64))
        .expect("seek");
    file.read_exact(&mut b).expect("read");
    file.seek(std::io::SeekFrom::Start(at as u64))
        .expect("seek");
    file.write_all(&[f(b[0])]).expect("write");
    file.set_modified(mtime).expect("set mtime");
}

/// `kiln run --cache` records, for inputs older than its racy window, their
/// identities and the build id they hashed to: the next run with the same
/// unchanged inputs hits without hashing them. An input rewritten in place
/// (same size, mtime put back: only its ctime tells) is hashed again, a
/// miss, and runs its new code. The entry's own identity and content hash
/// are recorded too (its hash skipped while it is unchanged); an entry
/// damaged in place is hashed again and relinked.
#[test]
fn run_cache_hits_unchanged_inputs_by_their_index_and_rehashes_a_rewritten_one() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-cache-index");
    let src = "#include <stdio.h>\nint main(void) { puts(\"index-A\"); return 7; }\n";
    let obj = compile_c_text(&dir, "say", src, &["-O2", "-fPIE"]);
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    // Older than the racy window (2 s), so its identity can be trusted.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let run = || {
        let o = kiln()
            .args(["run", "--stats", "--cache"])
            .arg(&cache)
            .arg(&obj)
            .output()
            .expect("kiln runs");
        assert_eq!(o.status.code(), Some(7), "{}", show(&o));
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (out, err) = run();
    assert_eq!(out, "index-A\n");
    assert!(err.contains("cache miss"), "{err}");
    let (out, err) = run();
    assert_eq!(out, "index-A\n");
    assert!(
        err.contains("cache hit") && err.contains("(inputs unchanged)"),
        "{err}"
    );
    // Once the entry is older than the racy window, a hit records its
    // identity and content hash, and later hits skip hashing it — unless
    // it changed: damaged in place (mtime put back), it is hashed again,
    // refused and relinked.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert!(run().1.contains("(inputs unchanged)"));
    let entry = std::fs::read_dir(&cache)
        .expect("cache dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "kimg"))
        .expect("an entry");
    rewrite_byte_in_place(&entry, 0x1000, |b| b ^ 0xff);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let (out, err) = run();
    assert_eq!(out, "index-A\n", "{err}");
    assert!(
        err.contains("damaged") && err.contains("content hash"),
        "{err}"
    );
    // Rewrite one byte of the string in place; put the mtime back.
    let bytes = std::fs::read(&obj).expect("object");
    let at = bytes
        .windows(7)
        .position(|w| w == b"index-A")
        .expect("the string in the object")
        + 6;
    rewrite_byte_in_place(&obj, at, |_| b'B');
    // Past the racy window again: only the ctime tells the change.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let (out, err) = run();
    assert_eq!(out, "index-B\n", "{err}");
    assert!(err.contains("cache miss"), "{err}");
}

#[test]
fn run_cache_misses_then_hits_replaces_damaged_entries_and_refuses_open_directories() {
    use std::os::unix::fs::PermissionsExt as _;
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIE", "-fcommon"];
    let objs = prog_ab("clang", &flags, "cache");
    let dir = scratch("images-cache");
    let (native_out, native_ret) = run_native("clang", &objs, &flags, &[], &dir.join("native"));
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let run = || {
        let o = kiln()
            .args(["run", "--stats", "--cache"])
            .arg(&cache)
            .args(&objs)
            .output()
            .expect("kiln runs");
        assert_like_native(&o, &native_out, native_ret, "kiln run --cache");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(run().contains("cache miss"));
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "kimg"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let stored = std::fs::read(&entries[0]).expect("entry");
    assert!(run().contains("cache hit"));
    // Damage the entry: reported in one line, relinked, replaced.
    let mut damaged = stored.clone();
    damaged[0x1000] ^= 0xff;
    std::fs::write(&entries[0], &damaged).expect("damage");
    let err = run();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("damaged")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("content hash"), "{err}");
    assert!(
        std::fs::read(&entries[0]).expect("entry") == stored,
        "entry not replaced"
    );
    // A directory others may write is refused, naming it and why.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let o = kiln()
        .args(["run", "--cache"])
        .arg(&cache)
        .args(&objs)
        .output()
        .expect("kiln runs");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        err.contains(&cache.display().to_string()) && err.contains("lets others write"),
        "{err}"
    );
    // Thread-locals (local-exec code: a fixed static TLS range) are
    // cached too: a miss, then a hit, both right.
    let tls = compile_c_text(
        &dir,
        "tls",
        "__thread int x = 1;\nint main(void) { x += 2; return x; }\n",
        &["-O2", "-fPIE"],
    );
    for want in ["cache miss", "cache hit"] {
        let o = kiln()
            .args(["run", "--stats", "--cache"])
            .arg(&cache)
            .arg(&tls)
            .output()
            .expect("kiln runs");
        assert_eq!(o.status.code(), Some(3), "{}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(want),
            "{want}: {}",
            show(&o)
        );
    }
}

fn build_id_of(image: &Path) -> String {
    let j = info_of(image, true);
    j.split("\"build_id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no build id in {j}"))
        .to_string()
}

/// Two-level Lua: Lua's core saved as `liblua.kimg`, the driver saved as a
/// program image linked against it by build id. Run from the images (given
/// both, or the program alone with the library found next to it), the
/// output and status equal the native build's; the program image names
/// none of Lua's functions; `kiln image info` lists the dependency.
/// Rebuilding the library with different code changes its build id, and
/// the old program image then refuses to load naming both build ids.
#[test]
fn lua_program_image_linked_against_a_liblua_image_by_build_id_matches_native() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_lua("clang", &flags, "image-two-level");
    let dir = scratch("images-two-level");
    let (native_out, native_ret) =
        run_native("clang", &objs, &flags, &["m", "dl"], &dir.join("native"));
    let (driver, core) = objs.split_last().expect("objects");
    assert!(driver.ends_with("lua_driver.o"), "{driver:?}");
    let lib = dir.join("liblua.kimg");
    let prog = dir.join("prog.kimg");
    for f in [&lib, &prog] {
        let _ = std::fs::remove_file(f);
    }
    save(&lib, core, &[]);
    save_against(&prog, &[&lib], std::slice::from_ref(driver));
    let lib_id = build_id_of(&lib);
    let prog_bytes = std::fs::read(&prog).expect("read prog.kimg");
    for name in ["luaL_newstate", "luaL_openlibs", "lua_pcallk"] {
        assert!(
            !prog_bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "prog.kimg refers to {name} by name"
        );
    }
    let text = info_of(&prog, false);
    assert!(
        text.contains("dependencies    1")
            && text.contains(&lib_id)
            && text.contains("liblua.kimg"),
        "{text}"
    );
    let json = info_of(&prog, true);
    assert!(
        json.contains(&format!(
            "\"dependencies\":[{{\"build_id\":\"{lib_id}\",\"name\":\""
        )) && json.contains("liblua.kimg\""),
        "{json}"
    );
    let run = |args: &[&Path]| kiln().arg("run").args(args).output().expect("kiln runs");
    for args in [vec![lib.as_path(), prog.as_path()], vec![prog.as_path()]] {
        let o = run(&args);
        assert_like_native(&o, &native_out, native_ret, &format!("{args:?}"));
    }
    // Rebuild the library with different code: another build id.
    let src = common::lua::lua_src_dir();
    let changed: Vec<PathBuf> = core
        .iter()
        .map(|o| {
            if o.ends_with("lstrlib.o") {
                compile(
                    "clang",
                    &src.join("lstrlib.c"),
                    &["-DLUA_USE_LINUX", "-DLUA_COMPAT_5_3", "-O1", "-fPIE"],
                    &[src.as_path()],
                    &dir.join("lstrlib-O1.o"),
                )
            } else {
                o.clone()
            }
        })
        .collect();
    save(&lib, &changed, &[]);
    let new_id = build_id_of(&lib);
    assert_ne!(new_id, lib_id, "different code kept the build id");
    for args in [vec![lib.as_path(), prog.as_path()], vec![prog.as_path()]] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}\n{}", show(&o));
        assert!(o.stdout.is_empty(), "{}", show(&o));
        assert!(
            err.contains(&lib_id) && err.contains(&new_id) && err.contains("liblua.kimg"),
            "the refusal names both build ids: {err}"
        );
    }
    // Saved again against the new library: another program build id, runs.
    let old_prog_id = build_id_of(&prog);
    save_against(&prog, &[&lib], std::slice::from_ref(driver));
    assert_ne!(
        build_id_of(&prog),
        old_prog_id,
        "the dependency's build id is part of it"
    );
    let o = run(&[prog.as_path()]);
    assert_like_native(
        &o,
        &native_out,
        native_ret,
        "the program saved against the rebuilt library",
    );
}

/// Two library images and a program against both (a call into each and a
/// data pointer with an addend into one): runs with the libraries found
/// next to it; with neither there, the error lists both build ids with
/// their names, and so does the library loader.
#[test]
fn a_program_missing_its_library_images_names_every_missing_build_id() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-missing-deps");
    let flags = ["-O2", "-fPIC"];
    let a = compile_c_text(
        &dir,
        "liba",
        "int table[4] = {1, 2, 3, 4};\nint a_val(void) { return 20; }\n",
        &flags,
    );
    let b = compile_c_text(&dir, "libb", "int b_val(void) { return 17; }\n", &flags);
    let m = compile_c_text(
        &dir,
        "main",
        "extern int table[];\nint a_val(void);\nint b_val(void);\n\
         int *third = &table[2];\n\
         int main(void) { return a_val() + b_val() + *third + table[1]; }\n",
        &flags,
    );
    let (ka, kb, prog) = (
        dir.join("a.kimg"),
        dir.join("b.kimg"),
        dir.join("prog.kimg"),
    );
    save(&ka, &[a], &[]);
    save(&kb, &[b], &[]);
    save_against(&prog, &[&ka, &kb], std::slice::from_ref(&m));
    // Saved again, against the same libraries elsewhere: the same bytes.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let (ea, eb) = (elsewhere.join("a.kimg"), elsewhere.join("b.kimg"));
    std::fs::copy(&ka, &ea).expect("copy");
    std::fs::copy(&kb, &eb).expect("copy");
    let again = elsewhere.join("prog.kimg");
    save_against(&again, &[&ea, &eb], &[m]);
    assert!(
        std::fs::read(&prog).expect("read") == std::fs::read(&again).expect("read"),
        "the image depends on where its libraries were"
    );
    let o = kiln().arg("run").arg(&prog).output().expect("kiln runs");
    assert_eq!(o.status.code(), Some(42), "{}", show(&o));
    let (ida, idb) = (build_id_of(&ka), build_id_of(&kb));
    let json = info_of(&prog, true);
    assert!(json.contains(&ida) && json.contains(&idb), "{json}");
    // Move both away: every missing one is named, with its build id.
    let away = dir.join("away");
    std::fs::create_dir_all(&away).expect("mkdir");
    std::fs::rename(&ka, away.join("a.kimg")).expect("move");
    std::fs::rename(&kb, away.join("b.kimg")).expect("move");
    let o = kiln().arg("run").arg(&prog).output().expect("kiln runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        err.contains(&ida)
            && err.contains(&idb)
            && err.contains("a.kimg")
            && err.contains("b.kimg"),
        "{err}"
    );
    let bytes = std::fs::read(&prog).expect("read");
    let e = load(&bytes).expect_err("its dependencies are not loaded");
    match &e {
        ImageError::MissingDependencies { missing, .. } => {
            let ids: Vec<String> = missing
                .iter()
                .map(|(d, _)| d.build_id.to_string())
                .collect();
            assert_eq!(ids, [ida.clone(), idb.clone()], "{e}");
        }
        _ => panic!("{e}"),
    }
    // Given on the command line from elsewhere, they are found by build id.
    let o = kiln()
        .arg("run")
        .arg(away.join("b.kimg"))
        .arg(away.join("a.kimg"))
        .arg(&prog)
        .output()
        .expect("kiln runs");
    assert_eq!(o.status.code(), Some(42), "{}", show(&o));
}

/// Saves `objs` in imaging mode in this process, binding undefined symbols
/// to `deps`' symbols first (so references into them are saved by build
/// id), then the host's, else 0.
fn image_against(name: &str, objs: &[PathBuf], deps: &[&kiln_linker::LinkedImage]) -> Vec<u8> {
    let (mut linker, id) = common::images::imaging_linker(objs);
    let host = HostSymbols::new();
    let resolver = |names: &[&str]| -> Vec<Option<u64>> {
        use kiln_linker::SymbolResolver as _;
        let found = host.resolve(names);
        names
            .iter()
            .zip(found)
            .map(|(n, h)| Some(deps.iter().find_map(|d| d.symbol(n)).or(h).unwrap_or(0)))
            .collect()
    };
    let image = linker
        .link(&resolver)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    image.save_image(&id).expect("saves")
}

/// A library image and an image linked against it, in this process: `(A's
/// bytes, B's bytes)`. B's `use_a` returns `a_val() + *third + table[1]`
/// = 20 + 3 + 2 (`third` is a data pointer into A with an addend).
fn two_images(tag: &str, a_val: i32) -> (Vec<u8>, Vec<u8>) {
    let dir = scratch(&format!("images-{tag}"));
    let flags = ["-O2", "-fPIC"];
    let a = compile_c_text(
        &dir,
        "liba",
        &format!("int table[4] = {{1, 2, 3, 4}};\nint a_val(void) {{ return {a_val}; }}\n"),
        &flags,
    );
    let b = compile_c_text(
        &dir,
        "useb",
        "extern int table[];\nint a_val(void);\nint *third = &table[2];\n\
         int use_a(void) { return a_val() + *third + table[1]; }\n",
        &flags,
    );
    let a_bytes = image_against("a", &[a], &[]);
    let loaded = load(&a_bytes).expect("A loads");
    let b_bytes = image_against("b", &[b], &[&loaded]);
    drop(loaded);
    (a_bytes, b_bytes)
}

/// The library API: an image linked against another (loaded from a file
/// in this process) records the dependency; loading it binds into wherever
/// the dependency is loaded now (found by build id in the registry, which
/// also answers which image owns an address); without the dependency the
/// load fails naming it.
#[test]
fn an_image_against_a_loaded_image_binds_by_build_id_through_the_registry() {
    if !need_tool("gcc") {
        return;
    }
    let (a_bytes, b_bytes) = two_images("registry", 20);
    let a_id = image_file::inspect("a", &a_bytes).expect("A").build_id;
    let info = image_file::inspect("b", &b_bytes).expect("B");
    assert_eq!(info.dependencies.len(), 1);
    assert_eq!(info.dependencies[0].build_id, a_id);
    assert_eq!(
        info.dependency_imports, 3,
        "a_val's slot, table's slot, the pointer"
    );
    assert!(!b_bytes.windows(5).any(|w| w == b"a_val"), "B names a_val");
    let e = load(&b_bytes).expect_err("A is not loaded");
    assert!(
        matches!(e, ImageError::MissingDependencies { .. })
            && e.to_string().contains(&a_id.to_string()),
        "{e}"
    );
    let a = load(&a_bytes).expect("A loads");
    let (base, size) = a.memory_range();
    let owner = image_file::image_at(base + size / 2).expect("A is registered");
    assert_eq!((owner.build_id, owner.base), (a_id, base));
    let b = load(&b_bytes).expect("B loads against A");
    let f = b.symbol("use_a").expect("use_a");
    // SAFETY: `use_a` is `int use_a(void)`; A and B are loaded and bound.
    let use_a: extern "C" fn() -> i32 = unsafe { std::mem::transmute(f as usize) };
    assert_eq!(use_a(), 25);
    drop(b);
    drop(a);
    assert!(
        image_file::image_at(base).is_none_or(|i| i.build_id != a_id),
        "A left the registry"
    );
}

/// Through the engine: a program image and the library image it links
/// against, each added to its own dylib; looking the program's export up
/// maps the library (found among the session's image files by build id)
/// and the program is Ready only with it; a session without the library
/// fails the lookup naming its build id.
#[test]
fn an_image_in_a_dylib_finds_its_dependency_among_the_sessions_image_files() {
    use kiln_engine::{DylibLookup, Session, WorkerPool};
    use kiln_linker::layer::{HostGenerator, ObjectLayer};
    if !need_tool("gcc") {
        return;
    }
    let (a_bytes, b_bytes) = two_images("engine-deps", 21);
    let a_id = image_file::inspect("a", &a_bytes).expect("A").build_id;
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::new(&session);
    let host = session.create_dylib("<host>").expect("dylib");
    host.add_generator(HostGenerator::new(HostSymbols::new()))
        .expect("generator");
    let lib = session.create_dylib("lib").expect("dylib");
    let app = session.create_dylib("app").expect("dylib");
    for d in [&lib, &app] {
        d.set_link_order(&[(host.clone(), DylibLookup::ExportedOnly)])
            .expect("order");
    }
    // SAFETY: the test's own images; `use_a` is `int use_a(void)`.
    unsafe {
        layer
            .add_image(&app, None, "dir/b.kimg", b_bytes.clone())
            .expect("adds B");
        layer
            .add_image(&lib, None, "dir/a.kimg", a_bytes)
            .expect("adds A");
    }
    let found = app.lookup_ready(&["use_a"]).expect("use_a is Ready");
    assert!(
        image_file::registry::find(&a_id).is_some(),
        "A was mapped for B"
    );
    let f = found.get_str("use_a").expect("use_a").address as usize;
    // SAFETY: Ready, bound; `int use_a(void)`.
    let use_a: extern "C" fn() -> i32 = unsafe { std::mem::transmute(f) };
    assert_eq!(use_a(), 26);
    session.end();
    // Another session with B only.
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::new(&session);
    let app = session.create_dylib("app").expect("dylib");
    // SAFETY: the test's own image, saved just now; nothing of it runs.
    unsafe { layer.add_image(&app, None, "b.kimg", b_bytes) }.expect("adds B");
    let err = app
        .lookup_ready(&["use_a"])
        .expect_err("A is missing")
        .to_string();
    // A was known as `test.kimg` (the tests' loader's name) when B was saved.
    assert!(
        err.contains(&a_id.to_string()) && err.contains("`test.kimg`") && err.contains("b.kimg"),
        "{err}"
    );
    session.end();
}

/// Mutants of a real image with a dependency table (its dependency loaded):
/// byte flips, truncations, and resealed damage aimed at `.kiln.deps` and
/// `.kiln.imports` half the time — each loads or fails with an error.
#[test]
fn mutants_of_an_image_with_dependencies_load_or_fail_with_an_error() {
    if !need_tool("gcc") {
        return;
    }
    let (a_bytes, good) = two_images("mutation-deps", 22);
    let a = load(&a_bytes).expect("A loads");
    drop(load(&good).expect("B loads"));
    let all = kiln_linker_test_ranges(&good);
    let aimed: Vec<(usize, usize)> = section_ranges(&good, &[".kiln.deps", ".kiln.imports"]);
    assert_eq!(aimed.len(), 2, "B has both tables");
    let mut rng = Rng(0x51_7cc1_b727_220a);
    let (mut loaded, mut refused, mut by_deps) = (0usize, 0usize, 0usize);
    for i in 0..3_000 {
        let mut v = good.clone();
        match i % 3 {
            0 => {
                let at = rng.below(v.len());
                v[at] ^= 1 << rng.below(8);
            }
            1 => v.truncate(rng.below(good.len())),
            _ => {
                let ranges = if rng.below(2) == 0 { &aimed } else { &all };
                for _ in 0..=rng.below(2) {
                    let (start, end) = ranges[rng.below(ranges.len())];
                    let at = start + rng.below(end - start);
                    v[at] ^= 1 << rng.below(8);
                }
                image_file::reseal(&mut v);
            }
        }
        match load(&v) {
            Ok(image) => {
                loaded += 1;
                drop(image);
            }
            Err(e) => {
                let e = e.to_string();
                assert!(!e.is_empty());
                if e.contains("dependenc") {
                    by_deps += 1;
                }
                refused += 1;
            }
        }
    }
    drop(a);
    eprintln!("{loaded} loaded, {refused} refused, {by_deps} of them over dependencies");
    assert_eq!(loaded + refused, 3_000);
    assert!(
        by_deps >= 100,
        "only {by_deps} refusals over the dependency table"
    );
}

/// File ranges of the named sections.
fn section_ranges(file: &[u8], names: &[&str]) -> Vec<(usize, usize)> {
    use object::read::elf::{FileHeader as _, SectionHeader as _};
    let h = object::elf::FileHeader64::<object::LittleEndian>::parse(file).expect("parses");
    let e = object::LittleEndian;
    let sections = h.sections(e, file).expect("sections");
    sections
        .iter()
        .filter(|s| {
            let n = sections.section_name(e, s).unwrap_or_default();
            names.iter().any(|w| w.as_bytes() == n) && s.sh_size(e) > 0
        })
        .map(|s| {
            let o = s.sh_offset(e) as usize;
            (o, o + s.sh_size(e) as usize)
        })
        .collect()
}

extern "C" fn kiln_rt_add(a: i32, b: i32) -> i32 {
    a + b
}
static KILN_RT_VALUE: i32 = 7;

/// The host table: a host registers its runtime's entry points and globals
/// in order; an image saves references to them as indices (no names in
/// the file, the table's id in its build id) and binds them at load from
/// the registered table without asking the resolver for a single name; a
/// process with another table (or none) refuses the image naming both.
#[test]
fn host_table_entries_are_saved_by_index_and_bound_without_a_name_lookup() {
    use image_file::{HostTable, set_host_table};
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-host-table");
    let obj = compile_c_text(
        &dir,
        "rt_user",
        "int kiln_rt_add(int, int);\nextern int kiln_rt_value;\n\
         int *value_ptr = &kiln_rt_value;\n\
         int use_rt(int x) { return kiln_rt_add(x, kiln_rt_value) + *value_ptr; }\n",
        &["-O2", "-fPIC"],
    );
    let entries = [
        ("kiln_rt_add", kiln_rt_add as *const () as usize as u64),
        ("kiln_rt_value", &KILN_RT_VALUE as *const i32 as u64),
    ];
    let table = HostTable::new("test-runtime", entries);
    let table_id = table.id();
    set_host_table(Some(table));
    let mut options = LinkOptions::default();
    options.imaging = true;
    let bytes = std::fs::read(&obj).expect("read object");
    let plain = BuildId::of_inputs(&options, [("rt_user.o", bytes.as_slice())]);
    let mut linker = Linker::new(options);
    linker.add_object_bytes("rt_user.o", bytes);
    let resolver = |names: &[&str]| -> Vec<Option<u64>> {
        names
            .iter()
            .map(|n| entries.iter().find(|(e, _)| e == n).map(|(_, a)| *a))
            .collect()
    };
    let image = linker.link(&resolver).expect("links");
    let saved = image.save_image(&plain).expect("saves");
    drop(image);
    let info = image_file::inspect("rt.kimg", &saved).expect("inspects");
    assert_eq!(info.host_table_imports, 3, "two slots and the data pointer");
    assert_eq!(
        info.host_table.as_ref().map(|t| (t.0, t.1)),
        Some((table_id, 2))
    );
    assert_ne!(
        info.build_id, plain,
        "the table's id is part of the build id"
    );
    for name in ["kiln_rt_add", "kiln_rt_value"] {
        assert!(
            !saved.windows(name.len()).any(|w| w == name.as_bytes()),
            "the image names {name}"
        );
    }
    let asked = std::sync::Mutex::new(Vec::<String>::new());
    let no_names = |names: &[&str]| -> Vec<Option<u64>> {
        asked
            .lock()
            .expect("lock")
            .extend(names.iter().map(|n| n.to_string()));
        vec![None; names.len()]
    };
    // SAFETY: the test's own image; `use_rt` is `int use_rt(int)` and the
    // registered table holds the functions and data it was saved against.
    let loaded = unsafe { image_file::load("rt.kimg", &saved, &no_names) }.expect("loads");
    assert!(
        asked.lock().expect("lock").is_empty(),
        "asked for {:?}",
        asked.lock()
    );
    let f = loaded.symbol("use_rt").expect("use_rt");
    // SAFETY: loaded and bound; `int use_rt(int)`.
    let use_rt: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute(f as usize) };
    assert_eq!(use_rt(5), 19);
    drop(loaded);
    // Resealed damage to the host table record and the imports: each
    // mutant loads or fails with an error.
    let aimed = section_ranges(&saved, &[".kiln.hosttab", ".kiln.imports"]);
    assert_eq!(aimed.len(), 2);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut refused = 0;
    for _ in 0..1_000 {
        let mut v = saved.clone();
        let (start, end) = aimed[rng.below(aimed.len())];
        v[start + rng.below(end - start)] ^= 1 << rng.below(8);
        image_file::reseal(&mut v);
        // SAFETY: a mutant of the test's own image; nothing of it runs.
        match unsafe { image_file::load("rt.kimg", &v, &no_names) } {
            Ok(image) => drop(image),
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    }
    assert!(refused >= 300, "only {refused} of 1000 refused");
    // Another table (the entries in another order), then none.
    let swapped = HostTable::new("test-runtime", [entries[1], entries[0]]);
    let other_id = swapped.id();
    set_host_table(Some(swapped));
    let e = load(&saved).expect_err("another table").to_string();
    assert!(
        e.contains("`host table`")
            && e.contains(&table_id.to_string())
            && e.contains(&other_id.to_string()),
        "{e}"
    );
    set_host_table(None);
    let e = load(&saved).expect_err("no table").to_string();
    assert!(e.contains("`host table`") && e.contains("none is"), "{e}");
}

/// A chain: C against B against A. Saving C against B alone finds A next
/// to B; `kiln run c.kimg` finds B next to C and A next to B.
#[test]
fn a_chain_of_images_finds_each_dependency_next_to_the_image_that_needs_it() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-chain");
    let flags = ["-O2", "-fPIC"];
    let a = compile_c_text(&dir, "ca", "int a_val(void) { return 10; }\n", &flags);
    let b = compile_c_text(
        &dir,
        "cb",
        "int a_val(void);\nint b_val(void) { return 2 * a_val() + 1; }\n",
        &flags,
    );
    let c = compile_c_text(
        &dir,
        "cc",
        "int b_val(void);\nint main(void) { return b_val() + 1; }\n",
        &flags,
    );
    let (ka, kb, kc) = (dir.join("a.kimg"), dir.join("b.kimg"), dir.join("c.kimg"));
    save(&ka, &[a], &[]);
    save_against(&kb, &[&ka], &[b]);
    save_against(&kc, &[&kb], &[c]);
    let json = info_of(&kc, true);
    assert!(
        json.contains(&build_id_of(&kb)) && !json.contains(&build_id_of(&ka)),
        "C links against B only: {json}"
    );
    let o = kiln().arg("run").arg(&kc).output().expect("kiln runs");
    assert_eq!(o.status.code(), Some(22), "{}", show(&o));
}

/// C++ across two levels: a library image (a class, a factory, a function
/// that throws, a constructor and destructor) and a program image saved
/// against it. The program's virtual call into an object the library made,
/// its catch of the library's exception (typeinfo bound by build id,
/// unwinding through both images' `.eh_frame`) and the initializer and
/// finalizer order equal the native build's.
#[test]
fn cxx_program_image_against_a_library_image_catches_its_exceptions() {
    if !need_tool("clang++") {
        return;
    }
    let dir = scratch("images-cxx-two-level");
    let lib = r#"
#include <cstdio>
#include <stdexcept>
struct Shape { virtual ~Shape() {} virtual int area() const = 0; };
struct Sq : Shape { int s; Sq(int s) : s(s) {} int area() const override { return s * s; } };
Shape *make(int s) { return new Sq(s); }
int risky(int x) { if (x < 0) throw std::runtime_error("from the library"); return x; }
struct LibInit { LibInit() { std::printf("lib ctor\n"); } ~LibInit() { std::printf("lib dtor\n"); } } lib_init;
"#;
    let main = r#"
#include <cstdio>
#include <stdexcept>
struct Shape { virtual ~Shape() {} virtual int area() const = 0; };
Shape *make(int s);
int risky(int x);
struct MainInit { MainInit() { std::printf("main ctor\n"); } ~MainInit() { std::printf("main dtor\n"); } } main_init;
int main() {
    Shape *s = make(5);
    int a = s->area();
    delete s;
    try { risky(-1); } catch (const std::runtime_error &e) { std::printf("caught %s\n", e.what()); }
    std::printf("area %d\n", a);
    return a % 50;
}
"#;
    let flags = ["-O2", "-fPIE"];
    let mut objs = Vec::new();
    for (name, src) in [("lib", lib), ("main", main)] {
        let path = dir.join(format!("{name}.cpp"));
        std::fs::write(&path, src).expect("write source");
        objs.push(compile(
            "clang++",
            &path,
            &flags,
            &[],
            &dir.join(format!("{name}.o")),
        ));
    }
    let (native_out, native_ret) = run_native("clang++", &objs, &flags, &[], &dir.join("native"));
    let (klib, kprog) = (dir.join("libshape.kimg"), dir.join("prog.kimg"));
    save(&klib, &objs[..1], &[]);
    save_against(&kprog, &[&klib], &objs[1..]);
    let info = info_of(&kprog, false);
    assert!(info.contains("dependencies    1"), "{info}");
    let o = kiln().arg("run").arg(&kprog).output().expect("kiln runs");
    assert_like_native(
        &o,
        &native_out,
        native_ret,
        "the program saved against its library image",
    );
}

/// The file's mappings inside `[base, base+size)`, from /proc/self/maps.
fn mappings_of(path: &Path, base: u64, size: u64) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let path = path.display().to_string();
    maps.lines()
        .filter(|l| l.ends_with(&path))
        .filter(|l| {
            let start = l.split('-').next().unwrap_or("");
            u64::from_str_radix(start, 16).is_ok_and(|s| s >= base && s < base + size)
        })
        .map(str::to_string)
        .collect()
}

/// `image_file::load_file` maps the image's whole pages from the file
/// copy-on-write instead of copying them (the file shows in
/// /proc/self/maps inside the image's range), the code runs as from
/// `load` (an image bound into it by build id included), a write to its
/// data changes the process's copy, not the file, and dropping it maps
/// zero pages back (no mapping of the file is left).
#[test]
fn an_image_loaded_from_its_file_maps_its_pages_and_runs_like_a_copied_one() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-map-file");
    let flags = ["-O2", "-fPIC"];
    // Whole pages in text, read-only data and data (a segment's last,
    // partial page is copied, not mapped).
    let a = compile_c_text(
        &dir,
        "liba",
        "const char big[3 * 4096] = {1};\nint table[2048] = {1, 2, 3, 4};\n\
         int a_val(void) { return 19 + big[0]; }\n",
        &flags,
    );
    let b = compile_c_text(
        &dir,
        "useb",
        "extern int table[];\nint a_val(void);\nint *third = &table[2];\n\
         int use_a(void) { return a_val() + *third + table[1]; }\n",
        &flags,
    );
    let a_bytes = image_against("a", &[a], &[]);
    let loaded = load(&a_bytes).expect("A loads");
    let b_bytes = image_against("b", &[b], &[&loaded]);
    drop(loaded);
    let (pa, pb) = (dir.join("liba.kimg"), dir.join("useb.kimg"));
    std::fs::write(&pa, &a_bytes).expect("write A");
    std::fs::write(&pb, &b_bytes).expect("write B");
    let host = HostSymbols::new();
    // SAFETY: the tests' own images, saved just now; A outlives B.
    let a = unsafe { image_file::load_file(&pa, &host) }.expect("A maps");
    // SAFETY: the tests' own images, saved just now; A outlives B.
    let b = unsafe { image_file::load_file(&pb, &host) }.expect("B maps against A");
    let (base, size) = a.memory_range();
    let mapped = mappings_of(&pa, base, size);
    assert!(!mapped.is_empty(), "no page of A maps its file");
    let f = b.symbol("use_a").expect("use_a");
    // SAFETY: `use_a` is `int use_a(void)`; A and B are loaded and bound.
    let use_a: extern "C" fn() -> i32 = unsafe { std::mem::transmute(f as usize) };
    assert_eq!(use_a(), 25);
    let table = a.symbol("table").expect("table") as *mut i32;
    // SAFETY: `int table[4]` in A's writable data, loaded.
    unsafe { *table.add(1) = 7 };
    assert_eq!(use_a(), 30, "B reads A's table");
    assert_eq!(
        std::fs::read(&pa).expect("read A"),
        a_bytes,
        "the file changed"
    );
    drop(b);
    drop(a);
    assert_eq!(mappings_of(&pa, base, size), Vec::<String>::new());
    // SAFETY: the file does not exist; nothing is loaded.
    let e =
        unsafe { image_file::load_file(&dir.join("none.kimg"), &host) }.expect_err("no such file");
    assert!(
        matches!(e, ImageError::Io { what: "open", .. }) && e.to_string().contains("none.kimg"),
        "{e}"
    );
}

/// A file whose content hash this process checked is not hashed again
/// while its identity (device, inode, size, mtime, ctime) stays the same;
/// a file rewritten in place (same inode, same size) is hashed again, and
/// a flipped byte of code — which no table check can see — is refused.
#[test]
fn an_image_file_rewritten_in_place_is_hashed_again() {
    use std::io::{Read, Seek, SeekFrom, Write};
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-rewritten");
    let o = compile_c_text(
        &dir,
        "r",
        "int r_val(void) { return 41; }\n",
        &["-O2", "-fPIC"],
    );
    let bytes = image_against("r", &[o], &[]);
    let path = dir.join("r.kimg");
    std::fs::write(&path, &bytes).expect("write");
    // A file changed in the last 2 s is hashed on every load (timestamps
    // are coarse): let it age so that the first load remembers it.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let host = HostSymbols::new();
    for _ in 0..2 {
        // SAFETY: the test's own image, saved just now.
        let image = unsafe { image_file::load_file(&path, &host) }.expect("loads");
        let f = image.symbol("r_val").expect("r_val");
        // SAFETY: `int r_val(void)` of the loaded image.
        let r: extern "C" fn() -> i32 = unsafe { std::mem::transmute(f as usize) };
        assert_eq!(r(), 41);
    }
    // The first byte of the first segment (text), flipped in place.
    use object::read::elf::{FileHeader as _, ProgramHeader as _};
    let h = object::elf::FileHeader64::<object::LittleEndian>::parse(&bytes[..]).expect("ELF");
    let text = h
        .program_headers(object::LittleEndian, &bytes[..])
        .expect("phdrs")[0]
        .p_offset(object::LittleEndian);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut b = [0u8];
    f.seek(SeekFrom::Start(text)).expect("seek");
    f.read_exact(&mut b).expect("read");
    f.seek(SeekFrom::Start(text)).expect("seek");
    f.write_all(&[b[0] ^ 0x40]).expect("write");
    drop(f);
    // SAFETY: the test's own image; the damaged file must be refused before mapping.
    let e = unsafe { image_file::load_file(&path, &host) }.expect_err("a flipped byte is refused");
    assert!(e.to_string().contains("content hash"), "{e}");
}

/// The `Threads:` line of /proc/self/status that `kiln run ARGS` prints.
fn threads_seen(args: &[&std::ffi::OsStr]) -> usize {
    let o = kiln().arg("run").args(args).output().expect("kiln runs");
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    out.trim()
        .strip_prefix("Threads:")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no thread count in {out:?}"))
}

/// `kiln run` of images only (a cache hit included) maps and binds, and
/// an eager run links its inputs on the main thread (a small link splits
/// nothing over helpers): the program sees one thread. With `--lazy` it
/// sees the workers that link objects as they are first called.
#[test]
fn kiln_run_starts_no_worker_thread_unless_lazy() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-threads");
    let obj = compile_c_text(
        &dir,
        "threads",
        "#include <stdio.h>\n#include <string.h>\n\
         int main(void) {\n  char l[256];\n  FILE *f = fopen(\"/proc/self/status\", \"r\");\n\
           if (!f) return 1;\n\
           while (fgets(l, sizeof l, f)) if (!strncmp(l, \"Threads:\", 8)) fputs(l, stdout);\n\
           fclose(f);\n  return 0;\n}\n",
        &["-O2", "-fPIC"],
    );
    let image = dir.join("threads.kimg");
    save(&image, std::slice::from_ref(&obj), &[]);
    assert_eq!(threads_seen(&[obj.as_os_str()]), 1);
    assert_eq!(threads_seen(&[image.as_os_str()]), 1);
    let lazy = threads_seen(&["--lazy".as_ref(), obj.as_os_str()]);
    assert!(lazy >= 2, "a lazy run's workers: {lazy} threads");
}

/// `kiln run X.kimg` of one settled image file (its identity older than
/// the 2 s racy window, as a cache entry usually is) loads it with the
/// standalone loader, without the engine: its constructors get the
/// program's arguments, and its teardown — `main` returning or calling
/// `exit` — runs the `atexit` handlers and destructors in a native
/// executable's order; a missing entry point is named as the engine names
/// it, missing imports all at once; an image that links against another
/// runs through the engine, which finds it next to it; `--stats` (the
/// engine's lines) still describes the run.
#[test]
fn a_settled_image_run_alone_starts_and_tears_down_like_a_native_executable() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-alone");
    let src = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void handler1(void) { puts("atexit 1"); }
static void handler2(void) { puts("atexit 2"); }
__attribute__((constructor)) static void ctor(int argc, char **argv) {
    printf("constructor argc=%d argv[1]=%s\n", argc, argc > 1 ? argv[1] : "-");
    atexit(handler1);
}
__attribute__((destructor)) static void dtor(void) { puts("destructor (default priority)"); }
__attribute__((destructor(200))) static void dtor200(void) { puts("destructor 200"); }
int main(int argc, char **argv) {
    atexit(handler2);
    puts("main");
    if (argc > 1 && !strcmp(argv[1], "exit")) exit(7);
    return 5;
}
"#;
    let obj = compile_c_text(&dir, "alone", src, &["-O2", "-fPIC"]);
    let exe = dir.join("alone-native");
    let status = Command::new("gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&obj)
        .status()
        .expect("gcc runs");
    assert!(status.success());
    let image = dir.join("alone.kimg");
    save(&image, std::slice::from_ref(&obj), &[]);
    // An image that needs another (found next to it by the engine), and
    // one whose imports nothing defines.
    let lib_obj = compile_c_text(
        &dir,
        "lib",
        "int lib_value(void) { return 42; }\n",
        &["-O2", "-fPIC"],
    );
    let lib = dir.join("lib.kimg");
    save(&lib, std::slice::from_ref(&lib_obj), &[]);
    let user_obj = compile_c_text(
        &dir,
        "user",
        "int lib_value(void);\nint main(void) { return lib_value(); }\n",
        &["-O2", "-fPIC"],
    );
    let user = dir.join("user.kimg");
    save_against(&user, &[&lib], std::slice::from_ref(&user_obj));
    let needy_obj = compile_c_text(
        &dir,
        "needy",
        "int missing_one(void);\nint missing_two(void);\n\
         int main(void) { return missing_one() + missing_two(); }\n",
        &["-O2", "-fPIC"],
    );
    let needy = dir.join("needy.kimg");
    let o = kiln()
        .args(["image", "save", "--allow-undefined", "-o"])
        .arg(&needy)
        .arg(&needy_obj)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{}", show(&o));
    // Past the racy window: the loader may trust the files' identities.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let o = kiln().arg("run").arg(&user).output().expect("kiln runs");
    assert_eq!(o.status.code(), Some(42), "{}", show(&o));
    let o = kiln().arg("run").arg(&needy).output().expect("kiln runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        err.contains("imported symbols not found: missing_one, missing_two"),
        "{}",
        show(&o)
    );
    for how in ["return", "exit"] {
        let native = Command::new(&exe).arg(how).output().expect("native runs");
        let jit = kiln()
            .arg("run")
            .arg(&image)
            .args(["--", how])
            .output()
            .expect("kiln runs");
        assert_eq!(
            jit.status.code(),
            native.status.code(),
            "{how}: {}",
            show(&jit)
        );
        assert_eq!(
            String::from_utf8_lossy(&jit.stdout),
            String::from_utf8_lossy(&native.stdout),
            "{how}: {}",
            show(&jit)
        );
    }
    let missing = kiln()
        .args(["run", "--entry", "no_such_entry"])
        .arg(&image)
        .output()
        .expect("kiln runs");
    assert_eq!(missing.status.code(), Some(1), "{}", show(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("symbols not found: no_such_entry"),
        "{}",
        show(&missing)
    );
    let stats = kiln()
        .args(["run", "--stats"])
        .arg(&image)
        .output()
        .expect("kiln runs");
    assert_eq!(stats.status.code(), Some(5), "{}", show(&stats));
    assert!(
        String::from_utf8_lossy(&stats.stderr).contains("images linked          1"),
        "{}",
        show(&stats)
    );
}

/// A program's `envp` (in `main` and in its constructors) is the process's
/// own `environ`, as a native executable's is: one array, so `setenv` and
/// `getenv` see what `main` was given — through the engine (`kiln run X.o`,
/// eager and `--lazy`) and through the standalone loader (`kiln run
/// X.kimg`, settled). Before, kiln passed a copy of the environment.
#[test]
fn the_programs_envp_is_the_processs_environ_like_a_native_main() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-environ");
    let src = r#"
#include <stdio.h>
#include <stdlib.h>
extern char **environ;
static char **ctor_envp;
__attribute__((constructor)) static void ctor(int argc, char **argv, char **envp) {
    (void)argc; (void)argv;
    ctor_envp = envp;
}
int main(int argc, char **argv, char **envp) {
    (void)argc; (void)argv;
    const char *v = getenv("KILN_ENVIRON_TEST");
    printf("envp is environ %d, constructor's %d, value %s\n", envp == environ,
           ctor_envp == envp, v ? v : "(unset)");
    return 0;
}
"#;
    let obj = compile_c_text(&dir, "environ", src, &["-O2", "-fPIC"]);
    let image = dir.join("environ.kimg");
    save(&image, std::slice::from_ref(&obj), &[]);
    // Past the racy window: `kiln run X.kimg` runs it alone.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let expected = "envp is environ 1, constructor's 1, value yes\n";
    let runs: [&[&std::ffi::OsStr]; 3] = [
        &[obj.as_os_str()],
        &["--lazy".as_ref(), obj.as_os_str()],
        &[image.as_os_str()],
    ];
    for args in runs {
        let o = kiln()
            .arg("run")
            .args(args)
            .env("KILN_ENVIRON_TEST", "yes")
            .output()
            .expect("kiln runs");
        assert!(o.status.success(), "{args:?}: {}", show(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            expected,
            "{args:?}: {}",
            show(&o)
        );
    }
}

/// Whether /proc/self/maps has lines naming a `.kimg` file and libstdc++.
const COUNT_KIMG_MAPPINGS: &str = "#include <stdio.h>\n#include <string.h>\n\
    int main(void) {\n  char l[4096]; int n = 0;\n\
      FILE *f = fopen(\"/proc/self/maps\", \"r\");\n  if (!f) return 1;\n\
      int cxx = 0;\n\
      while (fgets(l, sizeof l, f)) { if (strstr(l, \".kimg\\n\")) n++; if (strstr(l, \"libstdc++\")) cxx = 1; }\n\
      fclose(f);\n  printf(\"kimg mappings: %d, libstdc++: %d\\n\", n > 0 ? 1 : 0, cxx);\n  return 0;\n}\n";

/// `kiln run X.kimg` and a `kiln run --cache` hit load the image from its
/// file (segments mapped copy-on-write, as `image_file::load_file` does),
/// not from a copy: the running program sees the file in its mappings. The
/// file is checked once, when opened: a damaged image is refused naming
/// its content hash. A C program's run does not open libstdc++ (the host
/// opens it on the first name found nowhere else).
#[test]
fn kiln_run_of_an_image_and_a_cache_hit_map_the_file() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-run-mapped");
    // Whole text pages, so that at least one page is mapped, not copied.
    let src = format!(
        "{COUNT_KIMG_MAPPINGS}\n__attribute__((used)) static const char pad[3 * 4096] = {{1}};\n\
         int pad_byte(void) {{ return pad[0]; }}\n"
    );
    let obj = compile_c_text(&dir, "maps", &src, &["-O2", "-fPIC"]);
    let image = dir.join("maps.kimg");
    save(&image, std::slice::from_ref(&obj), &[]);
    let stdout = |o: &Output| {
        assert!(o.status.success(), "{}", show(o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let run = |args: &[&std::ffi::OsStr]| kiln().arg("run").args(args).output().expect("kiln");
    assert_eq!(
        stdout(&run(&[image.as_os_str()])),
        "kimg mappings: 1, libstdc++: 0\n",
        "kiln run X.kimg"
    );
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let cached = || {
        run(&[
            "--stats".as_ref(),
            "--cache".as_ref(),
            cache.as_os_str(),
            obj.as_os_str(),
        ])
    };
    let miss = cached();
    assert!(
        String::from_utf8_lossy(&miss.stderr).contains("cache miss"),
        "{}",
        show(&miss)
    );
    assert_eq!(
        stdout(&miss),
        "kimg mappings: 1, libstdc++: 0\n",
        "cache miss"
    );
    let hit = cached();
    assert!(
        String::from_utf8_lossy(&hit.stderr).contains("cache hit"),
        "{}",
        show(&hit)
    );
    assert_eq!(
        stdout(&hit),
        "kimg mappings: 1, libstdc++: 0\n",
        "cache hit"
    );
    // Checked when opened: one flipped byte is refused.
    let mut bytes = std::fs::read(&image).expect("image");
    bytes[0x1000] ^= 0xff;
    std::fs::write(&image, &bytes).expect("damage");
    let e = image_file::ImageFile::open(&image).expect_err("damaged image opens");
    assert!(e.to_string().contains("content hash"), "{e}");
    let o = run(&[image.as_os_str()]);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("content hash"),
        "{}",
        show(&o)
    );
}

#[test]
fn image_save_stats_prints_run_stats_lines_and_still_writes_the_image() {
    if !need_tool("gcc") {
        return;
    }
    let flags = ["-O2", "-fPIC", "-fcommon"];
    let objs = prog_ab("gcc", &flags, "save-stats");
    let image = scratch("images-save-stats").join("prog.kimg");
    let _ = std::fs::remove_file(&image);
    let o = kiln()
        .args(["image", "save", "--stats", "-o"])
        .arg(&image)
        .args(&objs)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "image save --stats: {}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    // The lines benches/link_inputs/link_report.py reads from `kiln run
    // --noexec --stats`.
    for line in [
        "kiln: stats",
        "  inputs                 2\n",
        "  objects linked         2\n",
        "  read inputs ",
        "  prepare (prune, GOT, allocate, resolve) ",
        "  look up externals ",
        "  fixup + finalize ",
        "  link (entry Ready) ",
        "  relocations / s ",
        "  total ",
    ] {
        assert!(err.contains(line), "no {line:?} in:\n{err}");
    }
    let relocs: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("  relocations            "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no relocations count in:\n{err}"));
    assert!(relocs > 0, "{err}");
    let o = kiln().arg("run").arg(&image).output().expect("kiln runs");
    // (prog_a's main returns a nonzero status on purpose.)
    assert!(
        o.status.code().is_some() && o.stdout.starts_with(b"0 is even"),
        "the image --stats saved: {}",
        show(&o)
    );
}

/// Blocks aligned beyond a page keep their alignment in a saved image: run
/// by `kiln run` right after saving (the engine path), once the file is
/// settled (2.2 s later: the path without the engine), and from the cache
/// (a miss saves, a hit loads the saved entry).
#[test]
fn blocks_aligned_beyond_a_page_stay_aligned_in_a_loaded_image() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-aligned");
    let obj = compile(
        "gcc",
        &c_dir().join("aligned_blocks.c"),
        &["-O2", "-fPIC"],
        &[],
        &dir.join("aligned.o"),
    );
    let image = dir.join("aligned.kimg");
    let _ = std::fs::remove_file(&image);
    save(&image, std::slice::from_ref(&obj), &[]);
    let check = |o: &Output, how: &str| {
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "0 0 0 0\n",
            "{how}: misaligned\n{}",
            show(o)
        );
        assert_eq!(o.status.code(), Some(2), "{how}: {}", show(o));
    };
    let o = kiln().arg("run").arg(&image).output().expect("kiln runs");
    check(&o, "kiln run, fresh image");
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    for how in ["cache miss", "cache hit"] {
        let o = kiln()
            .args(["run", "--stats", "--cache"])
            .arg(&cache)
            .arg(&obj)
            .output()
            .expect("kiln runs");
        check(&o, how);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(how),
            "{}",
            show(&o)
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let o = kiln().arg("run").arg(&image).output().expect("kiln runs");
    check(&o, "kiln run, settled image");
    let info = kiln()
        .args(["image", "info"])
        .arg(&image)
        .output()
        .expect("kiln runs");
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("base alignment  0x200000"),
        "{}",
        show(&info)
    );
}

/// An alignment beyond what an image may ask of its loader (1 GiB) is
/// refused at save, naming the block's object and section.
#[test]
fn an_alignment_beyond_a_gibibyte_is_refused_at_save() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-overaligned");
    let asm = dir.join("huge.s");
    std::fs::write(
        &asm,
        ".section .data.huge,\"aw\"\n.p2align 31\n.globl huge\nhuge: .quad 1\n\
         .text\n.globl main\nmain: xorl %eax, %eax\nret\n",
    )
    .expect("write huge.s");
    let obj = dir.join("huge.o");
    let st = Command::new("gcc")
        .args(["-c", "-o"])
        .arg(&obj)
        .arg(&asm)
        .status()
        .expect("gcc runs");
    assert!(st.success());
    let o = kiln()
        .args(["image", "save", "-o"])
        .arg(dir.join("huge.kimg"))
        .arg(&obj)
        .output()
        .expect("kiln runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        err.contains("huge.o") && err.contains(".data.huge") && err.contains("2147483648"),
        "{}",
        show(&o)
    );
}

/// In one process, after another image took the start of the JIT memory:
/// the aligned image, loaded from its file and from bytes, still has its
/// blocks at multiples of their alignment (its base at a multiple of the
/// largest).
#[test]
fn an_image_loaded_after_another_keeps_its_blocks_aligned() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-aligned-inproc");
    let pad = compile_c_text(
        &dir,
        "pad",
        "int pad_value(void) { return 1; }\n",
        &["-O2", "-fPIC"],
    );
    let obj = compile(
        "gcc",
        &c_dir().join("aligned_blocks.c"),
        &["-O2", "-fPIC"],
        &[],
        &dir.join("aligned.o"),
    );
    let (pad_image, image) = (dir.join("pad.kimg"), dir.join("aligned.kimg"));
    save(&pad_image, std::slice::from_ref(&pad), &[]);
    save(&image, std::slice::from_ref(&obj), &[]);
    let bytes = std::fs::read(&image).expect("read the image");
    let host = HostSymbols::new();
    // SAFETY: the test's own images, saved just now; nothing of them runs.
    let _pad = unsafe { image_file::load_file(&pad_image, &host) }.expect("pad loads");
    let check = |img: &kiln_linker::LinkedImage, how: &str| {
        for (name, align) in [
            ("data64k", 1u64 << 16),
            ("data2m", 1 << 21),
            ("bss64k", 1 << 16),
            ("func64k", 1 << 16),
        ] {
            let at = img.symbol(name).expect(name);
            assert_eq!(at % align, 0, "{how}: {name} at {at:#x}, align {align:#x}");
        }
    };
    // SAFETY: the test's own image, saved just now; nothing of it runs.
    let from_file = unsafe { image_file::load_file(&image, &host) }.expect("loads from its file");
    check(&from_file, "from its file");
    // SAFETY: the test's own image, saved just now; nothing of it runs.
    let from_bytes = unsafe { image_file::load("aligned", &bytes, &host) }.expect("loads");
    check(&from_bytes, "from bytes");
}

/// Addends beyond 32 and 48 bits survive an image: saved in one process,
/// run in another, each reference is exactly `target + A`.
#[test]
fn wide_addends_survive_an_image() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-wide-addends");
    let objs = compile_sources("gcc", &["wide_addends.c"], &["-O1"], &dir);
    check_image_matches_native("gcc", &objs, &["-O1"], &[], "wide-addends");
}

/// Code reaching host data PC-relative (gcc `-fPIE` naming `stdout`) is
/// saved with a PC32 import: loaded where it reaches, the field holds the
/// distance to the symbol (the code writes through it); where the symbol
/// lies more than 2 GiB away the load is refused naming symbol, both
/// addresses and the fix.
#[test]
fn a_pc32_import_is_bound_in_reach_and_refused_out_of_it() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-pc32");
    let src = "#include <stdio.h>\n\
               long where(void) { return (long)&stdout; }\n\
               int say(void) { return fflush(stdout); }\n";
    let obj = compile_c_text(&dir, "reach", src, &["-O2", "-fPIE"]);
    let path = dir.join("reach.kimg");
    common::images::save(&path, std::slice::from_ref(&obj));
    let bytes = std::fs::read(&path).expect("read the image");
    let info = image_file::inspect("reach.kimg", &bytes).expect("inspects");
    assert!(info.pc_relative_imports >= 2, "{info:?}");

    let host = HostSymbols::new();
    // SAFETY: the test's own image: `where` only takes an address.
    let image = unsafe { image_file::load("reach.kimg", &bytes, &host) }.expect("loads");
    let stdout = host.resolve(&["stdout"])[0].expect("stdout is defined");
    let where_ = image.symbol("where").expect("where");
    // SAFETY: `where` is `long where(void)`, Ready code of a loaded image.
    let f = unsafe { std::mem::transmute::<u64, extern "C" fn() -> i64>(where_) };
    assert_eq!(f() as u64, stdout, "the field reaches the process's stdout");
    drop(image);

    let far = |names: &[&str]| -> Vec<Option<u64>> {
        host.resolve(names)
            .into_iter()
            .zip(names)
            .map(|(a, n)| {
                if *n == "stdout" {
                    a.map(|a| a + (8 << 30))
                } else {
                    a
                }
            })
            .collect()
    };
    // SAFETY: refused before anything of it runs.
    let err = unsafe { image_file::load("far.kimg", &bytes, &far) }.expect_err("refused");
    assert!(matches!(err, ImageError::OutOfReach { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("`stdout`") && text.contains("out of reach") && text.contains("-fPIC"),
        "{text}"
    );
}
