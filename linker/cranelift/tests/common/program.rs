//! Generated programs for any `cranelift_module::Module`: N functions in M
//! modules (name prefixes) calling each other at random — across modules,
//! in cycles (mutual recursion, bounded by a depth argument) — reading
//! data objects, calling through function pointers stored in data, and
//! calling a host function. Shared by the crate's tests and the W9 bench
//! (`benches/src/w9.rs` includes this file).

use cranelift_codegen::Context;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Signature, types};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};

/// The host function every program may call: `host_mix(x)`.
pub extern "C" fn host_mix(x: i64) -> i64 {
    x.rotate_left(7) ^ 0x9e37
}

/// One generated function: `f(x, d)`.
#[derive(Debug, Clone)]
pub struct FuncSpec {
    pub name: String,
    pub linkage: Linkage,
    pub mul: i64,
    pub add: i64,
    /// Direct callees (indices), called while `d > 0`.
    pub callees: Vec<usize>,
    /// The data object read.
    pub data: usize,
    /// Calls `host_mix`.
    pub host: bool,
    /// Calls through the function pointer in `table[k]`, if some.
    pub indirect: Option<usize>,
}

/// A generated program.
#[derive(Debug, Clone)]
pub struct Program {
    pub funcs: Vec<FuncSpec>,
    /// Values of the data objects `data_k` (i64 each).
    pub data: Vec<i64>,
    /// `table_k` holds the address of function `tables[k]`.
    pub tables: Vec<usize>,
    /// The linkage of the `table_k` data objects.
    pub table_linkage: Linkage,
}

/// A small deterministic generator (xorshift).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `n` functions in `modules` modules (`m<k>_f<i>`; module of function
/// `i` is `i % modules`).
pub fn generate(n: usize, modules: usize, seed: u64) -> Program {
    let mut rng = Rng::new(seed);
    let ndata = (n / 10).max(1);
    let ntables = (n / 50).max(1);
    let mut funcs = Vec::with_capacity(n);
    for i in 0..n {
        let module = i % modules.max(1);
        let mut callees = Vec::new();
        for _ in 0..rng.below(3) {
            callees.push(rng.below(n));
        }
        // Mutual recursion: pairs (2k, 2k+1) call each other.
        if i % 7 == 0 && i + 1 < n {
            callees.push(i + 1);
        } else if i % 7 == 1 {
            callees.push(i - 1);
        }
        funcs.push(FuncSpec {
            name: format!("m{module}_f{i}"),
            linkage: if i % 5 == 4 {
                Linkage::Local
            } else {
                Linkage::Export
            },
            mul: (rng.next() % 1000) as i64 - 500,
            add: (rng.next() % 100_000) as i64,
            callees,
            data: rng.below(ndata),
            host: rng.below(4) == 0,
            indirect: (rng.below(8) == 0).then(|| rng.below(ntables)),
        });
    }
    let data = (0..ndata).map(|_| rng.next() as i64).collect();
    let tables = (0..ntables).map(|_| rng.below(n)).collect();
    Program {
        funcs,
        data,
        tables,
        table_linkage: Linkage::Local,
    }
}

/// What a program's declarations are, in one module.
#[derive(Debug, Clone)]
pub struct Declared {
    pub funcs: Vec<FuncId>,
    pub data: Vec<DataId>,
    pub tables: Vec<DataId>,
    pub host: FuncId,
}

