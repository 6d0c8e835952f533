//! kiln-arch: per-ISA machine code for kiln.
//!
//! # Map
//! - [`Arch`]: the one trait for ISA code, implemented by the zero-sized
//!   [`X86_64`] and [`Aarch64`]. Generic code is written over `A: Arch` and
//!   never matches on an ISA.
//! - [`template`]: the shapes ([`Template`]: size, alignment, [`Patch`]es) of
//!   the GOT entry, PLT stub, redirectable stub, reentry trampoline and
//!   reentry entry block; each ISA's `write_*` functions fill a buffer.
//! - [`redirect`] / [`redirect_raw`]: retarget a stub while others call it.
//! - Reentry (lazy reexports): [`set_reentry_handler`] installs the
//!   process-wide [`ReentryHandler`]; [`resolver_address`] is the resolver to
//!   patch into a reentry entry block. On x86-64 the entry itself is
//!   `global_asm!` ([`x86_64::reentry_asm_entry`]); on aarch64 it is
//!   generated code ([`Aarch64::write_reentry_entry`]).
//! - [`x86_64`], [`aarch64`]: one folder per ISA, each with its relocation
//!   table keyed by raw ELF `r_type` (`reloc`), which [`RelocArch`] wraps,
//!   and its templates.
//! - [`RelocArch`] (a sibling of [`Arch`], same two types): the relocation
//!   side a linker's generic passes use. [`RelocArch::edge`] decodes a raw
//!   `r_type` into a `&'static` [`EdgeDesc`] (name, width, PC-relative,
//!   [`EdgeTarget`]: symbol, branch that may need a stub, GOT entry, IE slot,
//!   TLS descriptor, TP offset…; GOT base; relaxable), [`RelocArch::apply`]
//!   applies it from psABI [`FixupValues`] (`P`, `S`/`G`/`L`/TLS offset, `A`,
//!   `GOT`, `Z`) with range errors, [`RelocArch::relax`] rewrites a GOT
//!   access into a direct one ([`Relaxation`]), [`RelocArch::fill_code`]
//!   pads code with trapping bytes, and [`RelocArch::BRANCH_RANGE`] /
//!   [`RelocArch::VENEER`] / [`RelocArch::write_veneer`] extend calls out of
//!   reach (aarch64: `adrp x16; add x16; br x16`; x86-64 needs none).
//! - [`FixupError`]: why a fixup or template write failed, never a panic.
//!
//! # Lazy call path
//! ```text
//! caller ─call─► redirectable stub ─jmp *slot─► reentry trampoline ─call *entry_slot─►
//! reentry entry (save args + vector state) ─► resolver ─► ReentryHandler
//!        ◄── impl address (handler also redirects slot → impl) ──
//! reentry entry (restore) ─► impl, returning straight to the caller
//! ```
//!
//! # Linking generically
//! ```
//! use kiln_arch::{Aarch64, FixupValues, RelocArch};
//!
//! // bl <target>, relocated by R_AARCH64_CALL26 (283).
//! let edge = Aarch64::edge(283).expect("supported");
//! assert!(edge.target.may_need_stub() && edge.pc_relative);
//! let mut code = 0x9400_0000u32.to_le_bytes();
//! let v = FixupValues { place: 0x1000, target: 0x2000, addend: 0, got: 0, size: 0 };
//! Aarch64::apply(edge, &mut code, 0, &v)?;
//! assert_eq!(u32::from_le_bytes(code), 0x9400_0400); // bl #+0x1000
//! // Out of ±128 MiB: the linker must route the call through a veneer.
//! assert!(!Aarch64::branch_reaches(0x1000, 0x1000 + (1 << 27)));
//! # Ok::<(), kiln_arch::FixupError>(())
//! ```
//!
//! # Example
//! Write a redirectable stub for x86-64 and read back its displacement:
//! ```
//! use kiln_arch::{Arch, X86_64};
//!
//! let stub_addr = 0x1000;
//! let slot_addr = 0x2000;
//! let mut buf = [0u8; X86_64::REDIRECTABLE_STUB.size];
//! X86_64::write_redirectable_stub(&mut buf, stub_addr, slot_addr)?;
//! // jmp *disp32(%rip), padded with int3
//! assert_eq!(buf, [0xff, 0x25, 0xfa, 0x0f, 0x00, 0x00, 0xcc, 0xcc]);
//! # Ok::<(), kiln_arch::FixupError>(())
//! ```

pub mod aarch64;
mod edge;
mod error;
mod reentry;
pub mod template;
pub mod x86_64;

use std::sync::atomic::AtomicU64;

