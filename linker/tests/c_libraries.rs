//! SQLite, zstd, mimalloc, liblzma (xz), zlib and bzip2 — real programs
//! kiln's authors did not write — built from their C sources (see
//! `common/c_libraries.rs`) with small drivers (`tests/c/sqlite_driver.c`,
//! `zstd_driver.c`, `mimalloc_driver.c`, `xz_driver.c`, `zlib_driver.c`;
//! bzip2 is its own command-line program), run every
//! way kiln runs code, with stdout and exit status equal to the native
//! build's:
//!
//! - x86-64: `kiln run` (eager), `kiln run --lazy`, `kiln image save` in
//!   one process and `kiln run IMAGE.kimg` in another, and the C loader
//!   (`linker/loader`, `kiln-load IMAGE.kimg`);
//! - aarch64: an image saved by kiln on this machine and run by the aarch64
//!   C loader under qemu, against the native aarch64 build under qemu;
//! - in this process: zstd's objects added one by one to a builder JIT (the
//!   objects each lookup needs linked together) and its API called; and
//!   mimalloc's, eager and lazy, called from the host's own threads.
//!
//! Each configuration is compiled once, by the one test that uses it.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::c_libraries::{
    build_bzip2, build_mimalloc, build_sqlite, build_xz, build_zlib, build_zstd,
};
use common::images::{QEMU, c_loader, kiln, qemu, save, show};
use common::*;

const AARCH64_CC: &str = "aarch64-linux-gnu-gcc";
/// `EM_AARCH64`, the image's ELF machine.
const EM_AARCH64: u8 = 183;

/// A finished program's (stdout, exit status).
fn result(o: &Output) -> (String, i32) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

/// Runs `objs` (x86-64) natively, with `kiln run` eager and `--lazy`, from
/// an image saved by `kiln image save` and run by `kiln run IMAGE` and by
/// `kiln-load IMAGE`: every run prints and returns what the native build
/// does, and the native output contains `marker`.
fn check_x86_64(cc: &str, objs: &[PathBuf], flags: &[&str], marker: &str, tag: &str) {
    let dir = scratch(&format!("c-libraries-{tag}"));
    let native = run_native(cc, objs, flags, &["m"], &dir.join("native"));
    assert!(
        native.0.contains(marker),
        "{tag}: native run lacks {marker:?}:\n{}",
        native.0
    );
    let (out, status, stderr) = run_kiln(false, objs, &[], &[]);
    assert_eq!((out, status), native, "{tag}: kiln run (eager)\n{stderr}");
    assert_lazy_run_matches(objs, &[], (&native.0, native.1), tag);

    let image = dir.join("prog.kimg");
    save(&image, objs);
    let k = kiln().arg("run").arg(&image).output().expect("kiln runs");
    assert_eq!(result(&k), native, "{tag}: kiln run IMAGE\n{}", show(&k));
    let l = Command::new(c_loader("x86_64"))
        .arg(&image)
        .output()
        .expect("kiln-load runs");
    assert_eq!(result(&l), native, "{tag}: kiln-load IMAGE\n{}", show(&l));
    assert!(l.stderr.is_empty(), "{tag}: kiln-load said\n{}", show(&l));
}

/// Links aarch64 `objs` natively and saves them as a kiln image (the target
/// taken from the objects); runs the native build and the aarch64
/// `kiln-load IMAGE` under qemu and demands the same stdout and exit status.
fn check_aarch64(objs: &[PathBuf], marker: &str, tag: &str) {
    let dir = scratch(&format!("c-libraries-aarch64-{tag}"));
    let exe = dir.join("native");
    let o = Command::new(AARCH64_CC)
        .args(["-O2", "-fPIE"])
        .args(objs)
        .arg("-o")
        .arg(&exe)
        .arg("-lm")
        .output()
        .expect("aarch64 gcc runs");
    assert!(o.status.success(), "{tag}: native link: {}", show(&o));
    let native = result(&qemu::<&str>(&exe, &[]));
    assert!(
        native.0.contains(marker),
        "{tag}: native run lacks {marker:?}:\n{}",
        native.0
    );

    let image = dir.join("prog.kimg");
    save(&image, objs);
    let bytes = std::fs::read(&image).expect("read the image");
    assert_eq!(bytes.get(18), Some(&EM_AARCH64), "{tag}: ELF e_machine");
    let l = qemu(c_loader("aarch64"), &[&image]);
    assert_eq!(
        result(&l),
        native,
        "{tag}: kiln-load under qemu\n{}",
        show(&l)
    );
    assert!(l.stderr.is_empty(), "{tag}: kiln-load said\n{}", show(&l));
}

