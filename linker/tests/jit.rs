//! The one-call JIT (`kiln_linker::jit`, kiln issue 12 §1): building it,
//! adding objects and archives (eager and lazy), typed host functions and
//! lookups, trackers and removal, redirecting lazy entries, concurrent use
//! from several threads, and ending the session on drop.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};

mod common;

use common::{compile_c_text, serial};
use kiln_engine::{DylibLookup, LookupSet, RequiredState, SearchOrder, message_with_causes};
use kiln_linker::jit::{Jit, JitError, JitTracker};

type I64Fn = extern "C" fn(i64) -> i64;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-jit-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// `src` compiled with `gcc -O1 -fPIC` into `<dir>/<name>.o`, read back.
fn object(dir: &Path, name: &str, src: &str) -> Vec<u8> {
    let o = compile_c_text(dir, name, src, &["-O1", "-fPIC"]);
    std::fs::read(&o).unwrap_or_else(|e| panic!("read {}: {e}", o.display()))
}

/// Whether `addr` lies in an executable mapping of this process.
fn mapped_executable(addr: u64) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().any(|l| {
        let mut fields = l.split_whitespace();
        let (range, perms) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let lo = u64::from_str_radix(lo, 16).unwrap_or(u64::MAX);
        let hi = u64::from_str_radix(hi, 16).unwrap_or(0);
        lo <= addr && addr < hi && perms.contains('x')
    })
}

extern "C" fn host_add(a: i64, b: i64) -> i64 {
    a + b
}

extern "C" fn host_zero() -> i64 {
    42
}

extern "C" fn host_six(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64) -> i64 {
    a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f
}

#[test]
fn builder_links_objects_against_host_functions_and_libraries() {
    let _serial = serial();
    let dir = scratch("basic");
    // SAFETY: the system libm.
    let jit = unsafe { Jit::builder().threads(2).library("m") }
        .build()
        .unwrap();
    jit.define_fn("host_add", host_add as extern "C" fn(i64, i64) -> i64)
        .unwrap();
    jit.define_fn("host_zero", host_zero as extern "C" fn() -> i64)
        .unwrap();
    jit.define_fn(
        "host_six",
        host_six as extern "C" fn(i64, i64, i64, i64, i64, i64) -> i64,
    )
    .unwrap();
    let src = "double cos(double);\nlong host_add(long, long);\nlong host_zero(void);\n\
               long use_host(long x) { return host_add(x, 2) + (long)cos(0.0) + host_zero(); }\n";
    jit.add_object(&object(&dir, "use_host", src)).unwrap();
    // SAFETY: `use_host` is `long use_host(long)`.
    let use_host = unsafe { jit.get::<I64Fn>("use_host") }.unwrap();
    assert_eq!(use_host(7), 7 + 2 + 1 + 42);
    // Host functions come back through the same typed lookup.
    // SAFETY: registered above with exactly these signatures.
    let six = unsafe { jit.get::<extern "C" fn(i64, i64, i64, i64, i64, i64) -> i64>("host_six") }
        .unwrap();
    assert_eq!(six(1, 1, 1, 1, 1, 1), 21);
    assert_eq!(six.address(), host_six as *const () as usize as u64);
    // SAFETY: `host_zero` was registered as `extern "C" fn() -> i64`.
    let zero = unsafe { jit.get::<extern "C" fn() -> i64>("host_zero") }.unwrap();
    assert_eq!(zero(), 42);
}

#[test]
fn without_host_symbols_objects_see_only_each_other_and_defined_functions() {
    let _serial = serial();
    let dir = scratch("nohost");
    let bytes = object(
        &dir,
        "uses_getpid",
        "int getpid(void);\nlong magnitude(long x) { return x + getpid(); }\n",
    );
    let jit = Jit::builder().host_symbols(false).build().unwrap();
    jit.add_object_named("uses_getpid.o", &bytes).unwrap();
    // SAFETY: `magnitude` is `long magnitude(long)`.
    let err = unsafe { jit.get::<I64Fn>("magnitude") }.unwrap_err();
    assert!(format!("{err:?}").contains("getpid"), "{err:?}");

    let jit = Jit::builder().build().unwrap();
    jit.add_object_named("uses_getpid.o", &bytes).unwrap();
    // SAFETY: `magnitude` is `long magnitude(long)`, `I64Fn`'s signature.
    let magnitude = unsafe { jit.get::<I64Fn>("magnitude") }.unwrap();
    assert_eq!(magnitude(-5), i64::from(std::process::id()) - 5);
}

#[test]
fn archives_are_pulled_on_demand_eager_and_lazy() {
    let _serial = serial();
    assert!(common::need_tool("ar"));
    let dir = scratch("archive");
    let members: Vec<PathBuf> = [
        ("helper", "long helper(long x) { return x + 1; }\n"),
        (
            "unused",
            "long never(void);\nlong unused_fn(void) { return never(); }\n",
        ),
    ]
    .iter()
    .map(|(name, src)| compile_c_text(&dir, name, src, &["-O1", "-fPIC"]))
    .collect();
    let ar = dir.join("libparts.a");
    let _ = std::fs::remove_file(&ar);
    let status = std::process::Command::new("ar")
        .arg("rcs")
        .arg(&ar)
        .args(&members)
        .status()
        .expect("ar runs");
    assert!(status.success());
    let archive = std::fs::read(&ar).unwrap();
    let main = object(
        &dir,
        "main",
        "long helper(long);\nlong entry(long x) { return helper(x) * 10; }\n",
    );
    for lazy in [false, true] {
        let jit = Jit::builder().lazy(lazy).build().unwrap();
        if lazy {
            jit.add_object_lazily("main.o", &main).unwrap();
        } else {
            jit.add_object(&main).unwrap();
        }
        jit.add_archive("libparts.a", archive.clone()).unwrap();
        // SAFETY: `entry` is `long entry(long)`.
        let entry = unsafe { jit.get::<I64Fn>("entry") }.unwrap();
        assert_eq!(entry(4), 50, "lazy {lazy}");
    }
}

#[test]
fn several_threads_add_and_get_at_once() {
    let _serial = serial();
    const THREADS: i64 = 8;
    let dir = scratch("threads");
    // f<t>(x) calls f<t+1> until x is 0: a cycle through every object.
    let objects: Vec<Vec<u8>> = (0..THREADS)
        .map(|t| {
            let next = (t + 1) % THREADS;
            let src = format!(
                "long f{next}(long);\nlong f{t}(long x) {{ return x == 0 ? {t} : f{next}(x - 1); }}\n"
            );
            object(&dir, &format!("f{t}"), &src)
        })
        .collect();
    let jit = Jit::builder().threads(3).build().unwrap();
    let added = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for (t, bytes) in objects.iter().enumerate() {
            let (jit, added) = (&jit, &added);
            s.spawn(move || {
                // Half borrowed (copied), half given away.
                let name = format!("f{t}.o");
                if t % 2 == 0 {
                    jit.add_object_named(&name, bytes).unwrap();
                } else {
                    jit.add_object_owned(&name, bytes.clone()).unwrap();
                }
                added.wait();
                for u in 0..THREADS {
                    // SAFETY: every f<u> is `long f<u>(long)`.
                    let f = unsafe { jit.get::<I64Fn>(&format!("f{u}")) }.unwrap();
                    assert_eq!(f(THREADS * 2 + 3), (u + 3) % THREADS);
                }
            });
        }
    });
    assert_eq!(
        jit.layer().stats().1,
        THREADS as usize,
        "each object linked once"
    );
}

static FINALIZED: AtomicUsize = AtomicUsize::new(0);
extern "C" fn note_finalized() {
    FINALIZED.fetch_add(1, SeqCst);
}

#[test]
fn removing_a_tracker_runs_finalizers_and_frees_its_code() {
    let _serial = serial();
    let dir = scratch("remove");
    let bytes = object(
        &dir,
        "tracked",
        "void note_finalized(void);\n\
         __attribute__((destructor)) static void fin(void) { note_finalized(); }\n\
         long tracked_fn(long x) { return x * 3; }\n",
    );
    let jit = Jit::builder().build().unwrap();
    jit.define_fn("note_finalized", note_finalized as extern "C" fn())
        .unwrap();
    let tracker = jit.tracker().unwrap();
    tracker
        .add_object_owned("tracked.o", bytes.clone())
        .unwrap();
    // SAFETY: `tracked_fn` is `long tracked_fn(long)`.
    let f = unsafe { tracker.get::<I64Fn>("tracked_fn") }.unwrap();
    assert_eq!(f(5), 15);
    let address = f.address();
    assert!(mapped_executable(address));
    // SAFETY: nothing runs the tracker's code after a removal.
    let err = unsafe { jit.remove(&tracker) }.unwrap_err();
    assert!(
        matches!(err, JitError::TrackerInUse { handles: 1 }),
        "{err:?}"
    );
    assert_eq!(f(1), 3, "a refused removal removes nothing");
    drop(f);
    let before = FINALIZED.load(SeqCst);
    // SAFETY: no handle is left and no other code calls the object.
    unsafe { jit.remove(&tracker) }.unwrap();
    assert_eq!(FINALIZED.load(SeqCst), before + 1, "the destructor ran");
    assert!(!mapped_executable(address), "the code was released");
    assert!(jit.address("tracked_fn").is_err());
    assert!(
        tracker.add_object(&bytes).is_err(),
        "a removed tracker takes nothing"
    );
}

static SWAPPED: AtomicI64 = AtomicI64::new(0);
extern "C" fn replacement(x: i64) -> i64 {
    SWAPPED.fetch_add(1, SeqCst);
    x * 1000
}

