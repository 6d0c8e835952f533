//! Images saved from many links: objects linked one by one into one dylib
//! through the [`ObjectLayer`] (as a JIT links them), then the dylib's code
//! — or one resource tracker's — saved as one image file
//! ([`ObjectLayer::save_image`], [`ObjectLayer::save_tracker_image`]).
//! References between the pieces become rebases of the image; the image
//! run by another `kiln` process behaves like the one linked in one call;
//! identical incremental links give byte-identical images.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::{kiln, options, show};
use common::lua::build_lua;
use common::*;
use kiln_engine::{Dylib, DylibLookup, Session, WorkerPool};
use kiln_linker::image_file::{self, BuildId, ImageError};
use kiln_linker::layer::{HostGenerator, ObjectLayer};
use kiln_linker::{HostSymbols, LinkOptions, SymbolResolver as _};

/// A session with a host dylib (the process and `libs`) and an empty dylib
/// `name` that links against it, and a layer linking with `options`.
fn session_with(name: &str, libs: &[&str], options: LinkOptions) -> (Session, ObjectLayer, Dylib) {
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::with_options(&session, options);
    let host = session.create_dylib("<host>").expect("dylib");
    let mut symbols = HostSymbols::new();
    for l in libs {
        // SAFETY: the system libraries the tests' programs use.
        unsafe { symbols.load_library(l, &[]) }.expect("host library");
    }
    host.add_generator(HostGenerator::new(symbols))
        .expect("generator");
    let app = session.create_dylib(name).expect("dylib");
    app.set_link_order(&[(host, DylibLookup::ExportedOnly)])
        .expect("order");
    (session, layer, app)
}

/// How the objects are linked into the dylib.
enum Steps<'a> {
    /// Each object added, then linked on its own by looking up the symbol
    /// given with it (so later objects bind to earlier ones' addresses).
    OneByOne(&'a [&'a str]),
    /// Every object added (one unit each), then `main` looked up: each
    /// object is still its own link.
    AllThenMain,
}

/// Links `objs` into one dylib through the layer, one link per object,
/// and saves the dylib's code: `(image bytes, build id given)`.
fn link_incrementally(
    tag: &str,
    objs: &[PathBuf],
    libs: &[&str],
    steps: Steps<'_>,
    imaging: bool,
) -> Result<(Vec<u8>, BuildId), ImageError> {
    let (session, layer, app) = session_with(tag, libs, options(imaging));
    let inputs: Vec<(String, Vec<u8>)> = objs
        .iter()
        .map(|o| {
            let name = o.file_name().expect("file name").to_string_lossy();
            (name.into_owned(), std::fs::read(o).expect("read object"))
        })
        .collect();
    let id = BuildId::of_inputs(
        &options(imaging),
        inputs.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    match steps {
        Steps::OneByOne(symbols) => {
            assert_eq!(symbols.len(), inputs.len());
            for ((name, bytes), sym) in inputs.iter().zip(symbols) {
                layer
                    .add_object(&app, None, name, bytes)
                    .expect("adds the object");
                app.lookup_ready(&[sym])
                    .unwrap_or_else(|e| panic!("{tag}: linking {name} for {sym}: {e}"));
            }
        }
        Steps::AllThenMain => {
            for (name, bytes) in &inputs {
                layer
                    .add_object(&app, None, name, bytes)
                    .expect("adds the object");
            }
            app.lookup_ready(&["main"])
                .unwrap_or_else(|e| panic!("{tag}: linking for main: {e}"));
        }
    }
    let (stats, links) = layer.stats();
    assert_eq!(links, objs.len(), "{tag}: one link per object ({stats:?})");
    let saved = layer.save_image(&app, &id);
    session.end();
    saved.map(|b| (b, id))
}

/// `kiln run IMAGE` → (stdout, exit status).
fn run_image(image: &Path) -> (String, i32) {
    let o = kiln().arg("run").arg(image).output().expect("kiln runs");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code().unwrap_or_else(|| panic!("{}", show(&o))),
    )
}

/// `kiln-load` (the C loader, `loader/build.sh`), built once per test process.
fn kiln_load() -> &'static Path {
    static LOADER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LOADER.get_or_init(|| {
        assert!(need_tool("gcc"), "gcc is needed to build kiln-load");
        let dir = scratch("images-incremental-kiln-load");
        let o = Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("loader/build.sh"))
            .arg("x86_64")
            .arg(&dir)
            .output()
            .expect("sh runs");
        assert!(o.status.success(), "build.sh: {}", show(&o));
        dir.join("kiln-load")
    })
}

