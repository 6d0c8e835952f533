//! The object layer: objects as materialization units of the engine (kiln
//! issue 3 §3). Mutually recursive functions in two objects — in one dylib
//! and across two dylibs — link and run; missing symbols are listed with the
//! objects that reference them; failures carry their root cause; removing a
//! tracker runs finalizers and releases memory.

use std::path::{Path, PathBuf};

mod common;

use common::parked::Parked;
use common::{compile_c_text, error_chain, serial};

use kiln_engine::*;
use kiln_linker::HostSymbols;
use kiln_linker::layer::{HostGenerator, ObjectLayer};

/// The bytes of `src` compiled as `<dir>/<name>.o` with `gcc -O1 -fPIC`.
fn compile(dir: &Path, name: &str, src: &str) -> Vec<u8> {
    let o = compile_c_text(dir, name, src, &["-O1", "-fPIC"]);
    std::fs::read(&o).unwrap_or_else(|e| panic!("read {}: {e}", o.display()))
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-layer-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const EVEN: &str = "int is_odd(int);\nint is_even(int n) { return n == 0 ? 1 : is_odd(n - 1); }\n";
const ODD: &str = "int is_even(int);\nint is_odd(int n) { return n == 0 ? 0 : is_even(n - 1); }\n";

struct Jit {
    session: Session,
    layer: ObjectLayer,
    host: Dylib,
}

fn jit() -> Jit {
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::new(&session);
    let host = session.create_dylib("<host>").unwrap();
    host.add_generator(HostGenerator::new(HostSymbols::new()))
        .unwrap();
    Jit {
        session,
        layer,
        host,
    }
}

impl Jit {
    fn dylib(&self, name: &str, links: &[&Dylib]) -> Dylib {
        let d = self.session.create_dylib(name).unwrap();
        let mut order: Vec<(Dylib, DylibLookup)> = links
            .iter()
            .map(|l| ((*l).clone(), DylibLookup::ExportedOnly))
            .collect();
        order.push((self.host.clone(), DylibLookup::ExportedOnly));
        d.set_link_order(&order).unwrap();
        d
    }

    /// Compiles `src` as `<name>.c` in `dir` and adds it to `dylib` as
    /// `<name>.o`.
    fn add_c(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        dir: &Path,
        name: &str,
        src: &str,
    ) -> std::result::Result<(), kiln_linker::LinkError> {
        self.layer.add_object(
            dylib,
            tracker,
            &format!("{name}.o"),
            &compile(dir, name, src),
        )
    }

    fn function(&self, dylib: &Dylib, name: &str) -> Result<extern "C" fn(i32) -> i32> {
        let found = dylib.lookup_ready(&[name])?;
        let address = found.get_str(name).unwrap().address;
        // SAFETY: the tests' own C objects.
        unsafe { self.layer.run_initializers() };
        // SAFETY: `name` is a C function `int f(int)` compiled by the test,
        // Ready: it and everything it reaches are linked and finalized.
        Ok(unsafe { std::mem::transmute::<usize, extern "C" fn(i32) -> i32>(address as usize) })
    }
}

/// Adds the mutually recursive `is_even`/`is_odd` objects to `app`.
fn add_even_and_odd(j: &Jit, app: &Dylib, dir: &Path) {
    j.add_c(app, None, dir, "even", EVEN).unwrap();
    j.add_c(app, None, dir, "odd", ODD).unwrap();
}

#[test]
fn mutually_recursive_objects_in_one_dylib() {
    let _serial = serial();
    let dir = scratch("one");
    let j = jit();
    let app = j.dylib("app", &[]);
    add_even_and_odd(&j, &app, &dir);
    let is_even = j.function(&app, "is_even").unwrap();
    assert_eq!(is_even(10), 1);
    assert_eq!(is_even(7), 0);
    assert_eq!(j.layer.stats().1, 2, "each object linked once");
    j.session.end();
}

#[test]
fn mutually_recursive_objects_across_two_dylibs() {
    let _serial = serial();
    let dir = scratch("two");
    let j = jit();
    let a = j.session.create_dylib("a").unwrap();
    let b = j.dylib("b", &[&a]);
    a.set_link_order(&[
        (b.clone(), DylibLookup::ExportedOnly),
        (j.host.clone(), DylibLookup::ExportedOnly),
    ])
    .unwrap();
    j.add_c(&a, None, &dir, "even", EVEN).unwrap();
    j.add_c(&b, None, &dir, "odd", ODD).unwrap();
    let is_odd = j.function(&b, "is_odd").unwrap();
    assert_eq!(is_odd(9), 1);
    assert_eq!(
        a.symbol_state(&j.session.intern("is_even")),
        Some(SymbolState::Ready)
    );
    j.session.end();
}

#[test]
fn missing_symbols_are_listed_with_the_objects_that_use_them() {
    let _serial = serial();
    let dir = scratch("missing");
    let j = jit();
    let app = j.dylib("app", &[]);
    let src = "int nowhere_a(int); int nowhere_b(int);\nint f(int x) { return nowhere_a(x) + nowhere_b(x); }\n";
    j.add_c(&app, None, &dir, "uses_missing", src).unwrap();
    let err = j.function(&app, "f").expect_err("f cannot link");
    let text = err.to_string();
    assert!(
        text.contains("nowhere_a") && text.contains("nowhere_b"),
        "{text}"
    );
    assert!(text.contains("uses_missing.o"), "{text}");
    j.session.end();
}

#[test]
fn a_link_error_stays_typed_in_the_lookup_error() {
    let _serial = serial();
    let dir = scratch("typed");
    let j = jit();
    let app = j.dylib("app", &[]);
    let src = "int nowhere_c(int);\nint g(int x) { return nowhere_c(x); }\n";
    j.add_c(&app, None, &dir, "typed", src).unwrap();
    let err = j.function(&app, "g").expect_err("g cannot link");
    let link = err
        .downcast_ref::<kiln_linker::LinkError>()
        .unwrap_or_else(|| panic!("root cause is not a LinkError: {err:?}"));
    assert!(link.to_string().contains("nowhere_c"), "{link}");
    // The same error through the standard source() chain.
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut typed = false;
    while let Some(e) = next {
        typed |= e.is::<kiln_linker::LinkError>();
        next = e.source();
    }
    assert!(typed, "no LinkError in the source chain of {err:?}");
    j.session.end();
}

#[test]
fn a_failing_object_fails_its_callers_with_the_root_cause() {
    let _serial = serial();
    let dir = scratch("fail");
    let j = jit();
    let app = j.dylib("app", &[]);
    let caller = "int broken(int);\nint caller(int x) { return broken(x) * 2; }\n";
    let broken = "int gone(int);\nint broken(int x) { return gone(x); }\n";
    j.add_c(&app, None, &dir, "caller", caller).unwrap();
    j.add_c(&app, None, &dir, "broken", broken).unwrap();
    let err = j
        .function(&app, "caller")
        .expect_err("caller cannot become Ready");
    let text = err.to_string();
    assert!(text.contains("gone"), "root cause missing: {text}");
    j.session.end();
}

/// `int name(int)` of `app`, linked and Ready.
fn call(j: &Jit, app: &Dylib, name: &str, x: i32) -> i32 {
    j.function(app, name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))(x)
}

