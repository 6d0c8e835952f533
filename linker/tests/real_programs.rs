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
//!   a C `main`.
//! - `nostd_lib.rs` (tests/rust): a `#![no_std]` staticlib whose `core`
//!   member has unused code that refers to the undefined
//!   `rust_eh_personality` (`ld` links it only with `--gc-sections`).
//!
//! Each C++ program is built by g++ -O2, g++ -O2 -fPIC and clang++ -O2.

mod common;

use common::programs::*;
use common::scratch;

fn check_cxx(program: &str, sources: &[&str], cxx: &str, flags: &[&str]) {
    if !need(cxx) {
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
