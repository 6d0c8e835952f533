//! A weak definition discarded at `define` reaches its unit before the
//! unit materializes, whatever order the dispatcher runs the two tasks in
//! (issue 8 §4: under `kiln run --lazy`, two objects' lazy entries for the
//! same inline C++ function failed now and then with "unit '<lazy
//! reexports>' does not own …").

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use kiln_engine::*;

/// Holds every task until the test runs them, newest first.
#[derive(Default)]
struct HeldDispatcher(Mutex<Vec<Task>>);

impl Dispatcher for HeldDispatcher {
    fn dispatch(&self, task: Task) {
        self.0.lock().unwrap().push(task);
    }
}

impl HeldDispatcher {
    /// Runs the held tasks (and those they dispatch), newest first.
    fn run_newest_first(&self) {
        loop {
            let task = self.0.lock().unwrap().pop();
            match task {
                Some(task) => task.run(),
                None => break,
            }
        }
    }
}

/// Resolves and emits, at one address, every symbol it still offers: like
/// kiln's reexport units, it trusts `discard` to have told it what it lost.
struct Offers {
    symbols: Vec<(SymbolName, SymbolFlags)>,
    address: u64,
}

impl MaterializationUnit for Offers {
    fn name(&self) -> &str {
        "offers"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.symbols.clone()
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        let defs: Vec<(SymbolName, SymbolDef)> = self
            .symbols
            .iter()
            .map(|(n, f)| (n.clone(), SymbolDef::new(self.address, *f)))
            .collect();
        let names = defs.iter().map(|(n, _)| n.clone());
        let group = DependenceGroup::new(names, Vec::new());
        match r.resolve(&defs) {
            Ok(()) => {
                let _ = r.emit(vec![group]);
            }
            Err(e) => r.fail(e),
        }
    }
    fn discard(&mut self, _dylib: &Dylib, name: &SymbolName) {
        self.symbols.retain(|(n, _)| n != name);
    }
}

#[test]
fn a_discard_reaches_the_unit_before_it_materializes() {
    let tasks = Arc::new(HeldDispatcher::default());
    let s = Session::builder().shared_dispatcher(tasks.clone()).build();
    let d = s.create_dylib("d").unwrap();
    let (w, x) = (s.intern("w"), s.intern("x"));
    d.define(emitting(&w, 0x10, vec![])).unwrap();
    // The second unit's weak `w` loses to the first: a discard is due.
    d.define(Offers {
        symbols: vec![(w.clone(), X | SymbolFlags::WEAK), (x.clone(), X)],
        address: 0x30,
    })
    .unwrap();
    let pending = lookup(&s, &[&d], &[&x], RequiredState::Ready);
    // Whatever was dispatched last (the materialization) runs first.
    tasks.run_newest_first();
    let found = pending.wait().unwrap();
    assert_eq!(found.get(&x).unwrap().address, 0x30);
    let found = lookup(&s, &[&d], &[&w], RequiredState::Ready);
    tasks.run_newest_first();
    assert_eq!(found.wait().unwrap().get(&w).unwrap().address, 0x10);
}
