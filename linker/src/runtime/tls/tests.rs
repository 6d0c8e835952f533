use super::*;
use std::sync::Barrier;
use std::sync::mpsc;

type GetAddr = unsafe extern "C" fn(*const TlsIndex) -> *mut c_void;

fn get_addr_fn() -> GetAddr {
    let addr = crate::runtime::host_overrides()
        .iter()
        .find(|(n, _)| *n == "__tls_get_addr")
        .map(|(_, a)| *a)
        .unwrap_or(0);
    assert_ne!(addr, 0);
    // SAFETY: the override has exactly this signature.
    unsafe { std::mem::transmute::<usize, GetAddr>(addr) }
}

fn gd(module: &TlsModule, offset: u64) -> *mut u8 {
    let ti = TlsIndex {
        module: module.module_id(),
        offset,
    };
    // SAFETY: a valid tls_index for a registered module.
    unsafe { get_addr_fn()(&ti).cast() }
}

fn read_u64(p: *const u8) -> u64 {
    // SAFETY: callers pass addresses of live 8-byte TLS variables.
    unsafe { p.cast::<u64>().read_unaligned() }
}

fn write_u64(p: *mut u8, v: u64) {
    // SAFETY: callers pass addresses of live 8-byte TLS variables.
    unsafe { p.cast::<u64>().write_unaligned(v) }
}

/// `fs:[tp_offset]`, as initial-exec/local-exec code reads it.
fn read_fs(tp_offset: i64) -> u64 {
    let v: u64;
    // SAFETY: reads this thread's static TLS at an offset kiln reserved.
    unsafe {
        std::arch::asm!("mov {v}, qword ptr fs:[{o}]", v = out(reg) v, o = in(reg) tp_offset, options(nostack, readonly))
    };
    v
}

fn write_fs(tp_offset: i64, v: u64) {
    // SAFETY: writes this thread's static TLS at an offset kiln reserved.
    unsafe {
        std::arch::asm!("mov qword ptr fs:[{o}], {v}", v = in(reg) v, o = in(reg) tp_offset, options(nostack))
    };
}

fn image(a: u64, b: u64) -> Vec<u8> {
    let mut v = a.to_le_bytes().to_vec();
    v.extend_from_slice(&b.to_le_bytes());
    v
}

fn live_blocks(module: &TlsModule) -> usize {
    with_table(|t| {
        t.slots[slot_of(module.module_id())]
            .as_ref()
            .map_or(0, |e| e.blocks.len())
    })
}

#[test]
fn module_ids_are_tagged_and_distinct() {
    let a = TlsModule::new("a", 8, 8, TlsPlacement::Dynamic).unwrap_or_else(|e| panic!("{e}"));
    let b = TlsModule::new("b", 8, 8, TlsPlacement::Dynamic).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.module_id() & TAG_MASK, MODULE_ID_TAG);
    assert_ne!(a.module_id(), b.module_id());
    let old = a.module_id();
    drop(a);
    let c = TlsModule::new("c", 8, 8, TlsPlacement::Dynamic).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(c.module_id(), old, "a reused slot gets a new generation");
    assert!(TlsModule::new("bad", 8, 3, TlsPlacement::Dynamic).is_err());
}

#[test]
fn general_dynamic_blocks_are_per_thread_initialized_and_freed() {
    let m = TlsModule::new("gd.o", 32, 16, TlsPlacement::Dynamic).unwrap_or_else(|e| panic!("{e}"));
    m.initialize(&image(11, 22))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        m.initialize(&image(1, 1)).is_err(),
        "second initialize is refused"
    );
    let threads = 4;
    let barrier = Barrier::new(threads);
    let all_allocated = Barrier::new(threads + 1);
    let checked = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for t in 0..threads as u64 {
            let (m, barrier, all_allocated, checked) = (&m, &barrier, &all_allocated, &checked);
            handles.push(s.spawn(move || {
                let p = gd(m, 0);
                assert_eq!(p as usize % 16, 0, "block honours the alignment");
                assert_eq!(
                    (read_u64(p), read_u64(gd(m, 8)), read_u64(gd(m, 16))),
                    (11, 22, 0)
                );
                write_u64(gd(m, 8), 100 + t);
                write_u64(gd(m, 24), 200 + t);
                barrier.wait(); // every thread has written
                assert_eq!(gd(m, 0), p, "stable address within a thread");
                assert_eq!(read_u64(gd(m, 8)), 100 + t);
                assert_eq!(read_u64(gd(m, 24)), 200 + t);
                assert_eq!(m.address(8), gd(m, 8));
                all_allocated.wait();
                checked.wait();
            }));
        }
        all_allocated.wait();
        assert_eq!(live_blocks(&m), threads);
        checked.wait();
        // A real join (pthread_join) also waits for the TLS destructors.
        for h in handles {
            h.join().unwrap_or_else(|_| panic!("thread panicked"));
        }
    });
    assert_eq!(live_blocks(&m), 0, "thread exit freed every block");
}

