//! Removed code gives its records back (issue 8 §3.3): a host that adds and
//! removes code for days keeps its tables at the size one round needs.
//! Each test runs the same add/link/remove round many times and compares
//! the engine's table sizes (`Session::table_sizes`) after the first
//! rounds and after the last.

mod common;

use common::*;
use kiln_engine::*;

const ROUNDS: u64 = 50;

/// Defines, links and looks up a little program through `tracker` (or the
/// dylib's default tracker): absolute symbols, and two units where `f`
/// depends on `g` (same tracker) and on `ext` in `base`.
fn add_and_link(s: &Session, app: &Dylib, base: &Dylib, tracker: Option<&ResourceTracker>) {
    let absolute: Vec<(SymbolName, SymbolDef)> = (0..20)
        .map(|i| (s.intern(&format!("data{i}")), def(0x1000 + 16 * i)))
        .collect();
    app.define_absolute_with(absolute, tracker).unwrap();
    let (f, g, ext) = (s.intern("f"), s.intern("g"), s.intern("ext"));
    let deps = vec![(app.clone(), vec![g.clone()]), (base.clone(), vec![ext])];
    app.define_boxed(Box::new(emitting(&f, 0x2000, deps)), tracker)
        .unwrap();
    app.define_boxed(Box::new(emitting(&g, 0x3000, Vec::new())), tracker)
        .unwrap();
    let found = lookup(s, &[app], &[&f], RequiredState::Ready)
        .wait()
        .unwrap();
    assert_eq!(found.get(&f).map(|d| d.address), Some(0x2000));
}

fn base_dylib(s: &Session) -> Dylib {
    let base = s.create_dylib("base").unwrap();
    base.define_absolute([(s.intern("ext"), def(0x9000))])
        .unwrap();
    base
}

#[test]
fn removing_trackers_gives_their_symbol_records_back() {
    let s = inplace();
    let base = base_dylib(&s);
    let app = s.create_dylib("app").unwrap();
    let mut after_first = None;
    for round in 0..ROUNDS {
        let t = app.create_tracker().unwrap();
        add_and_link(&s, &app, &base, Some(&t));
        t.remove().unwrap();
        if round == 1 {
            after_first = Some(s.table_sizes());
        }
    }
    let (first, last) = (after_first.unwrap(), s.table_sizes());
    assert_eq!(last.symbols, first.symbols, "symbol records grew: {last:?}");
    assert_eq!(last.trackers, first.trackers, "trackers grew: {last:?}");
    assert_eq!(last.graph_ids, first.graph_ids, "graph ids grew: {last:?}");
    assert_eq!(last.retiring_symbols, 0, "{last:?}");
    assert_eq!(last.graph_nodes, 0, "{last:?}");
    assert!(app.lookup_ready(&["f"]).is_err(), "removed code is gone");
    s.end();
}

#[test]
fn removing_dylibs_gives_their_symbol_records_back() {
    let s = inplace();
    let base = base_dylib(&s);
    let mut after_first = None;
    for round in 0..ROUNDS {
        let app = s.create_dylib(&format!("app{round}")).unwrap();
        add_and_link(&s, &app, &base, None);
        s.remove_dylib(&app).unwrap();
        if round == 1 {
            after_first = Some(s.table_sizes());
        }
    }
    let (first, last) = (after_first.unwrap(), s.table_sizes());
    assert_eq!(last.symbols, first.symbols, "symbol records grew: {last:?}");
    assert_eq!(last.trackers, first.trackers, "trackers grew: {last:?}");
    assert_eq!(last.graph_ids, first.graph_ids, "graph ids grew: {last:?}");
    assert_eq!(last.dylibs, first.dylibs, "dylib records grew: {last:?}");
    s.end();
}

#[test]
fn a_removed_dylib_a_handle_still_names_keeps_its_slot() {
    let s = inplace();
    let old = s.create_dylib("old").unwrap();
    s.remove_dylib(&old).unwrap();
    // Many dylibs come and go while `old`'s handle lives: none takes its
    // slot, so the handle still reaches a removed dylib, by its name.
    for round in 0..10 {
        let d = s.create_dylib(&format!("new{round}")).unwrap();
        d.define_absolute([(s.intern("x"), def(0x10))]).unwrap();
        s.remove_dylib(&d).unwrap();
    }
    let err = old
        .define_absolute([(s.intern("y"), def(0x20))])
        .expect_err("old was removed");
    assert!(
        matches!(&err, Error::DylibRemoved(name) if &**name == "old"),
        "{err}"
    );
    let sizes = s.table_sizes();
    assert!(
        sizes.dylibs <= 4,
        "slots of unnamed dylibs are reused: {sizes:?}"
    );
    drop(old);
    s.end();
}

