//! Interned symbol names: equality and hashing cost one pointer compare and
//! one pre-computed word.

use std::fmt;
use std::hash::{Hash, Hasher};

use crate::sync::{Arc, HashedSet};

/// An interned symbol name. Names compare, order and hash by their text, so
/// equality, ordering and hashing agree — also for names from two sessions.
/// Within one session equal text is one interned string: equal names are
/// recognized by one pointer compare, and different ones (almost always) by
/// their pre-computed hashes, without touching the characters.
///
/// A session's tables key on its own interned strings: look names up and
/// define them with names from that session's [`Session::intern`](crate::Session::intern)
/// (a name from another session compares equal to it, but that session's
/// dylibs do not know it).
#[derive(Clone)]
pub struct SymbolName(Arc<NameInner>);

struct NameInner {
    hash: u64,
    text: Box<str>,
}

impl SymbolName {
    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The interned string's address: equal exactly when the names are
    /// (while either is alive), so the Ready index keys on it.
    #[cfg(not(kiln_loom))]
    pub(crate) fn key(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// Whether `other` is this very interned string (equal names of one
    /// session are).
    pub(crate) fn same(&self, other: &SymbolName) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The hash of the name's text ([`hash_str`] of it), computed once.
    pub(crate) fn text_hash(&self) -> u64 {
        self.0.hash
    }

    /// A name interned nowhere (so equal to no session's name), held by
    /// free symbol records.
    pub(crate) fn unnamed() -> Self {
        Self::new("")
    }

    fn new(text: &str) -> Self {
        Self::with_hash(text, hash_str(text))
    }

    /// A name for `text`, whose [`hash_str`] is `hash`.
    fn with_hash(text: &str, hash: u64) -> Self {
        SymbolName(Arc::new(NameInner {
            hash,
            text: text.into(),
        }))
    }
}

/// The Fx hash (`rustc-hash`) of the text: stable across runs (no seed),
/// so loom models and the graph see the same order every time.
pub(crate) fn hash_str(text: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(text.as_bytes());
    h.finish()
}

impl PartialEq for SymbolName {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.text == other.0.text)
    }
}
impl Eq for SymbolName {}

impl Hash for SymbolName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for SymbolName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Orders by text (consistent with `Eq`: `Equal` exactly when the texts
/// are), so error messages list names deterministically.
impl Ord for SymbolName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for SymbolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for SymbolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for SymbolName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// The session's string pool. Names live as long as the session. A name's
/// text is hashed once, when it is interned: the pool finds it by that hash
/// and grows with the hashes its names keep.
#[derive(Default)]
pub(crate) struct Interner {
    names: HashedSet<SymbolName>,
}

impl fmt::Debug for Interner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Interner")
    }
}

impl Interner {
    pub(crate) fn intern(&self, text: &str) -> SymbolName {
        let hash = hash_str(text);
        self.names.get_or_insert_with(
            hash,
            |n| n.0.hash == hash && n.as_str() == text,
            || SymbolName::with_hash(text, hash),
            SymbolName::text_hash,
        )
    }
}

#[cfg(all(test, not(kiln_loom)))]
mod tests {
    use super::*;

    #[test]
    fn interning_gives_pointer_equality() {
        let pool = Interner::default();
        let a = pool.intern("main");
        let b = pool.intern("main");
        let c = pool.intern("mai");
        assert_eq!(a, b);
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_ne!(a, c);
        assert_eq!(a.as_str(), "main");
    }

    /// Equality, ordering and hashing agree for names from two pools (two
    /// sessions): equal text is equal, whichever pool interned it.
    #[test]
    fn names_from_two_pools_compare_by_text() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |n: &SymbolName| {
            let mut h = DefaultHasher::new();
            n.hash(&mut h);
            h.finish()
        };
        let (one, two) = (Interner::default(), Interner::default());
        let (a, b) = (one.intern("main"), two.intern("main"));
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        assert_eq!(a, b, "equal text from two sessions must be equal");
        assert_eq!(hash(&a), hash(&b));
        let c = two.intern("mainx");
        assert_ne!(a, c);
        assert_eq!(a < c, a.as_str() < c.as_str());
        assert_eq!(a.cmp(&c) == std::cmp::Ordering::Equal, a == c);
    }
}
