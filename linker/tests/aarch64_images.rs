//! aarch64 objects linked on this x86-64 machine into images
//! (`kiln image save`, the target taken from the objects) and run by the
//! aarch64 C loader under qemu, with the same stdout and exit status as the
//! native aarch64 executable under qemu. In-process linking stays host-ISA
//! only: it refuses aarch64 objects with an error saying what to do.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::images::qemu;
use common::lua::build_lua;
use common::programs::{CXX_SHAPES, CXX_SHAPES_MAIN};
use common::*;

const CC: &str = "aarch64-linux-gnu-gcc";
/// `EM_AARCH64`.
const EM_AARCH64: u8 = 183;

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

/// The aarch64 C loader, built once per test process.
fn loader() -> &'static Path {
    common::images::c_loader("aarch64")
}

/// Compiles each of `srcs` (in `tests/c`) with the aarch64 compiler.
fn objects(srcs: &[&str], flags: &[&str], tag: &str) -> Vec<PathBuf> {
    assert!(need_tool(CC));
    compile_sources(CC, srcs, flags, &scratch(&format!("aarch64-{tag}")))
}

/// `kiln image save -o out inputs...`.
fn save(out: &Path, inputs: &[PathBuf]) -> Output {
    let _ = std::fs::remove_file(out);
    kiln()
        .args(["image", "save", "-o"])
        .arg(out)
        .args(inputs)
        .output()
        .expect("kiln runs")
}

/// `kiln image info` describes an aarch64 image; `kiln run` refuses it,
/// naming the machine and what runs it.
fn check_described_not_run(image: &Path, tag: &str) {
    let o = kiln()
        .args(["image", "info", "--json"])
        .arg(image)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{tag}: image info: {}", show(&o));
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(
        info.contains("aarch64-unknown-linux-gnu"),
        "{tag}: image info names the target\n{info}"
    );
    let o = kiln().arg("run").arg(image).output().expect("kiln runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "{tag}: kiln run of an aarch64 image: {}",
        show(&o)
    );
    assert!(
        err.contains("`machine` is 183 (aarch64)") && err.contains("build.sh aarch64"),
        "{tag}: the refusal names the machine and the loader\n{err}"
    );
}

/// Links `objs` natively (aarch64 gcc, PIE) and as a kiln image, runs both
/// under qemu, and demands the same stdout and exit status.
fn check_against_native(objs: &[PathBuf], flags: &[&str], args: &[&str], tag: &str) {
    check_against_native_with(CC, objs, flags, args, tag);
}

/// [`check_against_native`], linking the native build with `cc`.
fn check_against_native_with(cc: &str, objs: &[PathBuf], flags: &[&str], args: &[&str], tag: &str) {
    let dir = scratch(&format!("aarch64-{tag}"));
    let native = native_run(cc, objs, flags, args, &dir, tag);

    let image = dir.join("prog.kimg");
    let o = save(&image, objs);
    assert!(o.status.success(), "{tag}: image save: {}", show(&o));
    let bytes = std::fs::read(&image).expect("read the image");
    assert_eq!(bytes[18], EM_AARCH64, "{tag}: ELF e_machine");
    assert_eq!(bytes[64 + 16], EM_AARCH64, "{tag}: image header machine");
    check_described_not_run(&image, tag);

    let image_arg = image.to_string_lossy();
    let mut loader_args = vec![image_arg.as_ref()];
    loader_args.extend_from_slice(args);
    let l = qemu(loader(), &loader_args);
    assert_eq!(
        String::from_utf8_lossy(&l.stdout),
        String::from_utf8_lossy(&native.stdout),
        "{tag}: kiln-load under qemu\n{}",
        show(&l)
    );
    assert_eq!(l.status.code(), native.status.code(), "{tag}: {}", show(&l));
    assert!(l.stderr.is_empty(), "{tag}: kiln-load said\n{}", show(&l));
}

/// Links `objs` natively with `cc flags` into `dir/native` and runs it
/// under qemu with `args`; it must print something.
fn native_run(
    cc: &str,
    objs: &[PathBuf],
    flags: &[&str],
    args: &[&str],
    dir: &Path,
    tag: &str,
) -> Output {
    let exe = dir.join("native");
    let o = Command::new(cc)
        .args(flags)
        .args(objs)
        .arg("-o")
        .arg(&exe)
        .args(["-lm", "-ldl"])
        .output()
        .expect("aarch64 gcc runs");
    assert!(o.status.success(), "{tag}: native link: {}", show(&o));
    let native = qemu(&exe, args);
    assert!(!native.stdout.is_empty(), "{tag}: native printed nothing");
    native
}

