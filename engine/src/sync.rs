//! The only module that names synchronization primitives.
//!
//! Everything in the engine that synchronizes goes through here, so that the
//! real protocol — not a copy of it — runs under loom when the crate is built
//! with `RUSTFLAGS="--cfg kiln_loom"` (a namespaced cfg: a user's own
//! `--cfg loom` never changes kiln's internals). Under that cfg mutexes,
//! condition variables, atomics and threads come from loom, and the
//! interner's sharded set ([`HashedSet`]) becomes one table behind a loom
//! mutex (std's reader-writer locks cannot run inside a loom model).
//!
//! Under `--cfg kiln_shuttle` the same swap is made to the `shuttle`
//! randomized scheduler's primitives — except that the Ready index stays the
//! real lock-free table (its atomics become shuttle's, so the scheduler
//! preempts between every load and store of its sequence protocol), which
//! loom cannot model. Shuttle explores schedules, not weak memory orders.

use std::collections::HashMap;

pub(crate) use std::sync::Arc;
/// Set-once cells (the Ready index's tables; not modelled: the index is a
/// locked map under loom, and under shuttle only its atomics are shuttle's).
#[cfg(not(kiln_loom))]
pub(crate) use std::sync::OnceLock;
/// A removed dylib's record watches its handles' shared part through one.
pub(crate) use std::sync::Weak;
/// A process-wide count in a `static` (the forks [`crate::fork`] counts):
/// std's under every cfg, as no model forks and a loom atomic cannot be
/// made in a `static`.
pub(crate) use std::sync::atomic::AtomicU64 as ProcessCounter;

#[cfg(not(any(kiln_loom, kiln_shuttle)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
use std::sync::{Condvar as StdCondvar, Mutex as StdMutex};

#[cfg(kiln_shuttle)]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(kiln_shuttle)]
use shuttle::sync::{Condvar as StdCondvar, Mutex as StdMutex};

#[cfg(kiln_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(kiln_loom)]
use loom::sync::{Condvar as StdCondvar, Mutex as StdMutex};

/// Guard returned by [`Mutex::lock`].
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
/// Guard returned by [`Mutex::lock`].
#[cfg(kiln_shuttle)]
pub(crate) type MutexGuard<'a, T> = shuttle::sync::MutexGuard<'a, T>;
/// Guard returned by [`Mutex::lock`].
#[cfg(kiln_loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

/// A mutex that ignores poisoning: engine invariants never depend on a
/// panicking user callback having finished, because user code never runs
/// while an engine lock is held.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(StdMutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(StdMutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value, through exclusive access: no locking needed.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A condition variable paired with [`Mutex`] that counts its sleepers, so
/// a notify with none asleep is not a system call (std's always wakes the
/// futex: a tracker's closure ending, a task queued while every worker is
/// busy, paid one each).
///
/// The rule every caller keeps: the condition a sleeper checks changes
/// under the mutex it sleeps with, or the notifier takes and drops that
/// mutex after changing it. Then a sleeper that missed the change counted
/// itself (under the mutex) before the notifier's critical section, which
/// the notifier's count load follows.
#[derive(Debug, Default)]
pub(crate) struct Condvar {
    cv: StdCondvar,
    sleepers: AtomicUsize,
}

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar {
            cv: StdCondvar::new(),
            sleepers: AtomicUsize::new(0),
        }
    }

    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let guard = self
            .cv
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// Waits at most `timeout`; may wake early (callers re-check their condition).
    pub(crate) fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, T> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let guard = match self.cv.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    pub(crate) fn notify_all(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }

    pub(crate) fn notify_one(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.cv.notify_one();
        }
    }
}