const TWICE: &str = "int is_even(int);\nint twice(int x) { return 2 * x + is_even(x); }\n";
const BROKEN: &str = "int gone(int);\nint broken(int x) { return gone(x); }\n";
const CALLER: &str = "int broken(int);\nint caller(int x) { return broken(x) * 2; }\n";

#[test]
fn objects_one_lookup_starts_are_linked_as_one_image() {
    let _serial = serial();
    let dir = scratch("batch");
    let j = jit();
    let app = j.dylib("app", &[]);
    add_even_and_odd(&j, &app, &dir);
    j.add_c(&app, None, &dir, "twice", TWICE).unwrap();
    app.lookup_ready(&["is_even", "is_odd", "twice"]).unwrap();
    assert_eq!(j.layer.stats().1, 1, "the three objects as one image");
    assert_eq!(call(&j, &app, "is_even", 10), 1);
    assert_eq!(call(&j, &app, "is_odd", 10), 0);
    assert_eq!(call(&j, &app, "twice", 3), 6);
    // Another lookup's object links alone, calling into the batch.
    let later = "int twice(int);\nint later(int x) { return twice(x) + 1; }\n";
    j.add_c(&app, None, &dir, "later", later).unwrap();
    assert_eq!(call(&j, &app, "later", 3), 7);
    assert_eq!(j.layer.stats().1, 2);
    j.session.end();
}

/// A batch must not run code of a unit that fails in it, nor widen a
/// unit's `__start_`/`__stop_` range to another's sections: objects with
/// initializers or such references link alone.
#[test]
fn objects_with_initializers_or_section_bounds_link_alone() {
    let _serial = serial();
    let dir = scratch("batch-alone");
    let j = jit();
    let app = j.dylib("app", &[]);
    let bounded = |tag: i32| {
        format!(
            "__attribute__((used, section(\"tags\"))) static int tag = {tag};\n\
             extern int __start_tags[], __stop_tags[];\n\
             int tags{tag}(int x) {{ return x * 100 + (int)(__stop_tags - __start_tags); }}\n"
        )
    };
    j.add_c(&app, None, &dir, "tags1", &bounded(1)).unwrap();
    j.add_c(&app, None, &dir, "tags2", &bounded(2)).unwrap();
    let ctor = |n: i32| {
        format!(
            "static int set;\n__attribute__((constructor)) static void init(void) {{ set = {n}; }}\n\
             int ctor{n}(int x) {{ return x + set; }}\n"
        )
    };
    j.add_c(&app, None, &dir, "ctor1", &ctor(1)).unwrap();
    j.add_c(&app, None, &dir, "ctor2", &ctor(2)).unwrap();
    app.lookup_ready(&["tags1", "tags2", "ctor1", "ctor2"])
        .unwrap();
    assert_eq!(j.layer.stats().1, 4, "each object alone");
    // Each sees only its own `tags` section, as linked alone.
    assert_eq!(call(&j, &app, "tags1", 1), 101);
    assert_eq!(call(&j, &app, "tags2", 1), 101);
    assert_eq!(call(&j, &app, "ctor1", 10), 11);
    assert_eq!(call(&j, &app, "ctor2", 10), 12);
    j.session.end();
}

/// even, odd, `broken` (the C source given) and caller added one by one
/// to `app` of a new JIT, then looked up at once: the lookup fails (the
/// error returned), the four objects linked as one image if `one_image`.
/// (Otherwise — the batch's image failed as a whole and each unit is
/// linked alone — the lookup fails with `broken` while the others may
/// still be linking.)
fn batch_with_broken(dir: &str, broken: &str, one_image: bool) -> (Jit, Dylib, kiln_engine::Error) {
    let dir = scratch(dir);
    let j = jit();
    let app = j.dylib("app", &[]);
    add_even_and_odd(&j, &app, &dir);
    j.add_c(&app, None, &dir, "broken", broken).unwrap();
    j.add_c(&app, None, &dir, "caller", CALLER).unwrap();
    let err = app
        .lookup_ready(&["is_even", "is_odd", "broken", "caller"])
        .expect_err("broken cannot link");
    if one_image {
        assert_eq!(j.layer.stats().1, 1, "the four objects as one image");
    }
    (j, app, err)
}

