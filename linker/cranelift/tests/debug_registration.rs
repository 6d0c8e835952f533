//! With a profiler interface switched on, a batch is linked (the link
//! registers its functions), not placed directly: the direct path does not
//! register code, so it leaves such a batch to the link. Its own process:
//! the debug options are a process default.

mod common;

use kiln_linker::DebugOptions;

use common::define_affine;

#[test]
fn with_perf_map_on_a_batch_is_linked_and_its_functions_are_in_the_map() {
    DebugOptions::set_process_default(DebugOptions::NONE.with_perf_map(true));
    let mut module = common::kiln(false);
    let id = define_affine(&mut module, "registered_with_perf", 3, 1);
    module.finalize_definitions().unwrap();
    assert_eq!(module.jit().layer().stats().1, 1, "the batch was linked");
    // SAFETY: finalized `(i64) -> i64`.
    let f = unsafe {
        std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(
            module.get_finalized_function(id),
        )
    };
    assert_eq!(f(2), 7);
    let path = kiln_linker::debug::perf_map_path();
    let map = std::fs::read_to_string(&path).expect("perf map");
    // This process's map only (its name has our pid).
    let _ = std::fs::remove_file(&path);
    assert!(map.contains("registered_with_perf"), "{map}");
    // SAFETY: nothing runs the module's code any more.
    unsafe { module.free_memory() };
}
