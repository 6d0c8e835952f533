//! A thread-local the engine holds (another image's `__thread` variable)
//! has no address: a function that uses it as plain data is refused,
//! naming it, on the direct path and the general one alike — never given
//! the value that names its TLS module as an address.

mod common;

use cranelift_codegen::ir::{self, InstBuilder, types};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use kiln_cranelift::KilnModule;
use kiln_engine::{SymbolDef, SymbolFlags};

use common::{kiln, sig_i64};

/// Defines `name(x)`: adds `x` to the i64 at imported data `data` (a
/// thread-local, through `tls_value`, if `tls`; plain data otherwise),
/// stores the sum there and returns it.
fn define_adding_to(module: &mut KilnModule, name: &str, data: &str, tls: bool) -> FuncId {
    let data = (module.declare_data(data, Linkage::Import, true, tls)).unwrap();
    let sig = sig_i64(module);
    let id = (module.declare_function(name, Linkage::Export, &sig)).unwrap();
    let func = common::function(
        module.target_config(),
        sig,
        id,
        &[],
        |_, _| unreachable!("no calls"),
        |b, x, _| {
            let gv = module.declare_data_in_func(data, b.func);
            let at = if tls {
                b.ins().tls_value(types::I64, gv)
            } else {
                b.ins().symbol_value(types::I64, gv)
            };
            let trusted = ir::MemFlagsData::trusted();
            let v = b.ins().load(types::I64, trusted, at, 0);
            let y = b.ins().iadd(v, x);
            b.ins().store(trusted, y, at, 0);
            y
        },
    );
    let mut ctx = cranelift_codegen::Context::for_function(func);
    module.define_function(id, &mut ctx).unwrap();
    id
}

#[test]
fn a_function_reading_a_thread_local_as_plain_data_is_refused_naming_it() {
    for pic in [false, true] {
        let mut module = kiln(pic);
        let jit = module.jit();
        let flags = SymbolFlags::EXPORTED | SymbolFlags::THREAD_LOCAL;
        let tcount = jit.session().intern("tcount");
        // The value an image gives its thread-local: a tag, a TLS module's
        // slot, an offset (`runtime::tls`); as an address, unmapped.
        let def = SymbolDef::new(0x5400_0001_0000_0008, flags);
        jit.app().define_absolute([(tcount, def)]).unwrap();
        define_adding_to(&mut module, "reads_tcount", "tcount", false);
        let e = module
            .finalize_definitions()
            .expect_err("a thread-local is no address");
        let chain = format!("{e}: {:?}", std::error::Error::source(&e));
        assert!(chain.contains("`tcount`"), "pic {pic}: {chain}");
        assert!(chain.contains("thread-local"), "pic {pic}: {chain}");
    }
}

/// A C object's `__thread` variable, used from cranelift code through
/// `tls_value` (`tls_model = elf_gd`, which cranelift-jit cannot link):
/// one instance per thread, the C code and the cranelift code sharing it.
#[test]
fn cranelift_code_uses_a_c_objects_thread_local_through_tls_value() {
    let dir = std::env::temp_dir().join(format!("kiln-cl-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("tcount.c");
    let src = "__thread long tcount = 5;\nlong c_add(long x) { tcount += x; return tcount; }\n";
    std::fs::write(&c, src).unwrap();
    let o = dir.join("tcount.o");
    let status = std::process::Command::new("gcc")
        .args(["-O2", "-fPIC", "-c"])
        .arg(&c)
        .arg("-o")
        .arg(&o)
        .status()
        .expect("gcc runs (apt-get install -y gcc)");
    assert!(status.success(), "gcc failed");
    let flags = [("is_pic", "true"), ("tls_model", "elf_gd")];
    let builder = kiln_cranelift::KilnBuilder::with_flags(&flags, default_libcall_names());
    let mut module = builder.expect("builder").build().expect("module");
    let bytes = std::fs::read(&o).unwrap();
    module.jit().add_object_named("tcount.o", &bytes).unwrap();
    let id = define_adding_to(&mut module, "cl_add", "tcount", true);
    module
        .finalize_definitions()
        .expect("links, binding tcount to its module");
    type Add = extern "C" fn(i64) -> i64;
    // SAFETY: `cl_add` is `(i64) -> i64`, finalized.
    let cl_add: Add = unsafe { std::mem::transmute(module.get_finalized_function(id)) };
    // SAFETY: `long c_add(long)`, Ready.
    let c_add = unsafe { module.jit().get::<Add>("c_add") }.unwrap();
    assert_eq!(cl_add(1), 6);
    assert_eq!(c_add(2), 8, "the C code sees what cranelift's wrote");
    let other = std::thread::spawn(move || cl_add(10)).join().unwrap();
    assert_eq!(other, 15, "another thread's own instance");
    assert_eq!(cl_add(0), 8);
}
