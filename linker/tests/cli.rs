//! The `kiln` command line, run as a user would (kiln issue 3 §4, issue 4 §3).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::compile_c_text;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[test]
fn no_arguments_runs_the_bundled_example_and_says_so() {
    let out = kiln().output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("linked in-process by kiln (constructor ran: yes)"),
        "{}",
        show(&out)
    );
    assert!(stdout.contains("fib(30) = 832040"), "{}", show(&out));
    assert!(
        stdout.contains("sorted: emit link materialize ready relocate resolve"),
        "{}",
        show(&out)
    );
    assert!(stdout.contains("atexit handler ran"), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bundled example") && stderr.contains("main returned 0"),
        "{}",
        show(&out)
    );
}

const ARGS_MAIN: &str = r#"
#include <stdio.h>
#include <string.h>
int helper(int);
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    return helper(argc) + (argc > 1 && strcmp(argv[1], "seven") == 0 ? 7 : 0);
}
"#;
const HELPER: &str = "int helper(int x) { return 30 + x; }\n";

#[test]
fn argv_and_the_exit_status_follow_main() {
    let dir = scratch("args");
    for flags in [
        &["-O0"][..],
        &["-O2"],
        &["-O2", "-fPIC"],
        &["-O2", "-fno-pie"],
    ] {
        let main = compile_c_text(&dir, "main", ARGS_MAIN, flags);
        let helper = compile_c_text(&dir, "helper", HELPER, flags);
        let out = kiln()
            .arg("run")
            .arg(&main)
            .arg(&helper)
            .args(["--", "seven", "x y"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(30 + 3 + 7),
            "{flags:?}: {}",
            show(&out)
        );
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("argv[0]={}", main.display())),
            "{}",
            show(&out)
        );
        assert!(
            stdout.contains("argv[1]=seven") && stdout.contains("argv[2]=x y"),
            "{}",
            show(&out)
        );
    }
}

#[test]
fn exit_called_by_the_program_still_runs_its_atexit_handlers() {
    let dir = scratch("exit");
    let o = compile_c_text(
        &dir,
        "exits",
        "#include <stdio.h>\n#include <stdlib.h>\nstatic void bye(void) { puts(\"handler ran\"); }\nint main(void) { atexit(bye); puts(\"exiting\"); exit(9); }\n",
        &["-O2"],
    );
    let out = kiln().arg("run").arg(&o).output().unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", show(&out));
    assert_eq!(
        text(&out.stdout),
        "exiting\nhandler ran\n",
        "{}",
        show(&out)
    );
}

/// A crash kills kiln with the program's signal, as it kills the native
/// program (the shell reports 128 + N either way; a parent's `wait` sees
/// the signal, not an exit), after kiln says which signal it was.
#[test]
fn a_crash_dies_of_the_signal_like_a_native_program() {
    use std::os::unix::process::ExitStatusExt;
    let dir = scratch("crash");
    let programs = [
        (
            "crash",
            "int main(void) { volatile int *p = 0; return *p; }\n",
            "-O0",
            libc::SIGSEGV,
            "SIGSEGV",
        ),
        (
            "aborts",
            "#include <stdlib.h>\nint main(void) { abort(); }\n",
            "-O1",
            libc::SIGABRT,
            "SIGABRT",
        ),
    ];
    for (name, src, opt, signal, said) in programs {
        let o = compile_c_text(&dir, name, src, &[opt]);
        // Run in the scratch folder: a core dump, if the system writes
        // them, lands there.
        let out = kiln()
            .current_dir(&dir)
            .arg("run")
            .arg(&o)
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(signal), "{}", show(&out));
        assert!(text(&out.stderr).contains(said), "{}", show(&out));
    }
}

#[test]
fn missing_symbols_are_all_named_with_their_objects() {
    let dir = scratch("missing");
    let o = compile_c_text(
        &dir,
        "needy",
        "int alpha_missing(void); int beta_missing(void);\nint main(void) { return alpha_missing() + beta_missing(); }\n",
        &["-O2"],
    );
    let out = kiln().arg("run").arg(&o).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("alpha_missing") && stderr.contains("beta_missing"),
        "{}",
        show(&out)
    );
    assert!(stderr.contains("needy.o"), "{}", show(&out));
}

