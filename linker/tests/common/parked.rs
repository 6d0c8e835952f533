//! A unit that hands its responsibility to the test instead of producing
//! anything: its symbol stays Materializing until the test answers, so a
//! test can hold a link at a chosen point.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_engine::{Dylib, MaterializationUnit, Responsibility, SymbolFlags, SymbolName};

/// Defines `symbol` (exported, callable); materializing it parks the
/// responsibility for [`Parked::take`].
pub(crate) struct Parked {
    symbol: SymbolName,
    slot: Arc<Mutex<Option<Responsibility>>>,
}

/// Where a [`Parked`] unit leaves its responsibility.
#[derive(Clone, Default)]
pub(crate) struct ParkedSlot(Arc<Mutex<Option<Responsibility>>>);

impl Parked {
    /// The unit for `symbol`, and the slot its responsibility lands in.
    pub(crate) fn new(symbol: SymbolName) -> (Parked, ParkedSlot) {
        let slot = ParkedSlot::default();
        let unit = Parked {
            symbol,
            slot: slot.0.clone(),
        };
        (unit, slot)
    }
}

impl ParkedSlot {
    /// The responsibility, once something asked for the symbol (waits at
    /// most 30 s, then fails the test).
    pub(crate) fn take(&self) -> Responsibility {
        let mut r = None;
        wait_until("the parked symbol being asked for", || {
            r = self.0.lock().unwrap().take();
            r.is_some()
        });
        r.unwrap()
    }
}

impl MaterializationUnit for Parked {
    fn name(&self) -> &str {
        "parked"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(
            self.symbol.clone(),
            SymbolFlags::EXPORTED | SymbolFlags::CALLABLE,
        )]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        *self.slot.lock().unwrap() = Some(r);
    }
    fn discard(&mut self, _: &Dylib, _: &SymbolName) {}
}

/// Waits (at most 30 s, then fails the test) until `done` holds.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::yield_now();
    }
}
