//! The x86-64 System V reentry entry point (`global_asm!`).
//!
//! Reached from a reentry trampoline (`call *entry_slot(%rip)`), directly or
//! through the entry block (`movabs $resolver, %r11; jmp *asm_entry`). On
//! arrival the stack holds the trampoline's return address on top and the
//! original caller's return address below it, and every argument register
//! still holds the caller's arguments.
//!
//! Frame (rbp-based, grows down):
//!
//! ```text
//! [rbp+16] caller's return address      (untouched)
//! [rbp+8]  trampoline + 6               → replaced by the implementation address
//! [rbp]    saved rbp
//! [rbp-8]  resolver (r11 on arrival)    [rbp-16..-72] rax rdi rsi rdx rcx r8 r9 r10
//! ...      XSAVE area: CPUID.(0xD,0).EBX bytes, 64-byte aligned, at rsp
//! ```
//!
//! `xsave64` with the XCR0 mask saves every enabled state component: x87,
//! SSE (xmm0–15, MXCSR), AVX upper halves, AVX-512 k0–7, zmm upper halves
//! and zmm16–31, and anything newer the OS enabled. The XSAVE header is
//! zeroed first because `xrstor` faults on a non-zero `XCOMP_BV` or reserved
//! bytes, and `xsave` writes only `XSTATE_BV`. The stack stays 16-byte (in
//! fact 64-byte) aligned at the call to the resolver, as System V requires.
//! The final `ret` pops the implementation address, so the implementation
//! starts with the caller's return address on top: exactly the stack of a
//! direct call. rax is saved too (it carries the vector-argument count of
//! varargs calls), r10 (static chain) and r11 (the resolver) likewise.
//!
//! Limits: with CET user shadow stacks enabled the final `ret` would not
//! match the shadow stack (ORC's entry has the same limit); APX's r16–r31
//! are saved by `xsave64` only when the OS enables them in XCR0.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::FixupError;
use crate::reentry::kiln_reentry_resolve;

/// XSAVE area size in bytes, rounded up to 64; 0 until initialized.
static XSAVE_SIZE: AtomicU64 = AtomicU64::new(0);
/// XSAVE/XRSTOR requested-feature bitmap: XCR0.
static XSAVE_MASK: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    ".pushsection .text.kiln_arch_reentry_x86_64,\"ax\",@progbits",
    ".p2align 4",
    ".globl kiln_arch_reentry_x86_64",
    ".hidden kiln_arch_reentry_x86_64",
    ".type kiln_arch_reentry_x86_64,@function",
    ".globl kiln_arch_reentry_x86_64_r11",
    ".hidden kiln_arch_reentry_x86_64_r11",
    ".type kiln_arch_reentry_x86_64_r11,@function",
    "kiln_arch_reentry_x86_64:",
    ".cfi_startproc",
    // Default resolver: the Rust one that forwards to the installed handler.
    "lea r11, [rip + {resolve}]",
    "kiln_arch_reentry_x86_64_r11:",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "push r11",
    "push rax",
    "push rdi",
    "push rsi",
    "push rdx",
    "push rcx",
    "push r8",
    "push r9",
    "push r10",
    "sub rsp, qword ptr [rip + {size}]",
    "and rsp, -64",
    // Zero the 64-byte XSAVE header (offset 512): xsave writes only XSTATE_BV.
    "xor eax, eax",
    "mov qword ptr [rsp + 512], rax",
    "mov qword ptr [rsp + 520], rax",
    "mov qword ptr [rsp + 528], rax",
    "mov qword ptr [rsp + 536], rax",
    "mov qword ptr [rsp + 544], rax",
    "mov qword ptr [rsp + 552], rax",
    "mov qword ptr [rsp + 560], rax",
    "mov qword ptr [rsp + 568], rax",
    "mov eax, dword ptr [rip + {mask}]",
    "mov edx, dword ptr [rip + {mask} + 4]",
    "xsave64 [rsp]",
    // The trampoline's identity: its return address minus the call's length.
    "mov rdi, qword ptr [rbp + 8]",
    "sub rdi, 6",
    "call qword ptr [rbp - 8]",
    // Continue into the implementation: the final ret pops this.
    "mov qword ptr [rbp + 8], rax",
    "mov eax, dword ptr [rip + {mask}]",
    "mov edx, dword ptr [rip + {mask} + 4]",
    "xrstor64 [rsp]",
    "lea rsp, [rbp - 72]",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rcx",
    "pop rdx",
    "pop rsi",
    "pop rdi",
    "pop rax",
    "pop r11",
    "pop rbp",
    ".cfi_def_cfa rsp, 8",
    "ret",
    ".cfi_endproc",
    ".size kiln_arch_reentry_x86_64, . - kiln_arch_reentry_x86_64",
    ".size kiln_arch_reentry_x86_64_r11, . - kiln_arch_reentry_x86_64_r11",
    ".popsection",
    resolve = sym kiln_reentry_resolve,
    size = sym XSAVE_SIZE,
    mask = sym XSAVE_MASK,
);