#[test]
fn lazy_objects_link_on_first_call_and_entries_can_be_redirected() {
    let _serial = serial();
    let dir = scratch("lazy");
    let bytes = object(
        &dir,
        "lazy",
        "static long ready;\n\
         __attribute__((constructor)) static void init(void) { ready = 1; }\n\
         long lazy_fn(long x) { return x + 100 * ready; }\n",
    );
    let plain = object(&dir, "plain", "long plain_fn(long x) { return x - 1; }\n");
    let jit = Jit::builder().lazy(true).threads(2).build().unwrap();
    jit.add_object_lazily("plain.o", &plain).unwrap();
    // SAFETY: `plain_fn` is `long plain_fn(long)`.
    let plain_fn = unsafe { jit.get::<I64Fn>("plain_fn") }.unwrap();
    assert_eq!(
        jit.layer().stats().1,
        0,
        "nothing linked before the first call"
    );
    let manager = jit.lazy_reexports().expect("a lazy JIT has a manager");
    let callers = Barrier::new(4);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (f, callers) = (plain_fn.clone(), &callers);
            s.spawn(move || {
                callers.wait();
                assert_eq!(f(10), 9);
            });
        }
    });
    assert_eq!(jit.layer().stats().1, 1, "linked exactly once");
    assert_eq!(manager.linked(), 1);

    // An object with a constructor is linked at startup, and its
    // constructor runs before any function is called.
    jit.add_object_lazily("lazy.o", &bytes).unwrap();
    // SAFETY: `lazy_fn` is `long lazy_fn(long)`.
    let lazy_fn = unsafe { jit.get::<I64Fn>("lazy_fn") }.unwrap();
    assert_eq!(lazy_fn(1), 101);

    // SAFETY: `replacement` has `plain_fn`'s signature and is never unmapped.
    unsafe {
        jit.redirect(
            "plain_fn",
            replacement as I64Fn as *const () as usize as u64,
        )
    }
    .unwrap();
    assert_eq!(plain_fn(3), 3000);
    assert_eq!(SWAPPED.load(SeqCst), 1);
    let eager = Jit::builder().build().unwrap();
    // SAFETY: nothing is redirected (the JIT is not lazy).
    let err = unsafe { eager.redirect("plain_fn", 0) }.unwrap_err();
    assert!(matches!(err, JitError::NotLazy { .. }), "{err:?}");
}

static ENDED: AtomicUsize = AtomicUsize::new(0);
extern "C" fn note_ended() {
    ENDED.fetch_add(1, SeqCst);
}

#[test]
fn handles_keep_the_code_alive_and_the_last_drop_ends_the_session() {
    let _serial = serial();
    let dir = scratch("drop");
    let bytes = object(
        &dir,
        "ending",
        "void note_ended(void);\n\
         __attribute__((destructor)) static void fin(void) { note_ended(); }\n\
         long kept(long x) { return x * 2; }\n",
    );
    let jit = Jit::builder().build().unwrap();
    jit.define_fn("note_ended", note_ended as extern "C" fn())
        .unwrap();
    jit.add_object(&bytes).unwrap();
    // SAFETY: `kept` is `long kept(long)`; its destructor only counts.
    let kept = unsafe { jit.get::<I64Fn>("kept") }.unwrap();
    let address = kept.address();
    drop(jit);
    assert_eq!(kept(21), 42, "the handle keeps the code");
    assert_eq!(ENDED.load(SeqCst), 0, "no finalizer ran yet");
    assert!(mapped_executable(address));
    drop(kept);
    assert_eq!(ENDED.load(SeqCst), 1, "the last drop ran the finalizer");
    assert!(!mapped_executable(address), "and released the code");
}

/// The constructor of `ctor.o` parks here until the test lets it go.
static CTOR_ENTERED: AtomicUsize = AtomicUsize::new(0);
static CTOR_RELEASE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static CTOR_CV: std::sync::Condvar = std::sync::Condvar::new();

extern "C" fn park_in_constructor() {
    CTOR_ENTERED.fetch_add(1, SeqCst);
    let mut go = CTOR_RELEASE.lock().unwrap();
    while !*go {
        go = CTOR_CV.wait(go).unwrap();
    }
}

/// No caller runs code before its image's constructors have finished —
/// also a caller that arrives while another thread is running them (it
/// used to find the pending list already taken, and went on at once).
/// Eager and lazy.
#[test]
fn no_thread_calls_code_whose_constructors_are_still_running() {
    let _serial = serial();
    let dir = scratch("ctor-wait");
    let src = "void park_in_constructor(void);\n\
               static long ready;\n\
               __attribute__((constructor)) static void init(void) {\n\
                   park_in_constructor(); ready = 42; }\n\
               long value(long x) { return ready + x; }\n";
    let obj = object(&dir, "ctor", src);
    for lazy in [false, true] {
        CTOR_ENTERED.store(0, SeqCst);
        *CTOR_RELEASE.lock().unwrap() = false;
        let jit = Jit::builder().threads(2).lazy(lazy).build().unwrap();
        jit.define_fn(
            "park_in_constructor",
            park_in_constructor as extern "C" fn(),
        )
        .unwrap();
        if lazy {
            jit.add_object_lazily("ctor", &obj).unwrap();
        } else {
            jit.add_object(&obj).unwrap();
        }
        let call = || {
            // SAFETY: `value` is `long value(long)`.
            let f = unsafe { jit.get::<I64Fn>("value") }.unwrap();
            f(0)
        };
        std::thread::scope(|s| {
            let first = s.spawn(call);
            while CTOR_ENTERED.load(SeqCst) == 0 {
                std::thread::yield_now();
            }
            // The constructor is running (parked). A second caller now...
            let second = s.spawn(call);
            // ...gets every chance to run early before the constructor ends.
            std::thread::sleep(std::time::Duration::from_millis(200));
            *CTOR_RELEASE.lock().unwrap() = true;
            CTOR_CV.notify_all();
            assert_eq!(
                second.join().unwrap(),
                42,
                "lazy: {lazy}: ran before its constructor ended"
            );
            assert_eq!(first.join().unwrap(), 42, "lazy: {lazy}");
        });
        assert_eq!(
            CTOR_ENTERED.load(SeqCst),
            1,
            "lazy: {lazy}: the constructor ran once"
        );
    }
}

/// A batch of 2 MiB or more is read on all threads (parsed and named in
/// parallel, merged in order): linked as one image as a small batch is,
/// its calls in a cycle across the objects direct, and a duplicate
/// definition in it still refused with nothing added.
#[test]
fn a_large_batch_read_on_all_threads_links_as_one_image() {
    let _serial = serial();
    let dir = scratch("large-batch");
    const N: usize = 4;
    // Each object carries 600 KiB of read-only data, so the four are more
    // than the 2 MiB from which a batch is read in parallel.
    let source = |i: usize, name: &str| {
        let next = (i + 1) % N;
        format!(
            "const char pad_{i}[600 * 1024] = {{1}};\n\
             long f_{next}(long);\n\
             long {name}(long x) {{ return x <= 0 ? {i} : f_{next}(x - 1) + pad_{i}[x % 7]; }}\n"
        )
    };
    let objects: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let name = format!("o{i}");
            let bytes = object(&dir, &name, &source(i, &format!("f_{i}")));
            (format!("{name}.o"), bytes)
        })
        .collect();
    let total: usize = objects.iter().map(|(_, b)| b.len()).sum();
    assert!(total >= 2 << 20, "the batch is {total} bytes");
    // What f_i(x) returns: the C above, in Rust.
    fn expected(i: usize, x: i64) -> i64 {
        if x <= 0 {
            i as i64
        } else {
            expected((i + 1) % N, x - 1) + i64::from(x % 7 == 0)
        }
    }
    let jit = Jit::builder().build().unwrap();
    jit.add_objects(&objects).unwrap();
    for i in 0..N {
        // SAFETY: every `f_i` is `long f(long)`.
        let f = unsafe { jit.get::<I64Fn>(&format!("f_{i}")) }.unwrap();
        for x in [0, 1, 7, 30] {
            assert_eq!(f(x), expected(i, x), "f_{i}({x})");
        }
    }
    let (stats, images) = jit.layer().stats();
    assert_eq!((images, stats.objects, stats.plt_stubs), (1, N, 0));

    // A fifth object defining `f_0` again: refused, nothing added.
    let mut with_duplicate = objects.clone();
    let again = object(&dir, "again", &source(0, "f_0"));
    with_duplicate.push(("again.o".to_string(), again));
    let jit = Jit::builder().build().unwrap();
    let err = jit.add_objects(&with_duplicate).unwrap_err();
    assert!(
        matches!(&err, JitError::Link(kiln_linker::LinkError::DuplicateSymbols { duplicates })
            if duplicates.iter().any(|(n, objs)| n == "f_0" && objs.len() == 2)),
        "{err:?}"
    );
    // SAFETY: `f_1` is `long f(long)` (it must not be found).
    assert!(unsafe { jit.get::<I64Fn>("f_1") }.is_err());
}

/// Objects `a` and `b` whose functions call each other: `a(4)` is 22,
/// `b(3)` is 21.
fn mutually_recursive_objects(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let a = object(
        dir,
        "a",
        "long b(long);\nlong a(long x) { return x ? b(x - 1) + 1 : 0; }\n",
    );
    let b = object(
        dir,
        "b",
        "long a(long);\nlong b(long x) { return x ? a(x - 1) + 10 : 0; }\n",
    );
    (a, b)
}

/// Objects that call each other in a cycle link with the in-place
/// dispatcher too, also when one lookup starts both links: the first
/// link's wait for the other's addresses used to strand the other's
/// dispatch, queued behind it on the one thread (a hang).
/// A JIT whose links run on the thread that asks.
fn in_place_jit() -> Jit {
    Jit::builder()
        .dispatcher(kiln_engine::InPlaceDispatcher::new())
        .build()
        .unwrap()
}

