//! x86-64: run the templates for real. Code is written into RW pages, which
//! are then made RX (never W+X); pointer slots live in a separate RW page.
//!
//! - call through a redirectable stub, and redirect it;
//! - redirect while 4 threads call through the stub in a loop;
//! - first calls through a reentry trampoline into the `global_asm!` entry,
//!   with a handler that clobbers every vector register (ymm, zmm, k) and
//!   argument register before returning the implementation, which must see
//!   its `__m256` / `__m512` / integer / stack arguments intact;
//! - every zmm0–31, k0–7 and argument GPR checked on arrival (asm caller and
//!   asm callee), when the CPU has AVX-512F;
//! - 64 threads making the first call at once.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::arch::x86_64::{__m256, __m512};
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use kiln_arch::{Arch, X86_64};

mod common;
use common::{Jit, STUB_OFF};

// ---------------------------------------------------------------------------
// The process-wide reentry handler: a registry of test lazies keyed by
// trampoline address (what kiln's engine does with its managers).

struct Lazy {
    trampoline: u64,
    slot: u64,
    target: u64,
    entries: AtomicUsize,
    /// Hold every resolver until this many threads have entered (or 20 s).
    wait_for: usize,
    clobber: bool,
    /// Redirect the stub (false: every call goes through the reentry path).
    redirect: bool,
}

static LAZIES: Mutex<Vec<Arc<Lazy>>> = Mutex::new(Vec::new());

thread_local! {
    static ENTERED: Cell<usize> = const { Cell::new(0) };
}

extern "C" fn unknown_trampoline() -> u64 {
    u64::MAX
}

fn handler(trampoline: u64) -> u64 {
    let lazy = LAZIES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|l| l.trampoline == trampoline)
        .cloned();
    let Some(lazy) = lazy else {
        return unknown_trampoline as *const () as usize as u64;
    };
    lazy.entries.fetch_add(1, Ordering::SeqCst);
    ENTERED.with(|e| e.set(e.get() + 1));
    if lazy.clobber {
        clobber_everything();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while lazy.entries.load(Ordering::SeqCst) < lazy.wait_for && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    // SAFETY: the registering test keeps the Jit (and so the slot) alive until
    // all its calls returned, then unregisters.
    let slot = unsafe { AtomicU64::from_ptr(lazy.slot as *mut u64) };
    if lazy.redirect {
        X86_64::redirect(slot, lazy.target);
    }
    if lazy.clobber {
        clobber_everything();
    }
    lazy.target
}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| kiln_arch::set_reentry_handler(handler).expect("first install"));
    assert!(
        kiln_arch::set_reentry_handler(handler).is_err(),
        "a second install must fail"
    );
}

struct Registered(Arc<Lazy>);

impl Registered {
    fn new(jit: &Jit, i: usize, target: u64, wait_for: usize, clobber: bool) -> Self {
        Self::with(jit, i, target, |lazy| Lazy {
            wait_for,
            clobber,
            ..lazy
        })
    }

    /// Registers stub `i`'s lazy with the defaults changed by `edit`, and
    /// points the stub at its trampoline.
    fn with(jit: &Jit, i: usize, target: u64, edit: impl FnOnce(Lazy) -> Lazy) -> Self {
        install_handler();
        let lazy = Arc::new(edit(Lazy {
            trampoline: jit.trampoline(i),
            slot: jit.stub_slot(i).as_ptr() as u64,
            target,
            entries: AtomicUsize::new(0),
            wait_for: 1,
            clobber: false,
            redirect: true,
        }));
        LAZIES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(lazy.clone());
        jit.stub_slot(i).store(jit.trampoline(i), Ordering::Release);
        Registered(lazy)
    }

    fn entries(&self) -> usize {
        self.0.entries.load(Ordering::SeqCst)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        LAZIES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|l| !Arc::ptr_eq(l, &self.0));
    }
}