#[test]
fn malformed_input_is_an_error_not_a_crash() {
    let dir = scratch("malformed");
    let bad = dir.join("bad.o");
    std::fs::write(&bad, b"\x7fELF\x02\x01\x01 this is not an object").unwrap();
    let out = kiln().arg("run").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("bad.o"), "{}", show(&out));
}

/// `--entry` naming a thread-local variable is refused, eager and lazy:
/// its value names a TLS module, and calling it would crash.
#[test]
fn an_entry_point_that_is_a_thread_local_is_refused_naming_it() {
    let dir = scratch("entry-tls");
    let src = "__thread int tv = 3;\nint main(void) { return tv; }\n";
    let o = compile_c_text(&dir, "tv", src, &["-O2"]);
    for lazy in [false, true] {
        let mut cmd = kiln();
        cmd.args(["run", "--entry", "tv"]);
        if lazy {
            cmd.arg("--lazy");
        }
        let out = cmd.arg(&o).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "lazy {lazy}: {}", show(&out));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("entry point `tv` is a thread-local variable"),
            "lazy {lazy}: {}",
            show(&out)
        );
    }
}

/// libloading's message is only "dlopen failed": dlerror's text (why) is
/// its `source()`, and the user reads it.
#[test]
fn a_library_that_cannot_be_loaded_is_reported_with_the_loaders_reason() {
    let dir = scratch("no-library");
    let o = compile_c_text(&dir, "plain", "int main(void) { return 0; }\n", &["-O2"]);
    let out = kiln()
        .args(["run", "-l", "kiln-no-such-library"])
        .arg(&o)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot load library libkiln-no-such-library.so: dlopen failed: ")
            && stderr.contains("cannot open shared object file"),
        "{}",
        show(&out)
    );
}

#[test]
fn noexec_links_without_running_and_stats_reports_the_work() {
    let dir = scratch("noexec");
    let o = compile_c_text(
        &dir,
        "loud",
        "#include <stdio.h>\nint main(void) { puts(\"must not print\"); return 3; }\n",
        &["-O2"],
    );
    let out = kiln()
        .args(["run", "--noexec", "--stats"])
        .arg(&o)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        !text(&out.stdout).contains("must not print"),
        "{}",
        show(&out)
    );
    let stderr = text(&out.stderr);
    for key in [
        "relocations",
        "symbols",
        "objects linked",
        "fixup + finalize",
        "look up externals",
    ] {
        assert!(stderr.contains(key), "missing {key}: {}", show(&out));
    }
}

/// The count `--stats` gives on its `threads now` line.
fn threads_now(out: &Output) -> usize {
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("threads now"))
        .unwrap_or_else(|| panic!("no threads line: {}", show(out)));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn threads_1_links_on_one_thread_and_n_sizes_the_helpers() {
    let dir = scratch("threads");
    // Enough inputs that they are opened on helper threads.
    let mut inputs: Vec<PathBuf> = (0..20)
        .map(|i| {
            let src = format!("int f{i}(void) {{ return {i}; }}\n");
            compile_c_text(&dir, &format!("f{i}"), &src, &["-O2"])
        })
        .collect();
    let calls: String = (0..20).map(|i| format!("+ f{i}()")).collect();
    let decls: String = (0..20).map(|i| format!("int f{i}(void);")).collect();
    let main = format!("{decls}\nint main(void) {{ return 0 {calls}; }}\n");
    inputs.push(compile_c_text(&dir, "main", &main, &["-O2"]));
    let run = |threads: &str| {
        let mut cmd = kiln();
        cmd.args(["run", "--stats", "--threads", threads]);
        cmd.args(&inputs).output().unwrap()
    };
    let one = run("1");
    assert_eq!(one.status.code(), Some(190), "{}", show(&one));
    // The main thread alone: an eager run starts no engine worker, and
    // nothing is split over helpers.
    assert_eq!(threads_now(&one), 1, "{}", show(&one));
    let three = run("3");
    assert_eq!(three.status.code(), Some(190), "{}", show(&three));
    // At most three helpers besides the main thread.
    assert!(threads_now(&three) <= 4, "{}", show(&three));

    // `kiln image save` the same: one thread, or N helpers, and the same
    // image either way.
    let save = |threads: &str| {
        let image = dir.join(format!("threads-{threads}.kimg"));
        let mut cmd = kiln();
        cmd.args(["image", "save", "--stats", "--threads", threads, "-o"]);
        let out = cmd.arg(&image).args(&inputs).output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
        (out, std::fs::read(&image).unwrap(), image)
    };
    let (one, one_bytes, one_image) = save("1");
    assert_eq!(threads_now(&one), 1, "{}", show(&one));
    let (three, three_bytes, _) = save("3");
    assert!(threads_now(&three) <= 4, "{}", show(&three));
    assert!(one_bytes == three_bytes, "the two saves differ");
    let ran = kiln().arg("run").arg(&one_image).output().unwrap();
    assert_eq!(ran.status.code(), Some(190), "{}", show(&ran));

    // No thread at all is refused, by both, saying what to give.
    for cmd in [&["run"][..], &["image", "save", "-o", "zero.kimg"]] {
        let out = kiln()
            .args(cmd)
            .args(["--threads", "0"])
            .args(&inputs)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert!(
            text(&out.stderr).contains("give 1 or more"),
            "{}",
            show(&out)
        );
    }
}

