//! Thread-locals one image defines and another uses: objects added to a
//! JIT each on its own are linked each into its own image, and a
//! reference to another object's `__thread` variable binds to that
//! image's TLS module — in every x86-64 model (general-dynamic, TLSDESC,
//! initial-exec, local-exec) — with one instance per thread, as in one
//! program. In a process of its own: kiln's static TLS area, which the
//! initial-exec and local-exec models need, is one for the process.

mod common;

use std::path::Path;

use common::{compile_c_text, error_chain, scratch};
use kiln_linker::Jit;
use kiln_linker::jit::JitError;

/// The definer: a thread-local with a non-zero initial value, a function
/// that reads it and one that adds to it.
const DEF: &str = "__thread int tcount = 5;\n\
                   int tls_get(void) { return tcount; }\n\
                   void tls_add(int x) { tcount += x; }\n";

/// A user of `tcount` from another object.
const USER: &str = "extern __thread int tcount;\n\
                    int tls_use(int x) { tcount += x; return tcount * 10; }\n";

fn object(dir: &Path, name: &str, src: &str, flags: &[&str]) -> Vec<u8> {
    std::fs::read(compile_c_text(dir, name, src, flags)).expect("read object")
}

/// A definer of `var` (9) and `f` whose thread-locals do not fit kiln's
/// static TLS area: its TLS module is dynamic.
fn dynamic_definer(var: &str, f: &str) -> String {
    format!(
        "__thread char {var}_buf[{}];\n__thread int {var} = 9;\n\
         int {f}(void) {{ return {var} + {var}_buf[1]; }}\n",
        kiln_linker::runtime::tls::static_area_size() + 64
    )
}

/// One lookup of `names` in the JIT's `app` (weakly, each may fail): the
/// objects it starts are linked together, as one batch.
fn look_up_together(j: &Jit, names: &[&str]) {
    use kiln_engine::{DylibLookup, LookupSet, RequiredState, SearchOrder};
    let session = j.session();
    let order = SearchOrder::new().with(j.app(), DylibLookup::All);
    let set = LookupSet::weak(session.intern_all(names.iter().copied()));
    let _ = session.lookup(&order, &set, RequiredState::Ready).wait();
}

fn jit() -> Jit {
    Jit::builder().threads(2).build().expect("a JIT")
}

type Use = extern "C" fn(i32) -> i32;
type Get = extern "C" fn() -> i32;
type Add = extern "C" fn(i32);

/// `tls_use` of the user compiled with `flags` adds to the definer's
/// `tcount`, one instance per thread: each thread starts from the initial
/// value, and what one thread adds the others do not see.
fn user_shares_the_definers_thread_local(dir: &Path, user: &str, flags: &[&str]) {
    let j = jit();
    j.add_object_named("def.o", &object(dir, "def", DEF, &["-O2", "-fPIC"]))
        .unwrap();
    j.add_object_named(&format!("{user}.o"), &object(dir, user, USER, flags))
        .unwrap();
    // SAFETY: the C signatures above.
    let (tls_use, tls_get) = unsafe { (j.get::<Use>("tls_use"), j.get::<Get>("tls_get")) };
    let (tls_use, tls_get) = (tls_use.unwrap(), tls_get.unwrap());
    std::thread::scope(|s| {
        for t in 1..=4 {
            let (tls_use, tls_get) = (&tls_use, &tls_get);
            s.spawn(move || {
                assert_eq!(
                    tls_get(),
                    5,
                    "{user}: thread {t} starts from the initial value"
                );
                assert_eq!(tls_use(t), (5 + t) * 10, "{user}: thread {t}");
                assert_eq!(tls_get(), 5 + t, "{user}: thread {t} sees its own add");
            });
        }
    });
}

#[test]
fn general_dynamic_code_uses_another_images_thread_local() {
    let dir = scratch("tls-across-gd");
    user_shares_the_definers_thread_local(&dir, "user_gd", &["-O2", "-fPIC"]);
}

#[test]
fn tlsdesc_code_uses_another_images_thread_local() {
    let dir = scratch("tls-across-desc");
    let flags = ["-O2", "-fPIC", "-mtls-dialect=gnu2"];
    user_shares_the_definers_thread_local(&dir, "user_desc", &flags);
}

#[test]
fn initial_exec_code_uses_another_images_static_thread_local() {
    let dir = scratch("tls-across-ie");
    let flags = ["-O2", "-fPIC", "-ftls-model=initial-exec"];
    user_shares_the_definers_thread_local(&dir, "user_ie", &flags);
}

