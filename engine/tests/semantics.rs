//! The engine's contract, case by case (kiln issue 2 §3).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kiln_engine::*;

// ----- search order and visibility ---------------------------------------

#[test]
fn search_order_is_exactly_what_the_lookup_gives() {
    let s = inplace();
    let (a, b, c) = (
        s.create_dylib("a").unwrap(),
        s.create_dylib("b").unwrap(),
        s.create_dylib("c").unwrap(),
    );
    let in_c = s.intern("in_c");
    c.define_absolute([(in_c.clone(), def(0xc))]).unwrap();
    a.set_link_order(&[(b.clone(), DylibLookup::ExportedOnly)])
        .unwrap();
    b.set_link_order(&[(c.clone(), DylibLookup::ExportedOnly)])
        .unwrap();
    // a's link order is [a, b]; it does not reach c through b.
    let err = s
        .lookup(
            &a.link_order(),
            &LookupSet::required([in_c.clone()]),
            RequiredState::Ready,
        )
        .wait()
        .unwrap_err();
    assert!(
        matches!(err, Error::SymbolsNotFound { ref names } if names == std::slice::from_ref(&in_c))
    );
    assert_eq!(b.link_order().entries().len(), 2);
    let found = lookup(&s, &[&a, &c], &[&in_c], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&in_c).unwrap().address, 0xc);
}

#[test]
fn first_dylib_in_order_wins_and_exported_only_skips_hidden() {
    let s = inplace();
    let (d1, d2) = (s.create_dylib("d1").unwrap(), s.create_dylib("d2").unwrap());
    let f = s.intern("f");
    d1.define_absolute([(f.clone(), SymbolDef::new(1, SymbolFlags::NONE))])
        .unwrap();
    d2.define_absolute([(f.clone(), def(2))]).unwrap();
    let exported = lookup(&s, &[&d1, &d2], &[&f], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(
        exported.get(&f).unwrap().address,
        2,
        "hidden f in d1 is skipped"
    );
    let all: SearchOrder = [
        (d1.clone(), DylibLookup::All),
        (d2.clone(), DylibLookup::All),
    ]
    .into_iter()
    .collect();
    let found = s
        .lookup(
            &all,
            &LookupSet::required([f.clone()]),
            RequiredState::Ready,
        )
        .wait()
        .unwrap();
    assert_eq!(found.get(&f).unwrap().address, 1);
    assert_eq!(found.found_in(&f), Some(0));
}

#[test]
fn missing_weak_names_are_absent_and_missing_required_are_listed_together() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (here, gone1, gone2, maybe) = (
        s.intern("here"),
        s.intern("gone1"),
        s.intern("gone2"),
        s.intern("maybe"),
    );
    d.define_absolute([(here.clone(), def(7))]).unwrap();
    let set: LookupSet = [
        (here.clone(), SymbolLookup::Required),
        (maybe.clone(), SymbolLookup::Weak),
    ]
    .into_iter()
    .collect();
    let found = s
        .lookup(&order(&[&d]), &set, RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(found.get(&maybe).is_none());
    let answers: Vec<_> = found
        .by_request()
        .map(|(n, d)| (n.clone(), d.map(|d| d.address)))
        .collect();
    assert_eq!(
        answers,
        vec![(here.clone(), Some(7)), (maybe.clone(), None)]
    );

    let err = lookup(&s, &[&d], &[&gone1, &here, &gone2], RequiredState::Ready)
        .wait()
        .unwrap_err();
    match &err {
        Error::SymbolsNotFound { names } => assert_eq!(names, &[gone1.clone(), gone2.clone()]),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(err.to_string(), "symbols not found: gone1, gone2");
}

#[test]
fn lookup_defs_answers_by_position_from_the_index_or_through_the_actor() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b, lazy, gone) = (
        s.intern("a"),
        s.intern("b"),
        s.intern("lazy"),
        s.intern("gone"),
    );
    d.define_absolute([(a.clone(), def(0x10)), (b.clone(), def(0x20))])
        .unwrap();
    d.define(emitting(&lazy, 0x30, vec![])).unwrap();
    let o = order(&[&d]);
    // All Ready: answered from the index, in the order asked.
    let defs = s
        .lookup_defs(&o, &[b.clone(), a.clone(), b.clone()], RequiredState::Ready)
        .unwrap();
    assert_eq!(
        defs.iter().map(|d| d.address).collect::<Vec<_>>(),
        vec![0x20, 0x10, 0x20]
    );
    // One Lazy: materialized through the actor, still by position.
    let defs = s
        .lookup_defs(&o, &[a.clone(), lazy.clone()], RequiredState::Ready)
        .unwrap();
    assert_eq!(
        defs.iter().map(|d| d.address).collect::<Vec<_>>(),
        vec![0x10, 0x30]
    );
    // Missing names fail like any required lookup.
    match s.lookup_defs(&o, &[a.clone(), gone.clone()], RequiredState::Ready) {
        Err(Error::SymbolsNotFound { names }) => assert_eq!(names, vec![gone.clone()]),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        s.lookup_defs(&o, &[], RequiredState::Ready)
            .unwrap()
            .is_empty()
    );
}