#[test]
fn archives_supply_members_on_demand_and_l_loads_libraries() {
    let dir = scratch("archive");
    let main = compile_c_text(
        &dir,
        "main",
        "#include <math.h>\nint from_archive(int);\nint main(void) { return from_archive(2) + (int)floor(cbrt(27.0)); }\n",
        &["-O2"],
    );
    let used = compile_c_text(
        &dir,
        "used",
        "int from_archive(int x) { return x * 10; }\n",
        &["-O2"],
    );
    let unused = compile_c_text(
        &dir,
        "unused",
        "int never(void); int unused_fn(void) { return never(); }\n",
        &["-O2"],
    );
    let ar = dir.join("libparts.a");
    let status = Command::new("ar")
        .arg("rcs")
        .arg(&ar)
        .arg(&used)
        .arg(&unused)
        .status()
        .unwrap();
    assert!(status.success());
    // Eager and lazy (issue 8 §2.4): `unused.o` references a missing
    // symbol, so pulling it would fail the link.
    for mode in [&["run"][..], &["run", "--lazy"]] {
        let out = kiln()
            .args(mode)
            .arg(&main)
            .arg(&ar)
            .args(["-l", "m"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(23), "{mode:?}: {}", show(&out));
    }
}

#[test]
fn lazy_mode_links_objects_on_first_call() {
    let dir = scratch("lazy");
    let main = compile_c_text(
        &dir,
        "main",
        "#include <stdio.h>\nint used(int); int unused(int);\nint main(int argc, char **argv) { printf(\"lazy %d\\n\", used(4)); return argc > 5 ? unused(1) : 0; }\n",
        &["-O2"],
    );
    let used = compile_c_text(
        &dir,
        "used",
        "int used(int x) { return x * x; }\n",
        &["-O2"],
    );
    let unused = compile_c_text(
        &dir,
        "unused",
        "int unused(int x) { return x + 1; }\n",
        &["-O2"],
    );
    let out = kiln()
        .args(["run", "--lazy", "--stats"])
        .arg(&main)
        .arg(&used)
        .arg(&unused)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).contains("lazy 16"), "{}", show(&out));
    let stderr = text(&out.stderr);
    // main and used were linked; unused never was.
    assert!(
        stderr.contains("images linked          2"),
        "{}",
        show(&out)
    );
    assert!(
        stderr.contains("lazy reentries         2"),
        "{}",
        show(&out)
    );
}

#[test]
fn help_reads_like_a_man_page() {
    let out = kiln().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for key in [
        "--noexec",
        "--stats",
        "--entry",
        "--threads",
        "--lazy",
        "-l <NAME>",
        "-L <DIR>",
    ] {
        assert!(help.contains(key), "missing {key} in:\n{help}");
    }
    let top = text(&kiln().arg("--help").output().unwrap().stdout);
    assert!(
        top.contains("EXIT STATUS") && top.contains("EXAMPLES"),
        "{top}"
    );
}

