//! The crate's shared test kit.
#![allow(dead_code, reason = "each test file uses part of the kit")]

#[allow(
    unreachable_pub,
    reason = "shared with the W9 bench, which uses it as a module of its own"
)]
pub mod program;

use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::default_libcall_names;
use kiln_cranelift::{KilnBuilder, KilnModule};

/// A cranelift-jit module with `host_mix`.
pub(crate) fn cranelift_jit() -> JITModule {
    let mut builder = JITBuilder::new(default_libcall_names()).expect("JITBuilder");
    builder.symbol("host_mix", program::host_mix as *const u8);
    JITModule::new(builder)
}

/// A kiln-cranelift module with `host_mix` (`pic`: `is_pic = true`).
pub(crate) fn kiln(pic: bool) -> KilnModule {
    let flags: &[(&str, &str)] = if pic { &[("is_pic", "true")] } else { &[] };
    let mut builder = KilnBuilder::with_flags(flags, default_libcall_names()).expect("builder");
    builder
        .symbol("host_mix", program::host_mix as *const u8)
        .threads(2);
    builder.build().expect("KilnModule")
}

use cranelift_codegen::ir::{self, AbiParam, InstBuilder, UserFuncName, types};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Module};

/// `(i64) -> i64`.
pub(crate) fn sig_i64(module: &impl Module) -> ir::Signature {
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

/// A function of `sig` (one i64 in and out) whose body `body` makes from
/// its argument; `calls` are declared in it first (by `declare`).
pub(crate) fn function(
    config: cranelift_codegen::isa::TargetFrontendConfig,
    sig: ir::Signature,
    id: FuncId,
    calls: &[FuncId],
    mut declare: impl FnMut(FuncId, &mut ir::Function) -> ir::FuncRef,
    body: impl FnOnce(&mut FunctionBuilder<'_>, ir::Value, &[ir::FuncRef]) -> ir::Value,
) -> ir::Function {
    let mut func = ir::Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
    let refs: Vec<_> = calls.iter().map(|&c| declare(c, &mut func)).collect();
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    let x = b.block_params(block)[0];
    let y = body(&mut b, x, &refs);
    b.ins().return_(&[y]);
    b.seal_all_blocks();
    b.finalize(config);
    func
}

/// `x * k + c`.
pub(crate) fn affine(b: &mut FunctionBuilder<'_>, x: ir::Value, k: i64, c: i64) -> ir::Value {
    let y = b.ins().imul_imm_s(x, k);
    b.ins().iadd_imm_s(y, c)
}

/// Declares `name` exported and defines `name(x) = x * k + c` (eagerly,
/// calling nothing).
pub(crate) fn define_affine(module: &mut impl Module, name: &str, k: i64, c: i64) -> FuncId {
    let sig = sig_i64(module);
    let id = module
        .declare_function(name, cranelift_module::Linkage::Export, &sig)
        .unwrap();
    let config = module.target_config();
    let func = function(
        config,
        sig,
        id,
        &[],
        |_, _| unreachable!(),
        |b, x, _| affine(b, x, k, c),
    );
    let mut ctx = cranelift_codegen::Context::for_function(func);
    module.define_function(id, &mut ctx).unwrap();
    id
}

/// Whether `addr` lies in an executable mapping of this process.
/// Serializes the tests of one test binary that check whether memory was
/// unmapped ([`mapped_executable`] after a free): a concurrent test's code
/// allocation may take the freed range over at any moment, so every test of
/// such a binary holds this while it runs.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn mapped_executable(addr: u64) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().any(|l| {
        let mut fields = l.split_whitespace();
        let (range, perms) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let lo = u64::from_str_radix(lo, 16).unwrap_or(u64::MAX);
        let hi = u64::from_str_radix(hi, 16).unwrap_or(0);
        lo <= addr && addr < hi && perms.contains('x')
    })
}
