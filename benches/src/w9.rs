//! W9 cranelift-link (issue 12 §4): N functions in M modules generated with
//! Cranelift — cross-module calls, cycles (mutual recursion), data, function
//! pointers in data, host calls (the generator of kiln-cranelift's tests,
//! `linker/cranelift/tests/common/program.rs`) — made callable by one of
//! four backends.
//!
//! Every function is compiled once, untimed (machine code + relocations).
//! Timed, per rep, on a fresh JIT:
//! * `cranelift-jit` and `kiln-cranelift` (the `Module` backends):
//!   `define_function_bytes` for each compiled function,
//!   `finalize_definitions`, `get_finalized_function` for all N (data are
//!   defined before, untimed);
//! * `kiln` (the builder, `kiln_linker::jit::Jit`): adding the M objects
//!   that cranelift-object emitted from the same code (untimed), given
//!   away (`add_object_owned`), and one
//!   lookup of all N functions at Ready — until all N are callable;
//! * `kiln-one-image`: the same with the M objects given to one
//!   `Jit::add_objects` call (linked together as one image).
//!
//! Then (untimed) a sample of the functions is called; the `checksum` key
//! must be equal across backends for the same `--n`, `--modules`, `--seed`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cranelift_codegen::ir::{AbiParam, types};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_module::{
    FuncId, Linkage, Module, ModuleReloc, ModuleRelocTarget, default_libcall_names,
};
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
        let objects = if matches!(self.backend, W9Backend::Kiln | W9Backend::KilnOneImage) {
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
            W9Backend::Kiln => self.kiln_rep(p, false),
            W9Backend::KilnOneImage => self.kiln_rep(p, true),
        }
    }

    /// The builder: M objects added (each with `add_object`, or all in one
    /// `add_objects` call: `one_image`), all N looked up Ready.
    fn kiln_rep(&self, p: &Prepared, one_image: bool) -> Result<(Rep, i64), BenchError> {
        let setup = Instant::now();
        let builder = kiln_linker::Jit::builder();
        let builder = match self.dispatcher.pool_threads() {
            None => builder.dispatcher(kiln_engine::InPlaceDispatcher),
            Some(t) => builder.threads(t),
        };
        let jit = builder.build().map_err(|e| engine("building the JIT", e))?;
        jit.define_fn("host_mix", program::host_mix as extern "C" fn(i64) -> i64)
            .map_err(|e| engine("define_fn", e))?;
        // What `cranelift-object` emits is the host's to give away: the
        // per-object path takes it owned (a copy per rep, untimed).
        let owned: Vec<Vec<u8>> = if one_image {
            Vec::new()
        } else {
            p.objects.clone()
        };
        let setup = setup.elapsed();
        perf_mark(Mark::Start);
        let counters = Counters::now();
        let (c0, start) = (cpu_seconds(), Instant::now());
        if one_image {
            let objects: Vec<(String, &[u8])> = p
                .objects
                .iter()
                .enumerate()
                .map(|(k, object)| (format!("module{k}.o"), object.as_slice()))
                .collect();
            jit.add_objects(&objects)
                .map_err(|e| engine("add_objects", e))?;
        } else {
            for (k, object) in owned.into_iter().enumerate() {
                jit.add_object_owned(&format!("module{k}.o"), object)
                    .map_err(|e| engine("add_object", e))?;
            }
        }
        let added = start.elapsed();
        perf_mark(Mark::Added);
        let session = jit.session();
        let names = session.intern_all(p.program.funcs.iter().map(|f| f.name.as_str()));
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
        let info = counters.since();
        perf_mark(Mark::End);
        // SAFETY: every address is Ready code of the generated signature.
        let sum = unsafe { check_calls(&addresses) };
        let teardown = Instant::now();
        drop(jit);
        let rep = Rep {
            main,
            main_cpu_s,
            // The timed part in two: adding the objects, the lookup that
            // links and emits them.
            phases: vec![
                ("setup", setup),
                ("add", added),
                ("lookup", main - added),
                ("teardown", teardown.elapsed()),
            ],
            info,
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
    perf_control("enable");
    let counters = Counters::now();
    let (c0, start) = (cpu_seconds(), Instant::now());
    for (i, c) in p.code.iter().enumerate() {
        module
            .define_function_bytes(d.funcs[i], c.align, &c.bytes, &c.relocs)
            .map_err(|e| engine("define_function_bytes", e))?;
    }
    let defined = start.elapsed();
    module.finalize()?;
    let finalized = start.elapsed();
    let addresses: Vec<u64> = d
        .funcs
        .iter()
        .map(|&id| module.address(id) as u64)
        .collect();
    black_box(&addresses);
    let main = start.elapsed();
    let main_cpu_s = cpu_seconds() - c0;
    let info = counters.since();
    perf_control("disable");
    // SAFETY: finalized code of the generated signature.
    let sum = unsafe { check_calls(&addresses) };
    let rep = Rep {
        main,
        main_cpu_s,
        // The timed part in three: the N defines, finalize, the N address
        // lookups.
        phases: vec![
            ("setup", setup),
            ("define", defined),
            ("finalize", finalized - defined),
            ("addresses", main - finalized),
        ],
        info,
    };
    Ok((rep, sum, module))
}

/// A point of the builder's timed part.
#[derive(PartialEq)]
enum Mark {
    Start,
    /// The objects added, the lookup not started.
    Added,
    End,
}

/// [`perf_control`] for the builder's rep: the whole timed part, or with
/// `KILN_W9_PERF_PHASE=add` or `=lookup` only that phase of it.
fn perf_mark(at: Mark) {
    let phase = std::env::var("KILN_W9_PERF_PHASE").unwrap_or_default();
    let command = match (phase.as_str(), at) {
        ("lookup", Mark::Added) | ("add" | "", Mark::Start) => "enable",
        ("add", Mark::Added) | ("lookup" | "", Mark::End) => "disable",
        _ => return,
    };
    perf_control(command);
}

/// `perf record --control=fifo:CTL,ACK -D -1` counts the timed part only
/// when `KILN_W9_PERF_CTL=CTL,ACK` names the same FIFOs: the rep writes
/// `enable` before the timed part and `disable` after it, each waiting for
/// perf's acknowledgement. Unset (the default), nothing happens.
fn perf_control(command: &str) {
    use std::io::{Read, Write};
    let Some(paths) = std::env::var_os("KILN_W9_PERF_CTL") else {
        return;
    };
    let paths = paths.to_string_lossy().into_owned();
    let Some((ctl, ack)) = paths.split_once(',') else {
        return;
    };
    let sent = std::fs::OpenOptions::new()
        .write(true)
        .open(ctl)
        .and_then(|mut f| f.write_all(format!("{command}\n").as_bytes()));
    if sent.is_ok() {
        let mut reply = [0u8; 5];
        let _ = std::fs::File::open(ack).and_then(|mut f| f.read(&mut reply));
    }
}

/// Process-wide counters of the kernel's (`getrusage`, every thread):
/// minor page faults and context switches, read around the timed part.
#[derive(Clone, Copy)]
struct Counters {
    faults: i64,
    voluntary: i64,
    involuntary: i64,
}

impl Counters {
    fn now() -> Counters {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `ru` is writable memory of a `struct rusage`'s size and
        // alignment, all getrusage needs; RUSAGE_SELF is a valid `who`.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
        if rc != 0 {
            return Counters {
                faults: -1,
                voluntary: -1,
                involuntary: -1,
            };
        }
        // SAFETY: getrusage succeeded, so it initialized `ru`.
        let ru = unsafe { ru.assume_init() };
        #[allow(
            clippy::useless_conversion,
            reason = "c_long is not i64 on every target"
        )]
        Counters {
            faults: i64::from(ru.ru_minflt),
            voluntary: i64::from(ru.ru_nvcsw),
            involuntary: i64::from(ru.ru_nivcsw),
        }
    }

    /// What happened since `self`, as a rep's informational values.
    fn since(self) -> Vec<(&'static str, f64)> {
        let now = Counters::now();
        vec![
            ("main_minor_faults", (now.faults - self.faults) as f64),
            ("main_voluntary_cs", (now.voluntary - self.voluntary) as f64),
            (
                "main_involuntary_cs",
                (now.involuntary - self.involuntary) as f64,
            ),
        ]
    }
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