#[test]
fn mutually_recursive_objects_link_with_the_in_place_dispatcher() {
    let _serial = serial();
    let dir = scratch("in-place-cycle");
    let (a, b) = mutually_recursive_objects(&dir);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let jit = in_place_jit();
        jit.add_object(&a).unwrap();
        jit.add_object(&b).unwrap();
        // Both objects start linking in one lookup: the first one's link
        // waits for the second one's addresses, whose link is queued
        // behind it on this one thread.
        let session = jit.session();
        let names = [session.intern("a"), session.intern("b")];
        let order = SearchOrder::new().with(jit.app(), DylibLookup::ExportedOnly);
        let found = session
            .lookup(&order, &LookupSet::required(names), RequiredState::Ready)
            .wait()
            .unwrap();
        assert_eq!(found.len(), 2);
        // SAFETY: `a` is `long a(long)`.
        let f = unsafe { jit.get::<I64Fn>("a") }.unwrap();
        let _ = tx.send(f(4));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("linking a cycle with the in-place dispatcher hung");
    assert_eq!(got, 22);
}

/// Objects added in one call are linked as one image, once: calls between
/// them go direct (no PLT stub), their results are those of objects added
/// one by one; a strong symbol defined twice among them fails the call and
/// adds none of them.
#[test]
fn objects_added_together_link_as_one_image() {
    let _serial = serial();
    let dir = scratch("one-image");
    let (a, b) = mutually_recursive_objects(&dir);
    let jit = in_place_jit();
    jit.add_objects(&[("a.o", &a), ("b.o", &b)]).unwrap();
    // SAFETY: `a` and `b` are `long f(long)`.
    let (fa, fb) = unsafe { (jit.get::<I64Fn>("a"), jit.get::<I64Fn>("b")) };
    assert_eq!((fa.unwrap()(4), fb.unwrap()(3)), (22, 21));
    let (stats, images) = jit.layer().stats();
    assert_eq!((images, stats.objects, stats.plt_stubs), (1, 2, 0));

    // The same two objects one by one: two images, each calling the other
    // through a stub, with the same results.
    let apart = in_place_jit();
    apart.add_object(&a).unwrap();
    apart.add_object(&b).unwrap();
    // SAFETY: `a` and `b` are `long f(long)`.
    let (fa, fb) = unsafe { (apart.get::<I64Fn>("a"), apart.get::<I64Fn>("b")) };
    assert_eq!((fa.unwrap()(4), fb.unwrap()(3)), (22, 21));
    let (stats, images) = apart.layer().stats();
    assert_eq!(images, 2);
    assert!(stats.plt_stubs >= 2, "{stats:?}");

    // A duplicate among the batch: an error naming it, nothing added.
    let c = object(
        &dir,
        "c",
        "long b(long x) { return x; }\nlong c(long x) { return x; }\n",
    );
    let jit = Jit::builder().build().unwrap();
    let err = jit
        .add_objects(&[("a.o", &a), ("b.o", &b), ("c.o", &c)])
        .unwrap_err();
    assert!(
        matches!(&err, JitError::Link(kiln_linker::LinkError::DuplicateSymbols { duplicates })
            if duplicates.iter().any(|(n, objs)| n == "b" && objs.len() == 2)),
        "{err:?}"
    );
    // SAFETY: `c` is `long c(long)` (it must not be found).
    assert!(unsafe { jit.get::<I64Fn>("c") }.is_err());
    jit.add_object(&c).unwrap();
    // SAFETY: `c` is `long c(long)`.
    assert_eq!(unsafe { jit.get::<I64Fn>("c") }.unwrap()(5), 5);
}

/// Entered by the key destructor of `keys.o`; sleeps so the test can end
/// the JIT while the destructor is still running.
static KEY_DTOR_ENTERED: AtomicUsize = AtomicUsize::new(0);
/// Sum of the values the key destructor finished with.
static KEY_DTOR_LEFT: AtomicI64 = AtomicI64::new(0);

extern "C" fn key_dtor_entered() {
    KEY_DTOR_ENTERED.fetch_add(1, SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(300));
}

extern "C" fn key_dtor_leaving(value: i64) {
    KEY_DTOR_LEFT.fetch_add(value, SeqCst);
}

/// A pthread key whose destructor is JIT'd code (what mimalloc does for
/// its per-thread heaps).
const KEYS_SRC: &str = "#include <pthread.h>\n\
    void key_dtor_entered(void);\n\
    void key_dtor_leaving(long);\n\
    static pthread_key_t key;\n\
    static void dtor(void *v) { key_dtor_entered(); key_dtor_leaving((long)v); }\n\
    long make_key(long unused) { return pthread_key_create(&key, dtor); }\n\
    long set_value(long v) { return pthread_setspecific(key, (void *)v); }\n\
    long drop_key(long unused) { return pthread_key_delete(key); }\n";

/// [`KEYS_SRC`] through C11's `tss_*` (glibc's `tss_create` reaches
/// `pthread_key_create` inside glibc, past kiln's override of it).
const KEYS_C11_SRC: &str = "#include <threads.h>\n\
    void key_dtor_entered(void);\n\
    void key_dtor_leaving(long);\n\
    static tss_t key;\n\
    static void dtor(void *v) { key_dtor_entered(); key_dtor_leaving((long)v); }\n\
    long make_key(long unused) { return tss_create(&key, dtor); }\n\
    long set_value(long v) { return tss_set(key, (void *)v); }\n\
    long drop_key(long unused) { tss_delete(key); return 0; }\n";

fn keys_jit(lazy: bool, bytes: &[u8]) -> Jit {
    let jit = Jit::builder().lazy(lazy).build().unwrap();
    jit.define_fn("key_dtor_entered", key_dtor_entered as extern "C" fn())
        .unwrap();
    jit.define_fn("key_dtor_leaving", key_dtor_leaving as extern "C" fn(i64))
        .unwrap();
    if bytes.is_empty() {
        // The caller adds the object (through a tracker).
    } else if lazy {
        jit.add_object_lazily("keys", bytes).unwrap();
    } else {
        jit.add_object(bytes).unwrap();
    }
    jit
}

/// glibc runs a pthread key's destructor on an exiting thread after the
/// thread's function returned — after `join` of a scoped thread, and with
/// nothing the host can wait for. The JIT's end (which frees the code) must
/// wait for a destructor that is running, not pull the code from under it.
/// Eager and lazy.
#[test]
fn the_end_of_a_jit_waits_for_a_key_destructor_running_on_an_exiting_thread() {
    if !common::in_own_process(
        "the_end_of_a_jit_waits_for_a_key_destructor_running_on_an_exiting_thread",
    ) {
        return;
    }
    let dir = scratch("key-dtor-running");
    let bytes = object(&dir, "keys", KEYS_SRC);
    for lazy in [false, true] {
        KEY_DTOR_ENTERED.store(0, SeqCst);
        KEY_DTOR_LEFT.store(0, SeqCst);
        let jit = keys_jit(lazy, &bytes);
        // SAFETY: both are `long f(long)`.
        let (make_key, set_value) = unsafe {
            (
                jit.get::<I64Fn>("make_key").unwrap(),
                jit.get::<I64Fn>("set_value").unwrap(),
            )
        };
        assert_eq!(make_key(0), 0, "lazy: {lazy}: pthread_key_create");
        let set = set_value.as_fn();
        let thread = std::thread::spawn(move || assert_eq!(set(7), 0));
        while KEY_DTOR_ENTERED.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        // The destructor runs (asleep in the host); end the JIT now.
        drop((make_key, set_value, jit));
        assert_eq!(
            KEY_DTOR_LEFT.load(SeqCst),
            7,
            "lazy: {lazy}: the JIT ended before the running destructor returned"
        );
        thread.join().unwrap();
    }
}

/// A thread that exits after its key's image was removed skips the
/// destructor (its code is gone) instead of calling freed memory; keys the
/// JIT'd code deletes itself are deleted. Through `pthread_key_*` and
/// through C11's `tss_*`.
#[test]
fn a_thread_exiting_after_removal_skips_the_images_key_destructor() {
    if !common::in_own_process("a_thread_exiting_after_removal_skips_the_images_key_destructor") {
        return;
    }
    let dir = scratch("key-dtor-after");
    for (name, src) in [("keys", KEYS_SRC), ("keys_c11", KEYS_C11_SRC)] {
        let bytes = object(&dir, name, src);
        KEY_DTOR_ENTERED.store(0, SeqCst);
        let jit = keys_jit(false, &[]);
        let tracker = jit.tracker().unwrap();
        tracker.add_object(&bytes).unwrap();
        // SAFETY: all three are `long f(long)`.
        let (make_key, set_value, drop_key) = unsafe {
            (
                tracker.get::<I64Fn>("make_key").unwrap(),
                tracker.get::<I64Fn>("set_value").unwrap(),
                tracker.get::<I64Fn>("drop_key").unwrap(),
            )
        };
        // More keys than glibc has (1,024), each deleted by the JIT'd code.
        for round in 0..1100 {
            assert_eq!(make_key(0), 0, "{name}: create, round {round}");
            assert_eq!(drop_key(0), 0, "{name}: delete, round {round}");
        }
        assert_eq!(make_key(0), 0);
        let set = set_value.as_fn();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            assert_eq!(set(5), 0);
            ready_tx.send(()).unwrap();
            rx.recv().unwrap();
        });
        ready_rx.recv().unwrap();
        drop((make_key, set_value, drop_key));
        // SAFETY: no handle is left; the waiting thread runs no JIT'd code.
        unsafe { jit.remove(&tracker) }.unwrap();
        tx.send(()).unwrap();
        thread.join().unwrap();
        assert_eq!(
            KEY_DTOR_ENTERED.load(SeqCst),
            0,
            "{name}: a removed image's key destructor ran"
        );
    }
}

/// What a key destructor's call into the host drops: the JIT (lazy) or the
/// tracker of its own image, with every handle.
static DROPPED_BY_DTOR: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>> =
    std::sync::Mutex::new(None);

