//! Loom models of the engine's protocols: the real engine code, built with
//! `--cfg kiln_loom` so every mutex, condvar, atomic and thread in it is
//! loom's. Run with
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg kiln_loom" cargo test -p kiln-loom-tests --release`.
//!
//! Each model keeps to three threads; nothing in a model depends on time,
//! hash iteration order or thread ids.
#![cfg(kiln_loom)]

mod runner;

use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool as StdAtomicBool, AtomicUsize as StdAtomicUsize, Ordering::SeqCst,
};

use kiln_engine::*;
use loom::sync::Mutex;
use loom::sync::atomic::{AtomicBool, AtomicUsize};
use runner::model;

const X: SymbolFlags = SymbolFlags::EXPORTED;

/// A unit that resolves its one symbol and parks its responsibility, so the
/// model decides which thread emits (or fails) it.
struct Parked {
    name: SymbolName,
    address: u64,
    slot: Arc<Mutex<Option<Responsibility>>>,
}

impl MaterializationUnit for Parked {
    fn name(&self) -> &str {
        "parked"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.name.clone(), X)]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        r.resolve(&[(self.name.clone(), SymbolDef::new(self.address, X))])
            .unwrap();
        *self.slot.lock().unwrap() = Some(r);
    }
}

fn order(dylibs: &[&Dylib]) -> SearchOrder {
    dylibs
        .iter()
        .map(|d| ((*d).clone(), DylibLookup::ExportedOnly))
        .collect()
}

fn lookup(s: &Session, dylibs: &[&Dylib], name: &SymbolName, state: RequiredState) -> Lookup {
    s.lookup(&order(dylibs), &LookupSet::required([name.clone()]), state)
}

/// Two dylibs, A in d1 and B in d2 depending on each other, both resolved
/// and parked. Returns the session, the dylibs, the names and the slots.
#[allow(clippy::type_complexity)]
fn parked_cycle() -> (
    Session,
    Dylib,
    Dylib,
    SymbolName,
    SymbolName,
    Arc<Mutex<Option<Responsibility>>>,
    Arc<Mutex<Option<Responsibility>>>,
) {
    let s = Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build();
    let d1 = s.create_dylib("d1").unwrap();
    let d2 = s.create_dylib("d2").unwrap();
    let (a, b) = (s.intern("a"), s.intern("b"));
    let (slot_a, slot_b) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
    d1.define(Parked {
        name: a.clone(),
        address: 0xa,
        slot: slot_a.clone(),
    })
    .unwrap();
    d2.define(Parked {
        name: b.clone(),
        address: 0xb,
        slot: slot_b.clone(),
    })
    .unwrap();
    // Materialize both (in place): they resolve and park.
    lookup(&s, &[&d1], &a, RequiredState::Resolved)
        .wait()
        .unwrap();
    lookup(&s, &[&d2], &b, RequiredState::Resolved)
        .wait()
        .unwrap();
    (s, d1, d2, a, b, slot_a, slot_b)
}

/// (a) A and B depend on each other across dylibs and are emitted on two
/// threads while a third looks A up at Ready: the lookup never completes
/// before both are emitted.
#[test]
fn cycle_across_dylibs_is_never_ready_early() {
    model(|| {
        let (s, d1, d2, a, b, slot_a, slot_b) = parked_cycle();
        let emitted_a = Arc::new(AtomicBool::new(false));
        let emitted_b = Arc::new(AtomicBool::new(false));
        let ta = {
            let (r, flag, d2, b) = (
                slot_a.lock().unwrap().take().unwrap(),
                emitted_a.clone(),
                d2.clone(),
                b.clone(),
            );
            loom::thread::spawn(move || {
                flag.store(true, SeqCst);
                let a = r_name(&r, "a");
                r.emit(vec![DependenceGroup::new([a], [(d2, vec![b])])])
                    .unwrap();
            })
        };
        let tb = {
            let (r, flag, d1, a) = (
                slot_b.lock().unwrap().take().unwrap(),
                emitted_b.clone(),
                d1.clone(),
                a.clone(),
            );
            loom::thread::spawn(move || {
                flag.store(true, SeqCst);
                let b = r_name(&r, "b");
                r.emit(vec![DependenceGroup::new([b], [(d1, vec![a])])])
                    .unwrap();
            })
        };
        let found = lookup(&s, &[&d1], &a, RequiredState::Ready).wait().unwrap();
        assert!(
            emitted_a.load(SeqCst) && emitted_b.load(SeqCst),
            "A Ready before the cycle was emitted"
        );
        assert_eq!(found.get(&a).unwrap().address, 0xa);
        ta.join().unwrap();
        tb.join().unwrap();
        s.end();
    });
}

