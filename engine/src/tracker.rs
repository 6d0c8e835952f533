//! Resource trackers: own what was defined through them, and remove it
//! cleanly — in-flight work fails with a clear error, waiting lookups fail
//! promptly, and resource managers free what they hold.

use std::fmt;

use std::cell::RefCell;

use crate::actor::{DylibId, Msg, Reply, SessionCore, TrackerId};
use crate::error::{Error, Result};
use crate::sync::{Arc, Mutex, thread_local_const};

/// Identifies a tracker to [`ResourceManager`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ResourceKey(pub u64);

/// Holds resources (linked memory, registrations) on behalf of trackers.
/// Register with `Session::register_resource_manager`. Its methods never
/// run on the state actor, never under an engine lock, and never while a
/// [`ResourceTracker::with_resource_key`] closure runs under the key
/// concerned: they run on the thread that removes or transfers — or, when
/// such a closure is running then, on that closure's thread right after it
/// returns (the remover still waits for them, unless it is that closure).
pub trait ResourceManager: Send + Sync + 'static {
    /// Frees everything held for `key`. Called once, after the tracker's
    /// symbols were unpublished and its in-flight work failed.
    fn remove_resources(&self, key: ResourceKey) -> Result<()>;

    /// Re-associates everything held for `src` with `dst`.
    fn transfer_resources(&self, dst: ResourceKey, src: ResourceKey);
}

/// Shared between tracker handles and the actor.
pub(crate) struct TrackerShared {
    pub(crate) id: TrackerId,
    pub(crate) dylib: DylibId,
    pub(crate) dylib_name: Arc<str>,
    pub(crate) key: ResourceKey,
    /// Whether it is defunct, which closures run, where it went. Never
    /// held while user code runs.
    life: Mutex<Life>,
}

/// Manager work held back until the closures running under a tracker's key
/// have returned.
type Deferred = Box<dyn FnOnce() -> Result<()> + Send>;

#[derive(Default)]
struct Life {
    /// True once removed or transferred away.
    defunct: bool,
    /// [`ResourceTracker::with_resource_key`] closures running now.
    active: usize,
    /// The tracker everything was transferred to.
    successor: Option<Arc<TrackerShared>>,
    /// Manager calls asked for from inside a running closure: run by the
    /// last closure to return.
    deferred: Vec<Deferred>,
}

/// A `with_resource_key` closure running on this thread.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Inside {
    /// The session core's address.
    session: usize,
    dylib: DylibId,
    tracker: TrackerId,
}

thread_local_const! {
    /// The `with_resource_key` closures running on this thread, innermost
    /// last.
    static INSIDE: RefCell<Vec<Inside>> = RefCell::new(Vec::new());
}

impl TrackerShared {
    pub(crate) fn new(
        id: TrackerId,
        dylib: DylibId,
        dylib_name: Arc<str>,
        key: ResourceKey,
    ) -> Arc<Self> {
        Arc::new(TrackerShared {
            id,
            dylib,
            dylib_name,
            key,
            life: Mutex::new(Life::default()),
        })
    }

    /// Marks it removed: closures asking for its key are refused from now on.
    pub(crate) fn mark_defunct(&self) {
        self.life.lock().defunct = true;
    }

    fn is_defunct(&self) -> bool {
        self.life.lock().defunct
    }

    /// Marks it defunct with `successor` (unless it already was); false if
    /// it already was.
    fn retire(&self, successor: Option<Arc<TrackerShared>>) -> bool {
        let mut life = self.life.lock();
        if life.defunct {
            return false;
        }
        life.defunct = true;
        life.successor = successor;
        true
    }

    /// The tracker that now holds what this one held: itself, or the end of
    /// its chain of transfers.
    fn current(self: &Arc<Self>) -> Arc<TrackerShared> {
        let mut t = self.clone();
        loop {
            let next = t.life.lock().successor.clone();
            match next {
                Some(n) => t = n,
                None => return t,
            }
        }
    }

    /// Counts a closure out; the last one out runs the deferred manager
    /// work (no lock held) and returns its first error.
    fn leave(&self, session: &Arc<SessionCore>) -> Option<Error> {
        let me = Inside {
            session: Arc::as_ptr(session) as usize,
            dylib: self.dylib,
            tracker: self.id,
        };
        let _ = INSIDE.try_with(|v| {
            let mut v = v.borrow_mut();
            if let Some(at) = v.iter().rposition(|&t| t == me) {
                v.remove(at);
            }
        });
        let deferred = {
            let mut life = self.life.lock();
            life.active -= 1;
            if life.active > 0 {
                return None;
            }
            std::mem::take(&mut life.deferred)
        };
        let mut first_error = None;
        for job in deferred {
            if let Err(e) = job() {
                first_error.get_or_insert(e);
            }
        }
        first_error
    }

