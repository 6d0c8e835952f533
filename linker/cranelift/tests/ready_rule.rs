//! The direct path (a batch placed and published Ready at once) never makes
//! a symbol Ready before what it calls is: a batch calling a symbol that is
//! not emitted yet is linked instead, and becomes Ready only after it.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cranelift_codegen::ir::InstBuilder;
use cranelift_module::{Linkage, Module};
use kiln_engine::{
    DependenceGroup, MaterializationUnit, Responsibility, SymbolDef, SymbolFlags, SymbolName,
    SymbolState,
};

use common::{define_affine, function, program, sig_i64};

type I64Fn = extern "C" fn(i64) -> i64;

/// A unit defining one symbol that, when materialized, resolves it to
/// `host_mix` and hands its responsibility to the test, which emits it
/// when it chooses.
struct HeldBack {
    name: SymbolName,
    handed: mpsc::Sender<Responsibility>,
}

impl MaterializationUnit for HeldBack {
    fn name(&self) -> &str {
        "held back"
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(
            self.name.clone(),
            SymbolFlags::EXPORTED | SymbolFlags::CALLABLE,
        )]
    }

    fn materialize(self: Box<Self>, r: Responsibility) {
        let flags = SymbolFlags::EXPORTED | SymbolFlags::CALLABLE;
        let def = SymbolDef::new(program::host_mix as *const u8 as u64, flags);
        r.resolve(&[(self.name.clone(), def)]).expect("resolve");
        self.handed.send(r).expect("the test waits for it");
    }
}

/// Waits until `name` in `app` has left the states a link passes through
/// on its own (Lazy, Materializing, Resolved) and returns the state it
/// settled in: Emitted (waiting for a dependency) or Ready (or Failed).
/// No time is asserted: the deadline only turns a hang into a failure.
fn settled(app: &kiln_engine::Dylib, name: &SymbolName) -> Option<SymbolState> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = app.symbol_state(name);
        match state {
            Some(SymbolState::Emitted | SymbolState::Ready | SymbolState::Failed) => {
                return state;
            }
            _ if Instant::now() > deadline => return state,
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

#[test]
fn a_batch_calling_a_symbol_not_yet_emitted_is_not_ready_before_it() {
    let mut module = common::kiln(false);
    let jit_app = module.jit().app().clone();
    let session = module.jit().session().clone();
    let ext = session.intern("held_back");
    let (handed, responsibility) = mpsc::channel();
    jit_app
        .define(HeldBack {
            name: ext.clone(),
            handed,
        })
        .unwrap();
    // user(x) = held_back(x) + 1, in a batch of its own.
    let sig = sig_i64(&module);
    let callee = module
        .declare_function("held_back", Linkage::Import, &sig)
        .unwrap();
    let user = module
        .declare_function("user", Linkage::Export, &sig)
        .unwrap();
    let config = module.target_config();
    let func = function(
        config,
        sig,
        user,
        &[callee],
        |c, f| module.declare_func_in_func(c, f),
        |b, x, refs| {
            let call = b.ins().call(refs[0], &[x]);
            let y = b.inst_results(call)[0];
            b.ins().iadd_imm_s(y, 1)
        },
    );
    module
        .define_function(user, &mut cranelift_codegen::Context::for_function(func))
        .unwrap();
    let finalizing = std::thread::spawn(move || {
        module.finalize_definitions().expect("finalize");
        module
    });
    // `held_back` is resolved (its address known), not emitted.
    let r = responsibility.recv().expect("held_back is materialized");
    let user_name = session.intern("user");
    assert_eq!(
        settled(&jit_app, &user_name),
        Some(SymbolState::Emitted),
        "user must wait for held_back, which is not emitted"
    );
    assert!(!finalizing.is_finished(), "finalize waits for Ready");
    r.emit(vec![DependenceGroup::new([ext], [])]).expect("emit");
    let module = finalizing.join().expect("finalize thread");
    assert_eq!(jit_app.symbol_state(&user_name), Some(SymbolState::Ready));
    // SAFETY: finalized `(i64) -> i64`.
    let f = unsafe { std::mem::transmute::<*const u8, I64Fn>(module.get_finalized_function(user)) };
    assert_eq!(f(5), program::host_mix(5) + 1);
    // SAFETY: nothing runs the module's code any more.
    unsafe { module.free_memory() };
}

#[test]
fn a_name_defined_elsewhere_in_app_is_refused_naming_it() {
    let mut module = common::kiln(false);
    let taken = module.jit().session().intern("taken");
    let def = SymbolDef::new(program::host_mix as *const u8 as u64, SymbolFlags::EXPORTED);
    module.jit().app().define_absolute([(taken, def)]).unwrap();
    let id = define_affine(&mut module, "taken", 1, 2);
    let err = module.finalize_definitions().unwrap_err();
    assert!(err.to_string().contains("taken"), "{err}");
    assert!(module.try_get_finalized_function(id).is_err());
}
