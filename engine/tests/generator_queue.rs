//! Generators under contention (kiln issue 8 §1.1 and §1.8): a serialized
//! generator's queue always advances, whatever became of the lookup ahead;
//! concurrent generators never turn a race into a duplicate definition.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::*;
use kiln_engine::*;

/// Holds every request until the test answers it, so the test decides when
/// each generator call ends.
#[derive(Clone, Default)]
struct Holding {
    held: Arc<Mutex<Vec<GenerateRequest>>>,
}

impl Generator for Holding {
    fn generate(&self, req: GenerateRequest) {
        self.held.lock().unwrap().push(req);
    }
}

impl Holding {
    /// The names each held call asks for, oldest first.
    fn asked(&self) -> Vec<Vec<String>> {
        self.held
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.names().iter().map(|n| n.to_string()).collect())
            .collect()
    }

    /// Ends the oldest held call, defining `names` (absolute) first.
    fn answer(&self, names: &[&SymbolName]) {
        let req = self.held.lock().unwrap().remove(0);
        if !names.is_empty() {
            let defs = names
                .iter()
                .enumerate()
                .map(|(i, n)| ((*n).clone(), def(0x1000 + i as u64)));
            req.dylib().define(absolute_symbols(defs)).unwrap();
        }
        req.complete(Ok(()));
    }
}

fn names(s: &Session, list: &[&str]) -> Vec<SymbolName> {
    list.iter().map(|n| s.intern(n)).collect()
}

/// The shape: lookup 1 inside the generator, 2, 3 and 4 queued;
/// 1's call defines Bar, so when 3's turn comes it needs no generator —
/// and 4 must still get its turn.
#[test]
fn the_queue_advances_past_a_lookup_whose_names_were_defined_meanwhile() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let g = Holding::default();
    d.add_generator(g.clone()).unwrap();
    let [foo, bar, baz, qux] = names(&s, &["Foo", "Bar", "Baz", "Qux"]).try_into().unwrap();
    let l1 = lookup(&s, &[&d], &[&foo], RequiredState::Ready);
    let l2 = lookup(&s, &[&d], &[&baz], RequiredState::Ready);
    let l3 = lookup(&s, &[&d], &[&bar], RequiredState::Ready);
    let l4 = lookup(&s, &[&d], &[&qux], RequiredState::Ready);
    assert_eq!(g.asked(), [["Foo"]]);
    g.answer(&[&foo, &bar]);
    assert_eq!(g.asked(), [["Baz"]]);
    g.answer(&[&baz]);
    // 3 found Bar without the generator; 4 is now inside it.
    assert!(l3.is_complete());
    assert_eq!(g.asked(), [["Qux"]], "lookup 4 never reached the generator");
    g.answer(&[&qux]);
    for (l, n) in [(l1, &foo), (l2, &baz), (l3, &bar), (l4, &qux)] {
        assert!(l.wait().unwrap().get(n).is_some());
    }
}

/// The lookup ahead asks only for a name the generator already missed.
#[test]
fn the_queue_advances_past_a_lookup_whose_names_are_cached_misses() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let g = Holding::default();
    d.add_generator(g.clone()).unwrap();
    let [foo, miss, qux] = names(&s, &["Foo", "Miss", "Qux"]).try_into().unwrap();
    let l1 = lookup(&s, &[&d], &[&foo, &miss], RequiredState::Ready);
    let l2 = lookup(&s, &[&d], &[&miss], RequiredState::Ready);
    let l3 = lookup(&s, &[&d], &[&qux], RequiredState::Ready);
    g.answer(&[&foo]);
    // 1 and 2 fail (Miss is nowhere); the generator is not asked for Miss
    // again, but 3 must be asked about.
    assert_eq!(g.asked(), [["Qux"]], "lookup 3 never reached the generator");
    g.answer(&[&qux]);
    assert!(matches!(l1.wait(), Err(Error::SymbolsNotFound { .. })));
    assert!(matches!(l2.wait(), Err(Error::SymbolsNotFound { .. })));
    assert!(l3.wait().unwrap().get(&qux).is_some());
}