// ----- define ------------------------------------------------------------

#[test]
fn strong_definition_overrides_unrequested_weak_one_and_discard_runs() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (w, other) = (s.intern("w"), s.intern("other"));
    let weak = unit("weak", &[(&w, X | SymbolFlags::WEAK), (&other, X)], |r| {
        r.fail(Error::msg("the weak unit must not run for w"));
    });
    let discarded = weak.discarded.clone();
    d.define(weak).unwrap();
    d.define(emitting(&w, 0x50, vec![])).unwrap();
    assert_eq!(*discarded.lock().unwrap(), vec!["w".to_string()]);
    let found = lookup(&s, &[&d], &[&w], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&w).unwrap().address, 0x50);
}

/// Counts the tasks it runs (in place).
#[derive(Default)]
struct CountingDispatcher(AtomicUsize);

impl Dispatcher for CountingDispatcher {
    fn dispatch(&self, task: Task) {
        self.0.fetch_add(1, Ordering::SeqCst);
        task.run();
    }
}

#[test]
fn absolute_symbols_units_stay_lazy_and_are_materialized_without_a_task() {
    let tasks = Arc::new(CountingDispatcher::default());
    let s = Session::builder().shared_dispatcher(tasks.clone()).build();
    let d = s.create_dylib("d").unwrap();
    let (a, b, w) = (s.intern("a"), s.intern("b"), s.intern("w"));
    d.define(absolute_symbols([
        (a.clone(), def(0x10)),
        (b.clone(), def(0x20)),
        (w.clone(), SymbolDef::new(0x30, X | SymbolFlags::WEAK)),
    ]))
    .unwrap();
    // Still lazy: a strong definition overrides the unrequested weak one.
    d.define_absolute([(w.clone(), def(0x31))]).unwrap();
    let found = lookup(&s, &[&d], &[&a, &w], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&a).unwrap().address, 0x10);
    assert_eq!(found.get(&w).unwrap().address, 0x31);
    // The whole unit materialized at once: b is Ready without a lookup of it.
    let flags_only = s.lookup(
        &order(&[&d]),
        &LookupSet::required([b.clone()]),
        RequiredState::Ready,
    );
    assert!(flags_only.is_complete(), "b was emitted with a");
    assert_eq!(flags_only.wait().unwrap().get(&b).unwrap().address, 0x20);
    // No task ran: the engine resolved and emitted the unit itself (and an
    // absolute unit has nothing to discard).
    assert_eq!(tasks.0.load(Ordering::SeqCst), 0);
}

#[test]
fn an_absolute_unit_that_emitted_code_waits_on_becomes_ready_with_it() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b, c) = (s.intern("a"), s.intern("b"), s.intern("c"));
    // a is emitted waiting on b, which is still Lazy: the emit starts b's
    // (absolute) unit, and b must become Ready through the dependency
    // graph, taking a with it.
    d.define(emitting(&a, 1, vec![(d.clone(), vec![b.clone()])]))
        .unwrap();
    d.define(absolute_symbols([(b.clone(), def(0x20))]))
        .unwrap();
    let found = lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait_timeout(Duration::from_secs(10))
        .unwrap();
    assert_eq!(found.get(&a).unwrap().address, 1);
    assert_eq!(d.symbol_state(&b), Some(SymbolState::Ready));
    // A lookup that needs only Resolved completes from an absolute unit too.
    d.define(absolute_symbols([(c.clone(), def(0x30))]))
        .unwrap();
    let found = lookup(&s, &[&d], &[&c], RequiredState::Resolved)
        .wait()
        .unwrap();
    assert_eq!(found.get(&c).unwrap().address, 0x30);
    assert_eq!(d.symbol_state(&c), Some(SymbolState::Ready));
}

