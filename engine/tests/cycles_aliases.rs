//! Cycles: blocking lookups that wait on each other under the in-place
//! dispatcher (kiln issue 8 §1.4), and aliases chained within one
//! reexports unit (§1.5).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kiln_engine::*;

/// A unit defining `me` whose materializer does a blocking Ready lookup of
/// `other` in `theirs` first, recording any error.
fn waiting_unit(
    me: &SymbolName,
    other: &SymbolName,
    theirs: &Dylib,
    errors: &Arc<Mutex<Vec<String>>>,
) -> FnUnit {
    let (me2, other, theirs, errors) = (me.clone(), other.clone(), theirs.clone(), errors.clone());
    unit(&format!("unit-{me}"), &[(me, X)], move |r| {
        let found = theirs
            .session()
            .lookup(
                &order(&[&theirs]),
                &LookupSet::required([other]),
                RequiredState::Ready,
            )
            .wait();
        match found {
            Ok(_) => {
                r.resolve(&[(me2, def(1))]).unwrap();
                r.emit(vec![]).unwrap();
            }
            Err(e) => {
                errors.lock().unwrap().push(e.to_string());
                r.fail(e);
            }
        }
    })
}

/// Foo's materializer waits for Bar, Bar's for Foo; in place, Bar's runs
/// nested inside Foo's lookup on the same thread. Reported as a blocking
/// cycle naming both units, as with the worker pool.
#[test]
fn a_blocking_cycle_under_the_in_place_dispatcher_is_reported() {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    let result = must_return("in-place blocking cycle", move || {
        let s = inplace();
        let (d1, d2) = (s.create_dylib("d1").unwrap(), s.create_dylib("d2").unwrap());
        let (foo, bar) = (s.intern("foo"), s.intern("bar"));
        d1.define(waiting_unit(&foo, &bar, &d2, &errs)).unwrap();
        d2.define(waiting_unit(&bar, &foo, &d1, &errs)).unwrap();
        let result = lookup(&s, &[&d1], &[&foo], RequiredState::Ready)
            .wait()
            .map(|_| ());
        s.end();
        result
    });
    let err = result.unwrap_err();
    let msgs = errors.lock().unwrap().clone();
    assert!(
        msgs.iter()
            .any(|m| m.contains("blocking lookups form a cycle")
                && m.contains("unit-foo")
                && m.contains("unit-bar")),
        "{msgs:?} / {err}"
    );
}

/// Foo waits for Bar, Bar for Baz, Baz for Foo, in a session from
/// `session`: the lookup of Foo's result and the errors the units saw.
fn three_unit_cycle(
    session: impl FnOnce() -> Session + Send + 'static,
) -> (Result<()>, Vec<String>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    let result = must_return("three-unit cycle", move || {
        let s = session();
        let d = s.create_dylib("d").unwrap();
        let [first, second, third] = ["foo", "bar", "baz"].map(|n| s.intern(n));
        d.define(waiting_unit(&first, &second, &d, &errs)).unwrap();
        d.define(waiting_unit(&second, &third, &d, &errs)).unwrap();
        d.define(waiting_unit(&third, &first, &d, &errs)).unwrap();
        let result = lookup(&s, &[&d], &[&first], RequiredState::Ready)
            .wait()
            .map(|_| ());
        s.end();
        result
    });
    let msgs = errors.lock().unwrap().clone();
    (result, msgs)
}

/// A three-unit cycle in place: Foo waits for Bar, Bar for Baz, Baz for Foo.
#[test]
fn a_longer_blocking_cycle_under_the_in_place_dispatcher_is_reported() {
    let (result, msgs) = three_unit_cycle(inplace);
    assert!(result.is_err());
    // Spelled out from the unit whose wait closed it (the search that finds
    // it walks ids; its words are made only once it closes).
    let expected = "blocking lookups form a cycle: unit 'unit-baz' waits for foo in dylib 'd' -> \
                    unit 'unit-foo', which cannot return before unit 'unit-bar' and unit \
                    'unit-baz', nested above it on its thread, return";
    assert!(msgs.iter().any(|m| m.contains(expected)), "{msgs:#?}");
}