#[test]
fn a_batch_fails_only_the_objects_that_reach_a_missing_symbol() {
    let _serial = serial();
    let (j, app, err) = batch_with_broken("batch-missing", BROKEN, true);
    assert!(err.to_string().contains("gone"), "{err}");
    // What does not reach `gone` is Ready, as if linked alone.
    even_and_odd_work_and_caller_fails(&j, &app);
    let err = j.function(&app, "broken").expect_err("broken");
    match err.downcast_ref::<kiln_linker::LinkError>() {
        Some(kiln_linker::LinkError::MissingSymbols { missing }) => {
            assert_eq!(
                missing,
                &[("gone".to_string(), vec!["broken.o".to_string()])]
            );
        }
        _ => panic!("not a missing symbol: {err:?}"),
    }
    j.session.end();
}

/// `is_even` and `is_odd` of `app` work; `caller` fails, naming `gone`.
fn even_and_odd_work_and_caller_fails(j: &Jit, app: &Dylib) {
    assert_eq!(call(j, app, "is_even", 4), 1);
    assert_eq!(call(j, app, "is_odd", 4), 0);
    let err = j
        .function(app, "caller")
        .expect_err("caller reaches broken");
    assert!(
        err.to_string().contains("gone"),
        "root cause missing: {err}"
    );
}

/// `broken` links, but a byte of its data holds its own address: an
/// 8-bit absolute relocation no image address fits.
const OVERFLOWS: &str = "int broken(int x) { return x + 1; }\n\
    __asm__(\".pushsection .data\\n.globl tiny\\ntiny: .byte broken\\n.popsection\");\n";

#[test]
fn a_batch_whose_object_cannot_be_fixed_up_fails_only_the_objects_that_reach_it() {
    let _serial = serial();
    let (j, app, err) = batch_with_broken("batch-fixup", OVERFLOWS, true);
    assert!(err.to_string().contains("broken.o"), "{err}");
    // What does not reach `broken` is Ready, as if linked alone.
    assert_eq!(call(&j, &app, "is_even", 4), 1);
    assert_eq!(call(&j, &app, "is_odd", 4), 0);
    fail_naming(
        &j,
        &app,
        &["broken", "tiny", "caller"],
        &["broken.o", "R_X86_64_8"],
    );
    j.session.end();
}

/// `f(x)` returns `x * 10 + v` through a local function in COMDAT group
/// `grp` (no global in it, so nothing makes the two copies one name).
fn comdat_object(f: &str, v: i32) -> String {
    format!(
        "__asm__(\".section .text.grp,\\\"axG\\\",@progbits,grp,comdat\\n\"\n\
         \"grp_{v}: movl ${v}, %eax\\n ret\\n .text\");\n\
         int grp_{v}(void);\nint {f}(int x) {{ return x * 10 + grp_{v}(); }}\n"
    )
}

/// Two objects with their own copy of COMDAT group `grp`, linked alone,
/// each call their own copy. A batch keeps one copy of a group for the
/// image: the other object's calls would reach a discarded copy. The
/// answer must not depend on whether one lookup started both.
#[test]
fn objects_with_the_same_comdat_group_each_keep_their_copy_in_a_batch() {
    let _serial = serial();
    let dir = scratch("batch-comdat");
    let j = jit();
    let app = j.dylib("app", &[]);
    j.add_c(&app, None, &dir, "ga", &comdat_object("ga", 1))
        .unwrap();
    j.add_c(&app, None, &dir, "gb", &comdat_object("gb", 2))
        .unwrap();
    app.lookup_ready(&["ga", "gb"]).unwrap();
    assert_eq!(call(&j, &app, "ga", 3), 31);
    assert_eq!(call(&j, &app, "gb", 3), 32);
    j.session.end();
}

/// `broken` reserves 64 GiB of zeros: no JIT memory holds it, alone or
/// with others. The objects batched with it get their memory, as alone.
const TOO_LARGE: &str = "char huge[1L << 36];\nint broken(int x) { return huge[x]; }\n";

#[test]
fn a_batch_with_an_object_too_large_for_memory_fails_only_that_object() {
    let _serial = serial();
    let (j, app, err) = batch_with_broken("batch-memory", TOO_LARGE, false);
    assert!(err.to_string().contains("broken.o"), "{err}");
    assert_eq!(call(&j, &app, "is_even", 4), 1);
    assert_eq!(call(&j, &app, "is_odd", 4), 0);
    assert_eq!(j.layer.stats().1, 2, "even's and odd's images, each alone");
    fail_naming(&j, &app, &["broken", "caller"], &["broken.o section .bss"]);
    j.session.end();
}

/// `broken` is an aarch64 object: in-process linking is the host's ISA
/// only. It fails alone; the x86-64 objects one lookup started with it
/// link, as alone.
#[test]
fn a_batch_with_an_object_of_another_isa_fails_only_that_object() {
    let _serial = serial();
    assert!(common::need_tool("aarch64-linux-gnu-gcc"));
    let dir = scratch("batch-isa");
    let j = jit();
    let app = j.dylib("app", &[]);
    add_even_and_odd(&j, &app, &dir);
    let src = dir.join("a64.c");
    std::fs::write(&src, "int broken(int x) { return x + 1; }\n").unwrap();
    let o = common::compile(
        "aarch64-linux-gnu-gcc",
        &src,
        &["-O1"],
        &[],
        &dir.join("a64.o"),
    );
    let bytes = std::fs::read(o).unwrap();
    j.layer.add_object(&app, None, "a64.o", &bytes).unwrap();
    let err = app
        .lookup_ready(&["is_even", "is_odd", "broken"])
        .expect_err("an aarch64 object runs here");
    assert!(err.to_string().contains("a64.o"), "{err}");
    assert_eq!(call(&j, &app, "is_even", 4), 1);
    assert_eq!(call(&j, &app, "is_odd", 4), 0);
    j.session.end();
}

