//! Loom models of lazy reexports' first-call protocol: the engine's real
//! `LazyReexports::resolve`, built with `--cfg kiln_loom`, driven from two
//! modelled threads the way two first calls through one trampoline reach it
//! (the machine code is replaced by a fake emitter and redirector that hand
//! out fixed addresses and record redirects in loom-visible state). Run with
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg kiln_loom" cargo test -p kiln-loom-tests --release`.
//!
//! Each model keeps to two or three threads; nothing in a model depends on
//! time, hash iteration order or thread ids.
#![cfg(kiln_loom)]

mod runner;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering::SeqCst};

use kiln_engine::*;
use loom::sync::Mutex;
use loom::sync::atomic::AtomicBool;

/// Runs `f` under loom; checks that more than one interleaving was
/// explored (a model whose threads never overlap would prove nothing).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let builder = runner::builder();
    let iterations = Arc::new(StdAtomicUsize::new(0));
    let counter = iterations.clone();
    builder.check(move || {
        counter.fetch_add(1, SeqCst);
        f();
    });
    let n = iterations.load(SeqCst);
    eprintln!("explored {n} interleavings");
    assert!(n > 1, "the model explored a single interleaving");
}

const FC: SymbolFlags = SymbolFlags::CALLABLE;
/// The one trampoline the fake emitter hands out.
const TRAMPOLINE: u64 = 0x1000;
/// The one stub the fake redirector hands out.
const STUB: u64 = 0x2000;
/// The body's address.
const BODY: u64 = 0xb0d7;
/// A hot-swapped body's address.
const SWAPPED: u64 = 0x5a5a;

/// Hands out [`TRAMPOLINE`].
struct FixedTrampolines;

impl TrampolineEmitter for FixedTrampolines {
    fn emit_trampolines(&self, _tracker: &ResourceTracker, count: usize) -> Result<Vec<u64>> {
        assert_eq!(count, 1, "the model defines one entry");
        Ok(vec![TRAMPOLINE])
    }
}

/// Hands out [`STUB`] and records every redirect `(stub, target)` in order.
struct RecordingStubs {
    redirects: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl Redirector for RecordingStubs {
    fn create_stubs(&self, _tracker: &ResourceTracker, initial: &[u64]) -> Result<Vec<u64>> {
        assert_eq!(
            initial,
            [TRAMPOLINE],
            "the stub must start at its trampoline"
        );
        Ok(vec![STUB])
    }

    fn redirect(&self, stub: u64, target: u64) -> Result<()> {
        self.redirects.lock().unwrap().push((stub, target));
        Ok(())
    }
}

/// The body: counts materializations and raises `emitted` right before it
/// emits (or fails with `fail`).
struct Body {
    name: SymbolName,
    runs: Arc<StdAtomicUsize>,
    emitted: Arc<AtomicBool>,
    fail: Option<&'static str>,
}

impl MaterializationUnit for Body {
    fn name(&self) -> &str {
        "body"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.name.clone(), FC)]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        self.runs.fetch_add(1, SeqCst);
        if let Some(cause) = self.fail {
            return r.fail(Error::msg(cause));
        }
        r.resolve(&[(self.name.clone(), SymbolDef::new(BODY, FC))])
            .unwrap();
        self.emitted.store(true, SeqCst);
        r.emit(vec![]).unwrap();
    }
}

struct Setup {
    session: Session,
    dylib: Dylib,
    entry: SymbolName,
    lazy: LazyReexports,
    runs: Arc<StdAtomicUsize>,
    emitted: Arc<AtomicBool>,
    redirects: Arc<Mutex<Vec<(u64, u64)>>>,
    /// The tracker the entry was defined through, if `setup` was asked for
    /// one (otherwise the dylib's default tracker).
    tracker: Option<ResourceTracker>,
}

/// A session with one lazy entry whose trampoline and stub exist (the
/// reexports unit was materialized by looking the entry up), and whose
/// body was never requested. With `tracked`, the entry is defined through
/// a tracker of its own.
fn setup(fail: Option<&'static str>, tracked: bool) -> Setup {
    let session = Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build();
    let dylib = session.create_dylib("d").unwrap();
    let (body, entry) = (session.intern("body"), session.intern("entry"));
    let runs = Arc::new(StdAtomicUsize::new(0));
    let emitted = Arc::new(AtomicBool::new(false));
    dylib
        .define(Body {
            name: body.clone(),
            runs: runs.clone(),
            emitted: emitted.clone(),
            fail,
        })
        .unwrap();
    let redirects = Arc::new(Mutex::new(Vec::new()));
    let lazy = LazyReexports::new(
        &session,
        FixedTrampolines,
        RecordingStubs {
            redirects: redirects.clone(),
        },
    );
    let tracker = tracked.then(|| dylib.create_tracker().unwrap());
    let unit = lazy
        .reexports(
            &dylib,
            [Alias {
                name: entry.clone(),
                target: body,
                flags: FC,
            }],
        )
        .unwrap();
    match &tracker {
        Some(tracker) => dylib.define_with(unit, tracker),
        None => dylib.define(unit),
    }
    .unwrap();
    let order = SearchOrder::new().with(&dylib, DylibLookup::All);
    let found = session
        .lookup(
            &order,
            &LookupSet::required([entry.clone()]),
            RequiredState::Ready,
        )
        .wait()
        .unwrap();
    assert_eq!(found.get(&entry).unwrap().address, STUB);
    assert_eq!(
        runs.load(SeqCst),
        0,
        "defining entries must not link bodies"
    );
    assert!(redirects.lock().unwrap().is_empty());
    Setup {
        session,
        dylib,
        entry,
        lazy,
        runs,
        emitted,
        redirects,
        tracker,
    }
}

