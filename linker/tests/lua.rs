//! Lua 5.4 (the `lua-src` crate's C sources) plus a small C driver, compiled
//! at several flag sets, linked by kiln and run in-process; output and exit
//! status must match the native build.

mod common;

use std::path::{Path, PathBuf};
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

/// One line of a perf map: `START SIZE NAME`, hexadecimal.
fn parse_perf_map_line(line: &str) -> (u64, u64, &str) {
    let mut parts = line.splitn(3, ' ');
    let mut hex = |what: &str| {
        let field = parts
            .next()
            .unwrap_or_else(|| panic!("perf map line {line:?}: no {what}"));
        u64::from_str_radix(field, 16)
            .unwrap_or_else(|e| panic!("perf map line {line:?}: {what} {field:?}: {e}"))
    };
    let (start, size) = (hex("start"), hex("size"));
    let name = parts
        .next()
        .unwrap_or_else(|| panic!("perf map line {line:?}: no name"));
    assert!(!name.is_empty(), "perf map line {line:?}: empty name");
    (start, size, name)
}

/// A `JIT_CODE_DEBUG_INFO` record: the function's address and its line
/// entries `(address, line, file)`.
struct DebugInfo {
    code_addr: u64,
    entries: Vec<(u64, u32, String)>,
}

/// A `JIT_CODE_LOAD` record of a jitdump file, with the debug-info record
/// right before it, if any.
struct CodeLoad {
    debug: Option<DebugInfo>,
    pid: u32,
    vma: u64,
    code_addr: u64,
    code_index: u64,
    name: String,
    code: Vec<u8>,
}

/// Reads a jitdump file as the format says (linux
/// tools/perf/Documentation/jitdump-specification.txt), independently of
/// kiln's writer: checks the header, returns the code-load records (each
/// with the debug-info record that precedes it).
fn parse_jitdump(bytes: &[u8]) -> Vec<CodeLoad> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    assert!(bytes.len() >= 40, "jitdump shorter than its header");
    assert_eq!(u32_at(0), 0x4A69_5444, "magic 'JiTD'");
    assert_eq!(u32_at(4), 1, "version");
    let header = u32_at(8) as usize;
    assert_eq!(header, 40, "header size");
    assert_eq!(u32_at(12), 62, "e_machine EM_X86_64");
    assert_eq!(u32_at(20), std::process::id(), "pid");
    let mut at = header;
    let mut loads = Vec::new();
    let mut debug = None;
    while at < bytes.len() {
        assert!(at + 16 <= bytes.len(), "truncated record header at {at:#x}");
        let (id, total) = (u32_at(at), u32_at(at + 4) as usize);
        assert!(
            total >= 16 && at + total <= bytes.len(),
            "record at {at:#x}: size {total}"
        );
        if id == 0 {
            let body = at + 16;
            let name_start = body + 40;
            let nul = bytes[name_start..at + total]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or_else(|| panic!("record at {at:#x}: unterminated name"));
            let code_size = u64_at(body + 24) as usize;
            let code_start = name_start + nul + 1;
            assert_eq!(
                code_start + code_size,
                at + total,
                "record at {at:#x}: size does not match header + name + code"
            );
            loads.push(CodeLoad {
                debug: debug.take(),
                pid: u32_at(body),
                vma: u64_at(body + 8),
                code_addr: u64_at(body + 16),
                code_index: u64_at(body + 32),
                name: String::from_utf8_lossy(&bytes[name_start..name_start + nul]).into_owned(),
                code: bytes[code_start..code_start + code_size].to_vec(),
            });
        } else if id == 2 {
            let body = at + 16;
            let count = u64_at(body + 8) as usize;
            let mut e = body + 16;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let nul = bytes[e + 16..at + total]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or_else(|| panic!("record at {at:#x}: unterminated file name"));
                let file = String::from_utf8_lossy(&bytes[e + 16..e + 16 + nul]).into_owned();
                entries.push((u64_at(e), u32_at(e + 8), file));
                e += 16 + nul + 1;
            }
            assert_eq!(e, at + total, "debug-info record at {at:#x}: size");
            debug = Some(DebugInfo {
                code_addr: u64_at(body),
                entries,
            });
        }
        at += total;
    }
    loads
}

