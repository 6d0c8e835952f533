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

use std::path::PathBuf;

use address_space::*;
use common::*;
use kiln_engine::{DylibLookup, LookupSet, RequiredState, SearchOrder, Session, WorkerPool};
use kiln_linker::layer::{HostGenerator, ObjectLayer};
use kiln_linker::memory::{Placement, Slab};
use kiln_linker::{HostSymbols, LinkOptions, Linker};

/// Link `objs` through the engine's object layer (the image's
/// `__dso_handle` made by the layer's path), run `main()` with stdout captured, then end the
/// session (finalizers): (stdout, return value).
fn run_in_layer(objs: &[PathBuf]) -> (String, i32) {
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::new(&session);
    let host = session.create_dylib("<host>").expect("host dylib");
    host.add_generator(HostGenerator::new(HostSymbols::new()))
        .expect("host generator");
    let main = session.create_dylib("main").expect("main dylib");
    main.set_link_order(&[(host, DylibLookup::ExportedOnly)])
        .expect("link order");
    // One image for all objects, as `kiln run` links them (cross-object
    // thread_locals need it).
    let mut linker = Linker::new(LinkOptions::default());
    // SAFETY: the test's own objects, whose code runs below.
    unsafe { linker.run_initializers_at_link() };
    for o in objs {
        linker.add_file(o).unwrap_or_else(|e| panic!("{e}"));
    }
    let (graph, names) = linker
        .build_graph_naming(&|names| session.intern_all(names.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    layer
        .add_graph_named(&main, None, "program", graph, names)
        .unwrap_or_else(|e| panic!("{e}"));
    capture_stdout(|| {
        let order = SearchOrder::new().with(&main, DylibLookup::All);
        let mut wanted = layer.startup_symbols();
        let entry = session.intern("main");
        wanted.push(entry.clone());
        let found = session
            .lookup(&order, &LookupSet::required(wanted), RequiredState::Ready)
            .wait()
            .unwrap_or_else(|e| panic!("object layer: {e}"));
        let address = found.get(&entry).expect("main").address;
        // SAFETY: the test's own C program.
        unsafe { layer.run_initializers() };
        // SAFETY: `main` is the linked program's `int main(void)`, Ready.
        let main_fn: extern "C" fn() -> i32 = unsafe { std::mem::transmute(address as usize) };
        let ret = main_fn();
        session.end();
        ret
    })
}

#[test]
fn programs_run_when_the_slab_is_far_from_the_host() {
    for tool in ["gcc", "g++"] {
        if !need_tool(tool) {
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
    let (native, native_ret) = assert_jit_matches_native(
        "g++",
        &objs,
        &cxx,
        (&[], &[]),
        &dir.join("cpp"),
        "atexit handler",
        "g++ -O2 -fPIE, slab far",
    );
    // The same through the engine's object layer.
    let (out, ret) = run_in_layer(&objs);
    assert_eq!(out, native, "object layer, slab far: output differs");
    assert_eq!(
        ret, native_ret,
        "object layer, slab far: return value differs"
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
