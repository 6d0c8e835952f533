//! The C loader (`linker/loader/`): the image format's second
//! implementation. Real programs saved as images by `kiln image save` run
//! under `kiln-load` with the same stdout and exit status as under
//! `kiln run` and as the native build; refusals name the field and both
//! values; mutants of a real image never crash the loader; `build.sh`
//! builds it for x86-64 and aarch64.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use common::images::{assert_like_native, kiln, save, save_against, show};
use common::lua::build_lua;
use common::programs::{CXX_SHAPES, CXX_SHAPES_MAIN};
use common::*;
use kiln_linker::image_file;

fn build_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("loader/build.sh")
}

/// Runs `build.sh ISA OUTDIR`, asserting it succeeds without a warning;
/// returns `OUTDIR/kiln-load` (built once per test process).
fn build_loader(isa: &str, compiler: &str) -> PathBuf {
    build_loader_with(isa, compiler, "", &format!("c-loader-build-{isa}"))
}

/// [`build_loader`] with extra `CFLAGS`, into scratch directory `tag`: once
/// per tag in this process, and never in place. The linker writes a new
/// executable in pieces and marks it executable last, so a loader another
/// test runs must never be the file being built (that test's exec failed
/// with "Permission denied"): each build goes to a directory of its own
/// and is renamed into `tag` whole.
fn build_loader_with(isa: &str, compiler: &str, cflags: &str, tag: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path)) = built.iter().find(|(t, _)| t == tag) {
        return path.clone();
    }
    assert!(
        need_tool(compiler),
        "{compiler} is needed to build kiln-load"
    );
    let dir = scratch(tag);
    let fresh = dir.join(format!("build-{}", std::process::id()));
    let o = Command::new("sh")
        .arg(build_sh())
        .arg(isa)
        .arg(&fresh)
        .env("CFLAGS", cflags)
        .output()
        .expect("sh runs");
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "build.sh {isa}: {}",
        show(&o)
    );
    let path = dir.join("kiln-load");
    std::fs::rename(fresh.join("kiln-load"), &path).expect("move kiln-load into place");
    let _ = std::fs::remove_dir(&fresh);
    built.push((tag.to_string(), path.clone()));
    path
}

/// The x86-64 loader, built once per test process.
fn loader() -> &'static Path {
    static LOADER: OnceLock<PathBuf> = OnceLock::new();
    LOADER.get_or_init(|| build_loader("x86_64", "gcc"))
}

fn run_loader(image: &Path, args: &[&str]) -> Output {
    Command::new(loader())
        .arg(image)
        .args(args)
        .output()
        .expect("kiln-load runs")
}

/// Builds `objs` natively, saves them as an image, and demands the same
/// stdout and exit status from the native build, `kiln run IMAGE -- args`
/// and `kiln-load IMAGE args`. Returns the image's path.
fn check_three_ways(
    cc: &str,
    objs: &[PathBuf],
    flags: &[&str],
    args: &[&str],
    tag: &str,
) -> PathBuf {
    let dir = scratch(&format!("c-loader-{tag}"));
    let exe = dir.join("native");
    let (native_out, native_ret) = if args.is_empty() {
        run_native(cc, objs, flags, &["m", "dl"], &exe)
    } else {
        run_native(cc, objs, flags, &["m", "dl"], &exe);
        let o = Command::new(&exe).args(args).output().expect("native runs");
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            o.status.code().unwrap_or(-1),
        )
    };
    assert!(
        !native_out.is_empty(),
        "{tag}: the native build printed nothing"
    );
    let image = dir.join("prog.kimg");
    save(&image, objs);
    let k = kiln()
        .arg("run")
        .arg(&image)
        .arg("--")
        .args(args)
        .output()
        .expect("kiln runs");
    assert_like_native(&k, &native_out, native_ret, &format!("{tag}: kiln run"));
    let l = run_loader(&image, args);
    assert_like_native(&l, &native_out, native_ret, &format!("{tag}: kiln-load"));
    assert!(l.stderr.is_empty(), "{tag}: kiln-load said\n{}", show(&l));
    image
}

fn prog_ab(cc: &str, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let dir = scratch(&format!("c-loader-{tag}"));
    ["prog_a", "prog_b"]
        .iter()
        .map(|s| {
            compile(
                cc,
                &c_dir().join(format!("{s}.c")),
                flags,
                &[],
                &dir.join(format!("{s}.o")),
            )
        })
        .collect()
}

