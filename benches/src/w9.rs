//! W9 cranelift-link (issue 12 §4): N functions in M modules generated with
//! Cranelift — cross-module calls, cycles (mutual recursion), data, function
//! pointers in data, host calls (the generator of kiln-cranelift's tests,
//! `linker/cranelift/tests/common/program.rs`) — made callable by one of
//! three backends.
//!
//! Every function is compiled once, untimed (machine code + relocations).
//! Timed, per rep, on a fresh JIT:
//! * `cranelift-jit` and `kiln-cranelift` (the `Module` backends):
//!   `define_function_bytes` for each compiled function,
//!   `finalize_definitions`, `get_finalized_function` for all N (data are
//!   defined before, untimed);
//! * `kiln` (the builder, `kiln_linker::jit::Jit`): adding the M objects
//!   that cranelift-object emitted from the same code (untimed) and one
//!   lookup of all N functions at Ready — until all N are callable.
//!
//! Then (untimed) a sample of the functions is called; the `checksum` key
//! must be equal across backends for the same `--n`, `--modules`, `--seed`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc, default_libcall_names};
use cranelift_object::{ObjectBuilder, ObjectModule};
use kiln_engine::{DylibLookup, LookupSet, RequiredState, SearchOrder};

use crate::error::BenchError;
use crate::measure::cpu_seconds;
use crate::options::{DispatcherKind, W9Backend};
use crate::report::Rep;

#[allow(
    dead_code,
    unreachable_pub,
    reason = "the test kit's generator, used here in part"
)]
#[path = "../../linker/cranelift/tests/common/program.rs"]
mod program;

use program::{Declared, Program};

const W: &str = "w9";

/// One W9 configuration.
#[derive(Debug, Clone, Copy)]
pub struct W9 {
    /// Functions.
    pub n: usize,
    /// Modules (objects, for the `kiln` backend).
    pub modules: usize,
    /// Generator seed.
    pub seed: u64,
    /// The backend timed.
    pub backend: W9Backend,
    /// kiln's dispatcher.
    pub dispatcher: DispatcherKind,
}

/// A function compiled once: what `define_function_bytes` takes.
struct Compiled {
    align: u64,
    bytes: Vec<u8>,
    relocs: Vec<ModuleReloc>,
}

/// What every rep starts from.
pub struct Prepared {
    program: Program,
    isa: OwnedTargetIsa,
    code: Vec<Compiled>,
    /// The `kiln` backend's objects, one per module.
    objects: Vec<Vec<u8>>,
    /// Seconds spent compiling.
    pub compile: Duration,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("functions", &self.code.len())
            .field("objects", &self.objects.len())
            .field("compile", &self.compile)
            .finish_non_exhaustive()
    }
}

fn engine(during: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Engine {
        workload: W,
        during: during.into(),
        message: e.to_string(),
    }
}

fn isa() -> Result<OwnedTargetIsa, BenchError> {
    let mut flags = settings::builder();
    flags
        .set("is_pic", "false")
        .map_err(|e| engine("cranelift settings", e))?;
    cranelift_native::builder()
        .map_err(|e| engine("cranelift isa", e))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| engine("cranelift isa", e))
}