extern "C" fn host_drop_own_image() {
    let drop_it = DROPPED_BY_DTOR.lock().unwrap().take();
    if let Some(drop_it) = drop_it {
        drop_it();
    }
}

/// A key destructor that makes the host drop the last handle of its own
/// image, then goes on in the image.
const KEYS_SELF_DROP_SRC: &str = "#include <pthread.h>\n\
    void host_drop_own_image(void);\n\
    void key_dtor_leaving(long);\n\
    static pthread_key_t key;\n\
    static volatile long seen;\n\
    static void dtor(void *v) { host_drop_own_image(); seen = (long)v; key_dtor_leaving(seen); }\n\
    long make_key(long unused) { return pthread_key_create(&key, dtor); }\n\
    long set_value(long v) { return pthread_setspecific(key, (void *)v); }\n";

/// A one-shot `SIGEV_THREAD` timer whose notification makes the host drop
/// the last handle of its own image, then goes on in the image.
const TIMER_SELF_DROP_SRC: &str = "#include <signal.h>\n\
    #include <string.h>\n\
    #include <time.h>\n\
    void host_drop_own_image(void);\n\
    void key_dtor_leaving(long);\n\
    static volatile long seen;\n\
    static timer_t timer;\n\
    static void on_tick(union sigval v) { host_drop_own_image(); seen = v.sival_int; key_dtor_leaving(seen); }\n\
    long make_key(long unused) { return 0; }\n\
    long set_value(long v) {\n\
        struct sigevent ev;\n\
        memset(&ev, 0, sizeof ev);\n\
        ev.sigev_notify = SIGEV_THREAD;\n\
        ev.sigev_notify_function = on_tick;\n\
        ev.sigev_value.sival_int = v;\n\
        if (timer_create(CLOCK_MONOTONIC, &ev, &timer)) return -1;\n\
        struct itimerspec its = { { 0, 0 }, { 0, 1000000 } };\n\
        return timer_settime(timer, 0, &its, 0);\n\
    }\n";

/// JIT'd code glibc runs for an image (a pthread key destructor on an
/// exiting thread, a timer's notification on glibc's thread) may lead the
/// host to drop that image's last handle — a plugin asking to be unloaded.
/// The removal must neither wait for the code it runs inside (a
/// self-deadlock) nor pull the code from under it: the code returns through
/// its image, then the image is torn down. Through the tracker's removal
/// (eager) and the JIT's end (eager and lazy).
#[test]
fn code_glibc_runs_for_an_image_may_drop_its_own_image() {
    if !common::in_own_process("code_glibc_runs_for_an_image_may_drop_its_own_image") {
        return;
    }
    let dir = scratch("self-drop");
    for (name, src) in [("key", KEYS_SELF_DROP_SRC), ("timer", TIMER_SELF_DROP_SRC)] {
        let bytes = object(&dir, name, src);
        for (lazy, by_tracker) in [(false, true), (false, false), (true, false)] {
            check_self_drop(
                &bytes,
                &format!("{name}, lazy {lazy}, tracker {by_tracker}"),
                lazy,
                by_tracker,
            );
        }
    }
}

/// Links `bytes` (`make_key`, then `set_value(9)` on a thread of its own
/// arms the code glibc runs, which calls [`host_drop_own_image`], then
/// [`key_dtor_leaving`] with 9) and checks the code returns and the image
/// goes.
fn check_self_drop(bytes: &[u8], what: &str, lazy: bool, by_tracker: bool) {
    KEY_DTOR_LEFT.store(0, SeqCst);
    let jit = Jit::builder().lazy(lazy).build().unwrap();
    jit.define_fn(
        "host_drop_own_image",
        host_drop_own_image as extern "C" fn(),
    )
    .unwrap();
    jit.define_fn("key_dtor_leaving", key_dtor_leaving as extern "C" fn(i64))
        .unwrap();
    let tracker = jit.tracker().unwrap();
    // SAFETY: both are `long f(long)`.
    let (make_key, set_value) = unsafe {
        if lazy {
            jit.add_object_lazily("self_drop", bytes).unwrap();
            (
                jit.get::<I64Fn>("make_key").unwrap(),
                jit.get::<I64Fn>("set_value").unwrap(),
            )
        } else {
            tracker.add_object(bytes).unwrap();
            (
                tracker.get::<I64Fn>("make_key").unwrap(),
                tracker.get::<I64Fn>("set_value").unwrap(),
            )
        }
    };
    let address = make_key.address();
    assert_eq!(make_key(0), 0, "{what}");
    let set = set_value.as_fn();
    drop((make_key, set_value));
    *DROPPED_BY_DTOR.lock().unwrap() = Some(if by_tracker {
        Box::new(move || {
            // SAFETY: no handle is left; only the code that calls this runs
            // the image's code, and returning to it is what this test checks.
            unsafe { jit.remove(&tracker) }.unwrap();
            drop((tracker, jit));
        })
    } else {
        Box::new(move || drop((tracker, jit)))
    });
    let thread = std::thread::spawn(move || set(9));
    wait_until(&format!("{what}: the code never returned"), || {
        KEY_DTOR_LEFT.load(SeqCst) == 9
    });
    assert_eq!(thread.join().unwrap(), 0, "{what}");
    wait_until(&format!("{what}: the code was never released"), || {
        !mapped_executable(address)
    });
}

/// What a key destructor's call into the host does while another thread
/// removes the destructor's image: a lookup through the JIT.
static LOOKUP_FROM_DTOR: std::sync::Mutex<Option<Box<dyn FnOnce() -> i64 + Send>>> =
    std::sync::Mutex::new(None);
static DTOR_IN_HOST: AtomicUsize = AtomicUsize::new(0);

extern "C" fn host_lookup_from_dtor() -> i64 {
    DTOR_IN_HOST.store(1, SeqCst);
    // Long enough for the other thread's removal to start waiting for
    // this destructor.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let lookup = LOOKUP_FROM_DTOR.lock().unwrap().take();
    lookup.map_or(-1, |lookup| lookup())
}

/// A key destructor whose image is being removed by another thread — the
/// removal waiting for it — may still use the JIT (here a lookup of
/// another tracker's function): the removal must not hold what the
/// destructor needs (the engine's state) while it waits.
#[test]
fn a_key_destructor_may_use_the_jit_while_its_image_is_removed() {
    if !common::in_own_process("a_key_destructor_may_use_the_jit_while_its_image_is_removed") {
        return;
    }
    let dir = scratch("dtor-lookup");
    let bytes = object(
        &dir,
        "dtor_lookup",
        "#include <pthread.h>\n\
         long host_lookup_from_dtor(void);\n\
         void key_dtor_leaving(long);\n\
         static pthread_key_t key;\n\
         static void dtor(void *v) { key_dtor_leaving(host_lookup_from_dtor() + (long)v); }\n\
         long make_key(long unused) { return pthread_key_create(&key, dtor); }\n\
         long set_value(long v) { return pthread_setspecific(key, (void *)v); }\n",
    );
    let other = object(&dir, "other", "long plain(long x) { return x + 1; }\n");
    KEY_DTOR_LEFT.store(0, SeqCst);
    let jit = std::sync::Arc::new(Jit::builder().build().unwrap());
    jit.define_fn(
        "host_lookup_from_dtor",
        host_lookup_from_dtor as extern "C" fn() -> i64,
    )
    .unwrap();
    jit.define_fn("key_dtor_leaving", key_dtor_leaving as extern "C" fn(i64))
        .unwrap();
    let (keys, plugin) = (jit.tracker().unwrap(), jit.tracker().unwrap());
    keys.add_object(&bytes).unwrap();
    plugin.add_object(&other).unwrap();
    // SAFETY: both are `long f(long)`.
    let (make_key, set_value) = unsafe {
        (
            keys.get::<I64Fn>("make_key").unwrap(),
            keys.get::<I64Fn>("set_value").unwrap(),
        )
    };
    assert_eq!(make_key(0), 0);
    let set = set_value.as_fn();
    drop((make_key, set_value));
    let in_dtor = std::sync::Arc::clone(&jit);
    *LOOKUP_FROM_DTOR.lock().unwrap() = Some(Box::new(move || {
        // SAFETY: `plain` is `long plain(long)`.
        let plain = unsafe { in_dtor.get::<I64Fn>("plain") }.unwrap();
        plain(41)
    }));
    let thread = std::thread::spawn(move || assert_eq!(set(100), 0));
    wait_until("the destructor never called the host", || {
        DTOR_IN_HOST.load(SeqCst) == 1
    });
    let removal = std::thread::spawn(move || {
        // SAFETY: no handle is left; only the destructor runs the image's
        // code, and the removal waits for it.
        unsafe { jit.remove(&keys) }.expect("remove the destructor's tracker");
    });
    wait_until("the destructor's lookup never returned", || {
        KEY_DTOR_LEFT.load(SeqCst) == 142
    });
    thread.join().unwrap();
    removal.join().unwrap();
}

static FORK_PREPARED: AtomicUsize = AtomicUsize::new(0);
extern "C" fn fork_prepared() {
    FORK_PREPARED.fetch_add(1, SeqCst);
}

