//! `pthread_create` for JIT'd images: threads an image starts keep the
//! memory of the images removed with it mapped until they end.
//!
//! A thread whose start routine lies in a kiln image runs that image's
//! code — and whatever JIT'd code it calls — for as long as it likes; an
//! image removed meanwhile would have the thread return into freed memory.
//! So such a thread is started through kiln's [`run_counted`], which
//! counts it, against the image that started it, as running until its last
//! `thread_local` destructor has run (also when it ends in
//! `pthread_exit`), and images torn down together while one of them has
//! such a thread hand the release of their memory (code and data, the
//! registration of unwind info, thread-locals, debugger registration) to
//! [`release_when_no_thread_of`]: the last of those threads to end
//! releases it. A teardown never waits for a thread; it still runs the
//! images' finalizers and ends their lives at once, as before.
//!
//! C11's `thrd_create` is glibc's own way in, overridden too. C++'s
//! `std::thread` starts its threads from libstdc++
//! (`std::thread::_M_start_thread`, which kiln overrides for JIT'd code
//! too): a thread whose `_M_run` lies in an image is started and counted
//! the same way. libc++'s `std::thread` needs nothing more: its
//! constructor is a header template that calls `pthread_create` from the
//! image with a start routine instantiated there.
//!
//! The count is per image, and a tracker's removal waits for the threads
//! the images removed together started: its contract
//! ([`crate::jit::Jit::remove`]) already rules out other threads running
//! the removed code, so a plugin whose thread pool lives on does not keep
//! the memory of every other plugin removed meanwhile. A JIT's end, and
//! the lazy stubs it releases, wait for every image thread (a thread of
//! any image may run any, and code linked while the JIT ends is removed
//! on its own). Threads started by the host, or by a library outside the
//! images on its own, are not counted.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, PoisonError};

use super::dso;
use super::life::Life;

/// A start routine as `pthread_create` takes it.
type StartFn = unsafe extern "C" fn(*mut c_void) -> *mut c_void;

/// What an image's teardown left for the image threads to end first.
type Parked = Box<dyn FnOnce() + Send>;

/// Which image threads a parked release waits for.
enum Awaits {
    /// Every one.
    Every,
    /// Those started by these images.
    StartedBy(Vec<Arc<Life>>),
}

struct Running {
    /// Image threads created and not yet past their last destructor, by
    /// the image that started them (entries with a count of 0 go).
    threads: Vec<(Arc<Life>, usize)>,
    parked: Vec<(Awaits, Parked)>,
}

impl Running {
    /// Whether a thread `awaits` names still runs.
    fn runs(&self, awaits: &Awaits) -> bool {
        match awaits {
            Awaits::Every => !self.threads.is_empty(),
            Awaits::StartedBy(lives) => self
                .threads
                .iter()
                .any(|(l, _)| lives.iter().any(|x| Arc::ptr_eq(x, l))),
        }
    }
}

static RUNNING: Mutex<Running> = Mutex::new(Running {
    threads: Vec::new(),
    parked: Vec::new(),
});