#[test]
fn a_tracker_keeps_track_of_units_left_after_others_materialized() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (src, dst) = (d.create_tracker().unwrap(), d.create_tracker().unwrap());
    let names: Vec<SymbolName> = (0..4).map(|i| s.intern(&format!("f{i}"))).collect();
    for (i, n) in names.iter().enumerate() {
        d.define_with(emitting(n, 0x10 * (i as u64 + 1), vec![]), &src)
            .unwrap();
    }
    // Materializing units out of definition order reshuffles the tracker's
    // list of live units.
    for n in [&names[1], &names[0]] {
        lookup(&s, &[&d], &[n], RequiredState::Ready)
            .wait()
            .unwrap();
    }
    src.transfer_to(&dst).unwrap();
    lookup(&s, &[&d], &[&names[3]], RequiredState::Ready)
        .wait()
        .unwrap();
    dst.remove().unwrap();
    for n in &names {
        assert_eq!(d.symbol_state(n), None, "{n} went with its tracker");
    }
    assert!(matches!(
        lookup(&s, &[&d], &[&names[2]], RequiredState::Ready).wait(),
        Err(Error::SymbolsNotFound { .. })
    ));
    // The names are free to be defined again.
    d.define(emitting(&names[2], 0x99, vec![])).unwrap();
    let found = lookup(&s, &[&d], &[&names[2]], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&names[2]).unwrap().address, 0x99);
}

#[test]
fn requested_weak_definition_is_a_duplicate() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let w = s.intern("w");
    d.define(absolute_symbols([(
        w.clone(),
        SymbolDef::new(1, X | SymbolFlags::WEAK),
    )]))
    .unwrap();
    lookup(&s, &[&d], &[&w], RequiredState::Ready)
        .wait()
        .unwrap();
    let err = d.define(emitting(&w, 2, vec![])).unwrap_err();
    assert!(matches!(err, Error::DuplicateDefinitions { .. }), "{err}");
}

#[test]
fn duplicates_are_all_listed_and_leave_the_dylib_unchanged() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b, c) = (s.intern("a"), s.intern("b"), s.intern("c"));
    d.define_absolute([(a.clone(), def(1)), (b.clone(), def(2))])
        .unwrap();
    let err = d
        .define(absolute_symbols([
            (a.clone(), def(10)),
            (c.clone(), def(30)),
            (b.clone(), def(20)),
        ]))
        .unwrap_err();
    match &err {
        Error::DuplicateDefinitions { dylib, names } => {
            assert_eq!(&**dylib, "d");
            assert_eq!(names, &[a.clone(), b.clone()]);
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(d.symbol_state(&c), None, "c was not added");
    assert_eq!(
        lookup(&s, &[&d], &[&a], RequiredState::Ready)
            .wait()
            .unwrap()
            .get(&a)
            .unwrap()
            .address,
        1
    );
}

/// A name twice in one definition (as a bulk `define_absolute` of a
/// host's batch could carry) is a duplicate: nothing of it is added.
#[test]
fn a_name_twice_in_one_definition_is_a_duplicate_and_adds_nothing() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b) = (s.intern("a"), s.intern("b"));
    let err = d
        .define_absolute([
            (a.clone(), def(1)),
            (b.clone(), def(2)),
            (a.clone(), def(3)),
        ])
        .unwrap_err();
    match &err {
        Error::DuplicateDefinitions { names, .. } => assert_eq!(names, std::slice::from_ref(&a)),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(d.symbol_state(&a), None, "a was not added");
    assert_eq!(d.symbol_state(&b), None, "b was not added");
    // A refused definition leaves nothing behind: its names, once each,
    // are defined afterwards — and are duplicates then.
    d.define_absolute([(a.clone(), def(1)), (b.clone(), def(2))])
        .unwrap();
    for round in 0..3 {
        let (x, y) = (
            s.intern(&format!("x{round}")),
            s.intern(&format!("y{round}")),
        );
        // Refused for a name defined before, and for one repeated.
        d.define_absolute([(x.clone(), def(7)), (a.clone(), def(8))])
            .unwrap_err();
        d.define_absolute([
            (y.clone(), def(7)),
            (x.clone(), def(8)),
            (y.clone(), def(9)),
        ])
        .unwrap_err();
        assert_eq!(d.symbol_state(&x), None, "{x} was not added");
        d.define_absolute([(x.clone(), def(10)), (y.clone(), def(20))])
            .unwrap();
        let found = lookup(&s, &[&d], &[&x, &y], RequiredState::Ready)
            .wait()
            .unwrap();
        assert_eq!(found.get(&x).unwrap().address, 10);
        assert_eq!(found.get(&y).unwrap().address, 20);
        let again = d.define_absolute([(y.clone(), def(30))]).unwrap_err();
        assert!(
            matches!(again, Error::DuplicateDefinitions { .. }),
            "{again}"
        );
    }
}

