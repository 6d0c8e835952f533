//! API contracts of kiln issue 8 §1: errors that keep their chain and name
//! every symbol, trackers whose closures run under no engine lock and whose
//! responsibilities follow transfers, and removal of symbols and generators.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use kiln_engine::*;

#[derive(Default)]
struct Manager {
    removed: Mutex<Vec<ResourceKey>>,
    transferred: Mutex<Vec<(ResourceKey, ResourceKey)>>,
    held: Mutex<Vec<ResourceKey>>,
}

impl ResourceManager for Manager {
    fn remove_resources(&self, key: ResourceKey) -> Result<()> {
        self.removed.lock().unwrap().push(key);
        self.held.lock().unwrap().retain(|k| *k != key);
        Ok(())
    }
    fn transfer_resources(&self, dst: ResourceKey, src: ResourceKey) {
        self.transferred.lock().unwrap().push((dst, src));
        for k in self.held.lock().unwrap().iter_mut() {
            if *k == src {
                *k = dst;
            }
        }
    }
}

// ----- item 10: errors keep their chain ---------------------------------

#[derive(Debug, thiserror::Error)]
#[error("the host's own error: code {0}")]
struct HostError(u32);

#[test]
fn a_failure_keeps_its_cause_in_the_source_chain_typed() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let f = s.intern("f");
    d.define(unit("u", &[(&f, X)], |r| {
        r.fail(Error::external(HostError(7)))
    }))
    .unwrap();
    let err = lookup(&s, &[&d], &[&f], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    // source() reaches the host's error, with its type.
    let mut found = None;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = next {
        if let Some(h) = e.downcast_ref::<HostError>() {
            found = Some(h.0);
        }
        next = e.source();
    }
    assert_eq!(
        found,
        Some(7),
        "no HostError in the source chain of {err:?}"
    );
    assert_eq!(err.downcast_ref::<HostError>().map(|h| h.0), Some(7));
    assert!(matches!(err.root_cause(), Error::External(_)));
    s.end();
}

#[test]
fn a_generator_error_is_the_source_of_the_lookup_error() {
    struct Failing;
    impl Generator for Failing {
        fn generate(&self, req: GenerateRequest) {
            req.complete(Err(Error::external(HostError(3))));
        }
    }
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    d.add_generator(Failing).unwrap();
    let f = s.intern("f");
    let err = lookup(&s, &[&d], &[&f], RequiredState::Ready)
        .wait()
        .unwrap_err();
    let source = std::error::Error::source(&err).expect("Generator has a source");
    assert!(source.to_string().contains("code 3"), "{source}");
    assert_eq!(err.downcast_ref::<HostError>().map(|h| h.0), Some(3));
    s.end();
}

// ----- item 7: no user closure under an engine lock ---------------------

#[test]
fn removing_the_tracker_inside_with_resource_key_does_not_deadlock() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let m = Arc::new(Manager::default());
    s.register_resource_manager(m.clone());
    let rt = d.create_tracker().unwrap();
    let (rt2, m2) = (rt.clone(), m.clone());
    let result = must_return("remove inside with_resource_key", move || {
        rt2.with_resource_key(|key| {
            m2.held.lock().unwrap().push(key);
            rt2.remove()
        })
    });
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    assert!(rt.is_removed());
    // The managers ran once the closure returned, and saw what it registered.
    assert_eq!(*m.removed.lock().unwrap(), vec![rt.key()]);
    assert!(m.held.lock().unwrap().is_empty());
    s.end();
}

#[test]
fn with_resource_key_may_use_the_engine_and_query_its_tracker() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let rt = d.create_tracker().unwrap();
    let f = s.intern("f");
    let (rt2, d2, f2) = (rt.clone(), d.clone(), f.clone());
    let found = must_return("engine calls inside with_resource_key", move || {
        rt2.with_resource_key(|_| {
            assert!(!rt2.is_removed());
            d2.define_with(emitting(&f2, 0x10, vec![]), &rt2).unwrap();
            let other = d2.create_tracker().unwrap();
            other.remove().unwrap();
            d2.lookup_ready(&["f"]).unwrap().get(&f2).map(|d| d.address)
        })
    });
    assert_eq!(found.unwrap(), Some(0x10));
    s.end();
}