/// The lookup ahead was cancelled while it waited its turn.
#[test]
fn the_queue_advances_past_a_cancelled_lookup() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let g = Holding::default();
    d.add_generator(g.clone()).unwrap();
    let [foo, baz, qux] = names(&s, &["Foo", "Baz", "Qux"]).try_into().unwrap();
    let l1 = lookup(&s, &[&d], &[&foo], RequiredState::Ready);
    let l2 = lookup(&s, &[&d], &[&baz], RequiredState::Ready);
    let l3 = lookup(&s, &[&d], &[&qux], RequiredState::Ready);
    l2.cancel();
    assert!(matches!(l2.wait(), Err(Error::Cancelled)));
    g.answer(&[&foo]);
    assert_eq!(g.asked(), [["Qux"]], "lookup 3 never reached the generator");
    g.answer(&[&qux]);
    assert!(l1.wait().is_ok());
    assert!(l3.wait().unwrap().get(&qux).is_some());
}

/// The lookup ahead timed out while it waited its turn.
#[test]
fn the_queue_advances_past_a_timed_out_lookup() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let g = Holding::default();
    d.add_generator(g.clone()).unwrap();
    let [foo, baz, qux] = names(&s, &["Foo", "Baz", "Qux"]).try_into().unwrap();
    let l1 = lookup(&s, &[&d], &[&foo], RequiredState::Ready);
    let l2 = lookup(&s, &[&d], &[&baz], RequiredState::Ready);
    let l3 = lookup(&s, &[&d], &[&qux], RequiredState::Ready);
    // Nothing can answer Baz while Foo's call is held: it times out.
    let err = l2.wait_timeout(Duration::from_millis(1)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    g.answer(&[&foo]);
    assert_eq!(g.asked(), [["Qux"]], "lookup 3 never reached the generator");
    g.answer(&[&qux]);
    assert!(l1.wait().is_ok());
    assert!(l3.wait().unwrap().get(&qux).is_some());
}

/// Defines whichever `g{i}` names it is asked for, slowly.
struct Slow {
    calls: Arc<AtomicUsize>,
}

impl Generator for Slow {
    fn generate(&self, req: GenerateRequest) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1));
        let defs: Vec<_> = req
            .names()
            .iter()
            .filter_map(|n| {
                let i: u64 = n.as_str().strip_prefix('g')?.parse().ok()?;
                Some((n.clone(), def(0x4000 + 16 * i)))
            })
            .collect();
        if !defs.is_empty() {
            req.dylib().define(absolute_symbols(defs)).unwrap();
        }
    }
}

