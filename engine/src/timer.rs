//! Deadlines: one thread for the whole process sleeps until the earliest
//! and runs its job, instead of a thread per deadline. Lookups that await
//! definitions for a while ([`crate::lookup::AwaitDefinitions::For`]) and
//! calls parked by [`crate::qualified::QualifiedNames`] with a timeout set
//! their deadlines here (a host with thousands of timed lookups had
//! thousands of sleeping threads, each until its full timeout, and a
//! deadline whose thread could not start never came).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::actor::{Msg, SessionCore};

/// What runs at a deadline: never under the timer's lock, and never
/// holding what it acts on alive (it holds weak references).
type Job = Box<dyn FnOnce() + Send>;

/// A deadline set with [`after`], to [`cancel`] once what waits on it ends
/// first: a long-running host's ended waits leave nothing behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline {
    at: Instant,
    seq: u64,
}

/// The deadlines, earliest first; at one instant, first asked first
/// (the second key: a count of deadlines ever set).
struct Deadlines {
    due: BTreeMap<(Instant, u64), Job>,
    set: u64,
}

static DEADLINES: Mutex<Deadlines> = Mutex::new(Deadlines {
    due: BTreeMap::new(),
    set: 0,
});
static CHANGED: Condvar = Condvar::new();

fn deadlines() -> MutexGuard<'static, Deadlines> {
    DEADLINES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the timer thread runs once, before its next job
/// ([`on_timer_thread`]), and whether it has.
static HOOK: OnceLock<fn()> = OnceLock::new();
static HOOK_RAN: AtomicBool = AtomicBool::new(false);

/// Has `hook` run once on the engine's own thread — the one thread kiln's
/// engine starts for itself, which runs the deadlines of timed waits and
/// what they complete (a failed lookup's callback may run there) — at its
/// start, or before its next job if it runs already. For a runtime that
/// must know every thread that may run JIT'd code: kiln-linker's static TLS
/// area attaches it (worker pools have their own hook,
/// [`WorkerPool::with_start`](crate::WorkerPool::with_start)). The first
/// hook set in a process is kept; later calls change nothing.
pub fn on_timer_thread(hook: fn()) {
    // Set and announced under the deadlines' lock: the thread checks it
    // under that lock before it waits, so it cannot miss it.
    let _guard = deadlines();
    if HOOK.set(hook).is_ok() {
        CHANGED.notify_all();
    }
}

/// The hook, if it is set and has not run (then it is marked run).
fn hook_to_run() -> Option<fn()> {
    let hook = *HOOK.get()?;
    (!HOOK_RAN.swap(true, Ordering::SeqCst)).then_some(hook)
}

/// Whether the timer thread runs: started on first use; `false` if it
/// cannot start (a thread limit).
fn timer_runs() -> bool {
    static STARTED: OnceLock<bool> = OnceLock::new();
    *STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("kiln-timer".into())
            .spawn(run)
            .is_ok()
    })
}

/// Sleeps until the earliest deadline, runs its job, and so on, for the
/// life of the process.
fn run() {
    let mut guard = deadlines();
    loop {
        if let Some(hook) = hook_to_run() {
            // Like a job: outside the lock, a panic not the timer's end.
            drop(guard);
            let _ = std::panic::catch_unwind(hook);
            guard = deadlines();
            continue;
        }
        let now = Instant::now();
        let wait = match guard.due.first_key_value() {
            None => None,
            Some((&(at, _), _)) if at > now => Some(at - now),
            Some(_) => {
                let Some((_, due)) = guard.due.pop_first() else {
                    continue;
                };
                // A job may take other locks and run engine work; one
                // that panics must not stop the deadlines after it.
                drop(guard);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(due));
                guard = deadlines();
                continue;
            }
        };
        guard = match wait {
            None => CHANGED.wait(guard).unwrap_or_else(PoisonError::into_inner),
            Some(wait) => {
                let waited = CHANGED.wait_timeout(guard, wait);
                waited.unwrap_or_else(PoisonError::into_inner).0
            }
        };
    }
}

/// Runs `job` after `timeout`, unless the returned deadline is cancelled
/// first; at once if no timer thread could start (what waits on the
/// deadline then ends early rather than never). A timeout too long for an
/// `Instant` never comes: the job is dropped. `None`: nothing to cancel.
#[must_use = "a deadline left set keeps its job until it comes"]
pub(crate) fn after(timeout: Duration, job: Job) -> Option<Deadline> {
    // Beyond what an `Instant` can hold: never.
    let at = Instant::now().checked_add(timeout)?;
    if !timer_runs() {
        job();
        return None;
    }
    let mut guard = deadlines();
    let deadline = Deadline { at, seq: guard.set };
    guard.set += 1;
    guard.due.insert((at, deadline.seq), job);
    drop(guard);
    CHANGED.notify_one();
    Some(deadline)
}

/// Drops `deadline`'s job if it has not run (a deadline that came already
/// is gone). The thread sleeps on as it was: an earlier wake finds the
/// next deadline.
pub(crate) fn cancel(deadline: Deadline) {
    let job = deadlines().due.remove(&(deadline.at, deadline.seq));
    // A job's captures are dropped outside the lock.
    drop(job);
}

/// How many deadlines are set and have not come (a test's view of what a
/// long-running host leaves behind).
pub fn pending_deadlines() -> usize {
    deadlines().due.len()
}

/// Cancels `lookup` of `core`'s session after `timeout` (an error that
/// names the timeout), unless it completes first (its slot cancels the
/// deadline), or its session ends.
#[must_use = "a deadline left set keeps its job until it comes"]
pub(crate) fn cancel_after(
    core: &Arc<SessionCore>,
    lookup: u64,
    timeout: Duration,
) -> Option<Deadline> {
    let core = Arc::downgrade(core);
    after(
        timeout,
        Box::new(move || {
            // A lookup complete by now ignores it.
            if let Some(core) = core.upgrade() {
                core.send(Msg::Cancel {
                    lookup,
                    timeout_millis: Some(timeout.as_millis()),
                });
            }
        }),
    )
}
