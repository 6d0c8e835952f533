//! Lazy reexports through real JIT trampolines and stubs: concurrent first
//! calls, hot swap under load, vector arguments across the reentry,
//! failures (host handler and the default exit), and memory release.
//!
//! The bodies are Rust `extern "C"` functions defined into dylibs through
//! counting units; no object files are needed.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_engine::*;
use kiln_linker::lazy::{JitLazyReexports, MemoryStats, lazy_reexports_manager};

/// Tests that check JIT memory mappings must not see another test's
/// allocations reuse released pages; every test here takes this lock.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

type Hook = Box<dyn FnOnce() + Send>;

/// A body unit that counts its materializations and runs `hook` first.
struct Body {
    name: SymbolName,
    address: u64,
    runs: Arc<AtomicUsize>,
    hook: Option<Hook>,
}

impl MaterializationUnit for Body {
    fn name(&self) -> &str {
        "counting body"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.name.clone(), fc())]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        self.runs.fetch_add(1, SeqCst);
        if let Some(hook) = self.hook {
            hook();
        }
        match r.resolve(&[(self.name.clone(), SymbolDef::new(self.address, fc()))]) {
            Ok(()) => {
                let _ = r.emit(Vec::new());
            }
            Err(e) => r.fail(e),
        }
    }
}

/// A body unit whose link fails with `cause`.
struct Broken {
    name: SymbolName,
    cause: &'static str,
}

impl MaterializationUnit for Broken {
    fn name(&self) -> &str {
        "body.o"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.name.clone(), fc())]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        r.fail(Error::msg(self.cause));
    }
}

fn fc() -> SymbolFlags {
    SymbolFlags::EXPORTED | SymbolFlags::CALLABLE
}

extern "C" fn add_one(x: i64) -> i64 {
    x + 1
}

extern "C" fn add_thousand(x: i64) -> i64 {
    x + 1000
}

extern "C" fn negate(x: i64) -> i64 {
    -x
}

type I64Fn = extern "C" fn(i64) -> i64;

fn addr(f: I64Fn) -> u64 {
    f as usize as u64
}

/// # Safety
/// `address` must be callable as `extern "C" fn(i64) -> i64` for as long
/// as the returned pointer is used.
unsafe fn as_fn(address: u64) -> I64Fn {
    assert_ne!(address, 0);
    // SAFETY: the caller guarantees the signature; function pointers and
    // addresses have the same size on x86-64.
    unsafe { std::mem::transmute::<usize, I64Fn>(address as usize) }
}

fn session(in_place: bool) -> Session {
    if in_place {
        Session::builder()
            .dispatcher(InPlaceDispatcher::new())
            .build()
    } else {
        Session::new()
    }
}

/// Defines `entry` in `lib` as a lazy reexport of `body` (same dylib)
/// through `tracker`, and returns the entry's (stub) address.
fn lazy_entry(
    lazy: &LazyReexports,
    lib: &Dylib,
    tracker: Option<&ResourceTracker>,
    entry: &str,
    body: &str,
) -> u64 {
    let s = lib.session();
    let unit = lazy
        .reexports(
            lib,
            [Alias {
                name: s.intern(entry),
                target: s.intern(body),
                flags: fc(),
            }],
        )
        .expect("reexports unit");
    match tracker {
        Some(t) => lib.define_with(unit, t),
        None => lib.define(unit),
    }
    .expect("define lazy entry");
    let found = lib.lookup_ready(&[entry]).expect("look the entry up");
    found
        .get(&s.intern(entry))
        .expect("entry in result")
        .address
}

fn define_body(lib: &Dylib, name: &str, f: I64Fn, runs: &Arc<AtomicUsize>, hook: Option<Hook>) {
    let s = lib.session();
    lib.define(Body {
        name: s.intern(name),
        address: addr(f),
        runs: runs.clone(),
        hook,
    })
    .expect("define body");
}

#[test]
fn sixty_four_threads_first_call_link_once() {
    let _serial = serial();
    sixty_four_first_calls(false);
}

#[test]
fn sixty_four_threads_first_call_link_once_in_place() {
    let _serial = serial();
    sixty_four_first_calls(true);
}