#[test]
fn dropping_a_module_frees_blocks_of_live_threads() {
    let m = TlsModule::new("gone.o", 8, 8, TlsPlacement::Dynamic).unwrap_or_else(|e| panic!("{e}"));
    m.initialize(&image(5, 0)[..8])
        .unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let id = m.module_id();
    let t = std::thread::spawn(move || {
        let ti = TlsIndex {
            module: id,
            offset: 0,
        };
        // SAFETY: valid tls_index of a registered module.
        let p = unsafe { get_addr_fn()(&ti) };
        assert_eq!(read_u64(p.cast()), 5);
        ready_tx.send(()).ok();
        rx.recv().ok();
        // exits after the module is gone: must not free the block again
    });
    ready_rx.recv().unwrap_or_else(|_| panic!("thread died"));
    assert_eq!(live_blocks(&m), 1);
    drop(m);
    tx.send(()).ok();
    t.join().unwrap_or_else(|_| panic!("thread panicked"));
}

#[test]
fn foreign_module_ids_go_to_ld_so() {
    // glibc's own tls_index for kiln's reservation in the executable
    // (module 1 is the executable when it has TLS).
    let host = static_area::host().unwrap_or_else(|e| panic!("{e}"));
    let ti = TlsIndex {
        module: 1,
        offset: host.block_offset as u64,
    };
    // SAFETY: a valid glibc tls_index.
    let p = unsafe { get_addr_fn()(&ti) };
    let mine = static_area::own_reservation_for_tests();
    assert_eq!(p as usize, mine);
}

/// Calls a TLSDESC resolver exactly as gnu2-dialect code does, with
/// sentinel values in every caller-saved register, and checks they survive.
fn call_tlsdesc(desc: &[usize; 2]) -> isize {
    let mut rdi = 0x1111_u64;
    let mut rsi = 0x2222_u64;
    let mut rcx = 0x3333_u64;
    let mut rdx = 0x4444_u64;
    let mut r8 = 0x5555_u64;
    let mut r9 = 0x6666_u64;
    let mut r10 = 0x7777_u64;
    let mut r11 = 0x8888_u64;
    let mut x0 = 1.5f64;
    let mut x7 = 7.25f64;
    let mut x15 = -3.0f64;
    let result: isize;
    // SAFETY: `desc` is a descriptor built by TlsModule::tlsdesc; the
    // resolver preserves everything but rax and flags (what this checks).
    unsafe {
        std::arch::asm!(
            "call qword ptr [rax]",
            inout("rax") desc.as_ptr() => result,
            inout("rdi") rdi, inout("rsi") rsi, inout("rcx") rcx, inout("rdx") rdx,
            inout("r8") r8, inout("r9") r9, inout("r10") r10, inout("r11") r11,
            inout("xmm0") x0, inout("xmm7") x7, inout("xmm15") x15,
        );
    }
    assert_eq!((rdi, rsi, rcx, rdx), (0x1111, 0x2222, 0x3333, 0x4444));
    assert_eq!((r8, r9, r10, r11), (0x5555, 0x6666, 0x7777, 0x8888));
    assert_eq!((x0, x7, x15), (1.5, 7.25, -3.0));
    result
}

#[test]
fn tlsdesc_dynamic_resolves_per_thread_and_preserves_registers() {
    let m =
        TlsModule::new("desc.o", 16, 8, TlsPlacement::Dynamic).unwrap_or_else(|e| panic!("{e}"));
    m.initialize(&image(31, 32))
        .unwrap_or_else(|e| panic!("{e}"));
    let d = m.tlsdesc(8).unwrap_or_else(|e| panic!("{e}"));
    let desc = [d.resolver, d.argument];
    assert!(
        desc::fast_path_enabled(),
        "kiln is in the test executable: fast path expected"
    );
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (desc, m) = (&desc, &m);
            s.spawn(move || {
                let first = call_tlsdesc(desc); // slow path: allocates
                let second = call_tlsdesc(desc); // fast path
                assert_eq!(first, second);
                let addr =
                    crate::runtime::thread::thread_pointer().wrapping_add_signed(first) as *mut u8;
                assert_eq!(addr, gd(m, 8));
                assert_eq!(read_u64(addr), 32);
                write_u64(addr, 1000 + t);
                assert_eq!(read_u64(gd(m, 8)), 1000 + t);
            });
        }
    });
}

