//! Errors of the linker. Every variant names what went wrong and where.

use std::fmt::Write as _;

use kiln_arch::FixupError;

use crate::runtime::RuntimeError;
use crate::runtime::tls::TlsError;

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The engine refused a definition or lookup (`source` says why), or
    /// the linker's side of the engine's protocol broke (a linker bug; no
    /// `source`).
    #[error("{detail}{}", cause(source.as_ref()))]
    Engine {
        /// What was attempted, naming the object or image.
        detail: String,
        /// The engine's error.
        #[source]
        source: Option<Cause<kiln_engine::Error>>,
    },
    /// Reading a file failed (user error).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not a well-formed ELF x86-64 relocatable object or archive
    /// (user error).
    #[error("{object}: {detail}{}", cause(source.as_ref()))]
    Malformed {
        /// Object (path or `archive(member)`).
        object: String,
        /// What is wrong, and where.
        detail: String,
        /// The ELF or archive reader's error, when it found the fault.
        #[source]
        source: Option<object::read::Error>,
    },
    /// A relocation kiln does not handle (user error or implementation limit).
    #[error("{object}: section {section} offset {offset:#x}: unsupported relocation type {r_type}{}", name.map(|n| format!(" ({n})")).unwrap_or_default())]
    UnsupportedRelocation {
        /// Object.
        object: String,
        /// Section holding the place.
        section: String,
        /// Offset of the place in the section.
        offset: u64,
        /// Raw `r_type`.
        r_type: u32,
        /// psABI name, if known.
        name: Option<&'static str>,
    },
    /// A fixup could not be applied (value out of range, place out of bounds…).
    #[error("{object}: section {section} offset {offset:#x}: {reloc} against `{symbol}`: {source}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Fixup {
        /// Object.
        object: String,
        /// Section holding the place.
        section: String,
        /// Offset of the place in the section.
        offset: u64,
        /// psABI name of the relocation.
        reloc: &'static str,
        /// Target symbol.
        symbol: String,
        /// The arch error.
        #[source]
        source: Cause<FixupError>,
        /// How to avoid it, when known.
        hint: Option<&'static str>,
    },
    /// A fixup an image cannot express (imaging mode, user error): loading
    /// would have to write text or would depend on this process's addresses.
    #[error(
        "{object}: section {section} offset {offset:#x}: {reloc} against `{symbol}` cannot be saved in an image: {reason}"
    )]
    NotImageable {
        /// Object.
        object: String,
        /// Section holding the place.
        section: String,
        /// Offset of the place in the section.
        offset: u64,
        /// psABI name of the relocation.
        reloc: &'static str,
        /// Target symbol.
        symbol: String,
        /// Why, and how to avoid it.
        reason: &'static str,
    },
    /// Symbols nobody defines (user error). Lists every missing name with
    /// the objects referencing it.
    #[error("{}", missing_message(missing))]
    MissingSymbols {
        /// `(name, objects referencing it)`, sorted by name.
        missing: Vec<(String, Vec<String>)>,
    },
    /// An external and the definition it resolved to disagree on being
    /// thread-local (user error: a declaration that does not match).
    #[error(
        "`{symbol}` is used as {} by {objects}, but the definition found {}",
        if *used_as_thread_local { "a thread-local" } else { "code or plain data" },
        if *used_as_thread_local {
            "is not thread-local"
        } else {
            "is a thread-local variable (declare it `extern __thread` or `extern thread_local`)"
        }
    )]
    ThreadLocalMismatch {
        /// The symbol.
        symbol: String,
        /// The objects referencing it, comma-separated.
        objects: String,
        /// Whether they reference it as a thread-local.
        used_as_thread_local: bool,
    },
    /// Strong symbols defined more than once (user error). Lists all of them.
    #[error("{}", duplicate_message(duplicates))]
    DuplicateSymbols {
        /// `(name, objects defining it)`.
        duplicates: Vec<(String, Vec<String>)>,
    },
    /// Live code refers to a section that was dropped (a COMDAT duplicate's
    /// local symbol, or a non-allocated section).
    #[error(
        "{object}: section {section} offset {offset:#x}: relocation refers to `{symbol}` in a discarded section"
    )]
    DiscardedReference {
        /// Object.
        object: String,
        /// Section holding the place.
        section: String,
        /// Offset of the place.
        offset: u64,
        /// The symbol.
        symbol: String,
    },
    /// Address space or page protection could not be obtained (environment).
    #[error("memory: {detail}: {source}")]
    Memory {
        /// What was attempted.
        detail: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Non-PIE code refers to data that another image holds out of its
    /// 32-bit reach (user error: the data's image was linked, above 2 GiB,
    /// before non-PIE code was added to the layer; or implementation limit:
    /// no memory below 2 GiB was left for it).
    #[error(
        "{object}: section {section} offset {offset:#x}: {reloc} against `{symbol}`: non-PIE code refers to data of another image placed out of its 32-bit reach; add non-PIE objects before the images whose data they use are linked, or compile with -fPIE or -fPIC"
    )]
    DataOutOfReach {
        /// Object holding the place.
        object: String,
        /// Section holding the place.
        section: String,
        /// Offset of the place in the section.
        offset: u64,
        /// psABI name of the relocation.
        reloc: &'static str,
        /// The data symbol.
        symbol: String,
    },
    /// Non-PIE code needs memory below 2 GiB and none could be reserved.
    #[error(
        "{object}: section {section} offset {offset:#x}: {reloc} needs the image below 2 GiB (non-PIE code), but no address space there could be reserved; recompile with -fPIE or -fPIC"
    )]
    LowMemoryUnavailable {
        /// Object.
        object: String,
        /// Section.
        section: String,
        /// Offset.
        offset: u64,
        /// Relocation name.
        reloc: &'static str,
    },
    /// A shared library could not be loaded (user error).
    #[error(
        "cannot load library {name}: {}",
        kiln_engine::message_with_causes(source)
    )]
    Library {
        /// The `-l` name or path.
        name: String,
        /// The loader's error (`dlerror`'s text is its own `source()`).
        #[source]
        source: libloading::Error,
    },
    /// The objects are for another ISA than this process's, and only an
    /// image (imaging mode: `kiln image save`) can be linked for it.
    #[error(
        "{object}: {isa} code cannot be linked into this {host} process; save it as an image (`kiln image save -o OUT.kimg INPUT...`) and run it on an {isa} machine, e.g. with linker/loader/kiln-load"
    )]
    ForeignIsa {
        /// The first object of the link.
        object: String,
        /// The objects' ISA.
        isa: &'static str,
        /// This process's ISA.
        host: &'static str,
    },
    /// Thread-local storage could not be set up.
    #[error("thread-local storage: {detail}{}", cause(source.as_ref()))]
    Tls {
        /// What failed, naming variable and object.
        detail: String,
        /// The TLS runtime's refusal, when it refused.
        #[source]
        source: Option<Cause<TlsError>>,
    },
    /// Registering the image with the runtime failed (eh_frame, `__dso_handle`).
    #[error("runtime: {what}: {source}")]
    Runtime {
        /// What was being registered, naming the image.
        what: String,
        /// The runtime's error.
        #[source]
        source: Cause<RuntimeError>,
    },
    /// Announcing the image to a debugger or profiler failed (only when
    /// [`crate::LinkOptions::debug`] enables one).
    #[error("{image}: debugger/profiler interface")]
    Debug {
        /// The image.
        image: String,
        /// What failed.
        #[source]
        source: crate::debug::DebugError,
    },
}

