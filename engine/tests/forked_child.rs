//! A session in a forked child refuses every request at once
//! (`Error::ForkedChild`) instead of waiting for the worker threads the
//! child does not have; answers the Ready index holds are still read.
//!
//! The fork is the one `note_forked_child` reports (what a `pthread_atfork`
//! child handler calls): this process goes on as the "child", so the test
//! has a binary of its own — every session of the process refuses after it.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use common::*;
use kiln_engine::*;

/// A resource manager that notes when it is dropped.
struct Noted(Arc<AtomicBool>);

impl ResourceManager for Noted {
    fn remove_resources(&self, _key: ResourceKey) -> Result<()> {
        Ok(())
    }
    fn transfer_resources(&self, _dst: ResourceKey, _src: ResourceKey) {}
}

impl Drop for Noted {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_session_refuses_requests_in_a_forked_child_and_never_waits() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let manager_dropped = Arc::new(AtomicBool::new(false));
    s.register_resource_manager(Arc::new(Noted(manager_dropped.clone())));
    let d = s.create_dylib("d").unwrap();
    let (ready, lazy, new) = (s.intern("ready"), s.intern("lazy"), s.intern("new"));
    d.define(emitting(&ready, 0x1000, vec![])).unwrap();
    d.define(emitting(&lazy, 0x2000, vec![])).unwrap();
    let found = lookup(&s, &[&d], &[&ready], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&ready).map(|d| d.address), Some(0x1000));

    // Lookups in flight at the fork, whose materializer runs on: one
    // waited for, one polled as a future.
    let (pending, pending2) = (s.intern("pending"), s.intern("pending2"));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (p1, p2) = (pending.clone(), pending2.clone());
    d.define(unit(
        "pending",
        &[(&pending, X), (&pending2, X)],
        move |r| {
            let _ = release_rx.recv();
            let _ = r.resolve(&[(p1, def(0x4000)), (p2, def(0x5000))]);
            drop(r);
            let _ = done_tx.send(());
        },
    ))
    .unwrap();
    let in_flight = lookup(&s, &[&d], &[&pending], RequiredState::Ready);
    let mut polled = lookup(&s, &[&d], &[&pending2], RequiredState::Ready);

    assert!(!s.in_forked_child());
    note_forked_child();
    assert!(s.in_forked_child());

    let (s1, d1, ready1) = (s.clone(), d.clone(), ready.clone());
    let found = must_return("a lookup of a Ready symbol", move || {
        lookup(&s1, &[&d1], &[&ready1], RequiredState::Ready).wait()
    })
    .expect("the Ready index still answers");
    assert_eq!(found.get(&ready).map(|d| d.address), Some(0x1000));

    let (s1, d1, lazy1) = (s.clone(), d.clone(), lazy.clone());
    let err = must_return("a lookup that must materialize", move || {
        lookup(&s1, &[&d1], &[&lazy1], RequiredState::Ready).wait()
    })
    .expect_err("nothing is materialized in a forked child");
    assert!(matches!(err, Error::ForkedChild), "{err}");
    assert!(err.to_string().contains("forked"), "{err}");

    let d1 = d.clone();
    let err = must_return("a definition", move || {
        d1.define(emitting(&new, 0x3000, vec![]))
    })
    .expect_err("nothing is defined in a forked child");
    assert!(matches!(err, Error::ForkedChild), "{err}");

    let tracker = d.default_tracker();
    let err = must_return("a removal", move || tracker.remove())
        .expect_err("nothing is removed in a forked child");
    assert!(matches!(err, Error::ForkedChild), "{err}");

    let err = must_return("a wait for a lookup made before the fork", move || {
        in_flight.wait()
    })
    .expect_err("what would complete it is the parent's");
    assert!(matches!(err, Error::ForkedChild), "{err}");
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(&mut polled).poll(&mut cx) {
        std::task::Poll::Ready(Err(Error::ForkedChild)) => {}
        other => panic!("polled in the child: {other:?}"),
    }
    release_tx.send(()).unwrap();
    done_rx.recv().unwrap();
    drop(polled);

    // The session's end, and the drop of its worker pool with it, wait
    // for no thread; what the session owns is the parent's and is left
    // as it is (no manager or unit is dropped, nothing torn down).
    must_return("the end", move || {
        s.end();
        drop((s, d));
    });
    assert!(
        !manager_dropped.load(Ordering::SeqCst),
        "the session's resource manager was dropped in the child"
    );
}
