//! Loom models of the worker pool's waits: a task on the pool's only
//! worker that waits for work queued behind it — by blocking (the wait
//! runs the queue: it helps) or by awaiting a lookup as a future (a spare
//! worker stands in while the executor parks the thread), and a wait too
//! deep in nested waits to help (a spare runs the queue while it sleeps) —
//! finishes in every interleaving, and the pool's threads all end at
//! `Session::end`.
//! Run as the other models:
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg kiln_loom" cargo test -p kiln-loom-tests --release`.
#![cfg(kiln_loom)]

mod runner;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use kiln_engine::*;
use runner::model;

const X: SymbolFlags = SymbolFlags::EXPORTED;

/// A lookup of `name` in `d` (exported symbols) at Ready.
fn request(d: &Dylib, name: &SymbolName) -> LookupRequest {
    LookupRequest::new(
        [(d.clone(), DylibLookup::ExportedOnly)]
            .into_iter()
            .collect(),
        LookupSet::required([name.clone()]),
        RequiredState::Ready,
    )
}

/// How a [`Chain`] unit waits for the next symbol.
#[derive(Clone, Copy)]
enum Wait {
    /// `Lookup::wait`: blocks, running the pool's queue meanwhile.
    Blocking,
    /// An executor's `block_on` of the lookup as a future: parks the
    /// thread until woken, running nothing itself.
    Awaiting,
}

/// A unit of one symbol: with `waits`, it waits for that symbol Ready —
/// defined by another thread, before or after the wait starts (the lookup
/// awaits its definition) — and takes its address; without, its address
/// is 0x9. Then it resolves and emits.
struct Chain {
    name: SymbolName,
    dylib: Dylib,
    waits: Option<(SymbolName, Wait)>,
}

impl MaterializationUnit for Chain {
    fn name(&self) -> &str {
        "chain"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.name.clone(), X)]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        let address = match &self.waits {
            None => 0x9,
            Some((other, how)) => {
                let request =
                    request(&self.dylib, other).await_definitions(AwaitDefinitions::UntilCancelled);
                let lookup = self.dylib.session().lookup_with(&request);
                let found = match how {
                    Wait::Blocking => lookup.wait(),
                    Wait::Awaiting => block_on(lookup),
                }
                .unwrap();
                found.get(other).unwrap().address
            }
        };
        r.resolve(&[(self.name.clone(), SymbolDef::new(address, X))])
            .unwrap();
        r.emit(vec![]).unwrap();
    }
}

/// A `block_on` as executors write it, on loom's park and unpark.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(loom::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(loom::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        loom::thread::park();
    }
}

/// The main thread looks `n0` up, then defines `n{links}` (waiting for
/// nothing);
/// `n0`'s materializer runs on the pool's only worker and waits, `how`,
/// for `n1`, whose materializer waits for `n2`, and so on: once the last
/// is defined its unit is queued behind the waiting tasks, with no other
/// worker to run it.
fn only_worker_waits_for_the_unit_behind_it(how: Wait, links: usize) {
    model(move || {
        let s = Session::builder().dispatcher(WorkerPool::new(1)).build();
        let d = s.create_dylib("d").unwrap();
        let names: Vec<SymbolName> = (0..=links).map(|i| s.intern(&format!("n{i}"))).collect();
        let unit = |i: usize| Chain {
            name: names[i].clone(),
            dylib: d.clone(),
            waits: (i < links).then(|| (names[i + 1].clone(), how)),
        };
        for i in 0..links {
            d.define(unit(i)).unwrap();
        }
        let looked_up = s.lookup_with(&request(&d, &names[0]));
        d.define(unit(links)).unwrap();
        let found = looked_up.wait().unwrap();
        assert_eq!(found.get(&names[0]).unwrap().address, 0x9);
        // Joins the worker; a spare ends once its waiter let go of it.
        s.end();
    });
}

/// (a) A blocking wait on the only worker runs the unit it waits for.
#[test]
fn a_blocking_wait_on_the_only_worker_runs_the_unit_it_waits_for() {
    only_worker_waits_for_the_unit_behind_it(Wait::Blocking, 1);
}

/// (b) An await on the only worker leaves a spare to run the unit it
/// waits for.
#[test]
fn an_await_on_the_only_worker_leaves_a_spare_to_run_the_unit() {
    only_worker_waits_for_the_unit_behind_it(Wait::Awaiting, 1);
}

/// (c) A wait too deep to help (under loom the engine stops helping at
/// depth one): `n0`'s blocking wait runs `n1`'s materializer nested in it,
/// whose own wait for `n2` starts a spare worker and only sleeps; the
/// spare runs `n2`'s unit and the chain unwinds.
#[test]
fn a_wait_too_deep_to_help_leaves_a_spare_to_run_the_unit() {
    only_worker_waits_for_the_unit_behind_it(Wait::Blocking, 2);
}