/// Linking Lua (-O2 -g) with the perf map and jitdump on: every map line is
/// a function of the image (at the image's address for its globals), and
/// the jitdump's records carry the same functions with the bytes in
/// memory, with their line tables.
#[test]
fn lua_perf_map_and_jitdump() {
    if !need_tool("gcc") {
        return;
    }
    let objs = build_lua("gcc", &["-O2", "-g"], "gcc-O2-g-perf");
    let map_path = kiln_linker::debug::perf_map_path();
    let dump_path = kiln_linker::debug::jitdump_path();
    // Left over from an earlier process with this pid: not ours.
    let _ = std::fs::remove_file(&map_path);
    let mut options = kiln_linker::LinkOptions::default();
    options.debug = kiln_linker::DebugOptions::NONE
        .with_perf_map(true)
        .with_jitdump(true);
    let mut linker = kiln_linker::Linker::new(options);
    for o in &objs {
        linker.add_file(o).expect("add Lua object");
    }
    let mut host = kiln_linker::HostSymbols::new();
    for l in ["m", "dl"] {
        // SAFETY: the system's libm and libdl.
        unsafe { host.load_library(l, &[]) }.expect("load library");
    }
    let image = linker.link(&host).expect("link Lua");
    let (base, len) = image.memory_range();

    let map = std::fs::read_to_string(&map_path).expect("read the perf map");
    let mut names = std::collections::HashMap::new();
    for line in map.lines() {
        let (start, size, name) = parse_perf_map_line(line);
        assert!(
            start >= base && start + size <= base + len,
            "{line:?} lies outside the image"
        );
        if let Some(addr) = image.symbol(name) {
            assert_eq!(addr, start, "{line:?}: the image has {name} at {addr:#x}");
        }
        names.insert(name.to_string(), (start, size));
    }
    for f in ["luaV_execute", "lua_pcallk", "luaL_newstate", "main"] {
        assert!(names.contains_key(f), "{f} missing from the perf map");
    }
    // Static functions are named too (luaV_execute's helpers, say).
    assert!(
        names.keys().any(|n| image.symbol(n).is_none()),
        "no local function in the perf map"
    );

    let dump = std::fs::read(&dump_path).expect("read the jitdump");
    let loads = parse_jitdump(&dump);
    assert!(
        !loads.is_empty() && loads.windows(2).all(|w| w[0].code_index < w[1].code_index),
        "code indexes must increase"
    );
    let mut seen = 0;
    let mut with_lines = 0;
    for l in &loads {
        if let Some(d) = &l.debug {
            assert_eq!(
                d.code_addr, l.code_addr,
                "{}: debug info of another function",
                l.name
            );
            for (addr, line, file) in &d.entries {
                assert!(
                    (l.code_addr..l.code_addr + l.code.len() as u64).contains(addr),
                    "{}: line entry at {addr:#x} outside the function",
                    l.name
                );
                assert!(
                    *line > 0 && (file.ends_with(".c") || file.ends_with(".h")),
                    "{}: {file}:{line}",
                    l.name
                );
            }
            with_lines += 1;
        }
        assert_eq!(l.pid, std::process::id());
        assert_eq!(l.vma, l.code_addr);
        let Some(&(start, size)) = names.get(&l.name) else {
            continue;
        };
        if start != l.code_addr {
            continue; // a local function of the same name elsewhere
        }
        seen += 1;
        assert_eq!(l.code.len() as u64, size, "{}: code size", l.name);
        // SAFETY: the image is alive; its code is mapped readable.
        let mem = unsafe { std::slice::from_raw_parts(start as *const u8, size as usize) };
        assert_eq!(l.code, mem, "{}: code bytes differ from memory", l.name);
    }
    assert_eq!(
        seen,
        names.len(),
        "every perf map function has a code-load record"
    );
    // Built with -g: every function compiled from C has its line table
    // (only the linker's PLT stubs, `kiln-plt:NAME`, have none).
    let from_c = loads
        .iter()
        .filter(|l| !l.name.starts_with("kiln-"))
        .count();
    assert_eq!(with_lines, from_c, "functions with debug-info records");
    drop(image);
}