#[test]
fn static_modules_serve_every_model_in_old_and_new_threads() {
    // A thread that exists before the module and never attaches.
    let (go_tx, go_rx) = mpsc::channel::<i64>();
    let (res_tx, res_rx) = mpsc::channel::<u64>();
    let (tid_tx, tid_rx) = mpsc::channel::<libc::pid_t>();
    let old_unattached = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).ok();
        let off = go_rx.recv().unwrap_or(0);
        res_tx.send(read_fs(off)).ok();
    });
    // A thread that exists before and attaches later.
    let (go2_tx, go2_rx) = mpsc::channel::<i64>();
    let (res2_tx, res2_rx) = mpsc::channel::<(u64, u64)>();
    let old_attached = std::thread::spawn(move || {
        let off = go2_rx.recv().unwrap_or(0);
        let before = read_fs(off);
        attach_current_thread();
        res2_tx.send((before, read_fs(off))).ok();
    });

    let m = TlsModule::new("ie.o", 24, 8, TlsPlacement::Static).unwrap_or_else(|e| panic!("{e}"));
    let zero = TlsModule::new("tbss.o", 8, 8, TlsPlacement::PreferStatic)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(m.is_static() && zero.is_static());
    let tp = m
        .static_tp_offset(8, "x", "ie.o", "R_X86_64_TPOFF32")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(tp < 0 && tp > i64::from(i32::MIN), "fits TPOFF32: {tp}");
    let perms_before = init_image_perms();
    assert!(!perms_before.is_empty());
    m.initialize(&image(41, 42))
        .unwrap_or_else(|e| panic!("{e}"));
    zero.initialize(&[]).unwrap_or_else(|e| panic!("{e}"));
    let ztp = zero.tp_offset().unwrap_or(0);
    assert_eq!(
        init_image_perms(),
        perms_before,
        "the init image's protection is restored"
    );

    // This thread (attached by initialize): every model agrees.
    assert_eq!(read_fs(tp), 42);
    assert_eq!(
        gd(&m, 8) as usize,
        crate::runtime::thread::thread_pointer().wrapping_add_signed(tp as isize)
    );
    let d = m.tlsdesc(8).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(call_tlsdesc(&[d.resolver, d.argument]) as i64, tp);

    // New threads get the initial values from the patched init image.
    std::thread::scope(|s| {
        for t in 0..3u64 {
            s.spawn(move || {
                assert_eq!(read_fs(tp - 8), 41, "thread {t}");
                assert_eq!(read_fs(tp), 42);
                assert_eq!(read_fs(ztp), 0);
                write_fs(tp, 500 + t);
                write_fs(ztp, 600 + t);
                // Attaching later must not clobber what the thread wrote.
                attach_current_thread();
                assert_eq!(read_fs(tp), 500 + t);
                assert_eq!(read_fs(ztp), 600 + t);
            });
        }
    });
    assert_eq!(read_fs(tp), 42, "other threads' writes are private");

    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let unattached = unattached_threads();
    assert!(!unattached.contains(&me), "initialize attached this thread");
    let main_thread = std::process::id() as libc::pid_t;
    assert!(
        !unattached.contains(&main_thread),
        "the main thread attached before main"
    );
    let old_tid = tid_rx.recv().unwrap_or(0);
    assert!(
        unattached.contains(&old_tid),
        "{old_tid} is listed as unattached: {unattached:?}"
    );

    go2_tx.send(tp).ok();
    let (before, after) = res2_rx.recv().unwrap_or((1, 1));
    assert_eq!(
        (before, after),
        (0, 42),
        "an old thread sees the values once attached"
    );
    go_tx.send(ztp).ok();
    assert_eq!(
        res_rx.recv().unwrap_or(1),
        0,
        "zero-initialized TLS is right in every thread"
    );
    old_attached.join().unwrap_or_else(|_| panic!("panicked"));
    old_unattached.join().unwrap_or_else(|_| panic!("panicked"));
}

