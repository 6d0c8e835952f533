//! Deadlines share one timer thread for the process: a thousand lookups
//! that await definitions for a while, or a hundred qualified-names
//! generators with parked calls, start at most one thread, and deadlines
//! fire earliest first, each failing its own call only.

mod common;

use std::time::Duration;

use common::awaiting;
use kiln_engine::qualified::QualifiedNames;
use kiln_engine::*;

/// This process's threads that keep deadlines (by name: the test
/// harness's own threads come and go meanwhile).
fn timer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("kiln-timer") || name.starts_with("kiln-qualified"))
        .count()
}

#[test]
fn timed_lookups_share_one_timer_thread_and_fire_earliest_first() {
    let s = Session::builder().dispatcher(InPlaceDispatcher).build();
    let d = s.create_dylib("d").unwrap();
    let never = s.intern("never");
    let long: Vec<Lookup> = (0..1000)
        .map(|_| s.lookup_with(&awaiting(&d, &never, Duration::from_secs(600))))
        .collect();
    assert!(
        timer_threads() <= 1,
        "1,000 timed lookups left {} timer threads",
        timer_threads()
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

#[test]
fn parked_qualified_calls_share_the_timer_thread() {
    let s = Session::builder().dispatcher(InPlaceDispatcher).build();
    let mut waiting = Vec::new();
    for g in 0..100 {
        let timeout = Duration::from_secs(if g == 0 { 1 } else { 600 });
        let names = QualifiedNames::with_separator("_").timeout(timeout);
        let shared = s.create_dylib(&format!("qualified{g}")).unwrap();
        shared.add_generator(names.clone()).unwrap();
        let order = SearchOrder::new().with(&shared, DylibLookup::ExportedOnly);
        let wanted = LookupSet::required([s.intern("Ghost_f")]);
        let lookup = s.lookup(&order, &wanted, RequiredState::Ready);
        assert_eq!(names.parked(), 1);
        waiting.push((names, lookup));
    }
    assert!(
        timer_threads() <= 1,
        "100 generators' parked calls left {} timer threads",
        timer_threads()
    );
    let (_, first) = waiting.remove(0);
    let err = first.wait_timeout(Duration::from_secs(30)).unwrap_err();
    assert!(
        matches!(err.root_cause(), Error::ModuleNotRegistered { module, .. } if &**module == "Ghost"),
        "{err}"
    );
    assert!(
        waiting
            .iter()
            .all(|(names, l)| names.parked() == 1 && !l.is_complete()),
        "a 600 s deadline fired"
    );
    for (names, _) in &waiting {
        names.cancel("Ghost");
    }
    for (_, lookup) in waiting {
        assert!(lookup.wait_timeout(Duration::from_secs(30)).is_err());
    }
    s.end();
}