    /// Runs `job` (resource manager calls for this tracker's key) once no
    /// closure runs under the key: now, or — while closures run — when the
    /// last of them returns (on its thread; its `with_resource_key` also
    /// returns the job's error). The tracker is defunct, so no new closure
    /// starts. Never blocks, and holds no lock while `job` runs.
    fn when_idle(&self, job: impl FnOnce() -> Result<()> + Send + 'static) {
        let mut life = self.life.lock();
        if life.active > 0 {
            life.deferred.push(Box::new(job));
            return;
        }
        drop(life);
        let _ = job();
    }
}

/// Whether this thread runs a `with_resource_key` closure of `tracker` —
/// or, with `tracker` `None`, of any tracker of `dylib` in `session` — so
/// waiting for that removal's managers would wait for itself.
pub(crate) fn inside(
    session: &Arc<SessionCore>,
    dylib: DylibId,
    tracker: Option<TrackerId>,
) -> bool {
    let session = Arc::as_ptr(session) as usize;
    INSIDE
        .try_with(|v| {
            v.borrow().iter().any(|e| {
                e.session == session && e.dylib == dylib && tracker.is_none_or(|t| e.tracker == t)
            })
        })
        .unwrap_or(false)
}

/// Replies once every tracker of one removal had its managers run.
struct Countdown {
    state: Mutex<CountdownState>,
}

struct CountdownState {
    /// Trackers whose managers have not run yet.
    left: usize,
    first_error: Option<Error>,
    reply: Option<Reply<Result<()>>>,
}

impl Countdown {
    fn done(&self, result: Result<()>) -> Result<()> {
        let mut state = self.state.lock();
        state.left -= 1;
        if let Err(e) = &result {
            state.first_error.get_or_insert_with(|| e.clone());
        }
        if state.left == 0
            && let Some(reply) = state.reply.take()
        {
            let first = state.first_error.take();
            drop(state);
            reply.send(first.map_or(Ok(()), Err));
        }
        result
    }
}

/// Asks every manager to free what it holds for each tracker's key, once no
/// closure runs under it, then replies with the first error.
pub(crate) fn remove_resources(
    trackers: Vec<Arc<TrackerShared>>,
    managers: Vec<Arc<dyn ResourceManager>>,
    reply: Option<Reply<Result<()>>>,
) {
    if trackers.is_empty() {
        if let Some(reply) = reply {
            reply.send(Ok(()));
        }
        return;
    }
    let managers: Arc<[Arc<dyn ResourceManager>]> = managers.into();
    let countdown = Arc::new(Countdown {
        state: Mutex::new(CountdownState {
            left: trackers.len(),
            first_error: None,
            reply,
        }),
    });
    for tracker in trackers {
        let key = tracker.key;
        let (managers, countdown) = (managers.clone(), countdown.clone());
        tracker.when_idle(move || {
            let mut first_error = None;
            // Reverse registration order, like ORC.
            for manager in managers.iter().rev() {
                if let Err(e) = manager.remove_resources(key) {
                    first_error.get_or_insert(e);
                }
            }
            countdown.done(first_error.map_or(Ok(()), Err))
        });
    }
}

/// Asks every manager to move what it holds for `src` to `dst`, once no
/// closure runs under `src`'s key, then replies.
pub(crate) fn transfer_resources(
    src: &Arc<TrackerShared>,
    dst: ResourceKey,
    managers: Vec<Arc<dyn ResourceManager>>,
    reply: Reply<Result<()>>,
) {
    let src_key = src.key;
    src.when_idle(move || {
        for manager in &managers {
            manager.transfer_resources(dst, src_key);
        }
        reply.send(Ok(()));
        Ok(())
    });
}

/// A handle to a group of definitions that can be removed together.
///
/// The handle a [`Responsibility`](crate::Responsibility) gives out follows
/// transfers: after [`ResourceTracker::transfer_to`] it stands for the
/// destination, so a running unit files its resources wherever its work
/// went. Other handles stand for one tracker, defunct once it was removed
/// or transferred away.
#[derive(Clone)]
pub struct ResourceTracker {
    pub(crate) core: Arc<SessionCore>,
    pub(crate) shared: Arc<TrackerShared>,
    /// Follows transfers (a responsibility's handle).
    pub(crate) follows: bool,
}

