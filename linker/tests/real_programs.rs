//! Real programs that are not kiln's own, built by the test, run natively
//! and by `kiln run`, eager and `--lazy`: stdout and exit status must be the
//! native program's.
//!
//! - `inline_*` (tests/cxx): classes defined in a header (inline and
//!   virtual member functions, templates, inline function-local statics,
//!   an exception class) used from three objects, so each object carries
//!   the same COMDAT groups and the link keeps one copy.
//! - `lifecycle_*` (tests/cxx): static constructors and destructors that
//!   call into an object without constructors (under `--lazy` its first
//!   call comes from a destructor at exit), `atexit`, a function-local
//!   static, and exceptions thrown two objects away from their handler.
//! - `std_lib.rs` (tests/rust): a Rust std staticlib (String, HashMap,
//!   `catch_unwind`, `thread_local!` with a destructor, threads) called by
//!   a C `main`; also saved as an image and run by `kiln run` and the C
//!   loader.
//! - `nostd_lib.rs` (tests/rust): a `#![no_std]` staticlib whose `core`
//!   member has unused code that refers to the undefined
//!   `rust_eh_personality` (`ld` links it only with `--gc-sections`).
//!
//! - `fnptr_*` (tests/c, tests/cxx): function pointers taken in the
//!   function's own object and in another (lea, absolute addresses, GOT
//!   loads, pointers in data; C++ map keys, `std::function` targets, member
//!   function pointers) compare equal: one address per function, also
//!   under `--lazy`, where a function has a lazy entry besides its body.
//!
//! - `stl_*` (tests/cxx): the standard library across three objects —
//!   `std::regex`, iostreams, `std::thread`, `shared_ptr` reference counts
//!   on four threads, `std::function`, an exception class and `typeid`.
//!
//! Each C++ program is built by g++ -O2, g++ -O2 -fPIC and clang++ -O2.

mod common;

use std::process::Command;

use common::images::{assert_like_native, c_loader, kiln, save};
use common::programs::*;
use common::{need_tool, scratch};

fn check_cxx(program: &str, sources: &[&str], cxx: &str, flags: &[&str]) {
    if !need_tool(cxx) {
        return;
    }
    let tag = format!("{program} {cxx} {}", flags.join(" "));
    let dir = scratch(&format!("real-{program}-{cxx}{}", flags.join("")));
    let objs = compile_each(cxx, &cxx_dir(), sources, flags, &dir);
    let native = native_run(cxx, &objs, &[], &dir.join("native"));
    assert_kiln_matches(&native, &objs, &tag);
}

const INLINE: &[&str] = &["inline_main.cpp", "inline_a.cpp", "inline_b.cpp"];
const LIFECYCLE: &[&str] = &[
    "lifecycle_main.cpp",
    "lifecycle_objs.cpp",
    "lifecycle_util.cpp",
];
const STL: &[&str] = &["stl_main.cpp", "stl_make.cpp", "stl_tally.cpp"];

#[test]
fn header_defined_classes_gxx_o2() {
    check_cxx("inline", INLINE, "g++", &["-O2"]);
}

#[test]
fn header_defined_classes_gxx_o2_pic() {
    check_cxx("inline", INLINE, "g++", &["-O2", "-fPIC"]);
}

#[test]
fn header_defined_classes_clangxx_o2() {
    check_cxx("inline", INLINE, "clang++", &["-O2"]);
}

#[test]
fn static_lifetimes_and_exceptions_across_objects_gxx_o2() {
    check_cxx("lifecycle", LIFECYCLE, "g++", &["-O2"]);
}

#[test]
fn static_lifetimes_and_exceptions_across_objects_gxx_o2_pic() {
    check_cxx("lifecycle", LIFECYCLE, "g++", &["-O2", "-fPIC"]);
}

#[test]
fn static_lifetimes_and_exceptions_across_objects_clangxx_o2() {
    check_cxx("lifecycle", LIFECYCLE, "clang++", &["-O2"]);
}

/// Also from an image: g++'s `-fPIE` reads `__libc_single_threaded` (each
/// `shared_ptr` count) and `std::cout` PC-relative — PC32 imports.
#[test]
fn standard_library_across_objects_and_threads_gxx_o2() {
    let flags = ["-O2", "-std=c++17"];
    check_cxx("stl", STL, "g++", &flags);
    let dir = scratch("real-stl-image");
    let objs = compile_each("g++", &cxx_dir(), STL, &flags, &dir);
    let native = native_run("g++", &objs, &[], &dir.join("native"));
    let image = dir.join("stl.kimg");
    save(&image, &objs);
    assert_images_match(&native, &image, "stl g++ -O2");
}

