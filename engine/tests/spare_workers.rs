//! A lookup polled pending on a pool's worker keeps a spare worker for the
//! pool (the executor may park the worker); the spare ends when the lookup
//! is ready or dropped, so awaiting leaves no thread behind. One test in
//! its own binary: it counts the process's spare threads.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::*;
use kiln_engine::*;

/// Threads of this process named as kiln's spare workers (the kernel keeps
/// 15 bytes of a thread's name).
fn spare_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        panic!("/proc/self/task is not readable");
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "kiln-spare-work")
        .count()
}

/// Waits up to 10 s for `n` spare threads; how many there are then.
fn wait_for_spares(n: usize) -> usize {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let now = spare_threads();
        if now == n || Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Unpark(std::thread::Thread);
impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

#[test]
fn a_spare_for_an_awaited_lookup_ends_when_it_is_ready_or_dropped() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(await_on_a_worker_and_count_spares()));
    let counts = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the awaits hung: no worker ran the unit defined later");
    assert_eq!(
        counts,
        [1, 1, 0, 0],
        "spare threads: while pending, still, after the drop, after ready"
    );
}

/// Inside a materializer on a one-thread pool: fifty lookups polled
/// pending and dropped, then one polled pending until a later definition
/// makes it ready; the spare threads counted after each step.
fn await_on_a_worker_and_count_spares() -> Vec<usize> {
    let s = Session::builder().dispatcher(WorkerPool::new(1)).build();
    let d = s.create_dylib("d").unwrap();
    let (f, never, late) = (s.intern("f"), s.intern("never"), s.intern("late"));
    let (dd, ff) = (d.clone(), f.clone());
    let counts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = counts.clone();
    d.define(unit("polling", &[(&f, X)], move |r| {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let awaiting = |name: &SymbolName| {
            LookupRequest::new(
                order(&[&dd]),
                LookupSet::required([name.clone()]),
                RequiredState::Ready,
            )
            .await_definitions(AwaitDefinitions::UntilCancelled)
        };
        // Dropped while pending. Fifty pending on one worker (as a
        // `join_all` polls them) share one spare: the worker is parked once.
        let mut pending: Vec<_> = (0..50)
            .map(|_| Box::pin(dd.session().lookup_with(&awaiting(&never))))
            .collect();
        for lookup in &mut pending {
            assert!(lookup.as_mut().poll(&mut cx).is_pending());
        }
        // (A new thread takes its name once it runs.)
        seen.lock().unwrap().push(wait_for_spares(1));
        std::thread::sleep(Duration::from_millis(20));
        seen.lock().unwrap().push(spare_threads());
        drop(pending);
        seen.lock().unwrap().push(wait_for_spares(0));
        // Ready: defined by another thread while this worker is parked.
        let mut ready = Box::pin(dd.session().lookup_with(&awaiting(&late)));
        assert!(ready.as_mut().poll(&mut cx).is_pending());
        let (definer, name) = (dd.clone(), late.clone());
        std::thread::spawn(move || definer.define(emitting(&name, 0x1a, vec![])).unwrap());
        let found = loop {
            if let Poll::Ready(found) = ready.as_mut().poll(&mut cx) {
                break found;
            }
            std::thread::park();
        };
        assert_eq!(found.unwrap().get(&late).unwrap().address, 0x1a);
        seen.lock().unwrap().push(wait_for_spares(0));
        r.resolve(&[(ff, def(0xf))]).unwrap();
        r.emit(vec![]).unwrap();
    }))
    .unwrap();
    let found = lookup(&s, &[&d], &[&f], RequiredState::Ready).wait();
    assert_eq!(found.unwrap().get(&f).unwrap().address, 0xf);
    s.end();
    counts.lock().unwrap().clone()
}

/// A spare worker is one of the pool's workers: it runs the pool's start
/// hook before any task, as the others do (the JIT's hook attaches the
/// thread to kiln's static TLS area; a spare that ran a materializer
/// unattached kept retired ranges from being reused).
#[test]
fn a_spare_worker_runs_the_pools_start_hook_before_its_tasks() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(a_task_on_a_spare_ran_after_the_hook()));
    let (hooked, spare) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the await hung: no spare ran the unit");
    assert!(spare, "the unit ran on the polling worker, not on a spare");
    assert!(
        hooked,
        "a spare worker ran a task without the pool's start hook"
    );
}

/// On a one-thread pool whose hook marks its thread, a materializer polls
/// a lookup pending (its worker is parked: a spare stands in) whose unit
/// the spare then runs; (whether that thread was marked, whether it was a
/// spare).
fn a_task_on_a_spare_ran_after_the_hook() -> (bool, bool) {
    thread_local! {
        static HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let s = Session::builder()
        .dispatcher(WorkerPool::with_start(1, || HOOKED.with(|h| h.set(true))))
        .build();
    let d = s.create_dylib("d").unwrap();
    let (f, g) = (s.intern("f"), s.intern("g"));
    let seen = Arc::new(std::sync::Mutex::new((false, false)));
    let (dd, ff, gg, seen2) = (d.clone(), f.clone(), g.clone(), seen.clone());
    d.define(unit("polling", &[(&f, X)], move |r| {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let request = LookupRequest::new(
            order(&[&dd]),
            LookupSet::required([gg.clone()]),
            RequiredState::Ready,
        )
        .await_definitions(AwaitDefinitions::UntilCancelled);
        let mut pending = Box::pin(dd.session().lookup_with(&request));
        assert!(pending.as_mut().poll(&mut cx).is_pending());
        // Defined by another thread while this worker is parked: its
        // materializer is a task for the pool, which only the spare runs.
        let on_spare = seen2.clone();
        let (g2, polling_thread) = (gg.clone(), std::thread::current().id());
        let definer = dd.clone();
        std::thread::spawn(move || {
            let g3 = g2.clone();
            definer
                .define(unit("on a spare", &[(&g2, X)], move |r| {
                    let spare = std::thread::current().id() != polling_thread;
                    *on_spare.lock().unwrap() = (HOOKED.with(|h| h.get()), spare);
                    r.resolve(&[(g3.clone(), def(0x9))]).unwrap();
                    r.emit(vec![]).unwrap();
                }))
                .unwrap()
        });
        let found = loop {
            if let Poll::Ready(found) = pending.as_mut().poll(&mut cx) {
                break found;
            }
            std::thread::park();
        };
        assert_eq!(found.unwrap().get(&gg).unwrap().address, 0x9);
        r.resolve(&[(ff.clone(), def(0xf))]).unwrap();
        r.emit(vec![]).unwrap();
    }))
    .unwrap();
    let found = lookup(&s, &[&d], &[&f], RequiredState::Ready).wait();
    assert_eq!(found.unwrap().get(&f).unwrap().address, 0xf);
    s.end();
    *seen.lock().unwrap()
}