impl fmt::Debug for ResourceTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceTracker")
            .field("key", &self.key())
            .field("dylib", &self.shared.dylib_name)
            .field("removed", &self.is_removed())
            .finish()
    }
}

impl ResourceTracker {
    /// The tracker this handle stands for now.
    fn target(&self) -> Arc<TrackerShared> {
        if self.follows {
            self.shared.current()
        } else {
            self.shared.clone()
        }
    }

    /// The key resource managers file this tracker's resources under.
    pub fn key(&self) -> ResourceKey {
        self.target().key
    }

    /// Whether the tracker was removed or transferred away.
    pub fn is_removed(&self) -> bool {
        self.target().is_defunct()
    }

    /// Runs `f` with the key unless the tracker is defunct. `f` runs under
    /// no engine lock (it may use the engine, even remove this tracker);
    /// resource managers' calls for this key wait until it returns, so
    /// resources registered inside `f` are always seen by their
    /// `remove_resources` or `transfer_resources`. If `f` removes the
    /// tracker itself, the managers run when `f` returns, and their error,
    /// if any, is returned here instead of `f`'s result.
    pub fn with_resource_key<R>(&self, f: impl FnOnce(ResourceKey) -> R) -> Result<R> {
        /// Counts the closure out even if it panics.
        struct Running<'a>(Arc<TrackerShared>, &'a Arc<SessionCore>, bool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    let _ = self.0.leave(self.1);
                }
            }
        }
        let mut running = Running(self.enter()?, &self.core, false);
        let value = f(running.0.key);
        running.2 = true;
        match running.0.leave(&self.core) {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }

    /// Counts a closure in under the tracker this handle stands for.
    fn enter(&self) -> Result<Arc<TrackerShared>> {
        let mut t = self.shared.clone();
        loop {
            let next = {
                let mut life = t.life.lock();
                if !life.defunct {
                    life.active += 1;
                    drop(life);
                    let me = Inside {
                        session: Arc::as_ptr(&self.core) as usize,
                        dylib: t.dylib,
                        tracker: t.id,
                    };
                    let _ = INSIDE.try_with(|v| v.borrow_mut().push(me));
                    return Ok(t);
                }
                match (&life.successor, self.follows) {
                    (Some(next), true) => next.clone(),
                    _ => {
                        return Err(Error::TrackerRemoved {
                            dylib: t.dylib_name.clone(),
                        });
                    }
                }
            };
            t = next;
        }
    }

    /// Removes everything defined through this tracker: symbols leave their
    /// dylib (unpublished first), lookups waiting on them fail, running
    /// materializations get "tracker removed" errors, and resource managers
    /// free what they hold. Returns when the managers are done; their first
    /// error, if any. Called from inside this tracker's
    /// [`ResourceTracker::with_resource_key`] closure, it returns once the
    /// symbols are gone, and the managers run when the closure returns.
    pub fn remove(&self) -> Result<()> {
        let target = self.target();
        if !target.retire(None) {
            return Ok(());
        }
        let (reply, wait) = Reply::new();
        self.core.send(Msg::RemoveTracker {
            tracker: target.id,
            reply: Some(reply),
        });
        if inside(&self.core, target.dylib, Some(target.id)) {
            return Ok(());
        }
        wait.wait()
    }

    /// Moves everything this tracker owns to `dst` (same dylib); this tracker
    /// becomes defunct. Handles given out by responsibilities follow the
    /// move. Resource managers' `transfer_resources` runs once no
    /// [`ResourceTracker::with_resource_key`] closure of this tracker runs.
    pub fn transfer_to(&self, dst: &ResourceTracker) -> Result<()> {
        let (src, dst) = (self.target(), dst.target());
        if Arc::ptr_eq(&src, &dst) {
            return Ok(());
        }
        if src.dylib != dst.dylib {
            return Err(Error::Usage(format!(
                "transfer_to: trackers belong to different dylibs ('{}' and '{}')",
                src.dylib_name, dst.dylib_name
            )));
        }
        if dst.is_defunct() {
            return Err(Error::TrackerRemoved {
                dylib: dst.dylib_name.clone(),
            });
        }
        if !src.retire(Some(dst.clone())) {
            return Err(Error::TrackerRemoved {
                dylib: src.dylib_name.clone(),
            });
        }
        let (reply, wait) = Reply::new();
        self.core.send(Msg::TransferTracker {
            src: src.id,
            dst: dst.id,
            reply,
        });
        if inside(&self.core, src.dylib, Some(src.id)) {
            return Ok(());
        }
        wait.wait()
    }
}