/// Two threads first-call one entry: one materialization; neither returns
/// before the body is emitted (Ready) and the stub points at it; both get
/// its address.
#[test]
fn concurrent_first_calls_link_once_and_wait_for_ready() {
    model(|| {
        let s = setup(None, false);
        let check = {
            let (emitted, redirects) = (s.emitted.clone(), s.redirects.clone());
            move |address: u64| {
                assert_eq!(address, BODY);
                assert!(
                    emitted.load(SeqCst),
                    "a first call returned before the body was emitted"
                );
                assert!(
                    redirects.lock().unwrap().contains(&(STUB, BODY)),
                    "a first call returned before the stub pointed at the body"
                );
            }
        };
        let t = {
            let (lazy, check) = (s.lazy.clone(), check.clone());
            loom::thread::spawn(move || check(lazy.resolve(TRAMPOLINE).unwrap()))
        };
        check(s.lazy.resolve(TRAMPOLINE).unwrap());
        t.join().unwrap();
        assert_eq!(s.runs.load(SeqCst), 1, "the body must be linked once");
        assert_eq!(s.lazy.reentries(), 2);
        assert_eq!(s.lazy.linked(), 1, "the entry is linked once");
        // Every redirect pointed the stub at the body.
        assert!(
            s.redirects
                .lock()
                .unwrap()
                .iter()
                .all(|&r| r == (STUB, BODY))
        );
        s.session.end();
    });
}

/// Two threads first-call an entry whose body fails: one materialization,
/// both get the root cause, the stub is never redirected.
#[test]
fn concurrent_first_calls_of_a_failing_body_both_fail() {
    model(|| {
        let s = setup(Some("undefined symbol `frobnicate`"), false);
        let t = {
            let lazy = s.lazy.clone();
            loom::thread::spawn(move || lazy.resolve(TRAMPOLINE).unwrap_err())
        };
        let mine = s.lazy.resolve(TRAMPOLINE).unwrap_err();
        let theirs = t.join().unwrap();
        for err in [mine, theirs] {
            assert_eq!(
                err.root_cause().to_string(),
                "undefined symbol `frobnicate`",
                "{err}"
            );
        }
        assert_eq!(s.runs.load(SeqCst), 1);
        assert!(s.redirects.lock().unwrap().is_empty());
        assert_eq!(s.lazy.linked(), 0);
        s.session.end();
    });
}

/// A hot swap racing a first call: the call returns the body (it started
/// before the swap) or the body it swapped to, and the stub ends up at the
/// swapped body — a resolution finishing late never undoes a hot swap.
#[test]
fn hot_swap_racing_a_first_call_is_never_undone() {
    model(|| {
        let s = setup(None, false);
        let t = {
            let lazy = s.lazy.clone();
            loom::thread::spawn(move || lazy.resolve(TRAMPOLINE).unwrap())
        };
        s.lazy.redirect(&s.dylib, &s.entry, SWAPPED).unwrap();
        let address = t.join().unwrap();
        assert_eq!(address, BODY, "resolve returns the linked body");
        let redirects = s.redirects.lock().unwrap().clone();
        assert_eq!(
            redirects.last(),
            Some(&(STUB, SWAPPED)),
            "the hot swap was undone: {redirects:x?}"
        );
        s.session.end();
    });
}

/// A first call racing the removal of the tracker that owns the entry:
/// it links and returns the body, or fails cleanly; it never hangs, and
/// the entry is gone afterwards.
#[test]
fn first_call_racing_tracker_removal_completes_or_fails() {
    model(|| {
        let Setup {
            session,
            dylib,
            entry,
            lazy,
            runs,
            redirects,
            tracker,
            ..
        } = setup(None, true);
        let tracker = tracker.expect("setup was asked for a tracker");
        let order = SearchOrder::new().with(&dylib, DylibLookup::All);
        let set = LookupSet::required([entry]);
        let remover = loom::thread::spawn(move || tracker.remove().unwrap());
        match lazy.resolve(TRAMPOLINE) {
            Ok(address) => {
                assert_eq!(address, BODY);
                assert!(redirects.lock().unwrap().contains(&(STUB, BODY)));
            }
            Err(e) => assert!(e.to_string().contains("trampoline"), "{e}"),
        }
        remover.join().unwrap();
        assert!(runs.load(SeqCst) <= 1);
        assert!(
            session
                .lookup(&order, &set, RequiredState::Ready)
                .wait()
                .is_err()
        );
        assert!(
            lazy.resolve(TRAMPOLINE).is_err(),
            "removed entries stay gone"
        );
        session.end();
    });
}