/// 64 threads make their first call of one entry at once (the body's
/// materializer waits until all 64 are inside the reentry path).
fn sixty_four_first_calls(in_place: bool) {
    const THREADS: usize = 64;
    let s = session(in_place);
    let lib = s.create_dylib("lib").unwrap();
    let lazy = lazy_reexports_manager(&s).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    // The materializer holds everyone back until all 64 threads are inside
    // the reentry path, so the first calls really are concurrent.
    let waiter = lazy.clone();
    let all_inside = Arc::new(AtomicBool::new(false));
    let inside = all_inside.clone();
    define_body(
        &lib,
        "impl",
        add_one,
        &runs,
        Some(Box::new(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while waiter.reentries() < THREADS && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            inside.store(waiter.reentries() == THREADS, SeqCst);
        })),
    );
    let stub = lazy_entry(&lazy, &lib, None, "entry", "impl");
    assert_ne!(
        stub,
        addr(add_one),
        "the entry must be a stub, not the body"
    );
    assert_eq!(lazy.reentries(), 0, "defining and looking up must not call");

    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // SAFETY: the entry is a lazy reexport of `add_one`.
                let f = unsafe { as_fn(stub) };
                barrier.wait();
                let first = f(t as i64);
                let later: Vec<i64> = (0..1000).map(|k| f(k)).collect();
                (first, later)
            })
        })
        .collect();
    for (t, th) in threads.into_iter().enumerate() {
        let (first, later) = th.join().expect("caller thread");
        assert_eq!(first, t as i64 + 1, "thread {t}'s first call");
        assert!(later.iter().enumerate().all(|(k, &v)| v == k as i64 + 1));
    }
    assert_eq!(runs.load(SeqCst), 1, "the body must be materialized once");
    assert!(
        all_inside.load(SeqCst),
        "all {THREADS} threads should have re-entered before the body was linked (saw {})",
        lazy.reentries()
    );
    assert_eq!(lazy.reentries(), THREADS);
    assert_eq!(
        lazy.linked(),
        1,
        "one entry, linked once however many threads resolved it"
    );
    // Redirected: later calls skip the trampoline.
    // SAFETY: the entry is a lazy reexport of `add_one`.
    let f = unsafe { as_fn(stub) };
    for k in 0..10_000 {
        assert_eq!(f(k), k + 1);
    }
    assert_eq!(lazy.reentries(), THREADS, "later calls must not re-enter");
    s.end();
}

#[test]
fn hot_swap_under_load_runs_old_or_new_body() {
    let _serial = serial();
    const CALLERS: usize = 4;
    const REDIRECTS: usize = 10_000;
    let s = session(true);
    let lib = s.create_dylib("lib").unwrap();
    let lazy = lazy_reexports_manager(&s).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    define_body(&lib, "impl", add_one, &runs, None);
    let stub = lazy_entry(&lazy, &lib, None, "entry", "impl");
    // SAFETY: both bodies have the entry's signature.
    let f = unsafe { as_fn(stub) };
    assert_eq!(f(1), 2, "first call links the old body");

    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(CALLERS + 1));
    let callers: Vec<_> = (0..CALLERS)
        .map(|t| {
            let (stop, start) = (stop.clone(), start.clone());
            std::thread::spawn(move || {
                // SAFETY: both bodies have the entry's signature.
                let f = unsafe { as_fn(stub) };
                let (mut old, mut new, mut calls) = (0usize, 0usize, 0i64);
                start.wait();
                while !stop.load(SeqCst) {
                    let x = calls * 7 + t as i64;
                    match f(x) - x {
                        1 => old += 1,
                        1000 => new += 1,
                        other => panic!("call {calls} of thread {t}: f({x}) - {x} = {other}"),
                    }
                    calls += 1;
                }
                (old, new)
            })
        })
        .collect();
    start.wait();
    let entry = s.intern("entry");
    for i in 0..REDIRECTS {
        let target = if i % 2 == 0 {
            addr(add_thousand)
        } else {
            addr(add_one)
        };
        lazy.redirect(&lib, &entry, target).unwrap();
        if i % 64 == 0 {
            std::thread::yield_now();
        }
    }
    stop.store(true, SeqCst);
    let (mut old, mut new) = (0, 0);
    for c in callers {
        let (o, n) = c.join().expect("caller thread");
        old += o;
        new += n;
    }
    assert!(
        old > 0 && new > 0,
        "both bodies should have run: old {old}, new {new}"
    );
    // The last redirect (odd i) pointed back at the old body.
    assert_eq!(f(5), 6);
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(lazy.reentries(), 1, "hot swaps never re-enter");
    // Hot swap of something that is no entry is an error naming it.
    let err = lazy
        .redirect(&lib, &s.intern("nope"), addr(add_one))
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    s.end();
}

