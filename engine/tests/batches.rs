//! Batches: units with one batch key, in one dylib and tracker, that one
//! step starts together run in one task (`materialize_batch`), each with
//! its own responsibility.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use kiln_engine::unit::Batched;
use kiln_engine::*;

/// What the units of a test did: each batch call (its units' names, first
/// the one it was called on) and each unit materialized alone.
#[derive(Default)]
struct Log {
    batches: Vec<Vec<String>>,
    alone: Vec<String>,
}

/// One symbol at a fixed address, in batch `key`; `panics`: its
/// `materialize_batch` panics after resolving its own symbol.
struct Keyed {
    name: String,
    sym: SymbolName,
    addr: u64,
    key: Option<usize>,
    panics: bool,
    log: Arc<Mutex<Log>>,
}

impl Keyed {
    fn finish(self, r: Responsibility) {
        r.resolve(&[(self.sym.clone(), def(self.addr))]).unwrap();
        r.emit(vec![DependenceGroup::new([self.sym], [])]).unwrap();
    }
}

impl MaterializationUnit for Keyed {
    fn name(&self) -> &str {
        &self.name
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.sym.clone(), X)]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        self.log.lock().unwrap().alone.push(self.name.clone());
        self.finish(r);
    }
    fn batch_key(&self) -> Option<usize> {
        self.key
    }
    fn materialize_batch(self: Box<Self>, r: Responsibility, others: Vec<Batched>) {
        let mut members = vec![(self, r)];
        for other in others {
            match other.downcast::<Keyed>() {
                Ok(member) => members.push(member),
                Err(_) => panic!("a batch of another type"),
            }
        }
        let names = members.iter().map(|(u, _)| u.name.clone()).collect();
        members[0].0.log.lock().unwrap().batches.push(names);
        if members[0].0.panics {
            let (first, r) = members.remove(0);
            r.resolve(&[(first.sym.clone(), def(first.addr))]).unwrap();
            panic!("batch failed on purpose");
        }
        for (unit, r) in members {
            unit.finish(r);
        }
    }
}

fn keyed(s: &Session, name: &str, addr: u64, key: Option<usize>, log: &Arc<Mutex<Log>>) -> Keyed {
    Keyed {
        name: name.into(),
        sym: s.intern(name),
        addr,
        key,
        panics: false,
        log: log.clone(),
    }
}

/// A unit with a batch key and only `materialize`.
struct Plain(FnUnit);

impl MaterializationUnit for Plain {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.0.symbols()
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        Box::new(self.0).materialize(r)
    }
    fn batch_key(&self) -> Option<usize> {
        Some(9)
    }
}

/// Looks `names` up at Ready in `d`: the i-th is at `base + i`.
fn all_ready_at(s: &Session, d: &Dylib, names: &[SymbolName], base: u64) {
    let found = lookup(
        s,
        &[d],
        &names.iter().collect::<Vec<_>>(),
        RequiredState::Ready,
    )
    .wait()
    .unwrap();
    for (i, n) in names.iter().enumerate() {
        assert_eq!(found.get(n).unwrap().address, base + i as u64);
    }
}

#[test]
fn units_one_lookup_starts_with_one_key_run_in_one_task() {
    for s in [
        inplace(),
        Session::builder().dispatcher(WorkerPool::new(2)).build(),
    ] {
        let d = s.create_dylib("d").unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let mut names = Vec::new();
        for (i, key) in [Some(7), Some(7), None, Some(7), Some(8), Some(8)]
            .into_iter()
            .enumerate()
        {
            let name = format!("u{i}");
            d.define(keyed(&s, &name, 0x1000 + i as u64, key, &log))
                .unwrap();
            names.push(s.intern(&name));
        }
        all_ready_at(&s, &d, &names, 0x1000);
        // A later lookup's batches: the engine's memory of where each
        // key's batch went is an older drive's.
        let mut later = Vec::new();
        for (i, key) in [Some(8), None, Some(7), Some(8)].into_iter().enumerate() {
            let name = format!("u{}", 6 + i);
            d.define(keyed(&s, &name, 0x2000 + i as u64, key, &log))
                .unwrap();
            later.push(s.intern(&name));
        }
        all_ready_at(&s, &d, &later, 0x2000);
        let log = log.lock().unwrap();
        let mut batches = log.batches.clone();
        batches.sort();
        assert_eq!(
            batches,
            [vec!["u0", "u1", "u3"], vec!["u4", "u5"], vec!["u6", "u9"]]
        );
        let mut alone = log.alone.clone();
        alone.sort();
        assert_eq!(alone, ["u2", "u7", "u8"]);
        s.end();
    }
}

#[test]
fn units_of_other_trackers_dylibs_or_lookups_are_not_batched() {
    let s = inplace();
    let (d, e) = (s.create_dylib("d").unwrap(), s.create_dylib("e").unwrap());
    let log = Arc::new(Mutex::new(Log::default()));
    let t = d.create_tracker().unwrap();
    d.define(keyed(&s, "a", 1, Some(7), &log)).unwrap();
    d.define_boxed(Box::new(keyed(&s, "b", 2, Some(7), &log)), Some(&t))
        .unwrap();
    e.define(keyed(&s, "c", 3, Some(7), &log)).unwrap();
    d.define(keyed(&s, "later", 4, Some(7), &log)).unwrap();
    let names = ["a", "b", "c"].map(|n| s.intern(n));
    let mut order = order(&[&d]);
    order.push(&e, DylibLookup::ExportedOnly);
    s.lookup(
        &order,
        &LookupSet::required(names.iter().cloned()),
        RequiredState::Ready,
    )
    .wait()
    .unwrap();
    lookup(&s, &[&d], &[&s.intern("later")], RequiredState::Ready)
        .wait()
        .unwrap();
    let log = log.lock().unwrap();
    assert!(log.batches.is_empty(), "{:?}", log.batches);
    let mut alone = log.alone.clone();
    alone.sort();
    assert_eq!(alone, ["a", "b", "c", "later"]);
    s.end();
}

