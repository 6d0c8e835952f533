//! Generators, resource trackers, removal, and the dispatcher's behaviour
//! under blocking waits (kiln issue 2 §3).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kiln_engine::*;

/// Defines `gen{i}` names on demand, recording how it is called.
struct Gen {
    calls: Arc<AtomicUsize>,
    inside: Arc<AtomicUsize>,
    max_inside: Arc<AtomicUsize>,
    delay: Duration,
}

impl Gen {
    fn new(delay: Duration) -> Self {
        Gen {
            calls: Arc::default(),
            inside: Arc::default(),
            max_inside: Arc::default(),
            delay,
        }
    }
}

impl Generator for Gen {
    fn generate(&self, req: GenerateRequest) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inside.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let session = req.dylib().session();
        let defs: Vec<_> = req
            .names()
            .iter()
            .filter_map(|n| {
                let i: u64 = n.as_str().strip_prefix("gen")?.parse().ok()?;
                Some((session.intern(n.as_str()), def(0x4000_0000 + 16 * i)))
            })
            .collect();
        if !defs.is_empty() {
            req.dylib().define(absolute_symbols(defs)).unwrap();
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn generator_defines_on_demand_and_remembers_misses_until_a_new_definition() {
    let s = inplace();
    let d = s.create_dylib("gen").unwrap();
    let g = Gen::new(Duration::ZERO);
    let calls = g.calls.clone();
    d.add_generator(g).unwrap();
    let (g7, nope, other) = (s.intern("gen7"), s.intern("nope"), s.intern("other"));
    let found = lookup(&s, &[&d], &[&g7], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&g7).unwrap().address, 0x4000_0000 + 16 * 7);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Now Ready: the generator is not asked again.
    lookup(&s, &[&d], &[&g7], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A miss is asked once, then remembered...
    assert!(
        lookup(&s, &[&d], &[&nope], RequiredState::Ready)
            .wait()
            .is_err()
    );
    assert!(
        lookup(&s, &[&d], &[&nope], RequiredState::Ready)
            .wait()
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // ...until the dylib gains a definition.
    d.define_absolute([(other, def(1))]).unwrap();
    assert!(
        lookup(&s, &[&d], &[&nope], RequiredState::Ready)
            .wait()
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_serialized_generator_never_runs_twice_at_once() {
    let s = Session::builder().dispatcher(WorkerPool::new(4)).build();
    let d = s.create_dylib("gen").unwrap();
    let g = Gen::new(Duration::from_millis(20));
    let (calls, max_inside) = (g.calls.clone(), g.max_inside.clone());
    d.add_generator(g).unwrap();
    let lookups: Vec<_> = (0..4)
        .map(|i| {
            let n = s.intern(&format!("gen{i}"));
            lookup(&s, &[&d], &[&n], RequiredState::Ready)
        })
        .collect();
    for l in lookups {
        l.wait_timeout(Duration::from_secs(10)).unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(max_inside.load(Ordering::SeqCst), 1);
    s.end();
}

struct ConcurrentGen(Gen);
impl Generator for ConcurrentGen {
    fn generate(&self, req: GenerateRequest) {
        self.0.generate(req)
    }
    fn is_concurrent(&self) -> bool {
        true
    }
}

#[test]
fn a_concurrent_generator_may_run_in_parallel() {
    let s = Session::builder().dispatcher(WorkerPool::new(4)).build();
    let d = s.create_dylib("gen").unwrap();
    let g = Gen::new(Duration::from_millis(100));
    let max_inside = g.max_inside.clone();
    d.add_generator(ConcurrentGen(g)).unwrap();
    let lookups: Vec<_> = (0..3)
        .map(|i| {
            let n = s.intern(&format!("gen{i}"));
            lookup(&s, &[&d], &[&n], RequiredState::Ready)
        })
        .collect();
    for l in lookups {
        l.wait_timeout(Duration::from_secs(10)).unwrap();
    }
    assert!(max_inside.load(Ordering::SeqCst) > 1);
    s.end();
}

/// Completes later, from another thread.
struct AsyncGen;
impl Generator for AsyncGen {
    fn generate(&self, req: GenerateRequest) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            let s = req.dylib().session();
            let name = s.intern("later");
            req.dylib().define(emitting(&name, 0x1a, vec![])).unwrap();
            req.complete(Ok(()));
        });
    }
}

#[test]
fn a_generator_may_complete_later() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    d.add_generator(AsyncGen).unwrap();
    let later = s.intern("later");
    let found = lookup(&s, &[&d], &[&later], RequiredState::Ready)
        .wait_timeout(Duration::from_secs(10))
        .unwrap();
    assert_eq!(found.get(&later).unwrap().address, 0x1a);
}

struct FailingGen;
impl Generator for FailingGen {
    fn generate(&self, req: GenerateRequest) {
        req.complete(Err(Error::msg("archive libfoo.a is corrupt")));
    }
}

#[test]
fn a_generator_error_fails_its_lookup_with_that_error() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    d.add_generator(FailingGen).unwrap();
    let x = s.intern("x");
    let err = lookup(&s, &[&d], &[&x], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::Generator { .. }));
    assert_eq!(err.root_cause().to_string(), "archive libfoo.a is corrupt");
}