fn compile_cxx(dir: &Path, src: &Path, include: &Path) -> PathBuf {
    let o = dir.join(src.file_name().unwrap()).with_extension("o");
    let status = Command::new("g++")
        .args(["-c", "-O2", "-I"])
        .arg(include)
        .arg("-o")
        .arg(&o)
        .arg(src)
        .status()
        .expect("g++ runs");
    assert!(status.success(), "g++ failed on {}", src.display());
    o
}

#[test]
fn lazy_mode_runs_the_cxx_programs_like_eager_mode() {
    let dir = scratch("lazy-cxx");
    let cxx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cxx");
    for program in [
        &["shapes_impl.cpp", "shapes_main.cpp"][..],
        &["tls_defs.cpp", "tls_main.cpp"],
        &["statics_a.cpp", "statics_b.cpp", "statics_main.cpp"],
    ] {
        let objs: Vec<PathBuf> = program
            .iter()
            .map(|s| compile_cxx(&dir, &cxx.join(s), &cxx))
            .collect();
        let eager = kiln().arg("run").args(&objs).output().unwrap();
        let lazy = kiln().args(["run", "--lazy"]).args(&objs).output().unwrap();
        assert_eq!(
            eager.status.code(),
            lazy.status.code(),
            "{program:?}\neager: {}\nlazy: {}",
            show(&eager),
            show(&lazy)
        );
        // Per-object images tear down together, as one program's exit():
        // destructors interleave exactly as in the eager (one image) run.
        let (e, l) = (text(&eager.stdout), text(&lazy.stdout));
        assert_eq!(e, l, "{program:?}");
    }
}