#[allow(
    improper_ctypes_definitions,
    reason = "__m256/__m512 travel in ymm/zmm registers exactly like C's __m256/__m512 (x86-64 psABI)"
)]
mod vectors {
    //! A lazy function whose vector arguments must survive a first call
    //! whose materializer itself dirties every vector register.
    use std::arch::x86_64::*;

    /// Lane `j` of argument `i`: distinct in every lane of every argument.
    pub(super) fn lane(i: usize, j: usize) -> f32 {
        (i * 16 + j) as f32 + 0.25
    }

    /// Bit `i` set when argument `i` holds its pattern in every lane.
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[target_feature(enable = "avx")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe extern "C" fn body256(
        a0: __m256,
        a1: __m256,
        a2: __m256,
        a3: __m256,
        a4: __m256,
        a5: __m256,
        a6: __m256,
        a7: __m256,
        tag: i64,
    ) -> i64 {
        let mut mask = 0i64;
        for (i, v) in [a0, a1, a2, a3, a4, a5, a6, a7].into_iter().enumerate() {
            let mut out = [0f32; 8];
            // SAFETY: `out` has room for 8 f32; AVX is enabled here.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            if out.iter().enumerate().all(|(j, &x)| x == lane(i, j)) {
                mask |= 1 << i;
            }
        }
        mask | (tag << 16)
    }

