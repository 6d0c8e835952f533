//! Lazy compilation: a unit in the JIT's `<bodies>` dylib that runs the
//! host's compile callback when kiln's lazy entry is first called.

use std::fmt;
use std::sync::Arc;

use cranelift_codegen::ir;
use cranelift_codegen::isa::TargetIsa;
use cranelift_control::ControlPlane;
use cranelift_module::{DataId, FuncId};
use kiln_engine::{MaterializationUnit, Responsibility, SymbolFlags, SymbolName};

use crate::emit::{Arena, build_graph};
use crate::error::Error;
use crate::module::{Shared, compile_function};

/// The error a lazy compile callback may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Compile = Box<dyn FnOnce(&LazyContext) -> Result<ir::Function, BoxError> + Send>;

/// What a lazy function's compile callback gets: the target, and the
/// module's declarations to refer to other functions and data (as
/// `Module::declare_func_in_func` does).
pub struct LazyContext {
    shared: Arc<Shared>,
    id: FuncId,
}

impl fmt::Debug for LazyContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyContext")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LazyContext {
    /// The target the IR is compiled for.
    pub fn isa(&self) -> &dyn TargetIsa {
        &*self.shared.isa
    }

    /// The function being compiled.
    pub fn func_id(&self) -> FuncId {
        self.id
    }

    /// A new function with the lazy function's declared signature, named
    /// after its id (as the module's own functions are).
    pub fn make_function(&self) -> ir::Function {
        let signature = self.shared.names().funcs[self.id.as_u32() as usize]
            .signature
            .clone();
        let name = ir::UserFuncName::user(0, self.id.as_u32());
        ir::Function::with_name_signature(name, signature)
    }

    /// `Module::declare_func_in_func`: a reference to function `callee`
    /// in `func`. Panics if `callee` is not declared.
    pub fn declare_func_in_func(&self, callee: FuncId, func: &mut ir::Function) -> ir::FuncRef {
        let (signature, colocated) = {
            let names = self.shared.names();
            let info = &names.funcs[callee.as_u32() as usize];
            (info.signature.clone(), info.linkage.is_final())
        };
        let signature = func.import_signature(signature);
        let name = func.declare_imported_user_function(ir::UserExternalName {
            namespace: 0,
            index: callee.as_u32(),
        });
        func.import_function(ir::ExtFuncData {
            name: ir::ExternalName::user(name),
            signature,
            colocated,
            patchable: false,
        })
    }

    /// `Module::declare_data_in_func`: a global value for data object
    /// `data` in `func`. Panics if `data` is not declared.
    pub fn declare_data_in_func(&self, data: DataId, func: &mut ir::Function) -> ir::GlobalValue {
        let (colocated, tls) = {
            let names = self.shared.names();
            let info = &names.data[data.as_u32() as usize];
            (info.linkage.is_final(), info.tls)
        };
        let name = func.declare_imported_user_function(ir::UserExternalName {
            namespace: 1,
            index: data.as_u32(),
        });
        func.create_global_value(ir::GlobalValueData::Symbol {
            name: ir::ExternalName::user(name),
            offset: ir::immediates::Imm64::new(0),
            colocated,
            tls,
        })
    }
}

/// The body of a lazy function, defined as `symbol` in `<bodies>`.
pub(crate) struct LazyBody {
    shared: Arc<Shared>,
    id: FuncId,
    symbol: String,
    interned: SymbolName,
    compile: Compile,
}

impl LazyBody {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: FuncId,
        symbol: String,
        interned: SymbolName,
        compile: impl FnOnce(&LazyContext) -> Result<ir::Function, BoxError> + Send + 'static,
    ) -> LazyBody {
        LazyBody {
            shared,
            id,
            symbol,
            interned,
            compile: Box::new(compile),
        }
    }

    /// Runs the callback, compiles its IR and makes the linker's unit.
    fn build(self) -> Result<impl MaterializationUnit, Error> {
        let context = LazyContext {
            shared: self.shared.clone(),
            id: self.id,
        };
        let func = (self.compile)(&context).map_err(|source| Error::LazyCompile {
            function: self.symbol.clone(),
            source,
        })?;
        let mut ctx = cranelift_codegen::Context::for_function(func);
        let shared = &self.shared;
        let mut code = compile_function(
            &*shared.isa,
            self.id,
            &mut ctx,
            &mut ControlPlane::default(),
            shared,
        )?;
        code.set_symbol(self.symbol.clone());
        let (graph, _) = {
            let names = shared.names();
            build_graph(
                &self.symbol,
                vec![code],
                &Arena::default(),
                Vec::new(),
                &names,
                &*shared.libcall_names,
            )?
        };
        Ok(shared.layer.graph_unit(&self.symbol, graph)?)
    }
}

impl MaterializationUnit for LazyBody {
    fn name(&self) -> &str {
        &self.symbol
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(
            self.interned.clone(),
            SymbolFlags::EXPORTED | SymbolFlags::CALLABLE,
        )]
    }

    fn materialize(self: Box<Self>, r: Responsibility) {
        match self.build() {
            // The linker's unit defines exactly this body's symbol: it
            // takes over the responsibility.
            Ok(unit) => Box::new(unit).materialize(r),
            Err(e) => r.fail(kiln_engine::Error::external(e)),
        }
    }
}
