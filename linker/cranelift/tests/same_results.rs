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

/// Runs `p` on kiln-cranelift.
fn on_kiln(p: &Program, depth: i64, pic: bool) -> Vec<i64> {
    let mut module = common::kiln(pic);
    let d = program::define_all(&mut module, p);
    module.finalize_definitions().expect("finalize");
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