    /// Calls `f` (an entry for [`body256`]) with the patterns.
    ///
    /// # Safety
    /// AVX must be supported and `f` must have `body256`'s signature.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn call256(f: u64) -> i64 {
        type F = unsafe extern "C" fn(
            __m256,
            __m256,
            __m256,
            __m256,
            __m256,
            __m256,
            __m256,
            __m256,
            i64,
        ) -> i64;
        // SAFETY: the caller guarantees the signature.
        let f: F = unsafe { std::mem::transmute::<usize, F>(f as usize) };
        let v = |i: usize| {
            let l: [f32; 8] = std::array::from_fn(|j| lane(i, j));
            // SAFETY: `l` holds 8 f32; AVX is enabled here.
            unsafe { _mm256_loadu_ps(l.as_ptr()) }
        };
        // SAFETY: `f` has the signature the caller guarantees (eight
        // __m256 and an i64); AVX is enabled here.
        unsafe { f(v(0), v(1), v(2), v(3), v(4), v(5), v(6), v(7), 3) }
    }

    /// Writes all-ones into ymm0–15 and does some AVX arithmetic, the way a
    /// compiler in the materializer would leave them dirty.
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn dirty_ymm() -> f32 {
        // SAFETY: only vector registers declared as clobbered are written.
        unsafe {
            std::arch::asm!(
                "vcmpps ymm0, ymm0, ymm0, 0x0f", // true-predicate: all ones
                "vmovaps ymm1, ymm0", "vmovaps ymm2, ymm0", "vmovaps ymm3, ymm0",
                "vmovaps ymm4, ymm0", "vmovaps ymm5, ymm0", "vmovaps ymm6, ymm0",
                "vmovaps ymm7, ymm0", "vmovaps ymm8, ymm0", "vmovaps ymm9, ymm0",
                "vmovaps ymm10, ymm0", "vmovaps ymm11, ymm0", "vmovaps ymm12, ymm0",
                "vmovaps ymm13, ymm0", "vmovaps ymm14, ymm0", "vmovaps ymm15, ymm0",
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack, nomem),
            );
        }
        let data: [f32; 8] = std::array::from_fn(|j| j as f32 * 1.5);
        // SAFETY: `data` holds 8 f32; AVX is enabled here.
        let v = unsafe { _mm256_loadu_ps(data.as_ptr()) };
        let s = _mm256_add_ps(_mm256_mul_ps(v, v), v);
        let mut out = [0f32; 8];
        // SAFETY: `out` has room for 8 f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }

    // AVX-512 in assembly: Rust's AVX-512 intrinsics and target feature are
    // newer than kiln's MSRV (1.88), the assembler accepts the instructions
    // regardless.
    //
    // body512(zmm0..zmm7: __m512, out: *mut [f32; 128], tag: i64) -> i64:
    //   stores its eight vector arguments to `out`, returns `tag`.
    // call512(entry, patterns: *const [f32; 128], out) -> i64:
    //   loads zmm0..zmm7 from `patterns` and calls `entry(zmm0..7, out, 5)`.
    // dirty_zmm(): all-ones into zmm0..zmm31 and k1..k7 (every one of them
    //   caller-saved in the psABI, so an ordinary call may do this).
    std::arch::global_asm!(
        ".pushsection .text.kiln_lazy_test_avx512,\"ax\",@progbits",
        ".p2align 4",
        ".globl kiln_lazy_test_body512",
        ".hidden kiln_lazy_test_body512",
        "kiln_lazy_test_body512:",
        "vmovups zmmword ptr [rdi], zmm0",
        "vmovups zmmword ptr [rdi + 64], zmm1",
        "vmovups zmmword ptr [rdi + 128], zmm2",
        "vmovups zmmword ptr [rdi + 192], zmm3",
        "vmovups zmmword ptr [rdi + 256], zmm4",
        "vmovups zmmword ptr [rdi + 320], zmm5",
        "vmovups zmmword ptr [rdi + 384], zmm6",
        "vmovups zmmword ptr [rdi + 448], zmm7",
        "mov rax, rsi",
        "vzeroupper",
        "ret",
        ".p2align 4",
        ".globl kiln_lazy_test_call512",
        ".hidden kiln_lazy_test_call512",
        "kiln_lazy_test_call512:",
        "push rbp",
        "mov rbp, rsp",
        "mov rax, rdi",
        "vmovups zmm0, zmmword ptr [rsi]",
        "vmovups zmm1, zmmword ptr [rsi + 64]",
        "vmovups zmm2, zmmword ptr [rsi + 128]",
        "vmovups zmm3, zmmword ptr [rsi + 192]",
        "vmovups zmm4, zmmword ptr [rsi + 256]",
        "vmovups zmm5, zmmword ptr [rsi + 320]",
        "vmovups zmm6, zmmword ptr [rsi + 384]",
        "vmovups zmm7, zmmword ptr [rsi + 448]",
        "mov rdi, rdx",
        "mov esi, 5",
        "call rax",
        "pop rbp",
        "ret",
        ".p2align 4",
        ".globl kiln_lazy_test_dirty_zmm",
        ".hidden kiln_lazy_test_dirty_zmm",
        "kiln_lazy_test_dirty_zmm:",
        "vpternlogd zmm0, zmm0, zmm0, 0xff",
        "vmovdqa64 zmm1, zmm0",
        "vmovdqa64 zmm2, zmm0",
        "vmovdqa64 zmm3, zmm0",
        "vmovdqa64 zmm4, zmm0",
        "vmovdqa64 zmm5, zmm0",
        "vmovdqa64 zmm6, zmm0",
        "vmovdqa64 zmm7, zmm0",
        "vmovdqa64 zmm8, zmm0",
        "vmovdqa64 zmm9, zmm0",
        "vmovdqa64 zmm10, zmm0",
        "vmovdqa64 zmm11, zmm0",
        "vmovdqa64 zmm12, zmm0",
        "vmovdqa64 zmm13, zmm0",
        "vmovdqa64 zmm14, zmm0",
        "vmovdqa64 zmm15, zmm0",
        "vmovdqa64 zmm16, zmm0",
        "vmovdqa64 zmm17, zmm0",
        "vmovdqa64 zmm18, zmm0",
        "vmovdqa64 zmm19, zmm0",
        "vmovdqa64 zmm20, zmm0",
        "vmovdqa64 zmm21, zmm0",
        "vmovdqa64 zmm22, zmm0",
        "vmovdqa64 zmm23, zmm0",
        "vmovdqa64 zmm24, zmm0",
        "vmovdqa64 zmm25, zmm0",
        "vmovdqa64 zmm26, zmm0",
        "vmovdqa64 zmm27, zmm0",
        "vmovdqa64 zmm28, zmm0",
        "vmovdqa64 zmm29, zmm0",
        "vmovdqa64 zmm30, zmm0",
        "vmovdqa64 zmm31, zmm0",
        "kxnorw k1, k0, k0",
        "kmovw k2, k1",
        "kmovw k3, k1",
        "kmovw k4, k1",
        "kmovw k5, k1",
        "kmovw k6, k1",
        "kmovw k7, k1",
        "ret",
        // The negative control: what an entry without vector-state saving
        // would do (dirty everything, then continue into the body).
        ".p2align 4",
        ".globl kiln_lazy_test_clobbering_entry512",
        ".hidden kiln_lazy_test_clobbering_entry512",
        "kiln_lazy_test_clobbering_entry512:",
        "call kiln_lazy_test_dirty_zmm",
        "jmp kiln_lazy_test_body512",
        ".popsection",
    );

    unsafe extern "C" {
        /// See the assembly above (its vector arguments are not expressible
        /// in this signature; it is only called through `call512`).
        pub(super) fn kiln_lazy_test_body512(out: *mut f32, tag: i64) -> i64;
        /// See the assembly above.
        pub(super) fn kiln_lazy_test_call512(
            entry: u64,
            patterns: *const f32,
            out: *mut f32,
        ) -> i64;
        /// See the assembly above.
        pub(super) fn kiln_lazy_test_dirty_zmm();
        /// See the assembly above.
        pub(super) fn kiln_lazy_test_clobbering_entry512();
    }

    /// The 8 x 16 lanes `call512` passes.
    pub(super) fn patterns512() -> Vec<f32> {
        (0..8)
            .flat_map(|i| (0..16).map(move |j| lane(i, j)))
            .collect()
    }
}