/// A name twice in one definition is a duplicate also when the dylib
/// defines it already: twice overriding a weak Lazy definition, or twice
/// losing to a definition as a weak one, is refused, adding nothing.
#[test]
fn a_defined_name_twice_in_one_definition_is_a_duplicate() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (w, a, n) = (s.intern("w"), s.intern("a"), s.intern("n"));
    let weak = X | SymbolFlags::WEAK;
    d.define(unit("weak-w", &[(&w, weak)], |_r| {})).unwrap();
    d.define_absolute([(a.clone(), def(1))]).unwrap();
    let twice_over_weak = d
        .define_absolute([
            (w.clone(), def(2)),
            (n.clone(), def(3)),
            (w.clone(), def(4)),
        ])
        .unwrap_err();
    match &twice_over_weak {
        Error::DuplicateDefinitions { names, .. } => assert_eq!(names, std::slice::from_ref(&w)),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(
        d.symbol_state(&w),
        Some(SymbolState::Lazy),
        "w still weak, Lazy"
    );
    assert_eq!(d.symbol_state(&n), None, "n was not added");
    let twice_weak = d
        .define_absolute([
            (a.clone(), SymbolDef::new(5, weak)),
            (a.clone(), SymbolDef::new(6, weak)),
        ])
        .unwrap_err();
    assert!(
        matches!(twice_weak, Error::DuplicateDefinitions { .. }),
        "{twice_weak}"
    );
    // Once each, both are accepted (an override, a weak definition discarded).
    d.define_absolute([(w.clone(), def(2)), (n.clone(), def(3))])
        .unwrap();
    d.define_absolute([(a.clone(), SymbolDef::new(5, weak))])
        .unwrap();
    let found = lookup(&s, &[&d], &[&w, &a, &n], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&w).unwrap().address, 2);
    assert_eq!(found.get(&a).unwrap().address, 1);
}

// ----- readiness ---------------------------------------------------------

#[test]
fn ready_waits_for_transitive_dependencies_but_resolved_completes_early() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let (a, b) = (s.intern("a"), s.intern("b"));
    // b's unit parks its responsibility so the test decides when b is emitted.
    let (park, parked) = slot::<Responsibility>();
    let bn = b.clone();
    d.define(unit("b", &[(&b, X)], move |r| {
        r.resolve(&[(bn, def(0xb))]).unwrap();
        *park.lock().unwrap() = Some(r);
    }))
    .unwrap();
    d.define(emitting(&a, 0xa, vec![(d.clone(), vec![b.clone()])]))
        .unwrap();
    let ready = lookup(&s, &[&d], &[&a], RequiredState::Ready);
    let resolved = lookup(&s, &[&d], &[&a], RequiredState::Resolved)
        .wait()
        .unwrap();
    assert_eq!(resolved.get(&a).unwrap().address, 0xa);
    let r = loop {
        if let Some(r) = parked.lock().unwrap().take() {
            break r;
        }
        std::thread::yield_now();
    };
    std::thread::sleep(Duration::from_millis(20));
    assert!(!ready.is_complete(), "a is Ready before b was emitted");
    assert_eq!(d.symbol_state(&a), Some(SymbolState::Emitted));
    r.emit(vec![]).unwrap();
    assert_eq!(ready.wait().unwrap().get(&a).unwrap().address, 0xa);
    s.end();
}

