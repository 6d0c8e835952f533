//! `timer_create` for JIT'd images: `SIGEV_THREAD` notify functions never
//! run after their image is gone.
//!
//! glibc keeps the bare notify function of a `SIGEV_THREAD` timer and calls
//! it on a thread of its own at each expiry, for as long as the timer
//! exists; a timer an image created and never deleted would have glibc
//! call freed memory once the image is removed. So such a timer is created
//! with kiln's [`notify`] as its function instead, its value a token naming
//! a slot of a table that holds the image's function, its value and the
//! image's [`Life`]. [`notify`] runs the function only while the image is
//! alive, holding its read lock meanwhile (a teardown waits for a
//! notification that is running); when the image goes, its timers are
//! deleted. A token carries its slot's generation, so a notification that
//! glibc started before the deletion and that runs after it finds the slot
//! gone (or another timer's) and does nothing.

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, PoisonError};

use super::dso;
use super::life::Life;

/// A notify function as `timer_create` takes it: `union sigval` (an `int`
/// or a pointer, 8 bytes) is passed as an integer in the first argument
/// register on x86-64 and aarch64, so a `usize` stands for it.
type NotifyFn = unsafe extern "C" fn(usize);

/// glibc's `struct sigevent` (64 bytes): the `libc` crate does not expose
/// `sigev_notify_function` and `sigev_notify_attributes`, which sit at the
/// start of the union that follows `sigev_notify`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SigEvent {
    value: usize,
    signo: c_int,
    notify: c_int,
    function: Option<NotifyFn>,
    attributes: *mut c_void,
    _pad: [c_int; 8],
}

const _: () = assert!(std::mem::size_of::<SigEvent>() == 64);

/// An image's timer: what [`notify`] runs for it.
struct Bound {
    generation: u32,
    /// `None` until glibc has created it.
    timer: Option<libc::timer_t>,
    function: NotifyFn,
    value: usize,
    life: Arc<Life>,
}

// SAFETY: `timer` is an id glibc hands out for the whole process (a
// pointer-sized handle, not memory this thread owns); the rest is an
// address, a plain value the program gave, and an `Arc`.
unsafe impl Send for Bound {}

#[derive(Default)]
struct Table {
    slots: Vec<Option<Bound>>,
    free: Vec<usize>,
    /// The generation the next bound slot gets.
    next_generation: u32,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    slots: Vec::new(),
    free: Vec::new(),
    next_generation: 0,
});

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    f(&mut TABLE.lock().unwrap_or_else(PoisonError::into_inner))
}

/// The value [`notify`] gets for `slot` bound at `generation`.
fn token(slot: usize, generation: u32) -> usize {
    (usize::try_from(generation).unwrap_or(0) << 32) | slot
}

impl Table {
    /// A slot for a timer of `life` running `function(value)`, and its token.
    fn bind(&mut self, function: NotifyFn, value: usize, life: Arc<Life>) -> usize {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let bound = Bound {
            generation,
            timer: None,
            function,
            value,
            life,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(bound);
                slot
            }
            None => {
                self.slots.push(Some(bound));
                self.slots.len() - 1
            }
        };
        token(slot, generation)
    }

    /// The slot `token` names, if it is still bound to that timer.
    fn bound(&mut self, token: usize) -> Option<(usize, &mut Bound)> {
        let slot = token & 0xffff_ffff;
        let generation = u32::try_from(token >> 32).ok()?;
        let bound = self.slots.get_mut(slot)?.as_mut()?;
        (bound.generation == generation).then_some((slot, bound))
    }

    fn unbind(&mut self, slot: usize) {
        if self.slots[slot].take().is_some() {
            self.free.push(slot);
        }
    }

    fn slot_of(&self, timer: libc::timer_t) -> Option<usize> {
        self.slots
            .iter()
            .position(|b| b.as_ref().is_some_and(|b| b.timer == Some(timer)))
    }
}

