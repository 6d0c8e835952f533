//! C++ acceptance programs (sources in `tests/cxx/`, several objects each),
//! linked by kiln and run in-process; output and `main`'s return value must
//! equal the native build's.
//!
//! The native reference is the same sources compiled with `-fPIC`, linked
//! into a shared object and run by `tests/cxx/driver.c`, which `dlopen`s it,
//! calls `main` and `dlclose`s it: the lifecycle kiln gives an image
//! (initializers at link, finalizers and `atexit` handlers at teardown,
//! interleaved as glibc's `dlclose` does). An executable would differ in
//! one documented way: `exit()` runs every `atexit` handler before any
//! `.fini_array` entry.
//!
//! Each program also runs with `kiln run` and `kiln run --lazy` (each
//! object linked on its first call): both must print and return the same.
//!
//! Needs `g++` and `clang++`: a missing compiler fails the suite (set
//! `KILN_SKIP_MISSING_TOOLS=1` to skip those configurations locally).
//!
//! The programs:
//! - `statics_*`: constructors with `init_priority` and
//!   `constructor(N)`/`destructor(N)` across three objects, a function-local
//!   static, `atexit` from a constructor.
//! - `exc_*`: exceptions thrown in one object and caught in another, by
//!   base class, `catch (...)`, nested exceptions, `exception_ptr`, an
//!   exception from libstdc++, and one thrown by a JIT'd callback through a
//!   host frame (a Rust `extern "C-unwind"` function here) back into JIT'd code.
//! - `shapes_*`: virtual calls, `dynamic_cast` and `typeid` across objects.
//! - `tls_*`: `thread_local` variables defined in one object and used in
//!   another from `std::thread`s (sequential and concurrent), with
//!   non-trivial constructors and destructors, `.tdata` with a relocated
//!   pointer, in every TLS model (`-fPIE`: initial/local-exec; `-fPIC`:
//!   general/local-dynamic; `-mtls-dialect=gnu2`: TLSDESC).
//! - `tls_big_*`: a TLS template larger than kiln's static TLS area, so it
//!   lands in dynamic TLS: works with `-fPIC` (general-dynamic and
//!   TLSDESC), and with `-fPIE` the link fails with an error naming the
//!   variable, the object and `-fPIC`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use kiln_linker::{HostSymbols, LinkError, Linker};

mod common;

/// Serializes the runs that redirect file descriptor 1.
static STDOUT_LOCK: Mutex<()> = Mutex::new(());

fn scratch(sub: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kiln-cxx")
        .join(sub);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cxx")
}

fn run_tool(cmd: &mut Command, what: &str) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn compile(cxx: &str, src: &str, flags: &[&str], out: &Path) -> PathBuf {
    let mut cmd = Command::new(cxx);
    cmd.args(flags)
        .arg("-c")
        .arg(src_dir().join(src))
        .arg("-o")
        .arg(out);
    run_tool(&mut cmd, &format!("{cxx} {flags:?} -c {src}"));
    out.to_path_buf()
}

/// The native driver (built once per test run).
fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let exe = scratch("driver").join("driver");
        let mut cmd = Command::new("gcc");
        cmd.args(["-O1", "-fexceptions", "-rdynamic"])
            .arg(src_dir().join("driver.c"))
            .arg("-o")
            .arg(&exe)
            .arg("-ldl");
        run_tool(&mut cmd, "build driver.c");
        exe
    })
}

