//! Initializer and finalizer arrays of an image, ordered as GNU ld lays them
//! out and run as glibc runs them for a `dlopen`ed / `dlclose`d object.

use std::ffi::{CString, c_char, c_int};
use std::sync::OnceLock;

use super::DsoHandle;

/// Kind of an initializer/finalizer section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InitKind {
    /// `.preinit_array`: run before everything else, in order.
    PreinitArray,
    /// `.init_array` / `.init_array.N`: run in order.
    InitArray,
    /// `.ctors` / `.ctors.N`: legacy, each section's entries run last-first.
    Ctors,
    /// `.fini_array` / `.fini_array.N`: the whole array runs last-first.
    FiniArray,
    /// `.dtors` / `.dtors.N`: legacy, each section's entries run first-first.
    Dtors,
}

impl InitKind {
    /// `true` for the kinds that run at teardown.
    pub fn is_fini(self) -> bool {
        matches!(self, InitKind::FiniArray | InitKind::Dtors)
    }
}

/// The sort key of sections without a priority suffix: after every
/// prioritized section (priorities are 0..=65535).
pub const DEFAULT_PRIORITY: u32 = 65536;

/// Classifies an initializer/finalizer section and gives its sort key.
///
/// Returns `None` for any other section. The key sorts sections the way GNU
/// ld's `SORT_BY_INIT_PRIORITY` does: lower runs earlier for initializers
/// (and, because finalizer arrays run backwards, later for finalizers).
/// - `.init_array.N` / `.fini_array.N` (gcc pads N to five digits,
///   `.init_array.00101`; clang does not, `.init_array.101`): key N.
/// - `.ctors.N` / `.dtors.N` (gcc writes `65535 - priority`, e.g.
///   `.ctors.65434` for priority 101): key `65535 - N`.
/// - No suffix, or a suffix that is not a number up to 65535 (ld gives such
///   sections no priority): [`DEFAULT_PRIORITY`]. `.preinit_array` always
///   has [`DEFAULT_PRIORITY`].
pub fn init_priority(section_name: &str) -> Option<(InitKind, u32)> {
    if section_name == ".preinit_array" {
        return Some((InitKind::PreinitArray, DEFAULT_PRIORITY));
    }
    let (kind, rest) = [
        (".init_array", InitKind::InitArray),
        (".fini_array", InitKind::FiniArray),
        (".ctors", InitKind::Ctors),
        (".dtors", InitKind::Dtors),
    ]
    .into_iter()
    .find_map(|(prefix, kind)| section_name.strip_prefix(prefix).map(|rest| (kind, rest)))?;
    if rest.is_empty() {
        return Some((kind, DEFAULT_PRIORITY));
    }
    let suffix = rest.strip_prefix('.')?;
    let number = (!suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .then(|| suffix.parse::<u32>().ok())
        .flatten()
        .filter(|&n| n <= 65535);
    let key = match (number, kind) {
        (None, _) => DEFAULT_PRIORITY,
        (Some(n), InitKind::Ctors | InitKind::Dtors) => 65535 - n,
        (Some(n), _) => n,
    };
    Some((kind, key))
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: u32,
    addr: usize,
}

type InitFn = unsafe extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char);
type FiniFn = unsafe extern "C" fn();

/// Lifecycle of an image's initializers and finalizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Collecting,
    Initialized,
    Finalized,
}

