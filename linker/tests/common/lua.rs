//! Lua 5.4 from the `lua-src` dev-dependency's C sources, compiled with the
//! test driver (`tests/c/lua_driver.c`).

use std::path::PathBuf;

use super::c_libraries::{compile_all, crate_root};
use super::{c_dir, scratch};

/// The Lua 5.4 source directory shipped in the `lua-src` dev-dependency,
/// found through `cargo metadata`.
pub(crate) fn lua_src_dir() -> PathBuf {
    let root = crate_root("lua-src-548");
    std::fs::read_dir(&root)
        .expect("read lua-src")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("lua-5.4"))
        })
        .expect("lua-5.4.x directory")
}

/// Compile Lua's library sources and the driver with `cc flags`.
pub(crate) fn build_lua(cc: &str, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let src = lua_src_dir();
    let dir = scratch(&format!("lua-{tag}"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .expect("lua sources")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .filter(|p| {
            !matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("lua.c" | "luac.c")
            )
        })
        .collect();
    sources.sort();
    sources.push(c_dir().join("lua_driver.c"));
    let mut all = vec!["-DLUA_USE_LINUX", "-DLUA_COMPAT_5_3"];
    all.extend_from_slice(flags);
    compile_all(cc, &sources, &all, &[src.as_path()], &dir)
}
