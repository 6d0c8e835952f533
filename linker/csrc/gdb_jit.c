/* The GDB JIT interface's two process-wide symbols (GDB manual, "JIT
 * Compilation Interface"). GDB finds them by name in the executable's and
 * shared objects' symbol tables, sets a breakpoint on
 * __jit_debug_register_code and reads __jit_debug_descriptor when it is hit.
 *
 * Both are weak: when another JIT linked into the same executable defines
 * them too, the link keeps one pair, and every JIT of the executable shares
 * it (kiln takes its process-wide lock around every change; see
 * linker/src/debug/gdb.rs for the one rule another JIT must follow). */
#include <stdint.h>

struct jit_code_entry {
    struct jit_code_entry *next_entry;
    struct jit_code_entry *prev_entry;
    const char *symfile_addr;
    uint64_t symfile_size;
};

struct jit_descriptor {
    uint32_t version;
    uint32_t action_flag;
    struct jit_code_entry *relevant_entry;
    struct jit_code_entry *first_entry;
};

/* noinline and an asm barrier: calls must reach the function GDB breaks on. */
__attribute__((weak, noinline, used)) void __jit_debug_register_code(void) {
    __asm__ volatile("" ::: "memory");
}

__attribute__((weak, used)) struct jit_descriptor __jit_debug_descriptor = {1, 0, 0, 0};

/* Addresses for Rust: it never names the weak symbols itself, so the pair
 * the final link keeps is the one used. */
struct jit_descriptor *kiln_gdb_jit_descriptor(void) { return &__jit_debug_descriptor; }
void kiln_gdb_jit_notify(void) { __jit_debug_register_code(); }