#[test]
fn removal_from_another_thread_waits_for_a_running_closure() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let m = Arc::new(Manager::default());
    s.register_resource_manager(m.clone());
    let rt = d.create_tracker().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (rt2, m2) = (rt.clone(), m.clone());
    let closure = std::thread::spawn(move || {
        rt2.with_resource_key(|key| {
            entered_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // Registered after the removal started: still seen by it.
            m2.held.lock().unwrap().push(key);
        })
    });
    entered_rx.recv().unwrap();
    let rt3 = rt.clone();
    let remover = std::thread::spawn(move || rt3.remove());
    // Whatever the interleaving, the removal's managers run after the
    // closure, so they free what it registered.
    go_tx.send(()).unwrap();
    closure.join().unwrap().unwrap();
    remover.join().unwrap().unwrap();
    assert_eq!(*m.removed.lock().unwrap(), vec![rt.key()]);
    assert!(m.held.lock().unwrap().is_empty(), "a resource was stranded");
    s.end();
}

// ----- item 6: a responsibility's tracker follows transfers -------------

#[test]
fn transfer_during_materialization_moves_the_units_tracker_too() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let m = Arc::new(Manager::default());
    s.register_resource_manager(m.clone());
    let (src, dst) = (d.create_tracker().unwrap(), d.create_tracker().unwrap());
    let f = s.intern("f");
    let (f2, src2, dst2, m2) = (f.clone(), src.clone(), dst.clone(), m.clone());
    let recorded = Arc::new(Mutex::new(None));
    let rec = recorded.clone();
    d.define_with(
        unit("moves", &[(&f, X)], move |r| {
            src2.transfer_to(&dst2).unwrap();
            // The unit records its resources after the transfer.
            let key = r.tracker().with_resource_key(|key| {
                m2.held.lock().unwrap().push(key);
                key
            });
            *rec.lock().unwrap() = Some(key.clone());
            r.resolve(&[(f2.clone(), def(0x20))]).unwrap();
            r.emit(vec![]).unwrap();
        }),
        &src,
    )
    .unwrap();
    let found = lookup(&s, &[&d], &[&f], RequiredState::Ready).wait();
    assert_eq!(found.unwrap().get(&f).map(|d| d.address), Some(0x20));
    let key = recorded.lock().unwrap().take().unwrap();
    assert_eq!(
        key.unwrap(),
        dst.key(),
        "resources filed under the destination"
    );
    assert!(src.is_removed());
    // Removing the destination frees them.
    dst.remove().unwrap();
    assert!(m.held.lock().unwrap().is_empty());
    assert_eq!(d.symbol_state(&f), None);
    s.end();
}

#[test]
fn a_unit_still_running_fails_when_its_transferred_tracker_is_removed() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let (src, dst) = (d.create_tracker().unwrap(), d.create_tracker().unwrap());
    let f = s.intern("f");
    let (park, parked) = slot::<Responsibility>();
    d.define_with(
        unit("parks", &[(&f, X)], move |r| {
            *park.lock().unwrap() = Some(r)
        }),
        &src,
    )
    .unwrap();
    let waiting = lookup(&s, &[&d], &[&f], RequiredState::Ready);
    let r = loop {
        if let Some(r) = parked.lock().unwrap().take() {
            break r;
        }
        std::thread::yield_now();
    };
    src.transfer_to(&dst).unwrap();
    assert_eq!(r.tracker().key(), dst.key());
    assert!(!r.tracker().is_removed());
    dst.remove().unwrap();
    assert!(r.tracker().is_removed());
    assert!(matches!(
        r.tracker().with_resource_key(|k| k),
        Err(Error::TrackerRemoved { .. })
    ));
    let err = waiting.wait_timeout(Duration::from_secs(30)).unwrap_err();
    assert!(err.to_string().contains("tracker"), "{err}");
    drop(r);
    s.end();
}

// ----- item 3: a failure names every symbol it could not deliver --------

#[test]
fn a_failed_unit_fails_the_lookup_naming_every_symbol() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (foo, bar) = (s.intern("foo"), s.intern("bar"));
    d.define(unit("two", &[(&foo, X), (&bar, X)], |r| {
        r.fail(Error::msg("the compiler crashed"))
    }))
    .unwrap();
    let err = lookup(&s, &[&d], &[&foo, &bar], RequiredState::Ready)
        .wait()
        .unwrap_err();
    let Error::Failed { symbols, .. } = &err else {
        panic!("{err:?}")
    };
    let names: Vec<&str> = symbols.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["foo", "bar"], "{err}");
    assert!(symbols.iter().all(|q| &*q.dylib == "d"));
    assert_eq!(err.root_cause().to_string(), "the compiler crashed");
    // A later lookup of both (the symbols are failed already) says the same.
    let again = lookup(&s, &[&d], &[&foo, &bar], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    s.end();
}

