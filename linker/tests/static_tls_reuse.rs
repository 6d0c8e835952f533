//! kiln's static TLS area gives the range of a removed module to a new one
//! once every live thread is attached (each copy of the range is zeroed
//! then), and not while a thread kiln cannot reach is alive: a long-lived
//! host that links initial-exec/local-exec thread-locals again and again
//! does not run out. In a process of its own: the area is one for the
//! process, and every other thread would count as unattached.

mod common;

use kiln_linker::runtime::tls::{self, TlsModule, TlsPlacement};

/// This thread's bytes of the variable at `offset..offset + len` of `m`.
fn bytes(m: &TlsModule, len: usize) -> Vec<u8> {
    let at = m.address(0);
    // SAFETY: a static module's block lies in this thread's static TLS at
    // its thread-pointer offset, `len` bytes of it.
    unsafe { std::slice::from_raw_parts(at, len) }.to_vec()
}

#[test]
fn a_removed_modules_static_range_is_reused_only_when_every_thread_is_attached() {
    tls::static_tls_status().expect("kiln's static TLS area exists in a test binary");
    tls::attach_current_thread();
    const SIZE: usize = 1024;
    // Fill the area.
    let mut modules = Vec::new();
    while let Ok(m) = TlsModule::new("fill", SIZE, 8, TlsPlacement::Static) {
        modules.push(m);
    }
    assert!(modules.len() >= 8, "the area holds a few 1 KiB modules");
    let first = modules.swap_remove(0);
    first.initialize(&[7; SIZE]).expect("initial values");
    assert_eq!(bytes(&first, SIZE), vec![7; SIZE]);
    // This thread writes its own values, as code would.
    // SAFETY: this thread's instance of the module's block.
    unsafe { std::ptr::write_bytes(first.address(0), 0x55, SIZE) };
    let old_offset = first.tp_offset();
    drop(first);

    // A thread kiln cannot reach holds (or may hold) the old values: no reuse.
    let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let stranger = std::thread::spawn(move || {
        parked_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    parked_rx.recv().unwrap();
    assert!(!tls::unattached_threads().is_empty());
    assert!(
        TlsModule::new("blocked", SIZE, 8, TlsPlacement::Static).is_err(),
        "reused while an unattached thread lives"
    );
    go_tx.send(()).unwrap();
    stranger.join().unwrap();

    // Every live thread attached: the range comes back, zero in this
    // thread, and the new module's initial values reach old and new threads.
    let again = TlsModule::new("again", SIZE, 8, TlsPlacement::Static).expect("the range reused");
    assert_eq!(again.tp_offset(), old_offset);
    assert_eq!(bytes(&again, SIZE), vec![0; SIZE], "zeroed in this thread");
    let mut init = vec![0u8; SIZE];
    init[..4].copy_from_slice(&[1, 2, 3, 4]);
    again.initialize(&init).expect("initial values");
    assert_eq!(bytes(&again, SIZE), init);
    let seen = std::thread::scope(|s| s.spawn(|| bytes(&again, SIZE)).join().unwrap());
    assert_eq!(
        seen, init,
        "a thread created after sees the new initial values"
    );
    let attached = std::thread::scope(|s| {
        s.spawn(|| {
            tls::attach_current_thread();
            bytes(&again, SIZE)
        })
        .join()
        .unwrap()
    });
    assert_eq!(attached, init, "attaching replays nothing older over them");

    // Two neighbours retired apart serve a module of both their sizes.
    // (The fill was bump-allocated: in offset order, each next to the last.)
    modules.sort_by_key(|m| m.tp_offset());
    let pair: Vec<TlsModule> = modules.drain(..2).collect();
    assert_eq!(
        pair[0]
            .tp_offset()
            .unwrap()
            .abs_diff(pair[1].tp_offset().unwrap()),
        SIZE as u64
    );
    drop(pair);
    let both = TlsModule::new("both", 2 * SIZE, 8, TlsPlacement::Static);
    assert!(both.is_ok(), "coalesced neighbours");
    drop((again, modules));
    jit_cycles_keep_linking_local_exec_thread_locals();
}

/// A host that adds, calls and removes a local-exec object with a 4 KiB
/// thread-local many times over (40 × 4 KiB, the area is 32 KiB): each
/// cycle links, as the JIT's workers are attached from their start and
/// the calling thread by `Jit::get`.
fn jit_cycles_keep_linking_local_exec_thread_locals() {
    let dir = common::scratch("static-tls-reuse");
    let src = "__thread int counts[1024] = { 5 };
               int bump(int i) { counts[i & 1023] += 1; return counts[i & 1023]; }
";
    let o = common::compile_c_text(&dir, "cycle", src, &["-O2"]);
    let bytes = std::fs::read(o).expect("read object");
    let jit = kiln_linker::Jit::builder()
        .threads(2)
        .build()
        .expect("a JIT");
    for cycle in 0..40 {
        let tracker = jit.tracker().unwrap();
        tracker.add_object_named("cycle.o", &bytes).unwrap();
        // SAFETY: `int bump(int)`.
        let bump = unsafe { tracker.get::<extern "C" fn(i32) -> i32>("bump") }
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert_eq!(bump(0), 6, "cycle {cycle}: the initial value, plus one");
        assert_eq!(bump(1), 1, "cycle {cycle}: zero, plus one");
        drop(bump);
        // SAFETY: no handle is left; nothing calls the code any more.
        unsafe { jit.remove(&tracker) }.unwrap();
    }
}
