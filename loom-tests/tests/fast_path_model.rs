//! Loom models of the lookup fast path against the actor (kiln issue 8
//! §1.2). The fast path (the real `Session::lookup`, reading each dylib's
//! Ready index and status without the actor) races a definition or a
//! removal; whatever the interleaving, the answer must be one the actor's
//! search gives on some state the race passes through, and once the race is
//! over, exactly the actor's. Run with
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg kiln_loom" CARGO_TARGET_DIR=target/loom cargo test -p kiln-loom-tests --release --test fast_path_model`.
//!
//! Under loom the Ready index is a locked map (see `engine/src/index`):
//! these models check the fast path's walk — which dylibs it may pass over
//! — not the table's sequence words, which the table's own tests stress.
//! On the engine before the fix, the fast path passed over a dylib with a
//! generator (answering from a later dylib) and over a removed dylib; both
//! models fail there.
#![cfg(kiln_loom)]

mod common;
mod runner;

use common::{Provides, X, lookup};
use kiln_engine::*;
use runner::builder;

/// `jd`'s generator provides `foo`; `jd2` gains a Ready `foo` while the
/// lookup of `[jd, jd2]` runs. The actor asks `jd`'s generator first, so
/// the answer is `jd`'s `foo` in every interleaving.
#[test]
fn fast_path_never_passes_over_a_generator() {
    builder().check(|| {
        let s = Session::builder()
            .dispatcher(InPlaceDispatcher::new())
            .build();
        let (jd, jd2) = (
            s.create_dylib("jd").unwrap(),
            s.create_dylib("jd2").unwrap(),
        );
        jd.add_generator(Provides).unwrap();
        let foo = s.intern("foo");
        let definer = {
            let (jd2, foo) = (jd2.clone(), foo.clone());
            loom::thread::spawn(move || {
                jd2.define_absolute([(foo, SymbolDef::new(0x200, X))])
                    .unwrap()
            })
        };
        let first = lookup(&s, &[&jd, &jd2], &foo);
        definer.join().unwrap();
        let second = lookup(&s, &[&jd, &jd2], &foo);
        assert_eq!(first.unwrap(), 0x100, "the generator comes first");
        assert_eq!(second.unwrap(), 0x100);
        s.end();
    });
}

/// `jd` (empty) is removed while `[jd, jd2]` is looked up, `jd2` having
/// `foo` Ready: the lookup answers `jd2`'s `foo` (before the removal) or
/// fails with `DylibRemoved` (after); once the removal returned, every
/// lookup naming `jd` fails.
#[test]
fn fast_path_never_passes_over_a_removed_dylib() {
    builder().check(|| {
        let s = Session::builder()
            .dispatcher(InPlaceDispatcher::new())
            .build();
        let (jd, jd2) = (
            s.create_dylib("jd").unwrap(),
            s.create_dylib("jd2").unwrap(),
        );
        let foo = s.intern("foo");
        jd2.define_absolute([(foo.clone(), SymbolDef::new(0x200, X))])
            .unwrap();
        let remover = {
            let (s, jd) = (s.clone(), jd.clone());
            loom::thread::spawn(move || s.remove_dylib(&jd).unwrap())
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
    });
}