fn r_name(r: &Responsibility, name: &str) -> SymbolName {
    r.dylib().session().intern(name)
}

/// (b) The same cycle with B failing: every lookup fails, none hangs.
#[test]
fn failing_half_of_a_cycle_fails_every_lookup() {
    model(|| {
        let (s, d1, d2, a, b, slot_a, slot_b) = parked_cycle();
        let ta = {
            let (r, d2, b) = (
                slot_a.lock().unwrap().take().unwrap(),
                d2.clone(),
                b.clone(),
            );
            loom::thread::spawn(move || {
                let a = r_name(&r, "a");
                // Emitting may itself fail if B failed first: both are fine.
                let _ = r.emit(vec![DependenceGroup::new([a], [(d2, vec![b])])]);
            })
        };
        let tb = {
            let r = slot_b.lock().unwrap().take().unwrap();
            loom::thread::spawn(move || r.fail(Error::msg("B's codegen failed")))
        };
        let err = lookup(&s, &[&d1], &a, RequiredState::Ready)
            .wait()
            .unwrap_err();
        assert!(err.to_string().contains("B's codegen failed"), "{err}");
        ta.join().unwrap();
        tb.join().unwrap();
        assert!(lookup(&s, &[&d2], &b, RequiredState::Ready).wait().is_err());
        s.end();
    });
}

/// Counts its materializations.
struct Counted {
    name: SymbolName,
    runs: Arc<StdAtomicUsize>,
}

impl MaterializationUnit for Counted {
    fn name(&self) -> &str {
        "counted"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.name.clone(), X)]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        self.runs.fetch_add(1, SeqCst);
        r.resolve(&[(self.name.clone(), SymbolDef::new(0x42, X))])
            .unwrap();
        r.emit(vec![]).unwrap();
    }
}

/// (c) Two threads look up one lazy symbol: exactly one materialization,
/// both get the same address.
#[test]
fn one_materialization_for_concurrent_first_lookups() {
    model(|| {
        let s = Session::builder()
            .dispatcher(InPlaceDispatcher::new())
            .build();
        let d = s.create_dylib("d").unwrap();
        let f = s.intern("f");
        let runs = Arc::new(StdAtomicUsize::new(0));
        d.define(Counted {
            name: f.clone(),
            runs: runs.clone(),
        })
        .unwrap();
        let t = {
            let (s, d, f) = (s.clone(), d.clone(), f.clone());
            loom::thread::spawn(move || lookup(&s, &[&d], &f, RequiredState::Ready).wait().unwrap())
        };
        let mine = lookup(&s, &[&d], &f, RequiredState::Ready).wait().unwrap();
        let theirs = t.join().unwrap();
        assert_eq!(mine.get(&f), theirs.get(&f));
        assert_eq!(mine.get(&f).unwrap().address, 0x42);
        assert_eq!(runs.load(SeqCst), 1);
        s.end();
    });
}

/// Serialized generator that checks nobody else is inside.
struct Exclusive {
    inside: Arc<AtomicUsize>,
    calls: Arc<StdAtomicUsize>,
    violated: Arc<StdAtomicBool>,
}