/// What each driver prints when its checks pass.
const ZSTD_OK: &str = "streaming level 5 with checksum";
const SQLITE_OK: &str = "cte: fib=13,610,28657,1346269,63245986";
const MIMALLOC_OK: &str = "mimalloc: ok";
const XZ_OK: &str = "xz: ok";
const ZLIB_OK: &str = "zlib: ok";

#[test]
fn zstd_from_gcc_runs_eager_lazy_and_from_images() {
    if !need_tool("gcc") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_zstd("gcc", &flags, "gcc-O2-fPIE");
    check_x86_64("gcc", &objs, &flags, ZSTD_OK, "zstd-gcc");
}

#[test]
fn zstd_from_clang_runs_eager_lazy_and_from_images() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_zstd("clang", &flags, "clang-O2-fPIE");
    check_x86_64("clang", &objs, &flags, ZSTD_OK, "zstd-clang");
}

#[test]
fn sqlite_from_gcc_runs_eager_lazy_and_from_images() {
    if !need_tool("gcc") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_sqlite("gcc", false, &flags, "gcc-O2-fPIE");
    check_x86_64("gcc", &objs, &flags, SQLITE_OK, "sqlite-gcc");
}

/// Thread-safe SQLite: its mutexes are the host's pthread ones.
#[test]
fn threadsafe_sqlite_from_clang_fpic_runs_eager_lazy_and_from_images() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIC"];
    let objs = build_sqlite("clang", true, &flags, "clang-O2-fPIC");
    check_x86_64("clang", &objs, &flags, SQLITE_OK, "sqlite-clang-fPIC");
}

#[test]
fn zstd_runs_from_an_aarch64_image_under_qemu() {
    if !(need_tool(AARCH64_CC) && need_tool(QEMU)) {
        return;
    }
    let objs = build_zstd(AARCH64_CC, &["-O2", "-fPIE"], "aarch64-gcc-O2-fPIE");
    check_aarch64(&objs, ZSTD_OK, "zstd");
}

#[test]
fn sqlite_runs_from_an_aarch64_image_under_qemu() {
    if !(need_tool(AARCH64_CC) && need_tool(QEMU)) {
        return;
    }
    let objs = build_sqlite(AARCH64_CC, false, &["-O2", "-fPIE"], "aarch64-gcc-O2-fPIE");
    check_aarch64(&objs, SQLITE_OK, "sqlite");
}

/// liblzma's multithreaded encoder: worker threads that the JIT'd code
/// starts run JIT'd code (under `--lazy`, their first calls go through
/// lazy stubs on several threads at once), meeting on its mutexes and
/// condition variables; its output and the round trips equal the native
/// build's.
#[test]
fn xz_from_gcc_runs_eager_lazy_and_from_images() {
    if !need_tool("gcc") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_xz("gcc", &flags, "gcc-O2-fPIE");
    check_x86_64("gcc", &objs, &flags, XZ_OK, "xz-gcc");
}

#[test]
fn xz_from_clang_fpic_runs_eager_lazy_and_from_images() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIC"];
    let objs = build_xz("clang", &flags, "clang-O2-fPIC");
    check_x86_64("clang", &objs, &flags, XZ_OK, "xz-clang-fPIC");
}

#[test]
fn xz_runs_from_an_aarch64_image_under_qemu() {
    if !(need_tool(AARCH64_CC) && need_tool(QEMU)) {
        return;
    }
    let objs = build_xz(AARCH64_CC, &["-O2", "-fPIE"], "aarch64-gcc-O2-fPIE");
    check_aarch64(&objs, XZ_OK, "xz");
}

