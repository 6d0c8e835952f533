//! AArch64 (AAPCS64): relocations and code templates.
//!
//! | template | code | size / align | patches |
//! |---|---|---|---|
//! | GOT entry | `<target:8>` | 8 / 8 | `ABS64` @0 → target |
//! | PLT stub | `adrp x16, slot; ldr x16, [x16, :lo12:slot]; br x16` | 12 / 4 | `ADR_PREL_PG_HI21` @0, `LDST64_ABS_LO12_NC` @4 → GOT slot |
//! | redirectable stub | same as PLT stub | 12 / 4 | same → pointer slot |
//! | reentry trampoline | `stp x29, x30, [sp, #-16]!; adrp x16, slot; ldr x16, [x16, :lo12:slot]; blr x16` | 16 / 4 | `ADR_PREL_PG_HI21` @4, `LDST64_ABS_LO12_NC` @8 → entry slot |
//! | reentry entry | see [`Aarch64::write_reentry_entry`] | 128 / 16 | `ABS64` @120 → resolver |
//! | veneer ([`RelocArch::write_veneer`]) | `adrp x16, target; add x16, x16, :lo12:target; br x16` | 12 / 4 | `ADR_PREL_PG_HI21` @0, `ADD_ABS_LO12_NC` @4 → target |
//!
//! The veneer is GNU ld's own long-branch stub, byte for byte (the
//! `gnu_ld_agrees` test compares them); it extends a `CALL26`/`JUMP26` out
//! of ±128 MiB to ±4 GiB of pages.
//!
//! Scratch register: `x16` (IP0). AAPCS64 reserves x16/x17 for
//! intra-procedure-call glue (veneers, PLT stubs) and lets it clobber them,
//! so no argument register (x0–x7, x8, v0–v7) is touched. `br x16` / `blr x16`
//! are also the forms that branch-target-identification landing pads
//! (`bti c`) accept.
//!
//! The trampoline pushes a frame record `{x29, x30}` (so the caller's return
//! address survives the `blr`) and reaches an entry anywhere in the address
//! space through its slot (the slot must lie within ±4 GiB of pages). The
//! entry sees `x30 = trampoline + 16`: that is the trampoline's identity.
//!
//! New code must be made visible to instruction fetch (`__clear_cache`:
//! `dc cvau`, `dsb ish`, `ic ivau`, `dsb ish`, `isb`) before it is executed
//! or published through a slot.

pub mod reloc;

use crate::edge::{EdgeDesc, FixupValues, Relaxation, RelocArch};
use crate::template::{Patch, PatchTarget, Template, TemplateKind, check_align};
use crate::{Arch, FixupError};
use reloc::r_type::{
    R_AARCH64_ABS64, R_AARCH64_ADD_ABS_LO12_NC, R_AARCH64_ADR_PREL_PG_HI21,
    R_AARCH64_LDST64_ABS_LO12_NC,
};

/// The AArch64 (AAPCS64, little-endian) ISA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Aarch64;

/// Return address a trampoline's `blr` leaves in x30, minus the
/// trampoline's address.
pub const TRAMPOLINE_RETURN_OFFSET: u64 = 16;

/// Bytes of the reentry entry's save area: x0–x8 (+ 8 padding), q0–q7, and
/// its own frame record.
pub const ENTRY_FRAME: u32 = 224;

/// Offset of the resolver literal in the reentry entry block.
pub const ENTRY_RESOLVER_OFFSET: usize = 120;

/// Instruction encoders (A64, little-endian words) used by the templates.
pub mod inst {
    /// `x16` (IP0), the scratch register of stubs and trampolines.
    pub const X16: u32 = 16;
    /// `sp` as a base register (encoding 31).
    pub const SP: u32 = 31;

