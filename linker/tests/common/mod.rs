//! Helpers shared by the integration tests: compile C with the system
//! compiler, run the native build, link with kiln and run in-process with
//! stdout captured.
#![allow(dead_code)]

pub(crate) mod images;
pub(crate) mod lua;
pub(crate) mod parked;

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use kiln_linker::{HostSymbols, LinkError, Linker};

pub(crate) mod c_libraries;
pub(crate) mod programs;

/// Serializes tests that redirect file descriptor 1.
pub(crate) static STDOUT_LOCK: Mutex<()> = Mutex::new(());

/// Serializes the tests of a test binary in which one checks that released
/// memory is unmapped: another test's allocation could map the released
/// range again meanwhile. Every test of such a binary holds it.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether to run the test `name` here: `true` in a process of its own
/// (this test binary again, only that test, one thread); `false` in the
/// harness's process, after running it so and asserting it passed. For a
/// test that checks released memory is unmapped, in a binary whose other
/// tests may allocate meanwhile: `if !in_own_process("name") { return; }`.
pub(crate) fn in_own_process(name: &str) -> bool {
    const ALONE: &str = "KILN_TEST_IN_OWN_PROCESS";
    if std::env::var(ALONE).as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let o = Command::new(exe)
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(ALONE, name)
        .output()
        .expect("run the test in a process of its own");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("1 passed"),
        "{name}, in a process of its own: {:?}\nstdout:\n{out}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    false
}

/// Scratch directory for objects and executables.
pub(crate) fn scratch(sub: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kiln-linker")
        .join(sub);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// The C sources of the tests.
pub(crate) fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c")
}

/// Set to `1` to let tests whose tool is missing skip instead of fail —
/// for local runs only; CI (`scripts/test`) installs every tool and never
/// sets it.
pub(crate) const SKIP_MISSING_TOOLS: &str = "KILN_SKIP_MISSING_TOOLS";

/// The Debian package that provides `tool`.
fn package_of(tool: &str) -> &str {
    match tool {
        "clang" | "clang++" => "clang",
        "aarch64-linux-gnu-gcc" => "gcc-aarch64-linux-gnu",
        "qemu-aarch64-static" => "qemu-user-static",
        "ar" => "binutils",
        "perf" => "linux-perf",
        other => other,
    }
}

/// Checks that `tool` runs (`tool --version`) before a test that needs it.
/// A missing tool fails the test, naming the package to install; only with
/// [`SKIP_MISSING_TOOLS`]`=1` does it print a note and return `false`, and
/// the caller returns (skipped). Every test that runs an external tool
/// calls this first.
pub(crate) fn need_tool(tool: &str) -> bool {
    let works = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return true;
    }
    let install = format!("apt-get install -y {}", package_of(tool));
    if std::env::var(SKIP_MISSING_TOOLS).is_ok_and(|v| v == "1") {
        eprintln!("note: skipped, {tool} is not installed ({install}; {SKIP_MISSING_TOOLS}=1)");
        return false;
    }
    panic!(
        "{tool} is not installed, and this test needs it ({install}, or set \
         {SKIP_MISSING_TOOLS}=1 to skip such tests locally)"
    );
}

/// Compile `src` to an object with `cc flags -c`.
pub(crate) fn compile(
    cc: &str,
    src: &Path,
    flags: &[&str],
    include: &[&Path],
    out: &Path,
) -> PathBuf {
    // Written under a name of its own and renamed into place: tests that
    // run at once share scratch directories, and one compiling `out` while
    // another reads it handed the reader half an object.
    let tmp = unique_beside(out);
    let mut cmd = Command::new(cc);
    cmd.args(flags)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&tmp)
        .arg("-w");
    for i in include {
        cmd.arg("-I").arg(i);
    }
    let o = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {cc}: {e} (apt-get install -y {})",
            package_of(cc)
        )
    });
    assert!(
        o.status.success(),
        "{cc} {flags:?} {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::rename(&tmp, out).unwrap_or_else(|e| panic!("rename to {}: {e}", out.display()));
    out.to_path_buf()
}

