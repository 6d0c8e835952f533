//! The Ready index under loom: a locked map with the table's interface.

use super::{Claim, IndexEntry, Probe};
use crate::name::SymbolName;
use crate::sync::{FixedMap, Mutex};

#[derive(Debug, Default)]
pub(crate) struct ReadIndex {
    /// Each name's entry and the writer's own value for it.
    map: Mutex<FixedMap<SymbolName, (IndexEntry, u32)>>,
    /// Names a definition in progress claimed (see the table's `claim`).
    pending: Mutex<FixedMap<SymbolName, ()>>,
}

impl ReadIndex {
    pub(crate) fn get(&self, name: &SymbolName) -> Probe {
        match self.map.lock().get(name) {
            Some((entry, _)) => Probe::Found(*entry),
            None => Probe::Absent,
        }
    }

    pub(crate) fn sym(&self, name: &SymbolName) -> Option<u32> {
        self.map.lock().get(name).map(|&(_, sym)| sym)
    }

    pub(crate) fn claim(&self, name: &SymbolName) -> Claim {
        if let Some(sym) = self.sym(name) {
            return Claim::Defined { sym, at: 0 };
        }
        match self.pending.lock().insert(name.clone(), ()) {
            Some(()) => Claim::Repeated,
            None => Claim::New { at: 0 },
        }
    }

    pub(crate) fn set_at(&self, _at: usize, name: &SymbolName, entry: IndexEntry, sym: u32) {
        self.pending.lock().remove(name);
        self.set(name, entry, sym);
    }

    pub(crate) fn release(&self, _at: usize, name: &SymbolName) {
        self.pending.lock().remove(name);
    }

    pub(crate) fn warm_at(&self, _ats: impl Iterator<Item = usize>) {}

    pub(crate) fn warm<'a>(&self, _names: impl Iterator<Item = &'a SymbolName>) {}

    pub(crate) fn reserve(&self, _additional: usize) {}

    pub(crate) fn set(&self, name: &SymbolName, entry: IndexEntry, sym: u32) {
        self.map.lock().insert(name.clone(), (entry, sym));
    }

    pub(crate) fn update(&self, name: &SymbolName, f: impl FnOnce(&mut IndexEntry)) -> bool {
        self.map
            .lock()
            .get_mut(name)
            .map(|(entry, _)| f(entry))
            .is_some()
    }

    pub(crate) fn remove(&self, name: &SymbolName) {
        self.map.lock().remove(name);
    }

    pub(crate) fn clear(&self) {
        self.map.lock().clear();
    }
}