#[test]
fn cycle_across_dylibs_becomes_ready_together() {
    let s = inplace();
    let (d1, d2) = (s.create_dylib("d1").unwrap(), s.create_dylib("d2").unwrap());
    let (a, b) = (s.intern("a"), s.intern("b"));
    let (park_a, parked_a) = slot::<Responsibility>();
    let an = a.clone();
    d1.define(unit("a", &[(&a, X)], move |r| {
        r.resolve(&[(an, def(0xa))]).unwrap();
        *park_a.lock().unwrap() = Some(r);
    }))
    .unwrap();
    d2.define(emitting(&b, 0xb, vec![(d1.clone(), vec![a.clone()])]))
        .unwrap();
    // Materialize both (Resolved), then emit a depending on b: the cycle closes.
    let both = lookup(&s, &[&d1, &d2], &[&a, &b], RequiredState::Ready);
    assert!(!both.is_complete());
    assert_eq!(d2.symbol_state(&b), Some(SymbolState::Emitted));
    let r = parked_a.lock().unwrap().take().unwrap();
    r.emit(vec![DependenceGroup::new(
        [a.clone()],
        [(d2.clone(), vec![b.clone()])],
    )])
    .unwrap();
    assert_eq!(d1.symbol_state(&a), Some(SymbolState::Ready));
    assert_eq!(d2.symbol_state(&b), Some(SymbolState::Ready));
    let found = both.wait().unwrap();
    assert_eq!(
        (
            found.get(&a).unwrap().address,
            found.get(&b).unwrap().address
        ),
        (0xa, 0xb)
    );
}

#[test]
fn dependencies_already_ready_are_dropped() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b) = (s.intern("a"), s.intern("b"));
    d.define_absolute([(b.clone(), def(2))]).unwrap();
    d.define(emitting(&a, 1, vec![(d.clone(), vec![b.clone()])]))
        .unwrap();
    lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait()
        .unwrap();
}

#[test]
fn declared_dependency_on_a_lazy_symbol_is_materialized() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b) = (s.intern("a"), s.intern("b"));
    d.define(emitting(&b, 2, vec![])).unwrap();
    d.define(emitting(&a, 1, vec![(d.clone(), vec![b.clone()])]))
        .unwrap();
    lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(d.symbol_state(&b), Some(SymbolState::Ready));
}

// ----- failure -----------------------------------------------------------

#[test]
fn failure_carries_its_root_cause_to_dependants_and_is_sticky() {
    let s = inplace();
    let (d1, d2) = (s.create_dylib("d1").unwrap(), s.create_dylib("d2").unwrap());
    let (a, b) = (s.intern("a"), s.intern("b"));
    let (park, parked) = slot::<Responsibility>();
    let bn = b.clone();
    d2.define(unit("b-unit", &[(&b, X)], move |r| {
        r.resolve(&[(bn, def(0xb))]).unwrap();
        *park.lock().unwrap() = Some(r);
    }))
    .unwrap();
    d1.define(emitting(&a, 0xa, vec![(d2.clone(), vec![b.clone()])]))
        .unwrap();
    let waiting = lookup(&s, &[&d1], &[&a], RequiredState::Ready);
    parked
        .lock()
        .unwrap()
        .take()
        .unwrap()
        .fail(Error::msg("symbols not found: [ lstat ]"));
    let err = waiting.wait().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("a in dylib 'd1'"), "{text}");
    assert!(text.contains("b in dylib 'd2'"), "{text}");
    assert!(text.contains("lstat"), "root cause missing: {text}");
    assert_eq!(err.root_cause().to_string(), "symbols not found: [ lstat ]");
    // Sticky.
    assert_eq!(d1.symbol_state(&a), Some(SymbolState::Failed));
    let again = lookup(&s, &[&d2], &[&b], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(again.to_string().contains("lstat"));
}

#[test]
fn dropping_a_responsibility_fails_what_it_owed() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b) = (s.intern("a"), s.intern("b"));
    d.define(unit("lazy-dropper", &[(&a, X), (&b, X)], drop))
        .unwrap();
    let err = lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("lazy-dropper") && text.contains("without emitting"),
        "{text}"
    );
    assert!(matches!(err.root_cause(), Error::Abandoned { symbols, .. } if symbols.len() == 2));
}

#[test]
fn a_panicking_materializer_fails_its_symbols_with_the_panic_message() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let a = s.intern("a");
    d.define(unit("boom", &[(&a, X)], |_r| {
        panic!("codegen exploded at line 3")
    }))
    .unwrap();
    let err = lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait_timeout(Duration::from_secs(10))
        .unwrap_err();
    assert!(
        err.to_string().contains("codegen exploded at line 3"),
        "{err}"
    );
    assert!(matches!(err.root_cause(), Error::Panicked { .. }));
    s.end();
}

