//! thread_local variables defined in one object and used in another, from
//! several threads, in every TLS model the compilers pick: local-exec and
//! initial-exec (PIE, non-PIE), general- and local-dynamic (-fPIC) and
//! TLS descriptors (-mtls-dialect=gnu2). Output must match the native build.

mod common;

use common::*;

fn check_tls(cc: &str, flags: &[&str], tag: &str) {
    if !need_tool(cc) {
        return;
    }
    let dir = scratch(&format!("tls-{tag}"));
    let f = [flags, &["-pthread"]].concat();
    let objs = compile_sources(cc, &["tls_a.c", "tls_b.c"], &f, &dir);
    assert_jit_matches_native(cc, &objs, &f, (&[], &[]), &dir.join("tls"), "main: ", tag);
}

#[test]
fn tls_pie_initial_and_local_exec() {
    check_tls("gcc", &["-O2"], "gcc-O2");
}

#[test]
fn tls_no_pie() {
    check_tls("gcc", &["-O2", "-fno-pie"], "gcc-O2-fno-pie");
}

#[test]
fn tls_pic_general_and_local_dynamic() {
    check_tls("gcc", &["-O2", "-fPIC"], "gcc-O2-fPIC");
}

#[test]
fn tls_descriptors() {
    check_tls(
        "gcc",
        &["-O2", "-fPIC", "-mtls-dialect=gnu2"],
        "gcc-O2-fPIC-gnu2",
    );
}

#[test]
fn tls_o0_pic() {
    check_tls("gcc", &["-O0", "-fPIC"], "gcc-O0-fPIC");
}

#[test]
fn tls_clang_pic() {
    check_tls("clang", &["-O2", "-fPIC"], "clang-O2-fPIC");
}