/// A thread-local with a const initializer: std's const form normally, loom's
/// modelled thread-locals under `kiln_loom` (each loom thread gets its own).
macro_rules! thread_local_const {
    ($(#[$attr:meta])* static $name:ident: $t:ty = $init:expr;) => {
        #[cfg(not(any(kiln_loom, kiln_shuttle)))]
        std::thread_local! { $(#[$attr])* static $name: $t = const { $init }; }
        #[cfg(kiln_loom)]
        loom::thread_local! { $(#[$attr])* static $name: $t = $init; }
        #[cfg(kiln_shuttle)]
        shuttle::thread_local! { $(#[$attr])* static $name: $t = $init; }
    };
}
pub(crate) use thread_local_const;

/// Thread spawning: real threads, or loom's modelled ones.
pub(crate) mod thread {
    #[cfg(kiln_loom)]
    pub(crate) use loom::thread::{JoinHandle, spawn};
    #[cfg(kiln_shuttle)]
    pub(crate) use shuttle::thread::{JoinHandle, spawn};
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    pub(crate) use std::thread::{JoinHandle, spawn};

    /// Spawns a named thread where the platform allows names.
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    pub(crate) fn spawn_named<F>(name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        std::thread::Builder::new().name(name).spawn(f)
    }

    /// Spawns a modelled thread (names are not supported by loom).
    #[cfg(any(kiln_loom, kiln_shuttle))]
    pub(crate) fn spawn_named<F>(_name: String, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        Ok(spawn(f))
    }
}

/// The hasher of internal maps: `rustc-hash`'s Fx hash, deterministic (no
/// per-process seed), so loom models never depend on random iteration
/// order; its one multiply per `u64` suits the keys here (pre-hashed symbol
/// names, dense ids).
pub(crate) use rustc_hash::FxBuildHasher as FixedState;

/// A `HashMap` with the deterministic hasher.
pub(crate) type FixedMap<K, V> = HashMap<K, V, FixedState>;

/// A concurrent set for read-mostly data read without the state actor
/// (the name interner), found by a hash its caller computes once: 64
/// shards of `hashbrown` tables, each behind a reader-writer lock (one
/// mutex-guarded table under loom and shuttle). A value is hashed only by
/// its caller: a growing shard rehashes with the hashes its values keep
/// (`hash_of`), and the shard and the slot come from the same hash.
pub(crate) struct HashedSet<T> {
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    shards: Box<[std::sync::RwLock<hashbrown::HashTable<T>>]>,
    #[cfg(any(kiln_loom, kiln_shuttle))]
    inner: Mutex<hashbrown::HashTable<T>>,
}

/// Shards of a [`HashedSet`], as a power of two.
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
const SHARD_BITS: u32 = 6;

impl<T> Default for HashedSet<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for HashedSet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashedSet")
    }
}

impl<T> HashedSet<T> {
    pub(crate) fn new() -> Self {
        HashedSet {
            #[cfg(not(any(kiln_loom, kiln_shuttle)))]
            shards: (0..1usize << SHARD_BITS)
                .map(|_| std::sync::RwLock::new(hashbrown::HashTable::new()))
                .collect(),
            #[cfg(any(kiln_loom, kiln_shuttle))]
            inner: Mutex::new(hashbrown::HashTable::new()),
        }
    }

    /// The value with `hash` for which `eq` holds, inserting `make()`
    /// first if there is none. `hash_of` gives a stored value's hash.
    pub(crate) fn get_or_insert_with(
        &self,
        hash: u64,
        eq: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
        hash_of: impl Fn(&T) -> u64,
    ) -> T
    where
        T: Clone,
    {
        #[cfg(not(any(kiln_loom, kiln_shuttle)))]
        {
            use std::sync::PoisonError;
            let shard = &self.shards[shard_of(hash)];
            let read = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(v) = read.find(hash, &eq) {
                return v.clone();
            }
            drop(read);
            let mut table = shard.write().unwrap_or_else(PoisonError::into_inner);
            entry(&mut table, hash, eq, make, hash_of)
        }
        #[cfg(any(kiln_loom, kiln_shuttle))]
        {
            entry(&mut self.inner.lock(), hash, eq, make, hash_of)
        }
    }

    /// [`HashedSet::get_or_insert_with`] of each key, in order: for each
    /// `(hash, key)` the value for which `eq(value, &(hash, key))` holds,
    /// inserting `make(&(hash, key))` first if there is none. Each shard's
    /// locks are taken once for all its keys (twice if some are new), not
    /// once or twice a key: reading many objects' names on several threads
    /// at once, the locks' cache lines no longer bounce between them for
    /// every name.
    pub(crate) fn get_or_insert_all<K>(
        &self,
        keys: &[(u64, K)],
        eq: impl Fn(&T, &(u64, K)) -> bool,
        make: impl Fn(&(u64, K)) -> T,
        hash_of: impl Fn(&T) -> u64,
    ) -> Vec<T>
    where
        T: Clone,
    {
        // Too few to share a shard's locking: one at a time.
        if keys.len() < 64 {
            let find = |key: &(u64, K)| {
                self.get_or_insert_with(key.0, |v| eq(v, key), || make(key), &hash_of)
            };
            return keys.iter().map(find).collect();
        }
        let mut found: Vec<Option<T>> = vec![None; keys.len()];
        #[cfg(not(any(kiln_loom, kiln_shuttle)))]
        {
            use std::sync::PoisonError;
            let (order, start) = by_shard(keys);
            for (shard, bounds) in self.shards.iter().zip(start.windows(2)) {
                let members = &order[bounds[0]..bounds[1]];
                if members.is_empty() {
                    continue;
                }
                let mut missing = Vec::new();
                {
                    let read = shard.read().unwrap_or_else(PoisonError::into_inner);
                    for &k in members {
                        let key = &keys[k as usize];
                        match read.find(key.0, |v| eq(v, key)) {
                            Some(v) => found[k as usize] = Some(v.clone()),
                            None => missing.push(k),
                        }
                    }
                }
                if missing.is_empty() {
                    continue;
                }
                let mut table = shard.write().unwrap_or_else(PoisonError::into_inner);
                table.reserve(missing.len(), &hash_of);
                for k in missing {
                    let key = &keys[k as usize];
                    let value = entry(&mut table, key.0, |v| eq(v, key), || make(key), &hash_of);
                    found[k as usize] = Some(value);
                }
            }
        }
        #[cfg(any(kiln_loom, kiln_shuttle))]
        {
            let mut table = self.inner.lock();
            for (slot, key) in found.iter_mut().zip(keys) {
                *slot = Some(entry(
                    &mut table,
                    key.0,
                    |v| eq(v, key),
                    || make(key),
                    &hash_of,
                ));
            }
        }
        found
            .into_iter()
            .map(|v| v.expect("every key is found or inserted"))
            .collect()
    }
}

/// The value with `hash` for which `eq` holds in `table`, inserted with
/// `make` if there is none.
fn entry<T: Clone>(
    table: &mut hashbrown::HashTable<T>,
    hash: u64,
    eq: impl Fn(&T) -> bool,
    make: impl FnOnce() -> T,
    hash_of: impl Fn(&T) -> u64,
) -> T {
    match table.entry(hash, eq, hash_of) {
        hashbrown::hash_table::Entry::Occupied(o) => o.get().clone(),
        hashbrown::hash_table::Entry::Vacant(v) => v.insert(make()).get().clone(),
    }
}

/// The shard of a hash: bits the table uses for neither the slot (low
/// bits) nor the tag (top seven).
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize & ((1 << SHARD_BITS) - 1)
}

/// The keys' indices grouped by shard (a counting sort, so each group
/// keeps the keys' order): shard `s`'s keys are
/// `order[start[s]..start[s + 1]]`.
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
fn by_shard<K>(keys: &[(u64, K)]) -> (Vec<u32>, Vec<usize>) {
    let shards = 1usize << SHARD_BITS;
    let mut start = vec![0usize; shards + 1];
    for (hash, _) in keys {
        start[shard_of(*hash) + 1] += 1;
    }
    for s in 0..shards {
        start[s + 1] += start[s];
    }
    let mut next = start.clone();
    let mut order = vec![0u32; keys.len()];
    for (k, (hash, _)) in keys.iter().enumerate() {
        let s = shard_of(*hash);
        order[next[s]] = k as u32;
        next[s] += 1;
    }
    (order, start)
}
