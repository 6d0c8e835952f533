//! Loom model of the `QualifiedNames` generator's waiting protocol (kiln
//! issue 12 §3): a lookup of `M_f` races the registration of module `M`
//! (and, in the second model, a cancel of the wait). A call that parks
//! after the registration looked for parked calls would never be answered;
//! loom reports that interleaving as a deadlock. Run with
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg kiln_loom" CARGO_TARGET_DIR=target/loom cargo test -p kiln-loom-tests --release --test qualified_model`.
#![cfg(kiln_loom)]

mod runner;

use kiln_engine::*;
use runner::model;

const X: SymbolFlags = SymbolFlags::EXPORTED;

/// A session with the generator in `qualified` and module `M` (defining
/// `f` at 0x100) created but not registered.
fn setup() -> (Session, QualifiedNames, Dylib, Dylib, SymbolName) {
    let s = Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build();
    let names = QualifiedNames::with_separator("_");
    let qualified = s.create_dylib("qualified").unwrap();
    qualified.add_generator(names.clone()).unwrap();
    let m = s.create_dylib("M").unwrap();
    m.define_absolute([(s.intern("f"), SymbolDef::new(0x100, X))])
        .unwrap();
    let wanted = s.intern("M_f");
    (s, names, qualified, m, wanted)
}

fn find(s: &Session, qualified: &Dylib, name: &SymbolName) -> Result<u64> {
    let order = SearchOrder::new().with(qualified, DylibLookup::ExportedOnly);
    let found = s
        .lookup(
            &order,
            &LookupSet::required([name.clone()]),
            RequiredState::Ready,
        )
        .wait()?;
    Ok(found.get(name).expect("required name found").address)
}

/// Registration on one thread, the lookup on another: whichever comes
/// first, the lookup gets the alias.
#[test]
fn a_lookup_racing_the_registration_gets_the_module() {
    model(|| {
        let (s, names, qualified, m, wanted) = setup();
        let registering = loom::thread::spawn(move || names.register(&m));
        assert_eq!(find(&s, &qualified, &wanted).unwrap(), 0x100);
        registering.join().unwrap();
        s.end();
    });
}

/// Registration and a cancel race the lookup: it gets the alias or fails
/// with the cancel, never hangs; afterwards nothing is parked and the name
/// resolves.
#[test]
fn a_lookup_racing_registration_and_cancel_ends_either_way() {
    model(|| {
        let (s, names, qualified, m, wanted) = setup();
        let (n1, n2) = (names.clone(), names.clone());
        let registering = loom::thread::spawn(move || n1.register(&m));
        let cancelling = loom::thread::spawn(move || n2.cancel("M"));
        match find(&s, &qualified, &wanted) {
            Ok(address) => assert_eq!(address, 0x100),
            Err(e) => assert!(
                matches!(e.root_cause(), Error::ModuleWaitCancelled { .. }),
                "{e:?}"
            ),
        }
        registering.join().unwrap();
        cancelling.join().unwrap();
        assert_eq!(names.parked(), 0);
        assert_eq!(find(&s, &qualified, &wanted).unwrap(), 0x100);
        s.end();
    });
}
