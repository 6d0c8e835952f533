//! C++ programs across two objects (static constructors and destructors
//! with priorities, atexit, exceptions across objects and from libstdc++,
//! virtual calls, COMDAT templates and vtables, thread_local with
//! std::thread) compiled with g++ and clang++, linked by kiln and run
//! in-process; output and exit status must match the native build.

mod common;

use common::*;

fn check_cpp(cxx: &str, flags: &[&str], tag: &str) {
    if !need_tool(cxx) {
        return;
    }
    let dir = scratch(&format!("cpp-{tag}"));
    let f = [flags, &["-pthread"]].concat();
    let objs = compile_sources(cxx, &["cpp_a.cpp", "cpp_b.cpp"], &f, &dir);
    assert_jit_matches_native(
        cxx,
        &objs,
        &f,
        (&[], &[]),
        &dir.join("prog"),
        "atexit handler",
        tag,
    );
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