/// Writes garbage into every register the resolver may legally clobber:
/// the argument GPRs, and every vector and mask register the CPU has.
fn clobber_everything() {
    // SAFETY: only writes caller-saved registers, all declared as clobbered.
    unsafe {
        core::arch::asm!(
            "mov rdi, -1", "mov rsi, -1", "mov rdx, -1", "mov rcx, -1",
            "mov r8, -1", "mov r9, -1", "mov r10, -1", "mov r11, -1", "mov rax, -1",
            "pcmpeqd xmm0, xmm0", "pcmpeqd xmm7, xmm7", "pcmpeqd xmm15, xmm15",
            out("rdi") _, out("rsi") _, out("rdx") _, out("rcx") _, out("r8") _, out("r9") _,
            out("r10") _, out("r11") _, out("rax") _,
            out("xmm0") _, out("xmm7") _, out("xmm15") _,
        );
    }
    if is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked above).
        unsafe { clobber_ymm() };
    }
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked above).
        unsafe { clobber_zmm() };
    }
}

#[target_feature(enable = "avx")]
fn clobber_ymm() {
    // SAFETY: writes only ymm registers, all declared clobbered; AVX is enabled.
    unsafe {
        core::arch::asm!(
            "vpcmpeqd ymm0, ymm0, ymm0",
            "vmovdqa ymm1, ymm0", "vmovdqa ymm2, ymm0", "vmovdqa ymm3, ymm0",
            "vmovdqa ymm4, ymm0", "vmovdqa ymm5, ymm0", "vmovdqa ymm6, ymm0", "vmovdqa ymm7, ymm0",
            "vmovdqa ymm8, ymm0", "vmovdqa ymm9, ymm0", "vmovdqa ymm10, ymm0", "vmovdqa ymm11, ymm0",
            "vmovdqa ymm12, ymm0", "vmovdqa ymm13, ymm0", "vmovdqa ymm14, ymm0", "vmovdqa ymm15, ymm0",
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
            out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nomem, nostack),
        );
    }
}

#[target_feature(enable = "avx512f")]
fn clobber_zmm() {
    // SAFETY: writes only zmm and k registers, all declared clobbered; AVX-512F is enabled.
    unsafe {
        core::arch::asm!(
            "vpternlogd zmm0, zmm0, zmm0, 0x5a",
            "vmovdqa64 zmm1, zmm0", "vmovdqa64 zmm2, zmm0", "vmovdqa64 zmm3, zmm0",
            "vmovdqa64 zmm4, zmm0", "vmovdqa64 zmm5, zmm0", "vmovdqa64 zmm6, zmm0", "vmovdqa64 zmm7, zmm0",
            "vmovdqa64 zmm8, zmm0", "vmovdqa64 zmm9, zmm0", "vmovdqa64 zmm10, zmm0", "vmovdqa64 zmm11, zmm0",
            "vmovdqa64 zmm12, zmm0", "vmovdqa64 zmm13, zmm0", "vmovdqa64 zmm14, zmm0", "vmovdqa64 zmm15, zmm0",
            "vmovdqa64 zmm16, zmm0", "vmovdqa64 zmm17, zmm0", "vmovdqa64 zmm18, zmm0", "vmovdqa64 zmm19, zmm0",
            "vmovdqa64 zmm20, zmm0", "vmovdqa64 zmm21, zmm0", "vmovdqa64 zmm22, zmm0", "vmovdqa64 zmm23, zmm0",
            "vmovdqa64 zmm24, zmm0", "vmovdqa64 zmm25, zmm0", "vmovdqa64 zmm26, zmm0", "vmovdqa64 zmm27, zmm0",
            "vmovdqa64 zmm28, zmm0", "vmovdqa64 zmm29, zmm0", "vmovdqa64 zmm30, zmm0", "vmovdqa64 zmm31, zmm0",
            "kxnorw k0, k0, k0", "kxnorw k1, k1, k1", "kxnorw k2, k2, k2", "kxnorw k3, k3, k3",
            "kxnorw k4, k4, k4", "kxnorw k5, k5, k5", "kxnorw k6, k6, k6", "kxnorw k7, k7, k7",
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
            out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
            out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _,
            out("zmm30") _, out("zmm31") _,
            out("k0") _, out("k1") _, out("k2") _, out("k3") _, out("k4") _, out("k5") _, out("k6") _, out("k7") _,
            options(nomem, nostack),
        );
    }
}

// ---------------------------------------------------------------------------
// Bodies.