/// `tls_use` reads `tcount`, a thread-local of `tls_def`'s image: it
/// binds to that image's TLS module alike whether or not one lookup
/// started both objects (a batch would link them as one image, and once
/// answered otherwise).
#[test]
fn a_thread_local_of_another_object_answers_alike_in_a_batch_and_alone() {
    let _serial = serial();
    let dir = scratch("batch-tls");
    let def = "__thread int tcount = 5;\nint tls_def(int x) { return x + tcount; }\n";
    let user = "extern __thread int tcount;\nint tls_use(int x) { return x * tcount; }\n";
    for together in [true, false] {
        let j = jit();
        let app = j.dylib("app", &[]);
        j.add_c(&app, None, &dir, "tls_def", def).unwrap();
        j.add_c(&app, None, &dir, "tls_use", user).unwrap();
        if together {
            let _ = app.lookup_ready(&["tls_def", "tls_use"]);
        }
        assert_eq!(call(&j, &app, "tls_def", 1), 6, "together: {together}");
        assert_eq!(call(&j, &app, "tls_use", 2), 10, "together: {together}");
        j.session.end();
    }
}

/// Each of `names` in `app` fails with an error whose chain of sources
/// holds each of `causes`.
fn fail_naming(j: &Jit, app: &Dylib, names: &[&str], causes: &[&str]) {
    for name in names {
        let err = j.function(app, name).expect_err("fails with broken.o");
        let chain = error_chain(&err);
        assert!(
            causes.iter().all(|c| chain.contains(c)),
            "{name}: root cause missing: {chain}"
        );
    }
}

#[test]
fn a_batch_whose_external_failed_fails_only_the_objects_that_use_it() {
    let _serial = serial();
    let dir = scratch("batch-failed");
    let j = jit();
    let lib = j.dylib("lib", &[]);
    j.add_c(&lib, None, &dir, "broken", BROKEN).unwrap();
    assert!(j.function(&lib, "broken").is_err());
    let app = j.dylib("app", &[&lib]);
    add_even_and_odd(&j, &app, &dir);
    j.add_c(&app, None, &dir, "caller", CALLER).unwrap();
    let err = app
        .lookup_ready(&["is_even", "caller", "is_odd"])
        .expect_err("caller calls a failed symbol");
    assert!(err.to_string().contains("gone"), "{err}");
    assert_eq!(j.layer.stats().1, 1, "the three objects as one image");
    even_and_odd_work_and_caller_fails(&j, &app);
    j.session.end();
}

#[test]
fn removing_the_tracker_releases_the_image() {
    let _serial = serial();
    let dir = scratch("remove");
    let j = jit();
    let app = j.dylib("app", &[]);
    let rt = app.create_tracker().unwrap();
    j.add_c(&app, Some(&rt), &dir, "even", EVEN).unwrap();
    j.add_c(&app, Some(&rt), &dir, "odd", ODD).unwrap();
    let is_even = j.function(&app, "is_even").unwrap();
    assert_eq!(is_even(4), 1);
    let address = is_even as usize;
    let mapped = |addr: usize| {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| {
                let range = l.split_whitespace().next().unwrap();
                let (lo, hi) = range.split_once('-').unwrap();
                let (lo, hi) = (
                    usize::from_str_radix(lo, 16).unwrap(),
                    usize::from_str_radix(hi, 16).unwrap(),
                );
                lo <= addr && addr < hi && l.split_whitespace().nth(1).unwrap().contains('x')
            })
    };
    assert!(mapped(address));
    rt.remove().unwrap();
    assert!(
        !mapped(address),
        "code still mapped executable after removal"
    );
    assert!(app.lookup_ready(&["is_even"]).is_err());
    j.session.end();
}

#[test]
fn duplicate_definitions_across_objects_are_all_listed() {
    let _serial = serial();
    let dir = scratch("dups");
    let j = jit();
    let app = j.dylib("app", &[]);
    let first = "int one(void) { return 1; }\nint two(void) { return 2; }\n";
    let second = "int two(void) { return 22; }\nint one(void) { return 11; }\nint three(void) { return 3; }\n";
    j.add_c(&app, None, &dir, "first", first).unwrap();
    let err = j
        .add_c(&app, None, &dir, "second", second)
        .expect_err("second.o clashes");
    let text = err.to_string();
    assert!(
        text.contains("second.o") && text.contains("one") && text.contains("two"),
        "{text}"
    );
    // The dylib is unchanged: `three` was not added, `one` is still first.o's.
    assert!(app.lookup_ready(&["three"]).is_err());
    let one = j.function(&app, "one").unwrap();
    assert_eq!(one(0), 1);
    j.session.end();
}

/// A layer that prepares images as soon as units are added
/// (`LinkOptions::prepare_early`), for every unit whatever its size.
fn early_jit() -> Jit {
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let mut options = kiln_linker::LinkOptions::default();
    options.prepare_early = true;
    options.parallel_threshold = 0;
    let layer = ObjectLayer::with_options(&session, options);
    let host = session.create_dylib("<host>").unwrap();
    host.add_generator(HostGenerator::new(HostSymbols::new()))
        .unwrap();
    Jit {
        session,
        layer,
        host,
    }
}

#[test]
fn images_prepared_early_link_like_the_others() {
    let _serial = serial();
    let dir = scratch("early");
    let j = early_jit();
    let app = j.dylib("app", &[]);
    add_even_and_odd(&j, &app, &dir);
    // A weak definition is not prepared early (another unit may win it);
    // here the strong one added later does.
    let weak = "__attribute__((weak)) int pick(int x) { return x + 100; }\nint via_weak(int x) { return pick(x); }\n";
    let strong = "int pick(int x) { return x + 1; }\n";
    j.add_c(&app, None, &dir, "weak", weak).unwrap();
    j.add_c(&app, None, &dir, "strong", strong).unwrap();
    let is_even = j.function(&app, "is_even").unwrap();
    assert_eq!(is_even(10), 1);
    assert_eq!(is_even(7), 0);
    let via_weak = j.function(&app, "via_weak").unwrap();
    assert_eq!(via_weak(1), 2, "the strong definition wins");
    j.session.end();
}