/// Answers with `complete_with`: a unit of what it found, clashing on
/// purpose for `taken`.
struct CompletingGen {
    taken: SymbolName,
    results: Arc<Mutex<Vec<bool>>>,
}
impl Generator for CompletingGen {
    fn generate(&self, req: GenerateRequest) {
        let mut defs: Vec<_> = req.names().iter().map(|n| (n.clone(), def(0x70))).collect();
        if req.names().contains(&self.taken) {
            // Defining `taken` twice in one unit is a duplicate.
            defs.push((self.taken.clone(), def(0x71)));
        }
        let result = req.complete_with(absolute_symbols(defs));
        self.results.lock().unwrap().push(result.is_ok());
    }
}

#[test]
fn complete_with_defines_and_finishes_in_one_call() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (x, taken) = (s.intern("x"), s.intern("taken"));
    let results = Arc::new(Mutex::new(Vec::new()));
    d.add_generator(CompletingGen {
        taken: taken.clone(),
        results: results.clone(),
    })
    .unwrap();
    let found = lookup(&s, &[&d], &[&x], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&x).unwrap().address, 0x70);
    let err = lookup(&s, &[&d], &[&taken], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::Generator { .. }), "{err}");
    assert!(
        err.root_cause().to_string().contains("taken"),
        "the definition error is the cause: {err}"
    );
    assert_eq!(*results.lock().unwrap(), vec![true, false]);
    // Works the same while the mailbox is busy: from a pool thread.
    let pool = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = pool.create_dylib("d").unwrap();
    d.add_generator(CompletingGen {
        taken: pool.intern("taken"),
        results: Arc::default(),
    })
    .unwrap();
    let names: Vec<_> = (0..50).map(|i| pool.intern(&format!("n{i}"))).collect();
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            pool.lookup(
                &order(&[&d]),
                &LookupSet::required([n.clone()]),
                RequiredState::Ready,
            )
        })
        .collect();
    for h in handles {
        assert_eq!(h.wait().unwrap().iter().next().unwrap().1.address, 0x70);
    }
    pool.end();
    s.end();
}

/// Looks a symbol up in another dylib before defining (blocking).
struct LookingGen(Dylib);
impl Generator for LookingGen {
    fn generate(&self, req: GenerateRequest) {
        let s = req.dylib().session();
        let base = s.intern("base");
        let found = s
            .lookup(
                &order(&[&self.0]),
                &LookupSet::required([base.clone()]),
                RequiredState::Ready,
            )
            .wait()
            .unwrap();
        let derived = s.intern("derived");
        req.dylib()
            .define_absolute([(derived, def(found.get(&base).unwrap().address + 1))])
            .unwrap();
    }
}

#[test]
fn a_generator_may_itself_look_symbols_up() {
    for s in [
        inplace(),
        Session::builder().dispatcher(WorkerPool::new(1)).build(),
    ] {
        let (d, other) = (
            s.create_dylib("d").unwrap(),
            s.create_dylib("other").unwrap(),
        );
        let base = s.intern("base");
        other.define(emitting(&base, 0x100, vec![])).unwrap();
        d.add_generator(LookingGen(other.clone())).unwrap();
        let derived = s.intern("derived");
        let found = lookup(&s, &[&d], &[&derived], RequiredState::Ready)
            .wait_timeout(Duration::from_secs(10))
            .unwrap();
        assert_eq!(found.get(&derived).unwrap().address, 0x101);
        s.end();
    }
}

// ----- trackers -----------------------------------------------------------

#[derive(Default)]
struct Manager {
    removed: Mutex<Vec<ResourceKey>>,
    transferred: Mutex<Vec<(ResourceKey, ResourceKey)>>,
}

impl ResourceManager for Manager {
    fn remove_resources(&self, key: ResourceKey) -> Result<()> {
        self.removed.lock().unwrap().push(key);
        Ok(())
    }
    fn transfer_resources(&self, dst: ResourceKey, src: ResourceKey) {
        self.transferred.lock().unwrap().push((dst, src));
    }
}

