//! `__dso_handle` per image, and the `atexit` family that records handlers
//! per image so they run before the image's memory is released.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_void};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use super::life::Life;
use super::{RuntimeError, thread};

/// A `__cxa_atexit`-style handler.
type CxaHandler = unsafe extern "C" fn(*mut c_void);
/// An `atexit`-style handler.
type PlainHandler = unsafe extern "C" fn();
/// An `on_exit`-style handler: the exit status, then its argument.
type OnExitHandler = unsafe extern "C" fn(c_int, *mut c_void);

/// One process-exit handler of an image.
enum Handler {
    Cxa(CxaHandler, *mut c_void),
    Plain(PlainHandler),
    OnExit(OnExitHandler, *mut c_void),
}

/// Registration order of process-exit handlers across every image, so that
/// images torn down together run them newest first as `exit()` does.
static NEXT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A handler with its place in the process-wide registration order.
struct Registered {
    seq: u64,
    handler: Handler,
}

impl Registered {
    fn new(handler: Handler) -> Self {
        Registered {
            seq: NEXT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            handler,
        }
    }

    /// Runs the handler; an `on_exit` one gets `status`.
    ///
    /// # Safety
    /// The image that registered it must still be mapped and initialized.
    unsafe fn run(self, status: c_int) {
        match self.handler {
            // SAFETY: the program registered this function and argument for
            // exactly this call; the caller guarantees the image is mapped.
            Handler::Cxa(f, arg) => unsafe { f(arg) },
            // SAFETY: the program registered this function (`atexit`) for
            // exactly this call; the caller guarantees the image is mapped.
            Handler::Plain(f) => unsafe { f() },
            // SAFETY: the program registered this function and argument
            // (`on_exit`) for exactly this call; the caller guarantees the
            // image is mapped.
            Handler::OnExit(f, arg) => unsafe { f(status, arg) },
        }
    }
}

// SAFETY: a handler is a code address plus an opaque argument that the C
// program registered for whichever thread tears the image down; the C ABI
// contract of atexit is that it may run on any thread.
unsafe impl Send for Handler {}

/// The life of the live kiln image whose memory holds `addr`.
pub(crate) fn life_of(addr: usize) -> Option<Arc<Life>> {
    lookup_range(addr).map(|shared| Arc::clone(&shared.life))
}

/// Shared part of a [`DsoHandle`]; its address is the handle's address.
struct DsoShared {
    /// The handle's address (what `__dso_handle` resolves to).
    addr: usize,
    name: String,
    handlers: Mutex<Vec<Registered>>,
    life: Arc<Life>,
    ranges: Mutex<Vec<usize>>,
}

impl fmt::Debug for DsoShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DsoShared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Live kiln images, by handle address and by memory range.
#[derive(Default)]
struct Registry {
    by_addr: HashMap<usize, Weak<DsoShared>>,
    /// start → (end, handle address).
    ranges: BTreeMap<usize, (usize, Weak<DsoShared>)>,
}

static REGISTRY: RwLock<Option<Registry>> = RwLock::new(None);

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Registry::default))
}

fn lookup_handle(addr: usize) -> Option<Arc<DsoShared>> {
    let guard = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    guard.as_ref()?.by_addr.get(&addr)?.upgrade()
}

fn lookup_range(addr: usize) -> Option<Arc<DsoShared>> {
    let guard = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    let (_, (end, shared)) = guard.as_ref()?.ranges.range(..=addr).next_back()?;
    if addr < *end { shared.upgrade() } else { None }
}

/// The live image a `dso` argument of the `__cxa_*atexit` family names:
/// its `__dso_handle`, or any other address inside the image. (Rust's std
/// passes `__cxa_thread_atexit_impl` the address of its own data that
/// holds `&__dso_handle`, not `&__dso_handle` itself; glibc's
/// `__cxa_thread_atexit_impl`, too, takes any address inside a loaded
/// object.)
fn image_of(dso: usize) -> Option<Arc<DsoShared>> {
    lookup_handle(dso).or_else(|| lookup_range(dso))
}

