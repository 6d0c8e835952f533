//! Modules that name each other (kiln issue 12 §3): a [`QualifiedNames`]
//! generator answers `Module_name` with an alias of `name` in module
//! `Module`'s dylib, waiting for modules that are not registered yet.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kiln_engine::*;

const MODULES: usize = 20;

/// A deterministic random sequence (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self, modulo: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % modulo as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.next(i + 1));
        }
    }
}

fn module_name(i: usize) -> String {
    format!("M{i}")
}

/// Where module `i`'s `f` lives, and its `value`.
fn f_address(i: usize) -> u64 {
    0x10_0000 * (i as u64 + 1)
}
fn value_address(i: usize) -> u64 {
    f_address(i) + 8
}

/// What each module's `f` saw when it resolved its calls: (caller, callee
/// name, address found).
type Seen = Arc<Mutex<Vec<(usize, String, u64)>>>;

/// Module `i`'s `f`, as the object layer would link it: resolve itself,
/// look its callees' qualified names up (`M<j>_f`, `M<j>_value`) through
/// the module's link order without blocking, record what it found (its
/// "relocations"), and emit depending on them.
fn module_f(
    module: &Dylib,
    shared: &Dylib,
    i: usize,
    callees: Vec<usize>,
    seen: Seen,
    runs: Arc<AtomicUsize>,
) -> FnUnit {
    let s = module.session();
    let f = s.intern("f");
    let (module, shared, own) = (module.clone(), shared.clone(), f.clone());
    unit(&format!("M{i}.f"), &[(&own, X)], move |r| {
        runs.fetch_add(1, Ordering::SeqCst);
        let s = r.dylib().session();
        r.resolve(&[(f.clone(), def(f_address(i)))]).unwrap();
        let calls: Vec<SymbolName> = callees
            .iter()
            .flat_map(|j| [format!("M{j}_f"), format!("M{j}_value")])
            .map(|n| s.intern(&n))
            .collect();
        let order = module.link_order();
        let lookup = s.lookup_for_unit(
            &order,
            LookupSet::required(calls.iter().cloned()),
            RequiredState::Resolved,
            &r,
        );
        lookup.on_complete(move |found| {
            let found = match found {
                Ok(found) => found,
                Err(e) => return r.fail(e),
            };
            let mut seen = seen.lock().unwrap();
            for name in &calls {
                let address = found.get(name).map_or(0, |d| d.address);
                seen.push((i, name.to_string(), address));
            }
            drop(seen);
            r.emit(vec![DependenceGroup::new([f], [(shared, calls)])])
                .unwrap();
        });
    })
}

/// Creates module `i` (its own dylib, searching itself then the shared
/// dylib), defines its `f` and `value`, and registers it.
fn load_module(
    s: &Session,
    names: &QualifiedNames,
    shared: &Dylib,
    i: usize,
    callees: Vec<usize>,
    seen: Seen,
    runs: Arc<AtomicUsize>,
) {
    let module = s.create_dylib(&module_name(i)).unwrap();
    module
        .set_link_order(&[(shared.clone(), DylibLookup::ExportedOnly)])
        .unwrap();
    let value = s.intern("value");
    module
        .define_absolute([(value, def(value_address(i)))])
        .unwrap();
    module
        .define(module_f(&module, shared, i, callees, seen, runs))
        .unwrap();
    names.register(&module);
}