/// Whether `perf record` may sample a process of this user here: `Err`
/// with perf's words when the kernel refuses (`perf_event_paranoid` above
/// what this user may use; root always may). Any other failure of the
/// probe fails the test.
fn perf_sampling_permitted(dir: &Path) -> Result<(), String> {
    let out = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-o"])
        .arg(dir.join("probe.data"))
        .args(["--", "true"])
        .output()
        .expect("run perf record");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && err.contains("Captured and wrote") {
        return Ok(());
    }
    let refused = [
        "perf_event_paranoid",
        "Permission denied",
        "Access to performance monitoring",
    ];
    assert!(
        refused.iter().any(|r| err.contains(r)),
        "perf record fails for a reason other than permissions: {out:?}"
    );
    let paranoid =
        std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
    Err(format!(
        "perf_event_paranoid = {} forbids sampling for uid {}: {}",
        paranoid.trim(),
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() },
        err.lines().next().unwrap_or("")
    ))
}

/// `perf record` of `kiln run --perf-map` (Lua) then `perf report`: the
/// hottest sample in JIT memory is named by the perf map; and with
/// `--jitdump`, `perf inject --jit` names it too. Fails when `perf` is
/// missing (`apt-get install linux-perf`); when the kernel forbids this
/// user sampling (`perf_event_paranoid`; root always may), it says so and
/// passes without sampling — unless `KILN_REQUIRE_PERF_SAMPLING=1`, when it
/// fails.
#[test]
fn lua_perf_report_names_jitted_functions() {
    if !need_tool("perf") || !need_tool("gcc") {
        return;
    }
    let probe_dir = scratch("lua-perf-probe");
    if let Err(why) = perf_sampling_permitted(&probe_dir) {
        let required = std::env::var("KILN_REQUIRE_PERF_SAMPLING").is_ok_and(|v| v == "1");
        assert!(!required, "KILN_REQUIRE_PERF_SAMPLING=1 but {why}");
        eprintln!("note: not sampled: {why}");
        return;
    }
    let objs = build_lua("gcc", &["-O2"], "gcc-O2-perf-record");
    let dir = scratch("lua-perf-record");
    let data = dir.join("perf.data");
    let run = |extra: &str| {
        let out = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-k", "mono", "-o"])
            .arg(&data)
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .args(["run", extra])
            .args(&objs)
            .args(["-l", "m"])
            .env("JITDUMPDIR", &dir)
            .output()
            .expect("run perf record");
        // (The driver's own exit status is not 0: only perf's output counts.)
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Captured and wrote"),
            "perf record failed: {out:?}"
        );
    };
    let report = |file: &Path| {
        let out = Command::new("perf")
            .args(["report", "--stdio", "--sort", "dso,sym", "-i"])
            .arg(file)
            .output()
            .expect("run perf report");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let lua_function = |text: &str, dso: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(dso))
            .find_map(|l| l.split("[.] ").nth(1).map(|s| s.trim().to_string()))
    };
    run("--perf-map");
    let text = report(&data);
    let hottest =
        lua_function(&text, "[JIT] ").unwrap_or_else(|| panic!("no sample in JIT memory:\n{text}"));
    assert!(!hottest.starts_with("0x"), "unnamed: {hottest}\n{text}");
    run("--jitdump");
    let injected = dir.join("perf.jit.data");
    let out = Command::new("perf")
        .args(["inject", "--jit", "-i"])
        .arg(&data)
        .arg("-o")
        .arg(&injected)
        .output()
        .expect("run perf inject");
    assert!(out.status.success(), "perf inject failed: {out:?}");
    let text = report(&injected);
    let hottest = lua_function(&text, "jitted-")
        .unwrap_or_else(|| panic!("no jitted sample after perf inject:\n{text}"));
    assert!(!hottest.starts_with("0x"), "unnamed: {hottest}\n{text}");
}
