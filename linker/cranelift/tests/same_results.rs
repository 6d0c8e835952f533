//! The same generated programs on cranelift-jit and on kiln-cranelift give
//! the same results: cross-module calls, cycles, data, pointers in data,
//! host calls; PIC and non-PIC.

mod common;

use common::program::{self, Program};

/// Runs `p` on cranelift-jit.
fn on_cranelift_jit(p: &Program, depth: i64) -> Vec<i64> {
    let mut module = common::cranelift_jit();
    let d = program::define_all(&mut module, p);
    module.finalize_definitions().expect("finalize");
    // SAFETY: finalized code of the generated signature.
    let results = unsafe { program::run_all(&d, depth, |id| module.get_finalized_function(id)) };
    // SAFETY: nothing runs the module's code any more.
    unsafe { module.free_memory() };
    results
}

/// Runs `p` on kiln-cranelift. Non-PIC, the batch is placed directly (no
/// link: every target is in the batch or a host symbol already Ready);
/// PIC code needs a GOT, so the batch is linked.
fn on_kiln(p: &Program, depth: i64, pic: bool) -> Vec<i64> {
    let mut module = common::kiln(pic);
    let d = program::define_all(&mut module, p);
    module.finalize_definitions().expect("finalize");
    let links = module.jit().layer().stats().1;
    if pic {
        assert!(links > 0, "PIC code is linked (it needs a GOT)");
    } else {
        assert_eq!(links, 0, "the batch was linked, not placed directly");
    }
    // SAFETY: finalized code of the generated signature.
    let results = unsafe { program::run_all(&d, depth, |id| module.get_finalized_function(id)) };
    // SAFETY: nothing runs the module's code any more.
    unsafe { module.free_memory() };
    results
}

#[test]
fn thousand_functions_in_ten_modules_match_cranelift_jit() {
    let p = program::generate(1000, 10, 1);
    let expected = on_cranelift_jit(&p, 3);
    assert_eq!(on_kiln(&p, 3, false), expected);
}

#[test]
fn thousand_functions_pic_match_cranelift_jit_non_pic() {
    let p = program::generate(1000, 100, 2);
    let expected = on_cranelift_jit(&p, 3);
    assert_eq!(on_kiln(&p, 3, true), expected);
}

#[test]
fn ten_thousand_functions_in_hundred_modules_match_cranelift_jit() {
    let p = program::generate(10_000, 100, 3);
    let expected = on_cranelift_jit(&p, 2);
    assert_eq!(on_kiln(&p, 2, false), expected);
}

/// Functions defined from bytes (one arena per batch) and compiled ones
/// (each its own), interleaved and spread over three groups (three link
/// graphs reading one arena), give cranelift-jit's results: the batch path
/// agrees with the one-function-at-a-time path, PIC (GOT relocations read
/// from the arena in place) and not.
#[test]
fn bytes_and_compiled_definitions_across_groups_match_cranelift_jit() {
    for (seed, n, modules, pic) in [(4, 300, 7, false), (5, 1000, 10, false), (6, 500, 9, true)] {
        let p = program::generate(n, modules, seed);
        let expected = on_cranelift_jit(&p, 3);
        let mut module = common::kiln(pic);
        let groups: Vec<_> = (0..3).map(|_| module.new_group().expect("group")).collect();
        let d = program::define_all_mixed(
            &mut module,
            &p,
            |i| (i / 3) % 2 == 0,
            |m, i| {
                m.set_group(if i % 4 == 3 {
                    None
                } else {
                    Some(groups[i % 3])
                })
            },
        );
        module.finalize_definitions().expect("finalize");
        // SAFETY: finalized code of the generated signature.
        let got = unsafe { program::run_all(&d, 3, |id| module.get_finalized_function(id)) };
        assert_eq!(got, expected, "seed {seed}");
        // SAFETY: nothing runs the module's code any more.
        unsafe { module.free_memory() };
    }
}