/// One run: 20 modules, each calling three others (cycles included)
/// through qualified names, loaded in a random order by two threads while
/// two other threads call every module's `f` through its qualified name.
fn twenty_modules(seed: u64) {
    let s = Session::builder().dispatcher(WorkerPool::new(3)).build();
    let names = QualifiedNames::with_separator("_").timeout(Duration::from_secs(60));
    let shared = s.create_dylib("qualified").unwrap();
    shared.add_generator(names.clone()).unwrap();
    let mut rng = Rng(seed);
    let callees: Vec<Vec<usize>> = (0..MODULES)
        .map(|i| {
            (0..3)
                .map(|k| (i + 1 + rng.next(MODULES - 1) + k) % MODULES)
                .collect()
        })
        .collect();
    let mut load_order: Vec<usize> = (0..MODULES).collect();
    rng.shuffle(&mut load_order);
    let seen: Seen = Arc::default();
    let runs = Arc::new(AtomicUsize::new(0));

    std::thread::scope(|scope| {
        for half in load_order.chunks(MODULES / 2) {
            let (s, names, shared, callees) = (&s, &names, &shared, &callees);
            let (seen, runs) = (&seen, &runs);
            scope.spawn(move || {
                for &i in half {
                    let (seen, runs) = (seen.clone(), runs.clone());
                    load_module(s, names, shared, i, callees[i].clone(), seen, runs);
                }
            });
        }
        for caller in 0..2u64 {
            let (s, shared) = (&s, &shared);
            scope.spawn(move || {
                let mut order: Vec<usize> = (0..MODULES).collect();
                Rng(seed ^ (caller + 1)).shuffle(&mut order);
                let search = SearchOrder::new().with(shared, DylibLookup::ExportedOnly);
                for i in order {
                    let name = s.intern(&format!("M{i}_f"));
                    let found = s
                        .lookup(
                            &search,
                            &LookupSet::required([name.clone()]),
                            RequiredState::Ready,
                        )
                        .wait()
                        .unwrap_or_else(|e| panic!("seed {seed}: M{i}_f: {e}"));
                    assert_eq!(found.get(&name).unwrap().address, f_address(i));
                }
            });
        }
    });

    assert_eq!(runs.load(Ordering::SeqCst), MODULES, "each f linked once");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), MODULES * 6);
    for (caller, name, address) in seen.iter() {
        let (module, local) = name.split_once('_').unwrap();
        let j: usize = module[1..].parse().unwrap();
        let want = if local == "f" {
            f_address(j)
        } else {
            value_address(j)
        };
        assert_eq!(*address, want, "seed {seed}: M{caller} calling {name}");
    }
    assert_eq!(names.parked(), 0);
    s.end();
}

#[test]
fn twenty_modules_loaded_in_random_order_from_several_threads_call_each_other() {
    for seed in 1..=8 {
        twenty_modules(seed);
    }
}

/// Looks `name` up Ready through `dylibs`.
fn find(s: &Session, dylibs: &[&Dylib], name: &str) -> Lookup {
    let name = s.intern(name);
    lookup(s, dylibs, &[&name], RequiredState::Ready)
}

/// The root cause of a lookup's error.
fn root(e: &Error) -> &Error {
    e.root_cause()
}

#[test]
fn a_module_that_never_arrives_fails_its_callers_naming_it() {
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let names = QualifiedNames::with_separator("_").timeout(Duration::from_millis(200));
    let shared = s.create_dylib("qualified").unwrap();
    shared.add_generator(names.clone()).unwrap();
    // M0 calls Ghost (module 7 here, never loaded).
    let seen: Seen = Arc::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let module = s.create_dylib("M0").unwrap();
    module
        .set_link_order(&[(shared.clone(), DylibLookup::ExportedOnly)])
        .unwrap();
    module
        .define(module_f(&module, &shared, 0, vec![7], seen, runs))
        .unwrap();
    names.register(&module);

    let e = find(&s, &[&shared], "M0_f").wait().unwrap_err();
    assert!(e.to_string().contains("'M7'"), "{e}");
    match root(&e) {
        Error::ModuleNotRegistered { module, names, .. } => {
            assert_eq!(&**module, "M7");
            let names: Vec<_> = names.iter().map(|n| n.to_string()).collect();
            assert_eq!(names, ["M7_f", "M7_value"]);
        }
        other => panic!("unexpected cause {other:?}"),
    }
    assert_eq!(names.parked(), 0);
    s.end();
}

#[test]
fn cancel_fails_the_waiting_callers_and_the_module_can_still_arrive() {
    let s = inplace();
    let names = QualifiedNames::with_separator("_");
    let shared = s.create_dylib("qualified").unwrap();
    shared.add_generator(names.clone()).unwrap();
    // In place, the generator runs inside `lookup`: the call is parked now.
    let waiting = find(&s, &[&shared], "Ghost_f");
    assert_eq!(names.parked(), 1);
    names.cancel("Other");
    assert_eq!(names.parked(), 1, "cancelling another module leaves it");
    names.cancel("Ghost");
    let e = waiting.wait().unwrap_err();
    assert!(
        matches!(root(&e), Error::ModuleWaitCancelled { module, .. } if &**module == "Ghost"),
        "{e:?}"
    );
    assert_eq!(names.parked(), 0);

    let ghost = s.create_dylib("Ghost").unwrap();
    let f = s.intern("f");
    ghost.define_absolute([(f, def(0x40))]).unwrap();
    names.register(&ghost);
    let found = find(&s, &[&shared], "Ghost_f").wait().unwrap();
    assert_eq!(found.get_str("Ghost_f").unwrap().address, 0x40);
    s.end();
}

