//! Required CPU features in image headers: recorded from the input
//! objects' GNU property notes (`gcc -march=x86-64-v3 -mneeded`, and the
//! assembler's `-mx86-used-note=yes`) and from `kiln image save
//! --cpu-features`; a load on a CPU without them is refused naming the
//! field and both values (`kiln run` here, the C loader in c_loader.rs).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use kiln_linker::image_file::{self, CpuFeatures};

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

/// A program whose dot product gcc vectorizes (AVX2 and FMA at v3).
const DOT: &str = r#"
#include <stdio.h>
float a[1024], b[1024];
__attribute__((noinline)) float dot(const float *x, const float *y, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}
int main(void) {
    for (int i = 0; i < 1024; i++) a[i] = (float)(i % 7), b[i] = (float)(i % 5);
    printf("dot %.0f\n", dot(a, b, 1024));
    return 0;
}
"#;

/// `kiln image save [extra] -o out inputs`.
fn save_with(out: &Path, inputs: &[PathBuf], extra: &[&str]) -> Output {
    let _ = std::fs::remove_file(out);
    kiln()
        .args(["image", "save"])
        .args(extra)
        .arg("-o")
        .arg(out)
        .args(inputs)
        .output()
        .expect("kiln runs")
}

/// `kiln image info --json image`: its `cpu_features` value.
fn cpu_features_of(image: &Path) -> String {
    let o = kiln()
        .args(["image", "info", "--json"])
        .arg(image)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{}", show(&o));
    let j = String::from_utf8_lossy(&o.stdout).into_owned();
    j.split("\"cpu_features\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no cpu_features in {j}"))
        .to_string()
}

fn build_id_of(image: &Path) -> String {
    let o = kiln()
        .args(["image", "info", "--json"])
        .arg(image)
        .output()
        .expect("kiln runs");
    let j = String::from_utf8_lossy(&o.stdout).into_owned();
    j.split("\"build_id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no build id in {j}"))
        .to_string()
}

fn kiln_run(image: &Path) -> Output {
    kiln().arg("run").arg(image).output().expect("kiln runs")
}