/// zlib, with its gzip file functions (`gzprintf`'s varargs, a temporary
/// file's descriptor): gcc `-O0` and clang `-O2 -fPIE`.
#[test]
fn zlib_runs_eager_lazy_and_from_images() {
    if !(need_tool("gcc") && need_tool("clang")) {
        return;
    }
    for (cc, flags) in [("gcc", ["-O0", "-fPIE"]), ("clang", ["-O2", "-fPIE"])] {
        let tag = format!("{cc}{}", flags.concat());
        let objs = build_zlib(cc, &flags, &tag);
        check_x86_64(cc, &objs, &flags, ZLIB_OK, &format!("zlib-{tag}"));
    }
}

#[test]
fn zlib_runs_from_an_aarch64_image_under_qemu() {
    if !(need_tool(AARCH64_CC) && need_tool(QEMU)) {
        return;
    }
    let objs = build_zlib(AARCH64_CC, &["-O2", "-fPIE"], "aarch64-gcc-O2-fPIE");
    check_aarch64(&objs, ZLIB_OK, "zlib");
}

/// zstd's objects added one by one to a builder JIT and its API called in
/// this process: the objects one lookup needs link together (fewer links
/// than objects: the layer's batches), and a round trip gives the input
/// back.
#[test]
fn zstd_added_object_by_object_round_trips_in_process() {
    if !need_tool("gcc") {
        return;
    }
    let objs = build_zstd("gcc", &["-O2", "-fPIC"], "gcc-O2-fPIC-in-process");
    let jit = kiln_linker::Jit::builder().build().expect("a JIT");
    let mut added = 0;
    for o in objs.iter().filter(|o| !o.ends_with("zstd_driver.o")) {
        let bytes = std::fs::read(o).expect("read object");
        let name = o.file_name().unwrap_or_default().to_string_lossy();
        jit.add_object_named(&name, &bytes)
            .expect("adds the object");
        added += 1;
    }
    type Bound = extern "C" fn(usize) -> usize;
    type Compress = unsafe extern "C" fn(*mut u8, usize, *const u8, usize, i32) -> usize;
    type Decompress = unsafe extern "C" fn(*mut u8, usize, *const u8, usize) -> usize;
    type IsError = extern "C" fn(usize) -> u32;
    // SAFETY: the signatures of zstd.h.
    let (bound, compress, decompress, is_error) = unsafe {
        (
            jit.get::<Bound>("ZSTD_compressBound")
                .expect("ZSTD_compressBound"),
            jit.get::<Compress>("ZSTD_compress").expect("ZSTD_compress"),
            jit.get::<Decompress>("ZSTD_decompress")
                .expect("ZSTD_decompress"),
            jit.get::<IsError>("ZSTD_isError").expect("ZSTD_isError"),
        )
    };
    let input: Vec<u8> = (0..300_000u32)
        .flat_map(|i| format!("{} ", i % 977).into_bytes())
        .take(1 << 20)
        .collect();
    let mut packed = vec![0u8; bound(input.len())];
    // SAFETY: each buffer is valid for the length given with it.
    let n = unsafe {
        compress(
            packed.as_mut_ptr(),
            packed.len(),
            input.as_ptr(),
            input.len(),
            3,
        )
    };
    assert_eq!(is_error(n), 0, "ZSTD_compress failed: {n}");
    assert!(n < input.len() / 4, "{n} bytes from {}", input.len());
    let mut out = vec![0u8; input.len()];
    // SAFETY: `out` is valid for `out.len()` bytes; `packed` holds the `n`
    // bytes `ZSTD_compress` wrote.
    let m = unsafe { decompress(out.as_mut_ptr(), out.len(), packed.as_ptr(), n) };
    assert_eq!(is_error(m), 0, "ZSTD_decompress failed: {m}");
    assert!(out[..m] == input[..], "the round trip changed the data");
    let links = jit.layer().stats().1;
    assert!(
        links < added,
        "{links} links for {added} objects: nothing linked together"
    );
}

/// mimalloc: thread-local heaps, frees from other threads, its own
/// `pthread` key and constructor. gcc's `-fPIE` reaches `stdout` directly
/// (it assumes a copy relocation): its images hold PC32 imports.
#[test]
fn mimalloc_from_gcc_runs_eager_lazy_and_from_images() {
    if !need_tool("gcc") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_mimalloc("gcc", &flags, "gcc-O2-fPIE");
    check_x86_64("gcc", &objs, &flags, MIMALLOC_OK, "mimalloc-gcc");
}