/// The signature of every generated function: `(i64, i64) -> i64`.
pub fn signature<M: Module>(module: &M) -> Signature {
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

/// Declares the program's functions and data in `module`.
pub fn declare<M: Module>(module: &mut M, p: &Program) -> Declared {
    let sig = signature(module);
    let funcs = p
        .funcs
        .iter()
        .map(|f| {
            module
                .declare_function(&f.name, f.linkage, &sig)
                .expect("declare")
        })
        .collect();
    let data = (0..p.data.len())
        .map(|k| {
            let name = format!("data_{k}");
            module
                .declare_data(&name, Linkage::Export, false, false)
                .expect("declare data")
        })
        .collect();
    let tables = (0..p.tables.len())
        .map(|k| {
            let name = format!("table_{k}");
            module
                .declare_data(&name, p.table_linkage, true, false)
                .expect("declare table")
        })
        .collect();
    let mut host_sig = module.make_signature();
    host_sig.params.push(AbiParam::new(types::I64));
    host_sig.returns.push(AbiParam::new(types::I64));
    let host = module
        .declare_function("host_mix", Linkage::Import, &host_sig)
        .expect("declare host_mix");
    Declared {
        funcs,
        data,
        tables,
        host,
    }
}

/// Defines the program's data objects.
pub fn define_data<M: Module>(module: &mut M, p: &Program, d: &Declared) {
    for (k, value) in p.data.iter().enumerate() {
        let mut desc = DataDescription::new();
        desc.define(value.to_le_bytes().to_vec().into_boxed_slice());
        desc.set_align(8);
        module.define_data(d.data[k], &desc).expect("define data");
    }
    for (k, &target) in p.tables.iter().enumerate() {
        let mut desc = DataDescription::new();
        // Bytes, not zero-fill: cranelift-object puts zero-fill in `.bss`,
        // where a relocation has no bytes to patch.
        desc.define(vec![0u8; 8].into_boxed_slice());
        desc.set_align(8);
        let f = module.declare_func_in_data(d.funcs[target], &mut desc);
        desc.write_function_addr(0, f);
        module
            .define_data(d.tables[k], &desc)
            .expect("define table");
    }
}

/// The IR of function `i` in `ctx` (cleared first).
pub fn build_function<M: Module>(
    module: &mut M,
    p: &Program,
    d: &Declared,
    i: usize,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
) {
    module.clear_context(ctx);
    let sig = signature(module);
    ctx.func.signature = sig.clone();
    let spec = &p.funcs[i];
    let callees: Vec<_> = spec
        .callees
        .iter()
        .map(|&c| module.declare_func_in_func(d.funcs[c], &mut ctx.func))
        .collect();
    let host = spec
        .host
        .then(|| module.declare_func_in_func(d.host, &mut ctx.func));
    let data = module.declare_data_in_func(d.data[spec.data], &mut ctx.func);
    let table = spec
        .indirect
        .map(|k| module.declare_data_in_func(d.tables[k], &mut ctx.func));
    let config = module.target_config();
    let ptr = config.pointer_type();
    let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
    let sig_ref = b.import_signature(sig);
    let trusted = MemFlagsData::trusted();
    let entry = b.create_block();
    let rec = b.create_block();
    let done = b.create_block();
    b.append_block_param(done, types::I64);
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (x, depth) = (b.block_params(entry)[0], b.block_params(entry)[1]);
    let t = b.ins().imul_imm_s(x, spec.mul);
    let mut t = b.ins().iadd_imm_s(t, spec.add);
    let addr = b.ins().symbol_value(ptr, data);
    let v = b.ins().load(types::I64, trusted, addr, 0);
    t = b.ins().iadd(t, v);
    if let Some(host) = host {
        let call = b.ins().call(host, &[t]);
        let r = b.inst_results(call)[0];
        t = b.ins().bxor(t, r);
    }
    let more = b.ins().icmp_imm_s(IntCC::SignedGreaterThan, depth, 0);
    b.ins().brif(more, rec, &[], done, &[t.into()]);
    b.switch_to_block(rec);
    let next = b.ins().iadd_imm_s(depth, -1);
    let mut acc = t;
    for (k, callee) in callees.iter().enumerate() {
        let arg = b.ins().bxor_imm_s(acc, k as i64 + 1);
        let call = b.ins().call(*callee, &[arg, next]);
        let r = b.inst_results(call)[0];
        let m = b.ins().imul_imm_s(acc, 31);
        acc = b.ins().iadd(m, r);
    }
    if let Some(table) = table {
        let addr = b.ins().symbol_value(ptr, table);
        let target = b.ins().load(ptr, trusted, addr, 0);
        let call = b.ins().call_indirect(sig_ref, target, &[acc, next]);
        let r = b.inst_results(call)[0];
        acc = b.ins().bxor(acc, r);
    }
    b.ins().jump(done, &[acc.into()]);
    b.switch_to_block(done);
    let result = b.block_params(done)[0];
    b.ins().return_(&[result]);
    b.seal_all_blocks();
    b.finalize(config);
}

/// Declares, builds and defines the whole program in `module` (not
/// finalized).
pub fn define_all<M: Module>(module: &mut M, p: &Program) -> Declared {
    let d = declare(module, p);
    define_data(module, p, &d);
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    for i in 0..p.funcs.len() {
        build_function(module, p, &d, i, &mut ctx, &mut fctx);
        module
            .define_function(d.funcs[i], &mut ctx)
            .expect("define");
    }
    d
}

/// Like [`define_all`], but function `i` is defined from its compiled
/// bytes (`define_function_bytes`, as W9 and hosts that cache code do)
/// when `from_bytes(i)`, else with `define_function`; `before(module, i)`
/// runs before function `i` is defined (to switch groups).
pub fn define_all_mixed<M: Module>(
    module: &mut M,
    p: &Program,
    from_bytes: impl Fn(usize) -> bool,
    mut before: impl FnMut(&mut M, usize),
) -> Declared {
    let d = declare(module, p);
    define_data(module, p, &d);
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    for i in 0..p.funcs.len() {
        build_function(module, p, &d, i, &mut ctx, &mut fctx);
        before(module, i);
        if !from_bytes(i) {
            module
                .define_function(d.funcs[i], &mut ctx)
                .expect("define");
            continue;
        }
        let mut cp = Default::default();
        ctx.compile(module.isa(), &mut cp).expect("compile");
        let compiled = ctx.compiled_code().expect("compiled");
        let align = u64::from(compiled.buffer.alignment);
        let bytes = compiled.code_buffer().to_vec();
        let relocs: Vec<_> = compiled
            .buffer
            .relocs()
            .iter()
            .map(|r| cranelift_module::ModuleReloc::from_mach_reloc(r, &ctx.func, d.funcs[i]))
            .collect();
        module
            .define_function_bytes(d.funcs[i], align, &bytes, &relocs)
            .expect("define bytes");
        ctx.clear();
    }
    d
}

/// Calls every function `f_i(i, depth)` through `address(id)`.
///
/// # Safety
///
/// `address` returns finalized code of the generated signature.
pub unsafe fn run_all(d: &Declared, depth: i64, address: impl Fn(FuncId) -> *const u8) -> Vec<i64> {
    d.funcs
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            // SAFETY: the caller's contract: code of `(i64, i64) -> i64`.
            let f: extern "C" fn(i64, i64) -> i64 = unsafe { std::mem::transmute(address(id)) };
            f(i as i64, depth)
        })
        .collect()
}