#[test]
fn objects_built_for_x86_64_v3_give_an_image_that_requires_it() {
    assert!(need_tool("gcc"));
    let dir = scratch("images-cpu-v3");
    // The compiler's note (-mneeded: ISA_1_NEEDED from -march).
    let needed = compile_c_text(
        &dir,
        "needed",
        DOT,
        &["-O2", "-fPIC", "-march=x86-64-v3", "-mneeded"],
    );
    let image = dir.join("needed.kimg");
    let o = save_with(&image, std::slice::from_ref(&needed), &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(cpu_features_of(&image), "x86-64-v2,x86-64-v3");
    // The assembler's note (ISA_1_USED and FEATURE_2_USED: YMM is AVX).
    let used = compile_c_text(
        &dir,
        "used",
        DOT,
        &[
            "-O2",
            "-fPIC",
            "-march=x86-64-v3",
            "-Wa,-mx86-used-note=yes",
        ],
    );
    let image = dir.join("used.kimg");
    let o = save_with(&image, std::slice::from_ref(&used), &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(cpu_features_of(&image), "avx,x86-64-v2,x86-64-v3");
    // This CPU has them: the image runs.
    let o = kiln_run(&image);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "dot 6129\n");
    // Without notes nothing is required.
    let plain = compile_c_text(&dir, "plain", DOT, &["-O2", "-fPIC"]);
    let image = dir.join("plain.kimg");
    let o = save_with(&image, &[plain], &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(cpu_features_of(&image), "none");
    let o = kiln()
        .args(["image", "info"])
        .arg(&image)
        .output()
        .expect("kiln runs");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("CPU features    none"),
        "{}",
        show(&o)
    );
}

/// The v3 image with a reserved header bit set (no CPU has it; resealed so
/// the feature check, not the hash, speaks).
fn image_requiring_an_absent_feature(dir: &Path) -> PathBuf {
    let obj = compile_c_text(
        dir,
        "absent",
        DOT,
        &["-O2", "-fPIC", "-march=x86-64-v3", "-mneeded"],
    );
    let image = dir.join("absent.kimg");
    let o = save_with(&image, &[obj], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let mut v = std::fs::read(&image).expect("read image");
    v[64 + 24 + 7] |= 0x80;
    image_file::reseal(&mut v);
    std::fs::write(&image, v).expect("write image");
    image
}

/// clang's integrated assembler writes no ISA note (only `-fcf-protection`'s
/// IBT/SHSTK property, not a CPU requirement); GNU as under clang
/// (`-fno-integrated-as`) writes the used note.
#[test]
fn clang_objects_record_only_what_their_notes_say() {
    assert!(need_tool("clang"));
    let dir = scratch("images-cpu-clang");
    let src = dir.join("dot.c");
    std::fs::write(&src, DOT).expect("write source");
    let cases: [(&[&str], &str); 2] = [
        (&["-fcf-protection"], "none"),
        (
            &["-fno-integrated-as", "-Wa,-mx86-used-note=yes"],
            "avx,x86-64-v2,x86-64-v3",
        ),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let mut flags = vec!["-O2", "-fPIE", "-march=x86-64-v3"];
        flags.extend_from_slice(extra);
        let obj = compile("clang", &src, &flags, &[], &dir.join(format!("dot{i}.o")));
        let image = dir.join(format!("dot{i}.kimg"));
        let o = save_with(&image, &[obj], &[]);
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(cpu_features_of(&image), want, "clang {flags:?}");
        let o = kiln_run(&image);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "dot 6129\n",
            "{}",
            show(&o)
        );
    }
}

#[test]
fn kiln_run_refuses_an_image_requiring_a_feature_this_cpu_lacks() {
    assert!(need_tool("gcc"));
    let dir = scratch("images-cpu-absent");
    let image = image_requiring_an_absent_feature(&dir);
    let o = kiln_run(&image);
    assert!(!o.status.success(), "{}", show(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(
            "`required CPU features` is x86-64-v2,x86-64-v3,bit63, expected a subset of this CPU's "
        ),
        "{}",
        show(&o)
    );
    // Both values: this CPU's set is named, from the same table.
    let cpu = e
        .split("a subset of this CPU's ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("");
    assert!(!cpu.contains("bit63"), "{e}");
    assert!(cpu.split(',').all(|n| CpuFeatures::parse(n).is_ok()), "{e}");
    assert!(o.stdout.is_empty(), "nothing ran: {}", show(&o));
}

#[test]
fn declared_cpu_features_are_recorded_and_unknown_ones_refused() {
    assert!(need_tool("gcc"));
    let dir = scratch("images-cpu-declared");
    let plain = compile_c_text(&dir, "plain", DOT, &["-O2", "-fPIC"]);
    let bare = dir.join("bare.kimg");
    assert!(
        save_with(&bare, std::slice::from_ref(&plain), &[])
            .status
            .success()
    );
    let declared = dir.join("declared.kimg");
    let o = save_with(
        &declared,
        std::slice::from_ref(&plain),
        &["--cpu-features", "fma,avx2"],
    );
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(cpu_features_of(&declared), "avx2,fma");
    // The build id covers them.
    assert_ne!(build_id_of(&bare), build_id_of(&declared));
    // The union with the notes.
    let v3 = compile_c_text(
        &dir,
        "v3",
        DOT,
        &["-O2", "-fPIC", "-march=x86-64-v3", "-mneeded"],
    );
    let both = dir.join("both.kimg");
    let o = save_with(&both, &[v3], &["--cpu-features", "avx512f"]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(cpu_features_of(&both), "avx512f,x86-64-v2,x86-64-v3");
    // An unknown name: refused, nothing written.
    let bad = dir.join("bad.kimg");
    let o = save_with(&bad, &[plain], &["--cpu-features", "avx2,avx9000"]);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("--cpu-features: unknown CPU feature `avx9000`"),
        "{}",
        show(&o)
    );
    assert!(!bad.exists());
}