#[test]
fn a_parked_call_stalls_no_other_lookup_and_one_registration_answers_all() {
    let s = inplace();
    let names = QualifiedNames::with_separator("_");
    let shared = s.create_dylib("qualified").unwrap();
    shared.add_generator(names.clone()).unwrap();
    let a = s.create_dylib("A").unwrap();
    let (f, g) = (s.intern("f"), s.intern("g"));
    a.define_absolute([(f.clone(), def(0x10))]).unwrap();
    names.register(&a);

    let first = find(&s, &[&shared], "Late_f");
    let second = find(&s, &[&shared], "Late_g");
    let again = find(&s, &[&shared], "Late_f");
    assert_eq!(names.parked(), 2, "one call per name; the repeat waits");
    // A registered module's names are answered meanwhile.
    let found = find(&s, &[&shared], "A_f").wait_timeout(Duration::from_secs(30));
    assert_eq!(found.unwrap().get_str("A_f").unwrap().address, 0x10);

    let late = s.create_dylib("Late").unwrap();
    late.define_absolute([(f, def(0x20)), (g, def(0x28))])
        .unwrap();
    names.register(&late);
    assert_eq!(names.parked(), 0);
    for (lookup, name, address) in [
        (first, "Late_f", 0x20),
        (second, "Late_g", 0x28),
        (again, "Late_f", 0x20),
    ] {
        let found = lookup.wait().unwrap();
        assert_eq!(found.get_str(name).unwrap().address, address);
    }
    s.end();
}

#[test]
fn a_caller_that_cancels_its_lookup_stops_waiting() {
    let s = inplace();
    let names = QualifiedNames::with_separator("_");
    let shared = s.create_dylib("qualified").unwrap();
    shared.add_generator(names.clone()).unwrap();
    let waiting = find(&s, &[&shared], "Late_f");
    waiting.cancel();
    assert!(matches!(waiting.wait(), Err(Error::Cancelled)));
    // The module still arrives; its names resolve.
    let late = s.create_dylib("Late").unwrap();
    let f = s.intern("f");
    late.define_absolute([(f, def(0x30))]).unwrap();
    names.register(&late);
    assert_eq!(names.parked(), 0);
    let found = find(&s, &[&shared], "Late_f").wait().unwrap();
    assert_eq!(found.get_str("Late_f").unwrap().address, 0x30);
    s.end();
}

#[test]
fn unqualified_names_and_names_a_module_lacks_are_misses() {
    let s = inplace();
    let names = QualifiedNames::with_separator("_");
    let shared = s.create_dylib("qualified").unwrap();
    shared.add_generator(names.clone()).unwrap();
    let a = s.create_dylib("A").unwrap();
    let hidden = s.intern("hidden");
    a.define_absolute([(hidden, SymbolDef::new(0x50, SymbolFlags::NONE))])
        .unwrap();
    names.register(&a);
    for name in ["plain", "_f", "A_", "A_nope", "A_hidden"] {
        let e = find(&s, &[&shared], name).wait().unwrap_err();
        assert!(
            matches!(&e, Error::SymbolsNotFound { names } if names[0].as_str() == name),
            "{name}: {e:?}"
        );
    }
    assert_eq!(names.parked(), 0);
    s.end();
}

#[test]
fn modules_local_names_never_clash() {
    let s = inplace();
    let names = QualifiedNames::new(|name| {
        let (module, local) = name.split_once("::")?;
        Some((module.to_owned(), local.to_owned()))
    });
    let shared = s.create_dylib("qualified").unwrap();
    shared.add_generator(names.clone()).unwrap();
    let test = s.intern("test");
    for (i, module) in ["Planschi", "Other", "Third"].iter().enumerate() {
        let d = s.create_dylib(module).unwrap();
        d.define_absolute([(test.clone(), def(0x100 * (i as u64 + 1)))])
            .unwrap();
        names.register(&d);
    }
    for (i, module) in ["Planschi", "Other", "Third"].iter().enumerate() {
        let name = format!("{module}::test");
        let found = find(&s, &[&shared], &name).wait().unwrap();
        assert_eq!(
            found.get_str(&name).unwrap().address,
            0x100 * (i as u64 + 1)
        );
    }
    s.end();
}
