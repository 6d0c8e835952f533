//! The Ready index under loom: a locked map with the table's interface.

use super::{IndexEntry, Probe};
use crate::name::SymbolName;
use crate::sync::{FixedMap, Mutex};

#[derive(Debug, Default)]
pub(crate) struct ReadIndex {
    /// Each name's entry and the writer's own value for it.
    map: Mutex<FixedMap<SymbolName, (IndexEntry, u32)>>,
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

    pub(crate) fn sym_and_key(&self, name: &SymbolName) -> (Option<u32>, bool) {
        let sym = self.sym(name);
        (sym, sym.is_some())
    }

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
