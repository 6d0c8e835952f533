//! [`KilnBuilder`]: cranelift-jit's `JITBuilder`, for a [`KilnModule`].

use std::fmt;

use cranelift_codegen::ir::LibCall;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use kiln_linker::jit::{Jit, JitBuilder};

use crate::error::Error;
use crate::module::KilnModule;

/// Names for cranelift's library calls (as
/// `cranelift_module::default_libcall_names()` returns).
pub type LibcallNames = Box<dyn Fn(LibCall) -> String + Send + Sync>;

/// Configures a [`KilnModule`]: the target, host symbols, kiln's threads.
/// Mirrors cranelift-jit's `JITBuilder` (`new`, `with_flags`, `with_isa`,
/// `symbol`, `symbols`), so switching is a matter of names.
pub struct KilnBuilder {
    pub(crate) isa: OwnedTargetIsa,
    pub(crate) libcall_names: LibcallNames,
    pub(crate) symbols: Vec<(String, usize)>,
    pub(crate) jit: JitBuilder,
}

impl fmt::Debug for KilnBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KilnBuilder")
            .field("isa", &self.isa.triple())
            .field("symbols", &self.symbols.len())
            .field("jit", &self.jit)
            .finish_non_exhaustive()
    }
}

impl KilnBuilder {
    /// A builder for the host's CPU with cranelift's default flags and
    /// `is_pic = false` (as cranelift-jit's).
    pub fn new(libcall_names: LibcallNames) -> Result<Self, Error> {
        Self::with_flags(&[], libcall_names)
    }

    /// [`KilnBuilder::new`] with cranelift settings `(name, value)` applied
    /// after `is_pic = false` (`("is_pic", "true")` works too: kiln links
    /// PIC code through its GOT).
    pub fn with_flags(flags: &[(&str, &str)], libcall_names: LibcallNames) -> Result<Self, Error> {
        let mut flag_builder = settings::builder();
        for &(name, value) in std::iter::once(&("is_pic", "false")).chain(flags) {
            flag_builder
                .set(name, value)
                .map_err(|source| Error::Setting {
                    name: name.into(),
                    value: value.into(),
                    source,
                })?;
        }
        let isa_builder =
            cranelift_native::builder().map_err(|e| Error::HostTarget { source: e.into() })?;
        let isa = isa_builder
            .finish(settings::Flags::new(flag_builder))
            .map_err(|e| Error::HostTarget {
                source: Box::new(e),
            })?;
        Ok(Self::with_isa(isa, libcall_names))
    }

    /// A builder compiling for `isa` (which must be the host's).
    pub fn with_isa(isa: OwnedTargetIsa, libcall_names: LibcallNames) -> Self {
        KilnBuilder {
            isa,
            libcall_names,
            symbols: Vec::new(),
            jit: Jit::builder(),
        }
    }

    /// Defines `name` as the address `ptr` (a host function or data),
    /// found before the process's own symbols.
    pub fn symbol(&mut self, name: impl Into<String>, ptr: *const u8) -> &mut Self {
        self.symbols.push((name.into(), ptr as usize));
        self
    }

    /// [`KilnBuilder::symbol`] for each pair.
    pub fn symbols<K: Into<String>>(
        &mut self,
        symbols: impl IntoIterator<Item = (K, *const u8)>,
    ) -> &mut Self {
        for (name, ptr) in symbols {
            self.symbol(name, ptr);
        }
        self
    }

    /// Links on `n` kiln worker threads (default: one per core).
    pub fn threads(&mut self, n: usize) -> &mut Self {
        self.map_jit(|b| b.threads(n))
    }

    /// Runs kiln's tasks on `dispatcher` instead of a worker pool (for
    /// example `kiln_engine::InPlaceDispatcher`: everything on the thread
    /// that asks, no thread started — staged code is not mapped ahead on
    /// rayon's threads either: `kiln_linker::LinkOptions::parallel` off).
    pub fn dispatcher(&mut self, dispatcher: impl kiln_engine::Dispatcher) -> &mut Self {
        self.map_jit(|b| b.dispatcher(dispatcher))
    }

    /// Whether code may call the process's symbols and `-l` libraries
    /// (default on, as cranelift-jit's `dlsym` fallback).
    pub fn host_symbols(&mut self, yes: bool) -> &mut Self {
        self.map_jit(|b| b.host_symbols(yes))
    }

    /// Also resolves symbols from `libNAME.so`.
    ///
    /// # Safety
    ///
    /// As for [`kiln_linker::jit::JitBuilder::library`]: the library's
    /// initializers run in this process, and code calling its functions
    /// trusts them.
    pub unsafe fn library(&mut self, name: impl Into<String>) -> &mut Self {
        let name = name.into();
        // SAFETY: this function's caller vouches for the library.
        self.map_jit(|b| unsafe { b.library(name) })
    }

    fn map_jit(&mut self, f: impl FnOnce(JitBuilder) -> JitBuilder) -> &mut Self {
        let jit = std::mem::take(&mut self.jit);
        self.jit = f(jit);
        self
    }

    /// The module (cranelift-jit: `JITModule::new(builder)`).
    pub fn build(self) -> Result<KilnModule, Error> {
        KilnModule::new(self)
    }
}