#[test]
fn removing_a_tracker_before_materialization() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let m = Arc::new(Manager::default());
    s.register_resource_manager(m.clone());
    let rt = d.create_tracker().unwrap();
    let f = s.intern("f");
    d.define_with(emitting(&f, 1, vec![]), &rt).unwrap();
    rt.remove().unwrap();
    assert!(rt.is_removed());
    assert_eq!(*m.removed.lock().unwrap(), vec![rt.key()]);
    let err = lookup(&s, &[&d], &[&f], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::SymbolsNotFound { .. }), "{err}");
    // A removed tracker cannot define.
    assert!(matches!(
        d.define_with(emitting(&f, 1, vec![]), &rt),
        Err(Error::TrackerRemoved { .. })
    ));
    // The name is free again.
    d.define(emitting(&f, 2, vec![])).unwrap();
    assert_eq!(
        lookup(&s, &[&d], &[&f], RequiredState::Ready)
            .wait()
            .unwrap()
            .get(&f)
            .unwrap()
            .address,
        2
    );
}

#[test]
fn removing_a_tracker_during_materialization_fails_waiters_and_the_unit() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let (d, other) = (
        s.create_dylib("d").unwrap(),
        s.create_dylib("other").unwrap(),
    );
    let rt = d.create_tracker().unwrap();
    let (f, g) = (s.intern("f"), s.intern("g"));
    let (park, parked) = slot::<Responsibility>();
    d.define_with(
        unit("f", &[(&f, X)], move |r| *park.lock().unwrap() = Some(r)),
        &rt,
    )
    .unwrap();
    // g, in another dylib and tracker, is emitted waiting on f.
    other
        .define(emitting(&g, 2, vec![(d.clone(), vec![f.clone()])]))
        .unwrap();
    let wait_f = lookup(&s, &[&d], &[&f], RequiredState::Ready);
    let wait_g = lookup(&s, &[&other], &[&g], RequiredState::Ready);
    let r = loop {
        if let Some(r) = parked.lock().unwrap().take() {
            break r;
        }
        std::thread::yield_now();
    };
    while other.symbol_state(&g) != Some(SymbolState::Emitted) {
        std::thread::yield_now();
    }
    rt.remove().unwrap();
    let err_f = wait_f.wait_timeout(Duration::from_secs(10)).unwrap_err();
    assert!(err_f.to_string().contains("tracker"), "{err_f}");
    let err_g = wait_g.wait_timeout(Duration::from_secs(10)).unwrap_err();
    assert!(err_g.to_string().contains("tracker"), "{err_g}");
    // The running unit learns of it.
    let res = r.resolve(&[(f.clone(), def(1))]).unwrap_err();
    assert!(matches!(res, Error::TrackerRemoved { .. }));
    assert!(matches!(r.emit(vec![]), Err(Error::TrackerRemoved { .. })));
    s.end();
}

#[test]
fn removing_a_tracker_after_materialization_unpublishes_and_frees() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let m = Arc::new(Manager::default());
    s.register_resource_manager(m.clone());
    let rt = d.create_tracker().unwrap();
    let f = s.intern("f");
    d.define_with(emitting(&f, 1, vec![]), &rt).unwrap();
    lookup(&s, &[&d], &[&f], RequiredState::Ready)
        .wait()
        .unwrap();
    rt.remove().unwrap();
    assert_eq!(d.symbol_state(&f), None);
    assert!(
        lookup(&s, &[&d], &[&f], RequiredState::Ready)
            .wait()
            .is_err()
    );
    assert_eq!(m.removed.lock().unwrap().len(), 1);
}

#[test]
fn with_resource_key_refuses_after_removal() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let rt = d.create_tracker().unwrap();
    assert_eq!(rt.with_resource_key(|k| k).unwrap(), rt.key());
    rt.remove().unwrap();
    assert!(rt.with_resource_key(|k| k).is_err());
}

#[test]
fn transfer_moves_symbols_and_resources() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let m = Arc::new(Manager::default());
    s.register_resource_manager(m.clone());
    let (src, dst) = (d.create_tracker().unwrap(), d.create_tracker().unwrap());
    let f = s.intern("f");
    d.define_with(emitting(&f, 1, vec![]), &src).unwrap();
    src.transfer_to(&dst).unwrap();
    assert!(src.is_removed());
    assert_eq!(*m.transferred.lock().unwrap(), vec![(dst.key(), src.key())]);
    lookup(&s, &[&d], &[&f], RequiredState::Ready)
        .wait()
        .unwrap();
    dst.remove().unwrap();
    assert_eq!(d.symbol_state(&f), None);
    let other = s.create_dylib("other").unwrap();
    assert!(matches!(
        dst.transfer_to(&other.default_tracker()),
        Err(Error::Usage(_))
    ));
}