#[test]
fn failures_in_two_dylibs_are_named_with_their_dylibs() {
    let s = inplace();
    let (a, b) = (s.create_dylib("a").unwrap(), s.create_dylib("b").unwrap());
    let (f, g) = (s.intern("f"), s.intern("g"));
    let (park, parked) = slot::<Responsibility>();
    let park2 = park.clone();
    a.define(unit("ua", &[(&f, X)], move |r| {
        *park.lock().unwrap() = Some(r)
    }))
    .unwrap();
    // g depends on f: emitted, then failed through f.
    b.define(emitting(&g, 2, vec![(a.clone(), vec![f.clone()])]))
        .unwrap();
    let _ = park2;
    let waiting = s.lookup(
        &SearchOrder::new()
            .with(&a, DylibLookup::All)
            .with(&b, DylibLookup::All),
        &LookupSet::required([f.clone(), g.clone()]),
        RequiredState::Ready,
    );
    let r = parked.lock().unwrap().take().expect("f's unit started");
    r.fail(Error::msg("no f"));
    let err = waiting.wait().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("f in dylib 'a'") && text.contains("g in dylib 'b'"),
        "{text}"
    );
    assert_eq!(err.root_cause().to_string(), "no f");
    s.end();
}

// ----- item 11: removing named symbols and generators -------------------

#[test]
fn remove_symbols_is_all_or_nothing_and_lists_every_obstacle() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let (lazy, lazy2, ready, busy, nowhere) = (
        s.intern("lazy"),
        s.intern("lazy2"),
        s.intern("ready"),
        s.intern("busy"),
        s.intern("nowhere"),
    );
    let lazy_unit = unit("lazy", &[(&lazy, X), (&lazy2, X)], |r| {
        r.fail(Error::msg("must not run"))
    });
    let discarded = lazy_unit.discarded.clone();
    d.define(lazy_unit).unwrap();
    d.define_absolute([(ready.clone(), def(0x30))]).unwrap();
    let (park, parked) = slot::<Responsibility>();
    d.define(unit("busy", &[(&busy, X)], move |r| {
        *park.lock().unwrap() = Some(r)
    }))
    .unwrap();
    let waiting = lookup(&s, &[&d], &[&busy], RequiredState::Ready);
    let r = loop {
        if let Some(r) = parked.lock().unwrap().take() {
            break r;
        }
        std::thread::yield_now();
    };
    let err = d
        .remove_symbols(&[lazy.clone(), busy.clone(), ready.clone(), nowhere.clone()])
        .unwrap_err();
    let Error::SymbolsNotRemoved {
        materializing,
        missing,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(materializing, std::slice::from_ref(&busy), "{err}");
    assert_eq!(missing, std::slice::from_ref(&nowhere), "{err}");
    // Nothing was removed.
    assert_eq!(d.symbol_state(&lazy), Some(SymbolState::Lazy));
    assert_eq!(d.symbol_state(&ready), Some(SymbolState::Ready));
    // Without the obstacles, all go.
    d.remove_symbols(&[lazy.clone(), ready.clone()]).unwrap();
    assert_eq!(d.symbol_state(&lazy), None);
    assert_eq!(d.symbol_state(&ready), None);
    assert_eq!(d.symbol_state(&lazy2), Some(SymbolState::Lazy));
    for gone in [&lazy, &ready] {
        let e = lookup(&s, &[&d], &[gone], RequiredState::Ready)
            .wait()
            .unwrap_err();
        assert!(matches!(e, Error::SymbolsNotFound { .. }), "{e}");
    }
    // The lazy unit was told (discard runs as a task).
    while discarded.lock().unwrap().is_empty() {
        std::thread::yield_now();
    }
    assert_eq!(*discarded.lock().unwrap(), vec!["lazy".to_string()]);
    // A removed name can be defined again.
    d.define_absolute([(lazy.clone(), def(0x31))]).unwrap();
    assert_eq!(
        d.lookup_ready(&["lazy"])
            .unwrap()
            .get(&lazy)
            .map(|x| x.address),
        Some(0x31)
    );
    r.resolve(&[(busy.clone(), def(0x40))]).unwrap();
    r.emit(vec![]).unwrap();
    waiting.wait().unwrap();
    s.end();
}

