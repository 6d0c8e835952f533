//! kiln-arch: per-ISA machine code for kiln.
//!
//! One folder per ISA ([`x86_64`], [`aarch64`]): relocation tables and fixup
//! math keyed by raw ELF `r_type`, stub and trampoline templates, and the
//! reentry entry point used by lazy reexports.

pub mod aarch64;
mod error;
pub mod x86_64;

pub use error::FixupError;
