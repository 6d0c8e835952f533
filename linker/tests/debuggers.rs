//! GDB sees JIT'd code (the GDB JIT interface, `kiln run --gdb`): `gdb
//! -batch` on programs in `tests/debug/` — breakpoints by name set before
//! the run, backtraces with files and lines, locals, `next`, `finish`
//! across objects, backtraces from host code at -O2 without -g, a C++
//! exception across objects, and code gdb forgets once it is removed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_engine::{DylibLookup, Session, WorkerPool};
use kiln_linker::layer::{HostGenerator, ObjectLayer};
use kiln_linker::{DebugOptions, HostSymbols, LinkOptions};

fn debug_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/debug")
}

/// Compiles `srcs` (in `tests/debug`) with `cc flags -c` into `dir`.
fn build(cc: &str, srcs: &[&str], flags: &[&str], dir: &Path) -> Vec<PathBuf> {
    srcs.iter()
        .map(|s| {
            let out = dir.join(Path::new(s).with_extension("o"));
            compile(cc, &debug_dir().join(s), flags, &[], &out)
        })
        .collect()
}

/// Runs `gdb -batch` with `commands` on `program args`: everything gdb and
/// the program printed.
fn gdb(commands: &[&str], program: &Path, args: &[&str]) -> String {
    gdb_with_env(commands, program, args, &[])
}