#[test]
fn build_sh_builds_kiln_load_for_x86_64_and_aarch64() {
    let x86 = build_loader("x86_64", "gcc");
    let arm = build_loader("aarch64", "aarch64-linux-gnu-gcc");
    // e_machine of the executables: EM_X86_64 (62) and EM_AARCH64 (183).
    for (exe, machine) in [(&x86, 62u16), (&arm, 183)] {
        let bytes = std::fs::read(exe).expect("kiln-load was built");
        assert_eq!(&bytes[..4], b"\x7fELF", "{}", exe.display());
        assert_eq!(
            u16::from_le_bytes([bytes[18], bytes[19]]),
            machine,
            "{}",
            exe.display()
        );
    }
    // The aarch64 build under qemu: it refuses an x86-64 image naming both
    // machines; relabelled as aarch64 (header and ELF machine, resealed) the
    // same image passes its BLAKE3 hash and every table check, and is
    // mapped, rebased, bound and protected (KILN_LOAD_NOEXEC: never run).
    assert!(need_tool("qemu-aarch64-static"));
    let dir = scratch("c-loader-build-aarch64");
    let run_arm = |bytes: &[u8], name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write image");
        Command::new("qemu-aarch64-static")
            .args(["-L", "/usr/aarch64-linux-gnu"])
            .arg(&arm)
            .arg(&path)
            .env("KILN_LOAD_NOEXEC", "1")
            .output()
            .expect("qemu runs")
    };
    let good = real_image();
    let o = run_arm(&good, "x86.kimg");
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("image field `machine` is 62, expected 183"),
        "{}",
        show(&o)
    );
    let mut relabelled = good.clone();
    relabelled[18] = 183;
    relabelled[64 + 16] = 183;
    image_file::reseal(&mut relabelled);
    let o = run_arm(&relabelled, "relabelled.kimg");
    assert!(o.status.success() && o.stderr.is_empty(), "{}", show(&o));
    relabelled[0x1000] ^= 1;
    let o = run_arm(&relabelled, "damaged.kimg");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("image field `content hash` is"),
        "{}",
        show(&o)
    );
    // Usage, and an unknown ISA.
    let o = Command::new(&x86).output().expect("kiln-load runs");
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("usage: kiln-load IMAGE"));
    let o = Command::new("sh")
        .arg(build_sh())
        .args(["riscv64", "/nonexistent"])
        .output()
        .expect("sh runs");
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unknown ISA"));
}

#[test]
fn c_programs_run_under_kiln_load_as_under_kiln_and_natively() {
    assert!(need_tool("clang") && need_tool("gcc"));
    let flags = ["-O2", "-fPIE", "-fcommon"];
    let objs = prog_ab("clang", &flags, "c-clang");
    check_three_ways("clang", &objs, &flags, &[], "c-clang");
    let flags = ["-O2", "-fPIC", "-fcommon"];
    let objs = prog_ab("gcc", &flags, "c-gcc-pic");
    check_three_ways("gcc", &objs, &flags, &[], "c-gcc-pic");
}

#[test]
fn cxx_constructors_exceptions_and_finalizers_under_kiln_load() {
    // g++'s `-fPIE` reaches `std::cout` PC-relative: PC32 imports.
    for (cxx, flags, tag) in [
        ("clang++", ["-O2", "-fPIE"], "cxx-clang"),
        ("g++", ["-O2", "-fPIC"], "cxx-gcc"),
        ("g++", ["-O2", "-fPIE"], "cxx-gcc-pie"),
    ] {
        assert!(need_tool(cxx));
        let dir = scratch(&format!("c-loader-{tag}"));
        let mut objs = Vec::new();
        for (name, src) in [("a", CXX_SHAPES_MAIN), ("b", CXX_SHAPES)] {
            let path = dir.join(format!("{name}.cpp"));
            std::fs::write(&path, src).expect("write source");
            objs.push(compile(
                cxx,
                &path,
                &flags,
                &[],
                &dir.join(format!("{name}.o")),
            ));
        }
        check_three_ways(cxx, &objs, &flags, &["one", "two words"], tag);
    }
}

#[test]
fn lua_runs_under_kiln_load_as_under_kiln_and_natively() {
    // gcc's -fPIE reaches stdout and stderr PC-relative: PC32 imports.
    for cc in ["clang", "gcc"] {
        assert!(need_tool(cc));
        let flags = ["-O2", "-fPIE"];
        let objs = build_lua(cc, &flags, &format!("c-loader-{cc}-O2-fPIE"));
        check_three_ways(cc, &objs, &flags, &[], &format!("lua-{cc}"));
    }
}

