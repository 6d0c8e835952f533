//! C programs compiled with the system compiler at several flag sets, linked
//! by kiln and run in-process; output and exit status must match the native
//! build.

mod common;

use common::*;

fn check_two_objects(cc: &str, flags: &[&str], tag: &str) {
    if !need_tool(cc) {
        return;
    }
    let dir = scratch(&format!("c-{tag}"));
    let compile_flags = [flags, &["-fcommon"]].concat();
    let objs = compile_sources(cc, &["prog_a.c", "prog_b.c"], &compile_flags, &dir);
    assert_jit_matches_native(
        cc,
        &objs,
        flags,
        (&[], &[]),
        &dir.join("prog"),
        "counter=",
        tag,
    );
}

#[test]
fn gcc_o0() {
    check_two_objects("gcc", &["-O0"], "gcc-O0");
}

#[test]
fn gcc_o2() {
    check_two_objects("gcc", &["-O2"], "gcc-O2");
}

#[test]
fn gcc_o2_pic() {
    check_two_objects("gcc", &["-O2", "-fPIC"], "gcc-O2-fPIC");
}

#[test]
fn gcc_o2_no_pie() {
    check_two_objects("gcc", &["-O2", "-fno-pie"], "gcc-O2-fno-pie");
}

#[test]
fn clang_o2() {
    check_two_objects("clang", &["-O2"], "clang-O2");
}

#[test]
fn gcc_o2_large_model_pic() {
    // GOT64, GOTOFF64, GOTPC64, PLTOFF64, PC64.
    check_two_objects(
        "gcc",
        &["-O2", "-mcmodel=large", "-fPIC"],
        "gcc-O2-large-fPIC",
    );
}

#[test]
fn clang_o2_large_model_pic() {
    check_two_objects(
        "clang",
        &["-O2", "-mcmodel=large", "-fPIC"],
        "clang-O2-large-fPIC",
    );
}

#[test]
fn gcc_o2_medium_model_pic() {
    check_two_objects(
        "gcc",
        &["-O2", "-mcmodel=medium", "-fPIC"],
        "gcc-O2-medium-fPIC",
    );
}

#[test]
fn size_relocations() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("sizes");
    for flags in [&["-O2"][..], &["-O2", "-fPIC"], &["-O2", "-fno-pie"]] {
        let tag = flags.join("");
        let obj = compile(
            "gcc",
            &c_dir().join("sizes.c"),
            flags,
            &[],
            &dir.join(format!("sizes{tag}.o")),
        );
        let objs = vec![obj];
        let (native_out, native_ret) =
            run_native("gcc", &objs, flags, &[], &dir.join(format!("sizes{tag}")));
        assert_eq!(native_out, "size32=1234 size64=88\n");
        let (jit_out, jit_ret) = run_jit(&objs, &[], &[]).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!((&jit_out, jit_ret), (&native_out, native_ret), "{tag}");
        assert_lazy_run_matches(&objs, &[], (&native_out, native_ret), &tag);
    }
}

#[test]
fn gcc_o2_pic_no_plt() {
    // `call/jmp *foo@GOTPCREL(%rip)` (GOTPCRELX): relaxed to direct calls
    // and jumps when in reach, through the GOT otherwise.
    check_two_objects("gcc", &["-O2", "-fPIC", "-fno-plt"], "gcc-O2-fPIC-fno-plt");
}

#[test]
fn clang_o2_no_plt() {
    check_two_objects("clang", &["-O2", "-fno-plt"], "clang-O2-fno-plt");
}

#[test]
fn parallel_fixup_path() {
    // Force the rayon path of the fixup pass on a small graph.
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("c-parallel");
    let objs: Vec<_> = ["prog_a.c", "prog_b.c"]
        .iter()
        .map(|s| {
            compile(
                "gcc",
                &c_dir().join(s),
                &["-O2", "-fcommon"],
                &[],
                &dir.join(s.replace(".c", ".o")),
            )
        })
        .collect();
    let (native_out, native_ret) = run_native("gcc", &objs, &["-O2"], &[], &dir.join("prog"));
    let mut options = kiln_linker::LinkOptions::default();
    options.parallel_threshold = 0;
    let (out, ret) = run_jit_with(&objs, &[], &[], options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((out, ret), (native_out, native_ret));
}

/// `.quad target + A` with addends beyond 32 and 48 bits (and at the edges
/// of those ranges) links to exactly `target + A`, eagerly and lazily.
#[test]
fn addends_wider_than_32_and_48_bits() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("c-wide-addends");
    let objs = compile_sources("gcc", &["wide_addends.c"], &["-O1"], &dir);
    let (out, ret) = assert_jit_matches_native(
        "gcc",
        &objs,
        &["-O1"],
        (&[], &[]),
        &dir.join("prog"),
        "wide addends:",
        "wide-addends",
    );
    assert_eq!((out.as_str(), ret), ("wide addends: ok\n", 0));
}