/// The identity of one linked image: the address its `__dso_handle` symbol
/// resolves to, and the owner of its `atexit`/`__cxa_atexit` handlers.
///
/// Create one per image — with [`DsoHandle::new_at`] at an 8-byte slot the
/// linker allocated inside the image (as crtbegin defines it), or with
/// [`DsoHandle::new`] when a heap address is known to be in reach — bind the
/// image's undefined or hidden `__dso_handle` to [`DsoHandle::addr`], and report each allocated
/// range of the image (at least its code) with [`DsoHandle::add_range`]:
/// `atexit(f)` has no handle argument, so kiln attributes it to the image
/// containing `f`, or else the one containing the caller's return address;
/// calls from neither go to libc's `atexit` (process exit). The
/// `__cxa_*atexit` family names the image by its `dso` argument: the handle
/// or any address in a reported range. Handlers are run by
/// [`InitFini::run_fini`](super::InitFini::run_fini) (or
/// [`DsoHandle::run_atexit_handlers`]). Clones share the same identity; when
/// the last clone is dropped the handle leaves the registry, un-run handlers
/// are discarded (never called), and pending `thread_local` destructors of
/// the image on other threads are skipped.
#[derive(Clone, Debug)]
pub struct DsoHandle {
    shared: Arc<DsoShared>,
}

