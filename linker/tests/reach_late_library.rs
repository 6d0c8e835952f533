//! Reach of host data in a library loaded after kiln placed its slab, far
//! from it (issue 8 §2.7).
//!
//! The slab is placed near the host's objects when it is first needed; a
//! library the host loads later can land anywhere — here, deterministically,
//! beyond 4 GiB of the slab and of every other library (the test fills the
//! free address space in between first). Code compiled `-fPIE` names that
//! library's data PC-relatively (`R_X86_64_PC32`, which no GOT can
//! redirect): kiln must see, address by address, that it is out of reach,
//! and link it through a copy in the image (read-only data and typeinfo:
//! exact; writable data: its value at link time). The old rule — "the slab
//! is near libc, so every host symbol is in reach" — failed here with
//! `R_X86_64_PC32 against far_counter … out of range`.

#[path = "reach/address_space.rs"]
mod address_space;
mod common;

use std::path::Path;
use std::process::Command;

use address_space::*;
use common::*;
use kiln_linker::memory::{Placement, Slab};
use kiln_linker::{HostSymbols, LinkOptions, Linker};

fn g_plus_plus(args: &[&str], what: &str) {
    let o = Command::new("g++")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run g++: {e}"));
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn data_of_a_library_loaded_far_from_the_slab() {
    if !need_tool("g++") {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reach");
    let dir = scratch("reach-late-library");
    let lib = dir.join("libkiln_far.so");
    let (lib_s, src_s) = (lib.display().to_string(), src.display().to_string());
    g_plus_plus(
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-o",
            &lib_s,
            &format!("{src_s}/far.cpp"),
        ],
        "libkiln_far.so",
    );
    let main_o = dir.join("far_main.o").display().to_string();
    g_plus_plus(
        &[
            "-O2",
            "-fPIE",
            "-c",
            "-I",
            &src_s,
            "-o",
            &main_o,
            &format!("{src_s}/far_main.cpp"),
        ],
        "far_main.o",
    );

    // The slab is placed now, near the host's objects.
    let mut host = HostSymbols::new();
    let slab = Slab::get(Placement::Near)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("near slab");
    let (base, len) = slab.range();
    // Then the space around it and the libraries is taken, and the
    // library loads beyond.
    let (lo, hi) = library_span();
    let reserved = fill(lo.min(base).saturating_sub(FAR), hi.max(base + len) + FAR);
    assert!(reserved > 0, "nothing reserved");
    // SAFETY: the test's own library, built above.
    unsafe { host.load_path(&lib) }.unwrap_or_else(|e| panic!("{e}"));
    let counter = host.lookup("far_counter").expect("far_counter");
    assert!(
        !in_reach(base, len, counter),
        "the layout did not take: slab {base:#x}+{len:#x}, far_counter at {counter:#x}"
    );

    let mut linker = Linker::new(LinkOptions::default());
    // SAFETY: the test's own objects, whose code runs below.
    unsafe { linker.run_initializers_at_link() };
    linker.add_file(&main_o).unwrap_or_else(|e| panic!("{e}"));
    let (out, ret) = capture_stdout(|| {
        let img = linker.link(&host).unwrap_or_else(|e| panic!("{e}"));
        let main = img.symbol("main").expect("main");
        // SAFETY: `main` is the linked program's `int main(void)`.
        let main: extern "C" fn() -> i32 = unsafe { std::mem::transmute(main as usize) };
        let r = main();
        drop(img);
        r
    });
    assert_eq!(
        out,
        "table 10 counter 5\n\
         caught from the library: far error 7\n\
         caught own: far error 9 1\n"
    );
    assert_eq!(ret, 10);
}