    const fn imm7(imm: i32, scale: i32) -> u32 {
        ((imm / scale) as u32 & 0x7f) << 15
    }
    /// `stp Xt, Xt2, [Xn|sp, #imm]` (signed offset, multiple of 8).
    pub const fn stp_x(rt: u32, rt2: u32, rn: u32, imm: i32) -> u32 {
        0xa900_0000 | imm7(imm, 8) | (rt2 << 10) | (rn << 5) | rt
    }
    /// `stp Xt, Xt2, [Xn|sp, #imm]!` (pre-index).
    pub const fn stp_x_pre(rt: u32, rt2: u32, rn: u32, imm: i32) -> u32 {
        0xa980_0000 | imm7(imm, 8) | (rt2 << 10) | (rn << 5) | rt
    }
    /// `ldp Xt, Xt2, [Xn|sp, #imm]` (signed offset).
    pub const fn ldp_x(rt: u32, rt2: u32, rn: u32, imm: i32) -> u32 {
        0xa940_0000 | imm7(imm, 8) | (rt2 << 10) | (rn << 5) | rt
    }
    /// `ldp Xt, Xt2, [Xn|sp], #imm` (post-index).
    pub const fn ldp_x_post(rt: u32, rt2: u32, rn: u32, imm: i32) -> u32 {
        0xa8c0_0000 | imm7(imm, 8) | (rt2 << 10) | (rn << 5) | rt
    }
    /// `stp Qt, Qt2, [Xn|sp, #imm]` (signed offset, multiple of 16).
    pub const fn stp_q(rt: u32, rt2: u32, rn: u32, imm: i32) -> u32 {
        0xad00_0000 | imm7(imm, 16) | (rt2 << 10) | (rn << 5) | rt
    }
    /// `ldp Qt, Qt2, [Xn|sp, #imm]` (signed offset).
    pub const fn ldp_q(rt: u32, rt2: u32, rn: u32, imm: i32) -> u32 {
        0xad40_0000 | imm7(imm, 16) | (rt2 << 10) | (rn << 5) | rt
    }
    /// `str Xt, [Xn|sp, #imm]` (unsigned offset, multiple of 8).
    pub const fn str_x(rt: u32, rn: u32, imm: u32) -> u32 {
        0xf900_0000 | ((imm / 8) << 10) | (rn << 5) | rt
    }
    /// `ldr Xt, [Xn|sp, #imm]` (unsigned offset, multiple of 8).
    pub const fn ldr_x(rt: u32, rn: u32, imm: u32) -> u32 {
        0xf940_0000 | ((imm / 8) << 10) | (rn << 5) | rt
    }
    /// `ldr Xt, <pc + off>` (literal, `off` a multiple of 4 within ±1 MiB).
    pub const fn ldr_x_literal(rt: u32, off: i32) -> u32 {
        0x5800_0000 | (((off / 4) as u32 & 0x7_ffff) << 5) | rt
    }
    /// `add Xd|sp, Xn|sp, #imm` (imm < 4096).
    pub const fn add_imm(rd: u32, rn: u32, imm: u32) -> u32 {
        0x9100_0000 | (imm << 10) | (rn << 5) | rd
    }
    /// `sub Xd|sp, Xn|sp, #imm` (imm < 4096).
    pub const fn sub_imm(rd: u32, rn: u32, imm: u32) -> u32 {
        0xd100_0000 | (imm << 10) | (rn << 5) | rd
    }
    /// `mov Xd, Xm` (`orr Xd, xzr, Xm`).
    pub const fn mov_x(rd: u32, rm: u32) -> u32 {
        0xaa00_03e0 | (rm << 16) | rd
    }
    /// `adrp Xd, #0` (immediate filled by relocation).
    pub const fn adrp(rd: u32) -> u32 {
        0x9000_0000 | rd
    }
    /// `br Xn`.
    pub const fn br(rn: u32) -> u32 {
        0xd61f_0000 | (rn << 5)
    }
    /// `blr Xn`.
    pub const fn blr(rn: u32) -> u32 {
        0xd63f_0000 | (rn << 5)
    }
    /// `brk #0`: traps if reached.
    pub const BRK0: u32 = 0xd420_0000;
}