/// Forks this process; the child exits at once.
fn fork_and_wait() {
    let (status, stderr) = in_forked_child(|| 0);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child (status {status:#x}): {stderr}"
    );
}

/// Fork handlers JIT'd code registers (`pthread_atfork`, which only
/// `libc_nonshared.a` defines) run at each `fork()` while their image
/// lives, and not after it was removed (glibc would call freed memory).
#[test]
fn fork_handlers_of_a_removed_image_no_longer_run() {
    let _serial = serial();
    let dir = scratch("atfork");
    let bytes = object(
        &dir,
        "atfork",
        "#include <pthread.h>\n\
         void fork_prepared(void);\n\
         static void prepare(void) { fork_prepared(); }\n\
         long register_handlers(long unused) { return pthread_atfork(prepare, 0, 0); }\n",
    );
    let jit = Jit::builder().build().unwrap();
    jit.define_fn("fork_prepared", fork_prepared as extern "C" fn())
        .unwrap();
    let tracker = jit.tracker().unwrap();
    tracker.add_object(&bytes).unwrap();
    // SAFETY: `long register_handlers(long)`.
    let register = unsafe { tracker.get::<I64Fn>("register_handlers") }.unwrap();
    assert_eq!(register(0), 0);
    let before = FORK_PREPARED.load(SeqCst);
    fork_and_wait();
    assert_eq!(
        FORK_PREPARED.load(SeqCst),
        before + 1,
        "the prepare handler ran"
    );
    drop(register);
    // SAFETY: no handle is left; nothing calls the object.
    unsafe { jit.remove(&tracker) }.unwrap();
    fork_and_wait();
    assert_eq!(
        FORK_PREPARED.load(SeqCst),
        before + 1,
        "a removed image's fork handler ran"
    );
}

static ON_EXIT_STATUS: AtomicI64 = AtomicI64::new(-1);
extern "C" fn note_on_exit(status: i64) {
    ON_EXIT_STATUS.store(status, SeqCst);
}

/// An `on_exit` handler of JIT'd code runs when its image is removed (with
/// status 0, as `dlclose` runs a library's `atexit` handlers) — glibc would
/// call it at the process's exit, from freed memory.
#[test]
fn on_exit_handlers_run_when_their_image_is_removed() {
    if !common::in_own_process("on_exit_handlers_run_when_their_image_is_removed") {
        return;
    }
    let dir = scratch("on-exit");
    let bytes = object(
        &dir,
        "on_exit",
        "#include <stdlib.h>\n\
         void note_on_exit(long);\n\
         static void bye(int status, void *arg) { note_on_exit(status + (long)arg); }\n\
         long register_bye(long unused) { return on_exit(bye, (void *)0); }\n",
    );
    let jit = Jit::builder().build().unwrap();
    jit.define_fn("note_on_exit", note_on_exit as extern "C" fn(i64))
        .unwrap();
    let tracker = jit.tracker().unwrap();
    tracker.add_object(&bytes).unwrap();
    // SAFETY: `long register_bye(long)`.
    let register = unsafe { tracker.get::<I64Fn>("register_bye") }.unwrap();
    assert_eq!(register(0), 0);
    drop(register);
    // SAFETY: no handle is left; nothing calls the object.
    unsafe { jit.remove(&tracker) }.unwrap();
    assert_eq!(ON_EXIT_STATUS.load(SeqCst), 0, "the handler ran at removal");
}

static HOST_SIGNALS: AtomicUsize = AtomicUsize::new(0);
extern "C" fn host_signal_handler(_: i32) {
    HOST_SIGNALS.fetch_add(1, SeqCst);
}

/// Signal handlers JIT'd code installs (`signal`, `sigaction`) handle the
/// signal while their image lives; its removal puts back the action it
/// replaced (the host's), instead of leaving the kernel to jump into freed
/// memory at the next signal.
#[test]
fn an_images_signal_handlers_are_uninstalled_with_it() {
    if !common::in_own_process("an_images_signal_handlers_are_uninstalled_with_it") {
        return;
    }
    let dir = scratch("signals");
    let bytes = object(
        &dir,
        "signals",
        "#include <signal.h>\n\
         #include <string.h>\n\
         static volatile long caught;\n\
         static void on_signal(int sig) { caught += sig; }\n\
         long install(long unused) {\n\
             struct sigaction sa;\n\
             memset(&sa, 0, sizeof sa);\n\
             sa.sa_handler = on_signal;\n\
             if (signal(SIGUSR1, on_signal) == SIG_ERR) return -1;\n\
             if (signal(SIGUSR1, on_signal) != on_signal) return -2;\n\
             return sigaction(SIGUSR2, &sa, 0);\n\
         }\n\
         long caught_so_far(long unused) { return caught; }\n",
    );
    check_signal_handlers_go_with_their_image(&bytes, &[libc::SIGUSR1, libc::SIGUSR2], 1);
}

/// The System V ways to install a handler (`sysv_signal`, `sigset`, and
/// `ssignal`) are uninstalled with their image too: removal puts the
/// host's handlers back. `sigset` keeps glibc's answers (`SIG_HOLD` when
/// the signal was held).
#[test]
fn system_v_signal_handlers_are_uninstalled_with_their_image() {
    if !common::in_own_process("system_v_signal_handlers_are_uninstalled_with_their_image") {
        return;
    }
    let dir = scratch("sysv-signals");
    let bytes = object(
        &dir,
        "sysv_signals",
        "#define _GNU_SOURCE\n\
         #include <signal.h>\n\
         static volatile long caught;\n\
         /* System V handlers reinstall themselves: the kernel reset them. */\n\
         static void on_usr1(int sig) { caught += sig; sysv_signal(SIGUSR1, on_usr1); }\n\
         static void on_signal(int sig) { caught += sig; }\n\
         long install(long unused) {\n\
             if (sysv_signal(SIGUSR1, on_usr1) == SIG_ERR) return -1;\n\
             if (sigset(SIGUSR2, SIG_HOLD) == SIG_ERR) return -2;\n\
             if (sigset(SIGUSR2, on_signal) != SIG_HOLD) return -3;\n\
             if (sigset(SIGUSR2, on_signal) != on_signal) return -4;\n\
             if (ssignal(SIGURG, on_signal) == SIG_ERR) return -5;\n\
             return 0;\n\
         }\n\
         long caught_so_far(long unused) { return caught; }\n",
    );
    check_signal_handlers_go_with_their_image(
        &bytes,
        &[libc::SIGUSR1, libc::SIGUSR2, libc::SIGURG],
        2,
    );
}

/// Installs the host's counting handler on `signals`, has the image's
/// `install` put its own over them, raises each signal `rounds` times (the
/// image's `caught_so_far` adds up the signal numbers), removes the image,
/// and checks that the next signals reach the host's handlers again.
fn check_signal_handlers_go_with_their_image(bytes: &[u8], signals: &[i32], rounds: usize) {
    for &sig in signals {
        // SAFETY: installs a handler that only counts (async-signal-safe).
        unsafe {
            libc::signal(
                sig,
                host_signal_handler as extern "C" fn(i32) as libc::sighandler_t,
            )
        };
    }
    let jit = Jit::builder().build().unwrap();
    let tracker = jit.tracker().unwrap();
    tracker.add_object(bytes).unwrap();
    // SAFETY: both are `long f(long)`.
    let (install, caught) = unsafe {
        (
            tracker.get::<I64Fn>("install").unwrap(),
            tracker.get::<I64Fn>("caught_so_far").unwrap(),
        )
    };
    assert_eq!(install(0), 0);
    for _ in 0..rounds {
        for &sig in signals {
            // SAFETY: raising a signal whose handler counts.
            unsafe { libc::raise(sig) };
        }
    }
    let sum: i64 = signals.iter().map(|&s| i64::from(s)).sum();
    assert_eq!(
        caught(0),
        rounds as i64 * sum,
        "the image's handlers ran, {rounds} time(s) each"
    );
    assert_eq!(HOST_SIGNALS.load(SeqCst), 0);
    drop((install, caught));
    // SAFETY: no handle is left; nothing calls the object.
    unsafe { jit.remove(&tracker) }.unwrap();
    for &sig in signals {
        // SAFETY: raising a signal; the host's counting handler is back.
        unsafe { libc::raise(sig) };
    }
    assert_eq!(
        HOST_SIGNALS.load(SeqCst),
        signals.len(),
        "the host's handlers are back"
    );
}

static HOST_TICKS: AtomicUsize = AtomicUsize::new(0);
extern "C" fn host_tick() {
    HOST_TICKS.fetch_add(1, SeqCst);
}

/// Waits up to ten seconds for `done`; fails with `what` after that.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Waits for the host to have seen `at_least` ticks.
fn wait_for_host_ticks(at_least: usize) {
    wait_until("the image's timer never fired", || {
        HOST_TICKS.load(SeqCst) >= at_least
    });
}

/// A JIT with `host_tick` defined, and a tracker holding the object
/// `bytes`.
fn ticking_tracker(bytes: &[u8]) -> (Jit, JitTracker) {
    let jit = Jit::builder().build().unwrap();
    jit.define_fn("host_tick", host_tick as extern "C" fn())
        .unwrap();
    let tracker = jit.tracker().unwrap();
    tracker.add_object(bytes).unwrap();
    (jit, tracker)
}

/// C: fills `ev` to notify `f(1)` on a thread of glibc's (`SIGEV_THREAD`).
const THREAD_EVENT_C: &str = "#include <signal.h>\n\
     #include <string.h>\n\
     static void thread_event(struct sigevent *ev, void (*f)(union sigval)) {\n\
         memset(ev, 0, sizeof *ev);\n\
         ev->sigev_notify = SIGEV_THREAD;\n\
         ev->sigev_notify_function = f;\n\
         ev->sigev_value.sival_int = 1;\n\
     }\n";

/// A `SIGEV_THREAD` timer JIT'd code creates notifies on glibc's threads
/// while its image lives; `timer_delete` stops it; and removing the image
/// while its timer still runs deletes the timer, instead of leaving glibc
/// to call freed memory at the next expiry.
#[test]
fn an_images_thread_timers_are_deleted_with_it() {
    if !common::in_own_process("an_images_thread_timers_are_deleted_with_it") {
        return;
    }
    let dir = scratch("timers");
    let source = THREAD_EVENT_C.to_owned()
        + "#include <time.h>\n\
         extern void host_tick(void);\n\
         static volatile long ticks;\n\
         static timer_t timer;\n\
         static void on_tick(union sigval v) { ticks += v.sival_int; host_tick(); }\n\
         long start(long ms) {\n\
             struct sigevent ev;\n\
             thread_event(&ev, on_tick);\n\
             if (timer_create(CLOCK_MONOTONIC, &ev, &timer)) return -1;\n\
             struct itimerspec its = { { 0, ms * 1000000 }, { 0, ms * 1000000 } };\n\
             return timer_settime(timer, 0, &its, 0);\n\
         }\n\
         long stop(long unused) { return timer_delete(timer); }\n\
         long ticks_so_far(long unused) { return ticks; }\n";
    let (jit, tracker) = ticking_tracker(&object(&dir, "timers", &source));
    // SAFETY: all three are `long f(long)`.
    let (start, stop, ticks) = unsafe {
        (
            tracker.get::<I64Fn>("start").unwrap(),
            tracker.get::<I64Fn>("stop").unwrap(),
            tracker.get::<I64Fn>("ticks_so_far").unwrap(),
        )
    };
    assert_eq!(start(1), 0);
    wait_for_host_ticks(3);
    assert_eq!(stop(0), 0, "the image deletes its own timer");
    let stopped = HOST_TICKS.load(SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(20));
    // A notification glibc started before the deletion may still land.
    assert!(HOST_TICKS.load(SeqCst) <= stopped + 1);
    assert!(ticks(0) >= 3, "the image's function counted too");
    let before = HOST_TICKS.load(SeqCst);
    assert_eq!(start(1), 0);
    wait_for_host_ticks(before + 3);
    drop((start, stop, ticks));
    // SAFETY: no handle is left; only glibc's timer thread calls the
    // image, and its removal is what this test checks.
    unsafe { jit.remove(&tracker) }.unwrap();
    let removed = HOST_TICKS.load(SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(
        HOST_TICKS.load(SeqCst),
        removed,
        "no notification after the image's removal"
    );
}

/// A message queue's `SIGEV_THREAD` notification JIT'd code registers
/// (`mq_notify`) runs on glibc's thread while its image lives; removing the
/// image while it is registered unregisters it, instead of leaving glibc to
/// call freed memory when the next message arrives.
#[test]
fn an_images_message_queue_notification_goes_with_it() {
    if !common::in_own_process("an_images_message_queue_notification_goes_with_it") {
        return;
    }
    let dir = scratch("mq-notify");
    let source = THREAD_EVENT_C.to_owned()
        + "#include <mqueue.h>\n\
         extern void host_tick(void);\n\
         static volatile long messages;\n\
         static void on_message(union sigval v) { messages += v.sival_int; host_tick(); }\n\
         long watch(long queue) {\n\
             struct sigevent ev;\n\
             thread_event(&ev, on_message);\n\
             return mq_notify((mqd_t)queue, &ev);\n\
         }\n\
         long messages_so_far(long unused) { return messages; }\n";
    let name = std::ffi::CString::new(format!("/kiln-jit-{}", std::process::id())).unwrap();
    // SAFETY: `mq_attr` is plain integers: all zeros is a valid value.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = 16;
    // SAFETY: a valid name and attributes; the queue is unlinked below.
    let queue = unsafe {
        libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_RDWR,
            0o600,
            &mut attr as *mut libc::mq_attr,
        )
    };
    assert!(queue >= 0, "mq_open: {}", std::io::Error::last_os_error());
    let send_and_drain = || {
        // SAFETY: the open queue; a one-byte message, then read back.
        unsafe {
            assert_eq!(libc::mq_send(queue, c"m".as_ptr(), 1, 0), 0);
            let mut buf = [0 as libc::c_char; 16];
            assert_eq!(
                libc::mq_receive(queue, buf.as_mut_ptr(), 16, std::ptr::null_mut()),
                1
            );
        }
    };
    HOST_TICKS.store(0, SeqCst);
    let (jit, tracker) = ticking_tracker(&object(&dir, "mq_notify", &source));
    // SAFETY: both are `long f(long)`.
    let (watch, messages) = unsafe {
        (
            tracker.get::<I64Fn>("watch").unwrap(),
            tracker.get::<I64Fn>("messages_so_far").unwrap(),
        )
    };
    assert_eq!(watch(i64::from(queue)), 0, "mq_notify");
    send_and_drain();
    wait_for_host_ticks(1);
    assert_eq!(messages(0), 1, "the image's function counted the message");
    assert_eq!(watch(i64::from(queue)), 0, "registered again");
    drop((watch, messages));
    // SAFETY: no handle is left; only glibc's notification would call the
    // image, and its removal is what this test checks.
    unsafe { jit.remove(&tracker) }.unwrap();
    send_and_drain();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        HOST_TICKS.load(SeqCst),
        1,
        "no notification after the removal"
    );
    // The queue takes a registration again: the image's is gone.
    // SAFETY: `sigevent` is integers and pointers: all zeros is valid.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_NONE;
    // SAFETY: the open queue and a valid event.
    let registered = unsafe { libc::mq_notify(queue, &event) };
    assert_eq!(registered, 0, "the image's registration stayed");
    // SAFETY: the queue opened above, closed and unlinked once.
    unsafe {
        libc::mq_close(queue);
        libc::mq_unlink(name.as_ptr());
    }
}