fn with_running<R>(f: impl FnOnce(&mut Running) -> R) -> R {
    f(&mut RUNNING.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Runs `release` now if no thread `awaits` names runs, else when the last
/// one ends (on that thread). Outside any lock.
fn release_when(awaits: Awaits, release: Parked) {
    let now = with_running(|r| {
        if r.runs(&awaits) {
            r.parked.push((awaits, release));
            None
        } else {
            Some(release)
        }
    });
    if let Some(release) = now {
        release();
    }
}

/// Runs `release` now if no image thread runs, else when the last one
/// ends: for memory any image's thread may run (lazy stubs).
pub(crate) fn release_when_no_image_thread_runs(release: Parked) {
    release_when(Awaits::Every, release);
}

/// Runs `release` now if no thread that one of the images of `lives`
/// started runs, else when the last such one ends: for the memory of
/// images removed together, which their own threads may still run (other
/// threads may not: [`crate::jit::Jit::remove`]'s contract).
pub(crate) fn release_when_no_thread_of(lives: Vec<Arc<Life>>, release: Parked) {
    release_when(Awaits::StartedBy(lives), release);
}

/// The number of image threads running, and of releases waiting for them.
#[cfg(test)]
pub(crate) fn running_for_tests() -> (usize, usize) {
    with_running(|r| (r.threads.iter().map(|(_, n)| n).sum(), r.parked.len()))
}

fn thread_starts(life: &Arc<Life>) {
    with_running(
        |r| match r.threads.iter_mut().find(|(l, _)| Arc::ptr_eq(l, life)) {
            Some((_, n)) => *n += 1,
            None => r.threads.push((Arc::clone(life), 1)),
        },
    );
}

fn thread_ended(life: &Arc<Life>) {
    let ready = with_running(|r| {
        if let Some(i) = r.threads.iter().position(|(l, _)| Arc::ptr_eq(l, life)) {
            r.threads[i].1 -= 1;
            if r.threads[i].1 == 0 {
                r.threads.swap_remove(i);
            }
        }
        let (waiting, ready): (Vec<_>, Vec<_>) = std::mem::take(&mut r.parked)
            .into_iter()
            .partition(|(awaits, _)| r.runs(awaits));
        r.parked = waiting;
        ready
    });
    for (_, release) in ready {
        release();
    }
}

/// Set on an image thread to the image that started it: its destructor
/// (this thread's last kiln `thread_local` one, registered before the
/// image's code ran, so after every destructor the image registers) ends
/// the thread's count.
struct ImageThread(RefCell<Option<Arc<Life>>>);

impl Drop for ImageThread {
    fn drop(&mut self) {
        if let Some(life) = self.0.get_mut().take() {
            thread_ended(&life);
        }
    }
}

thread_local! {
    static IMAGE_THREAD: ImageThread = const { ImageThread(RefCell::new(None)) };
}

/// A start routine as `thrd_create` takes it.
type C11StartFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// What an image thread runs, handed to it by [`start_counted`].
enum Body {
    /// `pthread_create`'s routine and argument.
    Posix(StartFn, *mut c_void),
    /// `thrd_create`'s: its `int` result handed to glibc as `thrd_join`
    /// reads it back (the pointer's low bits, as glibc's own does).
    C11(C11StartFn, *mut c_void),
    /// A `std::thread`'s state: `_M_run`, then the deleting destructor
    /// (libstdc++'s `execute_native_thread_routine`).
    Cxx(CxxState),
}

/// Starts a thread running `body`, counted from before it exists (a
/// teardown racing its start parks) until its exit: glibc's
/// `pthread_create` result.
///
/// # Safety
///
/// `thread` and `attr` are as `pthread_create` takes them; `body` is a
/// routine of a live image with the argument its caller gave, or a live
/// `std::thread` state.
unsafe fn start_counted(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    body: Body,
    image: Arc<Life>,
) -> c_int {
    thread_starts(&image);
    let start = Box::into_raw(Box::new((body, image)));
    // SAFETY: the caller's out-pointer and attributes; the new thread
    // takes `body` over.
    let rc = unsafe { real_pthread_create(thread, attr, run_counted, start.cast()) };
    if rc != 0 {
        // SAFETY: no thread was created: `start` is still ours alone.
        let (_, image) = *unsafe { Box::from_raw(start) };
        thread_ended(&image);
    }
    rc
}

/// The start routine of every image thread: counts it ended at its exit,
/// then runs its body. Holds nothing to drop across the call (a
/// `pthread_exit` in the image unwinds through this frame).
unsafe extern "C" fn run_counted(body: *mut c_void) -> *mut c_void {
    // SAFETY: `start_counted` passes the `Box` of a body and its image it
    // leaked for this thread alone.
    let (body, image) = *unsafe { Box::from_raw(body.cast::<(Body, Arc<Life>)>()) };
    IMAGE_THREAD.with(|t| *t.0.borrow_mut() = Some(image));
    match body {
        // SAFETY: the image's routine with its caller's argument, as glibc
        // would have called it.
        Body::Posix(routine, arg) => unsafe { routine(arg) },
        // SAFETY: the image's `thrd_create` routine with its caller's
        // argument, as glibc would have called it.
        Body::C11(routine, arg) => (unsafe { routine(arg) }) as isize as *mut c_void,
        Body::Cxx(state) => {
            // SAFETY: the live state `cxx_start_thread` handed this thread.
            let (run, delete) = unsafe { cxx_state_fns(state) };
            // SAFETY: the state's own virtual functions, called on it as
            // libstdc++ would: `_M_run` once, then the deleting destructor.
            unsafe {
                std::mem::transmute::<usize, unsafe extern "C" fn(CxxState)>(run)(state);
                std::mem::transmute::<usize, unsafe extern "C" fn(CxxState)>(delete)(state);
            }
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" {
    #[link_name = "thrd_create"]
    fn real_thrd_create(
        thread: *mut libc::pthread_t,
        routine: C11StartFn,
        arg: *mut c_void,
    ) -> c_int;
    #[link_name = "pthread_create"]
    fn real_pthread_create(
        thread: *mut libc::pthread_t,
        attr: *const libc::pthread_attr_t,
        start: StartFn,
        arg: *mut c_void,
    ) -> c_int;
}

/// `pthread_create` for JIT'd code: a start routine inside a live kiln
/// image runs behind [`run_counted`]; any other call is glibc's.
unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    routine: StartFn,
    arg: *mut c_void,
) -> c_int {
    let Some(image) = dso::life_of(routine as usize) else {
        // SAFETY: not a kiln image's routine: glibc's call, unchanged.
        return unsafe { real_pthread_create(thread, attr, routine, arg) };
    };
    // SAFETY: the caller's arguments; `routine` lies in a live image.
    unsafe { start_counted(thread, attr, Body::Posix(routine, arg), image) }
}

/// `thrd_result`'s values (glibc's `<threads.h>`).
pub(super) const THRD_SUCCESS: c_int = 0;
pub(super) const THRD_ERROR: c_int = 2;
const THRD_NOMEM: c_int = 3;

/// `thrd_create` for JIT'd code (glibc's starts its thread without going
/// through `pthread_create`): a start routine inside a live kiln image
/// runs behind [`run_counted`]; any other call is glibc's.
unsafe extern "C" fn thrd_create(
    thread: *mut libc::pthread_t,
    routine: C11StartFn,
    arg: *mut c_void,
) -> c_int {
    let Some(image) = dso::life_of(routine as usize) else {
        // SAFETY: not a kiln image's routine: glibc's call, unchanged.
        return unsafe { real_thrd_create(thread, routine, arg) };
    };
    // SAFETY: the caller's out-pointer (`thrd_t` is a `pthread_t`);
    // `routine` lies in a live image.
    match unsafe { start_counted(thread, std::ptr::null(), Body::C11(routine, arg), image) } {
        0 => THRD_SUCCESS,
        libc::ENOMEM => THRD_NOMEM,
        _ => THRD_ERROR,
    }
}

/// libstdc++'s `std::thread::_M_start_thread(unique_ptr<_State>, void (*)())`.
const CXX_START_THREAD: &str =
    "_ZNSt6thread15_M_start_threadESt10unique_ptrINS_6_StateESt14default_deleteIS1_EEPFvvE";

/// A `std::thread::_State` (libstdc++): a polymorphic object, so its first
/// word is its vtable pointer; at that address point the vtable holds the
/// complete and the deleting destructor, then `_M_run`.
type CxxState = *mut *const usize;

/// `_M_run` and the deleting destructor of `state`.
///
/// # Safety
///
/// `state` is a live `std::thread::_State`.
unsafe fn cxx_state_fns(state: CxxState) -> (usize, usize) {
    // SAFETY: the caller's live object: its vtable has these three slots.
    unsafe {
        let vtable = *state;
        (*vtable.add(2), *vtable.add(1))
    }
}

/// `std::thread::_M_start_thread` for JIT'd C++: a thread whose `_M_run`
/// lies in a live kiln image is started as libstdc++ would
/// (`pthread_create`, the new thread taking the state over) behind
/// [`run_counted`], and counted; any other call is libstdc++'s.
/// `state` is the `unique_ptr` passed by value, which the Itanium C++ ABI
/// passes by address (it has a destructor).
unsafe extern "C-unwind" fn cxx_start_thread(
    thread: *mut libc::pthread_t,
    state: *mut CxxState,
    depend: usize,
) {
    // SAFETY: the caller's `unique_ptr`, holding a live state.
    let object = unsafe { *state };
    // SAFETY: a live `_State`, as libstdc++ is given it.
    let image = (!object.is_null())
        .then(|| dso::life_of(unsafe { cxx_state_fns(object) }.0))
        .flatten();
    let Some(image) = image else {
        let real = super::cxx_hooks::libstdcxx(CXX_START_THREAD);
        assert!(
            real != 0,
            "JIT'd code started a std::thread without libstdc++ loaded"
        );
        // SAFETY: libstdc++'s function of this very signature, with the
        // caller's arguments.
        unsafe {
            let real = std::mem::transmute::<
                usize,
                unsafe extern "C-unwind" fn(*mut libc::pthread_t, *mut CxxState, usize),
            >(real);
            return real(thread, state, depend);
        }
    };
    // SAFETY: `std::thread`'s only member is its `pthread_t`, where
    // libstdc++ has glibc write it; the new thread takes the state over.
    let rc = unsafe { start_counted(thread, std::ptr::null(), Body::Cxx(object), image) };
    if rc != 0 {
        let throw = super::cxx_hooks::libstdcxx("_ZSt20__throw_system_errori");
        assert!(throw != 0, "libstdc++ has no std::__throw_system_error");
        // SAFETY: libstdc++'s `[[noreturn]] void std::__throw_system_error(int)`,
        // as `_M_start_thread` reports the error; it unwinds through this
        // frame ("C-unwind"), which holds nothing to drop.
        unsafe {
            let throw =
                std::mem::transmute::<usize, unsafe extern "C-unwind" fn(c_int) -> !>(throw);
            throw(rc);
        }
    }
    // SAFETY: the caller's `unique_ptr`: released, as libstdc++ does once
    // the thread owns the state.
    unsafe { *state = std::ptr::null_mut() };
}

/// The overrides this module provides.
pub(crate) fn overrides() -> [(&'static str, usize); 3] {
    [
        ("pthread_create", pthread_create as *const () as usize),
        ("thrd_create", thrd_create as *const () as usize),
        (CXX_START_THREAD, cxx_start_thread as *const () as usize),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::DsoHandle;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;

    static GO: AtomicBool = AtomicBool::new(false);
    static RELEASED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn image_routine(arg: *mut c_void) -> *mut c_void {
        while !GO.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        arg
    }

    unsafe extern "C" fn exits_early(_: *mut c_void) -> *mut c_void {
        // SAFETY: ends this thread, as the image's code may.
        unsafe { libc::pthread_exit(std::ptr::null_mut()) }
    }

    fn create(routine: StartFn) -> libc::pthread_t {
        let mut thread: libc::pthread_t = 0;
        // SAFETY: a valid out-pointer and routine, default attributes.
        let rc = unsafe { pthread_create(&mut thread, std::ptr::null(), routine, 7 as *mut _) };
        assert_eq!(rc, 0);
        thread
    }

    fn join(thread: libc::pthread_t) -> usize {
        let mut value: *mut c_void = std::ptr::null_mut();
        // SAFETY: a joinable thread created above, joined once.
        assert_eq!(unsafe { libc::pthread_join(thread, &mut value) }, 0);
        value as usize
    }

    /// A release handed over while an image thread runs waits for it; one
    /// with none running happens at once; a thread that ends in
    /// `pthread_exit` is counted out too; a release for some images waits
    /// only for the threads they started; routines outside images are not
    /// counted.
    #[test]
    fn releases_wait_for_the_image_threads_running() {
        let image = DsoHandle::new("threads");
        image.add_range(image_routine as *const () as usize, 1);
        image.add_range(exits_early as *const () as usize, 1);
        let (before, _) = running_for_tests();
        assert_eq!(before, 0, "no image thread left by another test");
        let (tx, rx) = mpsc::channel();
        let thread = create(image_routine);
        assert_eq!(running_for_tests().0, 1);
        release_when_no_image_thread_runs(Box::new(move || {
            RELEASED.fetch_add(1, Ordering::SeqCst);
            tx.send(()).expect("the test waits");
        }));
        assert_eq!(RELEASED.load(Ordering::SeqCst), 0, "parked");
        GO.store(true, Ordering::SeqCst);
        assert_eq!(join(thread), 7, "the routine's value");
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("released when the thread ended");
        assert_eq!(running_for_tests(), (0, 0));
        release_when_no_image_thread_runs(Box::new(|| {
            RELEASED.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(RELEASED.load(Ordering::SeqCst), 2, "released at once");
        let exited = create(exits_early);
        assert_eq!(join(exited), 0);
        assert_eq!(running_for_tests(), (0, 0), "pthread_exit counted out");
        // A release waits for the threads of its own images, not others'.
        GO.store(false, Ordering::SeqCst);
        let other = DsoHandle::new("other");
        let thread = create(image_routine);
        release_when_no_thread_of(
            vec![Arc::clone(other.life())],
            Box::new(|| {
                RELEASED.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert_eq!(
            RELEASED.load(Ordering::SeqCst),
            3,
            "another image's: at once"
        );
        release_when_no_thread_of(
            vec![Arc::clone(other.life()), Arc::clone(image.life())],
            Box::new(|| {
                RELEASED.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert_eq!(running_for_tests(), (1, 1), "its own image's: parked");
        GO.store(true, Ordering::SeqCst);
        assert_eq!(join(thread), 7);
        assert_eq!(running_for_tests(), (0, 0));
        assert_eq!(RELEASED.load(Ordering::SeqCst), 4);
        drop((image, other));
        extern "C" fn host_routine(arg: *mut c_void) -> *mut c_void {
            arg
        }
        let host = create(host_routine);
        assert_eq!(running_for_tests().0, 0, "not an image's routine");
        assert_eq!(join(host), 7);
    }
}