/// Builds `sources` as a shared object with `flags -fPIC` and runs it
/// through the driver: (stdout, exit status).
fn run_native(cxx: &str, sources: &[&str], flags: &[&str], dir: &Path) -> (String, i32) {
    let mut pic = flags.to_vec();
    pic.push("-fPIC");
    let objs: Vec<PathBuf> = sources
        .iter()
        .map(|s| compile(cxx, s, &pic, &dir.join(s.replace(".cpp", ".pic.o"))))
        .collect();
    let so = dir.join("program.so");
    let mut cmd = Command::new(cxx);
    cmd.arg("-shared").args(&objs).arg("-o").arg(&so);
    run_tool(&mut cmd, "native shared link");
    let o = Command::new(driver())
        .arg(&so)
        .output()
        .unwrap_or_else(|e| panic!("run native driver: {e}"));
    assert!(
        o.status.code().is_some(),
        "native program died: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

unsafe extern "C" {
    fn fflush(f: *mut c_void) -> c_int;
}

/// Runs `f` with fd 1 redirected to a file; returns what was written. (fd
/// rather than the C `stdout` stream: `std::cout` writes through
/// libstdc++'s own handle on the original stream.)
fn capture_stdout<R>(tag: &str, f: impl FnOnce() -> R) -> (String, R) {
    let path = scratch("capture").join(format!("{tag}.out"));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("capture file: {e}"));
    // SAFETY: fd juggling on descriptors this function owns; C stdio is
    // flushed before and after so buffered output lands where it belongs.
    let saved = unsafe {
        fflush(std::ptr::null_mut());
        let saved = libc::dup(1);
        assert!(saved >= 0 && libc::dup2(file.as_raw_fd(), 1) >= 0);
        saved
    };
    let r = f();
    // SAFETY: fd juggling on descriptors this function owns; `saved` is the
    // duplicate of the original fd 1.
    unsafe {
        fflush(std::ptr::null_mut());
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    drop(file);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    (without_harness_lines(&text), r)
}

/// fd 1 is shared with the test harness, which reports other tests (run in
/// parallel) there as whole lines: drop those from a capture.
fn without_harness_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|line| {
            let l = line.trim_end();
            !(l.starts_with("test ")
                && (l.ends_with(" ... ok")
                    || l.ends_with(" ... FAILED")
                    || l.ends_with(" ... ignored")))
        })
        .collect()
}

/// The host function the exception program calls back through: a Rust
/// frame the C++ exception must unwind through.
extern "C-unwind" fn kiln_host_invoke(cb: extern "C-unwind" fn(*mut c_void), ctx: *mut c_void) {
    cb(ctx);
}

/// Links `objs` with kiln, runs `main`, drops the image (running its
/// finalizers): (stdout, main's return value).
fn run_jit(tag: &str, objs: &[PathBuf]) -> Result<(String, i32), LinkError> {
    let mut linker = Linker::new(Default::default());
    // SAFETY: the test's own objects, whose code runs below.
    unsafe { linker.run_initializers_at_link() };
    for o in objs {
        linker.add_object_file(o)?;
    }
    let host = HostSymbols::new();
    let invoke = kiln_host_invoke as *const () as u64;
    let resolver = move |names: &[&str]| -> Vec<Option<u64>> {
        names
            .iter()
            .map(|n| {
                if *n == "kiln_host_invoke" {
                    Some(invoke)
                } else {
                    host.lookup(n)
                }
            })
            .collect()
    };
    let _lock = STDOUT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let (out, ret) = capture_stdout(tag, || -> Result<i32, LinkError> {
        let image = linker.link(&resolver)?;
        let main = image
            .symbol("main")
            .unwrap_or_else(|| panic!("{tag}: main not defined"));
        let argv0 = CString::new(tag).unwrap_or_default();
        let mut argv: Vec<*mut c_char> = vec![argv0.as_ptr().cast_mut(), std::ptr::null_mut()];
        // SAFETY: `main` is the linked program's `int main(int, char **)`;
        // argv is NULL-terminated and outlives the call.
        let main: extern "C-unwind" fn(c_int, *mut *mut c_char) -> c_int =
            unsafe { std::mem::transmute(main as usize) };
        let r = main(1, argv.as_mut_ptr());
        drop(image); // finalizers print too
        Ok(r)
    });
    Ok((out, ret?))
}

fn check(program: &str, sources: &[&str], cxx: &str, flags: &[&str], must_contain: &str) {
    if !common::need_tool(cxx) {
        return;
    }
    let tag = format!("{program}-{cxx}{}", flags.join("").replace(['=', ' '], "_"));
    let dir = scratch(&tag);
    let (native_out, native_ret) = run_native(cxx, sources, flags, &dir);
    assert!(
        native_out.contains(must_contain),
        "{tag}: native program did not run as expected:\n{native_out}"
    );
    let objs: Vec<PathBuf> = sources
        .iter()
        .map(|s| compile(cxx, s, flags, &dir.join(s.replace(".cpp", ".o"))))
        .collect();
    for obj in &objs {
        hint_bounds_the_graph(&tag, obj);
    }
    let (jit_out, jit_ret) =
        run_jit(&tag, &objs).unwrap_or_else(|e| panic!("{tag}: link failed: {e}"));
    assert_eq!(
        jit_out, native_out,
        "{tag}: output differs from the native build"
    );
    assert_eq!(jit_ret, native_ret, "{tag}: main's return value differs");
    check_lazy(&tag, cxx, &objs, &dir);
}