static IMAGE_THREAD_WAITING: AtomicUsize = AtomicUsize::new(0);
static IMAGE_THREAD_GO: AtomicUsize = AtomicUsize::new(0);
/// Called by the image's thread: waits until the test lets it go.
extern "C" fn host_wait() {
    IMAGE_THREAD_WAITING.fetch_add(1, SeqCst);
    while IMAGE_THREAD_GO.load(SeqCst) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Starts the image's thread (`long START(long)`, its thread calling
/// [`host_wait`]), removes the image while the thread waits — through a
/// tracker (eager) or by the JIT's end (lazy) — and checks the code stays
/// mapped until the thread, let go, has returned through it and ended.
/// The host loads `libraries` too.
fn check_image_thread_keeps_code(bytes: &[u8], start: &str, lazy: bool, libraries: &[&str]) {
    IMAGE_THREAD_WAITING.store(0, SeqCst);
    IMAGE_THREAD_GO.store(0, SeqCst);
    let mut builder = Jit::builder().lazy(lazy);
    for library in libraries {
        // SAFETY: a system library the test's object was built against.
        builder = unsafe { builder.library(*library) };
    }
    let jit = builder.build().unwrap();
    jit.define_fn("host_wait", host_wait as extern "C" fn())
        .unwrap();
    let tracker = jit.tracker().unwrap();
    if lazy {
        jit.add_object_lazily("image_threads.o", bytes).unwrap();
    } else {
        tracker.add_object(bytes).unwrap();
    }
    // SAFETY: `long start(long)`.
    let start = unsafe {
        if lazy {
            jit.get::<I64Fn>(start).unwrap()
        } else {
            tracker.get::<I64Fn>(start).unwrap()
        }
    };
    let address = start.address();
    assert_eq!(start(7), 0);
    wait_until("the image's thread never called the host", || {
        IMAGE_THREAD_WAITING.load(SeqCst) > 0
    });
    drop(start);
    if !lazy {
        // SAFETY: no handle is left; the image's own thread runs its
        // code, which is what this test checks.
        unsafe { jit.remove(&tracker) }.unwrap();
    }
    drop(tracker);
    drop(jit);
    assert!(
        mapped_executable(address),
        "lazy {lazy}: the code stays while the image's thread runs"
    );
    IMAGE_THREAD_GO.store(1, SeqCst);
    wait_until(&format!("lazy {lazy}: the code was never released"), || {
        !mapped_executable(address)
    });
}

/// A thread started by JIT'd code keeps what its removal group (the images
/// removed with it) needs, and nothing else: removing another tracker while
/// the thread runs gives that tracker's memory back at once (a plugin with
/// a thread pool that lives on must not keep every other plugin's memory);
/// removing the thread's own tracker keeps the code of every image in it —
/// here the thread runs another object's function of the same tracker —
/// until the thread has ended.
#[test]
fn an_image_thread_keeps_its_removal_groups_code_and_no_other() {
    if !common::in_own_process("an_image_thread_keeps_its_removal_groups_code_and_no_other") {
        return;
    }
    let dir = scratch("image-thread-groups");
    let starter = object(
        &dir,
        "starter",
        "#include <pthread.h>\n\
         extern long y_work(long);\n\
         static void *worker(void *arg) { return (void *)y_work((long)arg); }\n\
         long start(long n) {\n\
             pthread_t t;\n\
             if (pthread_create(&t, 0, worker, (void *)n)) return -1;\n\
             return pthread_detach(t);\n\
         }\n",
    );
    let worker = object(
        &dir,
        "worker",
        "extern void host_wait(void);\n\
         static volatile long done;\n\
         long y_work(long n) { host_wait(); done = n; /* back here after the removal */ return n; }\n",
    );
    let other = object(&dir, "other", "long plain(long x) { return x + 1; }\n");
    IMAGE_THREAD_WAITING.store(0, SeqCst);
    IMAGE_THREAD_GO.store(0, SeqCst);
    let jit = Jit::builder().build().unwrap();
    jit.define_fn("host_wait", host_wait as extern "C" fn())
        .unwrap();
    let (threads, plugin) = (jit.tracker().unwrap(), jit.tracker().unwrap());
    threads.add_object(&worker).unwrap();
    threads.add_object(&starter).unwrap();
    plugin.add_object(&other).unwrap();
    // SAFETY: all are `long f(long)`.
    let (start, y_work, plain) = unsafe {
        (
            threads.get::<I64Fn>("start").unwrap(),
            threads.get::<I64Fn>("y_work").unwrap(),
            plugin.get::<I64Fn>("plain").unwrap(),
        )
    };
    let (y_address, plain_address) = (y_work.address(), plain.address());
    assert_eq!(plain(1), 2);
    assert_eq!(start(7), 0);
    wait_until("the image's thread never called the host", || {
        IMAGE_THREAD_WAITING.load(SeqCst) > 0
    });
    drop((start, y_work, plain));
    // SAFETY: no handle is left; nothing runs the plugin's code.
    unsafe { jit.remove(&plugin) }.unwrap();
    wait_until(
        "another tracker's code stayed while an unrelated image thread ran",
        || !mapped_executable(plain_address),
    );
    // SAFETY: no handle is left; only the tracker's own thread runs its
    // code, which is what this test checks.
    unsafe { jit.remove(&threads) }.unwrap();
    assert!(
        mapped_executable(y_address),
        "the code the thread runs, of another object of its tracker, stays"
    );
    IMAGE_THREAD_GO.store(1, SeqCst);
    wait_until("the tracker's code was never released", || {
        !mapped_executable(y_address)
    });
}

/// A thread JIT'd code starts (`pthread_create`, C11's `thrd_create`)
/// keeps the image's memory mapped while it runs: removing the image
/// meanwhile runs its teardown at once (no waiting for the thread) but
/// releases the code only once the thread has ended, instead of letting
/// the thread return into freed memory. Eager (removed through its
/// tracker) and lazy (the JIT's end).
#[test]
fn an_image_thread_keeps_the_code_it_runs_until_it_ends() {
    if !common::in_own_process("an_image_thread_keeps_the_code_it_runs_until_it_ends") {
        return;
    }
    let dir = scratch("image-threads");
    let bytes = object(
        &dir,
        "image_threads",
        "#include <pthread.h>\n\
         #include <threads.h>\n\
         extern void host_wait(void);\n\
         static volatile long done;\n\
         static void *worker(void *arg) {\n\
             host_wait();\n\
             done = (long)arg; /* back in the image after its removal */\n\
             return arg;\n\
         }\n\
         static int c11_worker(void *arg) { return worker(arg) != 0; }\n\
         long start(long n) {\n\
             pthread_t t;\n\
             if (pthread_create(&t, 0, worker, (void *)n)) return -1;\n\
             return pthread_detach(t);\n\
         }\n\
         long start_c11(long n) {\n\
             thrd_t t;\n\
             if (thrd_create(&t, c11_worker, (void *)n) != thrd_success) return -1;\n\
             return thrd_detach(t) != thrd_success;\n\
         }\n",
    );
    for start in ["start", "start_c11"] {
        for lazy in [false, true] {
            check_image_thread_keeps_code(&bytes, start, lazy, &[]);
        }
    }
}

/// The same for a C++ `std::thread` (started from libstdc++'s
/// `std::thread::_M_start_thread`), detached.
#[test]
fn an_images_std_thread_keeps_the_code_it_runs_until_it_ends() {
    if !common::in_own_process("an_images_std_thread_keeps_the_code_it_runs_until_it_ends") {
        return;
    }
    assert!(common::need_tool("g++"));
    check_std_thread_keeps_code(&scratch("image-std-threads"), "g++", &[], &[]);
}

/// Builds a detached `std::thread` whose body waits in the host, then
/// writes the image's data, with `cxx` and `flags`, and checks its code
/// stays until the thread has ended (eager and lazy; `libraries` loaded).
fn check_std_thread_keeps_code(dir: &Path, cxx: &str, flags: &[&str], libraries: &[&str]) {
    let src = dir.join("image_threads.cpp");
    std::fs::write(
        &src,
        "#include <thread>\n\
         extern \"C\" void host_wait(void);\n\
         static volatile long done;\n\
         extern \"C\" long start(long n) {\n\
             std::thread t([n] {\n\
                 host_wait();\n\
                 done = n; // back in the image after its removal\n\
             });\n\
             t.detach();\n\
             return 0;\n\
         }\n",
    )
    .expect("write the source");
    let flags = [flags, &["-O1", "-fPIC"]].concat();
    let obj = common::compile(cxx, &src, &flags, &[], &dir.join("image_threads.o"));
    let bytes = std::fs::read(&obj).expect("read the object");
    for lazy in [false, true] {
        check_image_thread_keeps_code(&bytes, "start", lazy, libraries);
    }
}

/// libc++'s `std::thread` (clang++ `-stdlib=libc++`) starts its thread
/// from the image itself — its constructor is a header template calling
/// `pthread_create` with a start routine instantiated in the image — so
/// kiln counts it as libstdc++'s: the code stays until the thread ends.
#[test]
fn an_images_libcxx_std_thread_keeps_the_code_it_runs_until_it_ends() {
    if !common::in_own_process("an_images_libcxx_std_thread_keeps_the_code_it_runs_until_it_ends") {
        return;
    }
    assert!(common::need_tool("clang++"));
    assert!(
        std::path::Path::new("/usr/lib/x86_64-linux-gnu/libc++.so.1").exists(),
        "libc++ is not installed (apt-get install -y libc++-dev libc++abi-dev)"
    );
    check_std_thread_keeps_code(
        &scratch("image-libcxx-threads"),
        "clang++",
        &["-stdlib=libc++"],
        &[":libc++.so.1"],
    );
}

/// A stream whose buffer JIT'd code placed in its image's data (`setvbuf`
/// with a static array) is flushed and left unbuffered when the image's
/// memory goes, instead of stdio writing into released memory: everything
/// written before and after the removal reaches the file.
#[test]
fn a_stream_buffered_in_an_images_data_survives_its_removal() {
    if !common::in_own_process("a_stream_buffered_in_an_images_data_survives_its_removal") {
        return;
    }
    let dir = scratch("stream-buffer");
    let bytes = object(
        &dir,
        "stream_buffer",
        "#include <stdio.h>\n\
         static char buffer[4096];\n\
         long buffer_in_image(long stream) {\n\
             FILE *f = (FILE *)stream;\n\
             if (setvbuf(f, buffer, _IOFBF, sizeof buffer)) return -1;\n\
             return fputs(\"written by the image\\n\", f) < 0 ? -2 : 0;\n\
         }\n",
    );
    let path = dir.join("out.txt");
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path and mode.
    let stream = unsafe { libc::fopen(c_path.as_ptr(), c"w".as_ptr()) };
    assert!(!stream.is_null());
    let jit = Jit::builder().build().unwrap();
    let tracker = jit.tracker().unwrap();
    tracker.add_object(&bytes).unwrap();
    // SAFETY: `long f(long)`.
    let buffer = unsafe { tracker.get::<I64Fn>("buffer_in_image").unwrap() };
    assert_eq!(buffer(stream as i64), 0);
    drop(buffer);
    // SAFETY: no handle is left; nothing calls the object.
    unsafe { jit.remove(&tracker) }.unwrap();
    for _ in 0..1000 {
        // SAFETY: the open stream and a NUL-terminated line.
        assert!(unsafe { libc::fputs(c"written by the host\n".as_ptr(), stream) } >= 0);
    }
    // SAFETY: the stream opened above, closed once.
    assert_eq!(unsafe { libc::fclose(stream) }, 0);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("written by the image\n"), "{text:.80}");
    assert_eq!(text.lines().count(), 1001);
}

