//! The process's unwinder under `kiln run`: the `kiln` binary does not load
//! libgcc_s for a program that never unwinds (its constructor is a tenth of
//! a C program's start-up on this VM class), and whenever libgcc_s arrives —
//! asked for by name, brought by a library, or `dlopen`ed by the program
//! itself — the JIT'd code's frames are registered with it before the
//! program can unwind through them. Every program's output is compared with
//! its native build's, eager, lazy and from a saved image.

mod common;

use std::path::{Path, PathBuf};

use common::{compile_c_text, run_kiln, run_native, scratch};

/// Runs `objs` natively (linked with `cc_libs`) and with `kiln run` eager,
/// `--lazy`, and from an image saved by `kiln image save`; asserts each
/// prints `expected` and exits 0.
fn assert_everywhere(dir: &Path, objs: &[PathBuf], cc_libs: &[&str], expected: &str) {
    let (out, code) = run_native("gcc", objs, &[], cc_libs, &dir.join("native"));
    assert_eq!((out.as_str(), code), (expected, 0), "native build");
    for lazy in [false, true] {
        let (out, code, err) = run_kiln(lazy, objs, &[], &[]);
        assert_eq!(
            (out.as_str(), code),
            (expected, 0),
            "kiln run (lazy: {lazy}); stderr:\n{err}"
        );
    }
    let image = dir.join("prog.kimg");
    common::images::save(&image, objs);
    let (out, code, err) = run_kiln(false, &[image], &[], &[]);
    assert_eq!(
        (out.as_str(), code),
        (expected, 0),
        "kiln run IMAGE; stderr:\n{err}"
    );
}

/// Whether libgcc_s is mapped, as the program sees `/proc/self/maps`.
const MAPS_PROBE: &str = r#"
#include <stdio.h>
#include <string.h>
int main(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "libgcc_s")) found = 1;
    if (f) fclose(f);
    printf("libgcc_s mapped: %s\n", found ? "yes" : "no");
    return 0;
}
"#;

#[test]
fn a_c_program_that_never_unwinds_runs_without_libgcc_s() {
    let dir = scratch("unwinder-maps");
    let obj = compile_c_text(&dir, "maps", MAPS_PROBE, &["-O2"]);
    assert_everywhere(&dir, &[obj], &[], "libgcc_s mapped: no\n");
}

/// Three JIT'd frames; the innermost walks the stack with `WALK` and reports
/// whether the walk stepped through its callers (return addresses into
/// `level2` and `level1`, which only their FDEs lead to).
fn walker(walk: &str) -> String {
    format!(
        r#"
#include <stdio.h>
#include <stdint.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <unwind.h>
static void *want[2];
static int seen;
static void note(void *ip) {{
    if (ip == want[0]) seen |= 1;
    if (ip == want[1]) seen |= 2;
}}
{walk}
__attribute__((noinline)) int level3(void *into_level1) {{
    want[0] = __builtin_return_address(0);
    want[1] = into_level1;
    walk();
    return seen;
}}
__attribute__((noinline)) int level2(void) {{
    int r = level3(__builtin_return_address(0));
    __asm__ volatile("" ::: "memory");
    return r;
}}
__attribute__((noinline)) int level1(void) {{
    int r = level2();
    __asm__ volatile("" ::: "memory");
    return r;
}}
int main(void) {{
    int s = level1();
    printf("walked through level2: %s, level1: %s\n", s & 1 ? "yes" : "no", s & 2 ? "yes" : "no");
    return 0;
}}
"#
    )
}

#[test]
fn backtrace_walks_through_the_jit_code_that_called_it() {
    let dir = scratch("unwinder-backtrace");
    let walk = r#"
__attribute__((noinline)) static void walk(void) {
    void *frames[64];
    int n = backtrace(frames, 64);
    for (int i = 0; i < n; i++) note(frames[i]);
}"#;
    let obj = compile_c_text(&dir, "bt", &walker(walk), &["-O2"]);
    assert_everywhere(
        &dir,
        &[obj],
        &[],
        "walked through level2: yes, level1: yes\n",
    );
}

#[test]
fn libgcc_s_opened_by_the_program_itself_knows_the_jit_frames() {
    let dir = scratch("unwinder-dlopen");
    // The program opens libgcc_s itself and walks with its
    // `_Unwind_Backtrace`, found by `dlsym` on that handle: kiln sees
    // neither a name it must bind from libgcc_s nor a library it opened.
    let walk = r#"
typedef _Unwind_Reason_Code (*trace_fn)(_Unwind_Trace_Fn, void *);
typedef uintptr_t (*ip_fn)(struct _Unwind_Context *);
static ip_fn get_ip;
static _Unwind_Reason_Code step(struct _Unwind_Context *c, void *arg) {
    (void)arg;
    note((void *)get_ip(c));
    return _URC_NO_REASON;
}
__attribute__((noinline)) static void walk(void) {
    void *h = dlopen("libgcc_s.so.1", RTLD_NOW);
    if (!h) { printf("dlopen: %s\n", dlerror()); return; }
    trace_fn trace = (trace_fn)dlsym(h, "_Unwind_Backtrace");
    get_ip = (ip_fn)dlsym(h, "_Unwind_GetIP");
    if (trace && get_ip) trace(step, 0);
}"#;
    let obj = compile_c_text(&dir, "dl", &walker(walk), &["-O2"]);
    assert_everywhere(
        &dir,
        &[obj],
        &["dl"],
        "walked through level2: yes, level1: yes\n",
    );
}

#[test]
fn pthread_exit_runs_the_cleanup_handlers_of_jit_frames() {
    let dir = scratch("unwinder-pthread-exit");
    // With -fexceptions, pthread_cleanup_push is a cleanup attribute that
    // the forced unwind of pthread_exit runs frame by frame (its
    // personality is libgcc_s's `__gcc_personality_v0`).
    let src = r#"
#include <pthread.h>
#include <stdio.h>
static void cleanup(void *what) { printf("cleanup %s\n", (const char *)what); }
__attribute__((noinline)) static void inner(void) {
    pthread_cleanup_push(cleanup, "inner");
    pthread_exit(0);
    pthread_cleanup_pop(0);
}
static void *thread(void *arg) {
    (void)arg;
    pthread_cleanup_push(cleanup, "outer");
    inner();
    pthread_cleanup_pop(0);
    return 0;
}
int main(void) {
    pthread_t t;
    if (pthread_create(&t, 0, thread, 0)) return 1;
    pthread_join(t, 0);
    printf("joined\n");
    return 0;
}
"#;
    let obj = compile_c_text(&dir, "pexit", src, &["-O2", "-fexceptions"]);
    assert_everywhere(
        &dir,
        &[obj],
        &["pthread"],
        "cleanup inner\ncleanup outer\njoined\n",
    );
}