/// Two-level Lua, as `images.rs` runs it under kiln: Lua's core saved as
/// `liblua.kimg`, the driver as `prog.kimg` linked against it by build id.
/// `kiln-load prog.kimg` finds the library next to the program, binds the
/// program's references into it by offset and runs like the native build;
/// without the library, or with another build of it, it refuses naming the
/// library and the build ids.
#[test]
fn a_program_image_linked_against_a_library_image_runs_under_kiln_load() {
    assert!(need_tool("clang"));
    let flags = ["-O2", "-fPIE"];
    let objs = build_lua("clang", &flags, "c-loader-two-level");
    let dir = scratch("c-loader-two-level");
    let (native_out, native_ret) =
        run_native("clang", &objs, &flags, &["m", "dl"], &dir.join("native"));
    let (driver, core) = objs.split_last().expect("objects");
    let (lib, prog) = (dir.join("liblua.kimg"), dir.join("prog.kimg"));
    save(&lib, core);
    save_against(&prog, &[&lib], std::slice::from_ref(driver));
    let l = run_loader(&prog, &[]);
    assert_like_native(&l, &native_out, native_ret, "kiln-load prog.kimg");
    assert!(l.stderr.is_empty(), "kiln-load said\n{}", show(&l));

    // The library's build id, as the program records it.
    let info =
        image_file::inspect("prog.kimg", &std::fs::read(&prog).expect("read")).expect("inspects");
    let lib_id = info.dependencies[0].build_id.to_string();
    // Alone in another directory: the library is named, with its build id.
    let alone = scratch("c-loader-two-level-alone");
    std::fs::copy(&prog, alone.join("prog.kimg")).expect("copy");
    let _ = std::fs::remove_file(alone.join("liblua.kimg"));
    let e = run_loader(&alone.join("prog.kimg"), &[]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert_eq!(e.status.code(), Some(127), "{}", show(&e));
    assert!(
        err.contains("liblua.kimg") && err.contains(&lib_id) && e.stdout.is_empty(),
        "{}",
        show(&e)
    );
    // Another build of the library next to it: both build ids are named.
    let extra = compile_c_text(
        &alone,
        "extra",
        "int extra_fn(void) { return 1; }\n",
        &["-O2"],
    );
    let mut rebuilt = core.to_vec();
    rebuilt.push(extra);
    save(&alone.join("liblua.kimg"), &rebuilt);
    let rebuilt = std::fs::read(alone.join("liblua.kimg")).expect("read");
    let other_id = image_file::inspect("liblua.kimg", &rebuilt)
        .expect("inspects")
        .build_id
        .to_string();
    assert_ne!(other_id, lib_id);
    let e = run_loader(&alone.join("prog.kimg"), &[]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert_eq!(e.status.code(), Some(127), "{}", show(&e));
    assert!(
        err.contains(&lib_id) && err.contains(&other_id) && e.stdout.is_empty(),
        "{}",
        show(&e)
    );
}

/// A real image (the two-object C program), saved by `kiln image save`.
fn real_image() -> Vec<u8> {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            assert!(need_tool("clang"));
            let objs = prog_ab("clang", &["-O2", "-fPIE", "-fcommon"], "real");
            let path = scratch("c-loader-real").join("real.kimg");
            save(&path, &objs);
            std::fs::read(&path).expect("read the image")
        })
        .clone()
}

/// Writes `bytes` as an image file and runs the loader on it with
/// `KILN_LOAD_NOEXEC=1` (load, bind, protect; nothing runs).
fn load_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Output {
    load_bytes_with(loader(), dir, name, bytes)
}

fn load_bytes_with(loader: &Path, dir: &Path, name: &str, bytes: &[u8]) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write mutant");
    Command::new(loader)
        .arg(&path)
        .env("KILN_LOAD_NOEXEC", "1")
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .expect("kiln-load runs")
}

/// The loader's message for `bytes`, asserting it refused them (127).
fn refusal(bytes: &[u8]) -> String {
    let o = load_bytes(&scratch("c-loader-refuse"), "refused.kimg", bytes);
    assert_eq!(o.status.code(), Some(127), "not refused: {}", show(&o));
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(e.starts_with("kiln-load: "), "{e}");
    e
}

/// `(sh_offset field position, sh_size field position)` of section `name`.
fn section_fields(file: &[u8], name: &str) -> (usize, usize) {
    use object::read::elf::FileHeader as _;
    let e = object::LittleEndian;
    let h = object::elf::FileHeader64::<object::LittleEndian>::parse(file).expect("parses");
    let sections = h.sections(e, file).expect("sections");
    let shoff = h.e_shoff.get(e) as usize;
    for (i, s) in sections.iter().enumerate() {
        if sections.section_name(e, s).unwrap_or_default() == name.as_bytes() {
            return (shoff + 64 * i + 24, shoff + 64 * i + 32);
        }
    }
    panic!("no section {name}");
}

