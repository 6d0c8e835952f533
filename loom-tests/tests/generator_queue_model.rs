//! Loom model of a serialized generator's queue (kiln issue 8 §1.1): three
//! lookups on one generator, the one whose turn comes next no longer
//! needing it; the one behind must still get its turn. Run with
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg kiln_loom" CARGO_TARGET_DIR=target/loom cargo test -p kiln-loom-tests --release`.
//!
//! On the engine before the fix, the interleaving where both spawned
//! lookups queue before the first call ends leaves the last one waiting
//! forever, which loom reports as a deadlock.
#![cfg(kiln_loom)]

mod runner;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering::SeqCst};

use kiln_engine::*;
use loom::sync::Mutex;

const X: SymbolFlags = SymbolFlags::EXPORTED;

/// Holds its first call for the model to end; answers later calls at once,
/// defining every name asked.
struct FirstHeld {
    held: Arc<Mutex<Option<GenerateRequest>>>,
    calls: Arc<StdAtomicUsize>,
}

impl Generator for FirstHeld {
    fn generate(&self, req: GenerateRequest) {
        if self.calls.fetch_add(1, SeqCst) == 0 {
            *self.held.lock().unwrap() = Some(req);
            return;
        }
        let defs: Vec<_> = req
            .names()
            .iter()
            .map(|n| (n.clone(), SymbolDef::new(0x200, X)))
            .collect();
        req.dylib().define_absolute(defs).unwrap();
    }
}

fn lookup(s: &Session, d: &Dylib, name: &SymbolName) -> Lookup {
    let order: SearchOrder = [(d.clone(), DylibLookup::ExportedOnly)]
        .into_iter()
        .collect();
    s.lookup(
        &order,
        &LookupSet::required([name.clone()]),
        RequiredState::Ready,
    )
}

/// Lookup 1 is inside the generator; lookups for `bar` and `qux` race to
/// it from two threads while the model ends call 1, which defines `bar`
/// too. Whatever the order, all three complete.
#[test]
fn serialized_generator_queue_advances_past_a_lookup_that_no_longer_needs_it() {
    runner::builder().check(|| {
        let s = Session::builder()
            .dispatcher(InPlaceDispatcher::new())
            .build();
        let d = s.create_dylib("d").unwrap();
        let held = Arc::new(Mutex::new(None));
        let calls = Arc::new(StdAtomicUsize::new(0));
        d.add_generator(FirstHeld {
            held: held.clone(),
            calls: calls.clone(),
        })
        .unwrap();
        let (foo, bar, qux) = (s.intern("foo"), s.intern("bar"), s.intern("qux"));
        // In place: the generator runs here and holds the call.
        let first = lookup(&s, &d, &foo);
        let call = held.lock().unwrap().take().expect("first call held");
        let spawn = |name: &SymbolName| {
            let (s, d, name) = (s.clone(), d.clone(), name.clone());
            loom::thread::spawn(move || lookup(&s, &d, &name).wait().map(|m| m.get(&name)))
        };
        let (tb, tq) = (spawn(&bar), spawn(&qux));
        call.dylib()
            .define_absolute([
                (foo.clone(), SymbolDef::new(0x100, X)),
                (bar.clone(), SymbolDef::new(0x101, X)),
            ])
            .unwrap();
        call.complete(Ok(()));
        assert!(first.wait().unwrap().get(&foo).is_some());
        assert!(tb.join().unwrap().unwrap().is_some());
        assert!(tq.join().unwrap().unwrap().is_some());
        s.end();
    });
}