extern "C" fn add_one(x: u64) -> u64 {
    x + 1
}
extern "C" fn times_two(x: u64) -> u64 {
    x * 2
}
extern "C" fn body_old() -> u64 {
    0x01d
}
extern "C" fn body_new() -> u64 {
    0x2e3
}

fn call1(addr: u64, x: u64) -> u64 {
    // SAFETY: `addr` is a stub whose slot holds an `extern "C" fn(u64) -> u64`.
    let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(addr as usize) };
    f(x)
}

fn call0(addr: u64) -> u64 {
    // SAFETY: `addr` is a stub whose slot holds an `extern "C" fn() -> u64`.
    let f: extern "C" fn() -> u64 = unsafe { std::mem::transmute(addr as usize) };
    f()
}

/// Lane pattern for argument `arg` of caller `who`: distinct in every 32-bit lane.
fn lane(who: u64, arg: u32, lane: u32) -> u32 {
    0x9e37_79b9u32.wrapping_mul(who as u32 + 1) ^ (arg << 24) ^ (lane << 16) ^ 0x5a5a
}

#[allow(
    improper_ctypes_definitions,
    reason = "System V passes __m256 in ymm registers with AVX: under test"
)]
type Avx256Fn = unsafe extern "C" fn(
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    __m256,
    __m256,
    __m256,
    __m256,
    __m256,
    __m256,
    __m256,
    __m256,
) -> u64;

/// The implementation behind the lazy stub: returns 0 when every argument
/// (6 in registers, 2 on the stack, 8 in ymm0–7) is what caller `a0` passed,
/// else a bitmask of the bad ones.
#[target_feature(enable = "avx")]
#[allow(
    clippy::too_many_arguments,
    reason = "exercises every argument register"
)]
#[allow(
    improper_ctypes_definitions,
    reason = "System V passes __m256 in ymm registers when AVX is enabled: under test"
)]
extern "C" fn avx256_impl(
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
    s6: u64,
    s7: u64,
    v0: __m256,
    v1: __m256,
    v2: __m256,
    v3: __m256,
    v4: __m256,
    v5: __m256,
    v6: __m256,
    v7: __m256,
) -> u64 {
    let who = a0;
    let mut bad = 0u64;
    for (i, &a) in [a1, a2, a3, a4, a5, s6, s7].iter().enumerate() {
        if a != who * 100 + i as u64 + 1 {
            bad |= 1 << i;
        }
    }
    for (i, v) in [v0, v1, v2, v3, v4, v5, v6, v7].into_iter().enumerate() {
        // SAFETY: __m256 and [u32; 8] have the same size; every bit pattern is valid.
        let lanes: [u32; 8] = unsafe { std::mem::transmute(v) };
        if (0..8).any(|l| lanes[l] != lane(who, i as u32, l as u32)) {
            bad |= 1 << (8 + i);
        }
    }
    bad
}

fn m256(who: u64, arg: u32) -> __m256 {
    let lanes: [u32; 8] = std::array::from_fn(|l| lane(who, arg, l as u32));
    // SAFETY: same size, every bit pattern is a valid __m256.
    unsafe { std::mem::transmute(lanes) }
}

#[target_feature(enable = "avx")]
fn call_avx256(addr: u64, who: u64) -> u64 {
    let v: [__m256; 8] = std::array::from_fn(|i| m256(who, i as u32));
    let a = |i: u64| who * 100 + i;
    // SAFETY: `addr` is a stub leading (directly or through the reentry path)
    // to `avx256_impl`, whose signature is Avx256Fn.
    unsafe {
        let f: Avx256Fn = std::mem::transmute(addr as usize);
        f(
            who,
            a(1),
            a(2),
            a(3),
            a(4),
            a(5),
            a(6),
            a(7),
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            v[6],
            v[7],
        )
    }
}

#[allow(
    improper_ctypes_definitions,
    reason = "System V passes __m512 in zmm registers with AVX-512F: under test"
)]
type Avx512Fn = unsafe extern "C" fn(
    u64,
    __m512,
    __m512,
    __m512,
    __m512,
    __m512,
    __m512,
    __m512,
    __m512,
) -> u64;