/// Ordered initializers and finalizers of one image, and its teardown.
///
/// Feed every initializer/finalizer section of the image **in link order**
/// (objects in the order they were added, sections in file order) with
/// [`InitFini::add_section`], passing the section's pointer-sized entries
/// after fixup (the final function addresses). Then:
/// - [`InitFini::run_init`]: `.preinit_array` entries in order, then all
///   `.init_array*`/`.ctors*` entries by ascending priority key (see
///   [`init_priority`]), sections of equal key in the order added, `.ctors`
///   sections' entries last-first. Each is called as glibc does, with
///   `(argc, argv, envp)` of this process.
/// - [`InitFini::run_fini`] — before the image's memory is released:
///   1. the calling thread's pending `thread_local` destructors of the image
///      (other threads' are skipped from then on);
///   2. the unprioritized `.fini_array`/`.dtors` entries, last-first;
///   3. the image's `atexit`/`__cxa_atexit` handlers, last-registered first;
///   4. the prioritized `.fini_array.N`/`.dtors.N` entries, last-first (so
///      higher priorities first, priority 101 last);
///   5. handlers registered during 2–4.
///
///   This is exactly glibc's `dlclose` order: ld places `crtbeginS.o`'s
///   `__do_global_dtors_aux` (which calls `__cxa_finalize(__dso_handle)`)
///   after the prioritized and before the unprioritized entries of
///   `.fini_array`, which runs backwards.
///
/// Entries equal to 0 or -1 (legacy `.ctors` sentinels) are skipped.
#[derive(Debug)]
pub struct InitFini {
    dso: DsoHandle,
    preinit: Vec<usize>,
    init: Vec<Entry>,
    fini: Vec<Entry>,
    phase: Phase,
    /// Tear down like a program's `exit` (all `atexit` handlers, then the
    /// finalizers) instead of like `dlclose` of a shared object.
    executable: bool,
}

impl InitFini {
    /// The image's life.
    pub(crate) fn life(&self) -> &std::sync::Arc<super::life::Life> {
        self.dso.life()
    }

    /// An empty set for the image identified by `dso`.
    pub fn new(dso: DsoHandle) -> Self {
        InitFini {
            dso,
            preinit: Vec::new(),
            init: Vec::new(),
            fini: Vec::new(),
            phase: Phase::Collecting,
            executable: false,
        }
    }

    /// The image's handle.
    pub fn dso(&self) -> &DsoHandle {
        &self.dso
    }

    /// Adds the entries of section `section_name` if it is an
    /// initializer/finalizer section (then returns `true`); otherwise
    /// ignores them and returns `false`.
    pub fn add_section(&mut self, section_name: &str, entries: &[usize]) -> bool {
        match init_priority(section_name) {
            Some((kind, key)) => {
                self.add(kind, key, entries);
                true
            }
            None => false,
        }
    }

    /// Adds entries of a section of `kind` with sort key `key` (as
    /// returned by [`init_priority`]), in section order.
    pub fn add(&mut self, kind: InitKind, key: u32, entries: &[usize]) {
        let valid = entries
            .iter()
            .copied()
            .filter(|&a| a != 0 && a != usize::MAX);
        match kind {
            InitKind::PreinitArray => self.preinit.extend(valid),
            InitKind::InitArray => self.init.extend(valid.map(|addr| Entry { key, addr })),
            InitKind::Ctors => {
                let mut v: Vec<_> = valid.map(|addr| Entry { key, addr }).collect();
                v.reverse();
                self.init.extend(v);
            }
            InitKind::FiniArray => self.fini.extend(valid.map(|addr| Entry { key, addr })),
            // ld reverses .dtors contents when it moves them into .fini_array.
            InitKind::Dtors => {
                let mut v: Vec<_> = valid.map(|addr| Entry { key, addr }).collect();
                v.reverse();
                self.fini.extend(v);
            }
        }
    }

    /// The initializer addresses in the order [`InitFini::run_init`] calls them.
    pub fn init_order(&self) -> Vec<usize> {
        let mut init = self.init.clone();
        init.sort_by_key(|e| e.key);
        self.preinit
            .iter()
            .copied()
            .chain(init.into_iter().map(|e| e.addr))
            .collect()
    }