/// `kiln-load IMAGE` → (stdout, exit status).
fn run_under_kiln_load(image: &Path) -> (String, i32) {
    let o = Command::new(kiln_load())
        .arg(image)
        .output()
        .expect("kiln-load runs");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code().unwrap_or_else(|| panic!("{}", show(&o))),
    )
}

/// `kiln image save -o out inputs...` (the one-call image), asserting success.
fn save_in_one_call(out: &Path, inputs: &[PathBuf]) {
    let o = kiln()
        .args(["image", "save", "-o"])
        .arg(out)
        .args(inputs)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "image save: {}", show(&o));
}

/// The names an image imports by name: what a loader asks its resolver.
fn names_imported(bytes: &[u8]) -> Vec<String> {
    let asked = std::sync::Mutex::new(Vec::new());
    let host = HostSymbols::new();
    let resolver = |names: &[&str]| -> Vec<Option<u64>> {
        asked
            .lock()
            .expect("not poisoned")
            .extend(names.iter().map(ToString::to_string));
        host.resolve(names)
            .into_iter()
            .map(|a| Some(a.unwrap_or(0)))
            .collect()
    };
    // SAFETY: the test's own image; it is mapped and bound, none of its code
    // runs (no initializer, nothing called) and it is dropped at once.
    let image = unsafe { image_file::load("names.kimg", bytes, &resolver) }.expect("loads");
    drop(image);
    let mut names = asked.into_inner().expect("not poisoned");
    names.sort();
    names.dedup();
    names
}

const PIECES: usize = 6;

/// A globals object, `PIECES` function objects (each using the globals,
/// pointing into them from data and calling the previous one) and a main
/// object with a table of pointers to the functions.
fn globals_and_functions(dir: &Path, flags: &[&str]) -> (Vec<PathBuf>, Vec<String>) {
    let mut objs = vec![compile_c_text(
        dir,
        "globals",
        "int counter = 5;\n\
         int table[8] = {1, 2, 3, 4, 5, 6, 7, 8};\n\
         const char *greeting = \"incremental\";\n",
        flags,
    )];
    let mut symbols = vec!["counter".to_string()];
    for k in 1..=PIECES {
        let prev = if k == 1 {
            "table[0]".to_string()
        } else {
            format!("f{}(x)", k - 1)
        };
        let src = format!(
            "extern int counter;\nextern int table[];\n{decl}\
             int *f{k}_slot = &table[{k}];\n\
             static int local = {k};\n\
             int f{k}(int x) {{ counter += local; return {prev} + *f{k}_slot + x; }}\n",
            decl = if k == 1 {
                String::new()
            } else {
                format!("int f{}(int);\n", k - 1)
            },
        );
        objs.push(compile_c_text(dir, &format!("f{k}"), &src, flags));
        symbols.push(format!("f{k}"));
    }
    let decls: String = (1..=PIECES).map(|k| format!("int f{k}(int);\n")).collect();
    let list: Vec<String> = (1..=PIECES).map(|k| format!("f{k}")).collect();
    let main = format!(
        "#include <stdio.h>\nextern int counter;\nextern const char *greeting;\n{decls}\
         int (*const fs[])(int) = {{{}}};\n\
         int main(void) {{\n\
           int sum = 0;\n\
           for (int i = 0; i < {PIECES}; i++) {{ int v = fs[i](i); printf(\"f%d(%d) = %d\\n\", i + 1, i, v); sum += v; }}\n\
           printf(\"%s counter %d sum %d\\n\", greeting, counter, sum);\n\
           return sum % 50;\n\
         }}\n",
        list.join(", ")
    );
    objs.push(compile_c_text(dir, "main", &main, flags));
    symbols.push("main".to_string());
    (objs, symbols)
}