#[test]
fn static_offsets_of_dynamic_modules_are_named_errors() {
    let m = TlsModule::new("pic.o", 8, 8, TlsPlacement::Dynamic).unwrap_or_else(|e| panic!("{e}"));
    let err = m
        .static_tp_offset(0, "counter", "user.o", "R_X86_64_GOTTPOFF")
        .expect_err("a dynamic module has no static offset")
        .to_string();
    assert!(
        err.contains("counter")
            && err.contains("user.o")
            && err.contains("-fPIC")
            && err.contains("GOTTPOFF"),
        "{err}"
    );
    let big = TlsModule::new("huge.o", 1 << 20, 8, TlsPlacement::Static);
    assert!(big.is_err_and(|e| e.to_string().contains("needs 1048576 bytes")));
    let fallback = TlsModule::new("huge2.o", 1 << 20, 8, TlsPlacement::PreferStatic)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!fallback.is_static());
}

#[test]
fn module_drops_race_thread_exits_without_double_frees() {
    for round in 0..40u64 {
        let m = TlsModule::new("churn.o", 64, 8, TlsPlacement::Dynamic)
            .unwrap_or_else(|e| panic!("{e}"));
        m.initialize(&image(round, 1))
            .unwrap_or_else(|e| panic!("{e}"));
        let id = m.module_id();
        let accessed = std::sync::Arc::new(Barrier::new(5));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let accessed = std::sync::Arc::clone(&accessed);
                std::thread::spawn(move || {
                    let ti = TlsIndex {
                        module: id,
                        offset: 0,
                    };
                    // SAFETY: a valid tls_index; the module lives until every
                    // thread passed the barrier.
                    let p = unsafe { get_addr_fn()(&ti) };
                    assert_eq!(read_u64(p.cast()), round);
                    accessed.wait();
                    // exits (freeing its block) while the module is dropped
                })
            })
            .collect();
        accessed.wait();
        drop(m);
        for h in handles {
            h.join().unwrap_or_else(|_| panic!("thread panicked"));
        }
    }
}

/// Permissions of the mapping holding kiln's reservation in the executable's
/// TLS init image, from /proc/self/maps.
fn init_image_perms() -> String {
    let addr = static_area::init_image_addr_for_tests();
    // Under the area's lock: another test publishing a module makes the
    // page writable for a moment, under that lock.
    let maps = static_area::with_area_locked_for_tests(|| {
        std::fs::read_to_string("/proc/self/maps").unwrap_or_default()
    });
    maps.lines()
        .find_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (lo, hi) = range.split_once('-')?;
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            );
            (lo..hi)
                .contains(&addr)
                .then(|| rest.split(' ').next().unwrap_or("").to_owned())
        })
        .unwrap_or_default()
}

/// A range claimed exactly gets the thread-pointer offset the area says;
/// one that overlaps a range handed out is refused naming it; a range
/// given back unused is claimable again (and zeroed for new threads), a
/// used one never; `reserve` skips claimed ranges.
#[test]
fn static_ranges_are_claimed_exactly_and_never_reused_once_used() {
    let area = static_area::area_tp_offset().expect("kiln is in the test executable");
    // Claim high in the area, far from what other tests reserve.
    let off = static_area::AREA_SIZE - 4096;
    let m = TlsModule::claim_static("claimed", 64, 16, off).expect("free range");
    assert_eq!(m.tp_offset(), Some(area + off as i64));
    assert_eq!(m.static_range(), Some((off, 64)));
    m.initialize(&image(7, 8)).expect("initialize");
    write_fs(area + off as i64, 99);
    assert_eq!(read_fs(area + off as i64), 99);
    match TlsModule::claim_static("again", 16, 16, off + 48) {
        Err(static_area::ClaimError::Taken(t)) => assert_eq!(t, vec![(off, off + 64)]),
        other => panic!("overlap claimed: {other:?}"),
    }
    assert!(matches!(
        TlsModule::claim_static("past the end", 64, 16, static_area::AREA_SIZE - 32),
        Err(static_area::ClaimError::OutOfBounds)
    ));
    // Dropped after use: still taken.
    drop(m);
    assert!(!static_area::overlapping(off, 64).is_empty());
    // Given back unused: claimable again, and a new thread sees zeros.
    let off2 = off + 1024;
    let m = TlsModule::claim_static("unused", 16, 16, off2).expect("free range");
    m.initialize(&image(5, 6)).expect("initialize");
    let tp = area + off2 as i64;
    assert_eq!(std::thread::spawn(move || read_fs(tp)).join().ok(), Some(5));
    m.release_unused();
    assert!(static_area::overlapping(off2, 16).is_empty());
    assert_eq!(std::thread::spawn(move || read_fs(tp)).join().ok(), Some(0));
    let m = TlsModule::claim_static("reloaded", 16, 16, off2).expect("given back");
    m.initialize(&image(3, 4)).expect("initialize");
    assert_eq!(read_fs(tp), 3);
    // A reservation never lands on a claimed range.
    let r = TlsModule::new("bump", 64, 16, TlsPlacement::Static).expect("room");
    let (start, _) = r.static_range().expect("static");
    let overlaps = |a: usize, len: usize| start < a + len && a < start + 64;
    assert!(
        !overlaps(off, 64) && !overlaps(off2, 16),
        "reserved {start:#x} over a claim"
    );
}