#[target_feature(enable = "avx512f")]
#[allow(
    clippy::too_many_arguments,
    reason = "exercises every vector argument register"
)]
#[allow(
    improper_ctypes_definitions,
    reason = "System V passes __m512 in zmm registers with AVX-512F: under test"
)]
extern "C" fn avx512_impl(
    who: u64,
    v0: __m512,
    v1: __m512,
    v2: __m512,
    v3: __m512,
    v4: __m512,
    v5: __m512,
    v6: __m512,
    v7: __m512,
) -> u64 {
    let mut bad = 0u64;
    for (i, v) in [v0, v1, v2, v3, v4, v5, v6, v7].into_iter().enumerate() {
        // SAFETY: __m512 and [u32; 16] have the same size; every bit pattern is valid.
        let lanes: [u32; 16] = unsafe { std::mem::transmute(v) };
        if (0..16).any(|l| lanes[l] != lane(who, i as u32, l as u32)) {
            bad |= 1 << i;
        }
    }
    bad
}

#[target_feature(enable = "avx512f")]
fn call_avx512(addr: u64, who: u64) -> u64 {
    let v: [__m512; 8] = std::array::from_fn(|i| {
        let lanes: [u32; 16] = std::array::from_fn(|l| lane(who, i as u32, l as u32));
        // SAFETY: same size, every bit pattern is a valid __m512.
        unsafe { std::mem::transmute::<[u32; 16], __m512>(lanes) }
    });
    // SAFETY: `addr` leads to `avx512_impl`, whose signature is Avx512Fn.
    unsafe {
        let f: Avx512Fn = std::mem::transmute(addr as usize);
        f(who, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])
    }
}

/// A finalized one-stub JIT whose stub is lazy: its first call goes
/// through the trampoline (to the entry block, or straight to `entry`) and a
/// resolver that clobbers what it may, waits for `wait_for` callers, then
/// redirects the stub to `target`.
fn one_lazy(entry: Option<u64>, target: u64, wait_for: usize) -> (Jit, Registered) {
    let mut jit = Jit::new();
    jit.layout(1, entry);
    let lazy = Registered::new(&jit, 0, target, wait_for, true);
    jit.finalize();
    (jit, lazy)
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn call_through_redirectable_stub_then_redirect() {
    let mut jit = Jit::new();
    jit.layout(1, None);
    jit.stub_slot(0)
        .store(add_one as *const () as usize as u64, Ordering::Release);
    jit.finalize();
    assert_eq!(call1(jit.stub(0), 41), 42);
    X86_64::redirect(jit.stub_slot(0), times_two as *const () as usize as u64);
    assert_eq!(call1(jit.stub(0), 41), 82);
    // The raw form, as a linker holding only the slot's address would use it.
    // SAFETY: the slot is live, aligned and only accessed atomically.
    unsafe {
        kiln_arch::redirect_raw(
            jit.stub_slot(0).as_ptr(),
            add_one as *const () as usize as u64,
        )
    };
    assert_eq!(call1(jit.stub(0), 1), 2);
}

#[test]
fn plt_stub_jumps_through_its_got_slot() {
    let mut jit = Jit::new();
    let (stub, got) = (jit.addr(STUB_OFF), jit.data_addr(0x800));
    X86_64::write_plt_stub(&mut jit.code_mut()[STUB_OFF..], stub, got).expect("plt stub");
    let mut entry = [0u8; 8];
    X86_64::write_got_entry(&mut entry, got, times_two as *const () as usize as u64)
        .expect("got entry");
    jit.slot(0x800)
        .store(u64::from_le_bytes(entry), Ordering::Release);
    jit.finalize();
    assert_eq!(call1(stub, 21), 42);
}

#[test]
fn redirect_while_four_threads_call() {
    let mut jit = Jit::new();
    jit.layout(1, None);
    let (old, new) = (
        body_old as *const () as usize as u64,
        body_new as *const () as usize as u64,
    );
    jit.stub_slot(0).store(old, Ordering::Release);
    jit.finalize();
    let stop = AtomicBool::new(false);
    let stub = jit.stub(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (calls, flips) = std::thread::scope(|s| {
        let callers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let (mut seen_old, mut seen_new, mut calls) = (0u64, 0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) || seen_old == 0 || seen_new == 0 {
                        match call0(stub) {
                            0x01d => seen_old += 1,
                            0x2e3 => seen_new += 1,
                            other => {
                                panic!("call through the stub returned {other:#x}: neither body")
                            }
                        }
                        calls += 1;
                        assert!(Instant::now() < deadline, "a caller never saw both bodies");
                    }
                    calls
                })
            })
            .collect();
        let mut flips = 0u64;
        while flips < 20_000 {
            X86_64::redirect(
                jit.stub_slot(0),
                if flips.is_multiple_of(2) { new } else { old },
            );
            flips += 1;
            std::hint::spin_loop();
        }
        stop.store(true, Ordering::Relaxed);
        // Keep flipping until every caller has seen both bodies.
        let calls: u64 = loop {
            if callers.iter().all(|c| c.is_finished()) {
                break callers
                    .into_iter()
                    .map(|c| c.join().expect("caller thread"))
                    .sum();
            }
            X86_64::redirect(
                jit.stub_slot(0),
                if flips.is_multiple_of(2) { new } else { old },
            );
            flips += 1;
            std::thread::yield_now();
        };
        (calls, flips)
    });
    println!("redirect stress: {calls} calls, {flips} redirects, every result old or new");
}