/// `__builtin_cpu_supports` reads `__cpu_model` (and, for the features gcc
/// added later, `__cpu_features2`) and `__builtin_cpu_init` calls
/// `__cpu_indicator_init`: only the static libgcc defines them, hidden
/// (libgcc_s has two as compat versions `dlsym` does not find). Without
/// libgcc.a the link fails naming each and telling which input is
/// missing; with it (an archive input, as the gcc driver adds it) the
/// program runs as the native build does, eager and `--lazy`.
#[test]
fn cpu_model_needs_libgcc_and_says_so() {
    if !need_tool("gcc") {
        return;
    }
    const SRC: &str = r#"
        #include <stdio.h>
        int main(void) {
            __builtin_cpu_init();
            printf("sse2 %d\n", __builtin_cpu_supports("sse2") != 0);
            printf("vnni %d\n", __builtin_cpu_supports("avx512vnni") != 0);
            printf("intel %d\n", __builtin_cpu_is("intel") != 0);
            return 0;
        }
    "#;
    let dir = scratch("c-cpu-model");
    let obj = compile_c_text(&dir, "cpu", SRC, &["-O2", "-fPIC"]);
    let (out, status, stderr) = run_kiln(false, std::slice::from_ref(&obj), &[], &[]);
    assert_ne!(status, 0, "linked without libgcc.a:\n{out}");
    for name in ["__cpu_model", "__cpu_features2", "__cpu_indicator_init"] {
        assert!(
            stderr.contains(&format!("{name} (referenced by")),
            "{name} not named:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("only the static libgcc defines it")
            && stderr.contains("gcc -print-libgcc-file-name"),
        "no hint at the missing input:\n{stderr}"
    );

    let libgcc = std::process::Command::new("gcc")
        .arg("-print-libgcc-file-name")
        .output()
        .expect("gcc runs");
    let libgcc = std::path::PathBuf::from(String::from_utf8_lossy(&libgcc.stdout).trim());
    assert!(libgcc.is_file(), "{}", libgcc.display());
    let native = run_native(
        "gcc",
        std::slice::from_ref(&obj),
        &[],
        &[],
        &dir.join("cpu"),
    );
    assert!(native.0.contains("sse2 1"), "native: {}", native.0);
    let inputs = [obj, libgcc];
    let (out, status, stderr) = run_kiln(false, &inputs, &[], &[]);
    assert_eq!((out, status), native, "eager, with libgcc.a\n{stderr}");
    assert_lazy_run_matches(&inputs, &[], (&native.0, native.1), "cpu-model");
}

/// `pthread_atfork` handlers and a pthread key destructor in the program's
/// own code (`tests/c/fork_handlers.c`): glibc exports `pthread_atfork`
/// only as a compat symbol (`dlsym` cannot find it; programs get it from
/// `libc_nonshared.a`), so kiln provides it — handlers in POSIX order,
/// child handlers in the child. As natively, eager and `--lazy`.
#[test]
fn fork_handlers_and_key_destructors_run_as_natively() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("c-fork-handlers");
    for flags in [&["-O2"][..], &["-O0", "-fPIC"]] {
        let obj = compile(
            "gcc",
            &c_dir().join("fork_handlers.c"),
            flags,
            &[],
            &dir.join("fork_handlers.o"),
        );
        let (out, _) = assert_jit_matches_native(
            "gcc",
            std::slice::from_ref(&obj),
            flags,
            (&[], &[]),
            &dir.join("fork_handlers"),
            "key destructor saw 6",
            &format!("fork handlers {flags:?}"),
        );
        assert!(
            out.contains("order: 2 1 3 4 2 1 3 4")
                && out.contains(
                    "fork 1: child handler ran 1 time(s), child saw 2 prepare(s); parent 2"
                ),
            "{out}"
        );
    }
}

/// `at_quick_exit` (only `libc_nonshared.a` defines it): `quick_exit`
/// runs the program's handlers newest first and not its `atexit` ones.
/// Under `kiln run` (`quick_exit` ends the process), eager and `--lazy`.
#[test]
fn quick_exit_handlers_run_as_natively() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("c-quick-exit");
    let obj = compile(
        "gcc",
        &c_dir().join("quick_exit.c"),
        &["-O2"],
        &[],
        &dir.join("quick_exit.o"),
    );
    let native = run_native(
        "gcc",
        std::slice::from_ref(&obj),
        &["-O2"],
        &[],
        &dir.join("quick_exit"),
    );
    assert_eq!(native, ("main\nquick 2\nquick 1\n".to_string(), 7));
    let (out, status, stderr) = run_kiln(false, std::slice::from_ref(&obj), &[], &[]);
    assert_eq!((out, status), native, "eager\n{stderr}");
    let (out, status, stderr) = run_kiln(true, std::slice::from_ref(&obj), &[], &[]);
    assert_eq!((out, status), native, "--lazy\n{stderr}");
}

/// `on_exit` handlers (glibc's, which never drops a library's) beside
/// `atexit` ones: run newest first with the exit status, when `main`
/// returns and when it calls `exit`. Eager and `--lazy`.
#[test]
fn on_exit_handlers_get_the_exit_status() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("c-on-exit");
    let obj = compile(
        "gcc",
        &c_dir().join("on_exit.c"),
        &["-O2"],
        &[],
        &dir.join("on_exit.o"),
    );
    let exe = dir.join("on_exit");
    run_native("gcc", std::slice::from_ref(&obj), &["-O2"], &[], &exe);
    for args in [&[][..], &["exit"]] {
        let native = std::process::Command::new(&exe)
            .args(args)
            .output()
            .expect("native runs");
        let native = (
            String::from_utf8_lossy(&native.stdout).into_owned(),
            native.status.code().unwrap_or(-1),
        );
        assert!(native.0.starts_with("main\non_exit "), "{native:?}");
        for lazy in [false, true] {
            let (out, status, stderr) = run_kiln(lazy, std::slice::from_ref(&obj), &[], args);
            assert_eq!((out, status), native, "{args:?}, lazy: {lazy}\n{stderr}");
        }
    }
}