#[test]
fn emitting_with_a_failed_dependency_fails_the_emitter() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (bad, a) = (s.intern("bad"), s.intern("a"));
    d.define(unit("bad", &[(&bad, X)], |r| {
        r.fail(Error::msg("bad codegen"))
    }))
    .unwrap();
    assert!(
        lookup(&s, &[&d], &[&bad], RequiredState::Ready)
            .wait()
            .is_err()
    );
    let (got, seen) = slot::<Result<()>>();
    let an = a.clone();
    let dd = d.clone();
    let badn = bad.clone();
    d.define(unit("a", &[(&a, X)], move |r| {
        r.resolve(&[(an.clone(), def(1))]).unwrap();
        *got.lock().unwrap() = Some(r.emit(vec![DependenceGroup::new([an], [(dd, vec![badn])])]));
    }))
    .unwrap();
    let err = lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(err.to_string().contains("bad codegen"), "{err}");
    let emit_result = seen.lock().unwrap().take().unwrap();
    assert!(emit_result.unwrap_err().to_string().contains("bad codegen"));
}

#[test]
fn failure_propagates_through_a_cycle() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b, c) = (s.intern("a"), s.intern("b"), s.intern("c"));
    let (park, parked) = slot::<Responsibility>();
    let cn = c.clone();
    d.define(unit("c", &[(&c, X)], move |r| {
        r.resolve(&[(cn, def(3))]).unwrap();
        *park.lock().unwrap() = Some(r);
    }))
    .unwrap();
    d.define(emitting(
        &a,
        1,
        vec![(d.clone(), vec![b.clone(), c.clone()])],
    ))
    .unwrap();
    d.define(emitting(&b, 2, vec![(d.clone(), vec![a.clone()])]))
        .unwrap();
    let pending = lookup(&s, &[&d], &[&a, &b], RequiredState::Ready);
    parked
        .lock()
        .unwrap()
        .take()
        .unwrap()
        .fail(Error::msg("c is broken"));
    assert!(
        pending
            .wait()
            .unwrap_err()
            .to_string()
            .contains("c is broken")
    );
    assert_eq!(d.symbol_state(&b), Some(SymbolState::Failed));
}

// ----- lookup forms --------------------------------------------------------

#[test]
fn lookup_flags_never_materializes() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let f = s.intern("f");
    let ran = Arc::new(AtomicUsize::new(0));
    let ran2 = ran.clone();
    let fname = f.clone();
    d.define(unit("f", &[(&f, X | SymbolFlags::CALLABLE)], move |r| {
        ran2.fetch_add(1, Ordering::SeqCst);
        r.resolve(&[(fname, def(1))]).unwrap();
        r.emit(vec![]).unwrap();
    }))
    .unwrap();
    let flags = s
        .lookup_flags(&order(&[&d]), &LookupSet::required([f.clone()]))
        .unwrap();
    assert_eq!(flags, vec![(f.clone(), X | SymbolFlags::CALLABLE)]);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(d.symbol_state(&f), Some(SymbolState::Lazy));
}

#[test]
fn lookups_can_be_awaited_as_futures_and_completed_through_callbacks() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let f = s.intern("f");
    d.define(emitting(&f, 0xf, vec![])).unwrap();
    let fut = lookup(&s, &[&d], &[&f], RequiredState::Ready);
    let found = block_on(fut).unwrap();
    assert_eq!(found.get(&f).unwrap().address, 0xf);

    let (tx, rx) = std::sync::mpsc::channel();
    lookup(&s, &[&d], &[&f], RequiredState::Ready).on_complete(move |r| {
        tx.send(r.map(|m| m.get_str("f").unwrap().address)).unwrap();
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap(),
        0xf
    );
    s.end();
}