/// A path beside `path` that no other thread or process of the tests uses.
pub(crate) fn unique_beside(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` under a name of its own first, then renames it
/// into place: a reader (a compiler of another test) never sees it half
/// written.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = unique_beside(path);
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Write C source text `src` to `<dir>/<name>.c` and compile it with
/// `gcc flags -c` into `<dir>/<name>.o`.
pub(crate) fn compile_c_text(dir: &Path, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    compile_c_text_with("gcc", dir, name, src, flags)
}

/// [`compile_c_text`] with the compiler `cc`.
pub(crate) fn compile_c_text_with(
    cc: &str,
    dir: &Path,
    name: &str,
    src: &str,
    flags: &[&str],
) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    write_atomically(&c, src.as_bytes());
    compile(cc, &c, flags, &[], &dir.join(format!("{name}.o")))
}

/// Compile each of `srcs` (file names in `tests/c`) with `cc flags -c` into
/// `dir`, as `<stem>.o`.
pub(crate) fn compile_sources(cc: &str, srcs: &[&str], flags: &[&str], dir: &Path) -> Vec<PathBuf> {
    srcs.iter()
        .map(|src| {
            let stem = Path::new(src).file_stem().expect("source file name");
            let out = dir.join(stem).with_extension("o");
            compile(cc, &c_dir().join(src), flags, &[], &out)
        })
        .collect()
}

/// Build `objs` natively with `cc flags` into `exe` (linking `native_libs`)
/// and run it, checking its stdout contains `native_marker` (the program
/// really ran); then link them with kiln (loading `jit_libs`) and run `main`
/// in-process. Asserts both print the same and return the same, naming
/// `tag` on failure. Returns the native (stdout, exit code).
pub(crate) fn assert_jit_matches_native(
    cc: &str,
    objs: &[PathBuf],
    flags: &[&str],
    (native_libs, jit_libs): (&[&str], &[&str]),
    exe: &Path,
    native_marker: &str,
    tag: &str,
) -> (String, i32) {
    let (native_out, native_ret) = run_native(cc, objs, flags, native_libs, exe);
    assert!(
        native_out.contains(native_marker),
        "{tag}: native run lacks {native_marker:?}: {native_out}"
    );
    let (jit_out, jit_ret) = run_jit(objs, jit_libs, &[]).unwrap_or_else(|e| panic!("{tag}: {e}"));
    assert_eq!(jit_out, native_out, "{tag}: output differs");
    assert_eq!(jit_ret, native_ret, "{tag}: return value differs");
    assert_lazy_run_matches(objs, jit_libs, (&native_out, native_ret), tag);
    (native_out, native_ret)
}

/// Runs `kiln run [--lazy] --stats OBJS -l LIBS -- ARGS` (the first
/// object's path is the program's name): (stdout, exit status, stderr).
pub(crate) fn run_kiln(
    lazy: bool,
    objs: &[PathBuf],
    libs: &[&str],
    args: &[&str],
) -> (String, i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("run").arg("--stats");
    if lazy {
        cmd.arg("--lazy");
    }
    cmd.args(objs);
    for l in libs {
        cmd.args(["-l", l]);
    }
    let o = cmd
        .arg("--")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kiln: {e}"));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `objs` with `kiln run --lazy` (each object linked on its first
/// call) and asserts it prints and returns `expected`, naming `tag`.
pub(crate) fn assert_lazy_run_matches(
    objs: &[PathBuf],
    libs: &[&str],
    (expected_out, expected_status): (&str, i32),
    tag: &str,
) {
    let (out, status, stderr) = run_kiln(true, objs, libs, &[]);
    assert_eq!(out, expected_out, "{tag} --lazy: output differs\n{stderr}");
    assert_eq!(
        status, expected_status,
        "{tag} --lazy: exit status differs\n{stderr}"
    );
    assert!(
        stderr.contains("lazy reentries"),
        "{tag} --lazy: not run lazily\n{stderr}"
    );
}

/// `prog_a.c` (with `-fcommon`) and `prog_b.c`, compiled by gcc at `-O2`
/// into `dir`: the two-object C program several tests link.
pub(crate) fn compile_prog_ab(dir: &Path) -> (PathBuf, PathBuf) {
    let a = compile(
        "gcc",
        &c_dir().join("prog_a.c"),
        &["-O2", "-fcommon"],
        &[],
        &dir.join("a.o"),
    );
    let b = compile(
        "gcc",
        &c_dir().join("prog_b.c"),
        &["-O2"],
        &[],
        &dir.join("b.o"),
    );
    (a, b)
}

/// Link `objs` natively into an executable and run it: (stdout, exit code).
pub(crate) fn run_native(
    cc: &str,
    objs: &[PathBuf],
    flags: &[&str],
    libs: &[&str],
    exe: &Path,
) -> (String, i32) {
    let mut cmd = Command::new(cc);
    cmd.args(flags).args(objs).arg("-o").arg(exe);
    for l in libs {
        cmd.arg(format!("-l{l}"));
    }
    if flags.contains(&"-fno-pie") {
        cmd.arg("-no-pie");
    }
    let o = cmd.output().expect("run linker");
    assert!(
        o.status.success(),
        "native link: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(exe).output().expect("run native program");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

unsafe extern "C" {
    /// The C library's `stdout` stream pointer.
    static mut stdout: *mut c_void;
    fn fopen(path: *const std::ffi::c_char, mode: *const std::ffi::c_char) -> *mut c_void;
    fn fclose(f: *mut c_void) -> i32;
    fn fflush(f: *mut c_void) -> i32;
}

/// Run `f` with the C library's `stdout` stream pointed at a file; return
/// what was written. (The test harness keeps writing its own progress to fd
/// 1, so the stream is swapped rather than the descriptor.)
pub(crate) fn capture_stdout<R>(f: impl FnOnce() -> R) -> (String, R) {
    let _guard = STDOUT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let path = scratch("capture").join(format!("out-{:?}.txt", std::thread::current().id()));
    let cpath = std::ffi::CString::new(path.display().to_string()).expect("path");
    // SAFETY: stdio calls on a stream this function owns; `stdout` is only
    // swapped while STDOUT_LOCK is held, and restored before it is released.
    let saved = unsafe {
        let file = fopen(cpath.as_ptr(), c"w".as_ptr());
        assert!(!file.is_null(), "open capture file");
        fflush(std::ptr::null_mut());
        let saved = stdout;
        stdout = file;
        saved
    };
    let r = f();
    // SAFETY: `stdout` is swapped only while STDOUT_LOCK is held; the
    // capture stream is flushed, closed and replaced by the original.
    unsafe {
        let file = stdout;
        fflush(file);
        stdout = saved;
        fclose(file);
    }
    (std::fs::read_to_string(&path).unwrap_or_default(), r)
}

/// Link `objs` (objects and archives) with kiln and run `main(argc, argv)`
/// in-process with stdout captured: (stdout, return value).
pub(crate) fn run_jit(
    objs: &[PathBuf],
    libs: &[&str],
    args: &[&str],
) -> Result<(String, i32), LinkError> {
    run_jit_with(objs, libs, args, kiln_linker::LinkOptions::default())
}

/// [`run_jit`] with explicit link options.
pub(crate) fn run_jit_with(
    objs: &[PathBuf],
    libs: &[&str],
    args: &[&str],
    options: kiln_linker::LinkOptions,
) -> Result<(String, i32), LinkError> {
    let mut linker = Linker::new(options);
    // SAFETY: the test's own objects, whose code runs below.
    unsafe { linker.run_initializers_at_link() };
    for o in objs {
        linker.add_file(o)?;
    }
    let mut host = HostSymbols::new();
    for l in libs {
        // SAFETY: the system libraries the tests' programs use.
        unsafe { host.load_library(l, &[]) }?;
    }
    // Link, run and drop (finalizers print too) inside one capture: the
    // image may hold a copy of `stdout` (non-PIE code) taken at link time.
    let (out, ret) = capture_stdout(|| -> Result<i32, LinkError> {
        let img = linker.link(&host)?;
        let main = img.symbol("main").expect("main defined");
        let argv0 = objs
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut cargs: Vec<std::ffi::CString> = std::iter::once(argv0.as_str())
            .chain(args.iter().copied())
            .map(|a| std::ffi::CString::new(a).expect("no NUL"))
            .collect();
        let mut argv: Vec<*mut i8> = cargs.iter_mut().map(|c| c.as_ptr() as *mut i8).collect();
        argv.push(std::ptr::null_mut());
        // SAFETY: `main` is the linked program's `int main(int, char **)`;
        // argv is NUL-terminated and outlives the call.
        let main: extern "C" fn(i32, *mut *mut i8) -> i32 =
            unsafe { std::mem::transmute(main as usize) };
        let r = main(cargs.len() as i32, argv.as_mut_ptr());
        drop(img);
        Ok(r)
    });
    Ok((out, ret?))
}

/// xorshift64*: small, deterministic pseudo-random picks for the mutation
/// tests (the seed is the state; the same seed gives the same mutants).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A pick in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Flips one to five bits of `v` at random places (`v` not empty).
    pub(crate) fn flip_bits(&mut self, v: &mut [u8]) {
        for _ in 0..=self.below(4) {
            let at = self.below(v.len());
            v[at] ^= 1 << self.below(8);
        }
    }
}

/// An error and its sources, one line each.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push('\n');
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