/// A globals object first, then each function object linked on its own
/// (binding to the earlier pieces' addresses through the dylib), then
/// main: saved as one image, run by another process like the native
/// build and the image linked in one call; references between the pieces
/// are rebases, not names; the same incremental link twice gives the same
/// build id and a byte-identical file.
#[test]
fn objects_linked_one_by_one_into_a_dylib_save_one_image_that_runs_like_the_one_call_image() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-incremental-c");
    let flags = ["-O2", "-fPIC"];
    let (objs, symbols) = globals_and_functions(&dir, &flags);
    let symbols: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let native = run_native("gcc", &objs, &flags, &[], &dir.join("native"));
    assert!(native.0.contains("incremental counter"), "{native:?}");
    let one_call = dir.join("one-call.kimg");
    let _ = std::fs::remove_file(&one_call);
    save_in_one_call(&one_call, &objs);
    assert_eq!(run_image(&one_call), native, "the one-call image");

    let (bytes, _) =
        link_incrementally("incremental-c", &objs, &[], Steps::OneByOne(&symbols), true)
            .expect("saves the dylib");
    let image = dir.join("incremental.kimg");
    std::fs::write(&image, &bytes).expect("write image");
    assert_eq!(run_image(&image), native, "the incremental image");
    let o = kiln()
        .args(["run", "--noexec"])
        .arg(&image)
        .output()
        .expect("kiln runs");
    assert!(o.status.success() && o.stdout.is_empty(), "{}", show(&o));

    // Between pieces: rebases. Only the host's symbols are imported by name.
    let names = names_imported(&bytes);
    for own in symbols.iter().chain(&["table", "greeting", "f1_slot"]) {
        assert!(
            !names.iter().any(|n| n == own),
            "`{own}` is imported by name: {names:?}"
        );
    }
    assert!(names.iter().any(|n| n == "printf"), "{names:?}");
    let info = image_file::inspect("incremental", &bytes).expect("inspects");
    assert!(info.dependencies.is_empty(), "{:?}", info.dependencies);
    assert_eq!(
        info.exports,
        3 + 2 * PIECES + 2,
        "globals, f_k, f_k_slot, fs, main"
    );

    // The same incremental link again: the same file; another layout of
    // the same inputs (one call): another build id.
    let (again, _) =
        link_incrementally("incremental-c", &objs, &[], Steps::OneByOne(&symbols), true)
            .expect("saves again");
    assert!(
        again == bytes,
        "two incremental saves of the same inputs differ"
    );
    let one_call_info =
        image_file::inspect("one-call", &std::fs::read(&one_call).expect("read")).expect("ok");
    assert_ne!(
        one_call_info.build_id, info.build_id,
        "an image of another layout kept the build id"
    );
}

/// Lua, each of its objects linked on its own (one unit per object) into
/// one dylib, saved and run by another process: output and exit status of
/// the native build, like the image linked in one call.
#[test]
fn lua_linked_object_by_object_and_saved_runs_like_the_native_build() {
    if !need_tool("clang") {
        return;
    }
    let flags = ["-O2", "-fPIE"];
    let objs = build_lua("clang", &flags, "image-incremental-clang-O2-fPIE");
    let dir = scratch("images-incremental-lua");
    let native = run_native("clang", &objs, &flags, &["m", "dl"], &dir.join("native"));
    assert!(!native.0.is_empty(), "the native build printed nothing");
    let (bytes, _) = link_incrementally("lua", &objs, &["m"], Steps::AllThenMain, true)
        .expect("saves the dylib");
    let image = dir.join("lua-incremental.kimg");
    std::fs::write(&image, &bytes).expect("write image");
    assert_eq!(run_image(&image), native);
    let info = image_file::inspect("lua", &bytes).expect("inspects");
    assert!(info.sections.len() > 16, "{} segments", info.sections.len());
    assert_eq!(run_under_kiln_load(&image), native, "under kiln-load");
    let names = names_imported(&bytes);
    for own in ["lua_newstate", "luaL_newstate", "luaV_execute", "luaH_new"] {
        assert!(
            !names.iter().any(|n| n == own),
            "`{own}` imported: {names:?}"
        );
    }
    // The links ran on the pool in whatever order; the file is the same.
    let (again, _) =
        link_incrementally("lua", &objs, &["m"], Steps::AllThenMain, true).expect("saves again");
    assert!(again == bytes, "two incremental saves of Lua differ");
}