#[test]
fn teardown_order_matches_a_native_executable() {
    let dir = scratch("teardown");
    let src = r#"
#include <stdio.h>
#include <stdlib.h>
static void handler1(void) { puts("atexit 1"); }
static void handler2(void) { puts("atexit 2"); }
__attribute__((constructor)) static void ctor(void) { puts("constructor"); atexit(handler1); }
__attribute__((destructor)) static void dtor(void) { puts("destructor (default priority)"); }
__attribute__((destructor(200))) static void dtor200(void) { puts("destructor 200"); }
__attribute__((destructor(150))) static void dtor150(void) { puts("destructor 150"); }
int main(void) { atexit(handler2); puts("main"); return 5; }
"#;
    let o = compile_c_text(&dir, "teardown", src, &["-O2"]);
    let exe = dir.join("teardown-native");
    let status = Command::new("gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&o)
        .status()
        .unwrap();
    assert!(status.success());
    let native = Command::new(&exe).output().unwrap();
    let jit = kiln().arg("run").arg(&o).output().unwrap();
    assert_eq!(jit.status.code(), native.status.code(), "{}", show(&jit));
    assert_eq!(text(&jit.stdout), text(&native.stdout), "{}", show(&jit));
}

#[test]
fn constructors_receive_the_programs_arguments_like_main() {
    let dir = scratch("ctor-args");
    let src = r#"#include <stdio.h>
static int seen_argc;
static char **seen_argv;
__attribute__((constructor)) static void init(int argc, char **argv, char **envp) {
    (void)envp;
    seen_argc = argc;
    seen_argv = argv;
    printf("ctor argc=%d argv[1]=%s\n", argc, argc > 1 ? argv[1] : "(none)");
}
int main(int argc, char **argv) {
    printf("main argc=%d argv[1]=%s same=%d\n", argc, argv[1], argv == seen_argv && argc == seen_argc);
    return 0;
}
"#;
    for lazy in [false, true] {
        let o = compile_c_text(&dir, "ctor", src, &["-O2"]);
        let mut cmd = kiln();
        cmd.arg("run");
        if lazy {
            cmd.arg("--lazy");
        }
        let out = cmd
            .arg(&o)
            .args(["--", "first", "second"])
            .output()
            .unwrap();
        assert!(out.status.success(), "lazy {lazy}: {}", show(&out));
        assert_eq!(
            text(&out.stdout),
            "ctor argc=3 argv[1]=first\nmain argc=3 argv[1]=first same=1\n",
            "lazy {lazy}: {}",
            show(&out)
        );
    }
}

/// Non-PIE code (absolute 32-bit addresses, `R_X86_64_32S`) reading and
/// writing data defined in another object: under `--lazy` each object is
/// its own image, and the data's image must be within the code's reach
/// (issue 8 §2.3: Lua's lexer read a PLT stub's bytes as `luai_ctype_`).
#[test]
fn non_pie_code_reaches_data_of_another_lazily_linked_object() {
    let dir = scratch("lazy-non-pie");
    let table = compile_c_text(
        &dir,
        "table",
        "const unsigned char table[8] = {10, 20, 30, 40, 50, 60, 70, 80};\nint counter = 5;\n",
        &["-O2", "-fno-pie"],
    );
    let main = compile_c_text(
        &dir,
        "main",
        "#include <stdio.h>\nextern const unsigned char table[8];\nextern int counter;\n\
         int main(int argc, char **argv) { (void)argv; int i = argc + 2; counter += table[i];\n\
         printf(\"table[%d]=%d counter=%d\\n\", i, table[i], counter); return counter; }\n",
        &["-O2", "-fno-pie"],
    );
    for mode in [&["run"][..], &["run", "--lazy"]] {
        let out = kiln().args(mode).arg(&main).arg(&table).output().unwrap();
        assert_eq!(out.status.code(), Some(45), "{mode:?}: {}", show(&out));
        assert_eq!(
            text(&out.stdout),
            "table[3]=40 counter=45\n",
            "{mode:?}: {}",
            show(&out)
        );
    }
}

/// A C file whose object is well above the 16 KiB from which `kiln run`
/// maps inputs instead of reading them: 48 KiB of initialized data, read
/// through relocations, and a checksum the program prints.
const BIG_OBJECT: &str = r#"
#include <stdio.h>
#define N (12 * 1024)
static const unsigned table[N] = {
#define ROW(i) (i) * 2654435761u, (i) * 40503u + 1, (i) ^ 0x5bd1e995u, (i) + 7,
#define R16(i) ROW(i) ROW(i + 1) ROW(i + 2) ROW(i + 3)
#define R64(i) R16(i) R16(i + 4) R16(i + 8) R16(i + 12)
#define R256(i) R64(i) R64(i + 16) R64(i + 32) R64(i + 48)
#define R1K(i) R256(i) R256(i + 64) R256(i + 128) R256(i + 192)
    R1K(0) R1K(256) R1K(512) R1K(768) R1K(1024) R1K(1280)
    R1K(1536) R1K(1792) R1K(2048) R1K(2304) R1K(2560) R1K(2816)
};
const unsigned *table_ptr = table;
int main(void) {
    unsigned long long sum = 0;
    for (int i = 0; i < N; i++) sum = sum * 31 + table_ptr[i];
    printf("sum=%llu\n", sum);
    return 0;
}
"#;

#[test]
fn a_large_object_is_linked_the_same_mapped_or_read() {
    let dir = scratch("big-object");
    let obj = compile_c_text(&dir, "big", BIG_OBJECT, &["-O1"]);
    let size = std::fs::metadata(&obj).unwrap().len();
    assert!(
        size > 32 << 10,
        "the object must be large enough to be mapped: {size} bytes"
    );
    // The expected sum, computed here as the C program does.
    let mut table = Vec::with_capacity(12 * 1024);
    for i in 0..3 * 1024u32 {
        // 3,072 rows of 4: N entries.
        table.extend([
            i.wrapping_mul(2654435761),
            i.wrapping_mul(40503).wrapping_add(1),
            i ^ 0x5bd1e995,
            i + 7,
        ]);
    }
    let sum = table
        .iter()
        .fold(0u64, |s, &v| s.wrapping_mul(31).wrapping_add(u64::from(v)));
    let want = format!("sum={sum}\n");
    // Eager links map the object; --lazy reads it.
    for flags in [&[][..], &["--lazy"]] {
        let out = kiln().arg("run").args(flags).arg(&obj).output().unwrap();
        assert!(out.status.success(), "{flags:?}: {}", show(&out));
        assert_eq!(text(&out.stdout), want, "{flags:?}: {}", show(&out));
    }
}

/// A program that overflows its stack is reported as such (the fatal-signal
/// handler runs on an alternate stack, which `kiln` sets up itself before
/// running a program: it skips Rust's start-up, which made one), and kiln
/// dies of `SIGSEGV` as the native program would. Closed standard
/// descriptors are filled with `/dev/null` first, as before: the program
/// still sees its arguments and exits with its status.
#[test]
fn a_stack_overflow_is_reported_and_closed_standard_descriptors_are_filled() {
    use std::os::unix::process::ExitStatusExt;
    let dir = scratch("overflow");
    let src = "int deep(int n) { volatile char pad[4096]; pad[0] = (char)n;\n\
               return deep(n + 1) + pad[0]; }\n\
               int main(int argc, char **argv) { (void)argv; return argc > 1 ? deep(0) : 3; }\n";
    let obj = compile_c_text(&dir, "overflow", src, &["-O0"]);
    // Where a core dump would go, if the system writes them.
    let out = kiln()
        .current_dir(&dir)
        .arg("run")
        .arg(&obj)
        .arg("--")
        .arg("deep")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("died with SIGSEGV"),
        "{}",
        show(&out)
    );
    let out = kiln()
        .arg("run")
        .arg(&obj)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    // stdin closed (not /dev/null): kiln still runs the program.
    let closed = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" run \"$1\" <&-")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg(&obj)
        .output()
        .unwrap();
    assert_eq!(closed.status.code(), Some(3), "{}", show(&closed));
}