impl DsoHandle {
    /// Registers a new image identity at a heap address of kiln's;
    /// `name` appears in diagnostics.
    ///
    /// Compilers address `__dso_handle` PC-relatively (crtbegin defines it
    /// hidden), so non-PIC and PIE code needs it within ±2 GiB of the
    /// image's code: a heap address is in reach only by chance (not under
    /// ASan, for one). Prefer [`DsoHandle::new_at`] with a slot inside the
    /// image.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let shared =
            Arc::new_cyclic(|me: &Weak<DsoShared>| DsoShared::new(me.as_ptr() as usize, name));
        with_registry(|r| r.by_addr.insert(shared.addr, Arc::downgrade(&shared)));
        DsoHandle { shared }
    }

    /// Registers a new image identity at `addr`, which the linker chose:
    /// typically an 8-byte slot it allocated inside the image and bound
    /// `__dso_handle` to (what crtbegin does), so the address is within
    /// reach of the image's PC-relative references. Fails if `addr` is 0 or
    /// belongs to another live handle.
    pub fn new_at(name: impl Into<String>, addr: usize) -> Result<Self, RuntimeError> {
        let name = name.into();
        if addr == 0 {
            return Err(RuntimeError::DsoAddress {
                name,
                addr,
                reason: "it is null",
            });
        }
        let shared = Arc::new(DsoShared::new(addr, name));
        let inserted = with_registry(|r| {
            if r.by_addr.get(&addr).and_then(Weak::upgrade).is_some() {
                return false;
            }
            r.by_addr.insert(addr, Arc::downgrade(&shared));
            true
        });
        if !inserted {
            // Not registered: dropping must not unregister the live owner.
            let mut shared = shared;
            if let Some(s) = Arc::get_mut(&mut shared) {
                s.addr = 0;
            }
            return Err(RuntimeError::DsoAddress {
                name: shared.name.clone(),
                addr,
                reason: "another live image uses it",
            });
        }
        Ok(DsoHandle { shared })
    }

    /// The address `__dso_handle` resolves to for this image: unique among
    /// live handles, stable for the handle's lifetime.
    pub fn addr(&self) -> usize {
        self.shared.addr
    }

    /// The name given to [`DsoHandle::new`].
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Declares `[start, start + len)` as memory of this image, for
    /// attributing `atexit` calls. Ranges must not overlap other live
    /// images' ranges; they are forgotten when the handle is dropped.
    pub fn add_range(&self, start: usize, len: usize) {
        if len == 0 {
            return;
        }
        let end = start.saturating_add(len);
        with_registry(|r| r.ranges.insert(start, (end, Arc::downgrade(&self.shared))));
        self.shared
            .ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(start);
    }

    /// Number of process-exit handlers recorded and not yet run.
    pub fn pending_atexit_handlers(&self) -> usize {
        self.shared
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Runs the image's `atexit`/`__cxa_atexit` handlers, most recently
    /// registered first, including handlers registered while this runs
    /// (as glibc's `__cxa_finalize`).
    ///
    /// # Safety
    /// The image's code and data (and whatever the handlers touch) must
    /// still be mapped and initialized.
    pub unsafe fn run_atexit_handlers(&self) {
        // SAFETY: forwarded contract.
        unsafe { Self::run_atexit_handlers_together(std::slice::from_ref(self)) }
    }

    /// Runs the `atexit`/`__cxa_atexit` handlers of several images as
    /// `exit()` runs a program's: newest first across all of them (in the
    /// order the process registered them), including handlers registered
    /// while this runs.
    ///
    /// # Safety
    /// As for [`DsoHandle::run_atexit_handlers`], for every image.
    pub unsafe fn run_atexit_handlers_together(handles: &[DsoHandle]) {
        // SAFETY: forwarded contract.
        unsafe { Self::run_exit_handlers(handles, 0) }
    }

    /// [`DsoHandle::run_atexit_handlers_together`], giving `on_exit`
    /// handlers `status` (what `exit` passes them; `dlclose` passes 0).
    ///
    /// # Safety
    /// As for [`DsoHandle::run_atexit_handlers`], for every image.
    pub(crate) unsafe fn run_exit_handlers(handles: &[DsoHandle], status: c_int) {
        loop {
            // The newest handler of any image (no lock is held while it runs:
            // it may register more).
            let mut newest: Option<(u64, &DsoHandle)> = None;
            for h in handles {
                let handlers = h.shared.handlers.lock();
                let last = handlers
                    .unwrap_or_else(PoisonError::into_inner)
                    .last()
                    .map(|r| r.seq);
                if let Some(seq) = last
                    && newest.is_none_or(|(s, _)| seq > s)
                {
                    newest = Some((seq, h));
                }
            }
            let Some((_, owner)) = newest else { break };
            let next = owner
                .shared
                .handlers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            if let Some(registered) = next {
                // SAFETY: forwarded contract.
                unsafe { registered.run(status) };
            }
        }
    }

    /// The image's life.
    pub(crate) fn life(&self) -> &Arc<Life> {
        &self.shared.life
    }

    /// Runs the calling thread's pending `thread_local` destructors that
    /// belong to this image (most recent first), then marks the image dead so
    /// other threads skip theirs.
    ///
    /// # Safety
    /// The image's code and TLS must still be valid.
    pub(crate) unsafe fn finish_thread_dtors(&self) {
        // SAFETY: forwarded contract.
        unsafe { run_current_thread_dtors(&self.shared.life) };
        self.shared.life.end();
    }
}

impl DsoShared {
    /// Records a process-exit handler for the image's teardown: `0`, as
    /// the registration functions return on success.
    fn keep(&self, handler: Handler) -> c_int {
        self.handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Registered::new(handler));
        0
    }

    fn new(addr: usize, name: String) -> Self {
        DsoShared {
            addr,
            name,
            handlers: Mutex::new(Vec::new()),
            life: Arc::new(Life::new()),
            ranges: Mutex::new(Vec::new()),
        }
    }
}