/// The size hint read from an object's headers (counting `.eh_frame`'s
/// records by its relocations) bounds the graph parsed from it: the
/// link's arrays are allocated once.
fn hint_bounds_the_graph(tag: &str, obj: &Path) {
    let bytes = std::fs::read(obj).unwrap_or_else(|e| panic!("{}: {e}", obj.display()));
    let hint = kiln_linker::elf::size_hint(&bytes);
    let graph = kiln_linker::elf::parse_object("o.o", &bytes)
        .unwrap_or_else(|e| panic!("{tag}: {}: {e}", obj.display()));
    assert!(
        hint.blocks >= graph.blocks.len() && hint.symbols >= graph.symbols.len(),
        "{tag}: {}: hint {hint:?}, parsed {} blocks, {} symbols",
        obj.display(),
        graph.blocks.len(),
        graph.symbols.len()
    );
}

/// `kiln run --lazy` prints and returns what the native executable of
/// `objs` does (both tear down like an executable, where the reference of
/// [`check`] is a `dlclose`d library). The host function the exception
/// program calls comes from a C object here.
fn check_lazy(tag: &str, cxx: &str, objs: &[PathBuf], dir: &Path) {
    let mut inputs = objs.to_vec();
    let shim = dir.join("host_invoke.c");
    std::fs::write(
        &shim,
        "void kiln_host_invoke(void (*cb)(void *), void *ctx) { cb(ctx); }\n",
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", shim.display()));
    let shim_o = dir.join("host_invoke.o");
    run_tool(
        Command::new("gcc")
            .args(["-O2", "-fPIC", "-fexceptions", "-c"])
            .arg(&shim)
            .arg("-o")
            .arg(&shim_o),
        "compile host_invoke.c",
    );
    inputs.push(shim_o);
    let exe = dir.join("program");
    run_tool(
        Command::new(cxx)
            .args(&inputs)
            .args(["-pthread", "-o"])
            .arg(&exe),
        "native link",
    );
    let native = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{tag}: run the native program: {e}"));
    let native_out = String::from_utf8_lossy(&native.stdout).into_owned();
    let native_status = native.status.code().unwrap_or(-1);
    let (lazy_out, lazy_status, lazy_err) = common::run_kiln(true, &inputs, &[], &[]);
    assert_eq!(
        lazy_out, native_out,
        "{tag}: kiln run --lazy prints otherwise than the native executable\n{lazy_err}"
    );
    assert_eq!(
        lazy_status, native_status,
        "{tag}: kiln run --lazy returns otherwise than the native executable\n{lazy_err}"
    );
}

/// kiln attaches the process's main thread to its static TLS area before
/// `main` (an `.init_array` entry of the linker crate), also when the crate
/// is linked as a library like here, so initial-exec TLS values are right
/// when a host calls JIT'd code from its main thread.
fn main_thread_is_attached_before_main() {
    let main_thread = std::process::id() as i32;
    let unattached = kiln_linker::runtime::tls::unattached_threads();
    assert!(
        !unattached.contains(&main_thread),
        "main thread {main_thread} unattached: {unattached:?}"
    );
}

const STATICS: &[&str] = &["statics_a.cpp", "statics_b.cpp", "statics_main.cpp"];
const EXC: &[&str] = &["exc_lib.cpp", "exc_main.cpp"];
const SHAPES: &[&str] = &["shapes_impl.cpp", "shapes_main.cpp"];
const TLS: &[&str] = &["tls_defs.cpp", "tls_main.cpp"];
const TLS_BIG: &[&str] = &["tls_big_defs.cpp", "tls_big_main.cpp"];

/// One configuration: name, sources, compiler, flags, a line the output must contain.
type Config = (
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static [&'static str],
    &'static str,
);

macro_rules! acceptance {
    ($($name:ident: $sources:expr, $cxx:expr, [$($flag:expr),*], $expect:expr;)*) => {
        /// Every acceptance configuration, in order.
        const CONFIGS: &[Config] = &[$((stringify!($name), $sources, $cxx, &[$($flag),*], $expect)),*];
    };
}

/// The whole suite is one test, run sequentially: programs' output is
/// captured from fd 1 (`std::cout` writes through libstdc++'s own handle on
/// the original stream), and the test harness reports other tests on fd 1 —
/// with a single test, nothing else reports while a program runs. Every
/// configuration runs; the failures are listed together.
#[test]
fn cxx_acceptance_programs() {
    let mut failures = Vec::new();
    let mut run = |name: &str, f: &dyn Fn()| {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{name}: {msg}"));
        }
    };
    run(
        "main_thread_is_attached_before_main",
        &main_thread_is_attached_before_main,
    );
    run(
        "tls_too_large_for_static_tls_is_a_named_error",
        &tls_too_large_for_static_tls_is_a_named_error,
    );
    for &(name, sources, cxx, flags, expect) in CONFIGS {
        run(name, &|| check(name, sources, cxx, flags, expect));
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

acceptance! {
    statics_gxx_o0: STATICS, "g++", ["-O0"], "destructor(150) in a";
    statics_gxx_o2: STATICS, "g++", ["-O2"], "destructor(150) in a";
    statics_gxx_o2_pic: STATICS, "g++", ["-O2", "-fPIC"], "destructor(150) in a";
    statics_clangxx_o2: STATICS, "clang++", ["-O2"], "destructor(150) in a";
    exceptions_gxx_o0: EXC, "g++", ["-O0"], "caught across the host";
    exceptions_gxx_o2: EXC, "g++", ["-O2"], "caught across the host";
    exceptions_gxx_o2_pic: EXC, "g++", ["-O2", "-fPIC"], "caught across the host";
    exceptions_clangxx_o2: EXC, "clang++", ["-O2"], "caught across the host";
    virtual_gxx_o0: SHAPES, "g++", ["-O0"], "total area 34.00";
    virtual_gxx_o2: SHAPES, "g++", ["-O2"], "total area 34.00";
    virtual_clangxx_o2: SHAPES, "clang++", ["-O2"], "total area 34.00";
    tls_gxx_o0_initial_exec: TLS, "g++", ["-O0"], "counters constructed=12";
    tls_gxx_o2_initial_exec: TLS, "g++", ["-O2"], "counters constructed=12";
    tls_gxx_o2_pic_general_dynamic: TLS, "g++", ["-O2", "-fPIC"], "counters constructed=12";
    tls_gxx_o2_pic_tlsdesc: TLS, "g++", ["-O2", "-fPIC", "-mtls-dialect=gnu2"], "counters constructed=12";
    tls_clangxx_o2_initial_exec: TLS, "clang++", ["-O2"], "counters constructed=12";
    tls_clangxx_o2_pic_general_dynamic: TLS, "clang++", ["-O2", "-fPIC"], "counters constructed=12";
    tls_dynamic_gxx_o2_pic: TLS_BIG, "g++", ["-O2", "-fPIC"], "main: still checksum 7 marker 7";
    tls_dynamic_gxx_o2_pic_tlsdesc: TLS_BIG, "g++", ["-O2", "-fPIC", "-mtls-dialect=gnu2"], "main: still checksum 7 marker 7";
}

/// A TLS template too large for kiln's static area, accessed with the
/// initial-exec/local-exec models (`-fPIE`): the link must fail with an
/// error naming a variable, its object and the flag that avoids it.
fn tls_too_large_for_static_tls_is_a_named_error() {
    let dir = scratch("tls-big-pie");
    let objs: Vec<PathBuf> = TLS_BIG
        .iter()
        .map(|s| {
            compile(
                "g++",
                s,
                &["-O2", "-fPIE"],
                &dir.join(s.replace(".cpp", ".o")),
            )
        })
        .collect();
    let err = match run_jit("tls-big-pie", &objs) {
        Ok((out, _)) => panic!("linked and ran, but must not:\n{out}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("big_marker") || err.contains("big_buffer"),
        "names the variable: {err}"
    );
    assert!(err.contains("tls_big_"), "names the object: {err}");
    assert!(err.contains("-fPIC"), "names the flag: {err}");
}