/// A session with `entry`, a lazy reexport of the body at `body` whose
/// materializer runs `dirty` (in-place dispatcher: on the thread making the
/// first call, between the entry's register save and restore).
struct VectorEntry {
    session: Session,
    lazy: LazyReexports,
    runs: Arc<AtomicUsize>,
    /// Whether the materializer ran on the thread that set the entry up.
    on_caller: Arc<AtomicBool>,
    stub: u64,
}

fn vector_entry(dirty: fn(), body: u64) -> VectorEntry {
    let s = session(true);
    let lib = s.create_dylib("lib").unwrap();
    let lazy = lazy_reexports_manager(&s).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let caller = std::thread::current().id();
    let on_caller = Arc::new(AtomicBool::new(false));
    let seen = on_caller.clone();
    lib.define(Body {
        name: s.intern("impl"),
        address: body,
        runs: runs.clone(),
        hook: Some(Box::new(move || {
            seen.store(std::thread::current().id() == caller, SeqCst);
            dirty();
        })),
    })
    .unwrap();
    let stub = lazy_entry(&lazy, &lib, None, "entry", "impl");
    VectorEntry {
        session: s,
        lazy,
        runs,
        on_caller,
        stub,
    }
}

#[test]
fn avx_arguments_survive_the_first_call() {
    let _serial = serial();
    if !is_x86_feature_detected!("avx") {
        eprintln!("skipped: this CPU has no AVX");
        return;
    }
    fn dirty() {
        // SAFETY: AVX was detected above.
        let sum = unsafe { vectors::dirty_ymm() };
        assert!(sum > 0.0);
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was just detected; the function only writes
            // caller-saved vector and mask registers.
            unsafe { vectors::kiln_lazy_test_dirty_zmm() };
        }
    }
    let VectorEntry {
        session: s,
        lazy,
        runs,
        on_caller,
        stub,
    } = vector_entry(dirty, vectors::body256 as *const () as usize as u64);
    // SAFETY: AVX is present; the entry reexports `body256`.
    let first = unsafe { vectors::call256(stub) };
    assert_eq!(runs.load(SeqCst), 1, "the first call must materialize");
    assert!(
        on_caller.load(SeqCst),
        "the materializer must dirty the calling thread's registers"
    );
    assert_eq!(lazy.reentries(), 1);
    assert_eq!(
        first,
        0xff | (3 << 16),
        "ymm arguments clobbered across the reentry: intact mask {:#x}",
        first & 0xff
    );
    // SAFETY: AVX is present; the entry reexports `body256`, now linked.
    assert_eq!(unsafe { vectors::call256(stub) }, 0xff | (3 << 16));
    assert_eq!(lazy.reentries(), 1);
    s.end();
}