use inst::*;

const SLOT_JUMP_PATCHES: &[Patch] = &[
    Patch {
        offset: 0,
        r_type: R_AARCH64_ADR_PREL_PG_HI21,
        addend: 0,
        target: PatchTarget::Slot,
    },
    Patch {
        offset: 4,
        r_type: R_AARCH64_LDST64_ABS_LO12_NC,
        addend: 0,
        target: PatchTarget::Slot,
    },
];

/// `adrp x16, slot; ldr x16, [x16, :lo12:slot]; br x16`: the PLT stub and
/// the redirectable stub (patched by [`SLOT_JUMP_PATCHES`]).
const SLOT_JUMP_CODE: [u32; 3] = [adrp(X16), ldr_x(X16, X16, 0), br(X16)];

fn put(out: &mut [u8], words: &[u32]) {
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

/// [`write_patched`] for a template that loads from the 8-byte pointer `slot`.
fn write_with_slot(
    template: &Template,
    buf: &mut [u8],
    at: u64,
    slot: u64,
    words: &[u32],
) -> Result<(), FixupError> {
    check_align(template.kind.name(), slot, 8)?;
    write_patched(template, buf, at, slot, words)
}

/// Writes `words` then applies the template's patches with `target` as `S`.
fn write_patched(
    template: &Template,
    buf: &mut [u8],
    at: u64,
    target: u64,
    words: &[u32],
) -> Result<(), FixupError> {
    let out = template.check(buf, at)?;
    let mut code = [0u8; 16];
    let code = &mut code[..template.size];
    put(code, words);
    for patch in template.patches {
        reloc::apply(
            patch.r_type,
            code,
            at,
            u64::from(patch.offset),
            target,
            patch.addend,
        )
        .map_err(|e| match e {
            // Name the template rather than the internal relocation.
            FixupError::OutOfRange {
                value, min, max, ..
            } => FixupError::OutOfRange {
                reloc: template.kind.name(),
                value,
                min,
                max,
            },
            other => other,
        })?;
    }
    out.copy_from_slice(code);
    Ok(())
}

/// The reentry entry, instruction by instruction (the literal follows).
const ENTRY_CODE: [u32; 30] = {
    let f = ENTRY_FRAME;
    let fi = f as i32;
    [
        sub_imm(SP, SP, f),
        stp_x(0, 1, SP, 0),
        stp_x(2, 3, SP, 16),
        stp_x(4, 5, SP, 32),
        stp_x(6, 7, SP, 48),
        str_x(8, SP, 64),
        stp_q(0, 1, SP, 80),
        stp_q(2, 3, SP, 112),
        stp_q(4, 5, SP, 144),
        stp_q(6, 7, SP, 176),
        // Frame chain: our record {-> trampoline's record, trampoline + 16}.
        add_imm(29, SP, f),
        stp_x(29, 30, SP, fi - 16),
        add_imm(29, SP, f - 16),
        // x0 = the trampoline's identity; call the resolver from the literal.
        sub_imm(0, 30, TRAMPOLINE_RETURN_OFFSET as u32),
        ldr_x_literal(X16, (ENTRY_RESOLVER_OFFSET as i32) - 14 * 4),
        blr(X16),
        mov_x(X16, 0),
        ldp_q(0, 1, SP, 80),
        ldp_q(2, 3, SP, 112),
        ldp_q(4, 5, SP, 144),
        ldp_q(6, 7, SP, 176),
        ldr_x(8, SP, 64),
        ldp_x(6, 7, SP, 48),
        ldp_x(4, 5, SP, 32),
        ldp_x(2, 3, SP, 16),
        ldp_x(0, 1, SP, 0),
        add_imm(SP, SP, f),
        // Pop the trampoline's record: x29 and x30 are the caller's again.
        ldp_x_post(29, 30, SP, 16),
        br(X16),
        BRK0,
    ]
};

/// Whether `name` is one of the outline atomics that gcc (from 10, by
/// default) and clang call instead of inline LSE or LL/SC sequences
/// (`-moutline-atomics`): `__aarch64_<op><bytes>_<order>`, with `op` one of
/// `cas` (1, 2, 4, 8 or 16 bytes), `swp`, `ldadd`, `ldclr`, `ldeor`,
/// `ldset` (1 to 8) and `order` one of `relax`, `acq`, `rel`, `acq_rel`,
/// `sync`. libgcc.a defines them hidden; no shared library exports them.
fn is_outline_atomic(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("__aarch64_") else {
        return false;
    };
    let Some((op_size, order)) = rest.split_once('_') else {
        return false;
    };
    let digits = op_size
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(op_size.len());
    let (op, size) = op_size.split_at(digits);
    let sizes: &[&str] = match op {
        "cas" => &["1", "2", "4", "8", "16"],
        "swp" | "ldadd" | "ldclr" | "ldeor" | "ldset" => &["1", "2", "4", "8"],
        _ => return false,
    };
    sizes.contains(&size) && ["relax", "acq", "rel", "acq_rel", "sync"].contains(&order)
}

impl Arch for Aarch64 {
    const NAME: &'static str = "aarch64";
    const ELF_MACHINE: u16 = 183; // EM_AARCH64
    const GOT_ENTRY: Template = Template {
        kind: TemplateKind::GotEntry,
        size: 8,
        align: 8,
        patches: &[Patch {
            offset: 0,
            r_type: R_AARCH64_ABS64,
            addend: 0,
            target: PatchTarget::Target,
        }],
    };
    const PLT_STUB: Template = Template {
        kind: TemplateKind::PltStub,
        size: 12,
        align: 4,
        patches: SLOT_JUMP_PATCHES,
    };
    const REDIRECTABLE_STUB: Template = Template {
        kind: TemplateKind::RedirectableStub,
        size: 12,
        align: 4,
        patches: SLOT_JUMP_PATCHES,
    };
    const REENTRY_TRAMPOLINE: Template = Template {
        kind: TemplateKind::ReentryTrampoline,
        size: 16,
        align: 4,
        patches: &[
            Patch {
                offset: 4,
                r_type: R_AARCH64_ADR_PREL_PG_HI21,
                addend: 0,
                target: PatchTarget::Slot,
            },
            Patch {
                offset: 8,
                r_type: R_AARCH64_LDST64_ABS_LO12_NC,
                addend: 0,
                target: PatchTarget::Slot,
            },
        ],
    };
    const REENTRY_ENTRY: Template = Template {
        kind: TemplateKind::ReentryEntry,
        size: 128,
        align: 16,
        patches: &[Patch {
            offset: ENTRY_RESOLVER_OFFSET as u32,
            r_type: R_AARCH64_ABS64,
            addend: 0,
            target: PatchTarget::Resolver,
        }],
    };

    fn write_plt_stub(buf: &mut [u8], stub: u64, got_slot: u64) -> Result<(), FixupError> {
        write_with_slot(&Self::PLT_STUB, buf, stub, got_slot, &SLOT_JUMP_CODE)
    }

    fn write_redirectable_stub(buf: &mut [u8], stub: u64, slot: u64) -> Result<(), FixupError> {
        write_with_slot(&Self::REDIRECTABLE_STUB, buf, stub, slot, &SLOT_JUMP_CODE)
    }

    fn write_reentry_trampoline(
        buf: &mut [u8],
        trampoline: u64,
        entry_slot: u64,
    ) -> Result<(), FixupError> {
        write_with_slot(
            &Self::REENTRY_TRAMPOLINE,
            buf,
            trampoline,
            entry_slot,
            &[
                stp_x_pre(29, 30, SP, -16),
                adrp(X16),
                ldr_x(X16, X16, 0),
                blr(X16),
            ],
        )
    }

    /// Writes the generated reentry entry (128 bytes):
    ///
    /// ```text
    ///   sub  sp, sp, #224              ; save area, sp stays 16-byte aligned
    ///   stp  x0..x7 / str x8           ; integer arguments and indirect-result register
    ///   stp  q0..q7                    ; full 128-bit vector arguments
    ///   add  x29, sp, #224             ; -> the trampoline's record {caller x29, caller x30}
    ///   stp  x29, x30, [sp, #208]      ; our record {-> trampoline record, trampoline + 16}
    ///   add  x29, sp, #208             ; so frame-pointer unwinders see entry -> trampoline -> caller
    ///   sub  x0, x30, #16              ; the trampoline's address
    ///   ldr  x16, resolver             ; literal at +120
    ///   blr  x16                       ; x0 = implementation
    ///   mov  x16, x0
    ///   ldp  q0..q7 / ldr x8 / ldp x0..x7
    ///   add  sp, sp, #224
    ///   ldp  x29, x30, [sp], #16       ; pop the trampoline's record
    ///   br   x16                       ; the caller's stack and registers as they were
    ///   brk  #0
    ///   .quad resolver
    /// ```
    ///
    /// x9–x15, v16–v31 and the upper halves of v8–v15 are caller-saved under
    /// AAPCS64, so the caller cannot expect them to survive its call anyway;
    /// SVE `z`/`p` argument registers (SVE PCS) are not saved.
    fn write_reentry_entry(buf: &mut [u8], entry: u64, resolver: u64) -> Result<(), FixupError> {
        let out = Self::REENTRY_ENTRY.check(buf, entry)?;
        put(&mut out[..ENTRY_RESOLVER_OFFSET], &ENTRY_CODE);
        out[ENTRY_RESOLVER_OFFSET..].copy_from_slice(&resolver.to_le_bytes());
        Ok(())
    }

    fn is_static_runtime_helper(name: &str) -> bool {
        is_outline_atomic(name)
    }

    /// The C loader for aarch64 carries libgcc's outline atomics (kiln
    /// runs no aarch64 image in-process).
    fn loaders_bind(name: &str) -> bool {
        is_outline_atomic(name)
    }
}

/// `adrp x16, target; add x16, x16, :lo12:target; br x16`.
const VENEER_CODE: [u32; 3] = [adrp(X16), add_imm(X16, X16, 0), br(X16)];

impl RelocArch for Aarch64 {
    const CODE_FILL: [u8; 4] = BRK0.to_le_bytes();
    /// `B`/`BL` reach: `imm26 << 2`, ±128 MiB.
    const BRANCH_RANGE: (i64, i64) = (-(1 << 27), (1 << 27) - 4);
    /// `adrp x16, target; add x16, x16, :lo12:target; br x16`: 12 bytes,
    /// reaches ±4 GiB of pages, clobbers only IP0 (which AAPCS64 gives to
    /// veneers).
    const VENEER: Option<Template> = Some(Template {
        kind: TemplateKind::Veneer,
        size: 12,
        align: 4,
        patches: &[
            Patch {
                offset: 0,
                r_type: R_AARCH64_ADR_PREL_PG_HI21,
                addend: 0,
                target: PatchTarget::Target,
            },
            Patch {
                offset: 4,
                r_type: R_AARCH64_ADD_ABS_LO12_NC,
                addend: 0,
                target: PatchTarget::Target,
            },
        ],
    });

    fn edges() -> &'static [EdgeDesc] {
        &crate::edge::ALL_EDGES[usize::from(crate::edge::AARCH64_ROW)..]
    }

    // Always inlined into the linker's fixup loop: the common case is a
    // few dozen instructions, less than a call's saved registers cost
    // (the exact path stays out of line, cold).
    #[inline(always)]
    fn apply(
        edge: &EdgeDesc,
        content: &mut [u8],
        offset: u64,
        v: &FixupValues,
    ) -> Result<(), FixupError> {
        row_of(edge)?.apply_values(content, offset, v)
    }

    fn relax(
        edge: &EdgeDesc,
        content: &mut [u8],
        offset: u64,
    ) -> Result<Option<Relaxation>, FixupError> {
        let info = row_of(edge)?;
        let Some(direct) = reloc::relaxed_to(info.r_type) else {
            return Ok(None);
        };
        if !reloc::relax_insn(info, content, offset)? {
            return Ok(None);
        }
        let edge = Self::edge(direct).ok_or(FixupError::Unsupported {
            isa: Self::NAME,
            r_type: direct,
        })?;
        Ok(Some(Relaxation {
            edge,
            place_delta: 0,
        }))
    }

    fn write_veneer(buf: &mut [u8], at: u64, target: u64) -> Result<(), FixupError> {
        let Some(template) = Self::VENEER else {
            return Err(FixupError::NoTemplate {
                isa: Self::NAME,
                what: TemplateKind::Veneer.name(),
            });
        };
        write_patched(&template, buf, at, target, &VENEER_CODE)
    }
}