/// Holds its first call; later calls define nothing.
struct HoldsFirst {
    held: Arc<Mutex<Option<GenerateRequest>>>,
    calls: Arc<AtomicUsize>,
}

impl Generator for HoldsFirst {
    fn generate(&self, req: GenerateRequest) {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            *self.held.lock().unwrap() = Some(req);
        }
    }
}

#[test]
fn removing_a_generator_fails_the_lookups_queued_on_it() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let held = Arc::new(Mutex::new(None));
    let calls = Arc::new(AtomicUsize::new(0));
    let id = d
        .add_generator(HoldsFirst {
            held: held.clone(),
            calls: calls.clone(),
        })
        .unwrap();
    let (foo, bar, qux) = (s.intern("foo"), s.intern("bar"), s.intern("qux"));
    let first = lookup(&s, &[&d], &[&foo], RequiredState::Ready);
    let call = held.lock().unwrap().take().expect("first call held");
    let queued: Vec<Lookup> = [&bar, &qux]
        .iter()
        .map(|n| lookup(&s, &[&d], &[n], RequiredState::Ready))
        .collect();
    d.remove_generator(id).unwrap();
    for q in queued {
        let e = q.wait_timeout(Duration::from_secs(30)).unwrap_err();
        assert!(matches!(e, Error::GeneratorRemoved { .. }), "{e}");
        assert!(e.to_string().contains("removed"), "{e}");
    }
    // The call in flight finishes; what it defined stays.
    call.dylib()
        .define_absolute([(foo.clone(), def(0x50))])
        .unwrap();
    call.complete(Ok(()));
    let found = first.wait_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(found.get(&foo).map(|x| x.address), Some(0x50));
    // Later searches pass over it: not asked again.
    let e = lookup(&s, &[&d], &[&bar], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::SymbolsNotFound { .. }), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(d.remove_generator(id), Err(Error::Usage(_))));
    s.end();
}

// ----- item 7 (audit): discard runs under no engine lock ----------------

/// What `HookedWeak::discard` runs.
type DiscardHook = Arc<dyn Fn(&Dylib, &SymbolName) + Send + Sync>;

/// Weak definitions of `names`; its `discard` runs a hook (which may use
/// the engine) and records the name.
struct HookedWeak {
    names: Vec<SymbolName>,
    hook: DiscardHook,
    discarded: Arc<Mutex<Vec<String>>>,
}

impl MaterializationUnit for HookedWeak {
    fn name(&self) -> &str {
        "hooked-weak"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.names
            .iter()
            .map(|n| (n.clone(), X | SymbolFlags::WEAK))
            .collect()
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        r.fail(Error::msg("not used"));
    }
    fn discard(&mut self, dylib: &Dylib, name: &SymbolName) {
        self.discarded.lock().unwrap().push(name.to_string());
        (self.hook)(dylib, name);
    }
}

#[test]
fn a_discard_may_cause_another_discard_of_its_own_unit() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (w1, w2) = (s.intern("w1"), s.intern("w2"));
    let discarded = Arc::new(Mutex::new(Vec::new()));
    let w2_hook = w2.clone();
    d.define(HookedWeak {
        names: vec![w1.clone(), w2.clone()],
        // Discarding w1 overrides w2 too: a second discard of this unit,
        // dispatched (in place) while the first one runs.
        hook: Arc::new(move |dylib, name| {
            if name.as_str() == "w1" {
                dylib
                    .define_absolute([(w2_hook.clone(), def(0x62))])
                    .unwrap();
            }
        }),
        discarded: discarded.clone(),
    })
    .unwrap();
    let (d2, w1_strong) = (d.clone(), w1.clone());
    must_return("nested discard", move || {
        d2.define_absolute([(w1_strong, def(0x61))]).unwrap()
    });
    assert_eq!(*discarded.lock().unwrap(), vec!["w1", "w2"]);
    let found = d.lookup_ready(&["w1", "w2"]).unwrap();
    assert_eq!(found.get(&w1).map(|x| x.address), Some(0x61));
    assert_eq!(found.get(&w2).map(|x| x.address), Some(0x62));
    s.end();
}

// ----- item 7 (audit): the lazy redirector runs under no engine lock ----

const TRAMPOLINE: u64 = 0x1000;
const STUB: u64 = 0x2000;
const BODY: u64 = 0x3000;
const SWAPPED: u64 = 0x4000;

struct OneTrampoline;