#[test]
fn refusals_name_the_field_and_both_values() {
    let good = real_image();
    let o = load_bytes(&scratch("c-loader-refuse"), "good.kimg", &good);
    assert!(o.status.success(), "the real image loads: {}", show(&o));
    let resealed = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        edit(&mut v);
        image_file::reseal(&mut v);
        refusal(&v)
    };
    // (header byte, new value, what the loader says), each resealed.
    let cases: [(usize, u8, &str); 9] = [
        (8, 1, "image field `format version` is 1, expected 2"),
        (
            352,
            3,
            "image field `base alignment` is 0x1003, expected a power of two from 0x1000 to 0x40000000",
        ),
        (16, 183, "image field `machine` is 183, expected 62"),
        (18, 4, "image field `pointer width` is 4, expected 8"),
        (
            24 + 7,
            0x80,
            "image field `required CPU features` is bit63, expected a subset of this CPU's",
        ),
        (
            288,
            16,
            "image field `TLS template alignment` is 0, expected a power of two up to 4096",
        ),
        (
            320,
            2,
            "image field `TLS template size` is 0 (with other TLS fields non-zero), expected non-zero, or every TLS field 0",
        ),
        (264, 9, "image field `segment count` is 3, expected 9"),
        (
            268,
            good[64 + 268].wrapping_add(1),
            "image field `.kiln.imports size` is",
        ),
    ];
    for (at, value, want) in cases {
        let e = resealed(&|v: &mut Vec<u8>| v[64 + at] = value);
        assert!(e.contains(want), "want {want:?}, got {e}");
    }
    // A dependency table of a partial record.
    let e = resealed(&|v: &mut Vec<u8>| {
        let (_, size_at) = section_fields(v, ".kiln.deps");
        v[size_at] = 32;
        v[64 + 136 + 16 * 6 + 8] = 32;
    });
    assert!(
        e.contains("image field `.kiln.deps size` is 32, expected a multiple of 48"),
        "{e}"
    );
    // An import from a host table (the loader has none).
    let e = resealed(&|v: &mut Vec<u8>| {
        let off = u64::from_le_bytes(v[64 + 136 + 16..64 + 144 + 16].try_into().expect("8 bytes"))
            as usize;
        v[off + 25] = 1;
    });
    assert!(
        e.contains("image field `import source` is 1, expected 0 (by name) or 2"),
        "{e}"
    );
    // A byte of code changed and not resealed: the content hash (BLAKE3).
    let mut v = good.clone();
    v[0x1000 + 10] ^= 0x40;
    let e = refusal(&v);
    assert!(
        e.contains("image field `content hash` is") && e.contains("(the file's bytes)"),
        "{e}"
    );
    // Truncated: the file size, before hashing.
    let e = refusal(&good[..good.len() - 100]);
    assert!(
        e.contains(&format!(
            "`file size` is {}, expected {}",
            good.len(),
            good.len() - 100
        )),
        "{e}"
    );
    assert!(refusal(b"\x7fELF not an image").contains("not a kiln image"));
}

#[test]
fn missing_imports_are_all_named() {
    assert!(need_tool("gcc"));
    let dir = scratch("c-loader-missing");
    let src = "extern int kiln_missing_b(void), kiln_missing_a(void);\n\
               int main(void) { return kiln_missing_a() + kiln_missing_b(); }\n";
    let obj = compile_c_text(&dir, "missing", src, &["-O2", "-fPIC"]);
    let image = dir.join("missing.kimg");
    let o = kiln()
        .args(["image", "save", "--allow-undefined", "-o"])
        .arg(&image)
        .arg(&obj)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{}", show(&o));
    let o = run_loader(&image, &[]);
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("imported symbols not found: kiln_missing_a, kiln_missing_b"),
        "{}",
        show(&o)
    );
}

/// File ranges of the metadata a resealed mutant may damage: the ELF file
/// header, the kiln header, the program and section headers and the
/// tables (not the segments' bytes: whoever can recompute the hash is
/// trusted to run code, so code and `.eh_frame` are left alone).
fn metadata_ranges(file: &[u8]) -> Vec<(usize, usize)> {
    use object::read::elf::{FileHeader as _, SectionHeader as _};
    let h = object::elf::FileHeader64::<object::LittleEndian>::parse(file).expect("parses");
    let e = object::LittleEndian;
    let mut out = vec![(0, 64), (64, 64 + 360)];
    let phoff = h.e_phoff.get(e) as usize;
    out.push((phoff, phoff + 56 * h.e_phnum.get(e) as usize));
    let shoff = h.e_shoff.get(e) as usize;
    out.push((shoff, shoff + 64 * h.e_shnum.get(e) as usize));
    let sections = h.sections(e, file).expect("sections");
    for s in sections.iter() {
        let name = sections.section_name(e, s).unwrap_or_default();
        if name.starts_with(b".kiln.") && s.sh_size(e) > 0 && name != b".kiln.header" {
            let o = s.sh_offset(e) as usize;
            out.push((o, o + s.sh_size(e) as usize));
        }
    }
    out
}

