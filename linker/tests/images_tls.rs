//! Thread-locals in image files: C programs with `__thread` variables in
//! every x86-64 TLS model and C++ programs with `thread_local` objects used
//! from `std::thread`s, saved as images by one `kiln` process and run from
//! the image by another — output and exit status equal to the native build.
//! An image whose local-exec code needs a static TLS range this process
//! cannot give is refused naming the field and both values (a `kiln run
//! --cache` hit of it relinks); loading twice and removal.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::{assert_like_native, info_of, kiln, save, save_against, show};
use common::*;
use kiln_linker::image_file::{self, BuildId, ImageError};
use kiln_linker::{HostSymbols, LinkOptions, Linker};

/// Compiles `srcs` (in `dir_of_srcs`) with `cc flags`, builds them natively
/// (the compiler as linker driver), saves them as an image with `kiln image
/// save` and runs it with `kiln run`: stdout and exit status must be the
/// native build's, and the native output must contain `marker`. Returns
/// the image.
fn check_tls_image(cc: &str, srcs: &[PathBuf], flags: &[&str], marker: &str, tag: &str) -> PathBuf {
    let dir = scratch(&format!("images-tls-{tag}"));
    let objs: Vec<PathBuf> = srcs
        .iter()
        .map(|s| {
            let stem = s.file_stem().expect("source name").to_string_lossy();
            compile(cc, s, flags, &[], &dir.join(format!("{stem}.o")))
        })
        .collect();
    let (native_out, native_ret) = run_native(cc, &objs, flags, &["pthread"], &dir.join("native"));
    assert!(
        native_out.contains(marker),
        "{tag}: the native build did not print {marker:?}:\n{native_out}"
    );
    let image = dir.join("prog.kimg");
    save(&image, &objs);
    let o = kiln().arg("run").arg(&image).output().expect("kiln runs");
    assert_like_native(&o, &native_out, native_ret, tag);
    image
}

fn c_tls() -> Vec<PathBuf> {
    vec![c_dir().join("tls_a.c"), c_dir().join("tls_b.c")]
}

fn cxx_tls() -> Vec<PathBuf> {
    let d = common::programs::cxx_dir();
    vec![d.join("tls_defs.cpp"), d.join("tls_main.cpp")]
}