fn missing_message(missing: &[(String, Vec<String>)]) -> String {
    let mut s = format!("{} undefined symbol(s):", missing.len());
    let mut static_only = false;
    for (name, objs) in missing {
        let _ = write!(s, "\n  {name} (referenced by {}", objs.join(", "));
        // No process exports these: the root cause is a missing input.
        if crate::isa::Isa::any_static_runtime_helper(name) {
            s.push_str("; only the static libgcc defines it");
            static_only = true;
        }
        s.push(')');
    }
    if static_only {
        s.push_str(
            "\nadd the compiler's libgcc.a to the inputs (`gcc -print-libgcc-file-name` names it)",
        );
    }
    s
}

fn duplicate_message(dups: &[(String, Vec<String>)]) -> String {
    let mut s = format!("{} duplicate symbol(s):", dups.len());
    for (name, objs) in dups {
        let _ = write!(s, "\n  {name} (defined in {})", objs.join(", "));
    }
    s
}

/// A cause kept on the heap (an error enum stays small) that is its error's
/// `source()` as itself: `std::error::Error::source` of an error holding a
/// `Cause<T>` downcasts to `T` — that of a `Box<T>` field would downcast
/// only to `Box<T>` (a `Box` of an error is an error type of its own), and
/// a walk looking for `T` (`kiln_engine::Error::downcast_ref`) would pass
/// it by. Dereferences to `T`; deliberately not an error type itself.
pub struct Cause<T>(Box<T>);