#[test]
fn local_exec_code_uses_another_images_static_thread_local() {
    let dir = scratch("tls-across-le");
    let flags = ["-O2", "-ftls-model=local-exec"];
    user_shares_the_definers_thread_local(&dir, "user_le", &flags);
}

/// Two objects that use each other's thread-locals link (neither waits
/// for the other to be emitted), and the lazy JIT binds them too.
#[test]
fn objects_that_use_each_others_thread_locals_link_eagerly_and_lazily() {
    let dir = scratch("tls-across-mutual");
    let a = "__thread int ta = 1;\nextern __thread int tb;\n\
             int a_f(void) { return ta * 100 + tb; }\n";
    let b = "__thread int tb = 2;\nextern __thread int ta;\n\
             int b_f(void) { ta += 10; return tb * 100 + ta; }\n";
    let (a, b) = (
        object(&dir, "a", a, &["-O2", "-fPIC"]),
        object(&dir, "b", b, &["-O2", "-fPIC"]),
    );
    for lazy in [false, true] {
        let j = Jit::builder().threads(2).lazy(lazy).build().expect("a JIT");
        if lazy {
            j.add_object_lazily("a.o", &a).unwrap();
            j.add_object_lazily("b.o", &b).unwrap();
        } else {
            j.add_object_named("a.o", &a).unwrap();
            j.add_object_named("b.o", &b).unwrap();
        }
        // SAFETY: the C signatures above.
        let (a_f, b_f) = unsafe { (j.get::<Get>("a_f"), j.get::<Get>("b_f")) };
        let (a_f, b_f) = (a_f.unwrap(), b_f.unwrap());
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(a_f(), 102, "lazy: {lazy}");
                assert_eq!(b_f(), 211, "lazy: {lazy}");
                assert_eq!(a_f(), 1102, "lazy: {lazy}");
            });
        });
        assert_eq!(a_f(), 102, "lazy: {lazy}: this thread's own instances");
    }
}

/// `Jit::address` of a thread-local is the calling thread's instance (as
/// `dlsym` gives it); `Jit::get` refuses it.
#[test]
fn the_address_of_a_thread_local_is_the_calling_threads_instance() {
    let dir = scratch("tls-across-address");
    let j = jit();
    j.add_object_named("def.o", &object(&dir, "def", DEF, &["-O2", "-fPIC"]))
        .unwrap();
    // SAFETY: the C signatures above.
    let (tls_get, tls_add) = unsafe { (j.get::<Get>("tls_get"), j.get::<Add>("tls_add")) };
    let (tls_get, tls_add) = (tls_get.unwrap(), tls_add.unwrap());
    let mine = j.address("tcount").unwrap() as *mut i32;
    tls_add(2);
    // SAFETY: this thread's `tcount`, an aligned live int.
    assert_eq!(unsafe { mine.read() }, 7);
    // SAFETY: this thread's `tcount`, an aligned live int no other
    // thread writes.
    unsafe { mine.write(40) };
    assert_eq!(tls_get(), 40);
    let theirs = std::thread::scope(|s| {
        s.spawn(|| {
            let theirs = j.address("tcount").unwrap();
            // SAFETY: that thread's `tcount`, read on that thread.
            (theirs, unsafe { (theirs as *const i32).read() })
        })
        .join()
        .unwrap()
    });
    assert_ne!(theirs.0, mine as u64, "each thread has its own instance");
    assert_eq!(
        theirs.1, 5,
        "another thread's instance starts from the initial value"
    );
    // SAFETY: a signature; the call is refused before any code runs.
    let e = unsafe { j.get::<Get>("tcount") }.expect_err("a thread-local is no function");
    assert!(matches!(e, JitError::NotAFunction { .. }), "{e}");
}

/// A declaration that disagrees with the definition on being thread-local
/// fails the object that declares it, naming the symbol and the object.
#[test]
fn a_thread_local_declared_as_plain_data_or_the_reverse_fails_naming_both() {
    let dir = scratch("tls-across-mismatch");
    let j = jit();
    j.add_object_named("def.o", &object(&dir, "def", DEF, &["-O2", "-fPIC"]))
        .unwrap();
    let plain = "int plain = 3;\n";
    j.add_object_named("plain.o", &object(&dir, "plain", plain, &["-O2", "-fPIC"]))
        .unwrap();
    let as_data = "extern int tcount;\nint as_data(void) { return tcount; }\n";
    j.add_object_named(
        "as_data.o",
        &object(&dir, "as_data", as_data, &["-O2", "-fPIC"]),
    )
    .unwrap();
    let as_tls = "extern __thread int plain;\nint as_tls(void) { return plain; }\n";
    j.add_object_named(
        "as_tls.o",
        &object(&dir, "as_tls", as_tls, &["-O2", "-fPIC"]),
    )
    .unwrap();
    for (f, symbol, words) in [
        ("as_data", "tcount", "is a thread-local variable"),
        ("as_tls", "plain", "is not thread-local"),
    ] {
        // SAFETY: the C signature above; the link fails before any call.
        let e = unsafe { j.get::<Get>(f) }.expect_err("the declaration does not match");
        let chain = error_chain(&e);
        for needle in [format!("`{symbol}`"), format!("{f}.o"), words.to_string()] {
            assert!(chain.contains(&needle), "{f}: {needle} missing: {chain}");
        }
    }
    // SAFETY: the C signature above.
    assert_eq!(unsafe { j.get::<Get>("tls_get") }.unwrap()(), 5);
}