pub use aarch64::Aarch64;
pub use edge::{EdgeDesc, EdgeForm, EdgeId, EdgeTarget, FixupValues, Relaxation, RelocArch};
pub use error::{FixupError, ReentryError};
pub use reentry::{
    ReentryHandler, redirect, redirect_raw, reentry_handler, resolver_address, set_reentry_handler,
};
pub use template::{Patch, PatchTarget, Template, TemplateKind};
pub use x86_64::X86_64;

/// The ISA-specific code kiln needs. Implemented by zero-sized types, one
/// per ISA. All addresses are the final (runtime) addresses of the places.
///
/// Every `write_*` function writes exactly `Template::size` bytes at the
/// start of `buf` and fails (never panics) when `buf` is too short, an
/// address is misaligned, or a referenced address is out of the template's
/// reach.
pub trait Arch: Copy + Default + std::fmt::Debug + Send + Sync + 'static {
    /// Human-readable name (`"x86-64"`, `"aarch64"`).
    const NAME: &'static str;
    /// ELF `e_machine` value.
    const ELF_MACHINE: u16;
    /// Shape of a GOT entry.
    const GOT_ENTRY: Template;
    /// Shape of a PLT stub (jump through a GOT slot).
    const PLT_STUB: Template;
    /// Shape of a redirectable stub (jump through a pointer slot).
    const REDIRECTABLE_STUB: Template;
    /// Shape of a reentry trampoline.
    const REENTRY_TRAMPOLINE: Template;
    /// Shape of the reentry entry block (one per JIT is enough).
    const REENTRY_ENTRY: Template;

    /// Writes a GOT entry at `entry` holding `target` (an 8-byte
    /// little-endian pointer on every supported ISA).
    ///
    /// # Errors
    /// [`FixupError::OutOfBounds`] if `buf` is too short,
    /// [`FixupError::Misaligned`] if `entry` is not 8-byte aligned.
    fn write_got_entry(buf: &mut [u8], entry: u64, target: u64) -> Result<(), FixupError> {
        let out = Self::GOT_ENTRY.check(buf, entry)?;
        out.copy_from_slice(&target.to_le_bytes());
        Ok(())
    }

    /// Writes a PLT stub at `stub` that jumps to the address held in the
    /// GOT slot at `got_slot`.
    ///
    /// # Errors
    /// Short buffer, misaligned `stub` or `got_slot`, or `got_slot` out of
    /// the stub's PC-relative reach (±2 GiB on x86-64, ±4 GiB pages on aarch64).
    fn write_plt_stub(buf: &mut [u8], stub: u64, got_slot: u64) -> Result<(), FixupError>;

    /// Writes a redirectable stub at `stub` that jumps to the address held
    /// in the pointer slot at `slot` (retarget it with [`Arch::redirect`]).
    ///
    /// # Errors
    /// As [`Arch::write_plt_stub`].
    fn write_redirectable_stub(buf: &mut [u8], stub: u64, slot: u64) -> Result<(), FixupError>;

    /// Writes a reentry trampoline at `trampoline` that calls the reentry
    /// entry whose address is held in the pointer slot at `entry_slot`. The
    /// entry passes `trampoline` to the resolver. Many trampolines may share
    /// one entry slot.
    ///
    /// # Errors
    /// As [`Arch::write_plt_stub`].
    fn write_reentry_trampoline(
        buf: &mut [u8],
        trampoline: u64,
        entry_slot: u64,
    ) -> Result<(), FixupError>;

    /// Writes the reentry entry block at `entry`, calling `resolver` (an
    /// `extern "C" fn(trampoline: u64) -> u64`; normally
    /// [`resolver_address()`]). Store `entry` into the trampolines' entry slot.
    ///
    /// # Errors
    /// Short buffer, misaligned `entry`, or [`FixupError::HostUnsupported`]
    /// when the ISA's entry is in-process code that this host lacks (x86-64
    /// on a non-x86-64 host, or an x86-64 CPU without XSAVE).
    fn write_reentry_entry(buf: &mut [u8], entry: u64, resolver: u64) -> Result<(), FixupError>;

    /// Retargets a stub's pointer slot; see [`redirect`] for the ordering.
    fn redirect(slot: &AtomicU64, target: u64) {
        redirect(slot, target);
    }

    /// Whether `name` is something compilers reference for this ISA that
    /// only the static runtime library (`libgcc.a`) defines, hidden: no
    /// shared library exports it, so no process can look it up.
    fn is_static_runtime_helper(name: &str) -> bool {
        let _ = name;
        false
    }

    /// Whether kiln's image loaders (kiln's own and the C loader) bind
    /// `name`, a [static runtime helper](Arch::is_static_runtime_helper),
    /// to a copy of their own: an image imports it by name.
    fn loaders_bind(name: &str) -> bool {
        let _ = name;
        false
    }
}