/// [`gdb`], with `env` set for gdb and the program.
fn gdb_with_env(
    commands: &[&str],
    program: &Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> String {
    let mut cmd = Command::new("gdb");
    cmd.envs(env.iter().copied());
    // In a sanitizer build of kiln (scripts/test with KILN_ASAN=1) the
    // program would end with LeakSanitizer's fatal error: it cannot run
    // under ptrace. Leak checking stays with the runs outside gdb.
    let asan = std::env::var("ASAN_OPTIONS").unwrap_or_default();
    cmd.env("ASAN_OPTIONS", format!("{asan}:detect_leaks=0"));
    cmd.args(["-batch", "-nx", "-ex", "set breakpoint pending on"]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    cmd.arg("--args").arg(program).args(args);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run gdb: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `gdb` on `kiln run --gdb [--lazy] objs`.
fn gdb_kiln(commands: &[&str], objs: &[PathBuf], lazy: bool) -> String {
    let mut args = vec!["run".to_string(), "--gdb".to_string()];
    if lazy {
        args.push("--lazy".into());
    }
    args.extend(objs.iter().map(|o| o.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    gdb(commands, Path::new(env!("CARGO_BIN_EXE_kiln")), &args)
}

/// The frames of the first backtrace in `out` (lines starting `#N `).
fn frames(out: &str) -> Vec<&str> {
    let mut v = Vec::new();
    for l in out.lines() {
        if l.starts_with('#') && l[1..].starts_with(|c: char| c.is_ascii_digit()) {
            if l.starts_with("#0 ") && !v.is_empty() {
                break;
            }
            v.push(l);
        } else if !v.is_empty() {
            break;
        }
    }
    v
}

/// Asserts that every frame of `bt` up to kiln's own (`kiln::`) has a name.
fn assert_named_down_to_kiln(bt: &[&str], out: &str) {
    let kiln = bt
        .iter()
        .position(|f| f.contains("kiln::"))
        .unwrap_or_else(|| panic!("the backtrace does not reach kiln's frames:\n{out}"));
    for f in &bt[..kiln] {
        assert!(!f.contains("??"), "unnamed frame {f:?}:\n{out}");
    }
}

fn o0_session(lazy: bool) {
    if !need_tool("gdb") || !need_tool("gcc") {
        return;
    }
    let tag = if lazy { "o0-lazy" } else { "o0" };
    let dir = scratch(&format!("debuggers-{tag}"));
    let objs = build("gcc", &["o0_main.c", "o0_helper.c"], &["-O0", "-g"], &dir);
    let out = gdb_kiln(
        &[
            "break helper",
            "run",
            "bt",
            "info locals",
            "next",
            "next",
            "info locals",
            "finish",
        ],
        &objs,
        lazy,
    );
    // gdb says `Thread 1 "kiln" hit Breakpoint 1, ` once the process has
    // had a second thread (a lazy run's workers), `Breakpoint 1, ` if not
    // (an eager run of small inputs starts none).
    assert!(
        out.contains("Breakpoint 1, helper (x=0) at "),
        "the breakpoint on helper was not hit:\n{out}"
    );
    let bt = frames(&out);
    assert!(
        bt.len() >= 2 && bt[0].contains("helper (x=0) at ") && bt[0].contains("o0_helper.c:2"),
        "frame 0 is not helper at o0_helper.c:2:\n{out}"
    );
    assert!(
        bt[1].contains("in main () at ") && bt[1].contains("o0_main.c:8"),
        "frame 1 is not main at o0_main.c:8:\n{out}"
    );
    assert_named_down_to_kiln(&bt, &out);
    assert!(
        out.contains("doubled = "),
        "info locals: no `doubled`:\n{out}"
    );
    assert!(
        out.contains("3\t    int result = doubled + 1;") && out.contains("4\t    return result;"),
        "`next` did not step through helper's lines:\n{out}"
    );
    assert!(
        out.contains("doubled = 0") && out.contains("result = 1"),
        "info locals after next: wrong values:\n{out}"
    );
    // `finish` (gdb prints "Run till exit" to the terminal only): back in
    // main, in the other object, with helper's value.
    let after = &out[out.rfind("result = 1").unwrap_or(0)..];
    assert!(
        after.contains("in main () at ")
            && after.contains("o0_main.c:8")
            && after.contains("Value returned is $1 = 1"),
        "`finish` did not return from helper into main (o0_main.o):\n{out}"
    );
}

/// -O0 -g, two objects, eager: breakpoint by name before the run, bt with
/// file:line, info locals, next, finish into the other object.
#[test]
fn gdb_breaks_steps_and_finishes_across_objects() {
    o0_session(false);
}

/// The same with `--lazy`: each object is registered when first linked.
#[test]
fn gdb_sees_lazily_linked_objects() {
    o0_session(true);
}

/// -O2, no -g: a backtrace from a host function called by JIT'd code
/// names every JIT'd frame (from `.eh_frame` and `.symtab`) down to main.
#[test]
fn gdb_backtrace_from_host_code_at_o2_without_debug_info() {
    if !need_tool("gdb") || !need_tool("gcc") {
        return;
    }
    let dir = scratch("debuggers-o2");
    let objs = build("gcc", &["o2_main.c", "o2_level1.c"], &["-O2"], &dir);
    let out = gdb_kiln(&["break getppid", "run", "bt"], &objs, false);
    let bt = frames(&out);
    assert!(
        bt.first().is_some_and(|f| f.contains("getppid")),
        "the breakpoint on getppid was not hit:\n{out}"
    );
    for (i, name) in [(1, "level2 ()"), (2, "level1 ()"), (3, "main ()")] {
        assert!(
            bt.get(i).is_some_and(|f| f.contains(name)),
            "frame {i} is not {name}:\n{out}"
        );
    }
    assert_named_down_to_kiln(&bt, &out);
}

/// A C++ exception thrown in one JIT'd object and caught in another,
/// with a breakpoint on `__cxa_throw`: the backtrace is complete, and the
/// program goes on to catch it.
#[test]
fn gdb_backtrace_from_cxa_throw_across_objects() {
    if !need_tool("gdb") || !need_tool("g++") {
        return;
    }
    let dir = scratch("debuggers-throw");
    let objs = build(
        "g++",
        &["throw_main.cpp", "throw_thrower.cpp"],
        &["-O0", "-g"],
        &dir,
    );
    let out = gdb_kiln(
        &["break __cxa_throw", "run", "bt", "continue"],
        &objs,
        false,
    );
    let bt = frames(&out);
    assert!(
        bt.first().is_some_and(|f| f.contains("__cxa_throw")),
        "the breakpoint on __cxa_throw was not hit:\n{out}"
    );
    assert!(
        bt.get(1)
            .is_some_and(|f| f.contains("thrower (n=7)") && f.contains("throw_thrower.cpp:5")),
        "frame 1 is not thrower at throw_thrower.cpp:5:\n{out}"
    );
    assert!(
        bt.get(2)
            .is_some_and(|f| f.contains("main ()") && f.contains("throw_main.cpp:7")),
        "frame 2 is not main at throw_main.cpp:7:\n{out}"
    );
    assert_named_down_to_kiln(&bt, &out);
    assert!(out.contains("caught boom 7"), "not caught:\n{out}");
}

/// Where gdb stops in [`link_then_remove_with_gdb_on`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn kiln_test_after_link() {
    std::hint::black_box(());
}

/// Where gdb stops in [`link_then_remove_with_gdb_on`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn kiln_test_after_removal() {
    std::hint::black_box(());
}

const REMOVABLE: &str = "int kiln_removable_fn(int n) { return n * 7 + 1; }\n";

/// Links an object under a tracker with gdb support on, calls it, removes
/// the tracker: one debug object is registered while the code lives and
/// none after. [`gdb_forgets_removed_code`] runs this under gdb.
#[test]
fn link_then_remove_with_gdb_on() {
    let dir = scratch("debuggers-remove");
    let obj = compile_c_text(&dir, "removable", REMOVABLE, &["-O1"]);
    let bytes = std::fs::read(&obj).expect("read removable.o");
    let session = Session::builder().dispatcher(WorkerPool::new(1)).build();
    let mut options = LinkOptions::default();
    options.debug = DebugOptions::NONE.with_gdb(true);
    let layer = ObjectLayer::with_options(&session, options);
    let host = session.create_dylib("<host>").expect("host dylib");
    host.add_generator(HostGenerator::new(HostSymbols::new()))
        .expect("host generator");
    let app = session.create_dylib("app").expect("app dylib");
    app.set_link_order(&[(host, DylibLookup::ExportedOnly)])
        .expect("link order");
    let rt = app.create_tracker().expect("tracker");
    let before = kiln_linker::debug::gdb_registered_objects();
    layer
        .add_object(&app, Some(&rt), "removable.o", &bytes)
        .expect("add removable.o");
    // No `layer.run_initializers()`: an image removed before its
    // initializers ran must be released (and unregistered) all the same.
    let found = app.lookup_ready(&["kiln_removable_fn"]).expect("link it");
    let address = found
        .get_str("kiln_removable_fn")
        .expect("looked up")
        .address;
    // SAFETY: `kiln_removable_fn` is `int (int)`, compiled above and Ready.
    let f = unsafe { std::mem::transmute::<usize, extern "C" fn(i32) -> i32>(address as usize) };
    assert_eq!(f(3), 22);
    assert_eq!(
        kiln_linker::debug::gdb_registered_objects(),
        before + 1,
        "one debug object per link"
    );
    kiln_test_after_link();
    rt.remove().expect("remove the tracker");
    assert_eq!(
        kiln_linker::debug::gdb_registered_objects(),
        before,
        "unregistered at removal"
    );
    kiln_test_after_removal();
    session.end();
}

/// After tracker removal gdb no longer lists the removed function (it did
/// while the code was linked) — this test binary's own
/// [`link_then_remove_with_gdb_on`], under gdb.
#[test]
fn gdb_forgets_removed_code() {
    if !need_tool("gdb") || !need_tool("gcc") {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = gdb(
        &[
            "break kiln_test_after_link",
            "break kiln_test_after_removal",
            "run",
            "echo [linked]\\n",
            "info functions ^kiln_removable_fn$",
            "continue",
            "echo [removed]\\n",
            "info functions ^kiln_removable_fn$",
            "continue",
        ],
        &exe,
        &[
            "--exact",
            "link_then_remove_with_gdb_on",
            "--test-threads=1",
            "--nocapture",
        ],
    );
    assert_listed_between_stops(&out, "the link", "the removal", "linked test");
}

/// The debug object GDB is given (`KILN_GDB_OBJECT_DIR` saves a copy):
/// every allocated section at a non-zero runtime address, the functions in
/// `.symtab`, `.eh_frame` and the inputs' DWARF present.
#[test]
fn debug_object_has_runtime_addresses_symbols_and_dwarf() {
    use object::{Object, ObjectSection, ObjectSymbol, SectionFlags};
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("debuggers-object");
    let objs = build("gcc", &["o0_main.c", "o0_helper.c"], &["-O0", "-g"], &dir);
    let saved = dir.join("saved");
    let _ = std::fs::remove_dir_all(&saved);
    std::fs::create_dir_all(&saved).expect("create dir");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_GDB_OBJECT_DIR", &saved)
        .arg("run")
        .arg("--gdb")
        .args(&objs)
        .output()
        .expect("run kiln");
    assert!(out.status.success(), "kiln run failed: {out:?}");
    let files: Vec<PathBuf> = std::fs::read_dir(&saved)
        .expect("saved objects")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one debug object per link: {files:?}");
    let bytes = std::fs::read(&files[0]).expect("read the debug object");
    let file = object::File::parse(&*bytes).expect("a valid ELF file");
    let mut names = Vec::new();
    for s in file.sections() {
        let name = s.name().unwrap_or_default().to_string();
        if let SectionFlags::Elf { sh_flags, .. } = s.flags()
            && sh_flags.0 & object::elf::SHF_ALLOC.0 != 0
        {
            assert_ne!(s.address(), 0, "allocated section {name} at address 0");
        }
        names.push(name);
    }
    for want in [
        ".text",
        ".eh_frame",
        ".debug_info",
        ".debug_line",
        ".debug_abbrev",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    // As few allocated sections as can be (GDB re-sorts all of them, of
    // every object, at each registration): one per protection, the code
    // in one `.text`; `.eh_frame` at its address but not allocated.
    let mut alloc = Vec::new();
    for s in file.sections() {
        if let SectionFlags::Elf { sh_flags, .. } = s.flags()
            && sh_flags.0 & object::elf::SHF_ALLOC.0 != 0
        {
            alloc.push((s.name().unwrap_or_default().to_string(), sh_flags.0));
        }
    }
    let code: Vec<&String> = alloc
        .iter()
        .filter(|(_, f)| f & object::elf::SHF_EXECINSTR.0 != 0)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(code, [".text"], "one code section: {alloc:?}");
    assert!(alloc.len() <= 3, "one section per protection: {alloc:?}");
    let eh = file.section_by_name(".eh_frame").expect(".eh_frame");
    assert!(
        eh.address() != 0 && !alloc.iter().any(|(n, _)| n == ".eh_frame"),
        ".eh_frame at its runtime address, not allocated"
    );
    let text = file.section_by_name(".text").expect(".text").address();
    for f in ["main", "helper"] {
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok(f))
            .unwrap_or_else(|| panic!("{f} missing from .symtab"));
        assert!(sym.address() >= text && sym.size() > 0, "{f}: {sym:?}");
    }
}

/// Saves `objs` as the image file `dir/name.kimg` (`kiln image save`).
fn save_image(objs: &[PathBuf], dir: &Path, name: &str) -> PathBuf {
    let image = dir.join(format!("{name}.kimg"));
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["image", "save", "-o"])
        .arg(&image)
        .args(objs)
        .output()
        .expect("run kiln image save");
    assert!(out.status.success(), "kiln image save failed: {out:?}");
    image
}

/// `kiln run --gdb prog.kimg` (an image file, loaded, not linked): a
/// breakpoint by function name set before the run resolves and is hit,
/// and a backtrace from host code names every frame of the image.
#[test]
fn gdb_sees_code_loaded_from_an_image() {
    if !need_tool("gdb") || !need_tool("gcc") {
        return;
    }
    let dir = scratch("debuggers-image");
    let objs = build("gcc", &["o2_main.c", "o2_level1.c"], &["-O2"], &dir);
    let image = save_image(&objs, &dir, "prog");
    let out = gdb_kiln(
        &[
            "break level1",
            "break getppid",
            "run",
            "bt",
            "continue",
            "bt",
            "continue",
        ],
        &[image],
        false,
    );
    // A run of images only has one thread: gdb says `Breakpoint N, `, not
    // `Thread 1 "kiln" hit Breakpoint N, `.
    assert!(
        out.contains("Breakpoint 1, ") && out.contains(" in level1 ()"),
        "the breakpoint on level1 was not hit:\n{out}"
    );
    let second = out
        .find("Breakpoint 2, ")
        .unwrap_or_else(|| panic!("the breakpoint on getppid was not hit:\n{out}"));
    let bt = frames(&out[second..]);
    for (i, name) in [(1, "level2 ()"), (2, "level1 ()"), (3, "main ()")] {
        assert!(
            bt.get(i).is_some_and(|f| f.contains(name)),
            "frame {i} is not {name}:\n{out}"
        );
    }
    assert_named_down_to_kiln(&bt, &out[second..]);
    assert!(
        out.contains("exited normally"),
        "the program failed:\n{out}"
    );
}

/// Runs `kiln args inputs` (with `JITDUMPDIR=dir`): its pid and its perf
/// map (removed).
fn kiln_perf_map(args: &[&str], inputs: &[PathBuf], dir: &Path) -> (u32, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("JITDUMPDIR", dir)
        .args(args)
        .args(inputs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for kiln");
    let map_path = format!("/tmp/perf-{pid}.map");
    let map = std::fs::read_to_string(&map_path);
    let _ = std::fs::remove_file(&map_path);
    assert!(out.status.success(), "kiln run failed: {out:?}");
    (
        pid,
        map.unwrap_or_else(|e| panic!("no perf map {map_path}: {e}")),
    )
}

/// `kiln run --lazy --perf-map`: lazy-call stubs and reentry trampolines
/// are named by the entry they serve (`kiln-stub:NAME`,
/// `kiln-trampoline:NAME`), their shared reentry code `kiln-reentry`; and
/// every function and PLT stub of the images, lazy and eager.
#[test]
fn perf_map_names_lazy_stubs_and_trampolines_by_symbol() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("debuggers-stub-names");
    let objs = build("gcc", &["o2_main.c", "o2_level1.c"], &["-O2"], &dir);
    let (_, map) = kiln_perf_map(&["run", "--lazy", "--perf-map"], &objs, &dir);
    let names: Vec<&str> = map
        .lines()
        .filter_map(|l| l.splitn(3, ' ').nth(2))
        .collect();
    for want in [
        "kiln-stub:main",
        "kiln-stub:level1",
        "kiln-stub:level2",
        "kiln-trampoline:main",
        "kiln-trampoline:level1",
        "kiln-trampoline:level2",
        "kiln-reentry",
    ] {
        assert!(
            names.contains(&want),
            "{want} missing from the perf map:\n{map}"
        );
    }
    assert!(
        !names.iter().any(|n| n.contains('@')),
        "a stub named by index:\n{map}"
    );
    // The images' own lines (written after each emit), lazy and eager.
    let (_, eager) = kiln_perf_map(&["run", "--perf-map"], &objs, &dir);
    for map in [&map, &eager] {
        for want in ["main", "level1", "level2", "kiln-plt:getppid"] {
            assert!(
                map.lines().any(|l| l.ends_with(&format!(" {want}"))),
                "{want} missing from the perf map:\n{map}"
            );
        }
    }
}

/// `kiln run --perf-map --jitdump prog.kimg`: the image's functions are in
/// the perf map (one line each, sized, not overlapping) and in the jitdump.
#[test]
fn perf_map_and_jitdump_name_code_loaded_from_an_image() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("debuggers-image-perf");
    let objs = build("gcc", &["o2_main.c", "o2_level1.c"], &["-O2"], &dir);
    let image = save_image(&objs, &dir, "prog");
    let (pid, map) = kiln_perf_map(&["run", "--perf-map", "--jitdump"], &[image], &dir);
    let mut lines: Vec<(u64, u64, &str)> = map
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let mut hex = || u64::from_str_radix(f.next().unwrap_or(""), 16);
            let (start, size) = (hex(), hex());
            let name = f.next().unwrap_or("");
            match (start, size) {
                (Ok(s), Ok(z)) if z > 0 && !name.is_empty() => (s, z, name),
                _ => panic!("malformed perf map line {l:?}"),
            }
        })
        .collect();
    for f in ["main", "level1", "level2"] {
        assert_eq!(
            lines.iter().filter(|l| l.2 == f).count(),
            1,
            "{f}: not once in the perf map:\n{map}"
        );
    }
    lines.sort();
    for w in lines.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlapping lines:\n{map}");
    }
    let dump_path = dir.join(format!("jit-{pid}.dump"));
    let dump = std::fs::read(&dump_path)
        .unwrap_or_else(|e| panic!("no jitdump {}: {e}", dump_path.display()));
    let _ = std::fs::remove_file(&dump_path);
    for f in ["main", "level1", "level2"] {
        let name = format!("{f}\0");
        assert!(
            dump.windows(name.len()).any(|w| w == name.as_bytes()),
            "{f}: no code-load record in the jitdump"
        );
    }
}

