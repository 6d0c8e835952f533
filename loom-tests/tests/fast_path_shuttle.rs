//! The lookup fast path against the actor with the real Ready index, under
//! the `shuttle` randomized scheduler (kiln issue 8 §1.2). Under loom the
//! index is a locked map; under `--cfg kiln_shuttle` it is the real
//! lock-free table whose atomics are shuttle's, so the scheduler preempts
//! between every load and store of its sequence protocol — including the
//! copy into a larger table while readers probe. Run with
//! `RUSTFLAGS="--cfg kiln_shuttle" CARGO_TARGET_DIR=target/shuttle cargo test -p kiln-loom-tests --release --test fast_path_shuttle`
//! (`KILN_SHUTTLE_ITERATIONS` sets the number of random schedules).
//!
//! On the engine before the fix, the fast path passed over a dylib with a
//! generator and over a removed dylib; both checks fail there.
#![cfg(kiln_shuttle)]

mod common;

use common::{Provides, X, lookup};
use kiln_engine::*;

fn iterations() -> usize {
    std::env::var("KILN_SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn session() -> Session {
    Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build()
}

/// `jd`'s generator provides `foo`; `jd2` gains a Ready `foo`, then enough
/// other names that its index grows (a copy into a larger table) while the
/// lookups run. Every answer is `jd`'s `foo`.
#[test]
fn fast_path_never_passes_over_a_generator() {
    shuttle::check_random(
        || {
            let s = session();
            let (jd, jd2) = (
                s.create_dylib("jd").unwrap(),
                s.create_dylib("jd2").unwrap(),
            );
            jd.add_generator(Provides).unwrap();
            let foo = s.intern("foo");
            let names: Vec<SymbolName> = (0..24).map(|i| s.intern(&format!("n{i}"))).collect();
            let definer = {
                let (jd2, foo, names) = (jd2.clone(), foo.clone(), names.clone());
                shuttle::thread::spawn(move || {
                    jd2.define_absolute([(foo, SymbolDef::new(0x200, X))])
                        .unwrap();
                    for (i, n) in names.iter().enumerate() {
                        jd2.define_absolute([(n.clone(), SymbolDef::new(0x1000 + i as u64, X))])
                            .unwrap();
                    }
                })
            };
            let reader = {
                let (s, jd, jd2, foo) = (s.clone(), jd.clone(), jd2.clone(), foo.clone());
                shuttle::thread::spawn(move || lookup(&s, &[&jd, &jd2], &foo))
            };
            let here = lookup(&s, &[&jd, &jd2], &foo);
            definer.join().unwrap();
            let there = reader.join().unwrap();
            let after = lookup(&s, &[&jd, &jd2], &foo);
            for got in [here, there, after] {
                assert_eq!(got.unwrap(), 0x100, "the generator comes first");
            }
            // The names defined meanwhile are all found, at their addresses.
            for (i, n) in names.iter().enumerate() {
                assert_eq!(lookup(&s, &[&jd2], n).unwrap(), 0x1000 + i as u64);
            }
            s.end();
        },
        iterations(),
    );
}

/// `jd` is removed while `[jd, jd2]` is looked up (`jd2` has `foo`
/// Ready): the lookup answers `jd2`'s `foo` or fails with `DylibRemoved`;
/// after the removal every lookup naming `jd` fails.
#[test]
fn fast_path_never_passes_over_a_removed_dylib() {
    shuttle::check_random(
        || {
            let s = session();
            let (jd, jd2) = (
                s.create_dylib("jd").unwrap(),
                s.create_dylib("jd2").unwrap(),
            );
            let foo = s.intern("foo");
            jd.define_absolute([(s.intern("bar"), SymbolDef::new(0x300, X))])
                .unwrap();
            jd2.define_absolute([(foo.clone(), SymbolDef::new(0x200, X))])
                .unwrap();
            let remover = {
                let (s, jd) = (s.clone(), jd.clone());
                shuttle::thread::spawn(move || s.remove_dylib(&jd).unwrap())
            };
            match lookup(&s, &[&jd, &jd2], &foo) {
                Ok(address) => assert_eq!(address, 0x200),
                Err(e) => assert!(matches!(e, Error::DylibRemoved(_)), "{e}"),
            }
            remover.join().unwrap();
            for order in [[&jd, &jd2], [&jd2, &jd]] {
                let after = lookup(&s, &order, &foo);
                assert!(matches!(after, Err(Error::DylibRemoved(_))), "{after:?}");
            }
            s.end();
        },
        iterations(),
    );
}
