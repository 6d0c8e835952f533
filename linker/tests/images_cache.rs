//! `kiln run --cache DIR` with image files among the inputs: the objects
//! are linked against the images and cached as an image that links against
//! them by build id; the images themselves are loaded as they are.

mod common;

use std::path::{Path, PathBuf};

use common::images::{kiln, show};
use common::*;

/// `kiln image save --allow-undefined -o out inputs...`.
fn save_library(out: &Path, inputs: &[PathBuf]) {
    let _ = std::fs::remove_file(out);
    let o = kiln()
        .args(["image", "save", "--allow-undefined", "-o"])
        .arg(out)
        .args(inputs)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "image save: {}", show(&o));
}

/// The program of [`cycle`]: `is_even`, `main`; the library's `calls`
/// and `is_odd`.
const PROG: &str = "#include <stdio.h>\nextern int calls;\nint is_odd(unsigned n);\n\
    int is_even(unsigned n) { return n == 0 ? 1 : is_odd(n - 1); }\n\
    int main(void) {\n\
      int e = is_even(10), o = is_odd(7);\n\
      printf(\"even(10)=%d odd(7)=%d calls=%d\\n\", e, o, calls);\n\
      return is_even(4) + 2;\n\
    }\n";

/// A library and a program that call each other (`is_odd` in the library,
/// `is_even` in the program), compiled with `opt`: `(library, program)`
/// objects, and the native build's (stdout, status).
fn cycle(dir: &Path, opt: &str) -> (PathBuf, PathBuf, (String, i32)) {
    let flags = [opt, "-fPIC"];
    let lib = compile_c_text(
        dir,
        &format!("lib{opt}"),
        "int is_even(unsigned n);\nint calls = 0;\n\
         int is_odd(unsigned n) { calls++; return n == 0 ? 0 : is_even(n - 1); }\n",
        &flags,
    );
    let prog = compile_c_text(dir, "prog", PROG, &["-O2", "-fPIC"]);
    let native = run_native(
        "gcc",
        &[lib.clone(), prog.clone()],
        &["-O2", "-fPIC"],
        &[],
        &dir.join("native"),
    );
    assert_eq!(native.1, 3, "{native:?}");
    (lib, prog, native)
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut e: Vec<PathBuf> = std::fs::read_dir(cache)
        .expect("cache dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "kimg"))
        .collect();
    e.sort();
    e
}

/// A library image and an object that call each other, run with
/// `--cache`: a miss links the object against the image and stores an
/// entry that depends on the image's build id; the next run hits; another
/// build of the library image misses again. An object's weak definition
/// that an image also defines is not cached (it would bind inside the
/// entry); images alone are not cached.
#[test]
fn run_cache_takes_image_files_among_its_inputs() {
    if !need_tool("gcc") || !need_tool("clang") {
        return;
    }
    let dir = scratch("images-cache-mixed");
    let (lib_o, prog_o, native) = cycle(&dir, "-O2");
    let lib = dir.join("lib.kimg");
    save_library(&lib, std::slice::from_ref(&lib_o));
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let run_with = |inputs: &[&Path], native: &(String, i32)| {
        let o = kiln()
            .args(["run", "--stats", "--cache"])
            .arg(&cache)
            .args(inputs)
            .output()
            .expect("kiln runs");
        assert_eq!(
            &(
                String::from_utf8_lossy(&o.stdout).into_owned(),
                o.status.code().unwrap_or(-1)
            ),
            native,
            "{}",
            show(&o)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let run = || run_with(&[&lib, &prog_o], &native);
    let err = run();
    assert!(err.contains("cache miss"), "{err}");
    let stored = entries(&cache);
    assert_eq!(stored.len(), 1, "{stored:?}");
    // The entry holds the object's code and links against the library.
    let info = |p: &Path| {
        let o = kiln()
            .args(["image", "info", "--json"])
            .arg(p)
            .output()
            .expect("kiln runs");
        assert!(o.status.success(), "{}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let lib_info = info(&lib);
    let lib_id = lib_info
        .split("\"build_id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("build id");
    assert!(info(&stored[0]).contains(lib_id), "{}", info(&stored[0]));
    assert!(run().contains("cache hit"));
    // Another build of the library: another key, a miss.
    let (lib_o1, _, _) = cycle(&dir, "-O1");
    save_library(&lib, &[lib_o1]);
    assert!(run().contains("cache miss"));
    assert_eq!(entries(&cache).len(), 2);
    // Only images: nothing to link, nothing cached; it runs.
    let all = dir.join("all.kimg");
    save_library(&all, &[lib_o.clone(), prog_o.clone()]);
    let err = run_with(&[&all], &native);
    assert!(err.contains("nothing to cache"), "{err}");
    assert_eq!(entries(&cache).len(), 2);
    // prog_a.o's weak `weak_value` loses to prog_b's strong one (in
    // b.kimg) when run uncached, as natively: not cached.
    let flags = ["-O2", "-fPIE", "-fcommon"];
    let objs: Vec<PathBuf> = ["prog_a", "prog_b"]
        .iter()
        .map(|s| {
            compile(
                "clang",
                &c_dir().join(format!("{s}.c")),
                &flags,
                &[],
                &dir.join(format!("{s}.o")),
            )
        })
        .collect();
    let native_ab = run_native("clang", &objs, &flags, &[], &dir.join("native-ab"));
    let b = dir.join("b.kimg");
    save_library(&b, &objs[1..]);
    let err = run_with(&[&b, &objs[0]], &native_ab);
    assert!(
        err.contains("not cached") && err.contains("`weak_value`"),
        "{err}"
    );
    assert_eq!(entries(&cache).len(), 2);
    // gcc -fPIE reaches `calls` PC-relatively: not cached, it runs.
    let pie = compile_c_text(&dir, "prog-pie", PROG, &["-O2", "-fPIE"]);
    let err = run_with(&[&lib, &pie], &native);
    assert!(
        err.contains("not cached") && err.contains("`calls`"),
        "{err}"
    );
    assert_eq!(entries(&cache).len(), 2);
}

/// A library image that imports from the program (`is_even`) and the
/// program's image that links against it by build id: a cycle across
/// images. The program's image resolves its own addresses before it waits
/// for the library, so the library's lookup of `is_even` does not block on
/// it (it used to fail: "blocking lookups form a cycle", then the program
/// found the library unloaded).
#[test]
fn an_image_linked_against_a_library_image_that_imports_from_it_closes_the_cycle() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-cycle-by-build-id");
    let (lib_o, prog_o, native) = cycle(&dir, "-O2");
    let lib = dir.join("lib.kimg");
    save_library(&lib, &[lib_o]);
    let prog = dir.join("a.kimg");
    let _ = std::fs::remove_file(&prog);
    let o = kiln()
        .args(["image", "save", "--allow-undefined", "--against"])
        .arg(&lib)
        .arg("-o")
        .arg(&prog)
        .arg(&prog_o)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{}", show(&o));
    for order in [[&lib, &prog], [&prog, &lib]] {
        for threads in ["1", "2"] {
            let mut cmd = kiln();
            cmd.arg("run");
            if threads == "2" {
                cmd.args(["--threads", "2"]);
            }
            let o = cmd.args(order).output().expect("kiln runs");
            assert_eq!(
                (
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    o.status.code().unwrap_or(-1)
                ),
                native,
                "{order:?} threads {threads}: {}",
                show(&o)
            );
        }
    }
}