/// Mutants of a real image — byte flips anywhere, truncations, and damage
/// to the headers and tables with the content hash recomputed — each
/// loads (status 0 under `KILN_LOAD_NOEXEC=1`) or is refused with a
/// message (status 127): never a signal. One process per mutant, run by
/// the loader and by a build of it with AddressSanitizer and
/// UndefinedBehaviorSanitizer (which must report nothing: an out-of-bounds
/// read that happens not to crash still fails the test).
#[test]
fn mutants_of_a_real_image_never_crash_the_loader() {
    let good = real_image();
    let sanitized = build_loader_with(
        "x86_64",
        "gcc",
        "-g -fsanitize=address,undefined -fno-sanitize-recover=all",
        "c-loader-build-sanitized",
    );
    let ranges = metadata_ranges(&good);
    let dir = scratch("c-loader-mutants");
    let mut rng = Rng(0x2545_f491_9e37_79b9);
    let (mut loaded, mut refused) = (0usize, 0usize);
    const MUTANTS: usize = 600;
    for i in 0..MUTANTS {
        let mut v = good.clone();
        match i % 3 {
            0 => rng.flip_bits(&mut v),
            1 => v.truncate(rng.below(good.len())),
            _ => {
                for _ in 0..=rng.below(3) {
                    let (start, end) = ranges[rng.below(ranges.len())];
                    let at = start + rng.below(end - start);
                    if rng.below(2) == 0 {
                        v[at] ^= 1 << rng.below(8);
                    } else {
                        v[at] = rng.next() as u8;
                    }
                }
                image_file::reseal(&mut v);
            }
        }
        let s = load_bytes_with(&sanitized, &dir, "mutant.kimg", &v);
        let said = String::from_utf8_lossy(&s.stderr);
        assert!(
            matches!(s.status.code(), Some(0 | 127))
                && !said.contains("Sanitizer")
                && !said.contains("runtime error"),
            "mutant {i} (kind {}): the sanitized loader objected: {}",
            i % 3,
            show(&s)
        );
        let o = load_bytes(&dir, "mutant.kimg", &v);
        let stderr = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) => {
                assert!(
                    i % 3 == 2 || v == good,
                    "mutant {i} loaded without a valid hash"
                );
                loaded += 1;
            }
            Some(127) => {
                assert!(stderr.starts_with("kiln-load: "), "mutant {i}: {stderr}");
                if i % 3 == 2 {
                    assert!(!stderr.contains("content hash"), "mutant {i}: {stderr}");
                }
                refused += 1;
            }
            _ => panic!("mutant {i} (kind {}): the loader died: {}", i % 3, show(&o)),
        }
    }
    eprintln!("{loaded} mutants loaded, {refused} refused");
    assert_eq!(loaded + refused, MUTANTS);
    assert!(refused >= MUTANTS * 2 / 3, "only {refused} refused");
}

/// `.preinit_array`, `.ctors`, `.init_array`, `.dtors`, `.fini_array`, with
/// and without priorities, and an `atexit` handler: `kiln-load` runs them in
/// kiln's order (GNU ld's layout, run as one program's start and `exit`).
/// (The native build is no reference here: a gcc-linked executable with a
/// bare `.ctors` section crashes.)
#[test]
fn initializers_and_finalizers_run_in_kiln_order() {
    assert!(need_tool("gcc"));
    let dir = scratch("c-loader-init-order");
    let obj = compile(
        "gcc",
        &c_dir().join("init_order.c"),
        &["-O2", "-fPIC"],
        &[],
        &dir.join("init_order.o"),
    );
    let image = dir.join("order.kimg");
    save(&image, &[obj]);
    let k = kiln()
        .arg("run")
        .arg(&image)
        .args(["--", "x"])
        .output()
        .expect("kiln runs");
    let l = run_loader(&image, &["x"]);
    let expected = "preinit 1\npreinit 2\nctors.101\ninit_array.300\ninit_array 1\ninit_array 2\n\
                    ctors 2\nctors 1\nmain 2 x\natexit\ndtors 1\ndtors 2\nfini_array 2\n\
                    fini_array 1\nfini_array.300\n";
    assert_eq!(
        String::from_utf8_lossy(&k.stdout),
        expected,
        "kiln run\n{}",
        show(&k)
    );
    assert_eq!(
        String::from_utf8_lossy(&l.stdout),
        expected,
        "kiln-load\n{}",
        show(&l)
    );
    assert_eq!((k.status.code(), l.status.code()), (Some(3), Some(3)));
}