/// Nested in place but not a cycle: Foo's materializer waits for Bar, whose
/// materializer waits for Baz (a plain unit). Everything completes.
#[test]
fn a_blocking_chain_under_the_in_place_dispatcher_completes() {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    let result = must_return("in-place blocking chain", move || {
        let s = inplace();
        let d = s.create_dylib("d").unwrap();
        let (foo, bar, baz) = (s.intern("foo"), s.intern("bar"), s.intern("baz"));
        d.define(waiting_unit(&foo, &bar, &d, &errs)).unwrap();
        d.define(waiting_unit(&bar, &baz, &d, &errs)).unwrap();
        d.define(emitting(&baz, 0xb, vec![])).unwrap();
        let result = lookup(&s, &[&d], &[&foo], RequiredState::Ready)
            .wait()
            .map(|m| m.get(&foo).is_some());
        s.end();
        result
    });
    assert!(result.unwrap(), "{:?}", errors.lock().unwrap());
}

fn alias(name: &SymbolName, target: &SymbolName) -> Alias {
    Alias {
        name: name.clone(),
        target: target.clone(),
        flags: X,
    }
}

/// One reexports unit defines `baz → bar` and `bar → foo`: both resolve to
/// foo's address, in either order of the aliases, under either dispatcher.
#[test]
fn chained_aliases_in_one_unit_resolve() {
    for pool in [false, true] {
        for reversed in [false, true] {
            let s = if pool {
                Session::builder().dispatcher(WorkerPool::new(2)).build()
            } else {
                inplace()
            };
            let d = s.create_dylib("d").unwrap();
            let [foo, bar, baz, qux] = ["foo", "bar", "baz", "qux"].map(|n| s.intern(n));
            d.define(emitting(&foo, 0xf00, vec![])).unwrap();
            let mut aliases = vec![alias(&qux, &baz), alias(&baz, &bar), alias(&bar, &foo)];
            if reversed {
                aliases.reverse();
            }
            d.define(reexports(&d, DylibLookup::All, aliases)).unwrap();
            let found = lookup(&s, &[&d], &[&qux, &baz, &bar], RequiredState::Ready)
                .wait_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("pool={pool} reversed={reversed}: {e}"));
            for n in [&qux, &baz, &bar] {
                assert_eq!(found.get(n).unwrap().address, 0xf00, "{n}");
            }
            s.end();
        }
    }
}

/// A true cycle among one unit's aliases fails with an error naming it.
#[test]
fn an_alias_cycle_in_one_unit_fails_naming_it() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let [a, b, c, other] = ["a", "b", "c", "other"].map(|n| s.intern(n));
    d.define(reexports(
        &d,
        DylibLookup::All,
        [
            alias(&other, &a),
            alias(&a, &b),
            alias(&b, &c),
            alias(&c, &a),
        ],
    ))
    .unwrap();
    let err = must_return("alias cycle", move || {
        lookup(&s, &[&d], &[&a], RequiredState::Ready)
            .wait()
            .unwrap_err()
    });
    let text = err.to_string();
    assert!(
        text.contains("alias cycle in dylib 'd': a -> b -> c -> a"),
        "{text}"
    );
}