impl W9 {
    /// Generates and compiles the program (and, for `kiln`, emits its
    /// objects): untimed.
    pub fn prepare(&self) -> Result<Prepared, BenchError> {
        if self.n == 0 || self.modules == 0 {
            return Err(BenchError::Params {
                workload: W,
                what: "n and modules must be at least 1".into(),
            });
        }
        let start = Instant::now();
        let mut program = program::generate(self.n, self.modules, self.seed);
        // Objects see each other's exported symbols only.
        for f in &mut program.funcs {
            f.linkage = Linkage::Export;
        }
        program.table_linkage = Linkage::Export;
        let isa = isa()?;
        let mut compiler = object_module(&isa, "compile")?;
        let d = program::declare(&mut compiler, &program);
        let mut ctx = compiler.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let mut code = Vec::with_capacity(self.n);
        for i in 0..self.n {
            program::build_function(&mut compiler, &program, &d, i, &mut ctx, &mut fctx);
            let mut cp = Default::default();
            if let Err(e) = ctx.compile(&*isa, &mut cp) {
                return Err(engine("compiling", format!("{:?}", e.inner)));
            }
            let compiled = ctx
                .compiled_code()
                .ok_or_else(|| engine("compiling", "no code"))?;
            let align = u64::from(compiled.buffer.alignment);
            let bytes = compiled.code_buffer().to_vec();
            let relocs = compiled
                .buffer
                .relocs()
                .iter()
                .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, d.funcs[i]))
                .collect();
            code.push(Compiled {
                align,
                bytes,
                relocs,
            });
        }
        let objects = if self.backend == W9Backend::Kiln {
            (0..self.modules)
                .map(|k| emit_object(&isa, &program, &code, k, self.modules))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        if let Some(dir) = std::env::var_os("KILN_W9_DUMP") {
            for (k, o) in objects.iter().enumerate() {
                let path = std::path::Path::new(&dir).join(format!("module{k}.o"));
                std::fs::write(&path, o).map_err(|e| engine("dumping objects", e))?;
            }
        }
        Ok(Prepared {
            program,
            isa,
            code,
            objects,
            compile: start.elapsed(),
        })
    }

    /// One rep: the timed part on a fresh JIT, then the check calls.
    pub fn rep(&self, p: &Prepared) -> Result<(Rep, i64), BenchError> {
        match self.backend {
            W9Backend::CraneliftJit => {
                let mut b =
                    cranelift_jit::JITBuilder::with_isa(p.isa.clone(), default_libcall_names());
                b.symbol("host_mix", program::host_mix as *const u8);
                let module = cranelift_jit::JITModule::new(b);
                let (rep, sum, module) = module_rep(module, p)?;
                // SAFETY: the check calls are over; nothing runs its code.
                unsafe { module.free_memory() };
                Ok((rep, sum))
            }
            W9Backend::KilnCranelift => {
                let mut b =
                    kiln_cranelift::KilnBuilder::with_isa(p.isa.clone(), default_libcall_names());
                b.symbol("host_mix", program::host_mix as *const u8);
                match self.dispatcher.pool_threads() {
                    None => b.dispatcher(kiln_engine::InPlaceDispatcher),
                    Some(t) => b.threads(t),
                };
                let module = b.build().map_err(|e| engine("building the module", e))?;
                let (rep, sum, module) = module_rep(module, p)?;
                let teardown = Instant::now();
                // SAFETY: the check calls are over; nothing runs its code.
                unsafe { module.free_memory() };
                let mut rep = rep;
                rep.phases.push(("teardown", teardown.elapsed()));
                Ok((rep, sum))
            }
            W9Backend::Kiln => self.kiln_rep(p),
        }
    }

    /// The builder: M objects added, all N looked up Ready.
    fn kiln_rep(&self, p: &Prepared) -> Result<(Rep, i64), BenchError> {
        let setup = Instant::now();
        let builder = kiln_linker::Jit::builder();
        let builder = match self.dispatcher.pool_threads() {
            None => builder.dispatcher(kiln_engine::InPlaceDispatcher),
            Some(t) => builder.threads(t),
        };
        let jit = builder.build().map_err(|e| engine("building the JIT", e))?;
        jit.define_fn("host_mix", program::host_mix as extern "C" fn(i64) -> i64)
            .map_err(|e| engine("define_fn", e))?;
        let setup = setup.elapsed();
        let (c0, start) = (cpu_seconds(), Instant::now());
        for (k, object) in p.objects.iter().enumerate() {
            jit.add_object_named(&format!("module{k}.o"), object)
                .map_err(|e| engine("add_object", e))?;
        }
        let session = jit.session();
        let names: Vec<_> = p
            .program
            .funcs
            .iter()
            .map(|f| session.intern(&f.name))
            .collect();
        let order = SearchOrder::new().with(jit.app(), DylibLookup::ExportedOnly);
        let found = session
            .lookup(&order, &LookupSet::required(names), RequiredState::Ready)
            .wait()
            .map_err(|e| engine("lookup", e))?;
        let addresses: Vec<u64> = found
            .by_request()
            .map(|(_, d)| d.map_or(0, |d| d.address))
            .collect();
        let main = start.elapsed();
        let main_cpu_s = cpu_seconds() - c0;
        // SAFETY: every address is Ready code of the generated signature.
        let sum = unsafe { check_calls(&addresses) };
        let teardown = Instant::now();
        drop(jit);
        let rep = Rep {
            main,
            main_cpu_s,
            phases: vec![("setup", setup), ("teardown", teardown.elapsed())],
            info: Vec::new(),
        };
        Ok((rep, sum))
    }
}

/// Declares, defines the data (untimed), then times the `Module` calls.
fn module_rep<M: Module + Finalize>(
    mut module: M,
    p: &Prepared,
) -> Result<(Rep, i64, M), BenchError> {
    let setup = Instant::now();
    let d: Declared = program::declare(&mut module, &p.program);
    program::define_data(&mut module, &p.program, &d);
    let setup = setup.elapsed();
    let (c0, start) = (cpu_seconds(), Instant::now());
    for (i, c) in p.code.iter().enumerate() {
        module
            .define_function_bytes(d.funcs[i], c.align, &c.bytes, &c.relocs)
            .map_err(|e| engine("define_function_bytes", e))?;
    }
    module.finalize()?;
    let addresses: Vec<u64> = d
        .funcs
        .iter()
        .map(|&id| module.address(id) as u64)
        .collect();
    black_box(&addresses);
    let main = start.elapsed();
    let main_cpu_s = cpu_seconds() - c0;
    // SAFETY: finalized code of the generated signature.
    let sum = unsafe { check_calls(&addresses) };
    let rep = Rep {
        main,
        main_cpu_s,
        phases: vec![("setup", setup)],
        info: Vec::new(),
    };
    Ok((rep, sum, module))
}