impl TrampolineEmitter for OneTrampoline {
    fn emit_trampolines(&self, _: &ResourceTracker, _: usize) -> Result<Vec<u64>> {
        Ok(vec![TRAMPOLINE])
    }
}

/// Records redirects; the first one hot-swaps the entry (a host reacting to
/// the link by pinning another body), re-entering the manager. The test
/// empties `lazy` at its end: the manager holds this redirector, so the
/// handles in it would otherwise keep each other alive.
struct SwapOnFirstLink {
    lazy: Arc<Mutex<Option<(LazyReexports, Dylib, SymbolName)>>>,
    redirects: Arc<Mutex<Vec<u64>>>,
}

impl Redirector for SwapOnFirstLink {
    fn create_stubs(&self, _: &ResourceTracker, _: &[u64]) -> Result<Vec<u64>> {
        Ok(vec![STUB])
    }
    fn redirect(&self, _stub: u64, target: u64) -> Result<()> {
        let first = {
            let mut r = self.redirects.lock().unwrap();
            r.push(target);
            r.len() == 1
        };
        let swap = if first {
            self.lazy.lock().unwrap().clone()
        } else {
            None
        };
        if let Some((lazy, dylib, entry)) = swap {
            lazy.redirect(&dylib, &entry, SWAPPED)?;
        }
        Ok(())
    }
}

#[test]
fn a_redirector_may_reenter_the_lazy_manager_and_the_latest_target_wins() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (body, entry) = (s.intern("body"), s.intern("entry"));
    let fc = X | SymbolFlags::CALLABLE;
    d.define_absolute([(body.clone(), SymbolDef::new(BODY, fc))])
        .unwrap();
    let cell = Arc::new(Mutex::new(None));
    let redirects = Arc::new(Mutex::new(Vec::new()));
    let lazy = LazyReexports::new(
        &s,
        OneTrampoline,
        SwapOnFirstLink {
            lazy: cell.clone(),
            redirects: redirects.clone(),
        },
    );
    let alias = Alias {
        name: entry.clone(),
        target: body,
        flags: fc,
    };
    d.define(lazy.reexports(&d, [alias]).unwrap()).unwrap();
    assert_eq!(
        d.lookup_ready(&["entry"])
            .unwrap()
            .get(&entry)
            .map(|x| x.address),
        Some(STUB)
    );
    *cell.lock().unwrap() = Some((lazy.clone(), d.clone(), entry.clone()));
    let lazy2 = lazy.clone();
    let resolved = must_return("redirect inside redirect", move || {
        lazy2.resolve(TRAMPOLINE)
    });
    assert_eq!(resolved.unwrap(), BODY);
    // The host's swap came last: the stub ends at it.
    assert_eq!(redirects.lock().unwrap().last(), Some(&SWAPPED));
    cell.lock().unwrap().take();
    s.end();
}

#[test]
fn requiring_side_effects_only_symbols_names_them_all() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (p, q, r) = (s.intern("p"), s.intern("q"), s.intern("r"));
    let se = SymbolFlags::SIDE_EFFECTS_ONLY | X;
    d.define(unit("se", &[(&p, se), (&q, se), (&r, X)], |r| {
        r.fail(Error::msg("not needed"))
    }))
    .unwrap();
    let err = lookup(&s, &[&d], &[&p, &r, &q], RequiredState::Ready)
        .wait()
        .unwrap_err();
    let Error::SideEffectsOnlyRequired { names } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(names, &[p.clone(), q.clone()], "{err}");
    s.end();
}

thread_local! {
    static STARTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Every worker of `WorkerPool::with_start` runs the hook, on its own
/// thread, before any task: a task never sees a worker not set up.
#[test]
fn every_pool_worker_runs_the_start_hook_before_its_tasks() {
    let started = Arc::new(AtomicUsize::new(0));
    let hook = started.clone();
    let pool = WorkerPool::with_start(3, move || {
        STARTED.with(|s| s.set(true));
        hook.fetch_add(1, Ordering::SeqCst);
    });
    let (tx, rx) = mpsc::channel();
    for _ in 0..64 {
        let tx = tx.clone();
        pool.dispatch(Task::new("probe", move || {
            let _ = tx.send(STARTED.with(|s| s.get()));
        }));
    }
    drop(tx);
    let seen: Vec<bool> = rx.iter().collect();
    assert_eq!(seen.len(), 64);
    assert!(seen.iter().all(|&s| s), "a task ran on a worker not set up");
    drop(pool);
    assert_eq!(started.load(Ordering::SeqCst), 3, "one start per worker");
}
