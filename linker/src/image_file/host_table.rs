//! The host table: an ordered table of runtime addresses (a language
//! runtime's entry points and globals) that a host registers once per
//! process. A link in imaging mode saves a reference to an entry as its
//! index; loading binds it from the table registered in the loading
//! process, with no string lookup. The table's identity (a hash of its
//! entries' names in order) is saved in the image and compared at load.

use std::sync::{Arc, PoisonError, RwLock};

use super::BuildId;

/// An ordered table of named runtime addresses (see the module docs).
#[derive(Debug, Clone)]
pub struct HostTable {
    name: String,
    names: Vec<String>,
    addrs: Vec<u64>,
    by_name: std::collections::HashMap<String, u32>,
    id: BuildId,
}

impl HostTable {
    /// A table called `name` (for messages) of `entries` in order: their
    /// names (what the objects refer to) and this process's addresses.
    pub fn new<'a>(name: &str, entries: impl IntoIterator<Item = (&'a str, u64)>) -> HostTable {
        let (names, addrs): (Vec<String>, Vec<u64>) =
            entries.into_iter().map(|(n, a)| (n.to_string(), a)).unzip();
        let mut h = blake3::Hasher::new();
        h.update(b"kiln host table\0");
        h.update(&(names.len() as u64).to_le_bytes());
        for n in &names {
            h.update(&(n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
        }
        // The first entry of a repeated name is the one saved.
        let mut by_name = std::collections::HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate().rev() {
            by_name.insert(n.clone(), i as u32);
        }
        HostTable {
            name: name.to_string(),
            by_name,
            names,
            addrs,
            id: BuildId(*h.finalize().as_bytes()),
        }
    }

    /// The table's identity: a hash of its entries' names in order (not of
    /// the addresses, which change with each process).
    pub fn id(&self) -> BuildId {
        self.id
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The index of the entry `name` at `addr` (the resolver's answer must
    /// be the table's address: another definition of the name is not it).
    pub(crate) fn index_of(&self, name: &str, addr: u64) -> Option<u32> {
        let i = *self.by_name.get(name)?;
        (self.addrs.get(i as usize) == Some(&addr)).then_some(i)
    }

    /// The address of entry `index`.
    pub(crate) fn address(&self, index: u32) -> Option<u64> {
        self.addrs.get(index as usize).copied()
    }
}

static TABLE: RwLock<Option<Arc<HostTable>>> = RwLock::new(None);

/// Registers `table` as this process's host table (replacing the previous
/// one; `None` removes it). Images linked from now on save references to
/// its entries by index; images loaded from now on that were saved against
/// a table bind their entries from it — only if its identity
/// ([`HostTable::id`]) is the one they were saved against.
pub fn set_host_table(table: Option<HostTable>) {
    *TABLE.write().unwrap_or_else(PoisonError::into_inner) = table.map(Arc::new);
}

/// The registered host table.
pub(crate) fn current() -> Option<Arc<HostTable>> {
    TABLE.read().unwrap_or_else(PoisonError::into_inner).clone()
}
