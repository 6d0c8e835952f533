//! `timer_create` and `mq_notify` for JIT'd images: `SIGEV_THREAD` notify
//! functions never run after their image is gone.
//!
//! glibc keeps the bare notify function of a `SIGEV_THREAD` timer, or of a
//! message queue's notification, and calls it on a thread of its own — at
//! each expiry of the timer, for as long as it exists; when a message
//! reaches the empty queue, once per registration. An image removed while
//! its timer exists or its registration stands would have glibc call freed
//! memory. So such a timer is created (a registration made) with kiln's
//! [`notify`] as its function instead, its value a token naming a slot of a
//! table that holds the image's function, its value and the image's
//! [`Life`]. [`notify`] runs the function only while the image is alive,
//! holding its read lock meanwhile (a teardown waits for a notification
//! that is running); when the image goes, its timers are deleted and its
//! registrations withdrawn. A token carries its slot's generation, so a
//! notification that glibc started before then and that runs after finds
//! the slot gone (or another's) and does nothing.

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

/// What notifies an image's function.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    Timer(libc::timer_t),
    /// A message queue's one registration.
    Queue(libc::mqd_t),
}

/// An image's timer or registration: what [`notify`] runs for it.
struct Bound {
    generation: u32,
    /// `None` until glibc has created the timer (made the registration).
    source: Option<Source>,
    function: NotifyFn,
    value: usize,
    life: Arc<Life>,
}