unsafe extern "C" {
    /// Entry with the default resolver (`lea r11, [rip + kiln_reentry_resolve]`).
    fn kiln_arch_reentry_x86_64();
    /// Entry expecting the resolver's address in r11.
    fn kiln_arch_reentry_x86_64_r11();
}

/// `cpuid` with `ebx` moved through a scratch register (LLVM reserves rbx).
fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (eax, ebx, ecx, edx): (u32, u64, u32, u32);
    // SAFETY: cpuid only reads processor identification into registers; rbx
    // is saved and restored around it because LLVM may use it as a base pointer.
    unsafe {
        core::arch::asm!(
            "mov {tmp}, rbx",
            "cpuid",
            "xchg {tmp}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nostack, preserves_flags),
        );
    }
    [eax, ebx as u32, ecx, edx]
}

/// Reads the XSAVE layout once: `Err` when the CPU or OS lacks XSAVE.
fn init() -> Result<(), FixupError> {
    static INIT: OnceLock<Result<(), FixupError>> = OnceLock::new();
    INIT.get_or_init(|| {
        let ecx = cpuid(1, 0)[2];
        let (xsave, osxsave) = (ecx & (1 << 26) != 0, ecx & (1 << 27) != 0);
        if !(xsave && osxsave) {
            return Err(FixupError::HostUnsupported {
                what: "x86-64 reentry entry",
                detail: "the CPU or the OS does not support XSAVE (CPUID.1:ECX.OSXSAVE = 0)",
            });
        }
        let (lo, hi): (u32, u32);
        // SAFETY: OSXSAVE is set (checked above), so xgetbv with ecx = 0 is
        // defined and only reads XCR0.
        unsafe {
            core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        let xcr0 = (u64::from(hi) << 32) | u64::from(lo);
        // EBX of leaf 0xD, sub-leaf 0: size of the XSAVE area for the features enabled in XCR0.
        let size = u64::from(cpuid(0xd, 0)[1]).max(576).next_multiple_of(64);
        XSAVE_MASK.store(xcr0, Ordering::Relaxed);
        XSAVE_SIZE.store(size, Ordering::Relaxed);
        Ok(())
    })
    .clone()
}

/// Address of the in-process entry that expects the resolver in `r11`
/// (what the entry block jumps to). Initializes the XSAVE layout first.
///
/// # Errors
/// [`FixupError::HostUnsupported`] if the CPU or OS lacks XSAVE.
pub fn reentry_asm_entry() -> Result<u64, FixupError> {
    init()?;
    Ok(kiln_arch_reentry_x86_64_r11 as *const () as usize as u64)
}

/// Address of the in-process entry that calls
/// [`resolver_address()`](crate::resolver_address) itself: a trampoline's
/// entry slot may point here directly, with no entry block.
///
/// # Errors
/// [`FixupError::HostUnsupported`] if the CPU or OS lacks XSAVE.
pub fn reentry_asm_entry_default() -> Result<u64, FixupError> {
    init()?;
    Ok(kiln_arch_reentry_x86_64 as *const () as usize as u64)
}

/// The XSAVE area size and mask the entry uses (for tests and diagnostics).
///
/// # Errors
/// [`FixupError::HostUnsupported`] if the CPU or OS lacks XSAVE.
pub fn xsave_layout() -> Result<(u64, u64), FixupError> {
    init()?;
    Ok((
        XSAVE_SIZE.load(Ordering::Relaxed),
        XSAVE_MASK.load(Ordering::Relaxed),
    ))
}
