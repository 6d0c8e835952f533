//! Lua 5.4 (the `lua-src` crate's C sources) plus a small C driver, compiled
//! at several flag sets, linked by kiln and run in-process; output and exit
//! status must match the native build.

mod common;

use std::process::Command;

use common::lua::build_lua;
use common::*;

fn check_lua(cc: &str, flags: &[&str], tag: &str) {
    check_lua_with(cc, flags, tag, false);
}

/// Also runs the objects through the `kiln` command, eagerly and with
/// `--lazy` (each object linked on its first call).
fn check_lua_with(cc: &str, flags: &[&str], tag: &str, via_cli: bool) {
    if !have(cc) {
        eprintln!("{cc} not installed: skipped");
        return;
    }
    let objs = build_lua(cc, flags, tag);
    let exe = scratch(&format!("lua-{tag}")).join("lua_driver");
    let (native_out, native_ret) =
        assert_jit_matches_native(cc, &objs, flags, (&["m", "dl"], &["m"]), &exe, "gc ok", tag);
    if via_cli {
        for mode in [&["run"][..], &["run", "--lazy", "--stats"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(mode)
                .args(&objs)
                .args(["-l", "m"])
                .output()
                .expect("kiln runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                stdout, native_out,
                "{tag} {mode:?}: output differs\n{stderr}"
            );
            assert_eq!(
                out.status.code(),
                Some(native_ret),
                "{tag} {mode:?}: status differs\n{stderr}"
            );
            if mode.contains(&"--lazy") {
                assert!(stderr.contains("lazy reentries"), "{tag}: {stderr}");
            }
        }
    }
}

#[test]
fn lua_gcc_o0() {
    check_lua("gcc", &["-O0"], "gcc-O0");
}

#[test]
fn lua_gcc_o2() {
    check_lua_with("gcc", &["-O2"], "gcc-O2", true);
}

#[test]
fn lua_gcc_o2_pic() {
    check_lua("gcc", &["-O2", "-fPIC"], "gcc-O2-fPIC");
}

#[test]
fn lua_gcc_o2_no_pie() {
    check_lua("gcc", &["-O2", "-fno-pie"], "gcc-O2-fno-pie");
}

#[test]
fn lua_clang_o2() {
    check_lua("clang", &["-O2"], "clang-O2");
}
