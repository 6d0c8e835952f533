//! A module on the in-place dispatcher defines and finalizes megabytes of
//! code without starting a thread (its staged code is not mapped ahead on
//! rayon's threads); with a worker pool, the same code is.

mod common;

use cranelift_module::{Linkage, Module, ModuleReloc};
use kiln_cranelift::{KilnBuilder, KilnModule};

/// `mov rax, rdi; ret`, padded with `int3` to 1 KiB.
fn body() -> Vec<u8> {
    let mut bytes = vec![0x48, 0x89, 0xf8, 0xc3];
    bytes.resize(1024, 0xcc);
    bytes
}

/// This process's threads.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Defines 4,000 functions of 1 KiB (4 MB of staged code), finalizes them
/// and calls the last.
fn define_and_call(mut module: KilnModule) {
    let sig = common::sig_i64(&module);
    let body = body();
    let relocs: &[ModuleReloc] = &[];
    let mut last = None;
    for i in 0..4000 {
        let id = module
            .declare_function(&format!("copy{i}"), Linkage::Export, &sig)
            .unwrap();
        module.define_function_bytes(id, 16, &body, relocs).unwrap();
        last = Some(id);
    }
    module.finalize_definitions().unwrap();
    let f = module.get_finalized_function(last.unwrap());
    // SAFETY: the function's bytes are `mov rax, rdi; ret`: (i64) -> i64.
    let f: extern "C" fn(i64) -> i64 = unsafe { std::mem::transmute(f) };
    assert_eq!(f(7), 7);
}

fn builder() -> KilnBuilder {
    KilnBuilder::new(cranelift_module::default_libcall_names()).unwrap()
}

#[test]
fn an_in_place_module_stages_megabytes_without_a_thread() {
    let before = threads();
    let mut in_place = builder();
    in_place.dispatcher(kiln_engine::InPlaceDispatcher::new());
    define_and_call(in_place.build().unwrap());
    assert_eq!(threads(), before, "the in-place module started threads");

    // With a worker pool of one the staged code is mapped ahead on
    // rayon's threads: what the assertion above would have seen.
    let mut pooled = builder();
    pooled.threads(1);
    define_and_call(pooled.build().unwrap());
    assert!(
        threads() > before + 1,
        "nothing was mapped on rayon's threads: {} threads, {before} before",
        threads()
    );
}