/// On a one-thread worker pool, Foo's materializer starts Bar without
/// waiting, then waits for Zed; its helping wait runs Bar's materializer
/// nested on the same thread, and Bar waits for Foo — which cannot return
/// before Bar does. A cycle, though Foo itself waits only for Zed.
#[test]
fn a_unit_nested_by_a_helping_wait_that_waits_for_the_unit_beneath_it_is_a_cycle() {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    let result = must_return("helping-wait cycle", move || {
        let s = Session::builder().dispatcher(WorkerPool::new(1)).build();
        let d = s.create_dylib("d").unwrap();
        let [foo, bar, zed] = ["foo", "bar", "zed"].map(|n| s.intern(n));
        d.define(waiting_unit(&bar, &foo, &d, &errs)).unwrap();
        d.define(emitting(&zed, 0x2, vec![])).unwrap();
        let (dd, me, errs2) = (d.clone(), foo.clone(), errs.clone());
        let (bar2, zed2) = (bar.clone(), zed.clone());
        d.define(unit("unit-foo", &[(&foo, X)], move |r| {
            let sess = dd.session();
            let set = |n: &SymbolName| LookupSet::required([n.clone()]);
            // Bar's materializer is queued first, then Zed's.
            sess.lookup(&order(&[&dd]), &set(&bar2), RequiredState::Ready)
                .on_complete(|_| {});
            let found = sess
                .lookup(&order(&[&dd]), &set(&zed2), RequiredState::Ready)
                .wait();
            match found {
                Ok(_) => {
                    r.resolve(&[(me, def(1))]).unwrap();
                    r.emit(vec![]).unwrap();
                }
                Err(e) => {
                    errs2.lock().unwrap().push(e.to_string());
                    r.fail(e);
                }
            }
        }))
        .unwrap();
        let result = lookup(&s, &[&d], &[&foo], RequiredState::Ready)
            .wait()
            .map(|_| ());
        s.end();
        result
    });
    let msgs = errors.lock().unwrap().clone();
    assert!(
        msgs.iter()
            .any(|m| m.contains("cycle") && m.contains("unit-foo") && m.contains("unit-bar")),
        "{msgs:?} / {result:?}"
    );
}

/// On a pool of three, the three units wait on their own threads or nested
/// (the helping wait), so where the cycle closes depends on timing; its
/// text is a chain all the same: each step's unit is the one the step
/// before waits for.
#[test]
fn a_blocking_cycle_across_threads_is_spelled_out_as_a_chain_of_waits() {
    for _ in 0..10 {
        let (result, msgs) =
            three_unit_cycle(|| Session::builder().dispatcher(WorkerPool::new(3)).build());
        assert!(result.is_err());
        let cycle = msgs
            .iter()
            .find_map(|m| m.strip_prefix("blocking lookups form a cycle: "))
            .unwrap_or_else(|| panic!("no cycle reported: {msgs:#?}"));
        let steps: Vec<&str> = cycle.split(" -> ").collect();
        assert!(steps.len() >= 2, "{cycle}");
        for pair in steps.windows(2) {
            let waited = pair[0]
                .split_once(" waits for ")
                .and_then(|(_, rest)| rest.strip_suffix(" in dylib 'd'"))
                .unwrap_or_else(|| panic!("not a wait: {:?} in {cycle}", pair[0]));
            assert!(
                pair[1].starts_with(&format!("unit 'unit-{waited}'")),
                "{cycle}"
            );
        }
    }
}

/// In place, a chain of 20,000 units, each of which resolves its symbol,
/// asks for the next one's with a callback and returns (the emit comes in
/// the callback, as the object layer does it): each unit's materializer
/// runs after the one that started it, from the in-place dispatcher's
/// queue, not nested in it — the stack does not grow with the chain. (It
/// used to: every dispatch ran at once, inside the lookup that made it,
/// and such a chain overflowed the stack.)
#[test]
fn a_long_chain_of_units_dispatched_in_place_runs_one_after_another() {
    const UNITS: usize = 20_000;
    let result = must_return("in-place chain", || {
        let s = inplace();
        let d = s.create_dylib("d").unwrap();
        let names: Vec<SymbolName> = (0..UNITS).map(|i| s.intern(&format!("f{i}"))).collect();
        for i in 0..UNITS {
            let me = names[i].clone();
            let next = names.get(i + 1).cloned();
            let dd = d.clone();
            d.define(unit(&format!("unit-{i}"), &[(&names[i], X)], move |r| {
                r.resolve(&[(me.clone(), def(0x1000 + i as u64))]).unwrap();
                let Some(next) = next else {
                    r.emit(vec![DependenceGroup::new([me], vec![])]).unwrap();
                    return;
                };
                let deps = vec![(dd.clone(), vec![next.clone()])];
                dd.session()
                    .lookup(
                        &order(&[&dd]),
                        &LookupSet::required([next]),
                        RequiredState::Resolved,
                    )
                    .on_complete(move |found| match found {
                        Ok(_) => r.emit(vec![DependenceGroup::new([me], deps)]).unwrap(),
                        Err(e) => r.fail(e),
                    });
            }))
            .unwrap();
        }
        let found = lookup(&s, &[&d], &[&names[0]], RequiredState::Ready)
            .wait()
            .map(|m| m.get(&names[0]).map(|def| def.address));
        s.end();
        found
    });
    assert_eq!(result.unwrap(), Some(0x1000));
}