    /// The finalizer addresses in the order [`InitFini::run_fini`] calls
    /// them, with `None` marking where the image's `atexit` handlers run.
    pub fn fini_order(&self) -> Vec<Option<usize>> {
        let mut fini = self.fini.clone();
        fini.sort_by_key(|e| e.key);
        if self.executable {
            // exit(): atexit handlers first (ld.so's finalizer hook was
            // registered before any of them), then `.fini_array` from the
            // end: default priority first, then descending priorities.
            return std::iter::once(None)
                .chain(fini.iter().rev().map(|e| Some(e.addr)))
                .collect();
        }
        let split = fini.partition_point(|e| e.key < DEFAULT_PRIORITY);
        let (prioritized, default) = fini.split_at(split);
        default
            .iter()
            .rev()
            .map(|e| Some(e.addr))
            .chain(std::iter::once(None))
            .chain(prioritized.iter().rev().map(|e| Some(e.addr)))
            .collect()
    }

    /// Takes the initializers of several images to run as one statically
    /// linked program would: every image's `.preinit_array` first, then all
    /// initializers interleaved by priority — ties in the order the images
    /// are given (link order), then in each image's own order. Images whose
    /// initializers were taken already are skipped; each is marked
    /// initialized, so its finalizers run at teardown. The calls run with
    /// [`InitCalls::run`] — after the caller let go of any lock guarding
    /// the images: an initializer may call `exit()`, whose teardown takes
    /// the images' finalizers.
    pub fn take_init_together(images: &mut [&mut InitFini]) -> InitCalls {
        let mut order: Vec<(u8, u32, usize, usize, usize)> = Vec::new();
        for (image, set) in images.iter_mut().enumerate() {
            if set.phase != Phase::Collecting {
                continue;
            }
            set.phase = Phase::Initialized;
            for (seq, &addr) in set.preinit.iter().enumerate() {
                order.push((0, 0, image, seq, addr));
            }
            for (seq, e) in set.init.iter().enumerate() {
                order.push((1, e.key, image, seq, e.addr));
            }
        }
        order.sort_unstable();
        InitCalls(order.into_iter().map(|(_, _, _, _, addr)| addr).collect())
    }

    /// Runs the initializers of several images together
    /// ([`InitFini::take_init_together`]).
    ///
    /// # Safety
    /// As for [`InitFini::run_init`], for every image.
    pub unsafe fn run_init_together(images: &mut [&mut InitFini]) {
        // SAFETY: forwarded contract.
        unsafe { Self::take_init_together(images).run() };
    }

    /// Takes the initializers to run (once; later calls take none) in the
    /// order [`InitFini::init_order`] gives.
    pub fn take_init(&mut self) -> InitCalls {
        if self.phase != Phase::Collecting {
            return InitCalls(Vec::new());
        }
        self.phase = Phase::Initialized;
        InitCalls(self.init_order())
    }

    /// Runs the initializers (once; later calls do nothing).
    ///
    /// # Safety
    /// Every added address must be the entry of a function of the C
    /// initializer type in an image that is fully linked, finalized and
    /// whose dependencies are ready.
    pub unsafe fn run_init(&mut self) {
        // SAFETY: forwarded contract.
        unsafe { self.take_init().run() };
    }

    /// Takes the teardown of several images torn down together (given in
    /// link order; images already finalized are skipped, the others are
    /// marked). When run ([`FiniCalls::run`]), the calling thread's
    /// `thread_local` destructors of each image go first, last-linked image
    /// first. Then, if every image tears down like a program
    /// ([`InitFini::set_executable_teardown`]), they end as one statically
    /// linked program's `exit()`: every image's `atexit` handlers newest
    /// first in the order the process registered them, then all finalizers
    /// as one `.fini_array` (interleaved by priority — ties in link order —
    /// and run backwards), then handlers registered meanwhile. Otherwise
    /// each image tears down as [`InitFini::run_fini`] does, last-linked
    /// first, as `dlclose` of each would.
    pub fn take_fini_together(images: &mut [&mut InitFini]) -> FiniCalls {
        if !images.iter().all(|i| i.executable) {
            let each = images
                .iter_mut()
                .rev()
                .filter_map(|set| set.take_one_fini());
            return FiniCalls(Teardown::Each(each.collect()));
        }
        let mut handles = Vec::with_capacity(images.len());
        let mut order: Vec<(u32, usize, usize, usize)> = Vec::new();
        for (image, set) in images.iter_mut().enumerate().rev() {
            if set.phase == Phase::Finalized {
                continue;
            }
            let ran_init = set.phase == Phase::Initialized;
            set.phase = Phase::Finalized;
            handles.push(set.dso.clone());
            // Finalizers of an image that never initialized do not run
            // (glibc skips `l_init_called == 0` objects).
            if ran_init {
                for (seq, e) in set.fini.iter().enumerate() {
                    order.push((e.key, image, seq, e.addr));
                }
            }
        }
        order.sort_unstable();
        FiniCalls(Teardown::Program {
            handles,
            finalizers: order.iter().rev().map(|&(_, _, _, addr)| addr).collect(),
        })
    }

