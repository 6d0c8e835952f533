//! `kiln run --cache DIR` with image files among the inputs: the objects
//! are linked against the images and cached as an image that links against
//! them by build id; the images themselves are loaded as they are.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut e: Vec<PathBuf> = std::fs::read_dir(cache)
        .expect("cache dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    e.sort();
    e
}

/// A library image and an object that call each other (`is_even` and
/// `is_odd` close a cycle), run with `--cache`: a miss links the object
/// against the image and stores an entry that depends on the image's build
/// id; the next run hits; another build of the library image misses again.
#[test]
fn run_cache_takes_image_files_among_its_inputs() {
    if !need_tool("clang") {
        return;
    }
    let dir = scratch("images-cache-mixed");
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
    let native = run_native("clang", &objs, &flags, &[], &dir.join("native"));
    let lib = dir.join("b.kimg");
    save_library(&lib, &objs[1..]);
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let run = || {
        let o = kiln()
            .args(["run", "--stats", "--cache"])
            .arg(&cache)
            .arg(&lib)
            .arg(&objs[0])
            .output()
            .expect("kiln runs");
        assert_eq!(
            (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                o.status.code().unwrap_or(-1)
            ),
            native,
            "{}",
            show(&o)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
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
    let o1 = compile(
        "clang",
        &c_dir().join("prog_b.c"),
        &["-O1", "-fPIE", "-fcommon"],
        &[],
        &dir.join("prog_b_O1.o"),
    );
    save_library(&lib, &[o1]);
    assert!(run().contains("cache miss"));
    assert_eq!(entries(&cache).len(), 2);
    // Only images: nothing to link, nothing cached; it runs.
    let all = dir.join("all.kimg");
    save_library(&all, &objs);
    let o = kiln()
        .args(["run", "--stats", "--cache"])
        .arg(&cache)
        .arg(&all)
        .output()
        .expect("kiln runs");
    assert_eq!(
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            o.status.code().unwrap_or(-1)
        ),
        native,
        "{}",
        show(&o)
    );
    assert_eq!(entries(&cache).len(), 2);
}
