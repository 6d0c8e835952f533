//! Lazy compilation, hot swap and freeing, under concurrency; errors that
//! cranelift-jit would panic on. The tests run one at a time
//! ([`common::serial`]): two of them check that freed code is unmapped,
//! which another test's allocation could map again meanwhile.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};

use cranelift_codegen::ir::{self, InstBuilder};
use cranelift_module::{Linkage, Module};
use kiln_cranelift::{Error, KilnModule};

use common::{affine, define_affine, function, mapped_executable, sig_i64};

type I64Fn = extern "C" fn(i64) -> i64;

/// The function at `ptr`.
///
/// # Safety
/// `ptr` is finalized code of `(i64) -> i64`, mapped while it is called.
unsafe fn as_fn(ptr: *const u8) -> I64Fn {
    // SAFETY: the caller's contract.
    unsafe { std::mem::transmute::<*const u8, I64Fn>(ptr) }
}

#[test]
fn a_lazy_function_compiles_once_for_64_first_callers() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let helper = define_affine(&mut module, "helper", 1, 1000);
    let compiles = Arc::new(AtomicUsize::new(0));
    let sig = sig_i64(&module);
    let counted = compiles.clone();
    let config = module.target_config();
    let lazy_sig = sig.clone();
    let id = module
        .declare_lazy_function("lazy_sq", Linkage::Export, &sig, move |cx| {
            counted.fetch_add(1, SeqCst);
            let id = cx.func_id();
            Ok(function(
                config,
                lazy_sig,
                id,
                &[helper],
                |c, f| cx.declare_func_in_func(c, f),
                |b, x, refs| {
                    let sq = b.ins().imul(x, x);
                    let call = b.ins().call(refs[0], &[sq]);
                    b.inst_results(call)[0]
                },
            ))
        })
        .unwrap();
    module.finalize_definitions().unwrap();
    assert_eq!(
        compiles.load(SeqCst),
        0,
        "declaring and finalizing compile nothing"
    );
    // SAFETY: `lazy_sq` is `(i64) -> i64`; the module outlives the threads.
    let f = unsafe { as_fn(module.get_finalized_function(id)) };
    let barrier = Arc::new(Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                f(t)
            })
        })
        .collect();
    for (t, th) in threads.into_iter().enumerate() {
        let t = t as i64;
        assert_eq!(th.join().unwrap(), t * t + 1000);
    }
    assert_eq!(compiles.load(SeqCst), 1, "compiled exactly once");
    // SAFETY: no thread runs the module's code any more.
    unsafe { module.free_memory() };
}

#[test]
fn eager_code_calls_a_lazy_function_that_calls_it_back() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let sig = sig_i64(&module);
    let config = module.target_config();
    // even(x) = x == 0 ? 1 : odd(x - 1); odd is lazy and calls even.
    let even = module
        .declare_function("even", Linkage::Export, &sig)
        .unwrap();
    let lazy_sig = sig.clone();
    let odd = module
        .declare_lazy_function("odd", Linkage::Export, &sig, move |cx| {
            let id = cx.func_id();
            Ok(function(
                config,
                lazy_sig,
                id,
                &[even],
                |c, f| cx.declare_func_in_func(c, f),
                |b, x, refs| parity_body(b, x, refs[0], 0),
            ))
        })
        .unwrap();
    let odd_ref = |c, f: &mut _| module.declare_func_in_func(c, f);
    let func = function(config, sig, even, &[odd], odd_ref, |b, x, refs| {
        parity_body(b, x, refs[0], 1)
    });
    let mut ctx = cranelift_codegen::Context::for_function(func);
    module.define_function(even, &mut ctx).unwrap();
    module.finalize_definitions().unwrap();
    // `even` calls `odd`'s entry, Ready before the batch: placed directly.
    assert_eq!(module.jit().layer().stats().1, 0, "nothing linked yet");
    // SAFETY: both are `(i64) -> i64`.
    let (even, odd) = unsafe {
        (
            as_fn(module.get_finalized_function(even)),
            as_fn(module.get_finalized_function(odd)),
        )
    };
    assert_eq!((even(10), even(7), odd(7), odd(4)), (1, 0, 1, 0));
    // SAFETY: nothing runs the module's code any more.
    unsafe { module.free_memory() };
}

