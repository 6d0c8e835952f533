//! Diagnostics (every missing and every duplicate symbol in one error;
//! unsupported relocations named with object, section and offset), static
//! archives pulled on demand, and the phase API the engine layer uses.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use kiln_linker::passes::{self, Prepared};
use kiln_linker::{HostSymbols, LinkError, Linker};

fn c_object(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    compile_c_text(&scratch("errors"), name, source, flags)
}

#[test]
fn every_missing_symbol_in_one_error() {
    let a = c_object(
        "miss_a",
        "extern int gone_one(void); extern int gone_two; int f(void) { return gone_one() + gone_two; }",
        &["-O2"],
    );
    let b = c_object(
        "miss_b",
        "extern int gone_one(void); extern int gone_three(int); int g(void) { return gone_one() + gone_three(1); }",
        &["-O2"],
    );
    let mut l = Linker::new(Default::default());
    l.add_object_file(&a).unwrap().add_object_file(&b).unwrap();
    let err = l.link(&HostSymbols::new()).unwrap_err();
    let LinkError::MissingSymbols { missing } = &err else {
        panic!("{err}")
    };
    let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["gone_one", "gone_three", "gone_two"]);
    let one = &missing[0].1;
    assert_eq!(
        one.len(),
        2,
        "gone_one is referenced by both objects: {one:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("miss_a.o") && msg.contains("miss_b.o"),
        "{msg}"
    );
}

#[test]
fn every_duplicate_in_one_error() {
    let a = c_object(
        "dup_a",
        "int twin_x(void) { return 1; } int twin_y = 3; __attribute__((weak)) int soft(void) { return 0; }",
        &["-O2"],
    );
    let b = c_object(
        "dup_b",
        "int twin_x(void) { return 2; } int twin_y = 4; int soft(void) { return 1; }",
        &["-O2"],
    );
    let mut l = Linker::new(Default::default());
    // SAFETY: the test's own objects, whose code runs below.
    unsafe { l.run_initializers_at_link() };
    l.add_object_file(&a).unwrap().add_object_file(&b).unwrap();
    let err = l.link(&HostSymbols::new()).unwrap_err();
    let LinkError::DuplicateSymbols { duplicates } = &err else {
        panic!("{err}")
    };
    let mut names: Vec<&str> = duplicates.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["twin_x", "twin_y"],
        "a weak definition is not a duplicate"
    );
    assert!(duplicates.iter().all(|(_, objs)| objs.len() == 2));
}

