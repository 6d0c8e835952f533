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

/// The text inline up to 24 bytes (`CompactString`): most names are one
/// allocation, not two — W9's builder at 100k names, 112–118 → 106–108 ms.
struct NameInner {
    hash: u64,
    text: compact_str::CompactString,
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
            text: compact_str::CompactString::new(text),
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

    /// [`Interner::intern`] of each text, in order, taking each shard's
    /// locks once for every [`INTERN_CHUNK`] names.
    pub(crate) fn intern_all<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Vec<SymbolName> {
        let texts = texts.into_iter();
        let mut names = Vec::with_capacity(texts.size_hint().0);
        let mut keys: Vec<(u64, &str)> = Vec::with_capacity(INTERN_CHUNK);
        let mut texts = texts.peekable();
        while texts.peek().is_some() {
            keys.clear();
            keys.extend(texts.by_ref().take(INTERN_CHUNK).map(|t| (hash_str(t), t)));
            names.extend(self.names.get_or_insert_all(
                &keys,
                |n, &(hash, text)| n.0.hash == hash && n.as_str() == text,
                |&(hash, text)| SymbolName::with_hash(text, hash),
                SymbolName::text_hash,
            ));
        }
        names
    }
}

/// Names [`Interner::intern_all`] interns at a time: enough for each of
/// the interner's shards to take a few dozen at each locking, few enough
/// that the batch's scratch stays small (a system allocator maps large
/// blocks fresh from the kernel, and their first touches cost more than
/// the locks saved).
const INTERN_CHUNK: usize = 2048;

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

    /// Interning many at once gives each text the name `intern` gives it:
    /// names interned before, texts repeated within the batch, batches
    /// small (one at a time) and large (by shard, over several chunks),
    /// and two threads interning overlapping batches at once.
    #[test]
    fn interning_many_gives_what_interning_each_gives() {
        let pool = Interner::default();
        let before = pool.intern("f7");
        for n in [3, 63, 64, 500, 2 * INTERN_CHUNK + 5] {
            let texts: Vec<String> = (0..n).map(|i| format!("f{}", i % (n / 2 + 1))).collect();
            let names = pool.intern_all(texts.iter().map(String::as_str));
            assert_eq!(names.len(), n);
            for (name, text) in names.iter().zip(&texts) {
                assert!(Arc::ptr_eq(&name.0, &pool.intern(text).0), "{text} of {n}");
            }
            if n > 7 {
                assert!(Arc::ptr_eq(&names[7].0, &before.0));
            }
        }
        let pool = Interner::default();
        let texts: Vec<String> = (0..3000).map(|i| format!("g{i}")).collect();
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| pool.intern_all(texts[..2000].iter().map(String::as_str)));
            let b = s.spawn(|| pool.intern_all(texts[1000..].iter().map(String::as_str)));
            (a.join().unwrap(), b.join().unwrap())
        });
        for i in 1000..2000 {
            assert!(Arc::ptr_eq(&a[i].0, &b[i - 1000].0), "g{i} interned twice");
        }
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