/// clang's flags for aarch64 objects.
const CLANG_AARCH64: &str = "--target=aarch64-linux-gnu";

/// The two-object C program (calls both ways, data, COMMON, weak,
/// function pointers, string tables) from gcc at -O2 -fPIE and -O0 -fPIC,
/// and from clang at -O2 -fPIE.
#[test]
fn a_multi_object_c_program_runs_from_an_aarch64_image_under_qemu() {
    for (flags, tag) in [
        (&["-O2", "-fPIE", "-fcommon"][..], "prog-O2"),
        (&["-O0", "-fPIC", "-fcommon"][..], "prog-O0-fPIC"),
    ] {
        let objs = objects(&["prog_a.c", "prog_b.c"], flags, tag);
        check_against_native(&objs, flags, &[], tag);
    }
    assert!(need_tool("clang"));
    let flags = [CLANG_AARCH64, "-O2", "-fPIE", "-fcommon"];
    let dir = scratch("aarch64-prog-clang-O2");
    let objs = compile_sources("clang", &["prog_a.c", "prog_b.c"], &flags, &dir);
    check_against_native(&objs, &["-O2", "-fPIE"], &[], "prog-clang-O2");
}

/// `pthread_atfork` and `at_quick_exit` (only `libc_nonshared.a` defines
/// them: the C loader binds its own) and a pthread key destructor, from an
/// aarch64 image as from the native build.
#[test]
fn fork_and_quick_exit_handlers_from_an_aarch64_image_under_qemu() {
    for program in ["fork_handlers", "quick_exit"] {
        let flags = ["-O2", "-fPIC"];
        let objs = objects(&[&format!("{program}.c")], &flags, program);
        check_against_native(&objs, &flags, &[], program);
    }
}

/// Lua 5.4 (the x86-64 tests' sources and driver) at aarch64 gcc -O2,
/// -O0 and -O2 -fPIC, and clang -O2.
#[test]
fn lua_runs_from_an_aarch64_image_under_qemu() {
    assert!(need_tool(CC) && need_tool("clang"));
    for (cc, flags, tag) in [
        (CC, &["-O2", "-fPIE"][..], "lua-gcc-O2"),
        (CC, &["-O0", "-fPIE"][..], "lua-gcc-O0"),
        (CC, &["-O2", "-fPIC"][..], "lua-gcc-O2-fPIC"),
        (
            "clang",
            &[CLANG_AARCH64, "-O2", "-fPIE"][..],
            "lua-clang-O2",
        ),
    ] {
        let objs = build_lua(cc, flags, &format!("aarch64-{tag}"));
        check_against_native(&objs, &["-O2", "-fPIE"], &[], tag);
    }
}

/// Two-level Lua for aarch64: Lua's core saved as `liblua.kimg`, the
/// driver as `prog.kimg` saved `--against` it on this x86-64 machine (the
/// library gets an address range here, never mapped, so that the program
/// records its references as (build id, offset)). `kiln-load prog.kimg`
/// under qemu finds the library next to it and prints what the native
/// build prints; the program names none of Lua's functions.
#[test]
fn an_aarch64_program_image_linked_against_an_aarch64_library_image_runs_under_qemu() {
    let flags = ["-O2", "-fPIE"];
    let objs = build_lua(CC, &flags, "aarch64-lua-two-level");
    let dir = scratch("aarch64-lua-two-level");
    let native = native_run(CC, &objs, &flags, &[], &dir, "lua-two-level");
    let (driver, core) = objs.split_last().expect("objects");
    let (lib, prog) = (dir.join("liblua.kimg"), dir.join("prog.kimg"));
    let o = save(&lib, core);
    assert!(o.status.success(), "image save: {}", show(&o));
    common::images::save_against(&prog, &[&lib], std::slice::from_ref(driver));
    let info = kiln()
        .args(["image", "info"])
        .arg(&prog)
        .output()
        .expect("kiln runs");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("dependencies    1") && info.contains("liblua.kimg"),
        "{info}"
    );
    let bytes = std::fs::read(&prog).expect("read");
    for name in ["luaL_newstate", "luaL_openlibs", "lua_pcallk"] {
        assert!(
            !bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "prog.kimg refers to {name} by name"
        );
    }
    let l = qemu(loader(), &[&prog]);
    assert_eq!(
        String::from_utf8_lossy(&l.stdout),
        String::from_utf8_lossy(&native.stdout),
        "kiln-load prog.kimg under qemu\n{}",
        show(&l)
    );
    assert_eq!(l.status.code(), native.status.code(), "{}", show(&l));
    assert!(l.stderr.is_empty(), "kiln-load said\n{}", show(&l));
}

