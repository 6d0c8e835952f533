//! `on_timer_thread`: a hook runs once on the engine's own timer thread —
//! here set while that thread already runs and waits (a lookup awaiting a
//! definition for a long while keeps it asleep), so only the hook's
//! announcement can wake it. A second hook is ignored.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::awaiting;
use kiln_engine::*;

static RAN_ON: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SECOND: AtomicUsize = AtomicUsize::new(0);

fn record() {
    let name = std::thread::current().name().unwrap_or("").to_string();
    RAN_ON.lock().unwrap().push(name);
}

fn second() {
    SECOND.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_hook_runs_once_on_the_running_timer_thread() {
    let s = Session::builder().dispatcher(InPlaceDispatcher).build();
    let d = s.create_dylib("d").unwrap();
    let never = s.intern("never");
    // Starts the timer thread, then leaves it asleep for ten minutes.
    let waiting = s.lookup_with(&awaiting(&d, &never, Duration::from_secs(600)));
    assert!(pending_deadlines() >= 1);
    on_timer_thread(record);
    let deadline = Instant::now() + Duration::from_secs(10);
    while RAN_ON.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(*RAN_ON.lock().unwrap(), ["kiln-timer"]);
    on_timer_thread(second);
    // Another deadline wakes the thread again: neither hook runs (again).
    let short = s.lookup_with(&awaiting(&d, &never, Duration::from_millis(20)));
    assert!(short.wait().is_err(), "the short lookup times out");
    assert_eq!(RAN_ON.lock().unwrap().len(), 1, "the hook ran once");
    assert_eq!(SECOND.load(Ordering::SeqCst), 0, "a later hook is ignored");
    drop(waiting);
    s.end();
}