#[test]
fn unsupported_relocation_names_object_section_offset() {
    let a = c_object("reloc", "extern int x; int f(void) { return x; }", &["-O2"]);
    let mut data = std::fs::read(&a).unwrap();
    // Find .rela.text's first entry and set its type to 200.
    use object::read::elf::{FileHeader, SectionHeader};
    let (off, name) = {
        let h = object::elf::FileHeader64::<object::LittleEndian>::parse(&*data).unwrap();
        let secs = h.sections(object::LittleEndian, &*data).unwrap();
        let sh = secs
            .iter()
            .find(|s| s.sh_type(object::LittleEndian) == object::elf::SHT_RELA)
            .unwrap();
        let target = secs
            .section(object::SectionIndex(
                sh.sh_info(object::LittleEndian) as usize
            ))
            .unwrap();
        let tname =
            String::from_utf8_lossy(secs.section_name(object::LittleEndian, target).unwrap())
                .into_owned();
        (sh.sh_offset(object::LittleEndian) as usize, tname)
    };
    // r_info is the second u64 of Elf64_Rela; r_type is its low 32 bits.
    data[off + 8..off + 12].copy_from_slice(&200u32.to_le_bytes());
    let mut l = Linker::new(Default::default());
    l.add_object_bytes("patched.o", data);
    let err = l.link(&HostSymbols::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LinkError::UnsupportedRelocation { r_type: 200, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("patched.o") && msg.contains(&name) && msg.contains("offset 0x"),
        "{msg}"
    );
}

#[test]
fn archive_members_are_pulled_on_demand() {
    let dir = scratch("archive");
    let main = c_object(
        "ar_main",
        "#include <stdio.h>\nint lib_add(int, int); int main(void) { printf(\"sum %d\\n\", lib_add(40, 2)); return lib_add(1, 2); }",
        &["-O2"],
    );
    let add = c_object(
        "ar_add",
        "int lib_helper(int); int lib_add(int a, int b) { return lib_helper(a) + b; }",
        &["-O2"],
    );
    let helper = c_object("ar_helper", "int lib_helper(int a) { return a; }", &["-O2"]);
    // Would fail to link (missing symbol) if it were pulled in.
    let unused = c_object(
        "ar_unused",
        "int never_defined(void); int unused_fn(void) { return never_defined(); }",
        &["-O2"],
    );
    let lib = dir.join("libdemo.a");
    let _ = std::fs::remove_file(&lib);
    let st = Command::new("ar")
        .arg("rcs")
        .arg(&lib)
        .args([&add, &helper, &unused])
        .status()
        .expect("ar");
    assert!(st.success());
    let (out, ret) = run_jit(&[main.clone(), lib], &[], &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "sum 42\n");
    assert_eq!(ret, 3);
    // Without an archive symbol table (`ar S`), kiln indexes the members itself.
    let bare = dir.join("libbare.a");
    let _ = std::fs::remove_file(&bare);
    let st = Command::new("ar")
        .arg("rcS")
        .arg(&bare)
        .args([&add, &helper, &unused])
        .status()
        .expect("ar");
    assert!(st.success());
    let bytes = std::fs::read(&bare).unwrap();
    let parsed = object::read::archive::ArchiveFile::parse(&*bytes).unwrap();
    assert!(parsed.symbols().unwrap().is_none(), "ar S writes no index");
    let indexed = kiln_linker::archive::Archive::parse("libbare.a", bytes.clone()).unwrap();
    assert!(indexed.symbol_count() >= 3);
    let (out, ret) = run_jit(&[main, bare], &[], &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((out.as_str(), ret), ("sum 42\n", 3));
}

#[test]
fn phases_report_symbols_and_externals() {
    let dir = scratch("phases");
    let (a, b) = compile_prog_ab(&dir);
    let mut l = Linker::new(Default::default());
    l.add_object_file(&a).unwrap().add_object_file(&b).unwrap();
    let mut graph = l.build_graph().unwrap();
    passes::check_duplicates(&mut graph).unwrap();
    passes::allocate_commons(&mut graph);
    passes::prune(&mut graph, &Default::default()).unwrap();
    let prepared = Prepared::new(graph).unwrap();
    let (base, len) = prepared.memory_range();
    let defs = prepared.defined_symbols();
    let is_even = defs.iter().find(|d| d.name == "is_even").expect("is_even");
    assert!(is_even.flags.callable && is_even.address >= base && is_even.address < base + len);
    assert!(
        defs.iter()
            .any(|d| d.name == "counter" && !d.flags.callable)
    );
    let ext = prepared.external_names();
    for n in ["printf", "qsort", "malloc"] {
        assert!(ext.iter().any(|e| e == n), "{n} missing from {ext:?}");
    }
    assert!(!ext.iter().any(|e| e == "is_odd"), "defined in the graph");
}

#[test]
fn roots_prune_what_main_does_not_reach() {
    let a = c_object(
        "roots",
        "#include <stdio.h>\nint nobody_defines_this(void);\nint unused(void) { return nobody_defines_this(); }\nint main(void) { puts(\"reached\"); return 5; }",
        &["-O2", "-ffunction-sections"],
    );
    // Everything live: the unused function's reference is missing.
    let mut l = Linker::new(Default::default());
    l.add_object_file(&a).unwrap();
    assert!(matches!(
        l.link(&HostSymbols::new()),
        Err(LinkError::MissingSymbols { .. })
    ));
    // Rooted at main: it is pruned, and the link succeeds.
    let mut opts = kiln_linker::LinkOptions::default();
    opts.roots = kiln_linker::Roots::Symbols(vec!["main".into()]);
    let mut l = Linker::new(opts);
    l.add_object_file(&a).unwrap();
    let image = l
        .link(&HostSymbols::new())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(image.symbol("main").is_some());
    assert!(image.symbol("unused").is_none(), "pruned");
}

#[test]
fn shared_library_from_l_and_capital_l() {
    let dir = scratch("shlib");
    let src = dir.join("greet.c");
    std::fs::write(&src, "int kiln_test_greet(int x) { return x * 6; }\n").unwrap();
    let so = dir.join("libkilngreet.so");
    let st = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("gcc -shared");
    assert!(st.success());
    let user = c_object(
        "shlib_user",
        "int kiln_test_greet(int); int main(void) { return kiln_test_greet(7); }",
        &["-O2"],
    );
    let mut host = HostSymbols::new();
    assert!(matches!(
        // SAFETY: the test's own library (built above), or none.
        unsafe { host.load_library("kilngreet", &[]) },
        Err(LinkError::Library { .. })
    ));
    // SAFETY: the test's own library, built above.
    unsafe { host.load_library("kilngreet", std::slice::from_ref(&dir)) }
        .unwrap_or_else(|e| panic!("{e}"));
    let mut l = Linker::new(Default::default());
    // SAFETY: the test's own objects, whose code runs below.
    unsafe { l.run_initializers_at_link() };
    l.add_object_file(&user).unwrap();
    let image = l.link(&host).unwrap_or_else(|e| panic!("{e}"));
    let main = image.symbol("main").unwrap();
    // SAFETY: `main` is `int main(void)` from the source above.
    let main: extern "C" fn() -> i32 = unsafe { std::mem::transmute(main as usize) };
    assert_eq!(main(), 42);
}

#[test]
fn comdat_groups_keep_one_copy_and_drop_the_others_fdes() {
    let dir = scratch("comdat");
    let src = dir.join("inline.cpp");
    std::fs::write(
        &src,
        "inline int shared_inline(int x) { volatile int y = x; return y + 1; }\n\
         extern \"C\" int NAME(int x) { return shared_inline(x) * 2; }\n",
    )
    .unwrap();
    let objs: Vec<PathBuf> = ["first", "second"]
        .iter()
        .map(|n| {
            let o = dir.join(format!("{n}.o"));
            let st = Command::new("g++")
                .args(["-O0", "-c", &format!("-DNAME={n}"), "-o"])
                .arg(&o)
                .arg(&src)
                .status()
                .expect("g++");
            assert!(st.success());
            o
        })
        .collect();
    let mut l = Linker::new(Default::default());
    // SAFETY: the test's own objects, whose code runs below.
    unsafe { l.run_initializers_at_link() };
    for o in &objs {
        l.add_object_file(o).unwrap();
    }
    let graph = l.build_graph().unwrap();
    let copies = graph
        .blocks
        .iter()
        .filter(|b| &*b.input_section == ".text._Z13shared_inlinei")
        .count();
    assert_eq!(copies, 1, "one copy of the COMDAT function");
    // FDEs: first, second, and one shared_inline.
    let fdes = graph
        .blocks
        .iter()
        .filter(|b| b.fde.is_some() && b.live)
        .count();
    assert_eq!(fdes, 3);
    // And it links and runs; the registered .eh_frame is validated by the runtime.
    let image = l
        .link(&HostSymbols::new())
        .unwrap_or_else(|e| panic!("{e}"));
    for (n, want) in [("first", 12), ("second", 12)] {
        let f = image.symbol(n).unwrap();
        // SAFETY: `int NAME(int)` from the source above.
        let f: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute(f as usize) };
        assert_eq!(f(5), want);
    }
}

#[test]
fn kept_graph_has_final_addresses_and_relocation_records() {
    let dir = scratch("keep");
    let (a, b) = compile_prog_ab(&dir);
    let mut l = Linker::new(Default::default());
    l.add_object_file(&a).unwrap().add_object_file(&b).unwrap();
    let graph = l.build_graph().unwrap();
    let mut options = kiln_linker::LinkOptions::default();
    options.keep_graph = true;
    let env = passes::ImageEnv::default();
    let f = passes::link_graph(graph, &HostSymbols::new(), &env, &options).unwrap();
    let g = f.graph.as_ref().expect("kept");
    let id = g.global_id("is_odd").expect("is_odd is a global");
    let kiln_linker::graph::SymbolDef::Defined { block, offset } = g.symbols[id.index()].def else {
        panic!("is_odd is defined")
    };
    let blk = &g.blocks[block.index()];
    assert_eq!(blk.addr + offset, f.symbols["is_odd"]);
    assert!(
        blk.edges
            .iter()
            .any(|e| g.symbol_name(e.target) == "is_even")
    );
    // The relocated bytes in the graph are the bytes in memory.
    let kiln_linker::graph::Content::Bytes(bytes) = &blk.content else {
        panic!("code has bytes")
    };
    // SAFETY: the block lies in the finalized image, readable until `f` drops.
    let mem = unsafe { std::slice::from_raw_parts(blk.addr as *const u8, bytes.len()) };
    assert_eq!(mem, &bytes[..]);
}

#[test]
fn shared_and_copied_reads_give_the_same_graph() {
    use kiln_linker::graph::Content;
    // Code, data, COMMON, `.eh_frame` records and thread-locals.
    let obj = c_object(
        "shared_read",
        "int common_x; static int counter; __thread int tls_v = 3;
         const char *name(void) { return \"shared\"; }
         int bump(int d) { counter += d; tls_v += d; return counter + common_x; }",
        &["-O2", "-fcommon", "-fPIC"],
    );
    let bytes = std::fs::read(&obj).unwrap();
    let copied = kiln_linker::elf::parse_object("shared_read.o", &bytes).unwrap();
    let file = std::sync::Arc::new(bytes.clone().into());
    let shared = kiln_linker::elf::parse_object_shared("shared_read.o", &file).unwrap();
    assert_eq!(copied.blocks.len(), shared.blocks.len());
    let mut from_file = 0;
    for (c, s) in copied.blocks.iter().zip(&shared.blocks) {
        assert_eq!(c.content, s.content, "{}", c.input_section);
        assert_eq!(c.edges, s.edges, "{}", c.input_section);
        assert_eq!(c.input_offset, s.input_offset);
        assert!(!matches!(c.content, Content::Input { .. }), "copied");
        if let Content::Input { start, len, .. } = s.content {
            assert_eq!(&bytes[start..start + len], c.content.bytes().unwrap());
            from_file += 1;
        }
    }
    // .text, .rodata, .tdata and every .eh_frame record at least.
    assert!(from_file >= 4, "{from_file} blocks refer to the file");
    assert_eq!(copied.symbols.len(), shared.symbols.len());
}

/// A member pulled for one function keeps only what live code reaches (as
/// `ld --gc-sections` treats it): its other function, which calls a symbol
/// nothing defines, is dropped with its undefined reference instead of
/// failing the link; its initializers and its section reachable through
/// `__start_`/`__stop_` stay. Objects given directly stay whole.
#[test]
fn archive_members_keep_only_what_live_code_reaches() {
    let dir = scratch("archive-gc");
    let main = c_object(
        "gc_main",
        r#"#include <stdio.h>
extern const int __start_kiln_set[], __stop_kiln_set[];
int lib_used(int);
int main(void) {
    int n = 0;
    for (const int *p = __start_kiln_set; p < __stop_kiln_set; p++) n += *p;
    printf("used %d, set %d\n", lib_used(2), n);
    return 0;
}"#,
        &["-O2"],
    );
    let member = c_object(
        "gc_member",
        r#"#include <stdio.h>
int never_defined(void);
int lib_used(int x) { return x * 21; }
int lib_unused(void) { return never_defined(); }
__attribute__((section("kiln_set"), used)) static const int entry = 5;
__attribute__((constructor)) static void init(void) { puts("member constructor"); }"#,
        &["-O2", "-ffunction-sections", "-fdata-sections"],
    );
    let lib = dir.join("libgc.a");
    let _ = std::fs::remove_file(&lib);
    let st = Command::new("ar")
        .arg("rcs")
        .arg(&lib)
        .arg(&member)
        .status()
        .expect("ar");
    assert!(st.success());
    let inputs = [main.clone(), lib];
    let native =
        common::programs::native_run("gcc", &inputs, &["-Wl,--gc-sections"], &dir.join("native"));
    assert_eq!(native.0, "member constructor\nused 42, set 5\n");
    let jit = run_jit(&inputs, &[], &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(jit, native, "Linker API");
    common::programs::assert_kiln_mode_matches(false, &native, &inputs, "kiln run");
    // The same member given as an object is kept whole: its undefined
    // reference is an error, as `ld` (without --gc-sections) says.
    let err = run_jit(&[main, member], &[], &[]).expect_err("never_defined is missing");
    assert!(err.to_string().contains("never_defined"), "{err}");
}

/// A section reached only through `__start_`/`__stop_` symbols lives while
/// code referring to those symbols lives (as `ld` keeps it), whatever the
/// roots. (Before, with roots, it was dropped and the set read empty.)
#[test]
fn start_stop_symbols_keep_their_section() {
    let a = c_object(
        "start_stop",
        r#"#include <stdio.h>
extern const int __start_kiln_roots[], __stop_kiln_roots[];
__attribute__((section("kiln_roots"), used)) static const int one = 1;
__attribute__((section("kiln_roots"), used)) static const int two = 2;
int main(void) {
    int n = 0;
    for (const int *p = __start_kiln_roots; p < __stop_kiln_roots; p++) n += *p;
    printf("set %d\n", n);
    return n;
}"#,
        &["-O2", "-ffunction-sections", "-fdata-sections"],
    );
    let mut opts = kiln_linker::LinkOptions::default();
    opts.roots = kiln_linker::Roots::Symbols(vec!["main".into()]);
    let mut l = Linker::new(opts);
    l.add_object_file(&a).unwrap();
    let image = l
        .link(&HostSymbols::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let main = image.symbol("main").expect("main");
    // SAFETY: `main` is the C function above; stdout is the test's.
    let main: extern "C" fn() -> i32 = unsafe { std::mem::transmute(main as usize) };
    assert_eq!(main(), 3);
}