#[test]
fn standard_library_across_objects_and_threads_gxx_o2_pic() {
    check_cxx("stl", STL, "g++", &["-O2", "-fPIC", "-std=c++17"]);
}

#[test]
fn standard_library_across_objects_and_threads_clangxx_o2() {
    check_cxx("stl", STL, "clang++", &["-O2", "-std=c++17"]);
}

/// Builds `fnptr_main` + `fnptr_lib` (C, in tests/c) with `cc` at each
/// flag set and runs them eager and `--lazy`. Before, `--lazy` printed
/// `same 0` (and 0 for every comparison): a function's address taken in
/// its own object was its body's, in another object its lazy entry's.
fn check_fnptr_c(cc: &str) {
    if !need_tool(cc) {
        return;
    }
    // -fno-pie: 32-bit absolute addresses of functions, which reach the
    // lazy entries' stubs only because `kiln run` places them below 2 GiB
    // (before, each image went through a PLT stub of its own).
    for flags in [
        &["-O0"][..],
        &["-O2"],
        &["-O2", "-fPIC"],
        &["-O2", "-fno-pie"],
    ] {
        let tag = format!("fnptr {cc} {}", flags.join(" "));
        let dir = scratch(&format!("real-fnptr-{cc}{}", flags.join("")));
        let objs = compile_each(
            cc,
            &common::c_dir(),
            &["fnptr_main.c", "fnptr_lib.c"],
            flags,
            &dir,
        );
        let link: &[&str] = if flags.contains(&"-fno-pie") {
            &["-no-pie"]
        } else {
            &[]
        };
        let native = native_run(cc, &objs, link, &dir.join("native"));
        assert!(native.0.starts_with("same 1\n"), "{tag}: {}", native.0);
        assert_kiln_matches(&native, &objs, &tag);
    }
}

#[test]
fn function_pointer_identity_gcc() {
    check_fnptr_c("gcc");
}

#[test]
fn function_pointer_identity_clang() {
    check_fnptr_c("clang");
}

const FNPTR: &[&str] = &["fnptr_main.cpp", "fnptr_lib.cpp"];

/// Before, `--lazy` printed `keys 4` (each function was two map keys) and
/// 0 for every comparison.
#[test]
fn function_pointer_identity_cxx_gxx_o2() {
    check_cxx("fnptr", FNPTR, "g++", &["-O2"]);
}

#[test]
fn function_pointer_identity_cxx_gxx_o0_pic() {
    check_cxx("fnptr", FNPTR, "g++", &["-O0", "-fPIC"]);
}

#[test]
fn function_pointer_identity_cxx_clangxx_o2() {
    check_cxx("fnptr", FNPTR, "clang++", &["-O2"]);
}

/// Two archives that call each other (`main` → a → b → back into a
/// member of a already taken), with unused code naming an undefined
/// symbol. `ld --gc-sections` links it; so does kiln, eager and `--lazy`.
/// Before, `--lazy` searched each archive on its own and pruned each pull
/// alone: b's member then needed `ma_helper`, which a's pull had pruned
/// ("undefined symbol(s): ma_helper").
#[test]
fn archives_calling_each_other_are_pruned_as_one_library() {
    if !(need_tool("gcc") && need_tool("ar")) {
        return;
    }
    let dir = scratch("real-mutual-archives");
    let objs = compile_each(
        "gcc",
        &common::c_dir(),
        &["mutual_main.c", "mutual_a.c", "mutual_b.c"],
        &["-O2", "-ffunction-sections"],
        &dir,
    );
    let archive = |name: &str, member: &std::path::Path| {
        let ar = dir.join(name);
        let _ = std::fs::remove_file(&ar);
        run_tool(
            std::process::Command::new("ar")
                .arg("rcs")
                .arg(&ar)
                .arg(member),
            "ar rcs",
        );
        ar
    };
    let inputs = [
        objs[0].clone(),
        archive("libmutual_a.a", &objs[1]),
        archive("libmutual_b.a", &objs[2]),
    ];
    let native = native_run("gcc", &inputs, &["-Wl,--gc-sections"], &dir.join("native"));
    assert_eq!(native.0, "ma_entry 26\n");
    assert_kiln_matches(&native, &inputs, "archives calling each other");
}