impl Drop for DsoShared {
    fn drop(&mut self) {
        self.life.end();
        super::keys::release_keys_of(&self.life);
        super::sigev_thread::end_notifications_of(&self.life);
        let addr = self.addr;
        let starts = std::mem::take(
            self.ranges
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let me: *const DsoShared = self;
        // Remove only our own entries: a new handle may already have taken
        // the address or a range start once our strong count reached zero.
        with_registry(|r| {
            if r.by_addr.get(&addr).is_some_and(|w| w.as_ptr() == me) {
                r.by_addr.remove(&addr);
            }
            for start in starts {
                if r.ranges.get(&start).is_some_and(|(_, w)| w.as_ptr() == me) {
                    r.ranges.remove(&start);
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------
// The overrides.

unsafe extern "C" {
    #[link_name = "__cxa_atexit"]
    fn real_cxa_atexit(f: CxaHandler, arg: *mut c_void, dso: *mut c_void) -> c_int;
    #[link_name = "__cxa_finalize"]
    fn real_cxa_finalize(dso: *mut c_void);
    /// Defined in the `global_asm!` below.
    fn __kiln_rt_atexit(f: Option<PlainHandler>) -> c_int;
}

// `atexit(f)` carries no DSO handle: capture the caller's return address (at
// [rsp] on entry) as the second argument and continue in Rust.
std::arch::global_asm!(
    ".pushsection .text.__kiln_rt_atexit,\"ax\",@progbits",
    ".globl __kiln_rt_atexit",
    ".hidden __kiln_rt_atexit",
    ".type __kiln_rt_atexit,@function",
    ".p2align 4",
    "__kiln_rt_atexit:",
    "    mov rsi, qword ptr [rsp]",
    "    jmp {imp}",
    ".size __kiln_rt_atexit, . - __kiln_rt_atexit",
    ".popsection",
    imp = sym atexit_impl,
);

unsafe extern "C" fn atexit_impl(f: Option<PlainHandler>, return_address: usize) -> c_int {
    let Some(f) = f else { return -1 };
    // The handler's own image first: running it at that image's teardown
    // is always safe, and it survives tail calls (`jmp atexit`), whose
    // return address belongs to the caller's caller.
    let owner = lookup_range(f as usize).or_else(|| lookup_range(return_address));
    match owner {
        Some(shared) => shared.keep(Handler::Plain(f)),
        // SAFETY: forwarding the caller's registration to glibc unchanged
        // (libc's `atexit` is `__cxa_atexit(f, NULL, <host __dso_handle>)`).
        None => unsafe { libc::atexit(std::mem::transmute::<PlainHandler, extern "C" fn()>(f)) },
    }
}

unsafe extern "C" fn cxa_atexit(
    f: Option<CxaHandler>,
    arg: *mut c_void,
    dso: *mut c_void,
) -> c_int {
    let Some(f) = f else { return -1 };
    match image_of(dso as usize) {
        Some(shared) => shared.keep(Handler::Cxa(f, arg)),
        // SAFETY: not a kiln image: glibc handles it exactly as if called directly.
        None => unsafe { real_cxa_atexit(f, arg, dso) },
    }
}

unsafe extern "C" {
    #[link_name = "on_exit"]
    fn real_on_exit(f: OnExitHandler, arg: *mut c_void) -> c_int;
}

/// `on_exit` for JIT'd code: a handler in a kiln image runs at the image's
/// teardown, in line with its `atexit` handlers (glibc never drops a
/// library's, and would call it at exit from freed memory); any other is
/// glibc's.
unsafe extern "C" fn on_exit(f: Option<OnExitHandler>, arg: *mut c_void) -> c_int {
    let Some(f) = f else { return -1 };
    match lookup_range(f as usize) {
        Some(shared) => shared.keep(Handler::OnExit(f, arg)),
        // SAFETY: not a kiln image's handler; forwarded unchanged.
        None => unsafe { real_on_exit(f, arg) },
    }
}

unsafe extern "C" fn cxa_finalize(dso: *mut c_void) {
    match image_of(dso as usize) {
        // SAFETY: JIT code asked to finalize its own image now, while it runs.
        Some(shared) => unsafe { DsoHandle { shared }.run_atexit_handlers() },
        // SAFETY: not a kiln image; forwarded unchanged.
        None => unsafe { real_cxa_finalize(dso) },
    }
}

/// A `thread_local` destructor registered by a kiln image. Owned by glibc's
/// thread-exit list (freed in [`run_thread_dtor`]); indexed by the thread's
/// `pending_dtors`.
#[derive(Debug)]
pub(crate) struct ThreadDtor {
    dtor: CxaHandler,
    obj: *mut c_void,
    life: Arc<Life>,
    /// Set once run early by the image's teardown on this thread.
    done: bool,
}

unsafe extern "C" fn cxa_thread_atexit(
    dtor: Option<CxaHandler>,
    obj: *mut c_void,
    dso_symbol: *mut c_void,
) -> c_int {
    let Some(dtor) = dtor else { return -1 };
    let Some(shared) = image_of(dso_symbol as usize) else {
        // SAFETY: not a kiln image; forwarded unchanged.
        return unsafe { thread::real_cxa_thread_atexit_impl(dtor, obj, dso_symbol) };
    };
    // Create the thread state first so its cleanup (registered with glibc
    // now) runs after this destructor.
    let state = thread::current();
    let entry = Box::into_raw(Box::new(ThreadDtor {
        dtor,
        obj,
        life: Arc::clone(&shared.life),
        done: false,
    }));
    // SAFETY: `state` is this thread's live state; no other borrow exists.
    unsafe { (*state).pending_dtors.push(entry) };
    // SAFETY: `run_thread_dtor` matches the destructor signature and takes
    // ownership of `entry`; the anchor lies in kiln's own object.
    unsafe {
        thread::real_cxa_thread_atexit_impl(run_thread_dtor, entry.cast(), thread::dso_anchor())
    }
}

/// Runs (unless already run or the image is gone) and frees one entry.
unsafe extern "C" fn run_thread_dtor(entry: *mut c_void) {
    let entry = entry.cast::<ThreadDtor>();
    let state = thread::STATE.with(std::cell::Cell::get);
    if !state.is_null() {
        // SAFETY: this thread's state; the borrow ends before user code runs.
        let pending = unsafe { &mut (*state).pending_dtors };
        if let Some(i) = pending.iter().rposition(|&p| p == entry) {
            pending.remove(i);
        }
    }
    // SAFETY: `entry` came from `Box::into_raw` in `cxa_thread_atexit`, and
    // glibc calls this exactly once per registration.
    let entry = unsafe { Box::from_raw(entry) };
    if entry.done {
        return;
    }
    entry.life.while_alive(|| {
        // SAFETY: the image is alive (and stays so while `while_alive` runs
        // this); the program registered this call.
        unsafe { (entry.dtor)(entry.obj) }
    });
}

/// Runs the calling thread's not-yet-run destructors of `life`'s image.
unsafe fn run_current_thread_dtors(life: &Arc<Life>) {
    let state = thread::STATE.with(std::cell::Cell::get);
    if state.is_null() {
        return;
    }
    loop {
        // SAFETY: this thread's state; the borrow ends before user code runs.
        let pending = unsafe { &(*state).pending_dtors };
        let next = pending.iter().rev().copied().find(|&p| {
            // SAFETY: pending entries are live until glibc runs them, which
            // removes them from this list first.
            let e = unsafe { &*p };
            !e.done && Arc::ptr_eq(&e.life, life)
        });
        let Some(p) = next else { break };
        // SAFETY: `p` is a pending entry, live until glibc runs it; this
        // thread is the only one touching its entries.
        let (dtor, obj) = unsafe {
            (*p).done = true;
            ((*p).dtor, (*p).obj)
        };
        // SAFETY: the caller guarantees the image is still valid.
        unsafe { dtor(obj) };
    }
}

/// The overrides this module provides.
pub(crate) fn overrides() -> Vec<(&'static str, usize)> {
    vec![
        ("atexit", __kiln_rt_atexit as *const () as usize),
        ("__cxa_atexit", cxa_atexit as *const () as usize),
        ("__cxa_finalize", cxa_finalize as *const () as usize),
        ("on_exit", on_exit as *const () as usize),
        (
            "__cxa_thread_atexit",
            cxa_thread_atexit as *const () as usize,
        ),
        (
            "__cxa_thread_atexit_impl",
            cxa_thread_atexit as *const () as usize,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type CxaAtexit = unsafe extern "C" fn(Option<CxaHandler>, *mut c_void, *mut c_void) -> c_int;
    type ThreadAtexit = unsafe extern "C" fn(Option<CxaHandler>, *mut c_void, *mut c_void) -> c_int;

    fn lookup(name: &str) -> usize {
        overrides()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a)
            .unwrap_or(0)
    }

    static LOG: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    unsafe extern "C" fn record(arg: *mut c_void) {
        LOG.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(arg as usize);
    }

    #[test]
    fn handles_are_unique_and_handlers_run_in_reverse() {
        let a = DsoHandle::new("a");
        let b = DsoHandle::new("b");
        assert_ne!(a.addr(), b.addr());
        assert_eq!(lookup_handle(a.addr()).map(|s| s.addr), Some(a.addr()));
        // SAFETY: the table entry is `cxa_atexit`, whose signature this is.
        let f: CxaAtexit = unsafe { std::mem::transmute(lookup("__cxa_atexit")) };
        for i in 1..=3 {
            // SAFETY: `record` is a valid handler; the handle is live.
            let rc = unsafe {
                f(
                    Some(record),
                    (1000 + i) as *mut c_void,
                    a.addr() as *mut c_void,
                )
            };
            assert_eq!(rc, 0);
        }
        // SAFETY: `record` is a valid handler; `b`'s handle is live.
        let rc = unsafe { f(Some(record), 2000 as *mut c_void, b.addr() as *mut c_void) };
        assert_eq!(rc, 0);
        assert_eq!(a.pending_atexit_handlers(), 3);
        LOG.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|&v| !(1000..3000).contains(&v));
        // SAFETY: `record` touches only LOG.
        unsafe { a.run_atexit_handlers() };
        let log: Vec<usize> = LOG
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .filter(|v| (1000..3000).contains(v))
            .collect();
        assert_eq!(
            log,
            vec![1003, 1002, 1001],
            "a's handlers, newest first; b's untouched"
        );
        assert_eq!(b.pending_atexit_handlers(), 1);
        let addr = b.addr();
        drop(b);
        assert!(
            lookup_handle(addr).is_none(),
            "dropped handles leave the registry"
        );
    }

    static FINALIZED: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn count_finalized(_: *mut c_void) {
        FINALIZED.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn cxa_finalize_runs_a_kiln_image_now_and_forwards_others() {
        type Finalize = unsafe extern "C" fn(*mut c_void);
        // SAFETY: the table entries have these signatures.
        let (reg, fin): (CxaAtexit, Finalize) = unsafe {
            (
                std::mem::transmute::<usize, CxaAtexit>(lookup("__cxa_atexit")),
                std::mem::transmute::<usize, Finalize>(lookup("__cxa_finalize")),
            )
        };
        let image = DsoHandle::new("finalized");
        // SAFETY: valid handler, live handle.
        unsafe {
            reg(
                Some(count_finalized),
                std::ptr::null_mut(),
                image.addr() as *mut c_void,
            );
            reg(
                Some(count_finalized),
                std::ptr::null_mut(),
                image.addr() as *mut c_void,
            );
        }
        // SAFETY: the handlers only count.
        unsafe { fin(image.addr() as *mut c_void) };
        assert_eq!(FINALIZED.load(Ordering::SeqCst), 2);
        assert_eq!(image.pending_atexit_handlers(), 0);
        // An address glibc has no handlers for: forwarded, nothing runs.
        let unknown = Box::new(0u64);
        // SAFETY: glibc's __cxa_finalize accepts any DSO address.
        unsafe { fin((&raw const *unknown).cast_mut().cast()) };
        assert_eq!(FINALIZED.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn handles_at_linker_chosen_addresses() {
        let slot = Box::new(0u64); // stands in for an 8-byte slot in the image
        let addr = &*slot as *const u64 as usize;
        let a = DsoHandle::new_at("at", addr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.addr(), addr);
        assert_eq!(lookup_handle(addr).map(|s| s.addr), Some(addr));
        let err = DsoHandle::new_at("dup", addr)
            .expect_err("a second live handle at one address is refused")
            .to_string();
        assert!(
            err.contains("dup") && err.contains("another live image"),
            "{err}"
        );
        assert!(
            lookup_handle(addr).is_some(),
            "a refused duplicate leaves the owner registered"
        );
        assert!(DsoHandle::new_at("null", 0).is_err());
        drop(a);
        assert!(lookup_handle(addr).is_none());
        let b = DsoHandle::new_at("again", addr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            b.addr(),
            addr,
            "the address is free again once its owner is gone"
        );
    }

    static PLAIN_RUNS: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn plain() {
        PLAIN_RUNS.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn atexit_is_attributed_by_handler_then_caller_range() {
        let image = DsoHandle::new("ranged");
        // The handler lies in the "image"; the caller (this test) does not.
        image.add_range(plain as *const () as usize, 1);
        // SAFETY: `plain` is a valid handler.
        assert_eq!(unsafe { __kiln_rt_atexit(Some(plain)) }, 0);
        assert_eq!(image.pending_atexit_handlers(), 1);
        let before = PLAIN_RUNS.load(Ordering::SeqCst);
        // SAFETY: `plain` only bumps a counter.
        unsafe { image.run_atexit_handlers() };
        assert_eq!(PLAIN_RUNS.load(Ordering::SeqCst), before + 1);
        drop(image);

        // A handler outside every image, registered by code inside one:
        // attributed by the return address.
        let caller = DsoHandle::new("caller");
        let start = call_atexit_plain as *const () as usize;
        let handler = plain as *const () as usize;
        // The caller is a tiny function; if the handler follows it closely,
        // stop the range at the handler (functions do not overlap).
        let end = if handler > start && handler < start + 256 {
            handler
        } else {
            start + 256
        };
        caller.add_range(start, end - start);
        assert_eq!(call_atexit_plain(), 0);
        assert_eq!(caller.pending_atexit_handlers(), 1);
        // SAFETY: `plain` only bumps a counter.
        unsafe { caller.run_atexit_handlers() };
        assert_eq!(PLAIN_RUNS.load(Ordering::SeqCst), before + 2);
    }

    /// Stands in for JIT'd code calling `atexit` (its return address lies
    /// within the first bytes of this small function).
    #[inline(never)]
    extern "C" fn call_atexit_plain() -> c_int {
        // SAFETY: `plain` is a valid handler.
        let rc = unsafe { __kiln_rt_atexit(Some(plain)) };
        std::hint::black_box(rc)
    }

    static GLIBC_RAN: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn glibc_record(_: *mut c_void) {
        GLIBC_RAN.fetch_add(1, Ordering::SeqCst);
    }

    /// Why kiln overrides `__cxa_thread_atexit(_impl)`: glibc maps the DSO
    /// argument to a loaded object only to pin it; for an address it does not
    /// know (JIT memory) it falls back to the main program and runs the
    /// destructor at thread exit whatever became of the image meanwhile —
    /// for the main thread, at `exit()`, long after a removed image's
    /// memory is gone.
    #[test]
    fn glibc_runs_thread_dtors_of_unknown_dsos_regardless_of_teardown() {
        let image = DsoHandle::new("not known to glibc");
        let dso = image.addr();
        std::thread::spawn(move || {
            // SAFETY: valid destructor; glibc only records the DSO address.
            let rc = unsafe {
                thread::real_cxa_thread_atexit_impl(
                    glibc_record,
                    std::ptr::null_mut(),
                    dso as *mut c_void,
                )
            };
            assert_eq!(rc, 0);
            // The image is "torn down" here; glibc cannot know.
        })
        .join()
        .unwrap_or_else(|_| panic!("thread panicked"));
        assert_eq!(
            GLIBC_RAN.load(Ordering::SeqCst),
            1,
            "glibc ran the destructor at thread exit"
        );
    }

    static TL_LOG: Mutex<Vec<(usize, &'static str)>> = Mutex::new(Vec::new());
    unsafe extern "C" fn tl_record(arg: *mut c_void) {
        TL_LOG
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((arg as usize, "ran"));
    }

    #[test]
    fn thread_dtors_run_at_thread_exit_or_teardown_and_never_after() {
        // SAFETY: the entry is `cxa_thread_atexit`.
        let reg: ThreadAtexit = unsafe { std::mem::transmute(lookup("__cxa_thread_atexit")) };
        let image = DsoHandle::new("tl");
        let addr = image.addr();
        // Thread 1 exits while the image lives: its destructor runs at exit.
        std::thread::spawn(move || {
            // SAFETY: valid destructor; live handle.
            let rc = unsafe { reg(Some(tl_record), 7001 as *mut c_void, addr as *mut c_void) };
            assert_eq!(rc, 0);
        })
        .join()
        .unwrap_or_else(|_| panic!("thread 1 panicked"));
        // Thread 2 registers, then the image is torn down on another thread
        // before thread 2 exits: its destructor must be skipped.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tx2, rx2) = std::sync::mpsc::channel::<()>();
        let t2 = std::thread::spawn(move || {
            // SAFETY: valid destructor; live handle.
            unsafe { reg(Some(tl_record), 7002 as *mut c_void, addr as *mut c_void) };
            tx2.send(()).ok();
            rx.recv().ok();
        });
        rx2.recv().unwrap_or_else(|_| panic!("thread 2 died"));
        // This thread registers too; teardown runs it now (most recent first).
        // SAFETY: valid destructor; live handle.
        unsafe {
            reg(Some(tl_record), 7003 as *mut c_void, addr as *mut c_void);
            reg(Some(tl_record), 7004 as *mut c_void, addr as *mut c_void);
        }
        // SAFETY: `tl_record` only logs.
        unsafe { image.finish_thread_dtors() };
        drop(image);
        tx.send(()).ok();
        t2.join().unwrap_or_else(|_| panic!("thread 2 panicked"));
        let log: Vec<usize> = TL_LOG
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(log, vec![7001, 7004, 7003]);
    }

    static INNER_RAN: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn count_inner(_: *mut c_void) {
        INNER_RAN.fetch_add(1, Ordering::SeqCst);
    }

    /// Rust's std passes `__cxa_thread_atexit_impl` the address of its own
    /// data inside the image rather than `__dso_handle`: any address inside
    /// an image names it, for `__cxa_atexit` and `__cxa_finalize` too.
    #[test]
    fn an_address_inside_an_image_names_the_image() {
        let (reg, thread_reg, fin): (CxaAtexit, ThreadAtexit, unsafe extern "C" fn(*mut c_void)) =
            // SAFETY: the table entries have these signatures.
            unsafe {
                (
                    std::mem::transmute::<usize, CxaAtexit>(lookup("__cxa_atexit")),
                    std::mem::transmute::<usize, ThreadAtexit>(lookup("__cxa_thread_atexit_impl")),
                    std::mem::transmute::<usize, unsafe extern "C" fn(*mut c_void)>(lookup(
                        "__cxa_finalize",
                    )),
                )
            };
        let memory = [0u64; 8]; // stands in for the image's data
        let image = DsoHandle::new("inner");
        image.add_range(memory.as_ptr() as usize, 64);
        let inner = memory[3..].as_ptr() as *mut c_void;
        // SAFETY: valid handlers; `inner` lies inside the live image.
        unsafe {
            assert_eq!(reg(Some(count_inner), std::ptr::null_mut(), inner), 0);
            assert_eq!(
                thread_reg(Some(count_inner), std::ptr::null_mut(), inner),
                0
            );
        }
        assert_eq!(image.pending_atexit_handlers(), 1, "kept for the image");
        // SAFETY: the handler only counts.
        unsafe { fin(inner) };
        assert_eq!(INNER_RAN.load(Ordering::SeqCst), 1);
        // SAFETY: the registered handler only counts; the image is live.
        // Its thread destructor runs at teardown,
        // not at this thread's exit after the image is gone.
        unsafe { image.finish_thread_dtors() };
        assert_eq!(INNER_RAN.load(Ordering::SeqCst), 2);
    }
}