/// C++ across pieces: a constructor with a priority, exceptions thrown in
/// one piece and caught in another (the pieces' `.eh_frame`s merged into
/// one), virtual calls, destructors at exit.
#[test]
fn cxx_exceptions_cross_the_pieces_of_an_incremental_image() {
    if !need_tool("clang++") {
        return;
    }
    let dir = scratch("images-incremental-cxx");
    let a = r#"
#include <cstdio>
#include <stdexcept>
struct Shape { virtual ~Shape() {} virtual int area() const = 0; };
Shape *make(int which);
int risky(int x);
struct Log { const char *n; Log(const char *n) : n(n) { std::printf("ctor %s\n", n); }
             ~Log() { std::printf("dtor %s\n", n); } };
__attribute__((init_priority(200))) Log early("early");
Log plain("plain");
int main() {
    int sum = 0;
    for (int i = 0; i < 3; i++) { Shape *s = make(i); sum += s->area(); delete s; }
    std::printf("areas %d\n", sum);
    try { risky(7); } catch (const std::runtime_error &e) { std::printf("caught %s\n", e.what()); }
    try { risky(-1); } catch (int v) { std::printf("caught int %d\n", v); }
    return sum % 100;
}
"#;
    let b = programs::CXX_SHAPES;
    // clang++ -fPIE reaches its own hidden and local data PC-relatively;
    // g++ -fPIC goes through the GOT (its -fPIE would reach libstdc++'s
    // typeinfo PC-relatively: refused).
    for (cxx, pic) in [("clang++", "-fPIE"), ("g++", "-fPIC")] {
        if !need_tool(cxx) {
            return;
        }
        let flags = ["-O2", pic];
        let mut objs = Vec::new();
        for (name, src) in [("b", b), ("a", a)] {
            let path = dir.join(format!("{name}.cpp"));
            std::fs::write(&path, src).expect("write source");
            objs.push(compile(
                cxx,
                &path,
                &flags,
                &[],
                &dir.join(format!("{name}-{cxx}.o")),
            ));
        }
        let native = run_native(cxx, &objs, &flags, &[], &dir.join(format!("native-{cxx}")));
        assert!(native.0.contains("caught int -1"), "{native:?}");
        let (bytes, _) = link_incrementally(
            "cxx",
            &objs,
            &["stdc++"],
            Steps::OneByOne(&["_Z4makei", "main"]),
            true,
        )
        .expect("saves the dylib");
        let image = dir.join(format!("cxx-incremental-{cxx}.kimg"));
        std::fs::write(&image, &bytes).expect("write image");
        assert_eq!(run_image(&image), native, "{cxx}");
        assert_eq!(run_under_kiln_load(&image), native, "{cxx} under kiln-load");
    }
}

