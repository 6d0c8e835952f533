//! The backend's errors.

use cranelift_module::ModuleError;

/// What can go wrong in a [`crate::KilnModule`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building the kiln JIT, linking or looking up failed (user error: a
    /// missing symbol; implementation limit: a relocation out of reach).
    #[error(transparent)]
    Jit(Box<kiln_linker::jit::JitError>),
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(Box<kiln_engine::Error>),
    /// The linker refused the code.
    #[error(transparent)]
    Link(Box<kiln_linker::LinkError>),
    /// Cranelift could not compile a function.
    #[error("compiling {function}")]
    Compile {
        /// The function.
        function: String,
        /// Cranelift's error.
        #[source]
        source: cranelift_codegen::CodegenError,
    },
    /// A cranelift setting given to [`crate::KilnBuilder::with_flags`] is
    /// unknown or has a bad value (user error).
    #[error("cranelift setting {name} = {value}")]
    Setting {
        /// The setting's name.
        name: String,
        /// The value given.
        value: String,
        /// Cranelift's error.
        #[source]
        source: cranelift_codegen::settings::SetError,
    },
    /// Cranelift cannot compile for this host (implementation limit).
    #[error("this host as a cranelift target")]
    HostTarget {
        /// Cranelift's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// What cranelift-module's rules refuse (a second definition, a
    /// definition of an import): the [`ModuleError`] cranelift-jit returns,
    /// given back as it is through the [`cranelift_module::Module`] trait.
    #[error(transparent)]
    Declaration(Box<ModuleError>),
    /// A relocation kind this backend cannot link on this target
    /// (implementation limit).
    #[error("{function}: relocation {reloc} is not supported by kiln-cranelift on this target")]
    UnsupportedReloc {
        /// The function or data object holding it.
        function: String,
        /// Cranelift's name of the relocation kind.
        reloc: String,
    },
    /// A feature this backend does not have (implementation limit).
    #[error("{what} is not supported by kiln-cranelift")]
    Unsupported {
        /// What was asked for.
        what: String,
    },
    /// A lazy function's compile callback failed (user error).
    #[error("compiling {function} on its first call")]
    LazyCompile {
        /// The function.
        function: String,
        /// The callback's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The operation needs a function declared with
    /// [`crate::KilnModule::declare_lazy_function`] (user error).
    #[error("{function} was not declared with declare_lazy_function; it cannot be replaced")]
    NotSwappable {
        /// The function.
        function: String,
    },
    /// The function or data object is not defined and finalized (user error).
    #[error("{name} is not finalized (define it, then call finalize_definitions)")]
    NotFinalized {
        /// Its linkage name.
        name: String,
    },
    /// No such group, or it was freed already (user error).
    #[error("group {0} does not exist or was freed")]
    NoGroup(usize),
    /// A call that does not fit the declarations (an id never declared,
    /// code without its function's record).
    #[error("{0}")]
    Module(String),
}

impl From<Error> for ModuleError {
    fn from(e: Error) -> ModuleError {
        match e {
            Error::Declaration(e) => *e,
            e => ModuleError::Backend(anyhow::Error::new(e)),
        }
    }
}

impl From<ModuleError> for Error {
    fn from(e: ModuleError) -> Error {
        Error::Declaration(Box::new(e))
    }
}

impl From<kiln_linker::jit::JitError> for Error {
    fn from(e: kiln_linker::jit::JitError) -> Error {
        Error::Jit(Box::new(e))
    }
}

impl From<kiln_engine::Error> for Error {
    fn from(e: kiln_engine::Error) -> Error {
        Error::Engine(Box::new(e))
    }
}

impl From<kiln_linker::LinkError> for Error {
    fn from(e: kiln_linker::LinkError) -> Error {
        Error::Link(Box::new(e))
    }
}