/// Every image that binds to one variable of a dynamic module gets the
/// same TLSDESC argument: a module linked against again and again keeps
/// one per variable, not one per binding.
#[test]
fn tlsdesc_arguments_are_one_per_variable() {
    let m =
        TlsModule::new("shared.o", 32, 8, TlsPlacement::Dynamic).unwrap_or_else(|e| panic!("{e}"));
    let args: Vec<usize> = [8, 8, 16, 8]
        .iter()
        .map(|&off| m.tlsdesc(off).unwrap_or_else(|e| panic!("{e}")).argument)
        .collect();
    assert_eq!(args[0], args[1]);
    assert_eq!(args[0], args[3]);
    assert_ne!(args[0], args[2]);
}

/// A thread that has detached (it is running its thread-exit destructors)
/// runs no more JIT'd code: it no longer keeps a retired range from being
/// reused while it finishes exiting (a thread just joined could still be
/// listed; the next link then found the area blocked by it).
#[test]
fn a_detached_thread_still_exiting_does_not_block_reuse() {
    let (detached_tx, detached_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    // A key no live thread of kiln's runtime uses.
    const KEY: u64 = u64::MAX - 7;
    let t = std::thread::spawn(move || {
        static_area::attach(KEY);
        static_area::detach(KEY);
        // SAFETY: gettid has no preconditions.
        detached_tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = exit_rx.recv();
    });
    let tid = detached_rx.recv().unwrap();
    let strangers = static_area::unattached_threads();
    exit_tx.send(()).unwrap();
    t.join().unwrap();
    assert!(
        !strangers.contains(&tid),
        "a detached, exiting thread ({tid}) counted as a stranger: {strangers:?}"
    );
}

/// Threads that come and go by the hundred leave no list behind: the
/// exiting threads kiln remembers are pruned of those gone.
#[test]
fn exiting_threads_are_forgotten_once_gone() {
    for i in 0..300u64 {
        std::thread::spawn(move || {
            static_area::attach(u64::MAX - 1000 - i);
            static_area::detach(u64::MAX - 1000 - i);
        })
        .join()
        .unwrap();
    }
    let left = static_area::exiting_for_tests();
    assert!(
        left < 64 + 8,
        "{left} exiting threads remembered after 300 ended"
    );
}

/// The engine's timer thread (it runs the deadlines of timed lookups, and
/// what they complete) is attached once the static area is in use, so it
/// never blocks the reuse of a retired range.
#[test]
fn the_engines_timer_thread_is_attached() {
    use kiln_engine::{
        AwaitDefinitions, DylibLookup, InPlaceDispatcher, LookupRequest, LookupSet, RequiredState,
        SearchOrder, Session,
    };
    assert!(static_area::host().is_ok(), "kiln's static TLS area");
    let s = Session::builder().dispatcher(InPlaceDispatcher).build();
    let d = s.create_dylib("d").unwrap();
    let request = LookupRequest::new(
        SearchOrder::new().with(&d, DylibLookup::All),
        LookupSet::required([s.intern("never")]),
        RequiredState::Ready,
    )
    .await_definitions(AwaitDefinitions::For(std::time::Duration::from_millis(5)));
    assert!(s.lookup_with(&request).wait().is_err(), "timed out");
    let timer: Vec<libc::pid_t> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let task = task.ok()?;
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            name.starts_with("kiln-timer")
                .then(|| task.file_name().to_str()?.parse().ok())?
        })
        .collect();
    assert_eq!(timer.len(), 1, "the engine's timer thread runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while static_area::unattached_threads().contains(&timer[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the timer thread never attached"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    s.end();
}