static COOKIE_BYTES: AtomicUsize = AtomicUsize::new(0);
extern "C" fn host_cookie_bytes(n: i64) {
    COOKIE_BYTES.fetch_add(n as usize, SeqCst);
}

/// A stream JIT'd code opens with `fopencookie` (its write function in the
/// image) and hands to the host writes through the image while it lives;
/// after the image's removal the host's writes fail (`EBADF`) instead of
/// stdio calling freed code, and closing the stream still works.
#[test]
fn a_cookie_stream_outlives_its_image_without_calling_it() {
    if !common::in_own_process("a_cookie_stream_outlives_its_image_without_calling_it") {
        return;
    }
    let dir = scratch("cookie-stream");
    let bytes = object(
        &dir,
        "cookie_stream",
        "#define _GNU_SOURCE\n\
         #include <stdio.h>\n\
         extern void host_cookie_bytes(long);\n\
         static ssize_t counting_write(void *c, const char *buf, size_t n) {\n\
             host_cookie_bytes((long)n);\n\
             return (ssize_t)n;\n\
         }\n\
         long open_counting(long unused) {\n\
             cookie_io_functions_t fns = { 0, counting_write, 0, 0 };\n\
             FILE *f = fopencookie(0, \"w\", fns);\n\
             if (f) setvbuf(f, 0, _IONBF, 0);\n\
             return (long)f;\n\
         }\n",
    );
    let jit = Jit::builder().build().unwrap();
    jit.define_fn("host_cookie_bytes", host_cookie_bytes as extern "C" fn(i64))
        .unwrap();
    let tracker = jit.tracker().unwrap();
    tracker.add_object(&bytes).unwrap();
    // SAFETY: `long f(long)`.
    let open = unsafe { tracker.get::<I64Fn>("open_counting").unwrap() };
    let stream = open(0) as *mut libc::FILE;
    assert!(!stream.is_null());
    // SAFETY: the open stream and a NUL-terminated text.
    assert!(unsafe { libc::fputs(c"twelve bytes".as_ptr(), stream) } >= 0);
    assert_eq!(COOKIE_BYTES.load(SeqCst), 12, "written through the image");
    drop(open);
    // SAFETY: no handle is left; the host's stream is what this test checks.
    unsafe { jit.remove(&tracker) }.unwrap();
    // SAFETY: the open stream and a NUL-terminated text.
    let rc = unsafe { libc::fputs(c"more".as_ptr(), stream) };
    assert!(rc < 0, "the image is gone: the write fails");
    assert_eq!(COOKIE_BYTES.load(SeqCst), 12);
    // SAFETY: the stream, closed once.
    unsafe { libc::fclose(stream) };
}