#[test]
fn a_panicking_batch_fails_each_unit_it_dropped_with_its_own_name() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let mut first = keyed(&s, "first", 1, Some(7), &log);
    first.panics = true;
    d.define(first).unwrap();
    d.define(keyed(&s, "second", 2, Some(7), &log)).unwrap();
    let (a, b) = (s.intern("first"), s.intern("second"));
    let e = lookup(&s, &[&d], &[&a, &b], RequiredState::Ready)
        .wait()
        .unwrap_err();
    assert!(matches!(e.root_cause(), Error::Panicked { .. }), "{e}");
    for (name, sym) in [("first", &a), ("second", &b)] {
        let e = lookup(&s, &[&d], &[sym], RequiredState::Ready)
            .wait()
            .unwrap_err();
        match e.root_cause() {
            Error::Panicked { unit, message } => {
                assert_eq!(&**unit, name);
                assert!(message.contains("on purpose"), "{message}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    s.end();
}

#[test]
fn a_unit_without_materialize_batch_runs_each_alone() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let names = ["p", "q", "r"].map(|n| s.intern(n));
    for (i, n) in names.iter().enumerate() {
        d.define(Plain(emitting(n, 0x10 + i as u64, vec![])))
            .unwrap();
    }
    all_ready_at(&s, &d, &names, 0x10);
    s.end();
}

#[test]
fn a_responsibility_absorbs_another_and_emits_both_as_one() {
    let s = inplace();
    let d = s.create_dylib("d").unwrap();
    let t = d.create_tracker().unwrap();
    let (a, b, c) = (s.intern("a"), s.intern("b"), s.intern("c"));
    let slots: Vec<(Slot<Responsibility>, Slot<Responsibility>)> = (0..3).map(|_| slot()).collect();
    for (i, (name, tracker)) in [(&a, None), (&b, None), (&c, Some(&t))]
        .into_iter()
        .enumerate()
    {
        let keep = slots[i].0.clone();
        let u = unit(&format!("unit-{name}"), &[(name, X)], move |r| {
            *keep.lock().unwrap() = Some(r);
        });
        d.define_boxed(Box::new(u), tracker).unwrap();
    }
    let pending = lookup(&s, &[&d], &[&a, &b, &c], RequiredState::Ready);
    let take = |i: usize| slots[i].1.lock().unwrap().take().unwrap();
    let (mut ra, rb, rc) = (take(0), take(1), take(2));
    // Another tracker's: refused, and its symbol fails with the error.
    let e = ra.absorb(vec![rc]).unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");
    ra.absorb(vec![rb]).unwrap();
    ra.resolve(&[(a.clone(), def(1)), (b.clone(), def(2))])
        .unwrap();
    assert_eq!(d.symbol_state(&b), Some(SymbolState::Resolved));
    ra.emit(vec![DependenceGroup::new([a.clone(), b.clone()], [])])
        .unwrap();
    assert!(pending.wait().is_err(), "c failed");
    let found = lookup(&s, &[&d], &[&a, &b], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&b).unwrap().address, 2);
    assert!(
        lookup(&s, &[&d], &[&c], RequiredState::Ready)
            .wait()
            .is_err()
    );
    s.end();
}

/// A unit with a batch key and only `materialize`, which waits (up to a
/// bound) until `together` units have started: they must run side by side.
struct Meeting {
    sym: SymbolName,
    started: Arc<std::sync::atomic::AtomicUsize>,
    together: usize,
}

impl MaterializationUnit for Meeting {
    fn name(&self) -> &str {
        self.sym.as_str()
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.sym.clone(), X)]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        use std::sync::atomic::Ordering;
        self.started.fetch_add(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.started.load(Ordering::SeqCst) < self.together {
            if std::time::Instant::now() > deadline {
                return r.fail(Error::msg("ran alone: the batch was not side by side"));
            }
            std::thread::yield_now();
        }
        r.resolve(&[(self.sym.clone(), def(1))]).unwrap();
        r.emit(Vec::new()).unwrap();
    }
    fn batch_key(&self) -> Option<usize> {
        Some(5)
    }
}

#[test]
fn a_batch_without_materialize_batch_runs_side_by_side_on_a_pool() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let d = s.create_dylib("d").unwrap();
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let names = ["m1", "m2"].map(|n| s.intern(n));
    for n in &names {
        d.define(Meeting {
            sym: n.clone(),
            started: started.clone(),
            together: 2,
        })
        .unwrap();
    }
    lookup(
        &s,
        &[&d],
        &names.iter().collect::<Vec<_>>(),
        RequiredState::Ready,
    )
    .wait()
    .unwrap();
    s.end();
}