#[test]
fn an_image_prepared_early_reports_its_errors_when_linked() {
    let _serial = serial();
    let dir = scratch("early-dup");
    let j = early_jit();
    let app = j.dylib("app", &[]);
    let a = dir.join("dup_a.o");
    let b = dir.join("dup_b.o");
    std::fs::write(&a, compile(&dir, "dup_a", "int dup(int x) { return x; }\n")).unwrap();
    std::fs::write(
        &b,
        compile(
            &dir,
            "dup_b",
            "int dup(int x) { return -x; }\nint user(int x) { return x; }\n",
        ),
    )
    .unwrap();
    let mut linker = kiln_linker::Linker::new(Default::default());
    linker.add_object_file(&a).unwrap();
    linker.add_object_file(&b).unwrap();
    let graph = linker.build_graph().unwrap();
    // Adding succeeds: the duplicate is found while preparing, and reported
    // to whoever looks the image up.
    j.layer.add_graph(&app, None, "dups", graph).unwrap();
    let err = j.function(&app, "user").expect_err("duplicate definitions");
    let text = err.to_string();
    assert!(text.contains("dup"), "{text}");
    assert!(
        text.contains("dup_a.o") && text.contains("dup_b.o"),
        "{text}"
    );
    j.session.end();
}

const TABLE: &str =
    "const unsigned char table[8] = {10, 20, 30, 40, 50, 60, 70, 80};\nint counter = 5;\n";
const BUMP: &str = "extern const unsigned char table[8];\nextern int counter;\n\
                    int bump(int i) { counter += table[i]; return counter; }\n";

/// Non-PIE code (`R_X86_64_32S` against another object's data) linked as
/// separate images: the data's image is placed within the code's reach,
/// below 2 GiB, although its own code would not need it (issue 8 §2.3).
#[test]
fn non_pie_code_reaches_data_of_another_image() {
    let _serial = serial();
    let dir = scratch("non-pie");
    let j = jit();
    let app = j.dylib("app", &[]);
    for (name, src) in [("table", TABLE), ("bump", BUMP)] {
        let o = compile_c_text(&dir, name, src, &["-O2", "-fno-pie"]);
        let bytes = std::fs::read(&o).unwrap();
        j.layer.add_object(&app, None, name, &bytes).unwrap();
    }
    let bump = j.function(&app, "bump").unwrap();
    assert_eq!(bump(3), 45);
    assert_eq!(bump(0), 55);
    assert_eq!(j.layer.stats().1, 2, "two images");
    j.session.end();
}

/// The same with the non-PIE code added as a batch (`add_objects`, whose
/// reading tells the layer of its 32-bit absolute references instead of
/// the layer reading every edge again): the data's image still goes below
/// 2 GiB.
#[test]
fn non_pie_code_added_as_a_batch_reaches_data_of_another_image() {
    let _serial = serial();
    let dir = scratch("non-pie-batch");
    let j = jit();
    let app = j.dylib("app", &[]);
    let object = |name, src| std::fs::read(compile_c_text(&dir, name, src, &["-O2", "-fno-pie"]));
    let (table, bump) = (
        object("table", TABLE).unwrap(),
        object("bump", BUMP).unwrap(),
    );
    j.layer.add_object(&app, None, "table", &table).unwrap();
    j.layer
        .add_objects(&app, None, "bump", &[("bump.o", &bump[..])])
        .unwrap();
    assert!(
        j.layer.places_below_2gib(),
        "the batch's non-PIE code is seen"
    );
    let bump = j.function(&app, "bump").unwrap();
    assert_eq!(bump(3), 45);
    assert_eq!(j.layer.stats().1, 2, "two images");
    j.session.end();
}

/// When the data's image was linked out of reach before the non-PIE code
/// came, linking the code fails with an error naming the data symbol — it
/// never reads or writes something else at the truncated address.
#[test]
fn non_pie_code_out_of_reach_of_data_is_a_named_error() {
    let _serial = serial();
    let dir = scratch("non-pie-far");
    let j = jit();
    let app = j.dylib("app", &[]);
    let table = compile_c_text(&dir, "table", TABLE, &["-O2", "-fPIE"]);
    j.layer
        .add_object(&app, None, "table", &std::fs::read(&table).unwrap())
        .unwrap();
    // Linked now, before any non-PIE code is in the layer: placed near.
    app.lookup_ready(&["counter"]).unwrap();
    let bump = compile_c_text(&dir, "bump", BUMP, &["-O2", "-fno-pie"]);
    j.layer
        .add_object(&app, None, "bump.o", &std::fs::read(&bump).unwrap())
        .unwrap();
    let err = match app.lookup_ready(&["bump"]) {
        Ok(_) => panic!("linked non-PIE code against data out of its reach"),
        Err(e) => format!("{e}"),
    };
    assert!(
        err.contains("table") || err.contains("counter"),
        "names the data: {err}"
    );
    assert!(
        err.contains("bump.o: section .text"),
        "names the place: {err}"
    );
    assert!(err.contains("non-PIE"), "says why: {err}");
    j.session.end();
}