/// Initial-exec code needs a static module: a definer whose thread-locals
/// do not fit kiln's static TLS area gets a dynamic one, which
/// general-dynamic code uses and initial-exec code is refused, naming the
/// variable and `-fPIC`.
#[test]
fn initial_exec_code_is_refused_a_dynamic_modules_thread_local_naming_it() {
    use kiln_linker::runtime::tls;
    tls::static_tls_status().expect("kiln's static TLS area exists in a test binary");
    let dir = scratch("tls-across-dynamic");
    let big = dynamic_definer("tbig", "big_f");
    let gd = "extern __thread int tbig;\nint gd_f(void) { return tbig * 2; }\n";
    let ie = "extern __thread int tbig;\nint ie_f(void) { return tbig * 3; }\n";
    let j = jit();
    j.add_object_named("big.o", &object(&dir, "big", &big, &["-O2", "-fPIC"]))
        .unwrap();
    j.add_object_named("gd.o", &object(&dir, "gd", gd, &["-O2", "-fPIC"]))
        .unwrap();
    let ie_flags = ["-O2", "-fPIC", "-ftls-model=initial-exec"];
    j.add_object_named("ie.o", &object(&dir, "ie", ie, &ie_flags))
        .unwrap();
    // SAFETY: the C signatures above.
    assert_eq!(unsafe { j.get::<Get>("gd_f") }.unwrap()(), 18);
    // SAFETY: the C signature above; the link fails before any call.
    let e = unsafe { j.get::<Get>("ie_f") }.expect_err("initial-exec needs static TLS");
    let chain = error_chain(&e);
    for needle in ["`tbig`", "-fPIC", "static TLS"] {
        assert!(chain.contains(needle), "{needle} missing: {chain}");
    }
}

/// Local-dynamic code reaches its own image's thread-locals only (its one
/// module pair and offsets in it): reaching another image's fails naming
/// the variable, the object and the way out — the objects in one
/// `add_objects` call, which links them as one image, where it works.
#[test]
fn local_dynamic_code_reaches_another_objects_thread_local_only_in_one_image() {
    let dir = scratch("tls-across-ld");
    let def = "__attribute__((visibility(\"hidden\"))) __thread int hid = 4;\n\
               int hid_get(void) { return hid; }\n";
    let user = "extern __attribute__((visibility(\"hidden\"))) __thread int hid;\n\
                int ld_f(int x) { hid += x; return hid; }\n";
    let flags = ["-O2", "-fPIC", "-ftls-model=local-dynamic"];
    let (def, user) = (
        object(&dir, "hid", def, &flags),
        object(&dir, "ld", user, &flags),
    );
    let apart = jit();
    apart.add_object_named("hid.o", &def).unwrap();
    apart.add_object_named("ld.o", &user).unwrap();
    // SAFETY: the C signature above; the link fails before any call.
    let e = unsafe { apart.get::<Use>("ld_f") }.expect_err("local-dynamic across images");
    let chain = error_chain(&e);
    for needle in ["`hid`", "ld.o", "local-dynamic", "add_objects"] {
        assert!(chain.contains(needle), "{needle} missing: {chain}");
    }
    let together = jit();
    together
        .add_objects(&[("hid.o", def.as_slice()), ("ld.o", user.as_slice())])
        .unwrap();
    // SAFETY: the C signatures above.
    let (ld_f, hid_get) = unsafe { (together.get::<Use>("ld_f"), together.get::<Get>("hid_get")) };
    assert_eq!(ld_f.unwrap()(3), 7);
    assert_eq!(hid_get.unwrap()(), 7);
}