/// The table row of a descriptor, if it is one of this table's.
#[inline]
fn row_of(edge: &EdgeDesc) -> Result<&'static reloc::RelocInfo, FixupError> {
    reloc::RELOCS
        .get(usize::from(
            edge.index.wrapping_sub(crate::edge::AARCH64_ROW),
        ))
        .filter(|r| r.r_type == edge.r_type)
        .ok_or(FixupError::Unsupported {
            isa: Aarch64::NAME,
            r_type: edge.r_type,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outline_atomics_are_libgccs_125_and_no_other_name() {
        let mut found = 0;
        for op in ["cas", "swp", "ldadd", "ldclr", "ldeor", "ldset", "ldmax"] {
            for size in ["1", "2", "4", "8", "16", "32"] {
                for order in ["relax", "acq", "rel", "acq_rel", "sync", "seq_cst"] {
                    let name = format!("__aarch64_{op}{size}_{order}");
                    found += usize::from(Aarch64::is_static_runtime_helper(&name));
                }
            }
        }
        // libgcc.a of gcc 12: cas × 5 sizes × 5 orders, five other
        // operations × 4 sizes × 5 orders.
        assert_eq!(found, 125);
        for name in [
            "__aarch64_cas8",
            "__aarch64_cas8_",
            "__aarch64_cas_acq",
            "__aarch64_swp16_acq",
            "__aarch64_sync_cache_range",
            "aarch64_cas8_acq",
            "__aarch64_cas8_acq_rel_x",
        ] {
            assert!(!Aarch64::is_static_runtime_helper(name), "{name}");
        }
        assert!(!crate::X86_64::is_static_runtime_helper(
            "__aarch64_cas8_acq"
        ));
    }

    #[test]
    fn entry_code_fills_the_block_up_to_the_literal() {
        assert_eq!(ENTRY_CODE.len() * 4, ENTRY_RESOLVER_OFFSET);
        // The literal load is instruction 14 and must point at the literal.
        assert_eq!(ENTRY_CODE[14], ldr_x_literal(X16, 64));
        assert_eq!(ENTRY_CODE[14] & 0xff00_001f, 0x5800_0010);
    }

    #[test]
    fn known_encodings() {
        assert_eq!(stp_x_pre(29, 30, SP, -16), 0xa9bf_7bfd);
        assert_eq!(ldp_x_post(29, 30, SP, 16), 0xa8c1_7bfd);
        assert_eq!(br(X16), 0xd61f_0200);
        assert_eq!(blr(X16), 0xd63f_0200);
        assert_eq!(mov_x(X16, 0), 0xaa00_03f0);
    }
}
