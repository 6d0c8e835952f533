//! Code and data templates: what each ISA writes for GOT entries, PLT stubs,
//! redirectable stubs, reentry trampolines and the reentry entry block.
//!
//! A [`Template`] describes the shape (size, alignment) and the places that
//! refer to other addresses ([`Patch`]). The `write_*` functions of
//! [`Arch`](crate::Arch) fill a caller-provided buffer with final bytes given
//! those addresses; a linker that prefers to keep references as edges of its
//! link graph (so a later pass can rebase them) can instead copy the bytes
//! written for address 0 and apply each [`Patch`] as a relocation of the
//! given raw ELF `r_type` with its own relocation table.

use crate::FixupError;

/// Which template a [`Template`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TemplateKind {
    /// An 8-byte pointer (a GOT entry, a redirectable stub's pointer slot, or
    /// the slot through which trampolines reach the reentry entry).
    GotEntry,
    /// A jump through a GOT slot, for calls to targets out of branch range.
    PltStub,
    /// An indirect jump through a pointer slot that [`redirect`](crate::redirect)
    /// may retarget while other threads call through it.
    RedirectableStub,
    /// A call into the reentry entry whose return address identifies the trampoline.
    ReentryTrampoline,
    /// The block the trampolines' entry slot points at: saves the argument
    /// registers, calls a resolver, restores them and jumps to the implementation.
    ReentryEntry,
    /// A jump to a fixed target, placed within branch range of a caller
    /// whose target is out of it (aarch64 `CALL26`/`JUMP26`).
    Veneer,
}

impl TemplateKind {
    /// A short name used in error messages and golden tables.
    pub const fn name(self) -> &'static str {
        match self {
            Self::GotEntry => "got-entry",
            Self::PltStub => "plt-stub",
            Self::RedirectableStub => "redirectable-stub",
            Self::ReentryTrampoline => "reentry-trampoline",
            Self::ReentryEntry => "reentry-entry",
            Self::Veneer => "veneer",
        }
    }
}

/// The address a [`Patch`] refers to, named after the parameters of the
/// `write_*` functions of [`Arch`](crate::Arch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PatchTarget {
    /// The pointer a GOT entry holds.
    Target,
    /// The 8-byte pointer slot a stub or trampoline loads its destination from.
    Slot,
    /// The resolver function the reentry entry calls.
    Resolver,
    /// The in-process code the reentry entry block jumps to (x86-64 only).
    Entry,
}

/// One place in a template that holds a reference to another address.
///
/// Applying relocation `r_type` (raw ELF type of the template's ISA) at
/// `offset` with symbol value `S` = the address named by `target` and addend
/// `addend` yields exactly the bytes the `write_*` function writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Patch {
    /// Byte offset of the place from the start of the template.
    pub offset: u32,
    /// Raw ELF relocation type (`R_X86_64_*` or `R_AARCH64_*`).
    pub r_type: u32,
    /// Relocation addend.
    pub addend: i64,
    /// Which address the place refers to.
    pub target: PatchTarget,
}

/// Shape of one template: size, alignment and the places to patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Template {
    /// What it is.
    pub kind: TemplateKind,
    /// Size in bytes (padding included).
    pub size: usize,
    /// Required alignment of its start address in bytes (a power of two).
    pub align: usize,
    /// Places that refer to other addresses.
    pub patches: &'static [Patch],
}

impl Template {
    /// Checks that `buf` can hold this template and that `addr` is suitably
    /// aligned for it; returns the part of `buf` to write.
    pub(crate) fn check<'b>(
        &self,
        buf: &'b mut [u8],
        addr: u64,
    ) -> Result<&'b mut [u8], FixupError> {
        let len = buf.len();
        let out = buf.get_mut(..self.size).ok_or(FixupError::OutOfBounds {
            reloc: self.kind.name(),
            offset: 0,
            width: u32::try_from(self.size).unwrap_or(u32::MAX),
            len: len as u64,
        })?;
        check_align(self.kind.name(), addr, self.align as u64)?;
        Ok(out)
    }
}

/// The `width`-byte place at `offset` in `block`, or
/// [`FixupError::OutOfBounds`] naming `reloc` if it runs past the block.
#[inline]
pub(crate) fn place_mut<'b>(
    reloc: &'static str,
    block: &'b mut [u8],
    offset: u64,
    width: u32,
) -> Result<&'b mut [u8], FixupError> {
    let len = block.len() as u64;
    usize::try_from(offset)
        .ok()
        .and_then(|start| Some(start..start.checked_add(width as usize)?))
        .and_then(|range| block.get_mut(range))
        .ok_or(FixupError::OutOfBounds {
            reloc,
            offset,
            width,
            len,
        })
}

/// Returns [`FixupError::Misaligned`] unless `value` is a multiple of `align`.
pub(crate) fn check_align(what: &'static str, value: u64, align: u64) -> Result<(), FixupError> {
    if align > 1 && !value.is_multiple_of(align) {
        return Err(FixupError::Misaligned {
            reloc: what,
            value: i128::from(value),
            align: u32::try_from(align).unwrap_or(u32::MAX),
        });
    }
    Ok(())
}