/// Runs `cmd` to its end, or kills it after a minute and fails: a hang is
/// the bug some tests look for.
fn output_within_a_minute(cmd: &mut Command, what: &str) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("kiln can be waited for").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("killed kiln is reaped");
            panic!("{what}: kiln hung (killed after 60 s)\n{}", show(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("kiln's output is read")
}

/// A constructor that calls `exit()` ends the program there, as natively:
/// the `atexit` handlers registered so far and the finalizers of the
/// images whose constructors started run, and the status is `exit`'s. The
/// teardown at exit must not wait for the constructor that is still on the
/// stack (it did: the image's lock was held while its initializers ran).
#[test]
fn a_constructor_that_calls_exit_ends_the_program_like_a_native_one() {
    let dir = scratch("ctor-exit");
    let src = r#"
#include <stdio.h>
#include <stdlib.h>
static void handler(void) { puts("atexit handler"); }
__attribute__((constructor)) static void ctor(void) {
    atexit(handler);
    puts("constructor");
    fflush(stdout);
    exit(3);
}
__attribute__((destructor)) static void dtor(void) { puts("destructor"); }
int main(void) { puts("main"); return 0; }
"#;
    let o = compile_c_text(&dir, "ctor-exit", src, &["-O2", "-fPIC"]);
    let exe = dir.join("ctor-exit-native");
    let status = Command::new("gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&o)
        .status()
        .expect("gcc runs");
    assert!(status.success());
    let native = Command::new(&exe).output().expect("native runs");
    assert_eq!(native.status.code(), Some(3));
    let image = dir.join("ctor-exit.kimg");
    common::images::save(&image, std::slice::from_ref(&o));
    // Past the racy window, so `kiln run X.kimg` takes the path without
    // the engine too.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let runs: [(&str, Vec<&std::ffi::OsStr>); 3] = [
        ("eager", vec![o.as_os_str()]),
        ("lazy", vec!["--lazy".as_ref(), o.as_os_str()]),
        ("image", vec![image.as_os_str()]),
    ];
    for (how, args) in runs {
        let jit = output_within_a_minute(kiln().arg("run").args(args), how);
        assert_eq!(jit.status.code(), Some(3), "{how}: {}", show(&jit));
        assert_eq!(
            text(&jit.stdout),
            text(&native.stdout),
            "{how}: {}",
            show(&jit)
        );
    }
}

/// A pipe whose reading end is already closed: every write to it fails
/// (`EPIPE`) and raises `SIGPIPE`, as `prog | head` does once `head` left.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer
}