/// `x == 0 ? at_zero : other(x - 1)`, without branches: `select`.
fn parity_body(
    b: &mut cranelift_frontend::FunctionBuilder<'_>,
    x: cranelift_codegen::ir::Value,
    other: cranelift_codegen::ir::FuncRef,
    at_zero: i64,
) -> cranelift_codegen::ir::Value {
    use cranelift_codegen::ir::{condcodes::IntCC, types};
    let zero_block = b.create_block();
    let rec_block = b.create_block();
    let done = b.create_block();
    b.append_block_param(done, types::I64);
    let is_zero = b.ins().icmp_imm_s(IntCC::Equal, x, 0);
    b.ins().brif(is_zero, zero_block, &[], rec_block, &[]);
    b.switch_to_block(zero_block);
    let v = b.ins().iconst(types::I64, at_zero);
    b.ins().jump(done, &[v.into()]);
    b.switch_to_block(rec_block);
    let prev = b.ins().iadd_imm_s(x, -1);
    let call = b.ins().call(other, &[prev]);
    let r = b.inst_results(call)[0];
    b.ins().jump(done, &[r.into()]);
    b.switch_to_block(done);
    b.block_params(done)[0]
}

#[test]
fn hot_swap_while_eight_threads_call() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let sig = sig_i64(&module);
    let config = module.target_config();
    let lazy_sig = sig.clone();
    let f = module
        .declare_lazy_function("version", Linkage::Export, &sig, move |cx| {
            Ok(function(
                config,
                lazy_sig,
                cx.func_id(),
                &[],
                |_, _| unreachable!(),
                |b, x, _| affine(b, x, 0, 1),
            ))
        })
        .unwrap();
    // An eager caller reaches the function through its entry: it sees swaps.
    let caller = module
        .declare_function("caller", Linkage::Export, &sig)
        .unwrap();
    let func = function(
        config,
        sig.clone(),
        caller,
        &[f],
        |c, g| module.declare_func_in_func(c, g),
        |b, x, refs| {
            let call = b.ins().call(refs[0], &[x]);
            b.inst_results(call)[0]
        },
    );
    module
        .define_function(caller, &mut cranelift_codegen::Context::for_function(func))
        .unwrap();
    module.finalize_definitions().unwrap();
    // SAFETY: `(i64) -> i64`; old bodies stay mapped while the module lives.
    let (direct, through) = unsafe {
        (
            as_fn(module.get_finalized_function(f)),
            as_fn(module.get_finalized_function(caller)),
        )
    };
    const VERSIONS: i64 = 20;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(SeqCst) {
                    let v = if t % 2 == 0 { direct(0) } else { through(0) };
                    assert!(
                        (1..=VERSIONS).contains(&v),
                        "a call ran a body that never was: {v}"
                    );
                    seen.push(v);
                }
                seen
            })
        })
        .collect();
    for v in 2..=VERSIONS {
        let func = function(
            config,
            sig.clone(),
            f,
            &[],
            |_, _| unreachable!(),
            |b, x, _| affine(b, x, 0, v),
        );
        module.replace_function(f, func).unwrap();
        assert_eq!(
            direct(0),
            v,
            "after replace_function returns, calls run the new body"
        );
        assert_eq!(through(0), v, "callers through the entry too");
    }
    stop.store(true, SeqCst);
    for th in threads {
        th.join().unwrap();
    }
    // SAFETY: no thread runs the module's code any more.
    unsafe { module.free_memory() };
}

#[test]
fn only_lazy_functions_can_be_replaced() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let id = define_affine(&mut module, "eager", 1, 0);
    module.finalize_definitions().unwrap();
    let sig = sig_i64(&module);
    let func = function(
        module.target_config(),
        sig,
        id,
        &[],
        |_, _| unreachable!(),
        |b, x, _| affine(b, x, 2, 0),
    );
    let err = module.replace_function(id, func).unwrap_err();
    assert!(matches!(err, Error::NotSwappable { .. }), "{err:?}");
}

