//! C++ exceptions through code at a 4 GiB boundary.
//!
//! libgcc's unwinder drops the FDE of a function whose address has zero low
//! 32 bits (`add_fdes` takes it for a discarded link-once function, since a
//! 4-byte encoding cannot hold a real null), so an exception thrown through
//! it ends in `std::terminate`. kiln's slab lands where the address space
//! has room; about one run in forty of `reach_late_library` found it at
//! such a boundary, and aborted with `terminate called after throwing an
//! instance of 'FarError'`. This test puts the slab there on purpose: it
//! takes every free page from just above a 4 GiB boundary up to the top of
//! the address space, so the slab (which cannot be near the libraries any
//! more) lands exactly at the boundary. The program's first function throws.
//!
//! One test function: the layout must be made before any link of this
//! process, and the slab is process-wide.

#[path = "reach/address_space.rs"]
mod address_space;
mod common;

use address_space::*;
use common::*;
use kiln_linker::memory::{Placement, Slab};
use kiln_linker::{HostSymbols, LinkOptions, Linker};

/// The size of kiln's near slab.
const SLAB: u64 = 1 << 30;
const G4: u64 = 1 << 32;

/// `thrower` is the first function of `.text`, so the first byte of the
/// image; unwinding from it to `main` needs its FDE.
const PROGRAM: &str = r#"
#include <cstdio>
extern "C" int thrower(int x) {
    if (x > 0) throw x;
    return x;
}
int main() {
    try {
        thrower(7);
    } catch (int e) {
        std::printf("caught %d\n", e);
        return e;
    }
    return 0;
}
"#;

/// A 4 GiB-aligned address at least 8 GiB under `below` with the slab's
/// size free above it.
fn free_boundary(below: u64) -> u64 {
    let maps = mappings();
    let mut b = below.saturating_sub(2 * G4) & !(G4 - 1);
    while b >= 2 * G4 {
        if maps.iter().all(|&(s, e, _)| e <= b || s >= b + SLAB) {
            return b;
        }
        b -= G4;
    }
    panic!("no free 4 GiB boundary under {below:#x}");
}

#[test]
fn exceptions_unwind_through_code_at_the_first_byte_of_a_slab_at_4_gib() {
    if !need_tool("g++") {
        return;
    }
    let dir = scratch("reach-aligned-slab");
    let src = dir.join("thrower.cpp");
    std::fs::write(&src, PROGRAM).expect("write thrower.cpp");
    let obj = compile("g++", &src, &["-O0", "-fPIE"], &[], &dir.join("thrower.o"));

    // libstdc++ and libgcc_s are loaded first: they are the host.
    let host = HostSymbols::new();
    let (lo, _) = library_span();
    let boundary = free_boundary(lo);
    let reserved = fill(boundary + SLAB, u64::MAX);
    assert!(reserved > 0, "nothing reserved");
    let slab = Slab::get(Placement::Near)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("near slab");
    let (base, _) = slab.range();
    assert_eq!(
        base, boundary,
        "the layout did not take: the slab is at {base:#x}, not at the boundary"
    );

    let mut linker = Linker::new(LinkOptions::default());
    // SAFETY: the test's own objects, whose code runs below.
    unsafe { linker.run_initializers_at_link() };
    linker.add_file(&obj).unwrap_or_else(|e| panic!("{e}"));
    let (out, ret) = capture_stdout(|| {
        let img = linker.link(&host).unwrap_or_else(|e| panic!("{e}"));
        let thrower = img.symbol("thrower").expect("thrower");
        assert_ne!(thrower % G4, 0, "code placed at {thrower:#x}");
        let main = img.symbol("main").expect("main");
        // SAFETY: `main` is the linked program's `int main(void)`.
        let main: extern "C" fn() -> i32 = unsafe { std::mem::transmute(main as usize) };
        main()
    });
    assert_eq!(out, "caught 7\n");
    assert_eq!(ret, 7);
}