/// Module `k`'s object as a cranelift-object user writes it: its functions
/// (`i % modules == k`) defined, only what they use declared (imported);
/// the data defined in module 0. Ids differ from the compiling module's, so
/// the relocations are renumbered.
fn emit_object(
    isa: &OwnedTargetIsa,
    p: &Program,
    code: &[Compiled],
    k: usize,
    modules: usize,
) -> Result<Vec<u8>, BenchError> {
    let n = p.funcs.len();
    let (ndata, ntables) = (p.data.len(), p.tables.len());
    let own: Vec<usize> = (k..n).step_by(modules).collect();
    // Old function ids 0..n are the program's, n is `host_mix`; old data
    // ids 0..ndata are `data_k`, then the tables.
    let mut funcs = vec![false; n + 1];
    let mut data = vec![k == 0; ndata + ntables];
    for &i in &own {
        funcs[i] = true;
        let spec = &p.funcs[i];
        spec.callees.iter().for_each(|&c| funcs[c] = true);
        funcs[n] |= spec.host;
        data[spec.data] = true;
        if let Some(t) = spec.indirect {
            data[ndata + t] = true;
        }
    }
    if k == 0 {
        p.tables.iter().for_each(|&t| funcs[t] = true);
    }
    let mut module = object_module(isa, &format!("module{k}"))?;
    let sig = program::signature(&module);
    let mut host_sig = module.make_signature();
    host_sig.params.push(AbiParam::new(types::I64));
    host_sig.returns.push(AbiParam::new(types::I64));
    let mut func_map = vec![None; n + 1];
    for old in (0..=n).filter(|&i| funcs[i]) {
        let (name, linkage, sig) = match p.funcs.get(old) {
            Some(f) if old % modules == k => (f.name.as_str(), Linkage::Export, &sig),
            Some(f) => (f.name.as_str(), Linkage::Import, &sig),
            None => ("host_mix", Linkage::Import, &host_sig),
        };
        let id = module
            .declare_function(name, linkage, sig)
            .map_err(|e| engine("declare", e))?;
        func_map[old] = Some(id);
    }
    let mut data_map = vec![None; ndata + ntables];
    for old in (0..ndata + ntables).filter(|&i| data[i]) {
        let (name, writable) = match old.checked_sub(ndata) {
            None => (format!("data_{old}"), false),
            Some(t) => (format!("table_{t}"), true),
        };
        let linkage = if k == 0 {
            Linkage::Export
        } else {
            Linkage::Import
        };
        let id = module
            .declare_data(&name, linkage, writable, false)
            .map_err(|e| engine("declare", e))?;
        data_map[old] = Some(id);
    }
    if k == 0 {
        define_object_data(&mut module, p, &func_map, &data_map)?;
    }
    for &i in &own {
        let c = &code[i];
        let relocs: Vec<ModuleReloc> = c
            .relocs
            .iter()
            .map(|r| renumber(r, &func_map, &data_map))
            .collect::<Result<_, _>>()?;
        let id = func_map[i].ok_or_else(|| engine("emit", "own function not declared"))?;
        module
            .define_function_bytes(id, c.align, &c.bytes, &relocs)
            .map_err(|e| engine("cranelift-object", e))?;
    }
    module
        .finish()
        .emit()
        .map_err(|e| engine("emitting an object", e))
}