/// On a pool of one thread, a chain of 3,000 units each of which blocks in
/// a lookup of the next (as ORC-style materializers do): the waiting thread
/// helps by running the next unit's materializer nested above its own, but
/// only so deep — then a spare thread takes the queue and the waiter only
/// waits. (It used to help without bound, and such a chain overflowed the
/// worker's stack.)
#[test]
fn a_long_chain_of_blocking_units_on_a_small_pool_does_not_overflow_a_stack() {
    const UNITS: usize = 3000;
    let result = must_return("blocking chain", || {
        let s = Session::builder().dispatcher(WorkerPool::new(1)).build();
        let d = s.create_dylib("d").unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let names: Vec<SymbolName> = (0..UNITS).map(|i| s.intern(&format!("f{i}"))).collect();
        for i in 0..UNITS {
            match names.get(i + 1) {
                Some(next) => d.define(waiting_unit(&names[i], next, &d, &errors)),
                None => d.define(emitting(&names[i], 1, vec![])),
            }
            .unwrap();
        }
        let found = lookup(&s, &[&d], &[&names[0]], RequiredState::Ready)
            .wait()
            .map(|m| m.get(&names[0]).map(|def| def.address));
        s.end();
        (found, errors.lock().unwrap().clone())
    });
    assert_eq!(result.1, Vec::<String>::new());
    assert_eq!(result.0.unwrap(), Some(1));
}

/// An in-place session driven from a worker of a pool session: its unit
/// Foo, run in place there, waits for Bar, whose materializer its own
/// lookup queued on that thread. The wait runs the thread's queue first,
/// pool thread or not. (It used to help only its pool, and Bar never ran.)
#[test]
fn an_in_place_wait_on_a_pool_worker_runs_the_tasks_it_queued() {
    let found = must_return("in-place session on a pool worker", || {
        let pool = Session::builder().dispatcher(WorkerPool::new(1)).build();
        let outer = pool.create_dylib("outer").unwrap();
        let host = pool.intern("host");
        let h = host.clone();
        outer
            .define(unit("outer-unit", &[(&host, X)], move |r| {
                let s = inplace();
                let d = s.create_dylib("d").unwrap();
                let errs = Arc::new(Mutex::new(Vec::new()));
                let [foo, bar] = ["foo", "bar"].map(|n| s.intern(n));
                d.define(waiting_unit(&foo, &bar, &d, &errs)).unwrap();
                d.define(emitting(&bar, 2, vec![])).unwrap();
                let inner = lookup(&s, &[&d], &[&foo], RequiredState::Ready)
                    .wait()
                    .map(|m| m.get(&foo).map(|def| def.address));
                s.end();
                let address = match inner {
                    Ok(Some(a)) => a,
                    _ => 0,
                };
                r.resolve(&[(h, def(address))]).unwrap();
                r.emit(vec![]).unwrap();
            }))
            .unwrap();
        let found = lookup(&pool, &[&outer], &[&host], RequiredState::Ready)
            .wait()
            .map(|m| m.get(&host).map(|def| def.address));
        pool.end();
        found
    });
    assert_eq!(found.unwrap(), Some(1));
}
