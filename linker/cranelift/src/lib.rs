//! kiln-cranelift: a `cranelift_module::Module` backend on kiln, so a
//! cranelift-jit host switches with a few changed lines — and gets lazy
//! compilation, hot swap, freeing and thread safety.
//!
//! | cranelift-jit | kiln-cranelift |
//! | --- | --- |
//! | `JITBuilder::new(default_libcall_names())?` | [`KilnBuilder::new`]`(default_libcall_names())?` |
//! | `builder.symbol("f", f as *const u8)` | the same |
//! | `JITModule::new(builder)` | [`KilnModule::new`]`(builder)?` |
//! | `module.finalize_definitions()?` | the same (a missing symbol is an error, not a panic) |
//! | `module.get_finalized_function(id)` | the same |
//! | `ModuleError::DuplicateDefinition`, `InvalidImportDefinition` | the same; kiln's own failures are `ModuleError::Backend` holding an [`Error`] (downcast it; cranelift's errors kept as `source()`) |
//!
//! Beyond cranelift-jit:
//! - [`KilnModule::declare_lazy_function`]: the body is compiled by a
//!   callback on the first call (once, however many threads call first);
//! - [`KilnModule::replace_function`]: hot swap of a lazy function's body
//!   while others call it;
//! - [`KilnModule::new_group`] / [`KilnModule::free_group`]: free a group
//!   of functions and data, memory returned;
//! - `&self` definition ([`KilnModule::define_function_shared`]) from many
//!   threads at once;
//! - thread-locals: data imported as thread-local (`declare_data(name,
//!   Linkage::Import, _, true)`, read with `tls_value` under the
//!   `tls_model = elf_gd` setting) binds to an object's `__thread`
//!   variable, one instance per thread (defining thread-local data is
//!   refused, as in cranelift-jit).
//!
//! # How
//!
//! Each batch of definitions between two `finalize_definitions` calls is
//! placed as cranelift-jit places it — copied into kiln's code memory,
//! relocations applied, protected, its symbols published Ready in one
//! engine call (`direct.rs`) — when everything it refers to is in the
//! batch or already Ready. Otherwise it becomes one kiln link graph (built
//! directly from the machine code and relocations, `emit.rs`; relocation
//! kinds mapped to ELF `r_type`s in `reloc.rs`), added to the JIT's `app`
//! dylib as one unit, whose symbols become Ready only once what they call
//! is; finalizing looks them up Ready. Lazy functions are kiln lazy
//! reexports whose bodies (`lazy.rs`) compile when materialized.
//!
//! ```
//! use cranelift_codegen::ir::{types, AbiParam, InstBuilder};
//! use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
//! use cranelift_module::{default_libcall_names, Linkage, Module};
//! use kiln_cranelift::{KilnBuilder, KilnModule};
//!
//! let mut module = KilnModule::new(KilnBuilder::new(default_libcall_names())?)?;
//! let mut ctx = module.make_context();
//! ctx.func.signature.params.push(AbiParam::new(types::I64));
//! ctx.func.signature.returns.push(AbiParam::new(types::I64));
//! let id = module.declare_function("double", Linkage::Export, &ctx.func.signature)?;
//! let mut fctx = FunctionBuilderContext::new();
//! let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
//! let block = b.create_block();
//! b.append_block_params_for_function_params(block);
//! b.switch_to_block(block);
//! let x = b.block_params(block)[0];
//! let y = b.ins().iadd(x, x);
//! b.ins().return_(&[y]);
//! b.seal_all_blocks();
//! b.finalize(module.target_config());
//! module.define_function(id, &mut ctx)?;
//! module.finalize_definitions()?;
//! // SAFETY (of the example): `double` has this signature.
//! let double: extern "C" fn(i64) -> i64 =
//!     unsafe { std::mem::transmute(module.get_finalized_function(id)) };
//! assert_eq!(double(21), 42);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
mod cpu;
mod direct;
mod emit;
mod error;
mod lazy;
mod module;
mod reloc;
mod stage;

pub use builder::{KilnBuilder, LibcallNames};
pub use cpu::required_cpu_features;
pub use error::Error;
pub use lazy::{BoxError, LazyContext};
pub use module::{GroupId, KilnModule};