/// Linking aarch64 code into this process (`kiln run`) is refused, naming
/// both ISAs and what to do instead; so is an image mixing ISAs.
#[test]
fn in_process_linking_refuses_aarch64_objects() {
    let objs = objects(
        &["prog_a.c", "prog_b.c"],
        &["-O2", "-fPIE", "-fcommon"],
        "refuse",
    );
    let o = kiln().arg("run").args(&objs).output().expect("kiln runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        err.contains("aarch64 code cannot be linked into this x86-64 process")
            && err.contains("kiln image save"),
        "{}",
        show(&o)
    );
    assert!(need_tool("gcc"));
    let dir = scratch("aarch64-mixed");
    let x86 = compile(
        "gcc",
        &c_dir().join("prog_b.c"),
        &["-O2", "-fPIE"],
        &[],
        &dir.join("b.o"),
    );
    let o = save(&dir.join("mixed.kimg"), &[objs[0].clone(), x86.clone()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        err.contains("b.o")
            && err.contains("an object for x86-64 cannot be linked with objects for aarch64"),
        "{}",
        show(&o)
    );
}

/// Calls 130 MiB apart (a padding section between caller and callee, and
/// between the first object and the PLT) are out of `BL`'s ±128 MiB: they
/// go through veneers, and the program runs as its native build does.
#[test]
fn calls_beyond_128_mib_go_through_veneers() {
    assert!(need_tool(CC));
    let dir = scratch("aarch64-veneers");
    let a = "#include <stdio.h>\nint b_fn(int);\nint a_fn(int x) { return x * 3; }\n\
             int main(void) { printf(\"main: b_fn(5)=%d\\n\", b_fn(5)); return b_fn(1); }\n";
    let b = "#include <stdio.h>\nint a_fn(int);\n\
             int b_fn(int x) { printf(\"b_fn(%d)\\n\", x); return a_fn(x) + 1; }\n";
    let pad = ".section .text.pad,\"ax\",@progbits\n.space 130*1024*1024\n";
    let mut objs = Vec::new();
    for (name, ext, text) in [("a", "c", a), ("pad", "s", pad), ("b", "c", b)] {
        let src = dir.join(format!("{name}.{ext}"));
        std::fs::write(&src, text).expect("write source");
        objs.push(compile(
            CC,
            &src,
            &["-O2", "-fPIE"],
            &[],
            &dir.join(format!("{name}.o")),
        ));
    }
    check_against_native(&objs, &["-O2", "-fPIE"], &[], "veneers");
}

/// A relocation type aarch64's table lacks is an error naming object,
/// section, offset and type, decoded by the object's ISA (type 2 is
/// `R_X86_64_PC32` on x86-64, unknown on aarch64).
#[test]
fn an_unknown_aarch64_relocation_is_named() {
    use object::read::elf::{FileHeader, SectionHeader};
    let objs = objects(&["prog_b.c"], &["-O2", "-fPIE"], "unknown-reloc");
    let mut data = std::fs::read(&objs[0]).expect("read the object");
    let le = object::LittleEndian;
    let (off, name) = {
        let h = object::elf::FileHeader64::<object::LittleEndian>::parse(&*data).expect("ELF");
        let secs = h.sections(le, &*data).expect("sections");
        let sh = secs
            .iter()
            .find(|s| s.sh_type(le) == object::elf::SHT_RELA)
            .expect("a RELA section");
        let target = secs
            .section(object::SectionIndex(sh.sh_info(le) as usize))
            .expect("its section");
        let name = String::from_utf8_lossy(secs.section_name(le, target).expect("name"));
        (sh.sh_offset(le) as usize, name.into_owned())
    };
    let dir = scratch("aarch64-unknown-reloc");
    for r_type in [2u32, 1000] {
        // r_info is the second u64 of Elf64_Rela; r_type is its low 32 bits.
        data[off + 8..off + 12].copy_from_slice(&r_type.to_le_bytes());
        let patched = dir.join("patched.o");
        std::fs::write(&patched, &data).expect("write the object");
        let o = save(&dir.join("x.kimg"), &[patched]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}", show(&o));
        assert!(
            err.contains("patched.o")
                && err.contains(&format!("section {name} offset 0x"))
                && err.contains(&format!("unsupported relocation type {r_type}")),
            "{}",
            show(&o)
        );
    }
}

#[test]
fn cxx_constructors_exceptions_and_virtual_calls_from_an_aarch64_image() {
    let cxx = "aarch64-linux-gnu-g++";
    assert!(need_tool(cxx));
    for flags in [["-O2", "-fPIE"], ["-O0", "-fPIC"]] {
        let tag = format!("cxx{}", flags.concat());
        let dir = scratch(&format!("aarch64-{tag}"));
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
        check_against_native_with(cxx, &objs, &flags, &["one", "two words"], &tag);
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

/// The C program with `__thread` variables across two objects (initialized
/// and zero, extern and static, read and written from 6 pthreads and the
/// main thread) in every model gcc and clang use on aarch64: TLSDESC
/// (`-fPIC`, aarch64's default dialect), general-dynamic (gcc
/// `-mtls-dialect=trad`: `__tls_get_addr`, the loader's), initial-exec and
/// local-exec (`-fPIE`). Saved by `kiln image save`, run by the aarch64 C loader
/// under qemu: stdout and status equal to the native build's. Before this
/// the save was refused ("thread-local storage in an image for another ISA
/// is not supported yet").
#[test]
fn c_thread_locals_run_from_an_aarch64_image_in_every_model() {
    assert!(need_tool("clang"));
    for (cc, flags, want, tag) in [
        (
            CC,
            &["-O2", "-fPIC"][..],
            "R_AARCH64_TLSDESC_ADR_PAGE21",
            "tls-gcc-fPIC",
        ),
        (
            CC,
            &["-O0", "-fPIC"][..],
            "R_AARCH64_TLSDESC_CALL",
            "tls-gcc-O0-fPIC",
        ),
        (
            CC,
            &["-O2", "-fPIC", "-mtls-dialect=trad"][..],
            "R_AARCH64_TLSGD_ADR_PAGE21",
            "tls-gcc-trad",
        ),
        (
            CC,
            &["-O2", "-fPIE"][..],
            "R_AARCH64_TLSLE_ADD_TPREL_HI12",
            "tls-gcc-fPIE",
        ),
        (
            "clang",
            &[CLANG_AARCH64, "-O2", "-fPIC"][..],
            "R_AARCH64_TLSDESC_LD64_LO12",
            "tls-clang-fPIC",
        ),
        (
            "clang",
            &[CLANG_AARCH64, "-O2", "-fPIE"][..],
            "R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21",
            "tls-clang-fPIE",
        ),
    ] {
        let dir = scratch(&format!("aarch64-{tag}"));
        let objs = compile_sources(cc, &["tls_a.c", "tls_b.c"], flags, &dir);
        let r = relocations(&objs);
        assert!(r.contains(want), "{tag}: no {want} in\n{r}");
        check_against_native(&objs, &["-O2"], &[], tag);
        let info = common::images::info_of(&dir.join("prog.kimg"), false);
        if flags.contains(&"-fPIE") {
            assert!(
                info.contains(
                    "static TLS: local-exec, range 0x0..0x70 of the 0x10000-byte area at tp+0x40"
                ),
                "{tag}: the image records the C loader's aarch64 area\n{info}"
            );
        } else {
            assert!(info.contains("static TLS: none"), "{tag}\n{info}");
        }
    }
}

/// C++ `thread_local` objects with constructors and destructors used from
/// `std::thread`s (aarch64-linux-gnu-g++ `-fPIE`: local-exec and
/// initial-exec; `-fPIC`: TLSDESC): the image runs under the aarch64 C
/// loader as the native build does. The outline atomics they call
/// (`__aarch64_ldadd4_acq_rel`, which only libgcc.a defines) are imported
/// by name and bound by the loader: libgcc.a is not an input.
#[test]
fn cxx_thread_locals_with_std_thread_from_an_aarch64_image() {
    let cxx = "aarch64-linux-gnu-g++";
    assert!(need_tool(cxx));
    let src = common::programs::cxx_dir();
    for flags in [["-O2", "-fPIE"], ["-O2", "-fPIC"]] {
        let tag = format!("cxx-tls{}", flags.concat());
        let dir = scratch(&format!("aarch64-{tag}"));
        let objs: Vec<PathBuf> = ["tls_defs", "tls_main"]
            .iter()
            .map(|s| {
                let path = src.join(format!("{s}.cpp"));
                compile(cxx, &path, &flags, &[], &dir.join(format!("{s}.o")))
            })
            .collect();
        let r = relocations(&objs);
        assert!(r.contains("R_AARCH64_TLS"), "{tag}: no TLS relocation\n{r}");
        check_against_native_with(cxx, &objs, &flags, &[], &tag);
    }
}

/// The standard library across three objects (`tests/cxx/stl_*.cpp`:
/// `std::regex`, iostreams, `shared_ptr`s counted on four `std::thread`s —
/// libgcc's outline atomics, bound by the loader —, `std::function`, an
/// exception thrown in one object and caught in another): g++'s default
/// `-fPIE` and clang++, from an image under qemu as natively.
#[test]
fn cxx_standard_library_on_threads_from_an_aarch64_image() {
    let src = common::programs::cxx_dir();
    for (cxx, extra) in [
        ("aarch64-linux-gnu-g++", &[][..]),
        ("clang++", &[CLANG_AARCH64][..]),
    ] {
        assert!(need_tool(cxx));
        let flags = [extra, &["-O2", "-std=c++17"]].concat();
        let tag = format!("cxx-stl-{cxx}");
        let dir = scratch(&format!("aarch64-{tag}"));
        let objs = common::programs::compile_each(
            cxx,
            &src,
            &["stl_main.cpp", "stl_make.cpp", "stl_tally.cpp"],
            &flags,
            &dir,
        );
        // The native link is always gcc's driver (libgcc, libstdc++).
        check_against_native_with("aarch64-linux-gnu-g++", &objs, &[], &[], &tag);
    }
}

/// Byte offset of the header's static TLS area (i64) in an image file.
const STATIC_TLS_AREA_AT: usize = 64 + 328;

/// An aarch64 image whose local-exec code was linked against a static TLS
/// area the C loader does not have (the header's `static TLS area` edited
/// and the file resealed) is refused with status 127, naming the field and
/// both values — never run with wrong offsets. Before: refused at save.
#[test]
fn an_aarch64_image_for_another_static_tls_area_is_refused_by_the_loader() {
    let objs = objects(&["tls_a.c", "tls_b.c"], &["-O2", "-fPIE"], "tls-area");
    let dir = scratch("aarch64-tls-area");
    let image = dir.join("tls.kimg");
    let o = save(&image, &objs);
    assert!(o.status.success(), "{}", show(&o));
    let mut bytes = std::fs::read(&image).expect("read the image");
    let at = STATIC_TLS_AREA_AT;
    assert_eq!(
        bytes[at..at + 8],
        64i64.to_le_bytes(),
        "the loader's area at tp+64"
    );
    bytes[at..at + 8].copy_from_slice(&0x20_0000i64.to_le_bytes());
    kiln_linker::image_file::reseal(&mut bytes);
    let edited = dir.join("edited.kimg");
    std::fs::write(&edited, &bytes).expect("write the image");
    let l = qemu(loader(), &[&edited]);
    let e = String::from_utf8_lossy(&l.stderr);
    assert_eq!(l.status.code(), Some(127), "{}", show(&l));
    assert!(
        l.stdout.is_empty()
            && e.contains(
                "image field `static TLS area` is tp+0x200000 (0x10000 bytes), range 0x0..0x70, expected a range inside kiln-load's static TLS area tp+0x40 (0x10000 bytes)"
            ),
        "{e}"
    );
}

/// Thread-locals an aarch64 image cannot have: a TLS template larger than
/// the C loader's 64 KiB static TLS area (where an aarch64 image's
/// thread-locals live, whatever the model) is refused at save, naming the
/// sizes and the area — not saved with offsets past it.
#[test]
fn an_aarch64_tls_template_larger_than_the_loaders_area_is_refused_at_save() {
    assert!(need_tool(CC));
    let dir = scratch("aarch64-tls-big");
    let src = dir.join("big.c");
    std::fs::write(
        &src,
        "__thread char big[0x11000] = {1};\nint main(int argc, char **argv) { (void)argv; return big[argc]; }\n",
    )
    .expect("write source");
    for flags in [["-O2", "-fPIE"], ["-O2", "-fPIC"]] {
        let obj = compile(
            CC,
            &src,
            &flags,
            &[],
            &dir.join(format!("big{}.o", flags[1])),
        );
        let o = save(&dir.join("big.kimg"), &[obj]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && e.contains("the image's thread-locals (0x11000 bytes, align ")
                && e.contains(
                    "do not fit the C loader's static TLS area for aarch64 (0x10000 bytes at tp+0x40, align 64)"
                ),
            "{}",
            show(&o)
        );
    }
}

/// Blocks aligned to 64 KiB and 2 MiB keep their alignment in an aarch64
/// image under the C loader.
#[test]
fn blocks_aligned_beyond_a_page_stay_aligned_in_an_aarch64_image() {
    let flags = ["-O2", "-fPIE"];
    let objs = objects(&["aligned_blocks.c"], &flags, "aligned");
    check_against_native(&objs, &flags, &[], "aligned");
}

/// A thread-local GOT entry is per symbol: aarch64's initial-exec slot
/// (`G(GTPREL(S + A))`), TLS descriptor (`G(GTLSDESC(S + A))`) and
/// general-dynamic pair take the addend into the entry, which kiln's
/// entries keyed by symbol cannot hold. An object with such a relocation
/// and a non-zero addend (`:gottprel:v+8`) is refused naming object,
/// section, offset and relocation — not linked as if the addend were 0.
#[test]
fn aarch64_tls_got_entries_with_an_addend_are_refused() {
    assert!(need_tool(CC));
    let dir = scratch("aarch64-tls-addend");
    let tbss = "\t.section .tbss,\"awT\",@nobits\n\t.globl v\n\t.type v, %object\n\t.size v, 16\n\t.p2align 3\nv:\t.zero 16\n";
    let cases = [
        (
            "ie",
            "\tadrp x0, :gottprel:v+8\n\tldr x0, [x0, #:gottprel_lo12:v+8]\n\tmrs x1, tpidr_el0\n\tldr w0, [x1, x0]\n\tret\n",
            "offset 0x4: R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21",
        ),
        (
            "desc",
            "\tstp x29, x30, [sp, -16]!\n\tadrp x0, :tlsdesc:v+8\n\tldr x1, [x0, #:tlsdesc_lo12:v+8]\n\tadd x0, x0, #:tlsdesc_lo12:v+8\n\t.tlsdesccall v+8\n\tblr x1\n\tmrs x1, tpidr_el0\n\tldr w0, [x1, x0]\n\tldp x29, x30, [sp], 16\n\tret\n",
            "offset 0x8: R_AARCH64_TLSDESC_ADR_PAGE21",
        ),
    ];
    for (tag, code, place) in cases {
        let src = dir.join(format!("{tag}.s"));
        // A `nop` first: the refused place is at offset 4 or more, so the
        // offset in the message is the relocation's own.
        let text =
            format!("\t.text\n\t.globl main\n\t.type main, %function\nmain:\n\tnop\n{code}{tbss}");
        std::fs::write(&src, text).expect("write source");
        let obj = compile(CC, &src, &[], &[], &dir.join(format!("{tag}.o")));
        let o = save(&dir.join(format!("{tag}.kimg")), &[obj]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && e.contains(&format!("{tag}.o"))
                && e.contains(&format!("section .text {place}"))
                && e.contains("addend"),
            "{tag}: {}",
            show(&o)
        );
    }
}

/// An aarch64 image's memory is normalized where it is, not copied (its
/// code never runs here): saving it twice, in memory and to a writer, gives
/// the same file each time, and that file is the one `kiln image save`
/// writes for the same objects.
#[test]
fn an_aarch64_image_saved_twice_from_its_own_memory_is_the_same_file() {
    let flags = ["-O2", "-fPIE", "-fcommon"];
    let objs = objects(&["prog_a.c", "prog_b.c"], &flags, "saved-twice");
    let (mut linker, id) = common::images::imaging_linker(&objs);
    let image = linker
        .link(&kiln_linker::HostSymbols::new())
        .expect("links for aarch64");
    let first = image.save_image(&id).expect("saves");
    let mut second = std::io::Cursor::new(Vec::new());
    image.save_image_to(&id, &mut second).expect("saves again");
    assert!(first == second.into_inner(), "the second save differs");
    let out = scratch("aarch64-saved-twice").join("prog.kimg");
    let o = save(&out, &objs);
    assert!(o.status.success(), "{}", show(&o));
    let cli = std::fs::read(&out).expect("read the saved image");
    assert!(
        first == cli,
        "the library's image differs from kiln image save's"
    );
}