#[test]
fn a_removed_trackers_handle_defines_into_no_other_tracker() {
    let s = inplace();
    let app = s.create_dylib("app").unwrap();
    let old = app.create_tracker().unwrap();
    old.remove().unwrap();
    let new = app.create_tracker().unwrap();
    let err = app
        .define_absolute_with([(s.intern("x"), def(0x10))], Some(&old))
        .expect_err("the tracker was removed");
    assert!(matches!(err, Error::TrackerRemoved { .. }), "{err}");
    app.define_absolute_with([(s.intern("y"), def(0x20))], Some(&new))
        .unwrap();
    new.remove().unwrap();
    assert!(app.lookup_ready(&["y"]).is_err(), "y went with its tracker");
    s.end();
}

/// Parks each request in a slot for the test to answer.
struct Parking(Slot<GenerateRequest>);

impl Generator for Parking {
    fn generate(&self, req: GenerateRequest) {
        *self.0.lock().unwrap() = Some(req);
    }
}

#[test]
fn a_record_a_searching_lookup_holds_is_not_reused_under_it() {
    // A lookup has found `done` and waits for the dylib's generator to
    // define `made`; meanwhile `done`'s tracker is removed and other
    // symbols are defined. The lookup must not bind to one of those
    // through a reused record of `done`.
    let s = Session::builder().dispatcher(ThreadPerTask).build();
    let app = s.create_dylib("app").unwrap();
    let (put, take) = slot::<GenerateRequest>();
    app.add_generator(Parking(put)).unwrap();
    let other = app.create_tracker().unwrap();
    let (done, made) = (s.intern("done"), s.intern("made"));
    app.define_absolute_with([(done.clone(), def(0x111))], Some(&other))
        .unwrap();
    let pending = lookup(&s, &[&app], &[&done, &made], RequiredState::Ready);
    let req = loop {
        if let Some(req) = take.lock().unwrap().take() {
            break req;
        }
        std::thread::yield_now();
    };
    other.remove().unwrap();
    let filler = app.create_tracker().unwrap();
    let names: Vec<(SymbolName, SymbolDef)> = (0..8)
        .map(|i| (s.intern(&format!("filler{i}")), def(0x5000 + i)))
        .collect();
    app.define_absolute_with(names, Some(&filler)).unwrap();
    let result = req.dylib().define_absolute([(made.clone(), def(0x222))]);
    req.complete(result);
    // Found before its removal: its old address or an error, never a
    // filler's.
    match pending.wait() {
        Ok(found) => {
            assert_eq!(found.get(&done).map(|d| d.address), Some(0x111));
            assert_eq!(found.get(&made).map(|d| d.address), Some(0x222));
        }
        Err(e) => assert!(!e.to_string().contains("filler"), "{e}"),
    }
    s.end();
}

#[test]
fn dylibs_made_and_removed_on_many_threads_never_answer_for_each_other() {
    // Slots are reused while other threads send messages naming their own
    // dylibs: each lookup must still see its own dylib's definition, and a
    // removed dylib's handle must still find its dylib removed.
    let s = Session::builder().dispatcher(WorkerPool::new(2)).build();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let s = s.clone();
            scope.spawn(move || {
                let x = s.intern("x");
                for round in 0..100u64 {
                    let d = s.create_dylib(&format!("t{t}r{round}")).unwrap();
                    let address = 0x1000 * (t + 1) + round;
                    d.define_absolute([(x.clone(), def(address))]).unwrap();
                    let found = lookup(&s, &[&d], &[&x], RequiredState::Ready)
                        .wait()
                        .unwrap();
                    assert_eq!(found.get(&x).map(|d| d.address), Some(address));
                    s.remove_dylib(&d).unwrap();
                    let err = d
                        .define_absolute([(x.clone(), def(1))])
                        .expect_err("removed");
                    assert!(matches!(err, Error::DylibRemoved(_)), "{err}");
                    assert!(
                        lookup(&s, &[&d], &[&x], RequiredState::Ready)
                            .wait()
                            .is_err()
                    );
                }
            });
        }
    });
    let sizes = s.table_sizes();
    assert!(
        sizes.dylibs < 100,
        "400 dylibs came and went through few slots: {sizes:?}"
    );
    s.end();
}