#[test]
fn freeing_a_group_releases_its_code_and_the_names_can_be_defined_again() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let keep = define_affine(&mut module, "keep", 1, 1);
    let group = module.new_group().unwrap();
    module.set_group(Some(group));
    let ids: Vec<_> = (0..200)
        .map(|i| define_affine(&mut module, &format!("tmp{i}"), 2, i))
        .collect();
    module.set_group(None);
    module.finalize_definitions().unwrap();
    // Both batches placed directly: the group's memory is the tracker's.
    assert_eq!(module.jit().layer().stats().1, 0, "nothing linked");
    // SAFETY: finalized `(i64) -> i64`.
    let keep_fn = unsafe { as_fn(module.get_finalized_function(keep)) };
    let first = module.get_finalized_function(ids[0]) as u64;
    // SAFETY: finalized `(i64) -> i64`.
    let f = unsafe { as_fn(module.get_finalized_function(ids[7])) };
    assert_eq!(f(10), 27);
    assert!(mapped_executable(first));
    // Another thread keeps calling code outside the group meanwhile.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (called, first_call) = std::sync::mpsc::channel();
    let caller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            loop {
                assert_eq!(keep_fn(5), 6);
                n += 1;
                if n == 1 {
                    called.send(()).unwrap();
                }
                if stop.load(SeqCst) {
                    return n;
                }
            }
        })
    };
    // The free happens while the other thread is calling (not before its
    // first call: on a loaded machine it may not have been scheduled yet).
    first_call.recv().unwrap();
    // SAFETY: nothing runs, or will run, the group's code.
    unsafe { module.free_group(group) }.unwrap();
    assert!(!mapped_executable(first), "the group's code was released");
    assert!(module.try_get_finalized_function(ids[0]).is_err());
    assert!(
        module.jit().address("tmp0").is_err(),
        "its symbols left the JIT"
    );
    // SAFETY: freeing twice is refused, not undefined.
    let again = unsafe { module.free_group(group) };
    assert!(matches!(again, Err(Error::NoGroup(_))));
    // The same ids get new bodies.
    let sig = sig_i64(&module);
    let config = module.target_config();
    let func = function(
        config,
        sig,
        ids[0],
        &[],
        |_, _| unreachable!(),
        |b, x, _| affine(b, x, 3, 0),
    );
    module
        .define_function(ids[0], &mut cranelift_codegen::Context::for_function(func))
        .unwrap();
    module.finalize_definitions().unwrap();
    // SAFETY: finalized `(i64) -> i64`.
    let f = unsafe { as_fn(module.get_finalized_function(ids[0])) };
    assert_eq!(f(5), 15);
    stop.store(true, SeqCst);
    assert!(caller.join().unwrap() > 0);
    // SAFETY: no thread runs the module's code any more.
    unsafe { module.free_memory() };
}

#[test]
fn groups_made_and_freed_while_other_threads_call() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let keep = define_affine(&mut module, "stay", 3, 1);
    module.finalize_definitions().unwrap();
    // SAFETY: finalized `(i64) -> i64`, never freed.
    let stay = unsafe { as_fn(module.get_finalized_function(keep)) };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    assert_eq!(stay(2), 7);
                }
            })
        })
        .collect();
    for round in 0..20 {
        let group = module.new_group().unwrap();
        module.set_group(Some(group));
        let id = define_affine(&mut module, &format!("round{round}"), 1, round);
        module.set_group(None);
        module.finalize_definitions().unwrap();
        // SAFETY: finalized `(i64) -> i64`.
        let f = unsafe { as_fn(module.get_finalized_function(id)) };
        assert_eq!(f(1), 1 + round);
        // SAFETY: only this thread ran the group's code, and is done.
        unsafe { module.free_group(group) }.unwrap();
    }
    stop.store(true, SeqCst);
    for c in callers {
        c.join().unwrap();
    }
    // SAFETY: no thread runs the module's code any more.
    unsafe { module.free_memory() };
}