/// An archive behind an [`ArchiveGenerator`], eager and lazy: a member is
/// pulled when a link first needs one of its symbols (issue 8 §2.4), never
/// otherwise — `unused.o` references a symbol nobody defines, so pulling it
/// would fail the link.
#[test]
fn archive_members_are_pulled_when_first_needed_eager_and_lazy() {
    let _serial = serial();
    use kiln_linker::archive::Archive;
    use kiln_linker::layer::ArchiveGenerator;
    for lazy in [false, true] {
        let dir = scratch(if lazy {
            "archive-lazy"
        } else {
            "archive-eager"
        });
        let members: Vec<PathBuf> = [
            (
                "used",
                "int helper(int);\nint from_archive(int x) { return helper(x) * 10; }\n",
            ),
            ("helper", "int helper(int x) { return x + 1; }\n"),
            (
                "unused",
                "int never(void);\nint unused_fn(void) { return never(); }\n",
            ),
        ]
        .iter()
        .map(|(name, src)| compile_c_text(&dir, name, src, &["-O2"]))
        .collect();
        let ar = dir.join("libparts.a");
        let _ = std::fs::remove_file(&ar);
        let st = std::process::Command::new("ar")
            .arg("rcs")
            .arg(&ar)
            .args(&members)
            .status()
            .expect("ar runs");
        assert!(st.success());
        let archive = Archive::parse("libparts.a", std::fs::read(&ar).unwrap()).unwrap();
        let main = compile(
            &dir,
            "main",
            "int from_archive(int);\nint entry(int x) { return from_archive(x) + 1; }\n",
        );
        let j = jit();
        let app = j.dylib("app", &[]);
        if lazy {
            let bodies = j.session.create_dylib("bodies").unwrap();
            bodies
                .set_link_order_exact(&[
                    (app.clone(), DylibLookup::All),
                    (j.host.clone(), DylibLookup::ExportedOnly),
                ])
                .unwrap();
            let manager = kiln_linker::lazy::lazy_reexports_manager(&j.session).unwrap();
            j.layer
                .add_objects_lazily(&app, &bodies, &manager, &[("main.o".into(), main)])
                .unwrap();
            app.add_generator(ArchiveGenerator::lazy(&j.layer, archive, &bodies, &manager))
                .unwrap();
        } else {
            j.layer.add_object(&app, None, "main.o", &main).unwrap();
            app.add_generator(ArchiveGenerator::new(&j.layer, archive))
                .unwrap();
        }
        let entry = j.function(&app, "entry").unwrap();
        assert_eq!(entry(4), 51, "lazy {lazy}");
        // Lazily, the members one pull takes (`used` and, for it,
        // `helper`) are one image, as `ld` pulls an archive's closure.
        let images = if lazy { 2 } else { 3 };
        assert_eq!(
            j.layer.stats().1,
            images,
            "lazy {lazy}: main, used and helper"
        );
        j.session.end();
    }
}

/// Whether `addr` lies in an executable mapping of this process.
fn executable_at(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().any(|l| {
        let mut parts = l.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            return false;
        };
        lo <= addr && addr < hi && perms.contains('x')
    })
}

/// Bumped by the constructor of the object in the test below.
static CONSTRUCTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[test]
fn removing_code_whose_initializers_never_ran_drops_them_and_its_memory() {
    let _serial = serial();
    let dir = scratch("pending-init");
    let j = jit();
    // The constructor counts its runs in the test's own static, defined as
    // an absolute symbol in a dylib of its own.
    let counters = j.session.create_dylib("counters").unwrap();
    counters
        .define_absolute([(
            j.session.intern("constructed"),
            SymbolDef::new(CONSTRUCTED.as_ptr() as u64, SymbolFlags::EXPORTED),
        )])
        .unwrap();
    let app = j.dylib("app", &[&counters]);
    let src = "extern unsigned constructed;\n\
               __attribute__((constructor)) static void init(void) { constructed++; }\n\
               int id(int x) { return x; }\n";
    let rt = app.create_tracker().unwrap();
    j.add_c(&app, Some(&rt), &dir, "with_ctor", src).unwrap();
    // Linked and Ready, but the host never runs initializers before removing.
    let found = app.lookup_ready(&["id"]).unwrap();
    let address = found.get_str("id").unwrap().address as usize;
    assert!(executable_at(address));
    rt.remove().unwrap();
    assert!(
        !executable_at(address),
        "the image is still mapped after its tracker was removed"
    );
    // A later call must not run initializers of code already torn down.
    // SAFETY: the test's own C objects (none left to run).
    unsafe { j.layer.run_initializers() };
    assert_eq!(
        CONSTRUCTED.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an initializer of removed code ran"
    );
    j.session.end();
}

#[test]
fn removing_lazily_added_code_drops_its_startup_symbols() {
    let _serial = serial();
    let dir = scratch("startup");
    let j = jit();
    let manager = kiln_linker::lazy::lazy_reexports_manager(&j.session).unwrap();
    let src = "static int ready;\n\
               __attribute__((constructor)) static void init(void) { ready = 1; }\n\
               int is_ready(int x) { return ready + x; }\n";
    let object = compile(&dir, "starts", src);
    let entries = j.dylib("entries", &[]);
    let bodies = j.dylib("bodies", &[&entries]);
    j.layer
        .add_objects_lazily(
            &entries,
            &bodies,
            &manager,
            &[("starts.o".to_string(), object)],
        )
        .unwrap();
    let listed = |j: &Jit| {
        j.layer
            .startup_symbols()
            .iter()
            .any(|n| n.as_str() == "is_ready")
    };
    assert!(
        listed(&j),
        "an object with a constructor is linked at startup"
    );
    j.session.remove_dylib(&entries).unwrap();
    j.session.remove_dylib(&bodies).unwrap();
    // A host that adds its next program lazily must not be told to link
    // the removed one's symbols at startup.
    assert!(
        !listed(&j),
        "startup symbols of removed code are still listed"
    );
    j.session.end();
}