#[test]
fn avx512_arguments_survive_the_first_call() {
    let _serial = serial();
    if !is_x86_feature_detected!("avx512f") {
        eprintln!("skipped: this CPU has no AVX-512F");
        return;
    }
    fn dirty() {
        // SAFETY: AVX-512F (hence AVX) was detected above; the functions
        // only write caller-saved vector and mask registers.
        unsafe {
            vectors::dirty_ymm();
            vectors::kiln_lazy_test_dirty_zmm();
        }
    }
    let VectorEntry {
        session: s,
        lazy,
        runs,
        on_caller,
        stub,
    } = vector_entry(
        dirty,
        vectors::kiln_lazy_test_body512 as *const () as usize as u64,
    );
    let patterns = vectors::patterns512();
    let mut out = vec![0f32; patterns.len()];
    // SAFETY: AVX-512F is present; the entry reexports `body512`, which
    // writes 8 x 64 bytes to `out`.
    let tag = unsafe { vectors::kiln_lazy_test_call512(stub, patterns.as_ptr(), out.as_mut_ptr()) };
    assert_eq!(runs.load(SeqCst), 1);
    assert!(on_caller.load(SeqCst));
    assert_eq!(tag, 5, "the integer argument after the vectors");
    let bad: Vec<usize> = (0..8)
        .filter(|&i| out[i * 16..(i + 1) * 16] != patterns[i * 16..(i + 1) * 16])
        .collect();
    assert!(
        bad.is_empty(),
        "zmm arguments {bad:?} clobbered across the reentry"
    );

    // Control: the same check does see clobbered arguments.
    let clobbering = vectors::kiln_lazy_test_clobbering_entry512 as *const () as usize as u64;
    // SAFETY: AVX-512F is present; the control entry has the same calling
    // convention and writes 8 x 64 bytes to `out`.
    unsafe { vectors::kiln_lazy_test_call512(clobbering, patterns.as_ptr(), out.as_mut_ptr()) };
    assert_ne!(out, patterns, "the control must see clobbered arguments");
    assert_eq!(lazy.reentries(), 1);
    s.end();
}

const ROOT_CAUSE: &str = "undefined symbol `frobnicate` (referenced by body.o)";

/// A dylib with `entry` lazily reexporting a body whose link fails.
fn broken_entry(in_place: bool) -> (Session, Dylib, LazyReexports, u64) {
    let s = session(in_place);
    let lib = s.create_dylib("broken").unwrap();
    let lazy = lazy_reexports_manager(&s).unwrap();
    lib.define(Broken {
        name: s.intern("impl"),
        cause: ROOT_CAUSE,
    })
    .unwrap();
    let stub = lazy_entry(&lazy, &lib, None, "entry", "impl");
    (s, lib, lazy, stub)
}

#[test]
fn failed_lazy_link_reaches_the_host_handler_with_its_root_cause() {
    let _serial = serial();
    let (s, lib, lazy, stub) = broken_entry(false);
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let record = seen.clone();
    lazy.set_failure_handler(move |entry, err| {
        record.lock().unwrap().push((
            entry.to_string(),
            err.to_string(),
            err.root_cause().to_string(),
        ));
        addr(negate)
    });
    // SAFETY: the entry and the fallback both have the `i64 -> i64` signature.
    let f = unsafe { as_fn(stub) };
    assert_eq!(f(7), -7, "the call continues in the handler's fallback");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (entry, err, root) = &seen[0];
        assert!(
            entry.contains("entry") && entry.contains("broken"),
            "{entry}"
        );
        assert_eq!(root, ROOT_CAUSE);
        assert!(err.contains(ROOT_CAUSE), "{err}");
    }
    // Failure is sticky: the next call fails the same way, never hangs.
    assert_eq!(f(8), -8);
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A body that no dylib defines: the missing name is the root cause.
    let stub = lazy_entry(&lazy, &lib, None, "entry2", "no_such_body");
    // SAFETY: the entry and the fallback both have the `i64 -> i64` signature.
    let g = unsafe { as_fn(stub) };
    assert_eq!(g(3), -3);
    let seen = seen.lock().unwrap();
    let (_, _, root) = seen.last().unwrap();
    assert!(root.contains("no_such_body"), "{root}");
    drop(seen);
    s.end();
}

const CHILD_ENV: &str = "KILN_LAZY_TEST_CHILD";

#[test]
fn default_failure_handler_prints_the_root_cause_and_exits_70() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: no handler installed; the call must not return.
        let (_s, _lib, _lazy, stub) = broken_entry(true);
        // SAFETY: the entry has the `i64 -> i64` signature.
        let f = unsafe { as_fn(stub) };
        let r = f(1);
        eprintln!("the failed lazy call returned {r}");
        std::process::exit(1);
    }
    let _serial = serial();
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "default_failure_handler_prints_the_root_cause_and_exits_70",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "child stderr:\n{stderr}");
    assert!(stderr.contains(ROOT_CAUSE), "child stderr:\n{stderr}");
    assert!(stderr.contains("entry"), "child stderr:\n{stderr}");
}

/// Permissions of the mapping containing `addr` in `/proc/self/maps`.
fn perms_at(addr: u64) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        let (range, perms) = (parts.next()?, parts.next()?);
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        (lo <= addr && addr < hi).then(|| perms.to_string())
    })
}