#[test]
fn first_call_through_trampoline_keeps_m256_arguments() {
    if !is_x86_feature_detected!("avx") {
        println!("note: skipped, this CPU has no AVX");
        return;
    }
    let (jit, lazy) = one_lazy(None, avx256_impl as *const () as usize as u64, 1);
    // SAFETY: AVX is available (checked above).
    let bad = unsafe { call_avx256(jit.stub(0), 7) };
    assert_eq!(bad, 0, "arguments corrupted on the first call");
    assert_eq!(lazy.entries(), 1);
    assert_eq!(
        jit.stub_slot(0).load(Ordering::Acquire),
        avx256_impl as *const () as usize as u64
    );
    // Second call: straight to the implementation.
    // SAFETY: AVX is available (checked above); the stub now jumps to
    // `avx256_impl`, which takes the same arguments.
    assert_eq!(unsafe { call_avx256(jit.stub(0), 8) }, 0);
    assert_eq!(
        lazy.entries(),
        1,
        "the resolver ran again after the redirect"
    );
}

#[test]
fn first_call_through_default_asm_entry() {
    if !is_x86_feature_detected!("avx") {
        println!("note: skipped, this CPU has no AVX");
        return;
    }
    // Trampolines pointing straight at the in-process entry (no entry block).
    let entry = kiln_arch::x86_64::reentry_asm_entry_default().expect("XSAVE host");
    let (jit, lazy) = one_lazy(Some(entry), avx256_impl as *const () as usize as u64, 1);
    // SAFETY: AVX is available (checked above).
    assert_eq!(unsafe { call_avx256(jit.stub(0), 3) }, 0);
    assert_eq!(lazy.entries(), 1);
}

#[test]
fn first_call_through_trampoline_keeps_m512_arguments() {
    if !is_x86_feature_detected!("avx512f") {
        println!("note: skipped, this CPU has no AVX-512F");
        return;
    }
    let (jit, lazy) = one_lazy(None, avx512_impl as *const () as usize as u64, 1);
    // SAFETY: AVX-512F is available (checked above).
    let bad = unsafe { call_avx512(jit.stub(0), 11) };
    assert_eq!(bad, 0, "zmm arguments corrupted on the first call");
    assert_eq!(lazy.entries(), 1);
    // SAFETY: AVX-512F is available (checked above); the stub now jumps to
    // `avx512_impl`, which takes the same arguments.
    assert_eq!(unsafe { call_avx512(jit.stub(0), 12) }, 0);
    assert_eq!(lazy.entries(), 1);
}