    /// Runs the teardown of several images together
    /// ([`InitFini::take_fini_together`]).
    ///
    /// # Safety
    /// As for [`InitFini::run_fini`], for every image: all of them stay
    /// mapped until this returns.
    pub unsafe fn run_fini_together(images: &mut [&mut InitFini]) {
        // SAFETY: forwarded contract.
        unsafe { Self::take_fini_together(images).run() };
    }

    /// Tear down like a program's `exit()` rather than like `dlclose`: for an
    /// image that is run as a program (what `kiln run` does).
    pub fn set_executable_teardown(&mut self, yes: bool) {
        self.executable = yes;
    }

    /// Takes the teardown described on [`InitFini`] (once; later calls take
    /// nothing). Take it even if the initializers never ran: handlers may
    /// have been registered by code that ran anyway.
    pub fn take_fini(&mut self) -> FiniCalls {
        FiniCalls(Teardown::Each(self.take_one_fini().into_iter().collect()))
    }

    /// Runs the teardown described on [`InitFini`] (once; later calls do
    /// nothing). Call it even if [`InitFini::run_init`] was never called:
    /// handlers may have been registered by code that ran anyway.
    ///
    /// # Safety
    /// The image's memory must still be mapped and linked, and no other
    /// thread may be running its code.
    pub unsafe fn run_fini(&mut self) {
        // SAFETY: forwarded contract.
        unsafe { self.take_fini().run() };
    }

    /// This image's `dlclose`-like teardown, marking it finalized; `None`
    /// if it was finalized already.
    fn take_one_fini(&mut self) -> Option<OneTeardown> {
        if self.phase == Phase::Finalized {
            return None;
        }
        let ran_init = self.phase == Phase::Initialized;
        self.phase = Phase::Finalized;
        Some(OneTeardown {
            dso: self.dso.clone(),
            // Finalizers of an image that never initialized do not run
            // (glibc skips `l_init_called == 0` objects).
            steps: self
                .fini_order()
                .into_iter()
                .filter(|step| ran_init || step.is_none())
                .collect(),
        })
    }
}

/// Initializers taken from their images ([`InitFini::take_init_together`])
/// to be called once nothing guards the images any more.
#[must_use = "the initializers run only when `run` is called"]
#[derive(Debug)]
pub struct InitCalls(Vec<usize>);

impl InitCalls {
    /// Calls the initializers in order, with this process's `(argc, argv,
    /// envp)` as glibc does.
    ///
    /// # Safety
    /// As for [`InitFini::run_init`]: every address is an initializer of an
    /// image that stays mapped, linked and finalized while this runs.
    pub unsafe fn run(self) {
        let (argc, argv, envp) = process_args();
        for addr in self.0 {
            // SAFETY: the caller guarantees `addr` is an initializer function.
            let f = unsafe { std::mem::transmute::<usize, InitFn>(addr) };
            // SAFETY: called with the process's own arguments, as glibc does.
            unsafe { f(argc, argv, envp) };
        }
    }
}

/// One image's teardown as `dlclose` runs it: its finalizers in order,
/// `None` where its `atexit` handlers run.
#[derive(Debug)]
struct OneTeardown {
    dso: DsoHandle,
    steps: Vec<Option<usize>>,
}