/// The relocation types of `obj` (`readelf -r`), to show which TLS models
/// a test really covers.
fn relocations(obj: &Path) -> String {
    let o = Command::new("readelf")
        .arg("-rW")
        .arg(obj)
        .output()
        .expect("readelf runs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `-fPIE`: clang and gcc use local-exec for the variables an object
/// defines and initial-exec for the others — both from an image.
#[test]
fn c_thread_locals_pie_local_exec_and_initial_exec_run_from_an_image() {
    for cc in ["gcc", "clang"] {
        if !need_tool(cc) {
            return;
        }
        let tag = format!("c-{cc}-pie");
        let image = check_tls_image(cc, &c_tls(), &["-O2", "-fPIE"], "main:", &tag);
        let info = info_of(&image, false);
        assert!(
            info.contains("thread-locals   ") && info.contains("static TLS: local-exec, range 0x"),
            "{info}"
        );
        let json = info_of(&image, true);
        assert!(
            json.contains("\"thread_locals\":{\"size\":")
                && json.contains(
                    "\"static_use\":\"local-exec\",\"static_range\":{\"area_tp_offset\":-"
                ),
            "{json}"
        );
        let dir = scratch(&format!("images-tls-{tag}"));
        let relocs = relocations(&dir.join("tls_a.o"));
        assert!(
            relocs.contains("R_X86_64_TPOFF32") && relocs.contains("R_X86_64_GOTTPOFF"),
            "{cc} -fPIE: expected local-exec and initial-exec:\n{relocs}"
        );
    }
}

/// `-fPIC`: general-dynamic/local-dynamic through `__tls_get_addr`, and
/// TLSDESC with `-mtls-dialect=gnu2`.
#[test]
fn c_thread_locals_pic_general_dynamic_and_tlsdesc_run_from_an_image() {
    for (cc, flags, reloc, tag) in [
        ("gcc", &["-O2", "-fPIC"][..], "R_X86_64_TLSGD", "gd-gcc"),
        ("clang", &["-O2", "-fPIC"][..], "R_X86_64_TLSGD", "gd-clang"),
        (
            "gcc",
            &["-O2", "-fPIC", "-mtls-dialect=gnu2"][..],
            "R_X86_64_GOTPC32_TLSDESC",
            "desc-gcc",
        ),
    ] {
        if !need_tool(cc) {
            return;
        }
        let image = check_tls_image(cc, &c_tls(), flags, "main:", tag);
        assert!(info_of(&image, false).contains("static TLS: none"), "{tag}");
        let relocs = relocations(&scratch(&format!("images-tls-{tag}")).join("tls_b.o"));
        assert!(relocs.contains(reloc), "{tag}: expected {reloc}:\n{relocs}");
    }
}

/// C++ `thread_local` objects with constructors and destructors, used
/// from `std::thread`s, g++ and clang++ at -O2 -fPIE.
#[test]
fn cxx_thread_locals_with_std_thread_run_from_an_image() {
    for cc in ["g++", "clang++"] {
        if !need_tool(cc) {
            return;
        }
        check_tls_image(
            cc,
            &cxx_tls(),
            &["-O2", "-fPIE"],
            "counters constructed=12",
            &format!("cxx-{cc}"),
        );
    }
    // A template larger than kiln's static TLS area: a dynamic module at
    // load (general-dynamic and TLSDESC).
    let d = common::programs::cxx_dir();
    let big = [d.join("tls_big_defs.cpp"), d.join("tls_big_main.cpp")];
    for (flags, tag) in [
        (&["-O2", "-fPIC"][..], "cxx-big-gd"),
        (&["-O2", "-fPIC", "-mtls-dialect=gnu2"][..], "cxx-big-desc"),
    ] {
        let image = check_tls_image("g++", &big, flags, "main: still checksum 7 marker 7", tag);
        assert!(info_of(&image, false).contains("static TLS: none"), "{tag}");
    }
}

/// Header offsets of the static TLS fields (see `image_file::format`).
const HEADER_AT: usize = 64;
const STATIC_TLS_AREA: usize = HEADER_AT + 328;
const STATIC_TLS_RANGE: usize = HEADER_AT + 344;

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Local-exec code addresses its variables at thread-pointer offsets
/// fixed when it was linked: an image whose recorded static TLS area is
/// not this process's is refused naming the field and both values, and a
/// `kiln run --cache` hit of such an entry is a miss that relinks.
#[test]
fn a_static_tls_area_that_differs_is_refused_and_a_cache_entry_relinks() {
    if !need_tool("clang") {
        return;
    }
    let image = check_tls_image("clang", &c_tls(), &["-O2", "-fPIE"], "main:", "mismatch");
    let good = std::fs::read(&image).expect("read image");
    let area = read_u64(&good, STATIC_TLS_AREA) as i64;
    assert!(area < 0, "a local-exec image records its area: {area:#x}");
    let mut bad = good.clone();
    bad[STATIC_TLS_AREA..STATIC_TLS_AREA + 8].copy_from_slice(&(area - 64).to_le_bytes());
    image_file::reseal(&mut bad);
    let edited = image.with_file_name("edited.kimg");
    std::fs::write(&edited, &bad).expect("write");
    let o = kiln().arg("run").arg(&edited).output().expect("kiln runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.stdout.is_empty(), "{}", show(&o));
    assert!(
        err.contains("image field `static TLS area`")
            && err.contains(&format!("-{:#x}", -(area - 64)))
            && err.contains(&format!("-{:#x}", -area)),
        "names the field and both values: {err}"
    );

    // The cache: store, then replace the entry by the edited image.
    let dir = scratch("images-tls-mismatch");
    let objs = [dir.join("tls_a.o"), dir.join("tls_b.o")];
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let run = || {
        let o = kiln()
            .args(["run", "--stats", "--cache"])
            .arg(&cache)
            .args(&objs)
            .output()
            .expect("kiln runs");
        (o.stdout.clone(), o.status.code(), show(&o))
    };
    let (first, status, shown) = run();
    assert!(shown.contains("cache miss"), "{shown}");
    let (hit, hit_status, shown) = run();
    assert!(shown.contains("cache hit"), "{shown}");
    assert_eq!((&hit, hit_status), (&first, status), "{shown}");
    let entry = std::fs::read_dir(&cache)
        .expect("cache dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "kimg"))
        .expect("an entry");
    let stored = std::fs::read(&entry).expect("entry");
    let mut stale = stored.clone();
    let area = read_u64(&stale, STATIC_TLS_AREA) as i64;
    stale[STATIC_TLS_AREA..STATIC_TLS_AREA + 8].copy_from_slice(&(area - 64).to_le_bytes());
    image_file::reseal(&mut stale);
    std::fs::write(&entry, &stale).expect("write stale entry");
    let (out, relinked_status, shown) = run();
    assert_eq!((&out, relinked_status), (&first, status), "{shown}");
    let lines: Vec<&str> = shown.lines().filter(|l| l.contains("relinking")).collect();
    assert!(
        lines.len() == 1 && lines[0].contains("static TLS area"),
        "one line says why: {shown}"
    );
    assert!(
        std::fs::read(&entry).expect("entry") == stored,
        "entry not replaced"
    );
}

/// Links `objs` in imaging mode in this process and saves the image.
fn link_and_save(objs: &[PathBuf]) -> (kiln_linker::LinkedImage, Vec<u8>) {
    let mut options = LinkOptions::default();
    options.imaging = true;
    let mut linker = Linker::new(options.clone());
    let mut inputs = Vec::new();
    for o in objs {
        let bytes = std::fs::read(o).expect("read object");
        inputs.push((o.display().to_string(), bytes));
    }
    let id = BuildId::of_inputs(
        &options,
        inputs.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    for (n, b) in inputs {
        linker.add_object_bytes(n, b);
    }
    let image = linker.link(&HostSymbols::new()).expect("links");
    let bytes = image.save_image(&id).expect("saves");
    (image, bytes)
}

fn load(bytes: &[u8]) -> Result<kiln_linker::LinkedImage, ImageError> {
    // SAFETY: the test's own image; its functions are called only as the
    // test says.
    unsafe { image_file::load("tls.kimg", bytes, &HostSymbols::new()) }
}

fn call_i32(image: &kiln_linker::LinkedImage, name: &str, arg: i32) -> i32 {
    let f = image.symbol(name).expect("defined");
    // SAFETY: the test's C function `int f(int)`.
    let f: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute(f as usize) };
    f(arg)
}

const TLS_SRC: &str = "__thread int counter = 40;\n\
    __thread long zeroed;\n\
    int bump(int by) { zeroed += 1; counter += by; return counter + (int)zeroed * 1000; }\n";

/// In one process: a local-exec image's static range is the saving link's
/// until that link gives it back; a second load of it is refused (the
/// range is never reused: threads may hold values of the first); a
/// general-dynamic image loads twice, each load with its own module, and
/// removal frees it.
#[test]
fn loading_twice_and_removal_in_one_process() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-tls-twice");
    let le = compile_c_text(
        &dir,
        "le",
        TLS_SRC,
        &["-O2", "-fPIE", "-ftls-model=local-exec"],
    );
    let (linked, bytes) = link_and_save(std::slice::from_ref(&le));
    let range = read_u64(&bytes, STATIC_TLS_RANGE);
    let e = load(&bytes)
        .expect_err("the saving link holds the range")
        .to_string();
    assert!(
        e.contains("image field `static TLS range`") && e.contains(&format!("{range:#x}")),
        "{e}"
    );
    // SAFETY: none of the image's code ran.
    let bytes_again = unsafe { linked.save_image_and_release(&BuildId([1; 32])) }.expect("saves");
    assert_eq!(bytes_again[HEADER_AT + 104..], bytes[HEADER_AT + 104..]);
    let first = load(&bytes).expect("the range was given back");
    assert_eq!(call_i32(&first, "bump", 2), 42 + 1000);
    assert_eq!(call_i32(&first, "bump", 3), 45 + 2000);
    let other = std::thread::spawn({
        let f = first.symbol("bump").expect("defined") as usize;
        move || {
            // SAFETY: as in `call_i32`.
            let f: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute(f) };
            f(1)
        }
    })
    .join()
    .expect("thread");
    assert_eq!(
        other,
        41 + 1000,
        "a new thread starts from the initial values"
    );
    let e = load(&bytes).expect_err("loaded already").to_string();
    assert!(e.contains("image field `static TLS range`"), "{e}");
    drop(first);
    let e = load(&bytes).expect_err("never reused").to_string();
    assert!(e.contains("image field `static TLS range`"), "{e}");

    let gd = compile_c_text(&dir, "gd", TLS_SRC, &["-O2", "-fPIC"]);
    let (linked, bytes) = link_and_save(std::slice::from_ref(&gd));
    assert_eq!(read_u64(&bytes, STATIC_TLS_AREA), 0, "no fixed range");
    assert_eq!(call_i32(&linked, "bump", 2), 42 + 1000);
    let one = load(&bytes).expect("loads");
    let two = load(&bytes).expect("loads again");
    assert_eq!(call_i32(&one, "bump", 5), 45 + 1000);
    assert_eq!(call_i32(&one, "bump", 5), 50 + 2000);
    assert_eq!(call_i32(&two, "bump", 1), 41 + 1000, "its own storage");
    drop(one);
    assert_eq!(call_i32(&two, "bump", 1), 42 + 2000);

    // Initial-exec only: any static range, a fresh one per load.
    let ie = compile_c_text(
        &dir,
        "ie",
        TLS_SRC,
        &["-O2", "-fPIC", "-ftls-model=initial-exec"],
    );
    assert!(relocations(&ie).contains("R_X86_64_GOTTPOFF"));
    let (linked, bytes) = link_and_save(std::slice::from_ref(&ie));
    drop(linked);
    assert_eq!(read_u64(&bytes, HEADER_AT + 320), 1, "static TLS use: any");
    let one = load(&bytes).expect("loads");
    let two = load(&bytes).expect("loads again, elsewhere in the area");
    assert_eq!(call_i32(&one, "bump", 5), 45 + 1000);
    assert_eq!(call_i32(&two, "bump", 1), 41 + 1000, "its own storage");
    assert_eq!(call_i32(&one, "bump", 5), 50 + 2000);
}

/// File range of section `name` of an image.
fn section_range(file: &[u8], name: &str) -> (usize, usize) {
    use object::read::elf::{FileHeader as _, SectionHeader as _};
    let h = object::elf::FileHeader64::<object::LittleEndian>::parse(file).expect("parses");
    let e = object::LittleEndian;
    let sections = h.sections(e, file).expect("sections");
    let s = sections
        .section_by_name(e, name.as_bytes())
        .map(|(_, s)| s)
        .expect("section");
    let at = s.sh_offset(e) as usize;
    (at, at + s.sh_size(e) as usize)
}

/// Resealed damage to the TLS header fields and the import table of real
/// thread-local images (local-exec and general-dynamic/TLSDESC): every
/// mutant loads or fails with an error — no panic, no crash.
#[test]
fn mutants_of_thread_local_images_load_or_fail_with_an_error() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-tls-mutants");
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut refused = 0;
    for (name, flags) in [
        ("m_le", &["-O2", "-fPIE"][..]),
        ("m_desc", &["-O2", "-fPIC", "-mtls-dialect=gnu2"][..]),
    ] {
        let obj = compile_c_text(&dir, name, TLS_SRC, flags);
        let (linked, good) = link_and_save(std::slice::from_ref(&obj));
        drop(linked);
        let imports = section_range(&good, ".kiln.imports");
        let ranges = [(HEADER_AT + 288, HEADER_AT + 352), imports];
        for i in 0..1500 {
            let mut v = good.clone();
            for _ in 0..=next() % 3 {
                let (start, end) = ranges[(next() % 2) as usize];
                if end > start {
                    let at = start + (next() as usize) % (end - start);
                    v[at] = if i % 2 == 0 {
                        v[at] ^ (1 << (next() % 8))
                    } else {
                        next() as u8
                    };
                }
            }
            image_file::reseal(&mut v);
            match load(&v) {
                Ok(image) => drop(image),
                Err(e) => {
                    assert!(!e.to_string().contains("content hash"), "{e}");
                    refused += 1;
                }
            }
        }
    }
    assert!(refused >= 1500, "only {refused} of 3000 mutants refused");
}

/// A library image and a program image saved against it, each with
/// local-exec thread-locals: saving the program loads the library (which
/// claims its range), so the program's link takes the next range; `kiln
/// run` of the program (the library found next to it) claims both.
#[test]
fn local_exec_images_linked_against_each_other_take_distinct_ranges() {
    if !need_tool("clang") {
        return;
    }
    let dir = scratch("images-tls-against");
    let flags = ["-O2", "-fPIE"];
    let lib_src = dir.join("tlib.c");
    std::fs::write(
        &lib_src,
        "__thread int lib_counter = 5;\nint lib_bump(void) { return ++lib_counter; }\n",
    )
    .expect("write");
    let prog_src = dir.join("tprog.c");
    std::fs::write(
        &prog_src,
        "#include <stdio.h>\nint lib_bump(void);\nstatic __thread int prog_x = 7;\n\
         int main(void) { prog_x += lib_bump(); printf(\"%d %d\\n\", prog_x, lib_bump()); return prog_x; }\n",
    )
    .expect("write");
    let lib_o = compile("clang", &lib_src, &flags, &[], &dir.join("tlib.o"));
    let prog_o = compile("clang", &prog_src, &flags, &[], &dir.join("tprog.o"));
    let lib = dir.join("tlib.kimg");
    save(&lib, std::slice::from_ref(&lib_o));
    let prog = dir.join("tprog.kimg");
    save_against(&prog, &[&lib], std::slice::from_ref(&prog_o));
    let (lib_bytes, prog_bytes) = (
        std::fs::read(&lib).expect("read"),
        std::fs::read(&prog).expect("read"),
    );
    let (lib_at, prog_at) = (
        read_u64(&lib_bytes, STATIC_TLS_RANGE),
        read_u64(&prog_bytes, STATIC_TLS_RANGE),
    );
    assert!(
        prog_at >= lib_at + 4,
        "ranges {lib_at:#x} and {prog_at:#x} overlap"
    );
    let o = kiln().arg("run").arg(&prog).output().expect("kiln runs");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "13 7\n", "{}", show(&o));
    assert_eq!(o.status.code(), Some(13), "{}", show(&o));
}