// SAFETY: a timer is an id glibc hands out for the whole process (a
// pointer-sized handle, not memory this thread owns); the rest is a queue
// descriptor, an address, a plain value the program gave, and an `Arc`.
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
    /// A slot for a notification of `life` running `function(value)`, and
    /// its token.
    fn bind(&mut self, function: NotifyFn, value: usize, life: Arc<Life>) -> usize {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let bound = Bound {
            generation,
            source: None,
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

    /// The slot `token` names, if it is still bound to that notification.
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

    fn slot_of(&self, source: Source) -> Option<usize> {
        self.slots
            .iter()
            .position(|b| b.as_ref().is_some_and(|b| b.source == Some(source)))
    }
}

/// The function glibc calls at each expiry of an image's timer, or when a
/// message reaches a queue the image registered for: the image's, if the
/// slot is still bound and the image alive. A queue's registration is
/// used up by the message: its slot goes (a new registration the function
/// makes has a slot of its own).
unsafe extern "C" fn notify(token: usize) {
    let bound = with_table(|t| {
        let (slot, b) = t.bound(token)?;
        let once = matches!(b.source, Some(Source::Queue(_)));
        let call = (b.function, b.value, Arc::clone(&b.life));
        if once {
            t.unbind(slot);
        }
        Some(call)
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
    #[link_name = "mq_notify"]
    fn real_mq_notify(queue: libc::mqd_t, event: *const SigEvent) -> c_int;
    #[link_name = "mq_close"]
    fn real_mq_close(queue: libc::mqd_t) -> c_int;
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
    let Some((mut ours, token)) = (unsafe { bind_if_in_image(event) }) else {
        // SAFETY: not a kiln image's notify function: glibc's call, unchanged.
        return unsafe { real_timer_create(clock, event, timer) };
    };
    // SAFETY: `ours` is the caller's event with kiln's function and token;
    // `timer` is the caller's out-pointer, passed on.
    let rc = unsafe { real_timer_create(clock, &mut ours, timer) };
    // SAFETY: on success glibc just wrote the new timer through the
    // caller's pointer.
    settle(token, (rc == 0).then(|| Source::Timer(unsafe { *timer })));
    rc
}

/// For a `SIGEV_THREAD` event whose function lies in a live kiln image: a
/// bound slot, and the event to give glibc instead (kiln's [`notify`],
/// the slot's token).
///
/// # Safety
///
/// `event` is null or points to a `struct sigevent`.
unsafe fn bind_if_in_image(event: *const SigEvent) -> Option<(SigEvent, usize)> {
    // SAFETY: the caller's event, as glibc reads it.
    let mut ours = unsafe { event.as_ref() }.copied()?;
    if ours.notify != libc::SIGEV_THREAD {
        return None;
    }
    let function = ours.function?;
    let life = dso::life_of(function as usize)?;
    let token = with_table(|t| t.bind(function, ours.value, life));
    ours.function = Some(notify);
    ours.value = token;
    Some((ours, token))
}

/// Records what glibc made for `token`'s slot, or frees the slot when it
/// made nothing.
fn settle(token: usize, made: Option<Source>) {
    with_table(|t| {
        if let Some((slot, bound)) = t.bound(token) {
            match made {
                Some(source) => bound.source = Some(source),
                None => t.unbind(slot),
            }
        }
    });
}

/// `timer_delete` for JIT'd code: glibc's, and the timer's slot (if an
/// image's) is freed.
unsafe extern "C" fn timer_delete(timer: libc::timer_t) -> c_int {
    // SAFETY: the caller's timer, as glibc takes it.
    let rc = unsafe { real_timer_delete(timer) };
    if rc == 0 {
        unbind_source(Source::Timer(timer));
    }
    rc
}

fn unbind_source(source: Source) {
    with_table(|t| {
        if let Some(slot) = t.slot_of(source) {
            t.unbind(slot);
        }
    });
}

/// `mq_notify` for JIT'd code: a `SIGEV_THREAD` registration whose
/// function lies in a live kiln image notifies through [`notify`]; any
/// other call is glibc's. A registration withdrawn (a null event) frees
/// the image's slot.
unsafe extern "C" fn mq_notify(queue: libc::mqd_t, event: *const SigEvent) -> c_int {
    // SAFETY: the caller's event, if any, as glibc reads it.
    let Some((ours, token)) = (unsafe { bind_if_in_image(event) }) else {
        // SAFETY: not a kiln image's notify function: glibc's call, unchanged.
        let rc = unsafe { real_mq_notify(queue, event) };
        if rc == 0 && event.is_null() {
            unbind_source(Source::Queue(queue));
        }
        return rc;
    };
    // Known before the registration: a message may come, and glibc call
    // `notify`, before `mq_notify` returns.
    settle(token, Some(Source::Queue(queue)));
    // SAFETY: `ours` is the caller's event with kiln's function and token.
    let rc = unsafe { real_mq_notify(queue, &ours) };
    if rc != 0 {
        settle(token, None);
    }
    rc
}

/// `mq_close` for JIT'd code: glibc's; closing withdraws the process's
/// registration, so the image's slot for the queue goes too (and the
/// descriptor, free for reuse, is no longer taken for the image's).
unsafe extern "C" fn mq_close(queue: libc::mqd_t) -> c_int {
    // SAFETY: the caller's descriptor, as glibc takes it.
    let rc = unsafe { real_mq_close(queue) };
    if rc == 0 {
        unbind_source(Source::Queue(queue));
    }
    rc
}

/// Deletes the timers `life`'s image created and still has, withdraws its
/// queue registrations still standing, and frees their slots. Called once
/// the image's life has ended (so a notification already started finds
/// the image gone).
pub(crate) fn end_notifications_of(life: &Life) {
    let sources: Vec<Source> = with_table(|t| {
        let mut sources = Vec::new();
        for slot in 0..t.slots.len() {
            let Some(b) = t.slots[slot].as_ref() else {
                continue;
            };
            if std::ptr::eq(Arc::as_ptr(&b.life), life) {
                sources.extend(b.source);
                t.unbind(slot);
            }
        }
        sources
    });
    for source in sources {
        match source {
            // SAFETY: a timer the image created and did not delete (its
            // slot was bound until now): nobody else deletes it.
            Source::Timer(timer) => unsafe {
                real_timer_delete(timer);
            },
            // SAFETY: the queue's registration is the image's (its slot was
            // bound until now: not used up, withdrawn or closed); a null
            // event withdraws it.
            Source::Queue(queue) => unsafe {
                real_mq_notify(queue, std::ptr::null());
            },
        }
    }
}

/// The overrides this module provides.
pub(crate) fn overrides() -> [(&'static str, usize); 4] {
    [
        ("timer_create", timer_create as *const () as usize),
        ("timer_delete", timer_delete as *const () as usize),
        ("mq_notify", mq_notify as *const () as usize),
        ("mq_close", mq_close as *const () as usize),
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
        assert_eq!(with_table(|t| t.slot_of(Source::Timer(timer))), None);
        let before = TICKS.load(Ordering::SeqCst);
        let timer = start(image_tick, 1, Duration::from_millis(1));
        wait_for_ticks(before + 3);
        drop(image);
        assert_eq!(
            with_table(|t| t.slot_of(Source::Timer(timer))),
            None,
            "its slot is free"
        );
        let after = TICKS.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            TICKS.load(Ordering::SeqCst),
            after,
            "no notification after the image's end"
        );
    }

    static MESSAGES: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn image_message(value: usize) {
        MESSAGES.fetch_add(value, Ordering::SeqCst);
    }

    /// Registers `image_message(value)` for `queue`'s next message.
    fn watch(queue: libc::mqd_t, value: usize) {
        let event = SigEvent {
            value,
            signo: 0,
            notify: libc::SIGEV_THREAD,
            function: Some(image_message),
            attributes: std::ptr::null_mut(),
            _pad: [0; 8],
        };
        // SAFETY: an open queue and a valid event.
        assert_eq!(unsafe { mq_notify(queue, &event) }, 0);
    }

    /// A queue registration of an image notifies through kiln once (the
    /// message uses it up, and its slot goes); `mq_close` frees the slot of
    /// one standing; the image's end withdraws one standing.
    #[test]
    fn an_images_queue_registrations_notify_once_and_go_with_it() {
        let image = DsoHandle::new("queues");
        image.add_range(image_message as *const () as usize, 1);
        let name = std::ffi::CString::new(format!("/kiln-unit-{}", std::process::id())).unwrap();
        let open = || {
            // SAFETY: a valid name; default attributes.
            let queue = unsafe {
                libc::mq_open(
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_RDWR,
                    0o600,
                    std::ptr::null_mut::<libc::mq_attr>(),
                )
            };
            assert!(queue >= 0, "mq_open: {}", std::io::Error::last_os_error());
            queue
        };
        let send = |queue| {
            // SAFETY: an open queue, a one-byte message.
            assert_eq!(unsafe { libc::mq_send(queue, c"m".as_ptr(), 1, 0) }, 0);
        };
        let queue = open();
        watch(queue, 1);
        assert!(with_table(|t| t.slot_of(Source::Queue(queue))).is_some());
        send(queue);
        let deadline = Instant::now() + Duration::from_secs(10);
        while MESSAGES.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no notification");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            with_table(|t| t.slot_of(Source::Queue(queue))),
            None,
            "used up"
        );
        watch(queue, 1);
        // SAFETY: the queue opened above, closed once.
        assert_eq!(unsafe { mq_close(queue) }, 0);
        assert_eq!(
            with_table(|t| t.slot_of(Source::Queue(queue))),
            None,
            "closed"
        );
        let queue = open();
        watch(queue, 1);
        drop(image);
        assert_eq!(
            with_table(|t| t.slot_of(Source::Queue(queue))),
            None,
            "withdrawn"
        );
        // The queue takes another registration: the image's is gone.
        let none = SigEvent {
            value: 0,
            signo: 0,
            notify: libc::SIGEV_NONE,
            function: None,
            attributes: std::ptr::null_mut(),
            _pad: [0; 8],
        };
        // SAFETY: an open queue and a valid event.
        assert_eq!(unsafe { mq_notify(queue, &none) }, 0);
        // SAFETY: the queue opened above, closed and unlinked once.
        unsafe {
            mq_close(queue);
            libc::mq_unlink(name.as_ptr());
        }
        assert_eq!(MESSAGES.load(Ordering::SeqCst), 1);
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
        // SAFETY: `notify` takes any token.
        unsafe { notify(second) };
        assert_eq!(STALE_RUNS.load(Ordering::SeqCst), 10);
        drop(image);
        // SAFETY: `notify` takes any token; the image is gone.
        unsafe { notify(second) };
        assert_eq!(STALE_RUNS.load(Ordering::SeqCst), 10);
        with_table(|t| {
            if let Some((slot, _)) = t.bound(second) {
                t.unbind(slot);
            }
        });
    }
}