#[test]
fn removing_a_dylib_fails_its_work_and_later_lookups() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let f = s.intern("f");
    let m = Arc::new(Manager::default());
    s.register_resource_manager(m.clone());
    d.define(emitting(&f, 1, vec![])).unwrap();
    lookup(&s, &[&d], &[&f], RequiredState::Ready)
        .wait()
        .unwrap();
    s.remove_dylib(&d).unwrap();
    assert!(!m.removed.lock().unwrap().is_empty());
    let err = lookup(&s, &[&d], &[&f], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::DylibRemoved(_)), "{err}");
    assert!(s.dylib("d").is_none());
    assert!(matches!(
        d.define(emitting(&f, 1, vec![])),
        Err(Error::DylibRemoved(_))
    ));
}

// ----- dispatcher and blocking waits ---------------------------------------

#[test]
fn a_chain_of_blocking_lookups_completes_on_a_one_thread_pool() {
    let s = Session::builder().dispatcher(WorkerPool::new(1)).build();
    let d = s.create_dylib("d").unwrap();
    const N: usize = 16;
    let names: Vec<SymbolName> = (0..N).map(|i| s.intern(&format!("c{i}"))).collect();
    for i in 0..N {
        let me = names[i].clone();
        let next = names.get(i + 1).cloned();
        let dd = d.clone();
        d.define(unit(&format!("c{i}"), &[(&names[i], X)], move |r| {
            // Inside the materializer: wait for the next link of the chain.
            if let Some(next) = next {
                let sess = dd.session();
                sess.lookup(
                    &order(&[&dd]),
                    &LookupSet::required([next]),
                    RequiredState::Ready,
                )
                .wait()
                .unwrap();
            }
            r.resolve(&[(me, def(i as u64))]).unwrap();
            r.emit(vec![]).unwrap();
        }))
        .unwrap();
    }
    let found = lookup(&s, &[&d], &[&names[0]], RequiredState::Ready)
        .wait_timeout(Duration::from_secs(20))
        .unwrap();
    assert_eq!(found.len(), 1);
    s.end();
}

#[test]
fn a_cycle_of_blocking_lookups_fails_with_the_cycle_named() {
    for threads in [1, 2] {
        let s = Session::builder()
            .dispatcher(WorkerPool::new(threads))
            .build();
        let (d1, d2) = (s.create_dylib("d1").unwrap(), s.create_dylib("d2").unwrap());
        let (a, b) = (s.intern("a"), s.intern("b"));
        let errors = Arc::new(Mutex::new(Vec::new()));
        for (me, other, mine, theirs) in [(&a, &b, &d1, &d2), (&b, &a, &d2, &d1)] {
            let (me2, other2, theirs2, errs) =
                (me.clone(), other.clone(), theirs.clone(), errors.clone());
            mine.define(unit(&format!("unit-{me}"), &[(me, X)], move |r| {
                let sess = theirs2.session();
                let res = sess
                    .lookup(
                        &order(&[&theirs2]),
                        &LookupSet::required([other2]),
                        RequiredState::Ready,
                    )
                    .wait();
                match res {
                    Ok(_) => {
                        r.resolve(&[(me2, def(1))]).unwrap();
                        r.emit(vec![]).unwrap();
                    }
                    Err(e) => {
                        errs.lock().unwrap().push(e.to_string());
                        r.fail(e);
                    }
                }
            }))
            .unwrap();
        }
        let res = lookup(&s, &[&d1, &d2], &[&a, &b], RequiredState::Ready)
            .wait_timeout(Duration::from_secs(20));
        let err = res.unwrap_err();
        let msgs = errors.lock().unwrap().clone();
        assert!(
            msgs.iter()
                .any(|m| m.contains("cycle") && m.contains("unit-a") && m.contains("unit-b")),
            "threads={threads}: {msgs:?} / {err}"
        );
        s.end();
    }
}

#[test]
fn end_fails_lookups_in_flight_and_refuses_later_work() {
    let s = Session::builder().dispatcher(WorkerPool::new(1)).build();
    let d = s.create_dylib("d").unwrap();
    let f = s.intern("f");
    let (park, _parked) = slot::<Responsibility>();
    d.define(unit("f", &[(&f, X)], move |r| {
        *park.lock().unwrap() = Some(r)
    }))
    .unwrap();
    let pending = lookup(&s, &[&d], &[&f], RequiredState::Ready);
    std::thread::sleep(Duration::from_millis(20));
    s.end();
    assert!(pending.wait_timeout(Duration::from_secs(10)).is_err());
    assert!(matches!(s.create_dylib("x"), Err(Error::SessionEnded)));
}
