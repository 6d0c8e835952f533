//! The deadlines of lookups that await definitions for a while
//! ([`crate::lookup::AwaitDefinitions::For`]): one thread for the whole
//! process sleeps until the earliest and cancels that lookup, instead of a
//! thread per lookup (a host with thousands of timed lookups had thousands
//! of sleeping threads, each until its full timeout, and a lookup whose
//! thread could not start never timed out).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::actor::{Msg, SessionCore};

/// A lookup waiting for its deadline.
struct Waiting {
    core: Weak<SessionCore>,
    lookup: u64,
    timeout: Duration,
}

impl Waiting {
    /// Cancels the lookup if its session still exists (a lookup complete
    /// by now ignores it).
    fn fire(self) {
        if let Some(core) = self.core.upgrade() {
            core.send(Msg::Cancel {
                lookup: self.lookup,
                timeout_millis: Some(self.timeout.as_millis()),
            });
        }
    }
}

/// The deadlines, earliest first; at one instant, first asked first
/// (the second key: a count of deadlines ever set).
struct Deadlines {
    due: BTreeMap<(Instant, u64), Waiting>,
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

/// Whether the timer thread runs: started on first use; `false` if it
/// cannot start (a thread limit).
fn timer_runs() -> bool {
    static STARTED: OnceLock<bool> = OnceLock::new();
    *STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("kiln-lookup-timer".into())
            .spawn(run)
            .is_ok()
    })
}

/// Sleeps until the earliest deadline, cancels its lookup, and so on, for
/// the life of the process.
fn run() {
    let mut guard = deadlines();
    loop {
        let now = Instant::now();
        let wait = match guard.due.first_key_value() {
            None => None,
            Some((&(at, _), _)) if at > now => Some(at - now),
            Some(_) => {
                let Some((_, due)) = guard.due.pop_first() else {
                    continue;
                };
                // The session's mailbox may run work: not under the lock.
                drop(guard);
                due.fire();
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

/// Cancels `lookup` of `core`'s session after `timeout` (an error that
/// names the timeout), unless it completes first. Without a timer thread
/// (none could start) it is cancelled at once: it fails rather than wait
/// forever. A timeout too long for an `Instant` never fires.
pub(crate) fn cancel_after(core: &Arc<SessionCore>, lookup: u64, timeout: Duration) {
    // Beyond what an `Instant` can hold: never.
    let Some(at) = Instant::now().checked_add(timeout) else {
        return;
    };
    let waiting = Waiting {
        core: Arc::downgrade(core),
        lookup,
        timeout,
    };
    if !timer_runs() {
        return waiting.fire();
    }
    let mut guard = deadlines();
    let key = (at, guard.set);
    guard.set += 1;
    guard.due.insert(key, waiting);
    drop(guard);
    CHANGED.notify_one();
}