#[test]
fn many_threads_define_at_once() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let sig = sig_i64(&module);
    let config = module.target_config();
    let ids: Vec<_> = (0..400)
        .map(|i| {
            module
                .declare_function(&format!("par{i}"), Linkage::Export, &sig)
                .unwrap()
        })
        .collect();
    let shared = Arc::new(module);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (shared, ids, sig) = (shared.clone(), ids.clone(), sig.clone());
            std::thread::spawn(move || {
                for i in (t..ids.len()).step_by(4) {
                    let func = function(
                        config,
                        sig.clone(),
                        ids[i],
                        &[],
                        |_, _| unreachable!(),
                        |b, x, _| affine(b, x, 1, i as i64),
                    );
                    let mut ctx = cranelift_codegen::Context::for_function(func);
                    let mut cp = Default::default();
                    shared
                        .define_function_shared(ids[i], &mut ctx, &mut cp)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut module = Arc::into_inner(shared).unwrap();
    module.finalize_definitions().unwrap();
    for (i, &id) in ids.iter().enumerate() {
        // SAFETY: finalized `(i64) -> i64`.
        let f = unsafe { as_fn(module.get_finalized_function(id)) };
        assert_eq!(f(1), 1 + i as i64);
    }
    let dup = function(
        config,
        sig,
        ids[0],
        &[],
        |_, _| unreachable!(),
        |b, x, _| affine(b, x, 1, 0),
    );
    let err = module.define_function_shared(
        ids[0],
        &mut cranelift_codegen::Context::for_function(dup),
        &mut Default::default(),
    );
    assert!(err.is_err(), "a second definition is refused");
    // SAFETY: no thread runs the module's code any more.
    unsafe { module.free_memory() };
}

#[test]
fn a_missing_import_is_an_error_naming_it() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let sig = sig_i64(&module);
    let missing = module
        .declare_function("no_such_function_anywhere", Linkage::Import, &sig)
        .unwrap();
    let user = module
        .declare_function("user", Linkage::Export, &sig)
        .unwrap();
    let config = module.target_config();
    let func = function(
        config,
        sig,
        user,
        &[missing],
        |c, f| module.declare_func_in_func(c, f),
        |b, x, refs| {
            let call = b.ins().call(refs[0], &[x]);
            b.inst_results(call)[0]
        },
    );
    module
        .define_function(user, &mut cranelift_codegen::Context::for_function(func))
        .unwrap();
    let err = module.finalize_definitions().unwrap_err();
    assert!(
        err.to_string().contains("no_such_function_anywhere"),
        "{err}"
    );
    assert!(module.try_get_finalized_function(user).is_err());
}

#[test]
fn a_failing_lazy_callback_fails_only_that_function() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let sig = sig_i64(&module);
    let bad = module
        .declare_lazy_function("bad", Linkage::Export, &sig, |_| {
            Err("no source for bad".into())
        })
        .unwrap();
    let good = define_affine(&mut module, "good", 2, 0);
    module.finalize_definitions().unwrap();
    // SAFETY: finalized `(i64) -> i64`.
    assert_eq!(unsafe { as_fn(module.get_finalized_function(good)) }(4), 8);
    assert!(
        module.try_get_finalized_function(bad).is_ok(),
        "its entry exists"
    );
    let body = module.jit().session().intern("bad.kiln.v0");
    let bodies = module.jit().bodies().unwrap();
    let order = kiln_engine::SearchOrder::new().with(bodies, kiln_engine::DylibLookup::All);
    let err = module
        .jit()
        .session()
        .lookup(
            &order,
            &kiln_engine::LookupSet::required([body]),
            kiln_engine::RequiredState::Ready,
        )
        .wait()
        .unwrap_err();
    assert!(format!("{err}").contains("no source for bad"), "{err}");
}

#[test]
fn lazy_bodies_and_replacements_link_as_pic_code() {
    let _serial = common::serial();
    let mut module = common::kiln(true);
    let helper = define_affine(&mut module, "pic_helper", 2, 1);
    let sig = sig_i64(&module);
    let config = module.target_config();
    let lazy_sig = sig.clone();
    let id = module
        .declare_lazy_function("pic_lazy", Linkage::Export, &sig, move |cx| {
            let id = cx.func_id();
            let declare = |c, f: &mut _| cx.declare_func_in_func(c, f);
            Ok(function(
                config,
                lazy_sig,
                id,
                &[helper],
                declare,
                |b, x, refs| {
                    let call = b.ins().call(refs[0], &[x]);
                    b.inst_results(call)[0]
                },
            ))
        })
        .unwrap();
    module.finalize_definitions().unwrap();
    // SAFETY: finalized `(i64) -> i64`; old bodies stay mapped.
    let f = unsafe { as_fn(module.get_finalized_function(id)) };
    assert_eq!(f(10), 21);
    let helper_ref = |c, g: &mut _| module.declare_func_in_func(c, g);
    let func = function(config, sig, id, &[helper], helper_ref, |b, x, refs| {
        let call = b.ins().call(refs[0], &[x]);
        let y = b.inst_results(call)[0];
        b.ins().iadd_imm_s(y, 100)
    });
    module.replace_function(id, func).unwrap();
    assert_eq!(f(10), 121);
    // SAFETY: no thread runs the module's code any more.
    unsafe { module.free_memory() };
}