/// Compiles `main_c` (in tests/rust) with gcc -O2 and `lib_rs` as a
/// staticlib with `rustc -O rust_flags`: (main object, archive).
fn build_rust_program(
    dir: &std::path::Path,
    main_c: &str,
    lib_rs: &str,
    name: &str,
    rust_flags: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let main = compile_each("gcc", &rust_dir(), &[main_c], &["-O2"], dir).remove(0);
    let flags = [&["-O"], rust_flags].concat();
    (main, rustc_staticlib(lib_rs, name, &flags, dir))
}

/// A Rust std staticlib with a C `main`: before, the run printed the right
/// output and then died in `exit()` (the main thread's `thread_local!`
/// destructor, registered with an address inside the image instead of
/// `__dso_handle`, went to glibc, which ran it after the image was gone).
/// Eager and `--lazy` with the archive; `--lazy` also with its members as
/// objects. (With the archive, `--lazy` failed before: each member pulled
/// was its own image, and a thread-local of `std` used by the crate's
/// member was "not defined in this link".)
#[test]
fn rust_std_staticlib_with_a_c_main() {
    if !(need_tool("rustc") && need_tool("gcc") && need_tool("ar")) {
        return;
    }
    let dir = scratch("real-rust-std");
    let (main, lib) = build_rust_program(&dir, "std_main.c", "std_lib.rs", "rstd", &[]);
    let inputs = [main.clone(), lib.clone()];
    let native = native_run("gcc", &inputs, &[], &dir.join("native"));
    assert!(native.0.contains("thread-local 7 dropped"), "{}", native.0);
    assert_kiln_matches(&native, &inputs, "rust std staticlib");
    let members = archive_members(&lib, &dir.join("members"));
    let lazy_inputs: Vec<_> = std::iter::once(main.clone()).chain(members).collect();
    assert_kiln_mode_matches(true, &native, &lazy_inputs, "rust std staticlib members");

    // From an image, under `kiln run` and the C loader (the C main's gcc
    // `-fPIE` reaches `stdout` PC-relative: a PC32 import). Rust's std in
    // it: threads, `thread_local!` destructors, a panic caught by
    // `catch_unwind` through the image's `.eh_frame`.
    let image = dir.join("rstd.kimg");
    save(&image, &[main, lib]);
    assert_images_match(&native, &image, "rust std staticlib");
}

/// `image` run under `kiln run` and under the C loader prints and returns
/// what the native build did.
fn assert_images_match(native: &(String, i32), image: &std::path::Path, tag: &str) {
    for (what, mut cmd) in [
        ("kiln run IMAGE", kiln()),
        ("kiln-load IMAGE", Command::new(c_loader("x86_64"))),
    ] {
        if what.starts_with("kiln run") {
            cmd.arg("run");
        }
        let o = cmd.arg(image).output().expect("the loader runs");
        assert_like_native(&o, &native.0, native.1, &format!("{tag}: {what}"));
    }
}

/// A `#![no_std]` staticlib whose unused `core` code names the undefined
/// `rust_eh_personality`: `ld` links it only with `--gc-sections`; kiln
/// keeps only the archive code that live code reaches, so it links. Before,
/// kiln failed: "undefined symbol(s): rust_eh_personality".
/// Under `--lazy` it failed even so ("the lazy call of core::fmt::write
/// could not be linked: undefined symbol rust_eh_personality"): each member
/// pulled was kept whole. Now the members a pull takes are pruned as
/// `ld --gc-sections` prunes them.
#[test]
fn rust_no_std_staticlib_with_unused_code_naming_undefined_symbols() {
    if !(need_tool("rustc") && need_tool("gcc")) {
        return;
    }
    let dir = scratch("real-rust-nostd");
    let (main, lib) = build_rust_program(
        &dir,
        "nostd_main.c",
        "nostd_lib.rs",
        "rnostd",
        &["-C", "panic=abort"],
    );
    let inputs = [main, lib];
    let no_gc = std::process::Command::new("gcc")
        .args(&inputs)
        .arg("-o")
        .arg(dir.join("native-no-gc"))
        .output()
        .expect("run gcc");
    assert!(
        !no_gc.status.success()
            && String::from_utf8_lossy(&no_gc.stderr).contains("rust_eh_personality"),
        "the premise: ld without --gc-sections refuses the archive"
    );
    let native = native_run("gcc", &inputs, &["-Wl,--gc-sections"], &dir.join("native"));
    assert!(native.0.starts_with("sum 46"), "{}", native.0);
    assert_kiln_matches(&native, &inputs, "rust no_std staticlib");
}