/// Teardowns taken from their images ([`InitFini::take_fini_together`]) to
/// be run once nothing guards the images any more: a finalizer may call
/// `exit()` or remove its own image.
#[must_use = "the finalizers run only when `run` is called"]
#[derive(Debug)]
pub struct FiniCalls(Teardown);

#[derive(Debug)]
enum Teardown {
    /// Each image as `dlclose` would tear it down, in this order.
    Each(Vec<OneTeardown>),
    /// The images as one program's `exit()`: their handles, last-linked
    /// first, and every finalizer in the order to call them.
    Program {
        handles: Vec<DsoHandle>,
        finalizers: Vec<usize>,
    },
}

impl FiniCalls {
    /// Runs the teardown taken.
    ///
    /// # Safety
    /// As for [`InitFini::run_fini`], for every image: its memory stays
    /// mapped and linked until this returns, and no other thread runs its
    /// code meanwhile.
    pub unsafe fn run(self) {
        match self.0 {
            Teardown::Each(images) => {
                for one in images {
                    // SAFETY: forwarded contract.
                    unsafe { one.run() };
                }
            }
            Teardown::Program {
                handles,
                finalizers,
            } => {
                for dso in &handles {
                    // SAFETY: forwarded contract.
                    unsafe { dso.finish_thread_dtors() };
                }
                let status = EXIT_STATUS.load(std::sync::atomic::Ordering::Relaxed);
                // SAFETY: forwarded contract.
                unsafe { DsoHandle::run_exit_handlers(&handles, status) };
                for addr in finalizers {
                    // SAFETY: the caller guarantees `addr` is a finalizer of
                    // a mapped image whose initializers ran: a `void (void)`
                    // function that may run now.
                    unsafe { std::mem::transmute::<usize, FiniFn>(addr)() };
                }
                // SAFETY: forwarded contract.
                unsafe { DsoHandle::run_exit_handlers(&handles, status) };
            }
        }
    }
}

/// The status an executable teardown gives `on_exit` handlers.
static EXIT_STATUS: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Sets the exit status that `on_exit` handlers of images torn down as a
/// program ([`InitFini::set_executable_teardown`]) receive, as `exit`
/// gives them: a host running a JIT'd program sets what its `main`
/// returned, or what it passed to `exit`, before the teardown. Other
/// teardowns give 0, as `dlclose` does.
pub fn set_exit_status(status: c_int) {
    EXIT_STATUS.store(status, std::sync::atomic::Ordering::Relaxed);
}

