//! A JIT on the in-place dispatcher links on the thread that asks and
//! starts no thread, however large the link (LinkOptions::parallel off),
//! as does the standalone linker saving an image with the option off;
//! with the defaults, the same link spreads over rayon's threads.

mod common;

use common::{in_own_process, scratch};
use kiln_linker::Jit;

/// Functions in the object: more blocks (one section each) and more
/// relocations than the thresholds from which passes go parallel.
const FUNCTIONS: usize = 6000;

/// Two objects, `f{i}` for even `i` in one and odd `i` in the other
/// (calls across them: one batch): `f{i}(x)` is `i` for `x <= 0`, else
/// the sum of four others' at 0. The first also holds 4 MB of data, not
/// zeros (a written run large enough to be mapped in the background,
/// objects large enough to be read on several threads, an image whose
/// segments are hashed beside the writes). Assembly: gcc takes seconds to
/// compile 6,000 C functions.
fn large_objects(dir: &std::path::Path) -> [Vec<u8>; 2] {
    [0, 1].map(|half| {
        let mut src = String::new();
        if half == 0 {
            src.push_str(".data\n.globl table\ntable:\n.fill 500000, 8, 1\n");
        }
        for i in (half..FUNCTIONS).step_by(2) {
            src.push_str(&format!(
                ".section .text.f{i},\"ax\",@progbits\n.globl f{i}\n.type f{i},@function\n\
                 f{i}:\ntest %rdi, %rdi\njle 1f\npush %rbx\nxor %ebx, %ebx\n"
            ));
            for callee in callees(i) {
                src.push_str(&format!(
                    "xor %edi, %edi\ncall f{callee}@PLT\nadd %rax, %rbx\n"
                ));
            }
            src.push_str(&format!(
                "mov %rbx, %rax\npop %rbx\nret\n1:\nmov ${i}, %eax\nret\n"
            ));
        }
        let asm = dir.join(format!("large{half}.s"));
        common::write_atomically(&asm, src.as_bytes());
        let object = common::compile("gcc", &asm, &[], &[], &dir.join(format!("large{half}.o")));
        std::fs::read(object).unwrap()
    })
}

fn callees(i: usize) -> [usize; 4] {
    [1, 7, 101, 2003].map(|k| (i + k) % FUNCTIONS)
}

/// This process's threads.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Links the objects in `jit` (in one call if `together`) and calls
/// `f0(1)`.
fn link_and_call(jit: &Jit, objects: &[Vec<u8>; 2], together: bool) -> i64 {
    if together {
        jit.add_objects(&[("a.o", &objects[0]), ("b.o", &objects[1])])
            .unwrap();
    } else {
        for object in objects {
            jit.add_object(object).unwrap();
        }
    }
    // SAFETY: `f0` is `long f0(long)`, in assembly.
    let f0 = unsafe { jit.get::<extern "C" fn(i64) -> i64>("f0") }.unwrap();
    f0.as_fn()(1)
}

#[test]
fn the_in_place_dispatcher_links_a_large_object_without_a_thread() {
    if !in_own_process("the_in_place_dispatcher_links_a_large_object_without_a_thread") {
        return;
    }
    let objects = large_objects(&scratch("single-thread"));
    let expected: i64 = callees(0).iter().map(|&k| k as i64).sum();
    let before = threads();
    for together in [true, false] {
        let jit = Jit::builder()
            .dispatcher(kiln_engine::InPlaceDispatcher::new())
            .build()
            .unwrap();
        assert_eq!(link_and_call(&jit, &objects, together), expected);
        drop(jit);
        assert_eq!(
            threads(),
            before,
            "the in-place JIT started threads (together: {together})"
        );
    }

    // In imaging mode, through the standalone linker, then saved (build
    // id, classification, the file's hash): on this thread too.
    let mut options = kiln_linker::LinkOptions::default();
    options.imaging = true;
    options.parallel = false;
    let inputs = [("a.o", &objects[0][..]), ("b.o", &objects[1][..])];
    let id = kiln_linker::image_file::BuildId::of_inputs(&options, inputs);
    let mut linker = kiln_linker::Linker::new(options);
    for (name, bytes) in inputs {
        linker.add_object_bytes(name, bytes.to_vec());
    }
    let image = linker.link(&kiln_linker::HostSymbols::new()).unwrap();
    assert!(image.save_image(&id).unwrap().len() > 4_000_000);
    drop(image);
    assert_eq!(
        threads(),
        before,
        "linking and saving an image started threads"
    );

    // The same link with the defaults (one worker) spreads over rayon's
    // threads: what the assertions above would have seen.
    let jit = Jit::builder().threads(1).build().unwrap();
    assert_eq!(link_and_call(&jit, &objects, false), expected);
    let workers = 1;
    assert!(
        threads() > before + workers,
        "a parallel link started no rayon thread: {} threads, {before} before",
        threads()
    );
}