/// A global whose symbol type is not `STT_TLS` (`STT_NOTYPE`) but which
/// lies in a live `.tbss` (a damaged or hand-written object): its value is
/// a template offset, not an address. Saving's record once computed its
/// image offset as `offset - base` and panicked (subtract with overflow;
/// found by the aarch64 mutation test once TLS objects were linked there);
/// then imaging mode left it unexported, while the JIT exported the offset
/// as an address. Now the object is refused when read, naming the symbol.
#[test]
fn a_plain_symbol_in_a_tls_section_is_an_error() {
    assert!(need_tool("as"));
    let dir = scratch("images-tls-plain-symbol");
    let src = dir.join("plain.s");
    std::fs::write(
        &src,
        ".section .tbss,\"awT\",@nobits\n.globl plain\nplain: .skip 8\n\
         .type t,@tls_object\nt: .skip 8\n\
         .text\n.globl f\n.type f,@function\nf: movq t@gottpoff(%rip), %rax\nret\n",
    )
    .expect("write source");
    let obj = dir.join("plain.o");
    let o = Command::new("as")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .expect("as runs");
    assert!(o.status.success(), "{}", show(&o));
    // `as` types every symbol of a TLS section STT_TLS: make `plain` NOTYPE.
    let mut data = std::fs::read(&obj).expect("read the object");
    let at = symbol_info_at(&data, "plain");
    data[at] &= 0xf0;
    std::fs::write(&obj, &data).expect("write the object");
    let mut options = LinkOptions::default();
    options.imaging = true;
    let mut linker = Linker::new(options);
    let err = linker
        .add_object_file(&obj)
        .and_then(|l| l.link(&HostSymbols::new()).map(drop))
        .expect_err("a plain symbol in .tbss links");
    let msg = err.to_string();
    assert!(
        msg.contains("plain.o") && msg.contains("`plain`") && msg.contains(".tbss"),
        "{msg}"
    );
}

/// File offset of the `st_info` byte of symbol `name` in ELF object `file`.
fn symbol_info_at(file: &[u8], name: &str) -> usize {
    use object::read::elf::{FileHeader as _, SectionHeader as _};
    let e = object::LittleEndian;
    let h = object::elf::FileHeader64::<object::LittleEndian>::parse(file).expect("parses");
    let sections = h.sections(e, file).expect("sections");
    let (index, symtab) = sections
        .iter()
        .enumerate()
        .find(|(_, s)| s.sh_type(e) == object::elf::SHT_SYMTAB)
        .expect("a symbol table");
    let symbols = sections
        .symbol_table_by_index(e, file, object::SectionIndex(index))
        .expect("symbols");
    let i = symbols
        .iter()
        .position(|s| symbols.symbol_name(e, s).ok() == Some(name.as_bytes()))
        .expect("the symbol");
    symtab.sh_offset(e) as usize + 24 * i + 4
}