/// One resource tracker's code: only its pieces are saved; references to
/// code of another tracker in the same dylib become imports by name, bound
/// at load through the loading dylib's link order.
#[test]
fn one_trackers_code_is_saved_alone_and_imports_the_other_trackers_symbols_by_name() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-incremental-tracker");
    let flags = ["-O2", "-fPIC"];
    let base = compile_c_text(
        &dir,
        "base",
        "int shared = 2;\nint base_val(void) { return 40; }\n\
         __attribute__((visibility(\"hidden\"))) int secret = 5;\n",
        &flags,
    );
    let user = compile_c_text(
        &dir,
        "user",
        "extern int shared;\nint base_val(void);\nint helper(int x) { return x + 1; }\n\
         int *sp = &shared;\nint user(void) { return base_val() + *sp + helper(-1); }\n",
        &flags,
    );
    let helper = compile_c_text(
        &dir,
        "twice",
        "int helper(int);\nint twice(void) { return 2 * helper(20); }\n",
        &flags,
    );
    let peek = compile_c_text(
        &dir,
        "peek",
        "extern __attribute__((visibility(\"hidden\"))) int secret;\n\
         int peek(void) { return secret; }\n",
        &flags,
    );
    let (session, layer, app) = session_with("app", &[], options(true));
    let t1 = app.create_tracker().expect("tracker");
    let t2 = app.create_tracker().expect("tracker");
    let t3 = app.create_tracker().expect("tracker");
    let read = |p: &Path| std::fs::read(p).expect("read object");
    layer
        .add_object(&app, Some(&t1), "base.o", &read(&base))
        .expect("adds");
    layer
        .add_object(&app, Some(&t2), "user.o", &read(&user))
        .expect("adds");
    layer
        .add_object(&app, Some(&t2), "twice.o", &read(&helper))
        .expect("adds");
    layer
        .add_object(&app, Some(&t3), "peek.o", &read(&peek))
        .expect("adds");
    app.lookup_ready(&["user", "twice", "peek"]).expect("links");
    let id = BuildId::of_inputs(&options(true), [("user.o", &read(&user)[..])]);
    let t2_bytes = layer.save_tracker_image(&t2, &id).expect("saves t2");
    let t1_bytes = layer.save_tracker_image(&t1, &id).expect("saves t1");
    let all = layer.save_image(&app, &id).expect("saves the dylib");
    // A PC-relative reference (to a hidden variable) into t1's code cannot
    // be an import: saving t3 alone is refused, naming the relocation.
    let err = layer
        .save_tracker_image(&t3, &id)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("peek.o") && err.contains("R_X86_64_PC32") && err.contains("`secret`"),
        "{err}"
    );
    session.end();

    let mut exported = image_file::exported_names("t2", &t2_bytes).expect("t2");
    exported.sort();
    assert_eq!(
        exported,
        ["helper", "sp", "twice", "user"],
        "t2's code only"
    );
    let names = names_imported(&t2_bytes);
    assert_eq!(names, ["base_val", "shared"], "t1's symbols, by name");
    let exported = image_file::exported_names("t1", &t1_bytes).expect("t1");
    assert_eq!(exported.len(), 2, "{exported:?}");
    assert!(names_imported(&t1_bytes).is_empty());
    assert!(names_imported(&all).is_empty(), "the dylib's code is whole");
    let mut exported = image_file::exported_names("all", &all).expect("all");
    exported.sort();
    assert_eq!(
        exported,
        [
            "base_val", "helper", "peek", "shared", "sp", "twice", "user"
        ]
    );
    assert_ne!(
        image_file::inspect("t1", &t1_bytes).expect("t1").build_id,
        image_file::inspect("t2", &t2_bytes).expect("t2").build_id
    );

    // In a fresh session: t1's object and t2's image in one dylib.
    let (session, layer, app) = session_with("app2", &[], options(false));
    layer
        .add_object(&app, None, "base.o", &read(&base))
        .expect("adds");
    // SAFETY: the test's own image, saved above.
    unsafe { layer.add_image(&app, None, "t2.kimg", t2_bytes) }.expect("adds the image");
    let found = app.lookup_ready(&["user", "twice"]).expect("binds");
    let call = |name: &str| {
        let f = found.get_str(name).expect("found").address as usize;
        // SAFETY: `user` and `twice` are `int (void)`, Ready and bound.
        let f: extern "C" fn() -> i32 = unsafe { std::mem::transmute(f) };
        f()
    };
    assert_eq!(call("user"), 42);
    assert_eq!(call("twice"), 42);
    session.end();
}