/// `finalize_definitions` and `get_finalized_function`, which are inherent
/// methods of each backend rather than `Module`'s.
trait Finalize {
    fn finalize(&mut self) -> Result<(), BenchError>;
    fn address(&self, id: FuncId) -> *const u8;
}

impl Finalize for cranelift_jit::JITModule {
    fn finalize(&mut self) -> Result<(), BenchError> {
        self.finalize_definitions()
            .map_err(|e| engine("finalize_definitions", e))
    }
    fn address(&self, id: FuncId) -> *const u8 {
        self.get_finalized_function(id)
    }
}

impl Finalize for kiln_cranelift::KilnModule {
    fn finalize(&mut self) -> Result<(), BenchError> {
        self.finalize_definitions()
            .map_err(|e| engine("finalize_definitions", e))
    }
    fn address(&self, id: FuncId) -> *const u8 {
        self.get_finalized_function(id)
    }
}

/// Calls about 100 functions spread over all, `f_i(i, 2)`, and sums.
///
/// # Safety
///
/// Every address is callable code of `(i64, i64) -> i64`.
unsafe fn check_calls(addresses: &[u64]) -> i64 {
    let step = (addresses.len() / 100).max(1);
    let mut sum = 0i64;
    for i in (0..addresses.len()).step_by(step) {
        // SAFETY: the caller's contract.
        let f: extern "C" fn(i64, i64) -> i64 =
            unsafe { std::mem::transmute(addresses[i] as usize as *const u8) };
        sum = sum.wrapping_mul(31).wrapping_add(f(i as i64, 2));
    }
    sum
}

fn object_module(isa: &OwnedTargetIsa, name: &str) -> Result<ObjectModule, BenchError> {
    let builder = ObjectBuilder::new(isa.clone(), name, default_libcall_names())
        .map_err(|e| engine("ObjectBuilder", e))?;
    Ok(ObjectModule::new(builder))
}

/// Module `k`'s object: its functions (`i % modules == k`) defined, the
/// others imported; the data defined in module 0.
fn emit_object(
    isa: &OwnedTargetIsa,
    p: &Program,
    code: &[Compiled],
    k: usize,
    modules: usize,
) -> Result<Vec<u8>, BenchError> {
    let mut module = object_module(isa, &format!("module{k}"))?;
    let mut local = p.clone();
    for (i, f) in local.funcs.iter_mut().enumerate() {
        if i % modules != k {
            f.linkage = Linkage::Import;
        }
    }
    if k != 0 {
        local.table_linkage = Linkage::Import;
    }
    let d = declare_for_object(&mut module, &local, k == 0);
    if k == 0 {
        program::define_data(&mut module, &local, &d);
    }
    for (i, c) in code.iter().enumerate().filter(|(i, _)| i % modules == k) {
        module
            .define_function_bytes(d.funcs[i], c.align, &c.bytes, &c.relocs)
            .map_err(|e| engine("cranelift-object", e))?;
    }
    module
        .finish()
        .emit()
        .map_err(|e| engine("emitting an object", e))
}

/// [`program::declare`] with the data imported unless `defines_data`
/// (same order, so the ids match the compiled relocations).
fn declare_for_object(module: &mut ObjectModule, p: &Program, defines_data: bool) -> Declared {
    if defines_data {
        return program::declare(module, p);
    }
    let sig = program::signature(module);
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
            module
                .declare_data(&format!("data_{k}"), Linkage::Import, false, false)
                .expect("declare")
        })
        .collect();
    let tables = (0..p.tables.len())
        .map(|k| {
            module
                .declare_data(&format!("table_{k}"), Linkage::Import, true, false)
                .expect("declare")
        })
        .collect();
    let mut host_sig = module.make_signature();
    host_sig.params.push(cranelift_codegen::ir::AbiParam::new(
        cranelift_codegen::ir::types::I64,
    ));
    host_sig.returns.push(cranelift_codegen::ir::AbiParam::new(
        cranelift_codegen::ir::types::I64,
    ));
    let host = module
        .declare_function("host_mix", Linkage::Import, &host_sig)
        .expect("declare");
    Declared {
        funcs,
        data,
        tables,
        host,
    }
}