/// Under lazy linking a function has one address: the host's lookup of it
/// (its lazy entry), its address taken in another object and in its own
/// object (GOT loads: `-fPIC`) are the same. Before, its own object took
/// its body's address instead.
#[test]
fn a_lazily_linked_function_has_one_address_for_the_host_and_every_object() {
    let _serial = serial();
    let dir = scratch("fnptr-host");
    let lib = compile(
        &dir,
        "lib",
        "int twice(int x) { return 2 * x; }\n\
         void *taken_here;\n\
         int take_here(int x) { taken_here = (void *)twice; return x; }\n",
    );
    let main = compile(
        &dir,
        "main",
        "int twice(int);\nvoid *taken_there;\n\
         int take_there(int x) { taken_there = (void *)twice; return twice(x); }\n",
    );
    let j = jit();
    let app = j.dylib("app", &[]);
    let bodies = j.session.create_dylib("bodies").unwrap();
    bodies
        .set_link_order_exact(&[
            (app.clone(), DylibLookup::All),
            (j.host.clone(), DylibLookup::ExportedOnly),
        ])
        .unwrap();
    let manager = kiln_linker::lazy::lazy_reexports_manager(&j.session).unwrap();
    j.layer
        .add_objects_lazily(
            &app,
            &bodies,
            &manager,
            &[("main.o".into(), main), ("lib.o".into(), lib)],
        )
        .unwrap();
    assert_eq!(j.function(&app, "take_there").unwrap()(4), 8);
    assert_eq!(j.function(&app, "take_here").unwrap()(4), 4);
    let found = app
        .lookup_ready(&["twice", "taken_here", "taken_there"])
        .unwrap();
    let address = |n: &str| found.get_str(n).unwrap().address;
    // SAFETY: both are `void *` variables of the objects just linked
    // (Ready), written by the calls above on this thread.
    let (here, there) = unsafe {
        (
            *(address("taken_here") as *const u64),
            *(address("taken_there") as *const u64),
        )
    };
    assert_eq!(
        (here, there),
        (address("twice"), address("twice")),
        "its own object, another object, the host"
    );
    j.session.end();
}

/// An x86-64 object defining `chain_<i>`: a tail call of `chain_<i+1>`,
/// or — the last — `return 42`. Built with `object`'s writer, so
/// thousands cost no compiler runs.
fn chain_object(i: usize, last: bool) -> Vec<u8> {
    use object::write::{Object, Relocation, StandardSection, Symbol, SymbolSection};
    use object::{
        Architecture, BinaryFormat, Endianness, RelocationFlags, SymbolFlags as ObjFlags,
        SymbolKind, SymbolScope,
    };
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.section_id(StandardSection::Text);
    let code: &[u8] = if last {
        &[0xb8, 42, 0, 0, 0, 0xc3] // mov eax, 42; ret
    } else {
        &[0xe9, 0, 0, 0, 0] // jmp chain_<i+1>
    };
    let offset = obj.append_section_data(text, code, 16);
    obj.add_symbol(Symbol {
        name: format!("chain_{i}").into_bytes(),
        value: offset,
        size: code.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: ObjFlags::None,
    });
    if !last {
        let next = obj.add_symbol(Symbol {
            name: format!("chain_{}", i + 1).into_bytes(),
            value: 0,
            size: 0,
            kind: SymbolKind::Text,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Undefined,
            flags: ObjFlags::None,
        });
        obj.add_relocation(
            text,
            Relocation {
                offset: offset + 1,
                symbol: next,
                addend: -4,
                flags: RelocationFlags::Elf {
                    r_type: object::elf::R_X86_64_PLT32,
                },
            },
        )
        .unwrap();
    }
    obj.write().unwrap()
}

/// A chain of units, each calling the next, on a pool of one thread and
/// in place: a unit asks for its externals and returns; it goes on when
/// they are Resolved. (It used to block in that lookup, and its thread ran
/// the next unit's link nested above it, then the next: the stack grew by
/// one link per unit, and 4,000 overflowed a worker's; in place, every
/// dispatch ran nested in the lookup that made it, and 500 overflowed a
/// test thread's.)
#[test]
fn a_long_chain_of_units_links_without_nesting_one_in_another() {
    // Its thousands of images' memory would be reused under the tests
    // that check removed code is no longer mapped.
    let _serial = serial();
    const UNITS: usize = 4000;
    let objects = chain_objects(UNITS);
    call_chain_on_a_pool_and_in_place(|layer, app| add_chain(layer, app, &objects));
}

/// A chain of `units` objects, each calling the next; the last returns 42.
fn chain_objects(units: usize) -> Vec<Vec<u8>> {
    (0..units)
        .map(|i| chain_object(i, i + 1 == units))
        .collect()
}

/// The chain's objects added to `app` one by one.
fn add_chain(layer: &ObjectLayer, app: &Dylib, objects: &[Vec<u8>]) {
    for (i, bytes) in objects.iter().enumerate() {
        layer
            .add_object(app, None, &format!("chain_{i}.o"), bytes)
            .unwrap();
    }
}

/// A session on a pool of `threads`, and one running tasks in place.
fn pool_and_in_place(threads: usize) -> [Session; 2] {
    [
        Session::builder()
            .dispatcher(WorkerPool::new(threads))
            .build(),
        Session::builder().dispatcher(InPlaceDispatcher).build(),
    ]
}

/// On a pool of one thread, then in place: `add` puts a chain into `app`,
/// and `chain_0`, Ready, returns 42.
fn call_chain_on_a_pool_and_in_place(add: impl Fn(&ObjectLayer, &Dylib)) {
    for session in pool_and_in_place(1) {
        let layer = ObjectLayer::new(&session);
        let app = session.create_dylib("app").unwrap();
        add(&layer, &app);
        let found = app.lookup_ready(&["chain_0"]).unwrap();
        let address = found.get_str("chain_0").unwrap().address;
        // SAFETY: `chain_0` is Ready: the whole chain of tail calls ending
        // in `return 42` is linked (or loaded and bound) and finalized; it
        // takes no arguments.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn() -> i32>(address as usize) };
        assert_eq!(f(), 42);
        session.end();
    }
}