/// A layer that does not link in imaging mode cannot save: the error says
/// so (for the dylib and for a tracker). An empty dylib has nothing to save.
#[test]
fn saving_a_dylib_not_linked_in_imaging_mode_fails_saying_so() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-incremental-not-imaging");
    let obj = compile_c_text(
        &dir,
        "one",
        "int one(void) { return 1; }\n",
        &["-O2", "-fPIC"],
    );
    let (session, layer, app) = session_with("plain", &[], options(false));
    let t = app.create_tracker().expect("tracker");
    layer
        .add_object(&app, Some(&t), "one.o", &std::fs::read(&obj).expect("read"))
        .expect("adds");
    app.lookup_ready(&["one"]).expect("links");
    let id = BuildId([7; 32]);
    for err in [
        layer.save_image(&app, &id).expect_err("not imaging"),
        layer.save_tracker_image(&t, &id).expect_err("not imaging"),
    ] {
        assert!(matches!(err, ImageError::NotImaging { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("not linked in imaging mode") && text.contains("one.o"),
            "{text}"
        );
    }
    let empty = session.create_dylib("empty").expect("dylib");
    let err = layer.save_image(&empty, &id).expect_err("nothing linked");
    assert!(
        matches!(err, ImageError::Empty { .. }) && err.to_string().contains("empty"),
        "{err}"
    );
    session.end();
}

/// An image file added to the dylib is not saved again: what the links
/// reference in it is saved by its build id and offset, and the saved image
/// loads next to it in another session.
#[test]
fn an_image_file_in_the_dylib_is_a_dependency_of_the_saved_image_not_a_piece() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-incremental-with-file");
    let flags = ["-O2", "-fPIC"];
    let liba = compile_c_text(
        &dir,
        "liba",
        "int table[4] = {1, 2, 3, 4};\nint a_val(void) { return 20; }\n",
        &flags,
    );
    let useb = compile_c_text(&dir, "useb", USE_A, &flags);
    let read = |p: &Path| std::fs::read(p).expect("read object");
    // A, saved as an image of its own.
    let (session, layer, lib) = session_with("liba", &[], options(true));
    layer
        .add_object(&lib, None, "liba.o", &read(&liba))
        .expect("adds");
    lib.lookup_ready(&["a_val"]).expect("links");
    let a_id = BuildId::of_inputs(&options(true), [("liba.o", &read(&liba)[..])]);
    let a_bytes = layer.save_image(&lib, &a_id).expect("saves A");
    session.end();
    let a_id = image_file::inspect("liba", &a_bytes).expect("A").build_id;

    // A's image and B's object in one dylib; the dylib saved.
    let (session, layer, app) = session_with("app", &[], options(true));
    // SAFETY: the test's own image, saved above.
    unsafe { layer.add_image(&app, None, "liba.kimg", a_bytes.clone()) }.expect("adds A");
    layer
        .add_object(&app, None, "useb.o", &read(&useb))
        .expect("adds");
    app.lookup_ready(&["use_a"]).expect("links");
    let b_id = BuildId::of_inputs(&options(true), [("useb.o", &read(&useb)[..])]);
    let b_bytes = layer.save_image(&app, &b_id).expect("saves the dylib");
    session.end();
    let info = image_file::inspect("b", &b_bytes).expect("B");
    assert_eq!(info.dependencies.len(), 1, "{:?}", info.dependencies);
    assert_eq!(info.dependencies[0].build_id, a_id);
    assert_eq!(
        info.dependency_imports, 3,
        "a_val's slot, table's slot, the pointer"
    );
    let mut exported = image_file::exported_names("b", &b_bytes).expect("B");
    exported.sort();
    assert_eq!(exported, ["third", "use_a"], "A's code is not in B");

    // Another session: A's image and B's, bound by build id.
    assert_eq!(use_a_from_images(a_bytes, b_bytes), 25);
}

/// A library saved from two links (its data, then its code) in this
/// session is what a program linked later in the same session links
/// against: the program's image records its references into the library
/// by (the library's build id, offset), as into a library saved from one
/// link, and the two images run together in another session.
#[test]
fn a_program_linked_after_a_many_link_save_records_its_references_by_build_id() {
    assert!(need_tool("gcc"), "gcc is needed");
    let dir = scratch("images-incremental-pieces-registered");
    let flags = ["-O2", "-fPIC"];
    let data = compile_c_text(&dir, "adata", "int table[4] = {1, 2, 3, 4};\n", &flags);
    let code = compile_c_text(
        &dir,
        "acode",
        "extern int table[];\nint a_val(void) { return 20 + table[0] - 1; }\n",
        &flags,
    );
    let useb = compile_c_text(&dir, "useb", USE_A, &flags);
    let read = |p: &Path| std::fs::read(p).expect("read object");
    let (session, layer, lib) = session_with("liba", &[], options(true));
    layer
        .add_object(&lib, None, "adata.o", &read(&data))
        .expect("adds");
    lib.lookup_ready(&["table"]).expect("links the data");
    layer
        .add_object(&lib, None, "acode.o", &read(&code))
        .expect("adds");
    lib.lookup_ready(&["a_val"]).expect("links the code");
    let a_given = BuildId::of_inputs(
        &options(true),
        [("adata.o", &read(&data)[..]), ("acode.o", &read(&code)[..])],
    );
    let a_bytes = layer.save_image(&lib, &a_given).expect("saves A");
    let a_id = image_file::inspect("liba", &a_bytes).expect("A").build_id;

    // The program, linked in the same session against the library.
    let app = session.create_dylib("app").expect("dylib");
    app.set_link_order(&[(lib.clone(), DylibLookup::ExportedOnly)])
        .expect("order");
    layer
        .add_object(&app, None, "useb.o", &read(&useb))
        .expect("adds");
    app.lookup_ready(&["use_a"]).expect("links");
    let b_id = BuildId::of_inputs(&options(true), [("useb.o", &read(&useb)[..])]);
    let b_bytes = layer.save_image(&app, &b_id).expect("saves the program");
    session.end();
    let info = image_file::inspect("b", &b_bytes).expect("B");
    assert_eq!(
        info.dependencies
            .iter()
            .map(|d| d.build_id)
            .collect::<Vec<_>>(),
        [a_id],
        "B links against A by build id"
    );
    assert_eq!(
        info.dependency_imports, 3,
        "a_val's slot, table's slot, the pointer"
    );

    // Another session: both images, bound by build id.
    assert_eq!(use_a_from_images(a_bytes, b_bytes), 25);
}