impl Generator for Exclusive {
    fn generate(&self, req: GenerateRequest) {
        if self.inside.fetch_add(1, SeqCst) != 0 {
            self.violated.store(true, SeqCst);
        }
        self.calls.fetch_add(1, SeqCst);
        let s = req.dylib().session();
        let defs: Vec<_> = req
            .names()
            .iter()
            .map(|n| (s.intern(n.as_str()), SymbolDef::new(0x100, X)))
            .collect();
        req.dylib().define_absolute(defs).unwrap();
        self.inside.fetch_sub(1, SeqCst);
    }
}

/// (d) Two lookups through one serialized generator: never two inside it at
/// once, both complete.
#[test]
fn serialized_generator_admits_one_lookup_at_a_time() {
    model(|| {
        let s = Session::builder()
            .dispatcher(InPlaceDispatcher::new())
            .build();
        let d = s.create_dylib("gen").unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(StdAtomicUsize::new(0));
        let violated = Arc::new(StdAtomicBool::new(false));
        d.add_generator(Exclusive {
            inside,
            calls: calls.clone(),
            violated: violated.clone(),
        })
        .unwrap();
        let (x, y) = (s.intern("x"), s.intern("y"));
        let t = {
            let (s, d, y) = (s.clone(), d.clone(), y.clone());
            loom::thread::spawn(move || lookup(&s, &[&d], &y, RequiredState::Ready).wait().unwrap())
        };
        lookup(&s, &[&d], &x, RequiredState::Ready).wait().unwrap();
        t.join().unwrap();
        assert!(
            !violated.load(SeqCst),
            "two lookups inside one serialized generator"
        );
        assert_eq!(calls.load(SeqCst), 2);
        s.end();
    });
}

/// An in-place session with dylib `d` and a tracker of it.
fn in_place_dylib_with_tracker() -> (Session, Dylib, ResourceTracker) {
    let s = Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build();
    let d = s.create_dylib("d").unwrap();
    let rt = d.create_tracker().unwrap();
    (s, d, rt)
}

/// (e) Tracker removal racing with emit: the lookup completes with the
/// address or fails, never hangs, and nothing removed is reported Ready.
#[test]
fn tracker_removal_racing_with_emit_never_hangs() {
    model(|| {
        let (s, d, rt) = in_place_dylib_with_tracker();
        let f = s.intern("f");
        let slot = Arc::new(Mutex::new(None));
        d.define_with(
            Parked {
                name: f.clone(),
                address: 0xf,
                slot: slot.clone(),
            },
            &rt,
        )
        .unwrap();
        lookup(&s, &[&d], &f, RequiredState::Resolved)
            .wait()
            .unwrap();
        let r = slot.lock().unwrap().take().unwrap();
        let emitter = loom::thread::spawn(move || {
            let _ = r.emit(vec![]);
        });
        let remover = {
            let rt = rt.clone();
            loom::thread::spawn(move || rt.remove().unwrap())
        };
        match lookup(&s, &[&d], &f, RequiredState::Ready).wait() {
            Ok(found) => assert_eq!(found.get(&f).unwrap().address, 0xf),
            Err(e) => assert!(
                matches!(e, Error::Failed { .. } | Error::SymbolsNotFound { .. }),
                "unexpected {e}"
            ),
        }
        emitter.join().unwrap();
        remover.join().unwrap();
        // Removed: never Ready again.
        assert!(lookup(&s, &[&d], &f, RequiredState::Ready).wait().is_err());
        s.end();
    });
}

/// A unit of batch 1: its batch's first absorbs the others' responsibilities
/// and resolves and emits every symbol in one group. Counts how often each
/// unit is materialized.
struct Batching {
    name: SymbolName,
    address: u64,
    runs: Arc<StdAtomicUsize>,
}

impl Batching {
    fn def(&self) -> (SymbolName, SymbolDef) {
        self.runs.fetch_add(1, SeqCst);
        (self.name.clone(), SymbolDef::new(self.address, X))
    }
}

