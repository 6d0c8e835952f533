//! Defining from bytes refuses what cranelift-jit refuses — an import, a
//! second definition, an id never declared — with an error naming the
//! function, through `Module::define_function_bytes` (`&mut self`, no
//! lock) and `define_function_bytes_shared` (`&self`) alike; a refused
//! definition leaves the module usable.

mod common;

use cranelift_codegen::CodegenError;
use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::settings::SetError;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Linkage, Module, ModuleError, ModuleReloc, default_libcall_names};
use kiln_cranelift::{Error, KilnBuilder, KilnModule};

use common::{kiln, sig_i64};

/// Some bytes of code: never called, so what they mean does not matter.
const BYTES: &[u8] = &[0x48, 0x89, 0xf8, 0xc3];

/// Defines `id` from bytes through the `&mut self` or the `&self` form.
fn define(module: &mut KilnModule, id: FuncId, shared: bool) -> Result<(), String> {
    let relocs: &[ModuleReloc] = &[];
    if shared {
        (module.define_function_bytes_shared(id, 16, BYTES, relocs)).map_err(|e| e.to_string())
    } else {
        (module.define_function_bytes(id, 16, BYTES, relocs)).map_err(|e| format!("{e:?}"))
    }
}

#[test]
fn defining_an_import_twice_or_undeclared_fails_naming_it_through_both_forms() {
    for shared in [false, true] {
        let mut module = kiln(false);
        let sig = sig_i64(&module);
        let import = (module.declare_function("imported_fn", Linkage::Import, &sig))
            .expect("declare import");
        let local =
            (module.declare_function("local_fn", Linkage::Export, &sig)).expect("declare export");

        let e = define(&mut module, import, shared).expect_err("an import is not definable");
        assert!(e.contains("imported_fn"), "shared {shared}: {e}");

        define(&mut module, local, shared).expect("first definition");
        let e = define(&mut module, local, shared).expect_err("defined twice");
        assert!(e.contains("local_fn"), "shared {shared}: {e}");

        let e = define(&mut module, FuncId::from_u32(99), shared).expect_err("undeclared");
        assert!(e.contains("undeclared"), "shared {shared}: {e}");

        // The import, declared again as exported, becomes definable: the
        // `&mut self` form reads the merged linkage from the declarations.
        let again =
            (module.declare_function("imported_fn", Linkage::Export, &sig)).expect("declare again");
        assert_eq!(again, import);
        define(&mut module, import, shared).expect("definable once exported");
        module.finalize_definitions().expect("finalize");
        assert!(!module.get_finalized_function(local).is_null());
    }
}

/// A second definition through the `Module` trait is cranelift-jit's own
/// `ModuleError::DuplicateDefinition` (code matching on it works on both),
/// and kiln-cranelift's own error keeps it as it is.
#[test]
fn a_second_definition_is_cranelift_modules_own_error() {
    let mut module = kiln(false);
    let sig = sig_i64(&module);
    let id = (module.declare_function("twice_fn", Linkage::Export, &sig)).expect("declare");
    let relocs: &[ModuleReloc] = &[];
    (module.define_function_bytes(id, 16, BYTES, relocs)).expect("first definition");
    let e = (module.define_function_bytes(id, 16, BYTES, relocs)).expect_err("defined twice");
    assert!(
        matches!(&e, ModuleError::DuplicateDefinition(name) if name == "twice_fn"),
        "{e:?}"
    );
    let e = (module.define_function_bytes_shared(id, 16, BYTES, relocs)).expect_err("twice");
    assert!(
        matches!(&e, Error::Declaration(m) if matches!(**m, ModuleError::DuplicateDefinition(_))),
        "{e:?}"
    );
}

/// A bad cranelift setting names the setting and keeps cranelift's error
/// as the cause; so does a function cranelift refuses to compile.
#[test]
fn cranelift_errors_are_kept_as_causes() {
    let e = KilnBuilder::with_flags(&[("opt_level", "fastest")], default_libcall_names())
        .expect_err("a bad value");
    assert!(
        matches!(&e, Error::Setting { name, .. } if name == "opt_level"),
        "{e:?}"
    );
    let source = std::error::Error::source(&e).expect("a cause");
    assert!(source.is::<SetError>(), "{source:?}");

    let mut module = kiln(false);
    let sig = sig_i64(&module);
    let id = (module.declare_function("bad_fn", Linkage::Export, &sig)).expect("declare");
    // Returns nothing from a function that returns an i64: the verifier
    // refuses it.
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let block = b.create_block();
    b.append_block_params_for_function_params(block);
    b.switch_to_block(block);
    b.seal_block(block);
    b.ins().return_(&[]);
    b.finalize(module.isa().frontend_config());
    let e = module
        .define_function_shared(id, &mut ctx, &mut Default::default())
        .expect_err("not valid IR");
    assert!(
        matches!(&e, Error::Compile { function, .. } if function == "bad_fn"),
        "{e:?}"
    );
    let source = std::error::Error::source(&e).expect("a cause");
    assert!(source.is::<CodegenError>(), "{source:?}");
}