/// The function glibc calls at each expiry of an image's timer: the
/// image's, if the timer's slot is still bound and the image alive.
unsafe extern "C" fn notify(token: usize) {
    let bound = with_table(|t| {
        t.bound(token)
            .map(|(_, b)| (b.function, b.value, Arc::clone(&b.life)))
    });
    let Some((function, value, life)) = bound else {
        return;
    };
    life.while_alive(|| {
        // SAFETY: the image that gave `function` is alive and stays so
        // while `while_alive` runs this; `value` is the one it gave.
        unsafe { function(value) }
    });
}

unsafe extern "C" {
    #[link_name = "timer_create"]
    fn real_timer_create(
        clock: libc::clockid_t,
        event: *mut SigEvent,
        timer: *mut libc::timer_t,
    ) -> c_int;
    #[link_name = "timer_delete"]
    fn real_timer_delete(timer: libc::timer_t) -> c_int;
}

/// `timer_create` for JIT'd code: a `SIGEV_THREAD` timer whose function
/// lies in a live kiln image notifies through [`notify`]; any other call
/// is glibc's.
unsafe extern "C" fn timer_create(
    clock: libc::clockid_t,
    event: *mut SigEvent,
    timer: *mut libc::timer_t,
) -> c_int {
    // SAFETY: the caller's event, if any, as glibc reads it.
    let given = (!event.is_null()).then(|| unsafe { *event });
    let image = given
        .filter(|e| e.notify == libc::SIGEV_THREAD)
        .and_then(|e| Some((e, e.function?)))
        .and_then(|(e, f)| Some((e, f, dso::life_of(f as usize)?)));
    let Some((mut ours, function, life)) = image else {
        // SAFETY: not a kiln image's notify function: glibc's call, unchanged.
        return unsafe { real_timer_create(clock, event, timer) };
    };
    let token = with_table(|t| t.bind(function, ours.value, life));
    ours.function = Some(notify);
    ours.value = token;
    // SAFETY: `ours` is the caller's event with kiln's function and token;
    // `timer` is the caller's out-pointer, passed on.
    let rc = unsafe { real_timer_create(clock, &mut ours, timer) };
    with_table(|t| {
        if let Some((slot, bound)) = t.bound(token) {
            if rc == 0 {
                // SAFETY: glibc just wrote the new timer through the
                // caller's pointer.
                bound.timer = Some(unsafe { *timer });
            } else {
                t.unbind(slot);
            }
        }
    });
    rc
}

/// `timer_delete` for JIT'd code: glibc's, and the timer's slot (if an
/// image's) is freed.
unsafe extern "C" fn timer_delete(timer: libc::timer_t) -> c_int {
    // SAFETY: the caller's timer, as glibc takes it.
    let rc = unsafe { real_timer_delete(timer) };
    if rc == 0 {
        with_table(|t| {
            if let Some(slot) = t.slot_of(timer) {
                t.unbind(slot);
            }
        });
    }
    rc
}

/// Deletes the timers `life`'s image created and still has, and frees
/// their slots. Called once the image's life has ended (so a notification
/// already started finds the image gone).
pub(crate) fn delete_timers_of(life: &Life) {
    let timers: Vec<libc::timer_t> = with_table(|t| {
        let mut timers = Vec::new();
        for slot in 0..t.slots.len() {
            let Some(b) = t.slots[slot].as_ref() else {
                continue;
            };
            if std::ptr::eq(Arc::as_ptr(&b.life), life) {
                timers.extend(b.timer);
                t.unbind(slot);
            }
        }
        timers
    });
    for timer in timers {
        // SAFETY: a timer the image created and did not delete (its slot
        // was bound until now): nobody else deletes it.
        unsafe { real_timer_delete(timer) };
    }
}