/// Run by [`loading_an_image_registers_one_object_until_it_is_dropped`]
/// in a process of its own (it changes the process's debug options):
/// loads the image `KILN_TEST_IMAGE` with gdb support on, calls it, drops
/// it.
#[test]
#[ignore = "run in its own process by loading_an_image_registers_one_object_until_it_is_dropped"]
fn image_load_and_drop_child() {
    let path = std::env::var("KILN_TEST_IMAGE").expect("KILN_TEST_IMAGE");
    let bytes = std::fs::read(&path).expect("read the image");
    DebugOptions::set_process_default(DebugOptions::NONE.with_gdb(true));
    let before = kiln_linker::debug::gdb_registered_objects();
    // SAFETY: the image was saved by this test from REMOVABLE; it imports
    // nothing.
    let image = unsafe { kiln_linker::image_file::load(&path, &bytes, &HostSymbols::new()) }
        .expect("load the image");
    assert_eq!(
        kiln_linker::debug::gdb_registered_objects(),
        before + 1,
        "one debug object per image load"
    );
    let address = image.symbol("kiln_removable_fn").expect("exported");
    // SAFETY: `kiln_removable_fn` is `int (int)` (REMOVABLE).
    let f = unsafe { std::mem::transmute::<u64, extern "C" fn(i32) -> i32>(address) };
    assert_eq!(f(3), 22);
    kiln_test_after_link();
    drop(image);
    assert_eq!(
        kiln_linker::debug::gdb_registered_objects(),
        before,
        "unregistered when the image is dropped"
    );
    kiln_test_after_removal();
}