#[test]
fn sixty_four_threads_make_the_first_call_at_once() {
    if !is_x86_feature_detected!("avx") {
        println!("note: skipped, this CPU has no AVX");
        return;
    }
    const THREADS: usize = 64;
    // Resolvers wait until all 64 have entered, so every thread is counted
    // as arriving before the redirect; none returns before that.
    let (jit, lazy) = one_lazy(None, avx256_impl as *const () as usize as u64, THREADS);
    let stub = jit.stub(0);
    let barrier = Barrier::new(THREADS);
    let entered: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS as u64)
            .map(|who| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    // SAFETY: AVX is available (checked above).
                    let bad = unsafe { call_avx256(stub, who) };
                    assert_eq!(bad, 0, "thread {who}: arguments corrupted (mask {bad:#x})");
                    ENTERED.with(Cell::get)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("caller thread"))
            .sum()
    });
    assert_eq!(
        lazy.entries(),
        THREADS,
        "every thread arriving before the redirect enters the resolver"
    );
    assert_eq!(entered, THREADS, "each thread entered exactly once");
    // After the redirect nobody enters.
    std::thread::scope(|s| {
        for who in 0..8u64 {
            s.spawn(move || {
                // SAFETY: AVX is available (checked above).
                assert_eq!(unsafe { call_avx256(stub, 1000 + who) }, 0);
                assert_eq!(
                    ENTERED.with(Cell::get),
                    0,
                    "entered the resolver after the redirect"
                );
            });
        }
    });
    assert_eq!(lazy.entries(), THREADS);
    println!(
        "64-thread first call: {} resolver entries before the redirect",
        lazy.entries()
    );
}

#[test]
fn independent_lazies_resolve_independently() {
    let mut jit = Jit::new();
    jit.layout(2, None);
    let a = Registered::new(&jit, 0, add_one as *const () as usize as u64, 1, false);
    let b = Registered::new(&jit, 1, times_two as *const () as usize as u64, 1, false);
    jit.finalize();
    assert_eq!(call1(jit.stub(1), 5), 10);
    assert_eq!((a.entries(), b.entries()), (0, 1));
    assert_eq!(call1(jit.stub(0), 5), 6);
    assert_eq!((a.entries(), b.entries()), (1, 1));
}

// ---------------------------------------------------------------------------
// Full register state, checked in asm: the caller loads known values into
// every argument GPR, rax, r10, zmm0–31 and k0–7, calls the lazy stub; the
// callee stores them all on arrival.

#[repr(C, align(64))]
struct State(UnsafeCell<[u64; STATE_WORDS]>);
// SAFETY: written only by the capture stub on the (single) testing thread,
// read after the call returned.
unsafe impl Sync for State {}

/// 8 GPRs, 32 zmm × 8 words, 8 k masks.
const STATE_WORDS: usize = 8 + 32 * 8 + 8;
static CAPTURED: State = State(UnsafeCell::new([0; STATE_WORDS]));

core::arch::global_asm!(
    ".pushsection .text.kiln_arch_test_capture,\"ax\",@progbits",
    ".p2align 4",
    "kiln_arch_test_capture:",
    "mov qword ptr [rip + {cap}], rdi",
    "mov qword ptr [rip + {cap} + 8], rsi",
    "mov qword ptr [rip + {cap} + 16], rdx",
    "mov qword ptr [rip + {cap} + 24], rcx",
    "mov qword ptr [rip + {cap} + 32], r8",
    "mov qword ptr [rip + {cap} + 40], r9",
    "mov qword ptr [rip + {cap} + 48], rax",
    "mov qword ptr [rip + {cap} + 56], r10",
    ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "vmovdqu64 zmmword ptr [rip + {cap} + 64 + 64*\\i], zmm\\i",
    ".endr",
    ".irp i,0,1,2,3,4,5,6,7",
    "kmovw word ptr [rip + {cap} + 64 + 2048 + 8*\\i], k\\i",
    ".endr",
    "mov eax, 0x600d",
    "ret",
    ".popsection",
    cap = sym CAPTURED,
);

