//! A wait that ends before its deadline takes the deadline with it: a
//! long-running host's timed lookups and parked qualified-name calls that
//! complete, fail or are cancelled leave nothing on the timer (each
//! deadline kept its job, and the memory it holds, until it came). Its own
//! process: the timer is the process's.

mod common;

use std::time::Duration;

use common::awaiting;
use kiln_engine::qualified::QualifiedNames;
use kiln_engine::*;

const LONG: Duration = Duration::from_secs(600);

#[test]
fn ended_waits_leave_no_deadline_behind() {
    let s = Session::builder().dispatcher(InPlaceDispatcher).build();
    let d = s.create_dylib("d").unwrap();
    assert_eq!(pending_deadlines(), 0);

    // Lookups answered by definitions that arrive.
    let names: Vec<SymbolName> = (0..500).map(|i| s.intern(&format!("late{i}"))).collect();
    let lookups: Vec<Lookup> = names
        .iter()
        .map(|n| s.lookup_with(&awaiting(&d, n, LONG)))
        .collect();
    assert_eq!(pending_deadlines(), 500);
    let def = SymbolDef::new(0x1000, SymbolFlags::EXPORTED);
    d.define_absolute(names.iter().map(|n| (n.clone(), def)))
        .unwrap();
    for l in lookups {
        assert_eq!(l.wait().unwrap().len(), 1);
    }
    assert_eq!(pending_deadlines(), 0, "answered lookups kept deadlines");

    // Lookups cancelled by their callers.
    let never = s.intern("never");
    let lookups: Vec<Lookup> = (0..100)
        .map(|_| s.lookup_with(&awaiting(&d, &never, LONG)))
        .collect();
    assert_eq!(pending_deadlines(), 100);
    for l in lookups {
        l.cancel();
        assert!(l.wait_timeout(Duration::from_secs(30)).is_err());
    }
    assert_eq!(pending_deadlines(), 0, "cancelled lookups kept deadlines");

    // Parked qualified-name calls: one answered by its module, one
    // cancelled by the host.
    let qualified = QualifiedNames::with_separator("_").timeout(LONG);
    let shared = s.create_dylib("qualified").unwrap();
    shared.add_generator(qualified.clone()).unwrap();
    let order = SearchOrder::new().with(&shared, DylibLookup::ExportedOnly);
    let wanted = |name: &str| LookupSet::required([s.intern(name)]);
    let answered = s.lookup(&order, &wanted("M_f"), RequiredState::Ready);
    let cancelled = s.lookup(&order, &wanted("Ghost_f"), RequiredState::Ready);
    assert_eq!((qualified.parked(), pending_deadlines()), (2, 2));
    let module = s.create_dylib("M").unwrap();
    module.define_absolute([(s.intern("f"), def)]).unwrap();
    qualified.register(&module);
    assert_eq!(answered.wait().unwrap().len(), 1);
    qualified.cancel("Ghost");
    assert!(cancelled.wait_timeout(Duration::from_secs(30)).is_err());
    assert_eq!(
        (qualified.parked(), pending_deadlines()),
        (0, 0),
        "ended parked calls kept deadlines"
    );
    s.end();
}