/// 32 threads look up overlapping names a slow serialized generator
/// provides, in several rounds of fresh dylibs: every lookup completes.
#[test]
fn thirty_two_threads_on_one_serialized_generator_all_complete() {
    const THREADS: usize = 32;
    let s = Session::builder().dispatcher(WorkerPool::new(4)).build();
    for round in 0..4 {
        let d = s.create_dylib(&format!("d{round}")).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        d.add_generator(Slow {
            calls: calls.clone(),
        })
        .unwrap();
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, d, start) = (s.clone(), d.clone(), start.clone());
                std::thread::spawn(move || {
                    // Each thread asks for three of twelve names, overlapping
                    // its neighbours'.
                    let wanted: Vec<SymbolName> = (0..3)
                        .map(|k| s.intern(&format!("g{}", (t + 4 * k + round) % 12)))
                        .collect();
                    let refs: Vec<&SymbolName> = wanted.iter().collect();
                    start.wait();
                    // A generous bound, only so that a hang fails the test.
                    let found = lookup(&s, &[&d], &refs, RequiredState::Ready)
                        .wait_timeout(Duration::from_secs(60))
                        .unwrap_or_else(|e| panic!("thread {t}: {e}"));
                    for n in &wanted {
                        assert!(found.get(n).is_some());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(calls.load(Ordering::SeqCst) >= 1);
    }
    s.end();
}

/// A [`Holding`] generator that declares itself concurrent.
#[derive(Clone, Default)]
struct HoldingConcurrent(Holding);

impl Generator for HoldingConcurrent {
    fn generate(&self, req: GenerateRequest) {
        self.0.generate(req)
    }
    fn is_concurrent(&self) -> bool {
        true
    }
}

impl HoldingConcurrent {
    /// Ends the oldest held call the way the host-symbols generator does:
    /// defines every name it was asked (Ready at once) and completes with
    /// the definition's result.
    fn answer_like_host(&self) {
        let req = self.0.held.lock().unwrap().remove(0);
        let defs: Vec<_> = req.names().iter().map(|n| (n.clone(), def(0x77))).collect();
        let result = req.dylib().define_absolute(defs);
        req.complete(result);
    }
}

/// Two lookups ask a concurrent generator for the same name while the
/// first call is still inside it: the second waits for that call instead of
/// asking again, so the name is defined once and both lookups succeed.
#[test]
fn a_concurrent_generator_is_not_asked_twice_for_one_name_at_once() {
    let s = inplace();
    let d = s.create_dylib("<host>").unwrap();
    let g = HoldingConcurrent::default();
    d.add_generator(g.clone()).unwrap();
    let atexit = s.intern("__cxa_atexit");
    let l1 = lookup(&s, &[&d], &[&atexit], RequiredState::Ready);
    let l2 = lookup(&s, &[&d], &[&atexit], RequiredState::Ready);
    assert_eq!(g.0.asked(), [["__cxa_atexit"]], "asked twice at once");
    while !g.0.held.lock().unwrap().is_empty() {
        g.answer_like_host();
    }
    assert_eq!(l1.wait().unwrap().get(&atexit).unwrap().address, 0x77);
    assert_eq!(l2.wait().unwrap().get(&atexit).unwrap().address, 0x77);
}

/// Distinct names still go to a concurrent generator at once; a lookup
/// that overlaps a call in flight waits only for such a call.
#[test]
fn a_concurrent_generator_still_runs_calls_for_distinct_names_at_once() {
    let s = inplace();
    let d = s.create_dylib("<host>").unwrap();
    let g = HoldingConcurrent::default();
    d.add_generator(g.clone()).unwrap();
    let [a, b, c] = names(&s, &["a", "b", "c"]).try_into().unwrap();
    let la = lookup(&s, &[&d], &[&a], RequiredState::Ready);
    let lb = lookup(&s, &[&d], &[&b], RequiredState::Ready);
    // Overlaps `a`'s call: waits for it.
    let lac = lookup(&s, &[&d], &[&a, &c], RequiredState::Ready);
    assert_eq!(g.0.asked(), [["a"], ["b"]]);
    g.answer_like_host();
    // `a` is defined now: only `c` is asked.
    assert_eq!(g.0.asked(), [["b"], ["c"]]);
    while !g.0.held.lock().unwrap().is_empty() {
        g.answer_like_host();
    }
    assert!(la.wait().is_ok() && lb.wait().is_ok());
    let found = lac.wait().unwrap();
    assert!(found.get(&a).is_some() && found.get(&c).is_some());
}

/// Defines, Ready at once, every name asked — as the host-symbols generator
/// does — and declares itself concurrent. Counts how often each name is
/// asked.
#[derive(Clone, Default)]
struct HostLike {
    asked: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

impl Generator for HostLike {
    fn generate(&self, req: GenerateRequest) {
        if let Ok(mut asked) = self.asked.lock() {
            for n in req.names() {
                *asked.entry(n.to_string()).or_default() += 1;
            }
        }
        std::thread::yield_now();
        let defs: Vec<_> = req.names().iter().map(|n| (n.clone(), def(0x99))).collect();
        let result = req.dylib().define_absolute(defs);
        req.complete(result);
    }
    fn is_concurrent(&self) -> bool {
        true
    }
}

/// 32 threads look up overlapping host-like names: none fails with a
/// duplicate definition, and each name is asked once.
#[test]
fn thirty_two_threads_on_one_concurrent_generator_never_define_twice() {
    const THREADS: usize = 32;
    let s = Session::builder().dispatcher(WorkerPool::new(4)).build();
    for round in 0..4 {
        let d = s.create_dylib(&format!("host{round}")).unwrap();
        let host = HostLike::default();
        d.add_generator(host.clone()).unwrap();
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, d, start) = (s.clone(), d.clone(), start.clone());
                std::thread::spawn(move || {
                    let wanted: Vec<SymbolName> = (0..3)
                        .map(|k| s.intern(&format!("h{}", (t + 3 * k) % 8)))
                        .collect();
                    let refs: Vec<&SymbolName> = wanted.iter().collect();
                    start.wait();
                    lookup(&s, &[&d], &refs, RequiredState::Ready)
                        .wait_timeout(Duration::from_secs(60))
                        .unwrap_or_else(|e| panic!("thread {t}: {e}"));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let asked = host.asked.lock().unwrap();
        assert_eq!(asked.len(), 8);
        assert!(asked.values().all(|&n| n == 1), "{asked:?}");
    }
    s.end();
}
