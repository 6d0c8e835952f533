//! Helpers shared by the image tests: the `kiln` binary, its output shown
//! on failure, `kiln image save` / `kiln image info`, imaging link options,
//! the C loader.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_linker::image_file::BuildId;
use kiln_linker::{LinkOptions, Linker};

/// `linker/loader/build.sh ISA DIR` (`"x86_64"` with gcc, `"aarch64"` with
/// aarch64-linux-gnu-gcc), once per ISA per test process: `DIR/kiln-load`.
pub(crate) fn c_loader(isa: &'static str) -> &'static Path {
    static X86_64: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static AARCH64: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let (cell, cc) = match isa {
        "x86_64" => (&X86_64, "gcc"),
        "aarch64" => (&AARCH64, "aarch64-linux-gnu-gcc"),
        _ => panic!("no C loader for {isa}"),
    };
    cell.get_or_init(|| {
        assert!(super::need_tool(cc), "{cc} builds kiln-load for {isa}");
        let dir = super::scratch(&format!("c-loader-{isa}"));
        let o = Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("loader/build.sh"))
            .arg(isa)
            .arg(&dir)
            .output()
            .expect("sh runs");
        assert!(o.status.success(), "build.sh {isa}: {}", show(&o));
        dir.join("kiln-load")
    })
}

/// qemu's user-mode aarch64 emulator and the cross sysroot it takes
/// libraries from.
pub(crate) const QEMU: &str = "qemu-aarch64-static";
const AARCH64_SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// Runs aarch64 program `exe` with `args` under qemu.
pub(crate) fn qemu<A: AsRef<std::ffi::OsStr>>(exe: &Path, args: &[A]) -> Output {
    assert!(super::need_tool(QEMU));
    Command::new(QEMU)
        .args(["-L", AARCH64_SYSROOT])
        .arg(exe)
        .args(args)
        .output()
        .expect("qemu runs")
}

/// The `kiln` binary of this build.
pub(crate) fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// A finished command's status, stdout and stderr, for assertion messages.
pub(crate) fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `o` printed what the native build printed (`native_out`) and ended with
/// its status (`native_ret`); `what` names the run in the failure.
pub(crate) fn assert_like_native(o: &Output, native_out: &str, native_ret: i32, what: &str) {
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        native_out,
        "{what}: stdout differs from the native build's\n{}",
        show(o)
    );
    assert_eq!(
        o.status.code(),
        Some(native_ret),
        "{what}: status differs from the native build's\n{}",
        show(o)
    );
}

/// `kiln image save -o out inputs...`, which must succeed.
pub(crate) fn save(out: &Path, inputs: &[PathBuf]) {
    let _ = std::fs::remove_file(out);
    let o = kiln()
        .args(["image", "save", "-o"])
        .arg(out)
        .args(inputs)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "image save: {}", show(&o));
}

/// `kiln image save -o out --against LIB... inputs...`, which must succeed.
pub(crate) fn save_against(out: &Path, against: &[&Path], inputs: &[PathBuf]) {
    let _ = std::fs::remove_file(out);
    let mut cmd = kiln();
    cmd.args(["image", "save", "-o"]).arg(out);
    for a in against {
        cmd.arg("--against").arg(a);
    }
    let o = cmd.args(inputs).output().expect("kiln runs");
    assert!(o.status.success(), "image save --against: {}", show(&o));
}

/// `kiln image info [--json] image`'s stdout; it must succeed.
pub(crate) fn info_of(image: &Path, json: bool) -> String {
    let mut cmd = kiln();
    cmd.args(["image", "info"]);
    if json {
        cmd.arg("--json");
    }
    let o = cmd.arg(image).output().expect("kiln runs");
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Default link options, in imaging mode or not.
pub(crate) fn options(imaging: bool) -> LinkOptions {
    let mut o = LinkOptions::default();
    o.imaging = imaging;
    o
}

/// A linker in imaging mode holding `objs` (read from their files, named
/// by their paths), and the objects' build id.
pub(crate) fn imaging_linker(objs: &[PathBuf]) -> (Linker, BuildId) {
    let options = options(true);
    let inputs: Vec<(String, Vec<u8>)> = objs
        .iter()
        .map(|o| {
            (
                o.display().to_string(),
                std::fs::read(o).expect("read object"),
            )
        })
        .collect();
    let id = BuildId::of_inputs(
        &options,
        inputs.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    let mut linker = Linker::new(options);
    for (n, b) in inputs {
        linker.add_object_bytes(n, b);
    }
    (linker, id)
}