/// A materializer that awaits a lookup (an executor's `block_on`) of a
/// unit its lookup queued behind it — in place, and on a pool of one
/// thread: polling runs the queued tasks, as a blocking `wait()` does.
/// (Without it, the unit it awaits never ran: in place since the queue
/// was added, on the pool always.)
#[test]
fn awaiting_a_lookup_inside_a_materializer_runs_what_it_queued() {
    let sessions: [fn() -> Session; 2] = [inplace, || {
        Session::builder().dispatcher(WorkerPool::new(1)).build()
    }];
    for session in sessions {
        let found = within_a_minute("the await", move || {
            let s = session();
            let d = s.create_dylib("d").unwrap();
            d.define(emitting(&s.intern("g"), 0x9, vec![])).unwrap();
            let found = f_at_the_address_awaited_for_g(&s, &d, |d, g| {
                block_on(lookup(&d.session(), &[d], &[g], RequiredState::Ready))
            });
            s.end();
            found
        });
        assert_eq!(found.unwrap(), Some(0x9));
    }
}

/// An executor that parks its thread until woken (as `futures`' and
/// `pollster`'s `block_on` do) awaits, inside a materializer on the only
/// worker of a pool, a symbol defined later by another thread: the unit
/// defined then is queued on that pool, and a worker must be there to run
/// it while the awaiting one is parked.
#[test]
fn awaiting_inside_a_materializer_leaves_the_pool_a_worker_for_later_tasks() {
    let found = within_a_minute("the await (no worker ran the unit defined later)", || {
        let s = Session::builder().dispatcher(WorkerPool::new(1)).build();
        let d = s.create_dylib("d").unwrap();
        let found = f_at_the_address_awaited_for_g(&s, &d, |d, g| {
            let request = LookupRequest::new(
                order(&[d]),
                LookupSet::required([g.clone()]),
                RequiredState::Ready,
            )
            .await_definitions(AwaitDefinitions::UntilCancelled);
            let (late, later) = (d.clone(), g.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                late.define(emitting(&later, 0x9, vec![])).unwrap();
            });
            block_on(d.session().lookup_with(&request))
        });
        s.end();
        found
    });
    assert_eq!(found.unwrap(), Some(0x9));
}

/// Defines `f` in `d`, a unit whose materializer resolves it at the
/// address `awaited` (run inside it) finds for `g`, and looks `f` up Ready:
/// its address.
fn f_at_the_address_awaited_for_g(
    s: &Session,
    d: &Dylib,
    awaited: impl FnOnce(&Dylib, &SymbolName) -> Result<SymbolMap, Error> + Send + 'static,
) -> Result<Option<u64>, Error> {
    let (f, g) = (s.intern("f"), s.intern("g"));
    let (dd, ff) = (d.clone(), f.clone());
    d.define(unit("awaiting", &[(&f, X)], move |r| {
        let found = awaited(&dd, &g);
        let address = found.map_or(0, |m| m.get(&g).map_or(0, |d| d.address));
        r.resolve(&[(ff, def(address))]).unwrap();
        r.emit(vec![]).unwrap();
    }))
    .unwrap();
    lookup(s, &[d], &[&f], RequiredState::Ready)
        .wait()
        .map(|m| m.get(&f).map(|d| d.address))
}

/// Runs `f` on a thread of its own and returns what it returns; fails if
/// that takes over a minute (a hang is the bug some tests look for).
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// An executor's `block_on` (as `futures`' and `pollster`'s): parks until
/// the future's waker is called, never polls again by itself.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn awaiting_definitions_completes_when_a_later_define_supplies_them() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let (late, never) = (s.intern("late"), s.intern("never"));
    let request = LookupRequest::new(
        order(&[&d]),
        LookupSet::required([late.clone()]),
        RequiredState::Ready,
    )
    .await_definitions(AwaitDefinitions::UntilCancelled);
    let pending = s.lookup_with(&request);
    std::thread::sleep(Duration::from_millis(20));
    assert!(!pending.is_complete());
    d.define(emitting(&late, 0x1a7e, vec![])).unwrap();
    assert_eq!(pending.wait().unwrap().get(&late).unwrap().address, 0x1a7e);

    let request = LookupRequest::new(
        order(&[&d]),
        LookupSet::required([never.clone()]),
        RequiredState::Ready,
    )
    .await_definitions(AwaitDefinitions::For(Duration::from_millis(50)));
    let err = s.lookup_with(&request).wait().unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { waiting_for, .. } if waiting_for == std::slice::from_ref(&never)),
        "{err}"
    );
    s.end();
}

// ----- responsibility operations ------------------------------------------

