//! x86-64: the reentry paths that cannot return to the JIT'd caller abort
//! the process with a message (no handler installed; a handler that
//! panics). Each case runs in a child process (this test binary re-run with
//! `KILN_ARCH_FATAL_CHILD` set), so no other test's handler interferes.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::process::Command;

mod common;
use common::Jit;

const CHILD_ENV: &str = "KILN_ARCH_FATAL_CHILD";

fn panicking_handler(trampoline: u64) -> u64 {
    panic!("handler refuses trampoline {trampoline:#x}")
}

/// In the child: make a first call through a lazy stub. Never returns
/// normally when the arch code behaves.
fn child(mode: &str) {
    if mode == "panic" {
        kiln_arch::set_reentry_handler(panicking_handler).expect("fresh process");
    }
    let mut jit = Jit::new();
    jit.layout(1, None);
    jit.stub_slot(0)
        .store(jit.trampoline(0), std::sync::atomic::Ordering::Release);
    jit.finalize();
    // SAFETY: the stub leads to the reentry path, which must abort before
    // returning; nothing is ever called with this signature.
    let f: extern "C" fn() -> u64 = unsafe { std::mem::transmute(jit.stub(0) as usize) };
    println!("child returned {}", f());
}

fn run_child(mode: &str) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let out = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "reentry_without_a_usable_handler_aborts",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .output()
        .expect("run child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), out.status.signal(), text)
}

#[test]
fn reentry_without_a_usable_handler_aborts() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child(&mode);
        return;
    }
    for (mode, why) in [
        ("none", "no reentry handler is installed"),
        ("panic", "the reentry handler panicked"),
    ] {
        let (code, signal, text) = run_child(mode);
        assert_eq!(
            signal,
            Some(6),
            "{mode}: want SIGABRT, got code {code:?} signal {signal:?}:\n{text}"
        );
        assert!(
            text.contains("kiln: cannot resolve the call through reentry trampoline"),
            "{mode}:\n{text}"
        );
        assert!(text.contains(why), "{mode}: missing {why:?}:\n{text}");
        assert!(
            !text.contains("child returned"),
            "{mode}: the call returned:\n{text}"
        );
    }
}