#[test]
fn removing_the_tracker_frees_trampolines_and_stubs() {
    let _serial = serial();
    let s = session(true);
    let lib = s.create_dylib("lib").unwrap();
    let jit = JitLazyReexports::new(&s).unwrap();
    let lazy = jit.manager().clone();
    let runs = Arc::new(AtomicUsize::new(0));
    define_body(&lib, "impl", add_one, &runs, None);
    assert_eq!(jit.memory_stats(), MemoryStats::default());

    let ranges_before = kiln_linker::lazy::registered_trampoline_ranges();
    let tracker = lib.create_tracker().unwrap();
    let stub = lazy_entry(&lazy, &lib, Some(&tracker), "entry", "impl");
    assert_eq!(
        kiln_linker::lazy::registered_trampoline_ranges(),
        ranges_before + 1
    );
    let stats = jit.memory_stats();
    assert_eq!((stats.trampoline_blocks, stats.stub_blocks), (1, 1));
    assert!(stats.bytes >= 4 * 4096, "{stats:?}");
    let ranges = jit.memory_ranges();
    assert_eq!(ranges.len(), 2);
    // Code is RX, never writable; stub slots are RW, never executable.
    assert_eq!(perms_at(stub).as_deref(), Some("r-xp"));
    for &(start, len) in &ranges {
        let mut pages = Vec::new();
        for page in (start..start + len).step_by(4096) {
            let p = perms_at(page).expect("mapped");
            assert!(
                !(p.contains('w') && p.contains('x')),
                "W+X page at {page:#x}"
            );
            pages.push(p);
        }
        assert!(pages.iter().any(|p| p == "r-xp"), "{pages:?}");
    }
    // SAFETY: the entry reexports `add_one`.
    let f = unsafe { as_fn(stub) };
    assert_eq!(f(1), 2);

    tracker.remove().unwrap();
    assert_eq!(jit.memory_stats(), MemoryStats::default());
    assert!(jit.memory_ranges().is_empty());
    assert_eq!(
        kiln_linker::lazy::registered_trampoline_ranges(),
        ranges_before,
        "the trampolines must leave the reentry registry"
    );
    for &(start, len) in &ranges {
        for page in (start..start + len).step_by(4096) {
            let p = perms_at(page);
            assert!(
                p.as_deref().is_none_or(|p| p.starts_with("---")),
                "page {page:#x} still accessible after removal: {p:?}"
            );
        }
    }
    // The entry is gone from the dylib.
    assert!(lib.lookup_ready(&["entry"]).is_err());
    // A unit defined through a tracker removed before it materialized
    // never allocates.
    let tracker = lib.create_tracker().unwrap();
    let unit = lazy
        .reexports(
            &lib,
            [Alias {
                name: s.intern("entry3"),
                target: s.intern("impl"),
                flags: fc(),
            }],
        )
        .unwrap();
    lib.define_with(unit, &tracker).unwrap();
    tracker.remove().unwrap();
    assert!(lib.lookup_ready(&["entry3"]).is_err());
    assert_eq!(jit.memory_stats(), MemoryStats::default());
    s.end();
}