/// The overrides this module provides.
pub(crate) fn overrides() -> [(&'static str, usize); 2] {
    [
        ("timer_create", timer_create as *const () as usize),
        ("timer_delete", timer_delete as *const () as usize),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::DsoHandle;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    static TICKS: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn image_tick(value: usize) {
        TICKS.fetch_add(value, Ordering::SeqCst);
    }

    /// A periodic `SIGEV_THREAD` timer of `period` running `function(value)`.
    fn start(function: NotifyFn, value: usize, period: Duration) -> libc::timer_t {
        let mut event = SigEvent {
            value,
            signo: 0,
            notify: libc::SIGEV_THREAD,
            function: Some(function),
            attributes: std::ptr::null_mut(),
            _pad: [0; 8],
        };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: a valid event and out-pointer.
        let rc = unsafe { timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) };
        assert_eq!(rc, 0);
        let spec = libc::timespec {
            tv_sec: 0,
            tv_nsec: period.as_nanos() as libc::c_long,
        };
        let its = libc::itimerspec {
            it_interval: spec,
            it_value: spec,
        };
        // SAFETY: the timer just created, a valid setting.
        let rc = unsafe { libc::timer_settime(timer, 0, &its, std::ptr::null_mut()) };
        assert_eq!(rc, 0);
        timer
    }

    fn wait_for_ticks(at_least: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TICKS.load(Ordering::SeqCst) < at_least {
            assert!(Instant::now() < deadline, "the timer never fired");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An image's timer notifies through kiln while the image lives; the
    /// image's end deletes it (no notification after), and its slot is
    /// free again; `timer_delete` by the image frees the slot too.
    #[test]
    fn an_images_timers_notify_while_it_lives_and_go_with_it() {
        let image = DsoHandle::new("timers");
        image.add_range(image_tick as *const () as usize, 1);
        let timer = start(image_tick, 1, Duration::from_millis(1));
        wait_for_ticks(3);
        // SAFETY: the image's own timer.
        assert_eq!(unsafe { timer_delete(timer) }, 0);
        assert_eq!(with_table(|t| t.slot_of(timer)), None);
        let before = TICKS.load(Ordering::SeqCst);
        let timer = start(image_tick, 1, Duration::from_millis(1));
        wait_for_ticks(before + 3);
        drop(image);
        assert_eq!(with_table(|t| t.slot_of(timer)), None, "its slot is free");
        let after = TICKS.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            TICKS.load(Ordering::SeqCst),
            after,
            "no notification after the image's end"
        );
    }

    static STALE_RUNS: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn stale_tick(value: usize) {
        STALE_RUNS.fetch_add(value, Ordering::SeqCst);
    }

    /// A stale token (its slot freed, and bound again since) runs nothing;
    /// the fresh one runs its function.
    #[test]
    fn a_stale_token_runs_nothing() {
        let image = DsoHandle::new("stale");
        image.add_range(stale_tick as *const () as usize, 1);
        let life = dso::life_of(stale_tick as *const () as usize).expect("the image's life");
        let (first, second) = with_table(|t| {
            let first = t.bind(stale_tick, 1, Arc::clone(&life));
            let (slot, _) = t.bound(first).expect("bound");
            t.unbind(slot);
            let second = t.bind(stale_tick, 10, Arc::clone(&life));
            (first, second)
        });
        assert_ne!(first, second);
        // SAFETY: `notify` takes any token.
        unsafe { notify(first) };
        assert_eq!(STALE_RUNS.load(Ordering::SeqCst), 0);
        // SAFETY: as above.
        unsafe { notify(second) };
        assert_eq!(STALE_RUNS.load(Ordering::SeqCst), 10);
        drop(image);
        // SAFETY: as above; the image is gone.
        unsafe { notify(second) };
        assert_eq!(STALE_RUNS.load(Ordering::SeqCst), 10);
        with_table(|t| {
            if let Some((slot, _)) = t.bound(second) {
                t.unbind(slot);
            }
        });
    }
}