/// Loading an image file registers one debug object; dropping the image
/// unregisters it, and gdb then no longer lists its function.
#[test]
fn loading_an_image_registers_one_object_until_it_is_dropped() {
    if !need_tool("gdb") || !need_tool("gcc") {
        return;
    }
    let dir = scratch("debuggers-image-drop");
    let obj = compile_c_text(&dir, "removable", REMOVABLE, &["-O1", "-fPIC"]);
    let image = save_image(&[obj], &dir, "removable");
    let exe = std::env::current_exe().expect("test binary");
    let out = gdb_with_env(
        &[
            "break kiln_test_after_link",
            "break kiln_test_after_removal",
            "run",
            "echo [linked]\\n",
            "info functions ^kiln_removable_fn$",
            "continue",
            "echo [removed]\\n",
            "info functions ^kiln_removable_fn$",
            "continue",
        ],
        &exe,
        &[
            "--exact",
            "image_load_and_drop_child",
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ],
        &[("KILN_TEST_IMAGE", image.as_os_str())],
    );
    assert_listed_between_stops(&out, "the load", "the drop", "child test");
}

/// In a gdb session's output `out` (breakpoints printing `[linked]` after
/// `made`, `[removed]` after `gone`): gdb lists `kiln_removable_fn`
/// between the two stops and no longer after the second, and the
/// `child` test it ran passed. (gdb's own messages may interleave with
/// the harness's summary: the inferior's exit status says whether the
/// test passed.)
fn assert_listed_between_stops(out: &str, made: &str, gone: &str, child: &str) {
    let linked = out
        .find("[linked]")
        .unwrap_or_else(|| panic!("gdb did not stop after {made}:\n{out}"));
    let removed = out
        .find("[removed]")
        .unwrap_or_else(|| panic!("gdb did not stop after {gone}:\n{out}"));
    let listed = |s: &str| {
        s.lines()
            .any(|l| l.trim_end().ends_with(" kiln_removable_fn"))
    };
    assert!(
        listed(&out[linked..removed]),
        "gdb does not list the function after {made}:\n{out}"
    );
    let after = &out[removed..];
    let end = after.find("Continuing.").unwrap_or(after.len());
    assert!(
        !listed(&after[..end]),
        "gdb still lists the function after {gone}:\n{out}"
    );
    assert!(
        out.contains("exited normally") && out.contains("1 passed"),
        "the {child} failed under gdb:\n{out}"
    );
}

