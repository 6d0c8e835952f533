//! TLSDESC resolvers (x86-64 `-mtls-dialect=gnu2`).
//!
//! JIT'd code does `lea rax, [rip + var@tlsdesc]; call [rax]` and adds the
//! result to the thread pointer. The resolver gets the descriptor's address
//! in `rax`, returns `address - thread pointer` in `rax`, and must preserve
//! every other register, vector registers included.
//! - Static modules: the offset is the same in every thread, stored as the
//!   argument; the resolver is two instructions (like glibc's
//!   `_dl_tlsdesc_return`).
//! - Dynamic modules: the argument points to a [`DescArg`]. The fast path
//!   (block already allocated in this thread) reads kiln's per-thread
//!   vector through the fixed thread-pointer offset of kiln's own
//!   `thread_local!` (known when kiln is in the executable's static TLS) and
//!   touches only `rdi`, `rsi` (saved) and flags. The slow path saves the
//!   general-purpose caller-saved registers and the full extended state
//!   (`xsave64`, size from CPUID leaf 0xD) around a call into Rust.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::block_for;
use crate::runtime::thread;

/// Argument of the dynamic resolver. Layout read by assembly.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct DescArg {
    /// Module id.
    pub(crate) id: u64,
    /// Variable offset within the module's block.
    pub(crate) offset: u64,
}

/// Thread-pointer offset of `thread::STATE`, or 0 when not fixed. Read by
/// the assembly fast paths here and in `__kiln_rt_tls_get_addr`.
pub(crate) static STATE_TPOFF: AtomicI64 = AtomicI64::new(0);
/// Bytes of the XSAVE area (CPUID.(EAX=0xD,ECX=0):EBX), 0 if no XSAVE.
static XSAVE_SIZE: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    fn __kiln_rt_tlsdesc_static();
    fn __kiln_rt_tlsdesc_dynamic();
}

std::arch::global_asm!(
    ".pushsection .text.__kiln_rt_tlsdesc,\"ax\",@progbits",
    ".globl __kiln_rt_tlsdesc_static",
    ".hidden __kiln_rt_tlsdesc_static",
    ".type __kiln_rt_tlsdesc_static,@function",
    ".p2align 4",
    "__kiln_rt_tlsdesc_static:",
    "    mov rax, qword ptr [rax + 8]",
    "    ret",
    ".size __kiln_rt_tlsdesc_static, . - __kiln_rt_tlsdesc_static",
    "",
    ".globl __kiln_rt_tlsdesc_dynamic",
    ".hidden __kiln_rt_tlsdesc_dynamic",
    ".type __kiln_rt_tlsdesc_dynamic,@function",
    ".p2align 4",
    "__kiln_rt_tlsdesc_dynamic:",
    "    push rdi",
    "    push rsi",
    "    mov rsi, qword ptr [rax + 8]",      // rsi = &DescArg
    "    mov rdi, qword ptr [rip + {tpoff}]",
    "    test rdi, rdi",
    "    jz 2f",
    "    mov rdi, qword ptr fs:[rdi]",       // rdi = ThreadState*
    "    test rdi, rdi",
    "    jz 2f",
    "    mov eax, dword ptr [rsi]",          // slot = low half of the id
    "    cmp rax, qword ptr [rdi + 8]",      // dtv_len
    "    jae 2f",
    "    shl rax, 4",
    "    add rax, qword ptr [rdi]",          // &dtv[slot]
    "    mov rdi, qword ptr [rsi]",
    "    cmp rdi, qword ptr [rax]",          // same module id?
    "    jne 2f",
    "    mov rax, qword ptr [rax + 8]",      // block
    "    add rax, qword ptr [rsi + 8]",      // + offset
    "    sub rax, qword ptr fs:[0]",         // - thread pointer
    "    pop rsi",
    "    pop rdi",
    "    ret",
    "2:",
    "    push rbp",
    "    mov rbp, rsp",
    "    push rcx",
    "    push rdx",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    sub rsp, 8",                        // [rbp - 56]: result
    "    sub rsp, qword ptr [rip + {xsize}]",
    "    and rsp, -64",
    "    xor eax, eax",
    "    mov qword ptr [rsp + 512], rax",    // XSAVE header must start zeroed
    "    mov qword ptr [rsp + 520], rax",
    "    mov qword ptr [rsp + 528], rax",
    "    mov qword ptr [rsp + 536], rax",
    "    mov qword ptr [rsp + 544], rax",
    "    mov qword ptr [rsp + 552], rax",
    "    mov qword ptr [rsp + 560], rax",
    "    mov qword ptr [rsp + 568], rax",
    "    mov eax, -1",
    "    mov edx, -1",
    "    xsave64 [rsp]",
    "    mov rdi, rsi",
    "    call {slow}",
    "    mov qword ptr [rbp - 56], rax",
    "    mov eax, -1",
    "    mov edx, -1",
    "    xrstor64 [rsp]",
    "    mov rax, qword ptr [rbp - 56]",
    "    lea rsp, [rbp - 48]",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdx",
    "    pop rcx",
    "    pop rbp",
    "    pop rsi",
    "    pop rdi",
    "    ret",
    ".size __kiln_rt_tlsdesc_dynamic, . - __kiln_rt_tlsdesc_dynamic",
    ".popsection",
    tpoff = sym STATE_TPOFF,
    xsize = sym XSAVE_SIZE,
    slow = sym tlsdesc_slow,
);

/// Slow path of the dynamic resolver: `address - thread pointer`.
unsafe extern "C" fn tlsdesc_slow(arg: *const DescArg) -> isize {
    // SAFETY: `arg` is a live DescArg owned by its module's table entry
    // (JIT code only runs while its module is registered).
    let (id, offset) = unsafe { ((*arg).id, (*arg).offset) };
    let address = block_for(id) as usize + offset as usize;
    address.wrapping_sub(thread::thread_pointer()) as isize
}

/// Resolver for static modules.
pub(crate) fn static_resolver() -> usize {
    __kiln_rt_tlsdesc_static as *const () as usize
}

/// Resolver for dynamic modules (call [`prepare_dynamic`] first).
pub(crate) fn dynamic_resolver() -> usize {
    __kiln_rt_tlsdesc_dynamic as *const () as usize
}

/// Sets up the dynamic resolver's globals; `false` if the CPU or OS lacks
/// XSAVE (the slow path needs it).
pub(crate) fn prepare_dynamic() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let leaf1 = std::arch::x86_64::__cpuid(1);
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        if !osxsave {
            return false;
        }
        // Leaf 0xD exists when OSXSAVE is set.
        let leaf_d = std::arch::x86_64::__cpuid_count(0xd, 0);
        let size = u64::from(leaf_d.ebx).max(576).next_multiple_of(64);
        XSAVE_SIZE.store(size, Ordering::Relaxed);
        enable_fast_paths();
        true
    })
}

/// Publishes the thread-pointer offset of kiln's per-thread state for the
/// assembly fast paths, when it is the same in every thread (kiln linked
/// into the executable, see `static_area::host`). Idempotent.
pub(crate) fn enable_fast_paths() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if super::static_area::host().is_ok() {
            let state = thread::STATE.with(|cell| cell as *const _ as usize);
            let offset = state as i64 - thread::thread_pointer() as i64;
            STATE_TPOFF.store(offset, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
pub(crate) fn fast_path_enabled() -> bool {
    STATE_TPOFF.load(Ordering::Relaxed) != 0
}
