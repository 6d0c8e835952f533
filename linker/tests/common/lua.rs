//! Lua 5.4 from the `lua-src` dev-dependency's C sources, compiled with the
//! test driver (`tests/c/lua_driver.c`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{c_dir, compile, scratch};

/// The Lua 5.4 source directory shipped in the `lua-src` dev-dependency,
/// found through `cargo metadata`.
pub(crate) fn lua_src_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    let text = String::from_utf8_lossy(&out.stdout);
    let key = "\"manifest_path\":\"";
    let manifest = text
        .match_indices(key)
        .map(|(i, _)| {
            let rest = &text[i + key.len()..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .find(|p| p.contains("lua-src-548"))
        .expect("lua-src 548.x in cargo metadata");
    let root = Path::new(manifest).parent().expect("crate root");
    std::fs::read_dir(root)
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
    let objs: Vec<PathBuf> = std::thread::scope(|s| {
        let chunks: Vec<Vec<PathBuf>> = (0..3)
            .map(|k| sources.iter().skip(k).step_by(3).cloned().collect())
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (dir, all, src) = (&dir, &all, &src);
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|c| {
                            let stem = c
                                .file_stem()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned();
                            compile(cc, c, all, &[src.as_path()], &dir.join(format!("{stem}.o")))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("compile thread"))
            .collect()
    });
    objs
}