/// The program's data in module 0's object (ids through the maps).
fn define_object_data(
    module: &mut ObjectModule,
    p: &Program,
    func_map: &[Option<FuncId>],
    data_map: &[Option<cranelift_module::DataId>],
) -> Result<(), BenchError> {
    let missing = || engine("emit", "data not declared");
    for (k, value) in p.data.iter().enumerate() {
        let mut desc = cranelift_module::DataDescription::new();
        desc.define(value.to_le_bytes().to_vec().into_boxed_slice());
        desc.set_align(8);
        let id = data_map[k].ok_or_else(missing)?;
        module
            .define_data(id, &desc)
            .map_err(|e| engine("define_data", e))?;
    }
    for (t, &target) in p.tables.iter().enumerate() {
        let mut desc = cranelift_module::DataDescription::new();
        desc.define(vec![0u8; 8].into_boxed_slice());
        desc.set_align(8);
        let f = func_map[target].ok_or_else(missing)?;
        let f = module.declare_func_in_data(f, &mut desc);
        desc.write_function_addr(0, f);
        let id = data_map[p.data.len() + t].ok_or_else(missing)?;
        module
            .define_data(id, &desc)
            .map_err(|e| engine("define_data", e))?;
    }
    Ok(())
}

/// `r` with its target's id in the object's module.
fn renumber(
    r: &ModuleReloc,
    func_map: &[Option<FuncId>],
    data_map: &[Option<cranelift_module::DataId>],
) -> Result<ModuleReloc, BenchError> {
    let missing = || engine("emit", format!("{} not declared in the object", r.name));
    let name = match r.name {
        ModuleRelocTarget::User {
            namespace: 0,
            index,
        } => {
            let id = func_map
                .get(index as usize)
                .copied()
                .flatten()
                .ok_or_else(missing)?;
            ModuleRelocTarget::user(0, id.as_u32())
        }
        ModuleRelocTarget::User {
            namespace: 1,
            index,
        } => {
            let id = data_map
                .get(index as usize)
                .copied()
                .flatten()
                .ok_or_else(missing)?;
            ModuleRelocTarget::user(1, id.as_u32())
        }
        ModuleRelocTarget::FunctionOffset(f, off) => {
            let id = func_map
                .get(f.as_u32() as usize)
                .copied()
                .flatten()
                .ok_or_else(missing)?;
            ModuleRelocTarget::FunctionOffset(id, off)
        }
        ref other => other.clone(),
    };
    Ok(ModuleReloc {
        offset: r.offset,
        kind: r.kind,
        name,
        addend: r.addend,
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    /// The four backends make the same program callable and its calls
    /// give the same checksum, rep after rep (each rep a fresh JIT), and
    /// each rep reports the timed part's page faults.
    #[test]
    fn every_backend_gives_cranelift_jits_checksum() {
        let threads = NonZeroUsize::new(2).expect("2 is not zero");
        let mut sums = Vec::new();
        for backend in [
            W9Backend::CraneliftJit,
            W9Backend::KilnCranelift,
            W9Backend::Kiln,
            W9Backend::KilnOneImage,
        ] {
            let w = W9 {
                n: 300,
                modules: 4,
                seed: 7,
                backend,
                dispatcher: DispatcherKind::Pool { threads },
            };
            let p = w.prepare().expect("prepare");
            for _ in 0..2 {
                let (rep, sum) = w.rep(&p).expect("rep");
                let faults = rep.info.iter().find(|(k, _)| *k == "main_minor_faults");
                assert!(
                    faults.is_some_and(|&(_, f)| f >= 0.0),
                    "{backend:?}: {:?}",
                    rep.info
                );
                sums.push((backend, sum));
            }
        }
        assert!(
            sums.iter().all(|&(_, s)| s == sums[0].1),
            "checksums differ: {sums:?}"
        );
    }
}