impl OneTeardown {
    /// # Safety
    /// As for [`InitFini::run_fini`].
    unsafe fn run(self) {
        // SAFETY: forwarded contract.
        unsafe { self.dso.finish_thread_dtors() };
        for step in self.steps {
            match step {
                // SAFETY: forwarded contract.
                None => unsafe { self.dso.run_atexit_handlers() },
                Some(addr) => {
                    // SAFETY: the caller guarantees `addr` is a finalizer.
                    let f = unsafe { std::mem::transmute::<usize, FiniFn>(addr) };
                    // SAFETY: the image is mapped and its initializers ran
                    // (only then are its finalizers taken).
                    unsafe { f() };
                }
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.dso.run_atexit_handlers() };
    }
}

/// The arguments JIT'd initializers (and a JIT'd `main`) receive, as C
/// arrays. Fixed once for the process, like a program's own.
struct ProgramArgs {
    argv: Vec<*mut c_char>,
    /// `None`: glibc's live `environ`, as a process's own initializers get.
    envp: Option<Vec<*mut c_char>>,
}

// SAFETY: the pointers refer to leaked C strings that are never written or
// freed, so sharing them between threads is sharing immutable data.
unsafe impl Send for ProgramArgs {}
// SAFETY: the pointers refer to leaked C strings that are never written or
// freed: shared references only read immutable data.
unsafe impl Sync for ProgramArgs {}

static PROGRAM_ARGS: OnceLock<ProgramArgs> = OnceLock::new();

fn leak_c_array(strings: impl IntoIterator<Item = CString>) -> Vec<*mut c_char> {
    let mut v: Vec<*mut c_char> = strings.into_iter().map(CString::into_raw).collect();
    v.push(std::ptr::null_mut());
    v
}

/// Sets the `(argc, argv, envp)` that JIT'd initializers receive — a host
/// that runs a JIT'd program (like `kiln run`) passes the program's own
/// arguments, so constructors see what its `main` sees. Returns the arrays
/// to pass to `main` (the same pointers, as glibc does). Only the first call
/// sets them; later calls (and initializers that ran before any call, which
/// get the host process's arguments) keep what was set first, since C code
/// may hold on to the pointers.
pub fn set_program_arguments(
    args: impl IntoIterator<Item = CString>,
    env: impl IntoIterator<Item = CString>,
) -> (c_int, *mut *mut c_char, *mut *mut c_char) {
    let set = PROGRAM_ARGS.get_or_init(|| ProgramArgs {
        argv: leak_c_array(args),
        envp: Some(leak_c_array(env)),
    });
    arrays(set)
}

/// [`set_program_arguments`] with the process's own environment: `envp`
/// is glibc's live `environ` (read when the arrays are handed out), as a
/// native executable's `main` and constructors get it — one array, so
/// `setenv`/`getenv` see what they were given, and nothing is copied. For a
/// host whose program runs in the host's environment unchanged (`kiln run`).
pub fn set_program_arguments_with_environ(
    args: impl IntoIterator<Item = CString>,
) -> (c_int, *mut *mut c_char, *mut *mut c_char) {
    let set = PROGRAM_ARGS.get_or_init(|| ProgramArgs {
        argv: leak_c_array(args),
        envp: None,
    });
    arrays(set)
}

fn arrays(set: &ProgramArgs) -> (c_int, *mut *mut c_char, *mut *mut c_char) {
    unsafe extern "C" {
        static mut environ: *mut *mut c_char;
    }
    let envp = match &set.envp {
        Some(envp) => envp.as_ptr().cast_mut(),
        // SAFETY: reading glibc's `environ` pointer value (not through a
        // reference).
        None => unsafe { environ },
    };
    let argc = c_int::try_from(set.argv.len() - 1).unwrap_or(c_int::MAX);
    (argc, set.argv.as_ptr().cast_mut(), envp)
}

/// `(argc, argv, envp)` for C initializers: the program's, if the host set
/// them, else this process's own.
fn process_args() -> (c_int, *mut *mut c_char, *mut *mut c_char) {
    let set = PROGRAM_ARGS.get_or_init(|| {
        let own = std::env::args_os().filter_map(|a| CString::new(a.into_encoded_bytes()).ok());
        ProgramArgs {
            argv: leak_c_array(own),
            envp: None,
        }
    });
    arrays(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn priorities_of_gcc_and_clang_names() {
        assert_eq!(
            init_priority(".init_array"),
            Some((InitKind::InitArray, DEFAULT_PRIORITY))
        );
        assert_eq!(
            init_priority(".init_array.00101"),
            Some((InitKind::InitArray, 101))
        );
        assert_eq!(
            init_priority(".init_array.101"),
            Some((InitKind::InitArray, 101))
        );
        assert_eq!(
            init_priority(".fini_array.00200"),
            Some((InitKind::FiniArray, 200))
        );
        assert_eq!(
            init_priority(".fini_array.200"),
            Some((InitKind::FiniArray, 200))
        );
        assert_eq!(init_priority(".ctors.65434"), Some((InitKind::Ctors, 101)));
        assert_eq!(init_priority(".dtors.65335"), Some((InitKind::Dtors, 200)));
        assert_eq!(
            init_priority(".ctors"),
            Some((InitKind::Ctors, DEFAULT_PRIORITY))
        );
        assert_eq!(
            init_priority(".preinit_array"),
            Some((InitKind::PreinitArray, DEFAULT_PRIORITY))
        );
        assert_eq!(
            init_priority(".init_array.x"),
            Some((InitKind::InitArray, DEFAULT_PRIORITY))
        );
        assert_eq!(
            init_priority(".init_array.99999"),
            Some((InitKind::InitArray, DEFAULT_PRIORITY))
        );
        assert_eq!(init_priority(".init_arrayx"), None);
        assert_eq!(init_priority(".text"), None);
        assert_eq!(init_priority(".ctorsx"), None);
        assert_eq!(init_priority(".data.rel.ro"), None);
    }

    static LOG: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    fn log(s: &'static str) {
        LOG.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(s);
    }
    macro_rules! init_fn {
        ($name:ident) => {
            unsafe extern "C" fn $name(_: c_int, _: *mut *mut c_char, _: *mut *mut c_char) {
                log(stringify!($name));
            }
        };
    }
    macro_rules! fini_fn {
        ($name:ident) => {
            unsafe extern "C" fn $name() {
                log(stringify!($name));
            }
        };
    }
    init_fn!(pre);
    init_fn!(i_default);
    init_fn!(i_101);
    init_fn!(i_200_gcc);
    init_fn!(i_200_clang);
    init_fn!(ctor_a);
    init_fn!(ctor_b);
    init_fn!(ctor_150);
    fini_fn!(f_default);
    fini_fn!(f_default2);
    fini_fn!(f_101);
    fini_fn!(f_200);
    fini_fn!(dtor_a);
    fini_fn!(dtor_b);
    fini_fn!(handler_1);
    fini_fn!(handler_2);

    unsafe extern "C" fn register_handler(_: c_int, _: *mut *mut c_char, _: *mut *mut c_char) {
        log("register");
    }

    #[test]
    fn runs_in_ld_and_glibc_order() {
        let dso = DsoHandle::new("order");
        let mut set = InitFini::new(dso.clone());
        // Added in "link order" across two objects.
        assert!(set.add_section(".init_array", &[i_default as *const () as usize]));
        assert!(set.add_section(".init_array.00200", &[i_200_gcc as *const () as usize]));
        assert!(set.add_section(
            ".ctors",
            &[ctor_a as *const () as usize, ctor_b as *const () as usize]
        ));
        assert!(set.add_section(".preinit_array", &[pre as *const () as usize]));
        assert!(set.add_section(
            ".init_array.101",
            &[i_101 as *const () as usize, 0, usize::MAX]
        ));
        assert!(set.add_section(".init_array.200", &[i_200_clang as *const () as usize]));
        assert!(set.add_section(".ctors.65385", &[ctor_150 as *const () as usize]));
        assert!(set.add_section(
            ".init_array.00300",
            &[register_handler as *const () as usize]
        ));
        assert!(set.add_section(".fini_array", &[f_default as *const () as usize]));
        assert!(set.add_section(".fini_array.00101", &[f_101 as *const () as usize]));
        assert!(set.add_section(
            ".dtors",
            &[dtor_a as *const () as usize, dtor_b as *const () as usize]
        ));
        assert!(set.add_section(".fini_array.200", &[f_200 as *const () as usize]));
        assert!(set.add_section(".fini_array", &[f_default2 as *const () as usize]));
        assert!(!set.add_section(".text", &[1]));
        // SAFETY: every entry is a function of the right type that only logs.
        unsafe { set.run_init() };
        // Two handlers "registered by the image", as a static constructor would.
        unsafe extern "C" fn h1(_: *mut std::ffi::c_void) {
            handler_1_c();
        }
        unsafe extern "C" fn h2(_: *mut std::ffi::c_void) {
            handler_2_c();
        }
        fn handler_1_c() {
            // SAFETY: logs only.
            unsafe { handler_1() }
        }
        fn handler_2_c() {
            // SAFETY: logs only.
            unsafe { handler_2() }
        }
        let cxa = super::super::dso::overrides()
            .into_iter()
            .find(|(n, _)| *n == "__cxa_atexit")
            .map(|(_, a)| a)
            .unwrap_or(0);
        type CxaAtexit = unsafe extern "C" fn(
            Option<unsafe extern "C" fn(*mut std::ffi::c_void)>,
            *mut std::ffi::c_void,
            *mut std::ffi::c_void,
        ) -> c_int;
        // SAFETY: the table entry is `__cxa_atexit`'s replacement.
        let cxa: CxaAtexit = unsafe { std::mem::transmute(cxa) };
        // SAFETY: valid handlers, live handle.
        unsafe {
            cxa(Some(h1), std::ptr::null_mut(), dso.addr() as *mut _);
            cxa(Some(h2), std::ptr::null_mut(), dso.addr() as *mut _);
        }
        // SAFETY: the handlers just registered are valid and the handle live.
        unsafe { set.run_fini() };
        // SAFETY: idempotent.
        unsafe { set.run_fini() };
        let log = LOG
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert_eq!(
            log,
            vec![
                "pre",
                "i_101",
                "ctor_150",
                "i_200_gcc",
                "i_200_clang",
                "register",
                "i_default",
                "ctor_b",
                "ctor_a",
                // teardown
                "f_default2",
                "dtor_a",
                "dtor_b",
                "f_default",
                "handler_2",
                "handler_1",
                "f_200",
                "f_101",
            ]
        );
    }

    static TOGETHER: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    macro_rules! together_fn {
        ($($name:ident),*) => {$(
            unsafe extern "C" fn $name() {
                TOGETHER
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(stringify!($name));
            }
        )*};
    }
    together_fn!(
        a_fini,
        a_fini_200,
        b_fini,
        b_fini_101,
        a_handler_1,
        a_handler_2,
        b_handler
    );

    /// Two images of one program torn down together end as one executable
    /// would: every handler newest first across both (not image by image),
    /// then both images' finalizers as one `.fini_array`.
    #[test]
    fn images_torn_down_together_end_like_one_program() {
        let (a_dso, b_dso) = (DsoHandle::new("a"), DsoHandle::new("b"));
        let (mut a, mut b) = (InitFini::new(a_dso.clone()), InitFini::new(b_dso.clone()));
        a.add_section(".fini_array", &[a_fini as *const () as usize]);
        a.add_section(".fini_array.00200", &[a_fini_200 as *const () as usize]);
        b.add_section(".fini_array", &[b_fini as *const () as usize]);
        b.add_section(".fini_array.00101", &[b_fini_101 as *const () as usize]);
        for set in [&mut a, &mut b] {
            set.set_executable_teardown(true);
        }
        // SAFETY: no initializers.
        unsafe { InitFini::run_init_together(&mut [&mut a, &mut b]) };
        type PlainAtexit = unsafe extern "C" fn(Option<unsafe extern "C" fn()>) -> c_int;
        // Handlers registered a, b, a; attributed to the image holding them.
        let register = |dso: &DsoHandle, f: unsafe extern "C" fn()| {
            dso.add_range(f as *const () as usize, 1);
            let atexit = super::super::dso::overrides()
                .into_iter()
                .find(|(n, _)| *n == "atexit")
                .map(|(_, a)| a)
                .unwrap_or(0);
            // SAFETY: the table entry is `atexit`'s replacement.
            let atexit: PlainAtexit = unsafe { std::mem::transmute(atexit) };
            // SAFETY: a valid handler that only logs.
            assert_eq!(unsafe { atexit(Some(f)) }, 0);
        };
        register(&a_dso, a_handler_1);
        register(&b_dso, b_handler);
        register(&a_dso, a_handler_2);
        // SAFETY: every entry only logs.
        unsafe { InitFini::run_fini_together(&mut [&mut a, &mut b]) };
        let log = TOGETHER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert_eq!(
            log,
            [
                "a_handler_2",
                "b_handler",
                "a_handler_1",
                "b_fini",
                "a_fini",
                "a_fini_200",
                "b_fini_101",
            ]
        );
    }
}
