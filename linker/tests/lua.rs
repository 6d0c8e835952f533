//! Lua 5.4 (the `lua-src` crate's C sources) plus a small C driver, compiled
//! at several flag sets, linked by kiln and run in-process; output and exit
//! status must match the native build.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::lua::build_lua;
use common::*;

/// A Lua build, run natively: the objects (the driver last) and what the
/// native build printed and returned.
struct Checked {
    objs: Vec<PathBuf>,
    native: (String, i32),
    tag: String,
}

/// Builds Lua and its driver with `cc flags`, runs the native build, then
/// kiln in-process and `kiln run --lazy` (each object linked on its first
/// call): both must print and return what the native build does. `None`
/// when the compiler is missing and skipping is allowed.
fn check_lua(cc: &str, flags: &[&str], tag: &str) -> Option<Checked> {
    if !need_tool(cc) {
        return None;
    }
    let objs = build_lua(cc, flags, tag);
    let exe = scratch(&format!("lua-{tag}")).join("lua_driver");
    let native =
        assert_jit_matches_native(cc, &objs, flags, (&["m", "dl"], &["m"]), &exe, "gc ok", tag);
    Some(Checked {
        objs,
        native,
        tag: tag.to_string(),
    })
}

impl Checked {
    /// `kiln run` (eager, one image) prints and returns what the native
    /// build does.
    fn via_cli(&self) {
        let (tag, (native_out, native_ret)) = (&self.tag, &self.native);
        let (out, status, stderr) = run_kiln(false, &self.objs, &["m"], &[]);
        assert_eq!(&out, native_out, "{tag} kiln run: output differs\n{stderr}");
        assert_eq!(
            status, *native_ret,
            "{tag} kiln run: status differs\n{stderr}"
        );
    }

    /// Lua's library objects in an `ar` archive and the driver apart:
    /// `kiln run driver.o liblua.a`, eager and `--lazy`, prints and returns
    /// what the native build does (issue 8 §2.4).
    fn runs_from_an_archive(&self) {
        if !need_tool("ar") {
            return;
        }
        let tag = &self.tag;
        let (driver, library) = self.objs.split_last().expect("the driver and Lua");
        let ar = scratch(&format!("lua-{tag}")).join("liblua.a");
        let _ = std::fs::remove_file(&ar);
        let o = Command::new("ar")
            .arg("rcs")
            .arg(&ar)
            .args(library)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ar: {e}"));
        assert!(
            o.status.success(),
            "ar: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let inputs = [driver.clone(), ar];
        for lazy in [false, true] {
            let (out, status, stderr) = run_kiln(lazy, &inputs, &["m"], &[]);
            let mode = if lazy { "--lazy" } else { "eager" };
            assert_eq!(
                out, self.native.0,
                "{tag} archive {mode}: output differs\n{stderr}"
            );
            assert_eq!(
                status, self.native.1,
                "{tag} archive {mode}: status differs\n{stderr}"
            );
        }
    }
}

#[test]
fn lua_gcc_o0() {
    check_lua("gcc", &["-O0"], "gcc-O0");
}

#[test]
fn lua_gcc_o2() {
    if let Some(lua) = check_lua("gcc", &["-O2"], "gcc-O2") {
        lua.via_cli();
        lua.runs_from_an_archive();
    }
}

#[test]
fn lua_gcc_o2_pic() {
    check_lua("gcc", &["-O2", "-fPIC"], "gcc-O2-fPIC");
}

#[test]
fn lua_gcc_o2_no_pie() {
    if let Some(lua) = check_lua("gcc", &["-O2", "-fno-pie"], "gcc-O2-fno-pie") {
        lua.runs_from_an_archive();
    }
}

#[test]
fn lua_clang_o2() {
    check_lua("clang", &["-O2"], "clang-O2");
}
