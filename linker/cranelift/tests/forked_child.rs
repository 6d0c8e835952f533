//! A kiln-cranelift module in a forked child: functions finalized before
//! the fork still run, and defining or finalizing more fails at once with
//! an error naming the fork. (Before, it worked in the child when no
//! thread held one of the session's locks at the fork, and waited forever
//! when one did: now the answer does not depend on that timing.)

mod common;

use cranelift_module::{Linkage, Module};
use kiln_engine::message_with_causes;

use common::{affine, define_affine, function, kiln, sig_i64};

#[test]
fn a_forked_child_is_told_it_cannot_define_or_finalize() {
    let mut module = kiln(false);
    let f = define_affine(&mut module, "f", 2, 1);
    module.finalize_definitions().unwrap();
    let ptr = module.get_finalized_function(f);
    // SAFETY: `f` was finalized above as `fn(i64) -> i64`.
    let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(ptr) };
    assert_eq!(f(20), 41);
    // SAFETY: the child runs code finalized before the fork and the
    // module's own calls (the subject of the test), then ends with
    // `_exit`; an alarm ends it if it hangs.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: the child's own alarm.
        unsafe { libc::alarm(10) };
        let mut findings = 0;
        if f(1) != 3 {
            findings |= 1;
        }
        let sig = sig_i64(&module);
        let defined = module
            .declare_function("g", Linkage::Export, &sig)
            .map_err(|e| e.to_string())
            .and_then(|g| {
                let func = function(
                    module.target_config(),
                    sig,
                    g,
                    &[],
                    |_, _| unreachable!(),
                    |b, x, _| affine(b, x, 3, 0),
                );
                let mut ctx = cranelift_codegen::Context::for_function(func);
                module
                    .define_function(g, &mut ctx)
                    .map_err(|e| message_with_causes(&e))
            })
            .and_then(|()| {
                module
                    .finalize_definitions()
                    .map_err(|e| message_with_causes(&e))
            });
        match defined {
            Err(e) if e.contains("forked") => {}
            Err(e) => {
                eprintln!("child: {e}");
                findings |= 2;
            }
            Ok(()) => findings |= 4,
        }
        // SAFETY: ends the child without running the parent's exit
        // handlers.
        unsafe { libc::_exit(findings) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's findings (status {status:#x}; 0 = none, a signal = hung)"
    );
    assert_eq!(f(5), 11, "the parent's module is untouched");
}
