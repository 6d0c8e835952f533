//! Real programs built by the test itself (C++ in `tests/cxx`, Rust
//! staticlibs in `tests/rust`), run natively and by the `kiln` binary,
//! eager and `--lazy`: stdout and exit status must match the native run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The C++ sources of the acceptance programs.
pub(crate) fn cxx_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cxx")
}

/// The Rust (and C driver) sources of the staticlib programs.
pub(crate) fn rust_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rust")
}

/// Runs `cmd`, failing the test (with its stderr) unless it succeeds.
pub(crate) fn run_tool(cmd: &mut Command, what: &str) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Compiles each of `sources` (in `dir_of_sources`) with `cc flags -c` into
/// `out_dir` as `<stem>.o`.
pub(crate) fn compile_each(
    cc: &str,
    dir_of_sources: &Path,
    sources: &[&str],
    flags: &[&str],
    out_dir: &Path,
) -> Vec<PathBuf> {
    sources
        .iter()
        .map(|s| {
            let stem = Path::new(s).file_stem().expect("source file name");
            let out = out_dir.join(stem).with_extension("o");
            run_tool(
                Command::new(cc)
                    .args(flags)
                    .arg("-I")
                    .arg(dir_of_sources)
                    .arg("-c")
                    .arg(dir_of_sources.join(s))
                    .arg("-o")
                    .arg(&out),
                &format!("{cc} {flags:?} -c {s}"),
            );
            out
        })
        .collect()
}

/// Builds `rust_dir()/src` with `rustc --crate-type staticlib flags` into
/// `out_dir/lib<name>.a`.
pub(crate) fn rustc_staticlib(src: &str, name: &str, flags: &[&str], out_dir: &Path) -> PathBuf {
    let out = out_dir.join(format!("lib{name}.a"));
    run_tool(
        Command::new("rustc")
            .args([
                "--edition",
                "2021",
                "--crate-type",
                "staticlib",
                "--crate-name",
                name,
            ])
            .args(flags)
            .arg(rust_dir().join(src))
            .arg("-o")
            .arg(&out),
        &format!("rustc {flags:?} {src}"),
    );
    out
}

/// Extracts the members of `archive` into `out_dir` (`ar x`), in archive
/// order.
pub(crate) fn archive_members(archive: &Path, out_dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(out_dir).expect("members dir");
    let list = run_tool(Command::new("ar").arg("t").arg(archive), "ar t");
    run_tool(
        Command::new("ar")
            .current_dir(out_dir)
            .arg("x")
            .arg(std::path::absolute(archive).expect("absolute archive path")),
        "ar x",
    );
    let mut seen = std::collections::HashSet::new();
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|m| seen.insert(m.to_string()))
        .map(|m| out_dir.join(m))
        .collect()
}

/// Links `inputs` natively with `cc link_flags` into `exe` and runs it:
/// (stdout, exit status). A native run that dies of a signal fails the test.
pub(crate) fn native_run(
    cc: &str,
    inputs: &[PathBuf],
    link_flags: &[&str],
    exe: &Path,
) -> (String, i32) {
    run_tool(
        Command::new(cc)
            .args(inputs)
            .args(link_flags)
            .arg("-o")
            .arg(exe),
        &format!("native link of {}", exe.display()),
    );
    let o = Command::new(exe)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
    let code = o.status.code().unwrap_or_else(|| {
        panic!(
            "native {} died: {:?}\n{}",
            exe.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (String::from_utf8_lossy(&o.stdout).into_owned(), code)
}

/// `kiln run [--lazy] INPUTS`, by the `kiln` binary of this build.
pub(crate) fn kiln_run(lazy: bool, inputs: &[PathBuf]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("run");
    if lazy {
        cmd.arg("--lazy");
    }
    cmd.args(inputs)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kiln: {e}"))
}

/// Runs `inputs` with `kiln run` and `kiln run --lazy` and asserts each
/// prints exactly `native`'s stdout and exits with its status.
pub(crate) fn assert_kiln_matches(native: &(String, i32), inputs: &[PathBuf], tag: &str) {
    for lazy in [false, true] {
        assert_kiln_mode_matches(lazy, native, inputs, tag);
    }
}

/// Runs `inputs` with `kiln run` (`--lazy` if `lazy`) and asserts it prints
/// exactly `native`'s stdout and exits with its status.
pub(crate) fn assert_kiln_mode_matches(
    lazy: bool,
    native: &(String, i32),
    inputs: &[PathBuf],
    tag: &str,
) {
    let mode = if lazy { "--lazy" } else { "eager" };
    let o = kiln_run(lazy, inputs);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        (out.as_ref(), o.status.code()),
        (native.0.as_str(), Some(native.1)),
        "{tag} ({mode}): kiln's run differs from the native one (left: kiln). stderr:\n{err}"
    );
}

/// A C++ program's main object: constructors and destructors with
/// priorities, `atexit` handlers, an exception thrown in [`CXX_SHAPES`]
/// and caught here, virtual calls, and `main`'s arguments.
pub(crate) const CXX_SHAPES_MAIN: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
struct Shape { virtual ~Shape() {} virtual int area() const = 0; };
Shape *make(int which);
int risky(int x);
struct Log { const char *n; Log(const char *n) : n(n) { std::printf("ctor %s\n", n); }
             ~Log() { std::printf("dtor %s\n", n); } };
__attribute__((init_priority(200))) Log early("early");
Log plain("plain");
__attribute__((constructor(150))) static void first() { std::printf("constructor 150\n"); }
__attribute__((constructor)) static void later() { std::printf("constructor default\n"); }
__attribute__((destructor(150))) static void last() { std::printf("destructor 150\n"); }
__attribute__((destructor)) static void dflt() { std::printf("destructor default\n"); }
static void bye() { std::printf("atexit bye\n"); }
int main(int argc, char **argv) {
    std::atexit(bye);
    std::printf("argc %d:", argc);
    for (int i = 1; i < argc; i++) std::printf(" %s", argv[i]);
    std::printf("\n");
    int sum = 0;
    for (int i = 0; i < 3; i++) { Shape *s = make(i); sum += s->area(); delete s; }
    std::printf("areas %d\n", sum);
    try { risky(7); } catch (const std::runtime_error &e) { std::printf("caught %s\n", e.what()); }
    try { risky(-1); } catch (int v) { std::printf("caught int %d\n", v); }
    return sum % 100 + argc;
}
"#;

/// The other object of [`CXX_SHAPES_MAIN`] (and of the image tests' smaller
/// mains): the classes, the throwing function and a static destructor.
pub(crate) const CXX_SHAPES: &str = r#"
#include <cstdio>
#include <stdexcept>
struct Shape { virtual ~Shape() {} virtual int area() const = 0; };
struct Sq : Shape { int s; Sq(int s) : s(s) {} int area() const override { return s * s; } };
struct Rect : Shape { int w, h; Rect(int w, int h) : w(w), h(h) {} int area() const override { return w * h; } };
Shape *make(int which) { if (which == 1) return new Rect(3, 4); return new Sq(which + 5); }
int risky(int x) { if (x < 0) throw x; throw std::runtime_error("from b.cpp"); }
struct Late { ~Late() { std::printf("dtor late\n"); } } late;
"#;