#[test]
fn mimalloc_from_clang_runs_eager_lazy_and_from_images() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_mimalloc("clang", &flags, "clang-O2-fPIE");
    check_x86_64("clang", &objs, &flags, MIMALLOC_OK, "mimalloc-clang");
}

/// gcc 12 compiles aarch64 atomics to calls of libgcc's outline-atomic
/// helpers (`-moutline-atomics`, its default): `__aarch64_cas8_acq_rel`
/// and the like, which only the static libgcc has. The image imports them
/// by name, and the C loader binds them to its own copies.
#[test]
fn mimalloc_runs_from_an_aarch64_image_under_qemu() {
    if !(need_tool(AARCH64_CC) && need_tool(QEMU)) {
        return;
    }
    let objs = build_mimalloc(AARCH64_CC, &["-O2", "-fPIE"], "aarch64-gcc-O2-fPIE");
    check_aarch64(&objs, MIMALLOC_OK, "mimalloc");
}

use kiln_linker::jit::Func;

type Malloc = extern "C" fn(usize) -> *mut u8;
type Free = extern "C" fn(*mut u8);

/// mimalloc in a host's JIT (`Jit::builder`, eager and lazy): the host's
/// own threads — which existed before the link, none attached to kiln's
/// TLS area — call `mi_malloc` and free each other's blocks, as a plugin
/// host calls a C library it loaded. Every block keeps its bytes until it
/// is freed, and a block freed on another thread is reused.
#[test]
fn mimalloc_in_a_builder_jit_serves_the_hosts_threads() {
    if !need_tool("gcc") {
        return;
    }
    let objs = build_mimalloc("gcc", &["-O2", "-fPIC"], "gcc-O2-fPIC-jit");
    const THREADS: usize = 4;
    const BLOCKS: usize = 5_000;
    // Started before anything is linked.
    let start = std::sync::Barrier::new(THREADS + 1);
    let freed = std::sync::Barrier::new(THREADS);
    for lazy in [false, true] {
        let jit = kiln_linker::Jit::builder()
            .lazy(lazy)
            .build()
            .expect("a JIT");
        let calls: std::sync::OnceLock<(Func<Malloc>, Func<Free>)> = std::sync::OnceLock::new();
        let blocks: Vec<std::sync::Mutex<Vec<usize>>> =
            (0..THREADS).map(|_| Default::default()).collect();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (start, freed, calls, blocks) = (&start, &freed, &calls, &blocks);
                s.spawn(move || {
                    start.wait();
                    let (malloc, free) = calls.get().expect("looked up");
                    let mut mine = Vec::with_capacity(BLOCKS);
                    for i in 0..BLOCKS {
                        let n = 1 + (i * 7919 + t * 104_729) % 3000;
                        let p = malloc(n);
                        assert!(!p.is_null(), "mi_malloc({n}) on thread {t}");
                        // SAFETY: `p` is a fresh block of `n` bytes.
                        unsafe { std::ptr::write_bytes(p, (t + i) as u8, n) };
                        mine.push((p as usize, n, (t + i) as u8));
                    }
                    for &(p, n, v) in &mine {
                        // SAFETY: a live block of `n` bytes this thread wrote.
                        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
                        assert!(bytes.iter().all(|&b| b == v), "block of {n} bytes changed");
                    }
                    *blocks[t].lock().expect("lock") = mine.iter().map(|b| b.0).collect();
                    freed.wait();
                    let theirs =
                        std::mem::take(&mut *blocks[(t + 1) % THREADS].lock().expect("lock"));
                    for p in theirs {
                        free(p as *mut u8);
                    }
                });
            }
            for (k, o) in objs.iter().enumerate() {
                let bytes = std::fs::read(o).expect("read an object");
                if lazy {
                    jit.add_object_lazily(&format!("mimalloc{k}.o"), &bytes)
                } else {
                    jit.add_object_named(&format!("mimalloc{k}.o"), &bytes)
                }
                .expect("add the object");
            }
            // SAFETY: mimalloc's signatures; its constructors are sound.
            let found = unsafe { (jit.get::<Malloc>("mi_malloc"), jit.get::<Free>("mi_free")) };
            let _ = calls.set((found.0.expect("mi_malloc"), found.1.expect("mi_free")));
            start.wait();
            // The scope's wait ends before each thread's exit has run
            // mimalloc's pthread key destructor (JIT'd code): the JIT's end
            // below must wait for those (runtime/keys.rs).
        });
    }
}