#[test]
fn session_end_frees_everything_and_many_managers_coexist() {
    let _serial = serial();
    let before = kiln_linker::lazy::registered_trampoline_ranges();
    let (s1, s2) = (session(true), session(false));
    let (l1, l2) = (s1.create_dylib("a").unwrap(), s2.create_dylib("a").unwrap());
    let (j1, j2) = (
        JitLazyReexports::new(&s1).unwrap(),
        JitLazyReexports::new(&s2).unwrap(),
    );
    let (r1, r2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    define_body(&l1, "impl", add_one, &r1, None);
    define_body(&l2, "impl", add_thousand, &r2, None);
    let e1 = lazy_entry(j1.manager(), &l1, None, "entry", "impl");
    let e2 = lazy_entry(j2.manager(), &l2, None, "entry", "impl");
    assert_eq!(
        kiln_linker::lazy::registered_trampoline_ranges(),
        before + 2
    );
    // SAFETY: both entries reexport `i64 -> i64` bodies.
    let (f1, f2) = unsafe { (as_fn(e1), as_fn(e2)) };
    assert_eq!(
        (f1(1), f2(1)),
        (2, 1001),
        "each trampoline reaches its own manager"
    );
    assert_eq!((j1.manager().reentries(), j2.manager().reentries()), (1, 1));
    s1.end();
    assert_eq!(j1.memory_stats(), MemoryStats::default());
    assert_ne!(j2.memory_stats(), MemoryStats::default());
    assert_eq!(f2(2), 1002, "the other session is unaffected");
    s2.end();
    assert_eq!(j2.memory_stats(), MemoryStats::default());
    assert_eq!(kiln_linker::lazy::registered_trampoline_ranges(), before);
}

/// Churn: threads of two sessions keep defining lazy entries through their
/// own trackers, first-calling them and removing them, while the registry
/// routes every reentry to the right manager and every block is freed.
#[test]
fn concurrent_define_call_remove_churn_across_sessions() {
    let _serial = serial();
    const THREADS: usize = 4;
    const ROUNDS: usize = 100;
    let before = kiln_linker::lazy::registered_trampoline_ranges();
    let sessions = [session(true), session(false)];
    let jits: Vec<JitLazyReexports> = sessions
        .iter()
        .map(|s| JitLazyReexports::new(s).unwrap())
        .collect();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = sessions[t % 2].clone();
            let jit = jits[t % 2].clone();
            std::thread::spawn(move || {
                let lib = s.create_dylib(&format!("lib{t}")).unwrap();
                let runs = Arc::new(AtomicUsize::new(0));
                let (body, delta): (I64Fn, i64) = if t % 2 == 0 {
                    (add_one, 1)
                } else {
                    (add_thousand, 1000)
                };
                define_body(&lib, "impl", body, &runs, None);
                for round in 0..ROUNDS {
                    let tracker = lib.create_tracker().unwrap();
                    let entry = format!("entry{round}");
                    let stub = lazy_entry(jit.manager(), &lib, Some(&tracker), &entry, "impl");
                    // SAFETY: the entry reexports an `i64 -> i64` body.
                    let f = unsafe { as_fn(stub) };
                    let x = (t * ROUNDS + round) as i64;
                    assert_eq!(f(x), x + delta, "thread {t} round {round}");
                    assert_eq!(f(x + 1), x + 1 + delta);
                    tracker.remove().unwrap();
                    assert!(lib.lookup_ready(&[&entry]).is_err());
                }
                assert_eq!(runs.load(SeqCst), 1, "the body links once per thread");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("churn thread");
    }
    for (jit, s) in jits.iter().zip(&sessions) {
        assert_eq!(jit.memory_stats(), MemoryStats::default());
        // One reentry per defined entry, none for second calls.
        assert_eq!(jit.manager().reentries(), THREADS / 2 * ROUNDS);
        s.end();
    }
    assert_eq!(kiln_linker::lazy::registered_trampoline_ranges(), before);
}

/// The after-link hook (where a host runs the new code's initializers)
/// finishes before any call reaches the body: a thread that calls the
/// entry while the first caller is still in the hook goes through the
/// reentry path (and its own hook call) too, instead of finding the stub
/// already pointing at the body.
#[test]
fn no_call_reaches_the_body_before_the_after_link_hook_returns() {
    let _serial = serial();
    let s = session(false);
    let lib = s.create_dylib("lib").unwrap();
    let lazy = lazy_reexports_manager(&s).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    define_body(&lib, "impl", add_one, &runs, None);
    let stub = lazy_entry(&lazy, &lib, None, "entry", "impl");
    // The hook parks every caller until the test lets them go, as
    // initializers running on another thread hold back callers.
    let release = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let in_hook = Arc::new(AtomicUsize::new(0));
    {
        let (release, in_hook) = (release.clone(), in_hook.clone());
        lazy.set_after_link_hook(move || {
            in_hook.fetch_add(1, SeqCst);
            let mut go = release.0.lock().unwrap();
            while !*go {
                go = release.1.wait(go).unwrap();
            }
        });
    }
    let returned = Arc::new(AtomicUsize::new(0));
    let call = |returned: Arc<AtomicUsize>| {
        move || {
            // SAFETY: the entry is a lazy reexport of `add_one`.
            let r = unsafe { as_fn(stub) }(1);
            returned.fetch_add(1, SeqCst);
            r
        }
    };
    let first = std::thread::spawn(call(returned.clone()));
    while in_hook.load(SeqCst) == 0 {
        std::thread::yield_now();
    }
    let second = std::thread::spawn(call(returned.clone()));
    std::thread::sleep(Duration::from_millis(200));
    let early = returned.load(SeqCst);
    *release.0.lock().unwrap() = true;
    release.1.notify_all();
    assert_eq!(first.join().unwrap(), 2);
    assert_eq!(second.join().unwrap(), 2);
    assert_eq!(early, 0, "a call reached the body while the hook ran");
    assert_eq!(in_hook.load(SeqCst), 2, "both callers ran the hook");
    s.end();
}