/// Functions per object in [`perf_map_lines_of_concurrent_links_never_interleave`].
const CONCURRENT_FUNCS: usize = 150;

/// Links made by each thread in [`perf_map_lines_of_concurrent_links_never_interleave`].
const CONCURRENT_LINKS: usize = 6;

/// Links `CONCURRENT_LINKS` images of `obj` (functions
/// `kiln_conc_t{t}_f{k}`), each in a session of its own, with the perf map
/// on.
fn link_for_perf_map(obj: &Path, t: usize) {
    let bytes = std::fs::read(obj).expect("read the object");
    for _ in 0..CONCURRENT_LINKS {
        let session = Session::builder().dispatcher(WorkerPool::new(1)).build();
        let mut options = LinkOptions::default();
        options.debug = DebugOptions::NONE.with_perf_map(true);
        let layer = ObjectLayer::with_options(&session, options);
        let app = session.create_dylib("app").expect("app dylib");
        layer
            .add_object(&app, None, "conc.o", &bytes)
            .expect("add the object");
        let name = format!("kiln_conc_t{t}_f0");
        app.lookup_ready(&[name.as_str()]).expect("link it");
        session.end();
    }
}

/// Links on several threads at once, each appending its image's perf map
/// lines: every line of the map is whole (`START SIZE NAME`), and each
/// link's lines are contiguous (one write per link under `O_APPEND`), so
/// no line of one link lands between two of another's.
#[test]
fn perf_map_lines_of_concurrent_links_never_interleave() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("debuggers-perf-concurrent");
    let threads = 4;
    let objs: Vec<PathBuf> = (0..threads)
        .map(|t| {
            let src: String = (0..CONCURRENT_FUNCS)
                .map(|k| format!("int kiln_conc_t{t}_f{k}(int x) {{ return x * {k} + {t}; }}\n"))
                .collect();
            compile_c_text(&dir, &format!("conc{t}"), &src, &["-O1"])
        })
        .collect();
    std::thread::scope(|s| {
        for (t, obj) in objs.iter().enumerate() {
            s.spawn(move || link_for_perf_map(obj, t));
        }
    });
    let map = std::fs::read_to_string(kiln_linker::debug::perf_map_path()).expect("read the map");
    let mut count = std::collections::HashMap::new();
    // Runs of consecutive lines from the same thread's links.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for line in map.lines() {
        let mut fields = line.splitn(3, ' ');
        let (start, size, name) = (fields.next(), fields.next(), fields.next());
        let hex = |f: Option<&str>| f.is_some_and(|f| u64::from_str_radix(f, 16).is_ok());
        assert!(
            hex(start) && hex(size) && name.is_some_and(|n| !n.is_empty()),
            "torn perf map line {line:?}"
        );
        let Some(rest) = name.and_then(|n| n.strip_prefix("kiln_conc_t")) else {
            continue;
        };
        let t: usize = rest
            .split('_')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("perf map line {line:?}: no thread"));
        *count
            .entry(name.unwrap_or_default().to_string())
            .or_insert(0) += 1;
        match runs.last_mut() {
            Some((rt, n)) if *rt == t => *n += 1,
            _ => runs.push((t, 1)),
        }
    }
    for t in 0..threads {
        for k in 0..CONCURRENT_FUNCS {
            let name = format!("kiln_conc_t{t}_f{k}");
            assert_eq!(count.get(&name), Some(&CONCURRENT_LINKS), "{name}");
        }
    }
    for &(t, n) in &runs {
        assert_eq!(
            n % CONCURRENT_FUNCS,
            0,
            "a run of {n} lines of thread {t}'s links: another link's lines interleaved"
        );
    }
}

