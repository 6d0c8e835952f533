//! The only module that names synchronization primitives.
//!
//! Everything in the engine that synchronizes goes through here, so that the
//! real protocol — not a copy of it — runs under loom when the crate is built
//! with `RUSTFLAGS="--cfg kiln_loom"` (a namespaced cfg: a user's own
//! `--cfg loom` never changes kiln's internals). Under that cfg mutexes,
//! condition variables, atomics and threads come from loom, and the
//! concurrent map becomes a mutex-protected map with a deterministic hasher,
//! because dashmap cannot run inside a loom model.
//!
//! Under `--cfg kiln_shuttle` the same swap is made to the `shuttle`
//! randomized scheduler's primitives — except that the Ready index stays the
//! real lock-free table (its atomics become shuttle's, so the scheduler
//! preempts between every load and store of its sequence protocol), which
//! loom cannot model. Shuttle explores schedules, not weak memory orders.

use std::collections::HashMap;
use std::hash::Hash;

pub(crate) use std::sync::Arc;
/// Set-once cells (the Ready index's tables; not modelled: the index is a
/// locked map under loom, and under shuttle only its atomics are shuttle's).
#[cfg(not(kiln_loom))]
pub(crate) use std::sync::OnceLock;
/// A removed dylib's record watches its handles' shared part through one.
pub(crate) use std::sync::Weak;

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

/// A condition variable paired with [`Mutex`].
#[derive(Debug, Default)]
pub(crate) struct Condvar(StdCondvar);

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(StdCondvar::new())
    }

    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits at most `timeout`; may wake early (callers re-check their condition).
    pub(crate) fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, T> {
        match self.0.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }

    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
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

/// A concurrent map for read-mostly data read without the state actor
/// (the name interner). dashmap in production; a mutex
/// around a deterministic map under loom.
#[derive(Debug)]
pub(crate) struct ConcurrentMap<K: Eq + Hash, V> {
    #[cfg(not(any(kiln_loom, kiln_shuttle)))]
    inner: dashmap::DashMap<K, V, FixedState>,
    #[cfg(any(kiln_loom, kiln_shuttle))]
    inner: Mutex<FixedMap<K, V>>,
}

/// Shards of a [`ConcurrentMap`] (a power of two).
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
const SHARDS: usize = 64;

impl<K: Eq + Hash, V> Default for ConcurrentMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash, V> ConcurrentMap<K, V> {
    pub(crate) fn new() -> Self {
        ConcurrentMap {
            #[cfg(not(any(kiln_loom, kiln_shuttle)))]
            // A fixed shard count: dashmap's default asks the system for the
            // available parallelism (`/proc/self/cgroup` and two cgroup
            // files read, `sched_getaffinity`) when the first map is made,
            // which is start-up time of every `kiln run`. 64 read-mostly
            // shards are dashmap's default for 16 CPUs.
            inner: dashmap::DashMap::with_hasher_and_shard_amount(FixedState, SHARDS),
            #[cfg(any(kiln_loom, kiln_shuttle))]
            inner: Mutex::new(FixedMap::default()),
        }
    }

    /// Reads the value for `key` through `f` without cloning it.
    pub(crate) fn read<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        #[cfg(not(any(kiln_loom, kiln_shuttle)))]
        {
            self.inner.get(key).map(|entry| f(entry.value()))
        }
        #[cfg(any(kiln_loom, kiln_shuttle))]
        {
            self.inner.lock().get(key).map(f)
        }
    }

    /// Returns the value for `key`, inserting `make()` first if absent.
    pub(crate) fn get_or_insert_with<Q>(&self, key: &Q, make: impl FnOnce() -> (K, V)) -> V
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        if let Some(v) = self.read(key, V::clone) {
            return v;
        }
        let (k, v) = make();
        #[cfg(not(any(kiln_loom, kiln_shuttle)))]
        {
            self.inner.entry(k).or_insert(v).value().clone()
        }
        #[cfg(any(kiln_loom, kiln_shuttle))]
        {
            self.inner.lock().entry(k).or_insert(v).clone()
        }
    }
}