/// Compiles `func` alone and defines function `id` from its bytes and
/// relocations (`define_function_bytes`: the staged path, as W9 does).
fn define_from_bytes(module: &mut KilnModule, id: cranelift_module::FuncId, func: ir::Function) {
    let mut ctx = cranelift_codegen::Context::for_function(func);
    let mut plane = cranelift_control::ControlPlane::default();
    ctx.compile(module.isa(), &mut plane).unwrap();
    let compiled = ctx.compiled_code().unwrap();
    let bytes = compiled.code_buffer().to_vec();
    let relocs: Vec<_> = (compiled.buffer.relocs().iter())
        .map(|r| cranelift_module::ModuleReloc::from_mach_reloc(r, &ctx.func, id))
        .collect();
    let align = u64::from(compiled.buffer.alignment);
    module
        .define_function_bytes(id, align, &bytes, &relocs)
        .unwrap();
}

/// Code defined from bytes is copied into code memory of its group's own
/// (the stage's chunks) and fixed up there: freeing the group unmaps its
/// code and leaves the rest — which its code called — mapped and callable.
#[test]
fn freeing_a_group_releases_code_defined_from_bytes() {
    let _serial = common::serial();
    let mut module = common::kiln(false);
    let sig = sig_i64(&module);
    let config = module.target_config();
    let keep = module
        .declare_function("keep", Linkage::Export, &sig)
        .unwrap();
    let func = function(
        config,
        sig.clone(),
        keep,
        &[],
        |_, _| unreachable!(),
        |b, x, _| affine(b, x, 1, 1),
    );
    define_from_bytes(&mut module, keep, func);
    let group = module.new_group().unwrap();
    module.set_group(Some(group));
    let mut ids = Vec::new();
    for i in 0..300 {
        let id = module
            .declare_function(&format!("b{i}"), Linkage::Export, &sig)
            .unwrap();
        // b_i(x) = keep(x) * 2 + i: a call to code outside the group.
        let func = function(
            config,
            sig.clone(),
            id,
            &[keep],
            |callee, f| module.declare_func_in_func(callee, f),
            |b, x, refs| {
                let call = b.ins().call(refs[0], &[x]);
                let y = b.inst_results(call)[0];
                affine(b, y, 2, i)
            },
        );
        define_from_bytes(&mut module, id, func);
        ids.push(id);
    }
    module.set_group(None);
    module.finalize_definitions().unwrap();
    assert_eq!(module.jit().layer().stats().1, 0, "nothing linked");
    // SAFETY: finalized `(i64) -> i64`.
    let f = unsafe { as_fn(module.get_finalized_function(ids[299])) };
    assert_eq!(f(10), (10 + 1) * 2 + 299);
    let first = module.get_finalized_function(ids[0]) as u64;
    let last = module.get_finalized_function(ids[299]) as u64;
    let kept = module.get_finalized_function(keep);
    assert!(mapped_executable(first) && mapped_executable(last));
    // SAFETY: nothing runs, or will run, the group's code.
    unsafe { module.free_group(group) }.unwrap();
    assert!(
        !mapped_executable(first),
        "the group's first chunk was released"
    );
    assert!(
        !mapped_executable(last),
        "the group's last chunk was released"
    );
    assert!(
        mapped_executable(kept as u64),
        "code outside the group stays"
    );
    // SAFETY: finalized `(i64) -> i64`, outside the freed group.
    let keep_fn = unsafe { as_fn(kept) };
    assert_eq!(keep_fn(5), 6);
    // SAFETY: no thread runs the module's code any more.
    unsafe { module.free_memory() };
}