/// Threads exiting (their key destructors running in JIT'd code) while the
/// JIT that holds the code ends, over and over, from several threads at
/// once: every destructor runs whole or not at all, nothing crashes or
/// hangs. Eager and lazy.
#[test]
fn key_destructors_race_the_end_of_their_jit() {
    if !common::in_own_process("key_destructors_race_the_end_of_their_jit") {
        return;
    }
    let dir = scratch("key-dtor-race");
    let src = "#include <pthread.h>\n\
               void raced_dtor(long);\n\
               static pthread_key_t key;\n\
               static void dtor(void *v) { raced_dtor((long)v); }\n\
               long make_key(long unused) { return pthread_key_create(&key, dtor); }\n\
               long set_value(long v) { return pthread_setspecific(key, (void *)v); }\n";
    let bytes = object(&dir, "raced", src);
    for round in 0..60 {
        let lazy = round % 2 == 1;
        let jit = Jit::builder().lazy(lazy).build().unwrap();
        jit.define_fn("raced_dtor", raced_dtor as extern "C" fn(i64))
            .unwrap();
        if lazy {
            jit.add_object_lazily("raced", &bytes).unwrap();
        } else {
            jit.add_object(&bytes).unwrap();
        }
        // SAFETY: both are `long f(long)`.
        let (make_key, set_value) = unsafe {
            (
                jit.get::<I64Fn>("make_key").unwrap(),
                jit.get::<I64Fn>("set_value").unwrap(),
            )
        };
        assert_eq!(make_key(0), 0, "round {round}");
        let set = set_value.as_fn();
        let go = std::sync::Arc::new(Barrier::new(5));
        let threads: Vec<_> = (1..=4)
            .map(|t| {
                let go = std::sync::Arc::clone(&go);
                std::thread::spawn(move || {
                    assert_eq!(set(t), 0);
                    go.wait();
                })
            })
            .collect();
        go.wait();
        // The threads are exiting, their destructors about to run or
        // running: the JIT ends now.
        drop((make_key, set_value, jit));
        for t in threads {
            t.join().unwrap();
        }
    }
}

/// Yields, so the JIT's end can overtake a destructor in the middle.
extern "C" fn raced_dtor(_: i64) {
    std::thread::yield_now();
}

/// libstdc++'s `std::get_terminate` / `std::get_new_handler`.
fn cxx_getter(name: &std::ffi::CStr) -> extern "C" fn() -> usize {
    // SAFETY: opens the C++ runtime (the JIT binds C++ objects to it too)
    // and looks a NUL-terminated name up in it.
    let f = unsafe {
        let lib = libc::dlopen(
            c"libstdc++.so.6".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL,
        );
        assert!(!lib.is_null(), "libstdc++ cannot be opened");
        libc::dlsym(lib, name.as_ptr())
    };
    assert!(!f.is_null(), "{name:?} is not loaded");
    // SAFETY: both getters are `void (*std::get_*())()`: no arguments, an
    // address back.
    unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> usize>(f) }
}

/// The terminate and new handlers JIT'd C++ installs (`std::set_terminate`,
/// `std::set_new_handler`) are libstdc++'s while their image lives; its
/// removal puts back what they replaced, so a later `std::terminate` or
/// failed `new` does not call freed memory.
#[test]
fn an_images_terminate_and_new_handlers_are_uninstalled_with_it() {
    let _serial = serial();
    assert!(common::need_tool("g++"));
    let dir = scratch("cxx-hooks");
    let src = dir.join("hooks.cpp");
    std::fs::write(
        &src,
        "#include <cstdlib>\n\
         #include <exception>\n\
         #include <new>\n\
         static void my_terminate() { std::abort(); }\n\
         static void my_new_handler() { throw std::bad_alloc(); }\n\
         extern \"C\" long install_hooks(long) {\n\
             std::set_terminate(my_terminate);\n\
             std::set_terminate(my_terminate);\n\
             std::set_new_handler(my_new_handler);\n\
             return 0;\n\
         }\n\
         extern \"C\" long hooks_are_mine(long) {\n\
             return (std::get_terminate() == my_terminate) + 2 * (std::get_new_handler() == my_new_handler);\n\
         }\n",
    )
    .expect("write the source");
    let obj = common::compile("g++", &src, &["-O1", "-fPIC"], &[], &dir.join("hooks.o"));
    let bytes = std::fs::read(&obj).expect("read the object");
    let jit = Jit::builder().build().unwrap();
    let tracker = jit.tracker().unwrap();
    tracker.add_object(&bytes).unwrap();
    let get_terminate = cxx_getter(c"_ZSt13get_terminatev");
    let get_new_handler = cxx_getter(c"_ZSt15get_new_handlerv");
    let (terminate, new_handler) = (get_terminate(), get_new_handler());
    // SAFETY: both are `long f(long)`.
    let (install, mine) = unsafe {
        (
            tracker.get::<I64Fn>("install_hooks").unwrap(),
            tracker.get::<I64Fn>("hooks_are_mine").unwrap(),
        )
    };
    assert_eq!(install(0), 0);
    assert_eq!(mine(0), 3, "the image's handlers are installed");
    drop((install, mine));
    // SAFETY: no handle is left; nothing calls the object.
    unsafe { jit.remove(&tracker) }.unwrap();
    assert_eq!(get_terminate(), terminate, "the terminate handler is back");
    assert_eq!(get_new_handler(), new_handler, "the new handler is back");
}

/// In a child forked from a process with a JIT, code linked before the
/// fork still runs; using the JIT itself (a lookup that must link, a
/// removal) fails at once with an error saying why, instead of waiting
/// forever for the worker threads the child does not have, and dropping it
/// leaves the parent's images to the parent (no finalizer runs); eager and
/// lazy.
#[test]
fn a_forked_child_is_told_it_cannot_use_the_jit() {
    if !common::in_own_process("a_forked_child_is_told_it_cannot_use_the_jit") {
        return;
    }
    let dir = scratch("fork-child");
    // With a finalizer the child must not run.
    let linked = object(
        &dir,
        "linked",
        "#include <unistd.h>\n\
         __attribute__((destructor)) static void fini(void) { write(2, \"fini ran\\n\", 9); }\n\
         long twice(long x) { return 2 * x; }\n",
    );
    let unlinked = object(&dir, "unlinked", "long thrice(long x) { return 3 * x; }\n");
    for lazy in [false, true] {
        let jit = Jit::builder().threads(2).lazy(lazy).build().unwrap();
        let tracker = jit.tracker().unwrap();
        tracker.add_object(&linked).unwrap();
        tracker.add_object(&unlinked).unwrap();
        // SAFETY: `long twice(long)`; called once here, so linked (lazy
        // mode links a body at its first call).
        let twice = unsafe { tracker.get::<I64Fn>("twice") }.unwrap();
        assert_eq!(twice(1), 2);
        let (status, stderr) = in_forked_child(|| {
            let mut findings = 0;
            if twice(21) != 42 {
                findings |= 1;
            }
            if !lazy {
                // SAFETY: `long thrice(long)`.
                match unsafe { tracker.get::<I64Fn>("thrice") } {
                    Err(e) if message_with_causes(&e).contains("forked") => {}
                    Err(e) => {
                        eprintln!("child lookup: {}", message_with_causes(&e));
                        findings |= 2;
                    }
                    Ok(_) => findings |= 4,
                }
            }
            // SAFETY: the child ends with `_exit` and never uses the
            // parent's `twice` again: this drop of its copy is the child's
            // only one.
            drop(unsafe { std::ptr::read(&twice) });
            // SAFETY: no handle is left in the child; nothing of the
            // tracker runs there.
            match unsafe { jit.remove(&tracker) } {
                Err(e) if message_with_causes(&e).contains("forked") => {}
                Err(e) => {
                    eprintln!("child removal: {}", message_with_causes(&e));
                    findings |= 8;
                }
                Ok(()) => findings |= 16,
            }
            // SAFETY: the child ends with `_exit` and never uses the
            // parent's `tracker` or `jit` again (the tracker holds the JIT
            // too): these drops of their copies are the child's only ones.
            drop(unsafe { (std::ptr::read(&tracker), std::ptr::read(&jit)) });
            // A JIT the child makes is its own.
            let own = Jit::builder().threads(2).lazy(lazy).build().unwrap();
            own.add_object(&unlinked).unwrap();
            // SAFETY: `long thrice(long)`.
            if unsafe { own.get::<I64Fn>("thrice") }.map(|f| f(5)).ok() != Some(15) {
                findings |= 32;
            }
            findings
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "lazy {lazy}: the child's findings (status {status:#x}; 0 = none); stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("fini ran"),
            "the child ran a finalizer of the parent's image"
        );
        assert_eq!(twice(4), 8);
        // SAFETY: `long thrice(long)`.
        let thrice = unsafe { tracker.get::<I64Fn>("thrice") }.unwrap();
        assert_eq!(thrice(3), 9, "the parent's JIT is untouched");
    }
}

/// Runs `child` in a forked child of this process, which exits with its
/// answer (or is killed by an alarm after 10 s): the child's wait status
/// and what it wrote to its standard error.
fn in_forked_child(child: impl FnOnce() -> i32) -> (i32, String) {
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child runs `child` (code linked before the fork and
    // kiln's calls, the subject of the test) and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: the child's own descriptors and alarm; `_exit` ends it
        // without running the parent's exit handlers.
        unsafe {
            libc::alarm(10);
            libc::dup2(pipe[1], 2);
            libc::close(pipe[0]);
            libc::_exit(child())
        }
    }
    // SAFETY: the parent's copy of the write end, closed so reading ends
    // with the child.
    unsafe { libc::close(pipe[1]) };
    let mut stderr = String::new();
    // SAFETY: the read end is this function's to own from here on.
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
    std::io::Read::read_to_string(&mut reader, &mut stderr).unwrap();
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    (status, stderr)
}