impl<T> Cause<T> {
    /// Boxes `cause`.
    pub fn new(cause: T) -> Self {
        Cause(Box::new(cause))
    }

    /// The cause itself.
    pub fn into_inner(self) -> T {
        *self.0
    }
}

impl<T> From<T> for Cause<T> {
    fn from(cause: T) -> Self {
        Cause::new(cause)
    }
}

impl<T> std::ops::Deref for Cause<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Cause<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Cause<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl<T: Clone> Clone for Cause<T> {
    fn clone(&self) -> Self {
        Cause(self.0.clone())
    }
}

/// `": cause"` when there is a cause: a message quotes its cause, which
/// stays its `source()` too (a reporter that walks the chain skips the
/// sources a message already quotes, as `kiln`'s does).
fn cause(source: Option<&impl std::fmt::Display>) -> String {
    source.map(|s| format!(": {s}")).unwrap_or_default()
}

impl LinkError {
    pub(crate) fn malformed(object: &str, detail: impl Into<String>) -> Self {
        LinkError::Malformed {
            object: object.to_string(),
            detail: detail.into(),
            source: None,
        }
    }

    /// The reader's error `source` found the fault `detail` (where: section,
    /// symbol, member) in `object`.
    pub(crate) fn malformed_by(
        object: &str,
        detail: impl Into<String>,
        source: object::read::Error,
    ) -> Self {
        LinkError::Malformed {
            object: object.to_string(),
            detail: detail.into(),
            source: Some(source),
        }
    }

    /// The engine refused `detail` (what was attempted, naming the object or image).
    pub(crate) fn engine(detail: impl Into<String>, source: kiln_engine::Error) -> Self {
        LinkError::Engine {
            detail: detail.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// A linker bug on the engine's side of the link, with no underlying error.
    pub(crate) fn engine_bug(detail: impl Into<String>) -> Self {
        LinkError::Engine {
            detail: detail.into(),
            source: None,
        }
    }

    /// A TLS failure that `detail` explains whole (no underlying error).
    pub(crate) fn tls(detail: impl Into<String>) -> Self {
        LinkError::Tls {
            detail: detail.into(),
            source: None,
        }
    }

    /// The TLS runtime refused `detail` (what, naming the image or variable).
    pub(crate) fn tls_refused(detail: impl Into<String>, source: TlsError) -> Self {
        LinkError::Tls {
            detail: detail.into(),
            source: Some(Cause::new(source)),
        }
    }

    /// The runtime refused to register `what` (naming the image).
    pub(crate) fn runtime(what: impl Into<String>, source: RuntimeError) -> Self {
        LinkError::Runtime {
            what: what.into(),
            source: Cause::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Within clippy's `result_large_err` (128 bytes) with room for the
    /// tag of an enum wrapping it (`JitError`): big causes go in a `Cause`.
    #[test]
    fn a_link_error_stays_small() {
        assert!(
            size_of::<super::LinkError>() <= 120,
            "{}",
            size_of::<super::LinkError>()
        );
    }
}