/// A program calling a library's function and reading its data (`USE_A`).
const USE_A: &str = "extern int table[];\nint a_val(void);\nint *third = &table[2];\n\
                     int use_a(void) { return a_val() + *third + table[1]; }\n";

/// `use_a()` of image B (`USE_A`), added with the library image A it links
/// against by build id to a fresh session.
fn use_a_from_images(a_bytes: Vec<u8>, b_bytes: Vec<u8>) -> i32 {
    let (session, layer, app) = session_with("app2", &[], options(false));
    // SAFETY: the test's own images, saved by the caller.
    unsafe {
        layer
            .add_image(&app, None, "liba.kimg", a_bytes)
            .expect("adds A");
        layer
            .add_image(&app, None, "b.kimg", b_bytes)
            .expect("adds B");
    }
    let found = app.lookup_ready(&["use_a"]).expect("binds");
    let f = found.get_str("use_a").expect("use_a").address as usize;
    // SAFETY: `use_a` is `int use_a(void)`, Ready and bound.
    let use_a: extern "C" fn() -> i32 = unsafe { std::mem::transmute(f) };
    let value = use_a();
    session.end();
    value
}

#[test]
fn a_link_with_thread_locals_is_not_saved_with_other_links() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-incremental-tls");
    let tls = compile_c_text(
        &dir,
        "counter",
        "__thread int counter = 5;\nint bump(void) { return ++counter; }\n",
        &["-O2", "-fPIC"],
    );
    let main = compile_c_text(
        &dir,
        "user",
        "int bump(void);\nint twice(void) { bump(); return bump(); }\n",
        &["-O2", "-fPIC"],
    );
    let (session, layer, app) = session_with("tls-pieces", &[], options(true));
    for obj in [&tls, &main] {
        let name = obj
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        layer
            .add_object(&app, None, &name, &std::fs::read(obj).expect("read"))
            .expect("adds");
    }
    app.lookup_ready(&["twice"]).expect("links");
    let err = layer
        .save_image(&app, &BuildId([9; 32]))
        .expect_err("two templates, one image");
    assert!(
        matches!(err, ImageError::ThreadLocalsInPieces { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("counter.o"), "{err}");
    session.end();
}

/// Pieces of an image saved from many links keep their blocks' alignment:
/// a one-page link first, then one whose blocks ask for 64 KiB and 2 MiB;
/// the saved image puts the second at a multiple of its own alignment and
/// records the largest, under `kiln run` and `kiln-load`.
#[test]
fn each_piece_keeps_its_alignment_in_an_image_saved_from_many_links() {
    assert!(need_tool("gcc"));
    let dir = scratch("images-incremental-aligned");
    let pad = compile_c_text(
        &dir,
        "pad",
        "int pad_value(void) { return 1; }\n",
        &["-O2", "-fPIC"],
    );
    let aligned = compile(
        "gcc",
        &c_dir().join("aligned_blocks.c"),
        &["-O2", "-fPIC"],
        &[],
        &dir.join("aligned.o"),
    );
    let (bytes, _) = link_incrementally(
        "aligned",
        &[pad, aligned],
        &[],
        Steps::OneByOne(&["pad_value", "main"]),
        true,
    )
    .expect("saves the dylib");
    let image = dir.join("aligned.kimg");
    std::fs::write(&image, &bytes).expect("write the image");
    let want = ("0 0 0 0\n".to_string(), 2);
    assert_eq!(run_image(&image), want, "kiln run");
    assert_eq!(run_under_kiln_load(&image), want, "kiln-load");
}
