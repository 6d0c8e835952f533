//! x86-64 (System V): relocations and code templates.
//!
//! | template | bytes | size / align | patches |
//! |---|---|---|---|
//! | GOT entry | `<target:8>` | 8 / 8 | `R_X86_64_64` @0 → target |
//! | PLT stub | `ff 25 <rel32> cc cc` = `jmp *slot(%rip); int3; int3` | 8 / 8 | `R_X86_64_PC32` @2, addend −4 → GOT slot |
//! | redirectable stub | same as PLT stub | 8 / 8 | `R_X86_64_PC32` @2, addend −4 → pointer slot |
//! | reentry trampoline | `ff 15 <rel32> cc cc` = `call *entry_slot(%rip); int3; int3` | 8 / 8 | `R_X86_64_PC32` @2, addend −4 → entry slot |
//! | reentry entry block | `49 bb <resolver:8>` `ff 25 00 00 00 00` `<asm entry:8>` = `movabs $resolver, %r11; jmp *0(%rip)` | 24 / 8 | `R_X86_64_64` @2 → resolver, `R_X86_64_64` @16 → in-process asm entry |
//!
//! The padding keeps every stub inside one 64-byte line (8-byte aligned,
//! 8 bytes long) and traps if anything ever falls through.
//!
//! Reentry trampoline: `call *entry_slot(%rip)` needs no scratch register at
//! all and reaches an entry anywhere in the address space (the slot, which
//! must be within ±2 GiB, holds the full 64-bit address). The return address
//! it pushes, minus 6, is the trampoline's address: its identity. The entry
//! block then loads the resolver into `r11`, which System V defines as a
//! temporary that carries no argument (not even the static chain, which is
//! `r10`) and which PLT-style glue may clobber, so no argument is lost.

#[cfg(all(target_arch = "x86_64", not(windows)))]
mod entry;
pub mod reloc;

use crate::edge::{EdgeDesc, FixupValues, Relaxation, RelocArch};
use crate::template::{Patch, PatchTarget, Template, TemplateKind, check_align};
use crate::{Arch, FixupError};

#[cfg(all(target_arch = "x86_64", not(windows)))]
pub use entry::{reentry_asm_entry, reentry_asm_entry_default, xsave_layout};

/// `R_X86_64_64`: `S + A`, 64 bits.
const R_X86_64_64: u32 = 1;
/// `R_X86_64_PC32`: `S + A - P`, 32 bits signed.
const R_X86_64_PC32: u32 = 2;

/// Length of the `call *disp32(%rip)` a trampoline starts with: the return
/// address it pushes minus this is the trampoline's address.
pub const TRAMPOLINE_CALL_LEN: u64 = 6;

/// The x86-64 System V ISA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct X86_64;

const SLOT_JUMP_PATCHES: &[Patch] = &[Patch {
    offset: 2,
    r_type: R_X86_64_PC32,
    addend: -4,
    target: PatchTarget::Slot,
}];

/// Writes `template` (8 bytes): `ff <modrm>` (`modrm` 0x25 for
/// `jmp *disp32(%rip)`, 0x15 for `call *disp32(%rip)`) with the displacement
/// to `slot`, padded with two `int3`.
fn rip_indirect(
    template: &Template,
    buf: &mut [u8],
    at: u64,
    slot: u64,
    modrm: u8,
) -> Result<(), FixupError> {
    let what = template.kind;
    let out = template.check(buf, at)?;
    check_align(what.name(), slot, 8)?;
    let disp = i128::from(slot) - i128::from(at) - 6;
    let disp = i32::try_from(disp).map_err(|_| FixupError::OutOfRange {
        reloc: what.name(),
        value: disp,
        min: i128::from(i32::MIN),
        max: i128::from(i32::MAX),
    })?;
    out[0] = 0xff;
    out[1] = modrm;
    out[2..6].copy_from_slice(&disp.to_le_bytes());
    out[6] = 0xcc;
    out[7] = 0xcc;
    Ok(())
}

impl Arch for X86_64 {
    const NAME: &'static str = "x86-64";
    const ELF_MACHINE: u16 = 62; // EM_X86_64
    const GOT_ENTRY: Template = Template {
        kind: TemplateKind::GotEntry,
        size: 8,
        align: 8,
        patches: &[Patch {
            offset: 0,
            r_type: R_X86_64_64,
            addend: 0,
            target: PatchTarget::Target,
        }],
    };
    const PLT_STUB: Template = Template {
        kind: TemplateKind::PltStub,
        size: 8,
        align: 8,
        patches: SLOT_JUMP_PATCHES,
    };
    const REDIRECTABLE_STUB: Template = Template {
        kind: TemplateKind::RedirectableStub,
        size: 8,
        align: 8,
        patches: SLOT_JUMP_PATCHES,
    };
    const REENTRY_TRAMPOLINE: Template = Template {
        kind: TemplateKind::ReentryTrampoline,
        size: 8,
        align: 8,
        patches: SLOT_JUMP_PATCHES,
    };
    const REENTRY_ENTRY: Template = Template {
        kind: TemplateKind::ReentryEntry,
        size: 24,
        align: 8,
        patches: &[
            Patch {
                offset: 2,
                r_type: R_X86_64_64,
                addend: 0,
                target: PatchTarget::Resolver,
            },
            Patch {
                offset: 16,
                r_type: R_X86_64_64,
                addend: 0,
                target: PatchTarget::Entry,
            },
        ],
    };

