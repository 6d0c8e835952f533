//! Helpers shared by the engine's integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::{Arc, Mutex};

use kiln_engine::*;

/// A unit whose `materialize` is a closure.
pub struct FnUnit {
    pub name: String,
    pub symbols: Vec<(SymbolName, SymbolFlags)>,
    pub body: Option<Box<dyn FnOnce(Responsibility) + Send>>,
    pub discarded: Arc<Mutex<Vec<String>>>,
}

impl MaterializationUnit for FnUnit {
    fn name(&self) -> &str {
        &self.name
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.symbols.clone()
    }
    fn materialize(mut self: Box<Self>, r: Responsibility) {
        if let Some(body) = self.body.take() {
            body(r)
        }
    }
    fn discard(&mut self, _dylib: &Dylib, name: &SymbolName) {
        self.discarded.lock().unwrap().push(name.to_string());
        self.symbols.retain(|(n, _)| n != name);
    }
}

pub fn unit(
    name: &str,
    symbols: &[(&SymbolName, SymbolFlags)],
    body: impl FnOnce(Responsibility) + Send + 'static,
) -> FnUnit {
    FnUnit {
        name: name.into(),
        symbols: symbols.iter().map(|(n, f)| ((*n).clone(), *f)).collect(),
        body: Some(Box::new(body)),
        discarded: Arc::default(),
    }
}

pub const X: SymbolFlags = SymbolFlags::EXPORTED;

pub fn def(addr: u64) -> SymbolDef {
    SymbolDef::new(addr, X)
}

/// A unit that resolves `sym` at `addr` and emits it depending on `deps`.
pub fn emitting(sym: &SymbolName, addr: u64, deps: Vec<(Dylib, Vec<SymbolName>)>) -> FnUnit {
    let s = sym.clone();
    unit(&format!("unit-{sym}"), &[(sym, X)], move |r| {
        r.resolve(&[(s.clone(), def(addr))]).unwrap();
        r.emit(vec![DependenceGroup::new([s], deps)]).unwrap();
    })
}

pub fn inplace() -> Session {
    Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build()
}

pub fn order(dylibs: &[&Dylib]) -> SearchOrder {
    dylibs
        .iter()
        .map(|d| ((*d).clone(), DylibLookup::ExportedOnly))
        .collect()
}

pub fn lookup(
    s: &Session,
    dylibs: &[&Dylib],
    names: &[&SymbolName],
    state: RequiredState,
) -> Lookup {
    s.lookup(
        &order(dylibs),
        &LookupSet::required(names.iter().map(|n| (*n).clone())),
        state,
    )
}

/// Hands a `Responsibility` (or anything) from a materializer to the test.
/// A place to hand a value from one thread to another.
pub type Slot<T> = Arc<Mutex<Option<T>>>;

pub fn slot<T>() -> (Slot<T>, Slot<T>) {
    let s = Arc::new(Mutex::new(None));
    (s.clone(), s)
}

/// A lookup of `name` Ready in `d` that waits up to `timeout` for a
/// definition to arrive.
pub fn awaiting(d: &Dylib, name: &SymbolName, timeout: std::time::Duration) -> LookupRequest {
    LookupRequest::new(
        SearchOrder::new().with(d, DylibLookup::All),
        LookupSet::required([name.clone()]),
        RequiredState::Ready,
    )
    .await_definitions(AwaitDefinitions::For(timeout))
}

/// Runs `f` on a thread of its own and returns its result, or fails the
/// test (instead of hanging it) when `f` has not returned within a generous
/// bound — a deadlock detector, not a timing assertion.
pub fn must_return<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: hung (did not return in 60 s)"))
}
