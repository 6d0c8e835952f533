//! kiln-linker: links relocatable ELF objects into this process.
//!
//! # Map of the crate
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`graph`] | [`LinkGraph`]: sections → blocks → symbols, edges holding `kiln-arch`'s `&'static EdgeDesc` (typed indices); block bytes stay in the shared input file until finalization |
//! | [`elf`] | the ELF relocatable reader, x86-64 and aarch64 (COMDAT, `.eh_frame` splitting, raw `r_type`s decoded by the object's [`isa::Isa`]) |
//! | [`isa`] | [`isa::Isa`]: the link target (the objects' ISA; another than the host's only for an image) |
//! | [`archive`] | static archives: symbol index, members pulled on demand |
//! | [`passes`] | the pipeline: one file a pass under `passes/`, one sequencer (`passes::run`), [`passes::link_graph`], [`passes::Prepared`] |
//! | [`memory`] | the reserved slab(s) and allocations: writing → finalized → released |
//! | `host` | [`HostSymbols`]: runtime overrides, `-l` libraries, the process |
//! | `image` | [`Linker`] (the convenient API: objects parsed in parallel, merged in order as they arrive) and [`LinkedImage`] |
//! | [`image_file`] | image files: linked code saved ([`LinkedImage::save_image`]; a dylib's many links as one image: [`layer::ObjectLayer::save_image`]) and loaded in a later process ([`image_file::load`], [`layer::ObjectLayer::add_image`]) |
//! | [`runtime`] | what JIT'd code calls at run time (atexit, TLS, eh_frame registration, initializers) |
//! | [`layer`] | the engine's object layer: objects as materialization units |
//! | [`jit`] | [`Jit::builder`]: a ready JIT in one call — start here |
//! | [`lazy`] | lazy reexports: trampolines and redirectable stubs in JIT memory |
//! | [`debug`] | opt-in debugger and profiler interfaces: GDB JIT objects, perf map, jitdump |
//!
//! The pass order is visible in one function, the sequencer in
//! `passes/mod.rs`: duplicates → commons → prune → GOT/PLT → far host
//! symbols → layout → allocate → (a) own symbols final → (b) look up every
//! external at once → (c) copy each block into the image and fix it up
//! there (rayon for large graphs), then finalize. [`passes::link_graph`]
//! runs it for [`Linker`]; the engine layer runs the same sequencer with
//! hooks that report its addresses and look externals up through the
//! engine, and emits the image's symbols as one group (see [`layer`]).
//!
//! Where the time goes, and how it is measured: `docs/performance-link.md`.
//!
//! # Example
//!
//! ```no_run
//! use kiln_linker::{HostSymbols, Linker};
//! let mut linker = Linker::new(Default::default());
//! linker.add_object_file("hello.o")?;
//! let mut image = linker.link(&HostSymbols::new())?;
//! // SAFETY (of the example): hello.o is a C program, sound to run here.
//! unsafe { image.run_initializers() };
//! let main = image.symbol("main").expect("main is defined");
//! // SAFETY (of the example): `main` is a C function `int main(void)`.
//! let main: extern "C" fn() -> i32 = unsafe { std::mem::transmute(main as usize) };
//! println!("main returned {}", main());
//! # Ok::<(), kiln_linker::LinkError>(())
//! ```

pub mod archive;
pub mod debug;
pub mod elf;
mod error;
pub mod graph;
mod host;
mod image;
pub mod image_file;
pub mod isa;
pub mod jit;
pub mod layer;
pub mod lazy;
pub mod memory;
pub mod passes;
pub mod runtime;

pub use debug::DebugOptions;
pub use error::{Cause, LinkError};
pub use jit::{Jit, JitBuilder};

/// docs/guide.md, compiled and run as doc tests: every API the guide names
/// exists and its snippets work.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
pub struct GuideDocTests;

/// README.md's snippets, as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDocTests;
pub use graph::LinkGraph;
pub use host::{HostSymbols, SymbolResolver};
pub use image::{LinkedImage, Linker, NameAll, ReadGraph};
pub use passes::{LinkOptions, LinkStats, PhaseTimings, Roots};