    fn write_plt_stub(buf: &mut [u8], stub: u64, got_slot: u64) -> Result<(), FixupError> {
        rip_indirect(&Self::PLT_STUB, buf, stub, got_slot, 0x25)
    }

    fn write_redirectable_stub(buf: &mut [u8], stub: u64, slot: u64) -> Result<(), FixupError> {
        rip_indirect(&Self::REDIRECTABLE_STUB, buf, stub, slot, 0x25)
    }

    fn write_reentry_trampoline(
        buf: &mut [u8],
        trampoline: u64,
        entry_slot: u64,
    ) -> Result<(), FixupError> {
        rip_indirect(&Self::REENTRY_TRAMPOLINE, buf, trampoline, entry_slot, 0x15)
    }

    fn write_reentry_entry(buf: &mut [u8], entry: u64, resolver: u64) -> Result<(), FixupError> {
        let asm_entry = host_asm_entry()?;
        write_entry_block(buf, entry, resolver, asm_entry)
    }

    /// `__builtin_cpu_supports`, `__builtin_cpu_is` and `__builtin_cpu_init`
    /// read `__cpu_model` and `__cpu_features2` and call
    /// `__cpu_indicator_init` (libgcc_s keeps two of them only as
    /// `GCC_4.8.0` compat versions, which `dlsym` does not find).
    fn is_static_runtime_helper(name: &str) -> bool {
        matches!(
            name,
            "__cpu_model" | "__cpu_features2" | "__cpu_indicator_init"
        )
    }
}

impl RelocArch for X86_64 {
    const CODE_FILL: [u8; 4] = [0xcc; 4]; // int3
    /// `S - 4 - P` must fit rel32 (the usual addend −4 folded in).
    const BRANCH_RANGE: (i64, i64) = (i32::MIN as i64 + 4, i32::MAX as i64 + 4);
    const VENEER: Option<Template> = None;

    fn edges() -> &'static [EdgeDesc] {
        &crate::edge::ALL_EDGES[..usize::from(crate::edge::AARCH64_ROW)]
    }

    #[inline(always)]
    fn apply(
        edge: &EdgeDesc,
        content: &mut [u8],
        offset: u64,
        v: &FixupValues,
    ) -> Result<(), FixupError> {
        reloc::apply(reloc::row_of(edge)?.kind, content, offset, v)
    }

    fn relax(
        edge: &EdgeDesc,
        content: &mut [u8],
        offset: u64,
    ) -> Result<Option<Relaxation>, FixupError> {
        let reloc::EdgeKind::GotLoadRelaxable { rex } = reloc::row_of(edge)?.kind else {
            return Ok(None);
        };
        let Some(how) = reloc::relax_got_load(content, offset, rex)? else {
            return Ok(None);
        };
        let place_delta = match how {
            reloc::Relaxed::MovToLea | reloc::Relaxed::CallToDirect => 0,
            reloc::Relaxed::JmpToDirect => -1,
        };
        let pc32 = Self::edge(R_X86_64_PC32).ok_or(FixupError::Unsupported {
            isa: Self::NAME,
            r_type: R_X86_64_PC32,
        })?;
        Ok(Some(Relaxation {
            edge: pc32,
            place_delta,
        }))
    }

    /// `mov`→`lea`, `call *`→`call`, `jmp *`→`jmp`: the rel32 must reach
    /// `S + A` from the place; each access is relaxed on its own.
    #[inline]
    fn may_relax_got(place: u64, target: u64, addend: i64) -> bool {
        let v = i128::from(target) + i128::from(addend) - i128::from(place);
        (i128::from(i32::MIN)..=i128::from(i32::MAX)).contains(&v)
    }

    fn write_veneer(_buf: &mut [u8], _at: u64, _target: u64) -> Result<(), FixupError> {
        Err(FixupError::NoTemplate {
            isa: Self::NAME,
            what: TemplateKind::Veneer.name(),
        })
    }
}

#[cfg(all(target_arch = "x86_64", not(windows)))]
fn host_asm_entry() -> Result<u64, FixupError> {
    reentry_asm_entry()
}

#[cfg(not(all(target_arch = "x86_64", not(windows))))]
fn host_asm_entry() -> Result<u64, FixupError> {
    Err(FixupError::HostUnsupported {
        what: TemplateKind::ReentryEntry.name(),
        detail: "the x86-64 reentry entry is in-process code and this host is not x86-64 System V",
    })
}

/// Writes the x86-64 reentry entry block for an explicit in-process entry
/// address (what [`Arch::write_reentry_entry`] does with the real one). Use
/// it to produce golden bytes or code for another process.
///
/// # Errors
/// Short buffer or misaligned `entry`.
pub fn write_entry_block(
    buf: &mut [u8],
    entry: u64,
    resolver: u64,
    asm_entry: u64,
) -> Result<(), FixupError> {
    let out = X86_64::REENTRY_ENTRY.check(buf, entry)?;
    out[0] = 0x49; // REX.W + B
    out[1] = 0xbb; // mov r11, imm64
    out[2..10].copy_from_slice(&resolver.to_le_bytes());
    out[10..16].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]); // jmp *0(%rip)
    out[16..24].copy_from_slice(&asm_entry.to_le_bytes());
    Ok(())
}