/// A function's perf map line is in the map by the time its address is
/// handed out: the lookup that returns it has waited for the line, so a
/// profiler started then (or a process that exits then) sees every
/// function it can run. Each link runs on a pool worker while this thread
/// waits in the lookup; the map is read as soon as the lookup returns.
#[test]
fn a_functions_perf_map_line_is_written_before_its_address_is_handed_out() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("debuggers-perf-before-address");
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let mut options = LinkOptions::default();
    options.debug = DebugOptions::NONE.with_perf_map(true);
    let layer = ObjectLayer::with_options(&session, options);
    let app = session.create_dylib("app").expect("app dylib");
    for k in 0..40 {
        let name = format!("kiln_before_address_{k}");
        let src: String = (0..20)
            .map(|j| format!("int {name}_{j}(int x) {{ return x * {j} + {k}; }}\n"))
            .chain([format!("int {name}(int x) {{ return x + {k}; }}\n")])
            .collect();
        let obj = compile_c_text(&dir, &name, &src, &["-O1"]);
        let bytes = std::fs::read(&obj).expect("read the object");
        layer
            .add_object(&app, None, &format!("{name}.o"), &bytes)
            .expect("add the object");
        app.lookup_ready(&[name.as_str()]).expect("link it");
        let map =
            std::fs::read_to_string(kiln_linker::debug::perf_map_path()).expect("read the map");
        assert!(
            map.lines().any(|l| l.ends_with(&format!(" {name}"))),
            "{name}'s address was handed out before its perf map line was written"
        );
    }
    session.end();
}