/// A program writing to a pipe nobody reads any more dies of `SIGPIPE`
/// under kiln as it does natively (`prog | head`): kiln must not leave
/// the signal ignored for the program it runs — a program that loops on
/// output would otherwise never end.
#[test]
fn a_program_writing_to_a_closed_pipe_dies_of_sigpipe_like_a_native_one() {
    use std::os::unix::process::ExitStatusExt;
    let dir = scratch("sigpipe");
    let src = "#include <stdio.h>\n\
               int main(void) {\n\
                 for (long i = 0; i < 1000000; i++) { printf(\"line %ld\\n\", i); fflush(stdout); }\n\
                 return 3; /* only if the writes failed and nothing stopped it */\n\
               }\n";
    let o = compile_c_text(&dir, "writer", src, &["-O1"]);
    let exe = dir.join("writer");
    let linked = Command::new("gcc").arg(&o).arg("-o").arg(&exe).status();
    assert!(
        linked.expect("gcc runs").success(),
        "gcc links the native program"
    );
    let native = Command::new(&exe).stdout(closed_pipe()).status().unwrap();
    assert_eq!(native.signal(), Some(libc::SIGPIPE), "natively: {native:?}");
    let mut cmd = kiln();
    cmd.arg("run").arg(&o).stdout(closed_pipe());
    let under_kiln = cmd.status().unwrap();
    assert_eq!(
        under_kiln.signal(),
        Some(libc::SIGPIPE),
        "under kiln: {under_kiln:?}"
    );
}

/// kiln's own output to a closed pipe (`kiln image info X | head -0`) ends
/// it as it ends any Unix tool — by `SIGPIPE` — not with a panic and a
/// backtrace.
#[test]
fn kilns_own_output_to_a_closed_pipe_ends_it_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = scratch("sigpipe-info");
    let o = compile_c_text(
        &dir,
        "lib",
        "int f(void) { return 1; }\n",
        &["-O1", "-fPIC"],
    );
    let image = dir.join("lib.kimg");
    let saved = kiln()
        .args(["image", "save", "-o"])
        .arg(&image)
        .arg(&o)
        .output()
        .unwrap();
    assert!(saved.status.success(), "{}", show(&saved));
    let out = kiln()
        .args(["image", "info"])
        .arg(&image)
        .stdout(closed_pipe())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{}", show(&out));
    assert!(!text(&out.stderr).contains("panicked"), "{}", show(&out));
}

/// One section name, code in one object and data in another (`ld` merges
/// them into one writable and executable section): each input keeps its
/// own protection — the data stays writable, the code executable — eager
/// and lazy.
#[test]
fn a_section_name_used_for_code_and_for_data_keeps_each_protection() {
    let dir = scratch("section-flags");
    let code = compile_c_text(
        &dir,
        "code",
        "__attribute__((section(\"shared_sec\"))) int add_one(int x) { return x + 1; }\n",
        &["-O2"],
    );
    let data = compile_c_text(
        &dir,
        "data",
        "#include <stdio.h>\nint add_one(int);\n\
         __attribute__((section(\"shared_sec\"))) int counter = 5;\n\
         int main(void) { counter += add_one(2); printf(\"counter %d\\n\", counter); return 0; }\n",
        &["-O2"],
    );
    for mode in [&["run"][..], &["run", "--lazy"]] {
        let out = kiln().args(mode).arg(&code).arg(&data).output().unwrap();
        assert!(out.status.success(), "{mode:?}: {}", show(&out));
        assert_eq!(text(&out.stdout), "counter 8\n", "{mode:?}: {}", show(&out));
    }
}

/// `__start_set`/`__stop_set` delimit one section; inputs called `set` that
/// are code in one object and data in another are kept apart, so the
/// bounds could cover only some of them: refused, naming the symbol.
#[test]
fn bounds_of_a_section_name_used_for_code_and_for_data_are_refused() {
    let dir = scratch("section-bounds");
    let code = compile_c_text(
        &dir,
        "code",
        "__attribute__((section(\"set\"))) int in_set(int x) { return x + 1; }\n",
        &["-O2"],
    );
    let data = compile_c_text(
        &dir,
        "data",
        "extern char __start_set[], __stop_set[];\n\
         __attribute__((section(\"set\"), used)) static int tag = 1;\n\
         int main(void) { return (int)(__stop_set - __start_set); }\n",
        &["-O2"],
    );
    let out = kiln().arg("run").arg(&code).arg(&data).output().unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("data.o") && err.contains("delimits section set"),
        "{}",
        show(&out)
    );
}