/// An image file imports addresses: an import that the engine answers
/// with another image's thread-local is refused, naming it and the image.
#[test]
fn an_image_importing_a_thread_local_as_data_is_refused_naming_it() {
    use kiln_linker::image_file::BuildId;
    use kiln_linker::{LinkOptions, Linker};
    let dir = scratch("tls-across-image-file");
    let src = "extern int tcount;\nint img_f(void) { return tcount; }\n";
    let bytes = object(&dir, "img", src, &["-O2", "-fPIC"]);
    let mut options = LinkOptions::default();
    options.imaging = true;
    let id = BuildId::of_inputs(&options, [("img.o", bytes.as_slice())]);
    let mut linker = Linker::new(options);
    linker.add_object_bytes("img.o", bytes);
    // Imports stay imports: answered with 0 at save.
    let resolver = |names: &[&str]| -> Vec<Option<u64>> { vec![Some(0); names.len()] };
    let image = linker
        .link(&resolver)
        .expect("links")
        .save_image(&id)
        .expect("saves");
    let j = jit();
    j.add_object_named("def.o", &object(&dir, "def", DEF, &["-O2", "-fPIC"]))
        .unwrap();
    // SAFETY: the test's own image; the link fails before any of it runs.
    unsafe { j.layer().add_image(j.app(), None, "img.kimg", image) }.expect("adds the image");
    // SAFETY: the C signature above; the link fails before any call.
    let e = unsafe { j.get::<Get>("img_f") }.expect_err("a thread-local is no address");
    let chain = error_chain(&e);
    for needle in ["`tcount`", "img.kimg", "thread-local"] {
        assert!(chain.contains(needle), "{needle} missing: {chain}");
    }
    // The cause is kept typed, not flattened into a message.
    let JitError::Engine(engine) = &e else {
        panic!("an engine error: {e:?}");
    };
    let mismatch = engine.downcast_ref::<kiln_linker::LinkError>();
    assert!(
        matches!(
            mismatch,
            Some(kiln_linker::LinkError::ThreadLocalMismatch { .. })
        ),
        "{e:?}"
    );
}

/// C++: an `inline thread_local` object with a constructor, defined in a
/// header two translation units include, each added on its own. Each
/// object carries a copy (COMDAT, weak) with its TLS init and wrapper
/// functions; the first linked wins, and the other's code binds to the
/// winner's instance — one per thread, constructed once in each and
/// destroyed at its thread's exit.
#[test]
fn a_cxx_inline_thread_local_shared_by_two_objects_is_one_per_thread() {
    let dir = scratch("tls-across-cxx");
    let header = "inline int destroyed;\n\
                  struct Counter { int n; Counter() : n(100) {} ~Counter() { destroyed += 1; }\n\
                    int bump(int k) { n += k; return n; } };\n\
                  inline thread_local Counter counter;\n";
    let a = format!(
        "{header}extern \"C\" int a_bump(int k) {{ return counter.bump(k); }}\n\
         extern \"C\" int a_destroyed(int) {{ return destroyed; }}\n"
    );
    let b = format!("{header}extern \"C\" int b_bump(int k) {{ return counter.bump(k); }}\n");
    for flags in [&["-O2", "-fPIC"][..], &["-O0"][..]] {
        let cxx = |name: &str, src: &str| {
            let o = common::compile_c_text_with("g++", &dir, name, src, flags);
            std::fs::read(o).expect("read object")
        };
        let j = jit();
        j.add_object_named("a.o", &cxx("a", &a)).unwrap();
        j.add_object_named("b.o", &cxx("b", &b)).unwrap();
        // SAFETY: the C signatures above.
        let (a_bump, b_bump) = unsafe { (j.get::<Use>("a_bump"), j.get::<Use>("b_bump")) };
        let (a_bump, b_bump) = (a_bump.unwrap(), b_bump.unwrap());
        assert_eq!(a_bump(1), 101, "{flags:?}");
        assert_eq!(b_bump(2), 103, "{flags:?}: one instance in this thread");
        // SAFETY: the C signature above.
        let a_destroyed = unsafe { j.get::<Use>("a_destroyed") }.unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(
                    b_bump(5),
                    105,
                    "{flags:?}: constructed anew in another thread"
                );
                assert_eq!(a_bump(1), 106, "{flags:?}");
            })
            // Joined by hand: the scope's own wait ends before the
            // thread's exit runs its thread-local destructors.
            .join()
            .unwrap();
        });
        assert_eq!(
            a_destroyed(0),
            1,
            "{flags:?}: destroyed once, at its thread's exit"
        );
        assert_eq!(a_bump(0), 103, "{flags:?}");
    }
}