impl MaterializationUnit for Batching {
    fn name(&self) -> &str {
        "batching"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.name.clone(), X)]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        self.materialize_batch(r, Vec::new());
    }
    fn batch_key(&self) -> Option<usize> {
        Some(1)
    }
    fn materialize_batch(self: Box<Self>, mut r: Responsibility, others: Vec<unit::Batched>) {
        let mut defs = vec![self.def()];
        let mut absorbed = Vec::new();
        for other in others {
            let Ok((unit, other)) = other.downcast::<Batching>() else {
                panic!("a batch of another type");
            };
            defs.push(unit.def());
            absorbed.push(other);
        }
        if let Err(e) = r.absorb(absorbed) {
            return r.fail(e);
        }
        if r.resolve(&defs).is_ok() {
            let names = defs.into_iter().map(|(n, _)| n);
            let _ = r.emit(vec![DependenceGroup::new(names, [])]);
        }
    }
}

/// Three units of one batch key in `d` (through `rt`): `a`, `b`, `c` at
/// 0xa, 0xb, 0xc, with their materialization counts.
fn three_batching(
    s: &Session,
    d: &Dylib,
    rt: &ResourceTracker,
) -> Vec<(SymbolName, Arc<StdAtomicUsize>)> {
    ["a", "b", "c"]
        .iter()
        .zip([0xa, 0xb, 0xc])
        .map(|(n, address)| {
            let name = s.intern(n);
            let runs = Arc::new(StdAtomicUsize::new(0));
            d.define_with(
                Batching {
                    name: name.clone(),
                    address,
                    runs: runs.clone(),
                },
                rt,
            )
            .unwrap();
            (name, runs)
        })
        .collect()
}

/// Looks `names` up at Ready in `d`.
fn lookup_all(s: &Session, d: &Dylib, names: &[SymbolName]) -> Result<SymbolMap> {
    s.lookup(
        &order(&[d]),
        &LookupSet::required(names.iter().cloned()),
        RequiredState::Ready,
    )
    .wait()
}

/// (f) Two lookups start overlapping sets of one batch's units: each unit
/// is materialized exactly once (in whichever batch started it), both
/// lookups get every address.
#[test]
fn overlapping_lookups_start_each_batched_unit_once() {
    model(|| {
        let (s, d, rt) = in_place_dylib_with_tracker();
        let units = three_batching(&s, &d, &rt);
        let names: Vec<SymbolName> = units.iter().map(|(n, _)| n.clone()).collect();
        let t = {
            let (s, d, ab) = (s.clone(), d.clone(), names[..2].to_vec());
            loom::thread::spawn(move || lookup_all(&s, &d, &ab).unwrap())
        };
        let bc = lookup_all(&s, &d, &names[1..]).unwrap();
        let ab = t.join().unwrap();
        assert_eq!(ab.get(&names[0]).unwrap().address, 0xa);
        assert_eq!(ab.get(&names[1]), bc.get(&names[1]));
        assert_eq!(bc.get(&names[2]).unwrap().address, 0xc);
        for (name, runs) in &units {
            assert_eq!(runs.load(SeqCst), 1, "{name} materialized once");
        }
        s.end();
    });
}

/// (g) A batch's tracker removed while two lookups start it: the lookups
/// complete or fail, never hang; no unit runs twice; nothing is Ready after.
#[test]
fn tracker_removal_racing_with_a_batch_never_hangs() {
    model(|| {
        let (s, d, rt) = in_place_dylib_with_tracker();
        let units = three_batching(&s, &d, &rt);
        let names: Vec<SymbolName> = units.iter().map(|(n, _)| n.clone()).collect();
        let t = {
            let (s, d, names) = (s.clone(), d.clone(), names.clone());
            loom::thread::spawn(move || {
                if let Ok(found) = lookup_all(&s, &d, &names) {
                    assert_eq!(found.get(&names[2]).unwrap().address, 0xc);
                }
            })
        };
        let remover = {
            let rt = rt.clone();
            loom::thread::spawn(move || rt.remove().unwrap())
        };
        let _ = lookup_all(&s, &d, &names[..1]);
        t.join().unwrap();
        remover.join().unwrap();
        for (name, runs) in &units {
            assert!(runs.load(SeqCst) <= 1, "{name} materialized twice");
        }
        assert!(lookup_all(&s, &d, &names).is_err());
        s.end();
    });
}
