//! Defining from bytes refuses what cranelift-jit refuses — an import, a
//! second definition, an id never declared — with an error naming the
//! function, through `Module::define_function_bytes` (`&mut self`, no
//! lock) and `define_function_bytes_shared` (`&self`) alike; a refused
//! definition leaves the module usable.

mod common;

use cranelift_module::{FuncId, Linkage, Module, ModuleReloc};
use kiln_cranelift::KilnModule;

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