/// A thread that existed before the link and is not attached to kiln's
/// static TLS area calls a lazy function through its entry: the link its
/// call starts attaches it, so the body's initialized local-exec
/// thread-local has its initial value there too.
#[test]
fn a_lazy_call_from_a_thread_older_than_the_link_sees_initial_values() {
    let dir = scratch("tls-across-lazy-old-thread");
    let src = "__thread int seed = 11;\nint seeded(int x) { seed += x; return seed; }\n";
    let bytes = object(&dir, "seeded", src, &["-O2"]);
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let (back, answer) = std::sync::mpsc::channel::<i32>();
    // Started before the JIT exists, and never given anything of kiln's
    // but the entry's address.
    let old = std::thread::spawn(move || {
        let entry = rx.recv().expect("an address");
        // SAFETY: the lazy entry of `int seeded(int)`.
        let seeded: Use = unsafe { std::mem::transmute(entry as usize) };
        back.send(seeded(1)).expect("the test waits");
    });
    let j = Jit::builder().threads(2).lazy(true).build().expect("a JIT");
    j.add_object_lazily("seeded.o", &bytes).unwrap();
    tx.send(j.address("seeded").unwrap()).unwrap();
    assert_eq!(answer.recv().unwrap(), 12, "the initial value, plus one");
    old.join().unwrap();
}

/// One lookup that starts an object whose initial-exec code cannot bind to
/// a dynamic module's thread-local, and a plain object: the plain one is
/// Ready and the other fails naming the variable, as each linked alone —
/// whether or not they were started together.
#[test]
fn a_thread_local_that_cannot_be_bound_fails_only_its_user_in_one_lookup() {
    use kiln_linker::runtime::tls;
    tls::static_tls_status().expect("kiln's static TLS area exists in a test binary");
    let dir = scratch("tls-across-batch");
    let big = dynamic_definer("tbig2", "big2_f");
    let ie = "extern __thread int tbig2;\nint ie2_f(void) { return tbig2 * 3; }\n";
    let plain = "int plain_f(void) { return 4; }\n";
    let big = object(&dir, "big2", &big, &["-O2", "-fPIC"]);
    let ie = object(
        &dir,
        "ie2",
        ie,
        &["-O2", "-fPIC", "-ftls-model=initial-exec"],
    );
    let plain = object(&dir, "plain2", plain, &["-O2", "-fPIC"]);
    let j = jit();
    j.add_object_named("big2.o", &big).unwrap();
    // SAFETY: the C signature above.
    assert_eq!(unsafe { j.get::<Get>("big2_f") }.unwrap()(), 9);
    j.add_object_named("ie2.o", &ie).unwrap();
    j.add_object_named("plain2.o", &plain).unwrap();
    look_up_together(&j, &["ie2_f", "plain2_f", "plain_f"]);
    // SAFETY: the C signature above.
    assert_eq!(unsafe { j.get::<Get>("plain_f") }.unwrap()(), 4);
    // SAFETY: the C signature above; the link failed before any call.
    let e = unsafe { j.get::<Get>("ie2_f") }.expect_err("initial-exec needs static TLS");
    assert!(error_chain(&e).contains("`tbig2`"), "{}", error_chain(&e));
}

/// One lookup that starts an object using a thread-local as plain data and
/// a plain object (linked together, as one image): the plain one is Ready,
/// the other fails naming the variable, as each linked alone.
#[test]
fn a_thread_local_used_as_data_fails_only_its_user_in_one_lookup() {
    let dir = scratch("tls-across-batch-misfit");
    let j = jit();
    j.add_object_named("def.o", &object(&dir, "def", DEF, &["-O2", "-fPIC"]))
        .unwrap();
    // SAFETY: the C signature above.
    assert_eq!(unsafe { j.get::<Get>("tls_get") }.unwrap()(), 5);
    let as_data = "extern int tcount;\nint as_data3(void) { return tcount; }\n";
    let plain = "int plain3(void) { return 4; }\n";
    let flags = ["-O2", "-fPIC"];
    j.add_object_named("as_data3.o", &object(&dir, "as_data3", as_data, &flags))
        .unwrap();
    j.add_object_named("plain3.o", &object(&dir, "plain3", plain, &flags))
        .unwrap();
    look_up_together(&j, &["as_data3", "plain3"]);
    // SAFETY: the C signature above.
    assert_eq!(unsafe { j.get::<Get>("plain3") }.unwrap()(), 4);
    // SAFETY: the C signature above; the link failed before any call.
    let e = unsafe { j.get::<Get>("as_data3") }.expect_err("a thread-local is no address");
    let chain = error_chain(&e);
    assert!(
        chain.contains("`tcount`") && chain.contains("as_data3.o"),
        "{chain}"
    );
}