#[test]
fn requested_replace_and_delegate() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, b, c) = (s.intern("a"), s.intern("b"), s.intern("c"));
    let runs = Arc::new(Mutex::new(Vec::new()));
    let log = runs.clone();
    let (an, bn, cn) = (a.clone(), b.clone(), c.clone());
    d.define(unit("abc", &[(&a, X), (&b, X), (&c, X)], move |mut r| {
        // Only a was asked for: hand b back as a new unit, split c off.
        assert_eq!(r.requested().unwrap(), vec![an.clone()]);
        let log2 = log.clone();
        let bn2 = bn.clone();
        r.replace(unit("b-again", &[(&bn, X)], move |r| {
            log2.lock().unwrap().push("b");
            r.resolve(&[(bn2, def(0xb))]).unwrap();
            r.emit(vec![]).unwrap();
        }))
        .unwrap();
        let rc = r.delegate(std::slice::from_ref(&cn)).unwrap();
        rc.resolve(&[(cn.clone(), def(0xc))]).unwrap();
        rc.emit(vec![]).unwrap();
        assert_eq!(r.symbols().unwrap(), vec![(an.clone(), X)]);
        r.resolve(&[(an, def(0xa))]).unwrap();
        r.emit(vec![]).unwrap();
        log.lock().unwrap().push("abc");
    }))
    .unwrap();
    lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(d.symbol_state(&b), Some(SymbolState::Lazy));
    assert_eq!(d.symbol_state(&c), Some(SymbolState::Ready));
    lookup(&s, &[&d], &[&b], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(*runs.lock().unwrap(), vec!["abc", "b"]);
}

#[test]
fn define_materializing_adds_owned_symbols_and_reports_all_clashes() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let (a, extra, taken1, taken2, weak) = (
        s.intern("a"),
        s.intern("extra"),
        s.intern("t1"),
        s.intern("t2"),
        s.intern("wk"),
    );
    d.define_absolute([
        (taken1.clone(), def(1)),
        (taken2.clone(), def(2)),
        (weak.clone(), def(3)),
    ])
    .unwrap();
    let (an, en, t1, t2, wk) = (
        a.clone(),
        extra.clone(),
        taken1.clone(),
        taken2.clone(),
        weak.clone(),
    );
    d.define(unit("grows", &[(&a, X)], move |mut r| {
        let err = r
            .define_materializing(vec![(t1.clone(), X), (t2.clone(), X)])
            .unwrap_err();
        assert!(matches!(&err, Error::DuplicateDefinitions { names, .. } if names == &[t1, t2]));
        let added = r
            .define_materializing(vec![(en.clone(), X), (wk, X | SymbolFlags::WEAK)])
            .unwrap();
        assert_eq!(added, vec![en.clone()]);
        r.resolve(&[(an, def(0xa)), (en, def(0xe))]).unwrap();
        r.emit(vec![]).unwrap();
    }))
    .unwrap();
    lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait()
        .unwrap();
    let found = lookup(&s, &[&d], &[&extra], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&extra).unwrap().address, 0xe);
}

#[test]
fn reexports_follow_their_target() {
    let s = inplace();
    let (lib, main) = (
        s.create_dylib("lib").unwrap(),
        s.create_dylib("main").unwrap(),
    );
    let (target, alias) = (s.intern("impl"), s.intern("api"));
    lib.define(emitting(&target, 0x77, vec![])).unwrap();
    main.define(reexports(
        &lib,
        DylibLookup::ExportedOnly,
        [Alias {
            name: alias.clone(),
            target: target.clone(),
            flags: X | SymbolFlags::CALLABLE,
        }],
    ))
    .unwrap();
    let found = lookup(&s, &[&main], &[&alias], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&alias).unwrap().address, 0x77);
}

#[test]
fn reexport_cycle_is_an_error_not_a_hang() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let (a, b) = (s.intern("a"), s.intern("b"));
    d.define(reexports(
        &d,
        DylibLookup::All,
        [Alias {
            name: a.clone(),
            target: b.clone(),
            flags: X,
        }],
    ))
    .unwrap();
    d.define(reexports(
        &d,
        DylibLookup::All,
        [Alias {
            name: b.clone(),
            target: a.clone(),
            flags: X,
        }],
    ))
    .unwrap();
    let err = lookup(&s, &[&d], &[&a], RequiredState::Ready)
        .wait_timeout(Duration::from_secs(10))
        .unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
    s.end();
}
