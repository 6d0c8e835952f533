//! Lookups that await definitions for a while share one timer thread:
//! a thousand of them start at most one thread, and their deadlines fire
//! earliest first, each failing its own lookup only.

use std::time::Duration;

use kiln_engine::*;

/// This process's threads.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn awaiting(d: &Dylib, name: &SymbolName, timeout: Duration) -> LookupRequest {
    LookupRequest::new(
        SearchOrder::new().with(d, DylibLookup::All),
        LookupSet::required([name.clone()]),
        RequiredState::Ready,
    )
    .await_definitions(AwaitDefinitions::For(timeout))
}

#[test]
fn timed_lookups_share_one_timer_thread_and_fire_earliest_first() {
    let s = Session::builder().dispatcher(InPlaceDispatcher).build();
    let d = s.create_dylib("d").unwrap();
    let never = s.intern("never");
    let before = threads();
    let long: Vec<Lookup> = (0..1000)
        .map(|_| s.lookup_with(&awaiting(&d, &never, Duration::from_secs(600))))
        .collect();
    assert!(
        threads() <= before + 1,
        "1,000 timed lookups started {} threads",
        threads() - before
    );

    // Far enough apart that a loaded machine cannot blur the order.
    let later = s.lookup_with(&awaiting(&d, &never, Duration::from_secs(2)));
    let sooner = s.lookup_with(&awaiting(&d, &never, Duration::from_millis(40)));
    let err = sooner.wait_timeout(Duration::from_secs(30)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        !later.is_complete(),
        "the later deadline fired with the sooner"
    );
    let err = later.wait_timeout(Duration::from_secs(30)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        long.iter().all(|l| !l.is_complete()),
        "a 600 s deadline fired"
    );
    for l in &long {
        l.cancel();
    }
    s.end();
}