/// W^X: under `kiln-load` the image's text is `r-x`, its read-only data
/// `r--`, its data `rw-`, and no mapping of the process is writable and
/// executable.
#[test]
fn final_protections_are_w_xor_x() {
    assert!(need_tool("gcc"));
    let dir = scratch("c-loader-wx");
    let obj = compile(
        "gcc",
        &c_dir().join("wx_maps.c"),
        &["-O2", "-fPIC"],
        &[],
        &dir.join("wx_maps.o"),
    );
    let image = dir.join("wx.kimg");
    save(&image, &[obj]);
    let o = run_loader(&image, &[]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "text r-xp\nrodata r--p\ndata rw-p\nwritable and executable: 0\n",
        "{}",
        show(&o)
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}

/// Thread-locals under the C loader, in every model: the C program with
/// `__thread` variables used from pthreads (gcc `-fPIC`: general/local-
/// dynamic; gcc and clang `-fPIE`: local-exec + initial-exec, linked
/// against kiln's static TLS area, which lies inside the loader's; gcc
/// `-fPIC -mtls-dialect=gnu2`: TLSDESC) and the C++ program with
/// `thread_local` objects used from `std::thread`s (g++ `-fPIC` and
/// `-fPIE`) give the same stdout and status natively, under `kiln run`
/// and under `kiln-load`. Before, `-fPIE` and gnu2 images were refused by
/// the loader (status 127, ``static TLS use` is 2``, ``thread-local slot
/// kind` is 2 (TLSDESC)``).
#[test]
fn thread_locals_of_every_model_run_under_kiln_load() {
    assert!(need_tool("gcc") && need_tool("g++") && need_tool("clang"));
    for (cc, flags, want, tag) in [
        ("gcc", &["-O2", "-fPIC"][..], "R_X86_64_TLSGD", "tls-gd"),
        ("gcc", &["-O2", "-fPIE"][..], "R_X86_64_TPOFF32", "tls-pie"),
        (
            "clang",
            &["-O2", "-fPIE"][..],
            "R_X86_64_GOTTPOFF",
            "tls-pie-clang",
        ),
        (
            "gcc",
            &["-O2", "-fPIC", "-mtls-dialect=gnu2"][..],
            "R_X86_64_GOTPC32_TLSDESC",
            "tls-desc",
        ),
    ] {
        let dir = scratch(&format!("c-loader-{tag}-objs"));
        let objs = compile_sources(cc, &["tls_a.c", "tls_b.c"], flags, &dir);
        let r = relocations(&objs);
        assert!(r.contains(want), "{tag}: no {want} in\n{r}");
        check_three_ways(cc, &objs, flags, &[], tag);
    }
    let cxx = common::programs::cxx_dir();
    for flags in [["-O2", "-fPIC"], ["-O2", "-fPIE"]] {
        let tag = format!("tls-cxx{}", flags.concat());
        let dir = scratch(&format!("c-loader-{tag}-objs"));
        let objs: Vec<PathBuf> = ["tls_defs", "tls_main"]
            .iter()
            .map(|s| {
                let src = cxx.join(format!("{s}.cpp"));
                compile("g++", &src, &flags, &[], &dir.join(format!("{s}.o")))
            })
            .collect();
        check_three_ways("g++", &objs, &flags, &[], &tag);
    }
}

/// The relocation types in `objs` (`readelf -r`): which TLS models a test
/// really covers.
fn relocations(objs: &[PathBuf]) -> String {
    assert!(need_tool("readelf"));
    let o = Command::new("readelf")
        .arg("-rW")
        .args(objs)
        .output()
        .expect("readelf runs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Byte offset of the header's static TLS area (i64) in an image file.
const STATIC_TLS_AREA_AT: usize = 64 + 328;

/// The static TLS an image needs and the loader cannot give is refused
/// (status 127, the field and both values): local-exec code linked against
/// an area outside the loader's (the header edited, the file resealed; `kiln
/// run` refuses it too, its area being another), and TLSDESC code whose
/// template is larger than the loader's 64 KiB area (general-dynamic code
/// with it runs from a heap block per thread; initial-exec code with it
/// is refused by `kiln image save` already, kiln's area being 32 KiB).
#[test]
fn static_tls_the_loader_cannot_give_is_refused() {
    assert!(need_tool("gcc"));
    let dir = scratch("c-loader-tls-area");
    let objs = compile_sources("gcc", &["tls_a.c", "tls_b.c"], &["-O2", "-fPIE"], &dir);
    let image = dir.join("pie.kimg");
    save(&image, &objs);
    let mut bytes = std::fs::read(&image).expect("read the image");
    let at = STATIC_TLS_AREA_AT;
    let area = i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    assert!((-0x1_0000..0).contains(&area), "kiln's area at {area:#x}");
    bytes[at..at + 8].copy_from_slice(&(-0x2_0000i64).to_le_bytes());
    image_file::reseal(&mut bytes);
    let edited = dir.join("edited.kimg");
    std::fs::write(&edited, &bytes).expect("write the image");
    let o = run_loader(&edited, &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(
        o.stdout.is_empty()
            && e.contains("image field `static TLS area` is tp-0x20000 (0x8000 bytes), range 0x0..0x70, expected a range inside kiln-load's static TLS area tp-0x10040 (0x10000 bytes)"),
        "{e}"
    );
    let k = kiln().arg("run").arg(&edited).output().expect("kiln runs");
    let ke = String::from_utf8_lossy(&k.stderr);
    assert!(
        !k.status.success()
            && ke.contains("image field `static TLS area` is tp-0x20000 (0x8000 bytes)"),
        "kiln run: {}",
        show(&k)
    );
    let big = "__thread char big[0x11000] = {1};\n\
               int main(int argc, char **argv) { (void)argv; big[argc] = 2; return big[0] + big[1] + 40; }\n";
    for (flags, tag, refusal) in [
        (&["-O2", "-fPIC"][..], "gd", None),
        (
            &["-O2", "-fPIC", "-mtls-dialect=gnu2"][..],
            "desc",
            Some(
                "image field `TLS template size` is 0x11000 (align 16), expected at most 0x10000 bytes aligned to at most 64",
            ),
        ),
    ] {
        let dir = scratch(&format!("c-loader-tls-big-{tag}"));
        let obj = compile_c_text(&dir, "big", big, flags);
        let image = dir.join("big.kimg");
        save(&image, &[obj]);
        let o = run_loader(&image, &[]);
        let e = String::from_utf8_lossy(&o.stderr);
        match refusal {
            None => assert_eq!(o.status.code(), Some(43), "{tag}: {}", show(&o)),
            Some(want) => assert!(
                o.status.code() == Some(127) && e.contains(want),
                "{tag}: {}",
                show(&o)
            ),
        }
    }
}

/// Resealed damage to the TLS header fields and the import table of a
/// general-dynamic, a local-exec/initial-exec (`-fPIE`) and a TLSDESC
/// image: the loader and its ASan+UBSan build load it or refuse it (127)
/// — never a signal, never a sanitizer report.
#[test]
fn mutants_of_a_thread_local_image_never_crash_the_loader() {
    assert!(need_tool("gcc"));
    let sanitized = build_loader_with(
        "x86_64",
        "gcc",
        "-g -fsanitize=address,undefined -fno-sanitize-recover=all",
        "c-loader-build-sanitized-tls",
    );
    let mut rng = Rng(0x9e37_79b9_2545_f491);
    for (flags, tag) in [
        (&["-O2", "-fPIC"][..], "gd"),
        (&["-O2", "-fPIE"][..], "pie"),
        (&["-O2", "-fPIC", "-mtls-dialect=gnu2"][..], "desc"),
    ] {
        let dir = scratch(&format!("c-loader-tls-mutants-{tag}"));
        let objs = compile_sources("gcc", &["tls_a.c", "tls_b.c"], flags, &dir);
        let image = dir.join(format!("{tag}.kimg"));
        save(&image, &objs);
        let good = std::fs::read(&image).expect("read the image");
        let o = load_bytes_with(&sanitized, &dir, "good.kimg", &good);
        assert_eq!(o.status.code(), Some(0), "{tag}: {}", show(&o));
        let refused = tls_mutants(&good, &dir, &sanitized, &mut rng, tag);
        assert!(refused >= 100, "{tag}: only {refused} of 200 loads refused");
    }
}

/// 100 resealed mutants of `good` (its TLS header fields and import table)
/// under both loaders; returns how many loads were refused.
fn tls_mutants(good: &[u8], dir: &Path, sanitized: &Path, rng: &mut Rng, tag: &str) -> usize {
    let (offset_at, size_at) = section_fields(good, ".kiln.imports");
    let word = |at: usize| {
        usize::try_from(u64::from_le_bytes(
            good[at..at + 8].try_into().expect("8 bytes"),
        ))
        .expect("fits")
    };
    let (start, len) = (word(offset_at), word(size_at));
    let ranges = [(64 + 288, 64 + 352), (start, start + len)];
    let mut refused = 0;
    for i in 0..100 {
        let mut v = good.to_vec();
        for _ in 0..=rng.below(2) {
            let (s, e) = ranges[rng.below(2)];
            let at = s + rng.below(e - s);
            v[at] = if i % 2 == 0 {
                v[at] ^ (1 << rng.below(8))
            } else {
                rng.next() as u8
            };
        }
        image_file::reseal(&mut v);
        for loader in [sanitized, loader()] {
            let o = load_bytes_with(loader, dir, "mutant.kimg", &v);
            let said = String::from_utf8_lossy(&o.stderr);
            assert!(
                matches!(o.status.code(), Some(0 | 127))
                    && !said.contains("Sanitizer")
                    && !said.contains("runtime error"),
                "{tag} mutant {i}: {}",
                show(&o)
            );
            refused += usize::from(o.status.code() == Some(127));
        }
    }
    refused
}

/// What follows "this CPU's " in a refusal of required CPU features.
fn cpu_named_in(e: &str) -> String {
    e.split("a subset of this CPU's ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no CPU features named in {e}"))
        .to_string()
}

/// Objects built for x86-64-v3 (gcc -mneeded: the GNU property note) give
/// an image that requires it: this CPU has it, so `kiln-load` runs it as
/// `kiln run` does; with a reserved feature bit set as well (resealed) both
/// refuse it naming the field, the image's set and this CPU's — the same
/// set from both implementations' probes.
#[test]
fn required_cpu_features_are_checked_like_kiln_run() {
    assert!(need_tool("gcc"));
    let flags = ["-O2", "-fPIC", "-march=x86-64-v3", "-mneeded"];
    let objs = prog_ab("gcc", &flags, "cpu-v3");
    let dir = scratch("c-loader-cpu");
    let image = dir.join("v3.kimg");
    save(&image, &objs);
    let o = run_loader(&image, &[]);
    let r = kiln().arg("run").arg(&image).output().expect("kiln runs");
    assert!(
        o.status.code().is_some() && o.status.code() == r.status.code(),
        "{}\n{}",
        show(&o),
        show(&r)
    );
    assert_eq!(o.stdout, r.stdout, "{}\n{}", show(&o), show(&r));
    assert!(o.stderr.is_empty(), "{}", show(&o));
    let mut v = std::fs::read(&image).expect("read image");
    v[64 + 24 + 7] |= 0x80;
    image_file::reseal(&mut v);
    let e = refusal(&v);
    let want = "image field `required CPU features` is x86-64-v2,x86-64-v3,bit63, expected a subset of this CPU's ";
    assert!(e.contains(want), "{e}");
    let absent = dir.join("absent.kimg");
    std::fs::write(&absent, &v).expect("write image");
    let r = kiln().arg("run").arg(&absent).output().expect("kiln runs");
    let re = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(!r.status.success() && re.contains(want), "{}", show(&r));
    assert_eq!(cpu_named_in(&e), cpu_named_in(&re));
    assert!(cpu_named_in(&e).contains("x86-64-v3"), "{e}");
}

/// Blocks aligned beyond a page (64 KiB, and 2 MiB or 64 KiB for the
/// largest) keep their alignment under `kiln-load` as under `kiln run`
/// and natively: the loader places the image at a multiple of the base
/// alignment its header records.
#[test]
fn blocks_aligned_beyond_a_page_stay_aligned_under_kiln_load() {
    for (big, tag) in [
        ("-DBIG=2097152", "aligned-2m"),
        ("-DBIG=65536", "aligned-64k"),
    ] {
        let dir = scratch(&format!("c-loader-{tag}"));
        let flags = ["-O2", "-fPIC", big];
        let obj = compile(
            "gcc",
            &c_dir().join("aligned_blocks.c"),
            &flags,
            &[],
            &dir.join("aligned.o"),
        );
        check_three_ways("gcc", &[obj], &flags, &[], tag);
    }
}

/// `pthread_atfork` and `at_quick_exit` (`libc_nonshared.a` only), a
/// pthread key destructor and `on_exit` handlers (with the exit status)
/// from an image: natively, under `kiln run`, under `kiln-load`.
#[test]
fn fork_quick_exit_and_on_exit_handlers_under_kiln_load() {
    assert!(need_tool("gcc"));
    let flags = ["-O2", "-fPIC"];
    for program in ["fork_handlers", "quick_exit", "on_exit"] {
        let dir = scratch(&format!("c-loader-{program}"));
        let obj = compile(
            "gcc",
            &c_dir().join(format!("{program}.c")),
            &flags,
            &[],
            &dir.join(format!("{program}.o")),
        );
        check_three_ways("gcc", std::slice::from_ref(&obj), &flags, &[], program);
        if program == "on_exit" {
            check_three_ways("gcc", &[obj], &flags, &["exit"], "on_exit-exit");
        }
    }
}

/// gcc's x86-64 `-fPIE` (Debian's default) reaches `stdout` PC-relative,
/// assuming the executable holds a copy: such code is saved with PC32
/// imports (4-byte `S + A - P` fields in text), which both loaders bind
/// where they place the image — the programs run natively, from an image
/// under `kiln run` and under `kiln-load` alike. A damaged PC32 record is
/// refused by both, naming the field.
#[test]
fn code_reaching_host_data_pc_relative_runs_from_images() {
    assert!(need_tool("gcc") && need_tool("g++"));
    let flags = ["-O2", "-fPIE", "-fcommon"];
    let objs = prog_ab("gcc", &flags, "c-gcc-pie");
    check_three_ways("gcc", &objs, &flags, &[], "c-gcc-pie");
    let dir = scratch("c-loader-pc32");
    let obj = compile(
        "gcc",
        &c_dir().join("quick_exit.c"),
        &["-O2", "-fPIE"],
        &[],
        &dir.join("quick_exit.o"),
    );
    let image = check_three_ways("gcc", &[obj], &["-O2", "-fPIE"], &[], "pc32-quick-exit");
    let good = std::fs::read(&image).expect("read the image");
    let info = image_file::inspect("pc32.kimg", &good).expect("inspects");
    assert!(info.pc_relative_imports > 0, "{info:?}");

    // The first PC32 record of `.kiln.imports` (flags byte 4).
    let imports_at =
        u64::from_le_bytes(good[64 + 152..64 + 160].try_into().expect("8 bytes")) as usize;
    let count = u32::from_le_bytes(good[64 + 268..64 + 272].try_into().expect("4 bytes")) as usize;
    let pc32 = (0..count)
        .map(|i| imports_at + 32 * i)
        .find(|&r| good[r + 24] == 4)
        .expect("a PC32 import record");
    let cases: [(usize, u8, &str); 4] = [
        (64 + 32, 0, "an import has the PC32 flag"),
        (64 + 32, 3, "image field `flags` is 0x3"),
        (pc32 + 24, 5, "a PC32 import is neither weak nor a slot"),
        (pc32 + 25, 2, "for a PC32 import"),
    ];
    for (at, value, want) in cases {
        let mut v = good.clone();
        v[at] = value;
        image_file::reseal(&mut v);
        let loader = refusal(&v);
        assert!(
            loader.contains(want),
            "kiln-load: want {want:?}, got {loader}"
        );
        let kiln = image_file::inspect("damaged.kimg", &v).expect_err("kiln refuses it");
        assert!(
            kiln.to_string().contains(want),
            "kiln: want {want:?}, got {kiln}"
        );
    }
}