#[target_feature(enable = "avx512f")]
fn call_with_full_state(stub: u64, pattern: &[u64; STATE_WORDS]) -> u64 {
    let ret: u64;
    // SAFETY: loads the pattern into caller-saved registers and calls a stub
    // that ends in `kiln_arch_test_capture` (which only writes CAPTURED and
    // rax); every caller-saved register is declared clobbered by clobber_abi.
    unsafe {
        core::arch::asm!(
            ".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
            "vmovdqu64 zmm\\i, zmmword ptr [{pat} + 64 + 64*\\i]",
            ".endr",
            ".irp i,0,1,2,3,4,5,6,7",
            "kmovw k\\i, word ptr [{pat} + 64 + 2048 + 8*\\i]",
            ".endr",
            "call {f}",
            pat = in(reg) pattern.as_ptr(),
            f = in(reg) stub,
            in("rdi") pattern[0], in("rsi") pattern[1], in("rdx") pattern[2], in("rcx") pattern[3],
            in("r8") pattern[4], in("r9") pattern[5], inout("rax") pattern[6] => ret, in("r10") pattern[7],
            clobber_abi("C"),
        );
    }
    ret
}

unsafe extern "C" {
    fn kiln_arch_test_capture();
}

#[test]
fn full_register_state_survives_the_first_call() {
    if !is_x86_feature_detected!("avx512f") {
        println!("note: skipped, this CPU has no AVX-512F");
        return;
    }
    let (size, mask) = kiln_arch::x86_64::xsave_layout().expect("XSAVE host");
    assert!(size >= 576 && size % 64 == 0, "xsave area {size}");
    assert_eq!(
        mask & 0xe7,
        0xe7,
        "XCR0 {mask:#x} lacks x87/SSE/AVX/AVX-512 state"
    );
    let (jit, lazy) = one_lazy(None, kiln_arch_test_capture as *const () as usize as u64, 1);
    let mut pattern = [0u64; STATE_WORDS];
    for (i, w) in pattern.iter_mut().enumerate() {
        *w = 0x0123_4567_89ab_cdefu64.rotate_left(i as u32 * 7)
            ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    for k in 0..8 {
        pattern[8 + 256 + k] &= 0xffff; // kmovw: 16-bit masks
    }
    for round in 0..2 {
        // SAFETY: AVX-512F is available (checked above).
        let ret = unsafe { call_with_full_state(jit.stub(0), &pattern) };
        assert_eq!(ret, 0x600d, "round {round}: the capture stub did not run");
        // SAFETY: the call returned; nothing else writes CAPTURED now.
        let got = unsafe { *CAPTURED.0.get() };
        let names = |i: usize| match i {
            0..8 => ["rdi", "rsi", "rdx", "rcx", "r8", "r9", "rax", "r10"][i].to_string(),
            8..264 => format!("zmm{} word {}", (i - 8) / 8, (i - 8) % 8),
            _ => format!("k{}", i - 264),
        };
        let bad: Vec<String> = (0..STATE_WORDS)
            .filter(|&i| got[i] != pattern[i])
            .map(names)
            .collect();
        assert!(
            bad.is_empty(),
            "round {round}: registers changed on the way: {bad:?}"
        );
    }
    assert_eq!(lazy.entries(), 1);
}

/// Costs of the three call paths; run with
/// `cargo test --release -p kiln-arch --test x86_64_run -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn measure_call_costs() {
    let (size, mask) = kiln_arch::x86_64::xsave_layout().expect("XSAVE host");
    println!("xsave area {size} bytes, XCR0 {mask:#x}");
    let mut jit = Jit::new();
    jit.layout(2, None);
    jit.stub_slot(0)
        .store(add_one as *const () as usize as u64, Ordering::Release);
    // Every call through stub 1 re-enters: the handler never redirects.
    let lazy = Registered::with(&jit, 1, add_one as *const () as usize as u64, |l| Lazy {
        redirect: false,
        ..l
    });
    jit.finalize();
    let time = |what: &str, addr: u64, n: u64| {
        let start = Instant::now();
        let mut x = 0;
        for _ in 0..n {
            x = call1(std::hint::black_box(addr), x);
        }
        assert_eq!(x, n);
        let ns = start.elapsed().as_nanos() as f64 / n as f64;
        println!("{what}: {ns:.1} ns/call");
    };
    time(
        "direct call",
        add_one as *const () as usize as u64,
        10_000_000,
    );
    time("through a redirectable stub", jit.stub(0), 10_000_000);
    time(
        "full reentry (trampoline, entry, xsave/xrstor, handler)",
        jit.stub(1),
        200_000,
    );
    assert_eq!(lazy.entries(), 200_000);
}
