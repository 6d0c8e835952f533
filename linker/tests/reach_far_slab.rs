//! Reach when the host's address-space layout keeps kiln's slab far from
//! everything the JIT'd code names (issue 8 §2.7).
//!
//! Under AddressSanitizer the host's mappings move (its allocator heap at
//! 0x6000_0000_0000, `free` interposed by the main program), and kiln's
//! linker tests failed with `R_X86_64_PC32 against __dso_handle … out of
//! range` (C++), `stdout` (`gcc -fPIE` C) and `_ZTIi` (C++). Nothing about
//! it is ASan's own: this test makes the same layout deterministically,
//! without a sanitizer. Before the first link it fills every free page
//! within 4 GiB of the shared libraries, so the slab cannot be near them,
//! nor near the heap the libraries' neighbourhood holds. Then real
//! programs must link and run exactly as natively:
//!
//! * what kiln provides per image (`__dso_handle`) is inside the image,
//!   in reach by construction, wherever the slab is;
//! * host data named PC-relatively (`stdout` from `-fPIE` code, C++
//!   typeinfo) is out of reach, and goes through a copy in the image;
//!   host functions through a PLT stub.
//!
//! One test function: the layout must be made before any link of this
//! process, and the slab is process-wide.

#[path = "reach/address_space.rs"]
mod address_space;
mod common;

use address_space::*;
use common::*;
use kiln_linker::HostSymbols;
use kiln_linker::memory::{Placement, Slab};

#[test]
fn programs_run_when_the_slab_is_far_from_the_host() {
    for tool in ["gcc", "g++"] {
        assert!(
            have(tool) || std::env::var_os("KILN_SKIP_MISSING_TOOLS").is_some(),
            "{tool} is needed (KILN_SKIP_MISSING_TOOLS=1 skips)"
        );
        if !have(tool) {
            eprintln!("{tool} not installed: skipped (KILN_SKIP_MISSING_TOOLS)");
            return;
        }
    }
    // Load what the programs use (libstdc++, libm, libgcc_s) first, and
    // keep them loaded: they are part of the host whose neighbourhood is
    // taken.
    let _host = HostSymbols::new();
    let (lo, hi) = library_span();
    let reserved = fill(lo.saturating_sub(FAR), hi.saturating_add(FAR));
    assert!(reserved > 0, "nothing reserved near the libraries");

    let slab = Slab::get(Placement::Near)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("near slab");
    let (base, len) = slab.range();
    let stdout = stdout_address();
    assert!(
        !in_reach(base, len, stdout),
        "the layout did not take: slab {base:#x}+{len:#x}, stdout at {stdout:#x}"
    );

    // C++: static constructors and destructors (`__cxa_atexit(…,
    // &__dso_handle)`), exceptions across objects and from libstdc++
    // (typeinfo named PC-relatively), at -O2 as PIE (g++'s default).
    let dir = scratch("reach-far-slab");
    let cxx = ["-O2", "-fPIE", "-pthread"];
    let objs = compile_sources("g++", &["cpp_a.cpp", "cpp_b.cpp"], &cxx, &dir);
    assert_jit_matches_native(
        "g++",
        &objs,
        &cxx,
        (&[], &[]),
        &dir.join("cpp"),
        "atexit handler",
        "g++ -O2 -fPIE, slab far",
    );

    // C as PIE: gcc names external data (`stdout`) PC-relatively.
    for flags in [
        &["-O2", "-fPIE", "-fcommon"][..],
        &["-O0", "-fPIE", "-fcommon"],
    ] {
        let objs = compile_sources("gcc", &["prog_a.c", "prog_b.c"], flags, &dir);
        assert_jit_matches_native(
            "gcc",
            &objs,
            flags,
            (&[], &[]),
            &dir.join("c"),
            "to stdout 7",
            &format!("gcc {flags:?}, slab far"),
        );
    }
}