/// Threads looking up random sets of a chain's functions at once, on a
/// pool and in place: units that several lookups start in one engine step
/// link as one batch, units already linking are waited for, and every
/// function returns what the chain's last one does.
#[test]
fn concurrent_lookups_of_objects_added_one_by_one_all_link_once() {
    let _serial = serial();
    const UNITS: usize = 300;
    let objects = chain_objects(UNITS);
    for session in pool_and_in_place(2) {
        let layer = ObjectLayer::new(&session);
        let app = session.create_dylib("app").unwrap();
        add_chain(&layer, &app, &objects);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let app = &app;
                s.spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
                    for _ in 0..40 {
                        let picks: Vec<String> = (0..3)
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                format!("chain_{}", x as usize % UNITS)
                            })
                            .collect();
                        let names: Vec<&str> = picks.iter().map(String::as_str).collect();
                        let found = app.lookup_ready(&names).unwrap();
                        for name in &names {
                            let address = found.get_str(name).unwrap().address;
                            // SAFETY: Ready: the rest of the chain, ending in
                            // `return 42`, is linked and finalized.
                            let f = unsafe {
                                std::mem::transmute::<usize, extern "C" fn() -> i32>(
                                    address as usize,
                                )
                            };
                            assert_eq!(f(), 42, "{name}");
                        }
                    }
                });
            }
        });
        let links = layer.stats().1;
        assert!(
            links <= UNITS,
            "{links} links of {UNITS} units: one linked twice"
        );
        session.end();
    }
}

/// The same chain as images (each saved alone, importing the next by
/// name), added to the layer: an image unit maps itself, resolves its
/// exports, asks for its imports and returns; it is bound and finalized
/// when they are Resolved. (It used to block in that lookup, nesting the
/// next image's load above it, as object units did.)
#[test]
fn a_long_chain_of_images_loads_without_nesting_one_in_another() {
    let _serial = serial();
    const UNITS: usize = 1500;
    let mut options = kiln_linker::LinkOptions::default();
    options.imaging = true;
    let images: Vec<Vec<u8>> = (0..UNITS)
        .map(|i| {
            let object = chain_object(i, i + 1 == UNITS);
            let name = format!("chain_{i}.o");
            let id = kiln_linker::image_file::BuildId::of_inputs(
                &options,
                [(name.as_str(), object.as_slice())],
            );
            let mut linker = kiln_linker::Linker::new(options.clone());
            linker.add_object_bytes(name, object);
            // The next link is left to the loader: saved by name, as
            // `kiln image save --allow-undefined` does.
            let by_name = |names: &[&str]| -> Vec<Option<u64>> { vec![Some(0); names.len()] };
            let image = linker
                .link(&by_name)
                .unwrap_or_else(|e| panic!("chain_{i} links as an image: {e}"));
            image.save_image(&id).expect("saves")
        })
        .collect();
    call_chain_on_a_pool_and_in_place(|layer, app| {
        for (i, bytes) in images.iter().enumerate() {
            // SAFETY: images this test just saved, importing only each other.
            unsafe { layer.add_image(app, None, &format!("chain_{i}.kimg"), bytes.clone()) }
                .unwrap();
        }
    });
}

/// A unit's tracker removed while its link waits for its externals (its
/// steps 1–9 done, its memory taken): when the answer comes the link finds
/// the tracker gone, the lookup that started it fails naming the removal,
/// and nothing hangs.
#[test]
fn removing_a_unit_while_it_waits_for_its_externals_fails_its_lookup() {
    remove_while_waiting_for_externals(&[]);
}

/// The same for a batch: units one lookup started, linked as one image.
#[test]
fn removing_a_batch_while_it_waits_for_its_externals_fails_its_lookup() {
    remove_while_waiting_for_externals(&[5, 6]);
}

/// `chain_0` and the `chain_K` for each of `also` (alone, calling nothing)
/// added to `app`, looked up together; `chain_0` waits for `chain_1`,
/// parked in `ext`, while `app`'s tracker is removed.
fn remove_while_waiting_for_externals(also: &[usize]) {
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::new(&session);
    let ext = session.create_dylib("ext").unwrap();
    let app = session.create_dylib("app").unwrap();
    app.set_link_order(&[(ext.clone(), DylibLookup::ExportedOnly)])
        .unwrap();
    let rt = app.create_tracker().unwrap();
    for &i in std::iter::once(&0).chain(also) {
        let bytes = chain_object(i, i != 0);
        layer
            .add_object(&app, Some(&rt), &format!("chain_{i}.o"), &bytes)
            .unwrap();
    }
    let next = session.intern("chain_1");
    let (parked, slot) = Parked::new(next.clone());
    ext.define(parked).unwrap();
    let wanted = std::iter::once(&0)
        .chain(also)
        .map(|i| session.intern(&format!("chain_{i}")));
    let pending = session.lookup(
        &SearchOrder::new().with(&app, DylibLookup::ExportedOnly),
        &LookupSet::required(wanted),
        RequiredState::Ready,
    );
    // `chain_1` is being materialized: `chain_0`'s link has asked for it.
    let r = slot.take();
    rt.remove().unwrap();
    r.resolve(&[(next.clone(), SymbolDef::new(0x1000, SymbolFlags::EXPORTED))])
        .unwrap();
    r.emit(vec![DependenceGroup::new([next], vec![])]).unwrap();
    let err = pending
        .wait_timeout(std::time::Duration::from_secs(30))
        .expect_err("chain_0's tracker was removed");
    assert!(
        err.to_string()
            .contains("resource tracker of dylib 'app' was removed"),
        "{err}"
    );
    assert_eq!(layer.stats().1, 0, "no image kept for a removed tracker");
    session.end();
}