/// Runs `cmd` with `input` on its stdin: its output and status.
fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the program starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    std::thread::scope(|s| {
        // Written beside the reads: a full pipe must not stall either side.
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output().expect("the program ends")
    })
}

/// bzip2's own command-line program with its library (bzip2 1.0.8), gcc
/// `-O2 -fPIC`, gcc `-O2 -fPIE` (`stderr` reached PC-relative: PC32
/// imports in its images) and clang `-O2 -fPIE`: a file named on the command line
/// compressed to stdout (`-9 -c FILE`), the native build's stream
/// decompressed from stdin (`-d -c`), and a corrupt stream refused with
/// bzip2's status 2 — natively, under `kiln run` (eager, `--lazy`), and
/// from an image under `kiln run` and `kiln-load`: the same bytes and
/// statuses every way.
#[test]
fn bzip2_compresses_and_decompresses_every_way() {
    assert!(need_tool("gcc") && need_tool("clang"));
    for (cc, flags) in [
        ("gcc", ["-O2", "-fPIC"]),
        ("gcc", ["-O2", "-fPIE"]),
        ("clang", ["-O2", "-fPIE"]),
    ] {
        let tag = format!("bzip2-{cc}{}", flags.concat());
        let objs = build_bzip2(cc, &flags, &format!("{cc}{}", flags.concat()));
        let dir = scratch(&format!("c-libraries-{tag}"));
        // Text with repeats, then bytes that do not compress.
        let mut data: Vec<u8> = (0..40_000u32)
            .flat_map(|i| format!("line {} of kiln's input {}\n", i % 977, i * 31).into_bytes())
            .collect();
        data.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let input = dir.join("input.txt");
        std::fs::write(&input, &data).expect("write the input");
        let native = dir.join("native");
        let o = Command::new(cc)
            .args(&objs)
            .arg("-o")
            .arg(&native)
            .output()
            .expect("cc runs");
        assert!(o.status.success(), "{tag}: native link: {}", show(&o));
        let image = dir.join("bzip2.kimg");
        save(&image, &objs);
        // Each way to run the program: the executable and the arguments
        // before the program's own.
        let kiln_bin = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
        let mut run: Vec<OsString> = vec!["run".into()];
        run.extend(objs.iter().map(OsString::from));
        run.push("--".into());
        let mut lazy = run.clone();
        lazy.insert(1, "--lazy".into());
        let ways = [
            ("native", native.clone(), Vec::new()),
            ("kiln run", kiln_bin.clone(), run),
            ("kiln run --lazy", kiln_bin.clone(), lazy),
            (
                "kiln run IMAGE",
                kiln_bin,
                vec!["run".into(), image.clone().into(), "--".into()],
            ),
            (
                "kiln-load IMAGE",
                c_loader("x86_64").to_path_buf(),
                vec![image.clone().into()],
            ),
        ];
        let command = |program: &PathBuf, before: &[OsString]| {
            let mut c = Command::new(program);
            c.args(before);
            c
        };
        let compressed = run_with_stdin(command(&native, &[]).args(["-9", "-c"]).arg(&input), &[]);
        assert!(
            compressed.status.success(),
            "{tag}: native bzip2 -9 -c: {}",
            show(&compressed)
        );
        let junk = &compressed.stdout[..compressed.stdout.len() / 3];
        for (way, program, before) in &ways {
            let c = run_with_stdin(command(program, before).args(["-9", "-c"]).arg(&input), &[]);
            assert!(c.status.success(), "{tag}: {way} -9 -c: {}", show(&c));
            assert!(
                c.stdout == compressed.stdout,
                "{tag}: {way} compressed differently"
            );
            let d = run_with_stdin(
                command(program, before).args(["-d", "-c"]),
                &compressed.stdout,
            );
            assert!(d.status.success(), "{tag}: {way} -d -c: {}", show(&d));
            assert!(d.stdout == data, "{tag}: {way} decompressed something else");
            let bad = run_with_stdin(command(program, before).args(["-d", "-c"]), junk);
            assert_eq!(
                bad.status.code(),
                Some(2),
                "{tag}: {way} on a cut stream: {}",
                show(&bad)
            );
        }
    }
}
