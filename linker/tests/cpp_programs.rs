//! C++ programs across two objects (static constructors and destructors
//! with priorities, atexit, exceptions across objects and from libstdc++,
//! virtual calls, COMDAT templates and vtables, thread_local with
//! std::thread) compiled with g++ and clang++, linked by kiln and run
//! in-process; output and exit status must match the native build.

mod common;

use common::*;

fn check_cpp(cxx: &str, flags: &[&str], tag: &str) {
    if !have(cxx) {
        eprintln!("{cxx} not installed: skipped");
        return;
    }
    let dir = scratch(&format!("cpp-{tag}"));
    let mut objs = Vec::new();
    let mut f = flags.to_vec();
    f.push("-pthread");
    for src in ["cpp_a.cpp", "cpp_b.cpp"] {
        objs.push(compile(
            cxx,
            &c_dir().join(src),
            &f,
            &[],
            &dir.join(src.replace(".cpp", ".o")),
        ));
    }
    let (native_out, native_ret) = run_native(cxx, &objs, &f, &[], &dir.join("prog"));
    assert!(
        native_out.contains("atexit handler"),
        "{tag}: native run: {native_out}"
    );
    let (jit_out, jit_ret) = run_jit(&objs, &[], &[]).unwrap_or_else(|e| panic!("{tag}: {e}"));
    assert_eq!(jit_out, native_out, "{tag}: output differs");
    assert_eq!(jit_ret, native_ret, "{tag}: return value differs");
}

#[test]
fn gxx_o0() {
    check_cpp("g++", &["-O0"], "g++-O0");
}

#[test]
fn gxx_o2() {
    check_cpp("g++", &["-O2"], "g++-O2");
}

#[test]
fn gxx_o2_pic() {
    check_cpp("g++", &["-O2", "-fPIC"], "g++-O2-fPIC");
}

#[test]
fn clangxx_o2() {
    check_cpp("clang++", &["-O2"], "clang++-O2");
}
