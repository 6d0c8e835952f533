/* kiln-load: runs a kiln image file (`kiln image save -o X.kimg ...`)
 * without kiln — the image format's second implementation.
 *
 *     kiln-load IMAGE [ARGS...]       exit status: main's (127: refused)
 *
 * It checks the file exactly as kiln does (linker/src/image_file/read.rs:
 * header fields, CPU features, size, BLAKE3 content hash, ELF container,
 * segments, every table), loads the images it was saved against (found
 * next to it by name, checked by build id), maps it, rebases it, binds its
 * imports by name (dlsym) or into those images by offset, and its
 * thread-local slots (every TLS model: the image's block in
 * the loader's own static TLS area, see tls_place), applies the final
 * protections (W^X), registers its .eh_frame,
 * runs its initializers in kiln's order, calls main(argc, argv, envp) and
 * runs its finalizers at exit. Every offset in the file is bounds-checked
 * before use; every refusal names the field (or what is inconsistent) and
 * both values, and exits with status 127 — a malformed file never crashes
 * the loader. KILN_LOAD_NOEXEC=1 loads, binds and protects without running
 * anything (exit 0), like `kiln run --noexec`.
 *
 * The layout is documented in linker/src/image_file/format.rs and
 * docs/images.md ("The C loader"). C11 + POSIX; libc (pthread keys), libdl,
 * libgcc_s. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stddef.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ===================== ISA-specific: the only such part ===================
 * The format's load-time fixups are ISA-neutral (a rebased 64-bit word, an
 * import written into a 64-bit word; text is never patched), so what differs
 * per ISA is: the ELF machine, the page size images use, the CPU feature
 * bits (format.rs CPU_FEATURES), and making copied code visible to
 * instruction fetch. Adding an ISA = one more branch here. */
#if defined(__x86_64__)
#define ISA_MACHINE 62 /* EM_X86_64 */
#define ISA_PAGE 4096u
#include <cpuid.h>
static const char *const CPU_FEATURES[] = {
    "sse4.2",     "popcnt", "avx",      "avx2",     "bmi2",     "avx512f",  "x86-64-v2", "x86-64-v3",
    "x86-64-v4",  "sse3",   "ssse3",    "sse4.1",   "cmpxchg16b", "fma",    "bmi1",      "lzcnt",
    "f16c",       "movbe",  "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512vbmi", "avx512bitalg",
    "avx512vnni", "avxvnni"};
/* Feature bits the builtin does not name in gcc 12 (cpuid leaf 1 ecx,
 * 0x80000001 ecx, leaf 7.1 eax); f16c and avxvnni need the AVX state the
 * OS enables, as in Rust. */
static int cpuid_bit(unsigned leaf, unsigned bit) {
    unsigned a, b, c, d;
    return __get_cpuid(leaf, &a, &b, &c, &d) && (c >> bit & 1);
}
static int cpuid_7_1_eax_bit(unsigned bit) {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> bit & 1);
}
static uint64_t isa_cpu_features(void) {
    __builtin_cpu_init();
    int avx = __builtin_cpu_supports("avx");
    int have[] = {__builtin_cpu_supports("sse4.2"), __builtin_cpu_supports("popcnt"), avx,
                  __builtin_cpu_supports("avx2"), __builtin_cpu_supports("bmi2"),
                  __builtin_cpu_supports("avx512f"), 0, 0, 0, __builtin_cpu_supports("sse3"),
                  __builtin_cpu_supports("ssse3"), __builtin_cpu_supports("sse4.1"), cpuid_bit(1, 13),
                  __builtin_cpu_supports("fma"), __builtin_cpu_supports("bmi"), cpuid_bit(0x80000001u, 5),
                  avx && cpuid_bit(1, 29), cpuid_bit(1, 22), __builtin_cpu_supports("avx512bw"),
                  __builtin_cpu_supports("avx512cd"), __builtin_cpu_supports("avx512dq"),
                  __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512vbmi"),
                  __builtin_cpu_supports("avx512bitalg"), __builtin_cpu_supports("avx512vnni"),
                  avx && cpuid_7_1_eax_bit(4)};
    uint64_t bits = 0;
    for (unsigned i = 0; i < sizeof have / sizeof have[0]; i++)
        if (have[i]) bits |= (uint64_t)1 << i;
    /* The levels (format.rs cpu_levels): every feature of the level. */
    uint64_t v2 = 1u << 0 | 1u << 1 | 1u << 9 | 1u << 10 | 1u << 11 | 1u << 12;
    uint64_t v3 = v2 | 1u << 2 | 1u << 3 | 1u << 4 | 1u << 13 | 1u << 14 | 1u << 15 | 1u << 16 | 1u << 17;
    uint64_t v4 = v3 | 1u << 5 | 1u << 18 | 1u << 19 | 1u << 20 | 1u << 21;
    if ((bits & v2) == v2) bits |= 1u << 6;
    if ((bits & v3) == v3) bits |= 1u << 7;
    if ((bits & v4) == v4) bits |= 1u << 8;
    return bits;
}
static void isa_sync_code(char *start, size_t len) { (void)start, (void)len; } /* coherent */
/* gcc's general-dynamic call sequences do not keep the stack 16-byte
 * aligned around `__tls_get_addr` (gcc PR58066). */
#define ISA_TLS_GET_ADDR_ALIGN __attribute__((force_align_arg_pointer))
/* TLS variant II: the executable's TLS block lies below the thread pointer
 * (%fs:0 holds the thread pointer itself). kiln's own static TLS area
 * (image field `static TLS area`) is below it too. */
static char *isa_thread_pointer(void) {
    char *tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
}
#define ISA_TLS_AREA_SIDE "below the thread pointer"
static int isa_tls_area_side_ok(int64_t tp_offset) { return tp_offset < 0; }
/* The TLSDESC resolver of a static block (x86-64 TLSDESC convention: the
 * descriptor's address in %rax, the variable's thread-pointer offset
 * returned in %rax, every other register and the flags preserved): the
 * descriptor's second word is that offset. */
__asm__(".text\n.p2align 4\n.type kl_tlsdesc_static,@function\nkl_tlsdesc_static:\n"
        "\tmovq 8(%rax), %rax\n\tret\n.size kl_tlsdesc_static, .-kl_tlsdesc_static\n");
#elif defined(__aarch64__)
/* `kiln image save` with aarch64 objects writes these (EM_AARCH64, 4 KiB
 * pages); no CPU feature bits are defined (any required bit is refused). */
#define ISA_MACHINE 183 /* EM_AARCH64 */
#define ISA_PAGE 4096u
static const char *const CPU_FEATURES[] = {""};
static uint64_t isa_cpu_features(void) { return 0; }
static void isa_sync_code(char *start, size_t len) { __builtin___clear_cache(start, start + len); }
#define ISA_TLS_GET_ADDR_ALIGN
/* TLS variant I: the thread pointer (tpidr_el0) points at a 16-byte TCB,
 * the executable's TLS block follows it. */
static char *isa_thread_pointer(void) { return __builtin_thread_pointer(); }
#define ISA_TLS_AREA_SIDE "above the thread pointer's 16-byte TCB"
static int isa_tls_area_side_ok(int64_t tp_offset) { return tp_offset >= 16; }
/* The TLSDESC resolver of a static block (aarch64 TLSDESC convention: the
 * descriptor's address in x0, the variable's thread-pointer offset
 * returned in x0, every other register preserved; x30 is the caller's):
 * the descriptor's second word is that offset. */
__asm__(".text\n.p2align 2\n.type kl_tlsdesc_static,%function\nkl_tlsdesc_static:\n"
        "\tldr x0, [x0, #8]\n\tret\n.size kl_tlsdesc_static, .-kl_tlsdesc_static\n");
#else
#error "kiln-load: add this ISA to the ISA-specific section"
#endif
/* ========================================================================= */

#define FORMAT_VERSION 2u
#define HEADER_AT 64u
#define HEADER_SIZE 360u
/* Largest base alignment an image may ask for (format.rs MAX_BASE_ALIGN). */
#define MAX_BASE_ALIGN ((uint64_t)1 << 30)
#define HASH_AT (HEADER_AT + 72u)
#define N_TABLES 8
enum { T_REBASE, T_IMPORTS, T_EXPORTS, T_INIT, T_INITENTS, T_STRINGS, T_DEPS, T_HOSTTAB };
static const char *const TABLES[N_TABLES] = {".kiln.rebase", ".kiln.imports", ".kiln.exports",
                                             ".kiln.init",   ".kiln.initents", ".kiln.strings",
                                             ".kiln.deps",   ".kiln.hosttab"};
#define IMPORT_SIZE 32u
#define EXPORT_SIZE 24u
#define INIT_SIZE 16u
#define MAX_IMAGE ((uint64_t)1 << 32)
/* An image saved from many links has up to 3 segments per link, and one
   more for the merged .eh_frame (image_file/combine.rs). */
#define MAX_SEGMENTS 1024u
enum { PROT_RX = 1, PROT_RO, PROT_RW };
#define SOURCE_BY_NAME 0u
#define SOURCE_DEPENDENCY 2u
#define SOURCE_TLS 3u
#define DEP_SIZE 48u
#define TLS_MODULE_ID 0u
#define TLS_TP_OFFSET 1u
#define TLS_DESC_RESOLVER 2u
/* The module id written into `tls_index` pairs: kiln's tag ('K') in the
 * top byte, so the loader's `__tls_get_addr` tells it from ld.so's. */
#define KL_TLS_MODULE ((uint64_t)0x4b << 56 | 1)

/* The image being checked or loaded: messages name it. */
struct image;
static struct image *cur;
static const char *image_path_of(const struct image *i);
#define image_path image_path_of(cur)

static _Noreturn void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kiln-load: %s: ", image_path);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(127);
}
#define bad(...) die("malformed image: " __VA_ARGS__)
static _Noreturn void field(const char *name, const char *found, const char *expected) {
    die("image field `%s` is %s, expected %s", name, found, expected);
}
static void expect(const char *name, uint64_t found, uint64_t expected) {
    char f[24], e[24];
    if (found == expected) return;
    snprintf(f, sizeof f, "%" PRIu64, found);
    snprintf(e, sizeof e, "%" PRIu64, expected);
    field(name, f, e);
}

/* ---- little-endian reads; callers have bounds-checked the bytes ---- */
static uint64_t le(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = n; i-- > 0;) v = v << 8 | p[i];
    return v;
}
#define U16(p) ((uint16_t)le((p), 2))
#define U32(p) ((uint32_t)le((p), 4))
#define U64(p) le((p), 8)
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> 8 * i);
}
/* Whether [off, off+len) lies inside [0, size). */
static int inside(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

/* ------- BLAKE3: a port of the reference implementation (reference_impl.rs in
 * github.com/BLAKE3-team/BLAKE3, CC0-1.0 / Apache-2.0): unkeyed, 32 bytes out. ------- */
static const uint32_t B3_IV[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                                  0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};
static const uint8_t B3_PERM[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};
enum { CHUNK_START = 1, CHUNK_END = 2, PARENT = 4, ROOT = 8 };
static uint32_t rotr(uint32_t x, int n) { return x >> n | x << (32 - n); }
static void b3_g(uint32_t *s, int a, int b, int c, int d, uint32_t mx, uint32_t my) {
    s[a] += s[b] + mx, s[d] = rotr(s[d] ^ s[a], 16), s[c] += s[d], s[b] = rotr(s[b] ^ s[c], 12);
    s[a] += s[b] + my, s[d] = rotr(s[d] ^ s[a], 8), s[c] += s[d], s[b] = rotr(s[b] ^ s[c], 7);
}
static void b3_compress(const uint32_t cv[8], const uint32_t block[16], uint64_t counter,
                        uint32_t len, uint32_t flags, uint32_t out[16]) {
    uint32_t s[16] = {cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7], B3_IV[0], B3_IV[1],
                      B3_IV[2], B3_IV[3], (uint32_t)counter, (uint32_t)(counter >> 32), len, flags};
    uint32_t m[16], t[16];
    memcpy(m, block, sizeof m);
    for (int r = 0; r < 7; r++) {
        b3_g(s, 0, 4, 8, 12, m[0], m[1]), b3_g(s, 1, 5, 9, 13, m[2], m[3]);
        b3_g(s, 2, 6, 10, 14, m[4], m[5]), b3_g(s, 3, 7, 11, 15, m[6], m[7]);
        b3_g(s, 0, 5, 10, 15, m[8], m[9]), b3_g(s, 1, 6, 11, 12, m[10], m[11]);
        b3_g(s, 2, 7, 8, 13, m[12], m[13]), b3_g(s, 3, 4, 9, 14, m[14], m[15]);
        for (int i = 0; i < 16; i++) t[i] = m[B3_PERM[i]];
        memcpy(m, t, sizeof m);
    }
    for (int i = 0; i < 8; i++) s[i] ^= s[i + 8], s[i + 8] ^= cv[i];
    memcpy(out, s, sizeof s);
}
/* An output node: compressed as a chaining value or, at the root, the hash. */
struct b3_out { uint32_t cv[8], block[16]; uint64_t counter; uint32_t len, flags; };
static void b3_chain(const struct b3_out *o, uint32_t cv[8]) {
    uint32_t w[16];
    b3_compress(o->cv, o->block, o->counter, o->len, o->flags, w);
    memcpy(cv, w, 32);
}
static void b3_words(const uint8_t *bytes, size_t n, uint32_t w[16]) {
    uint8_t b[64] = {0};
    memcpy(b, bytes, n);
    for (int i = 0; i < 16; i++) w[i] = U32(b + 4 * i);
}
/* BLAKE3 of `n` bytes at `p` (unkeyed, 32-byte output). */
static void blake3(const uint8_t *p, size_t n, uint8_t hash[32]) {
    uint32_t stack[54][8], cv[8];
    int depth = 0;
    uint64_t chunk = 0;
    struct b3_out o;
    for (;;) { /* one 1024-byte chunk (the last may be short or empty) */
        size_t clen = n < 1024 ? n : 1024, at = 0;
        memcpy(cv, B3_IV, sizeof cv);
        uint32_t start = CHUNK_START;
        while (clen - at > 64) {
            b3_words(p + at, 64, o.block);
            memcpy(o.cv, cv, sizeof cv);
            o.counter = chunk, o.len = 64, o.flags = start;
            b3_chain(&o, cv);
            at += 64, start = 0;
        }
        memcpy(o.cv, cv, sizeof cv);
        b3_words(p + at, clen - at, o.block);
        o.counter = chunk, o.len = (uint32_t)(clen - at), o.flags = start | CHUNK_END;
        p += clen, n -= clen, chunk++;
        if (n == 0) break;
        b3_chain(&o, cv); /* more input: merge completed subtrees, push */
        for (uint64_t total = chunk; (total & 1) == 0; total >>= 1) {
            struct b3_out par = {.counter = 0, .len = 64, .flags = PARENT};
            memcpy(par.cv, B3_IV, 32), memcpy(par.block, stack[--depth], 32), memcpy(par.block + 8, cv, 32);
            b3_chain(&par, cv);
        }
        memcpy(stack[depth++], cv, sizeof cv);
    }
    while (depth > 0) {
        b3_chain(&o, cv);
        struct b3_out par = {.counter = 0, .len = 64, .flags = PARENT};
        memcpy(par.cv, B3_IV, 32), memcpy(par.block, stack[--depth], 32), memcpy(par.block + 8, cv, 32);
        o = par;
    }
    uint32_t w[16];
    b3_compress(o.cv, o.block, 0, o.len, o.flags | ROOT, w);
    for (int i = 0; i < 32; i++) hash[i] = (uint8_t)(w[i / 4] >> 8 * (i % 4));
}
static void hex(const uint8_t *b, char out[65]) {
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* ------------------------------- the file ------------------------------- */
struct seg { uint64_t vaddr, memsz, offset, filesz; int prot; };
/* Initializers and finalizers: (key, link sequence, offset). */
struct entry { uint32_t key; uint32_t seq; uint64_t off; };
struct strref { const uint8_t *p; uint32_t len; };
struct image {
    const uint8_t *f; uint64_t size;           /* the file */
    uint64_t image_size, eh_off, eh_len, page;
    uint64_t base_align; /* the image's base is a multiple of it */
    uint32_t nseg, nimports, nexports, nrebased;
    struct seg seg[MAX_SEGMENTS];
    const uint8_t *table[N_TABLES]; uint64_t tsize[N_TABLES];
    uint8_t *mem;                               /* the mapped image */
    /* Thread-locals: template size, alignment, initial image (offset, size),
     * static TLS use. */
    uint64_t tls_size, tls_align, tls_image_off, tls_image_size, tls_static;
    /* The static TLS area the image was linked against (local-exec only):
     * its thread-pointer offset and size, the image's block in it. */
    int64_t tls_area_tp;
    uint64_t tls_area_size, tls_area_off;
    int tls_desc;      /* it has TLSDESC slots */
    int pc32;          /* its header announces PC32 imports (4-byte S + A - P fields) */
    int64_t tls_block; /* thread-pointer offset of its block (static placement) */
    int tls_static_block; /* whether its block is in the loader's static area */
    const char *path;                           /* as given, or found next to a dependent */
    int64_t main_at;                            /* `main`'s offset, or -1 */
    struct import *imports;
    struct list { struct entry *e; size_t n, cap; } preinits, inits, finis;
    uint32_t ndeps;
    struct dep { const uint8_t *build_id; struct strref name; uint64_t size; struct image *image; } *deps;
};
static const char *image_path_of(const struct image *i) { return i ? i->path : "?"; }
/* `img` is the current image; `imports` and the initializer lists are its. */
#define img (*cur)
#define imports (img.imports)
#define preinits (img.preinits)
#define inits (img.inits)
#define finis (img.finis)
/* Every image loaded, dependencies before their dependents. */
static struct image *loaded[256];
static unsigned nloaded;

static int utf8_ok(const uint8_t *s, size_t n) { /* as Rust's str::from_utf8 */
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (k == 0 || k > n - i || (k == 2 && c < 0xc2) || (k == 4 && c > 0xf4)) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        if ((k == 3 && c == 0xe0 && s[i + 1] < 0xa0) || (k == 3 && c == 0xed && s[i + 1] >= 0xa0) ||
            (k == 4 && c == 0xf0 && s[i + 1] < 0x90) || (k == 4 && c == 0xf4 && s[i + 1] >= 0x90))
            return 0;
        i += k;
    }
    return 1;
}
static struct strref string(const uint8_t *ref, const char *what) {
    uint32_t at = U32(ref), len = U32(ref + 4);
    if (!inside(at, len, img.tsize[T_STRINGS]) || !utf8_ok(img.table[T_STRINGS] + at, len))
        bad("%s: string %#x+%#x is outside .kiln.strings or not UTF-8", what, at, len);
    return (struct strref){img.table[T_STRINGS] + at, len};
}
static char *cstr(struct strref s) { /* NUL-terminated copy (for dlsym, messages) */
    char *c = malloc((size_t)s.len + 1);
    if (!c) die("out of memory");
    memcpy(c, s.p, s.len), c[s.len] = 0;
    return c;
}

static void feature_names(uint64_t bits, char *out, size_t cap) {
    size_t n = sizeof CPU_FEATURES / sizeof CPU_FEATURES[0], at = 0;
    out[0] = 0;
    for (unsigned i = 0; i < 64; i++) {
        if (!(bits >> i & 1)) continue;
        const char *sep = at ? "," : "";
        if (i < n && CPU_FEATURES[i][0]) at += snprintf(out + at, cap - at, "%s%s", sep, CPU_FEATURES[i]);
        else at += snprintf(out + at, cap - at, "%sbit%u", sep, i);
        if (at >= cap) break;
    }
    if (!at) snprintf(out, cap, "none");
}

/* A thread-pointer offset as kiln writes it (read.rs tp_offset). */
static void tp_offset(int64_t v, char *out, size_t cap) {
    if (v < 0) snprintf(out, cap, "tp-0x%" PRIx64, (uint64_t)0 - (uint64_t)v);
    else snprintf(out, cap, "tp+0x%" PRIx64, (uint64_t)v);
}

/* The TLS fields (read.rs check_tls): consistent among themselves. Whether
 * this process can give the image its static TLS is decided at load
 * (tls_place). */
static void check_tls_header(const uint8_t *h) {
    char found[160];
    img.tls_size = U64(h + 288), img.tls_align = U64(h + 296);
    img.tls_image_off = U64(h + 304), img.tls_image_size = U64(h + 312), img.tls_static = U64(h + 320);
    uint64_t any = 0;
    for (unsigned at = 296; at < 352; at += 8) any |= U64(h + at);
    if (img.tls_size == 0) {
        if (any) field("TLS template size", "0 (with other TLS fields non-zero)", "non-zero, or every TLS field 0");
        return;
    }
    if (img.tls_size > MAX_IMAGE || img.tls_image_size > img.tls_size) {
        snprintf(found, sizeof found, "%#" PRIx64 " (initial image %#" PRIx64 ")", img.tls_size, img.tls_image_size);
        field("TLS template size", found, "1..=0x100000000, at least its initial image");
    }
    if (img.tls_image_size == 0 && img.tls_image_off != 0) {
        snprintf(found, sizeof found, "%" PRIu64, img.tls_image_off);
        field("TLS initial image offset", found, "0 (its size is 0)");
    }
    if (img.tls_align == 0 || (img.tls_align & (img.tls_align - 1)) || img.tls_align > 4096) {
        snprintf(found, sizeof found, "%" PRIu64, img.tls_align);
        field("TLS template alignment", found, "a power of two up to 4096");
    }
    img.tls_area_tp = (int64_t)U64(h + 328), img.tls_area_size = U64(h + 336), img.tls_area_off = U64(h + 344);
    if (img.tls_static == 2) { /* local-exec: the recorded range (read.rs check_tls) */
        char tp[40];
        tp_offset(img.tls_area_tp, tp, sizeof tp);
        if (img.tls_area_off > UINT64_MAX - img.tls_size || img.tls_area_off + img.tls_size > img.tls_area_size ||
            !isa_tls_area_side_ok(img.tls_area_tp)) {
            snprintf(found, sizeof found, "0x%" PRIx64 "+0x%" PRIx64 " of an area of 0x%" PRIx64 " bytes at thread-pointer offset %s",
                     img.tls_area_off, img.tls_size, img.tls_area_size, tp);
            field("static TLS range", found, "a range inside an area " ISA_TLS_AREA_SIDE);
        }
        return;
    }
    if (img.tls_static > 2) {
        snprintf(found, sizeof found, "%" PRIu64, img.tls_static);
        field("static TLS use", found,
              "0 (none), 1 (initial-exec: any range) or 2 (local-exec: the recorded range)");
    }
    if (U64(h + 328) || U64(h + 336) || U64(h + 344)) {
        snprintf(found, sizeof found, "%" PRId64 ", %#" PRIx64 ", %#" PRIx64, (int64_t)U64(h + 328),
                 U64(h + 336), U64(h + 344));
        field("static TLS area (no local-exec code)", found, "0, 0x0, 0x0");
    }
}

/* The header's own checks, cheapest first (read.rs check_header). */
static void check_header(void) {
    const uint8_t *f = img.f, *h = f + HEADER_AT;
    if (img.size < HEADER_AT + 8 || memcmp(f, "\x7f" "ELF", 4) || memcmp(h, "KILNIMG", 8))
        die("not a kiln image (no `\\x7fELF` + `KILNIMG` magic at offsets 0 and 64)");
    if (img.size < HEADER_AT + HEADER_SIZE) {
        char found[24], e[32];
        snprintf(found, sizeof found, "%" PRIu64, img.size);
        snprintf(e, sizeof e, "at least %u", HEADER_AT + HEADER_SIZE);
        field("file size", found, e);
    }
    expect("format version", U32(h + 8), FORMAT_VERSION);
    expect("header size", U32(h + 12), HEADER_SIZE);
    expect("machine", U16(h + 16), ISA_MACHINE);
    expect("pointer width", h[18], 8);
    expect("endianness", h[19], 1);
    expect("page size", U32(h + 20), ISA_PAGE);
    if (U64(h + 32) & ~1ull) {
        char found[32];
        snprintf(found, sizeof found, "%#" PRIx64, U64(h + 32));
        field("flags", found, "0 or 1 (PC32 imports; a later kiln wrote the image)");
    }
    img.pc32 = (int)(U64(h + 32) & 1);
    uint64_t need = U64(h + 24), have = isa_cpu_features();
    if (need & ~have) {
        char n[512], hv[512], e[560];
        feature_names(need, n, sizeof n), feature_names(have, hv, sizeof hv);
        snprintf(e, sizeof e, "a subset of this CPU's %s", hv);
        field("required CPU features", n, e);
    }
    expect("file size", U64(h + 104), img.size);
    uint8_t saved[32], got[32];
    char a[65], b[65], e[100];
    memcpy(saved, f + HASH_AT, 32);
    memset((uint8_t *)f + HASH_AT, 0, 32); /* our private copy of the file */
    blake3(f, img.size, got);
    memcpy((uint8_t *)f + HASH_AT, saved, 32);
    if (memcmp(saved, got, 32)) {
        hex(saved, a), hex(got, b);
        snprintf(e, sizeof e, "%s (the file's bytes)", b);
        field("content hash", a, e);
    }
    img.base_align = U64(h + 352);
    if (img.base_align < ISA_PAGE || img.base_align > MAX_BASE_ALIGN || (img.base_align & (img.base_align - 1))) {
        char found[24], want[64];
        snprintf(found, sizeof found, "%#" PRIx64, img.base_align);
        snprintf(want, sizeof want, "a power of two from %#x to %#" PRIx64, (unsigned)ISA_PAGE, MAX_BASE_ALIGN);
        field("base alignment", found, want);
    }
    check_tls_header(h);
    img.image_size = U64(h + 112), img.eh_off = U64(h + 120), img.eh_len = U64(h + 128);
    img.nseg = U32(h + 264), img.nimports = U32(h + 268), img.nexports = U32(h + 272);
    img.nrebased = U32(h + 276);
}

/* Program headers: PT_LOAD, R/RX/RW, page-aligned, ascending, in bounds. */
static void segments(void) {
    const uint8_t *f = img.f;
    /* What `object` checks (then kiln reads little-endian regardless). */
    if (f[4] != 2 || (f[5] != 1 && f[5] != 2) || f[6] != 1) bad("ELF container: not an ELF64 file");
    expect("ELF e_machine", U16(f + 18), ISA_MACHINE);
    uint64_t phoff = U64(f + 32);
    uint16_t phentsize = U16(f + 54), phnum = U16(f + 56);
    if (phnum && (phentsize != 56 || !inside(phoff, (uint64_t)phnum * 56, img.size)))
        bad("program headers: %u of size %u at %#" PRIx64 " are outside the file", phnum, phentsize, phoff);
    expect("segment count", phnum, img.nseg);
    if (phnum > MAX_SEGMENTS) bad("%u segments (kiln-load takes at most %u)", phnum, MAX_SEGMENTS);
    uint64_t prev_end = 0;
    for (unsigned i = 0; i < phnum; i++) {
        const uint8_t *p = f + phoff + 56 * i;
        struct seg *s = &img.seg[i];
        expect("segment type", U32(p), 1 /* PT_LOAD */);
        uint32_t fl = U32(p + 4);
        s->prot = fl == 5 ? PROT_RX : fl == 4 ? PROT_RO : fl == 6 ? PROT_RW : 0;
        if (!s->prot) {
            char found[16];
            snprintf(found, sizeof found, "%#x", fl);
            field("segment flags", found, "R, RX or RW");
        }
        s->offset = U64(p + 8), s->vaddr = U64(p + 16), s->filesz = U64(p + 32), s->memsz = U64(p + 40);
        if (s->vaddr % ISA_PAGE || s->offset % ISA_PAGE || s->filesz > s->memsz || s->vaddr < prev_end ||
            !inside(s->offset, s->filesz, img.size) || !inside(s->vaddr, s->memsz, img.image_size))
            bad("segment %u (image %#" PRIx64 "+%#" PRIx64 ", file %#" PRIx64 "+%#" PRIx64
                ") is misaligned, overlapping or out of bounds (image size %#" PRIx64 ")",
                i, s->vaddr, s->memsz, s->offset, s->filesz, img.image_size);
        prev_end = s->vaddr + s->memsz;
    }
    if (img.image_size == 0 || img.image_size > MAX_IMAGE) {
        char found[24];
        snprintf(found, sizeof found, "%" PRIu64, img.image_size);
        field("image size", found, "1..=4294967296");
    }
    if (img.tls_image_size) {
        for (unsigned i = 0; i < phnum; i++) {
            struct seg *s = &img.seg[i];
            if (s->prot == PROT_RO && img.tls_image_off >= s->vaddr &&
                inside(img.tls_image_off - s->vaddr, img.tls_image_size, s->memsz))
                return;
        }
        bad("the TLS initial image %#" PRIx64 "+%#" PRIx64 " is not inside a read-only segment", img.tls_image_off,
            img.tls_image_size);
    }
}

/* The section header named `name` (the first one, as `object` finds it). */
static const uint8_t *section(const char *name) {
    const uint8_t *f = img.f;
    uint64_t shoff = U64(f + 40);
    uint16_t shentsize = U16(f + 58), shnum = U16(f + 60), shstrndx = U16(f + 62);
    if (shnum == 0 || shentsize != 64 || !inside(shoff, (uint64_t)shnum * 64, img.size) || shstrndx >= shnum)
        bad("ELF container: section table (%u of size %u at %#" PRIx64 ", names in %u) is malformed",
            shnum, shentsize, shoff, shstrndx);
    const uint8_t *strs = f + shoff + 64 * (uint64_t)shstrndx;
    uint64_t soff = U64(strs + 24), ssize = U64(strs + 32);
    if (!inside(soff, ssize, img.size)) bad("ELF container: section names are outside the file");
    size_t want = strlen(name) + 1;
    for (unsigned i = 0; i < shnum; i++) {
        const uint8_t *s = f + shoff + 64 * (uint64_t)i;
        uint32_t n = U32(s);
        if (n < ssize && want <= ssize - n && !memcmp(f + soff + n, name, want)) return s;
    }
    return NULL;
}

/* The images this one links against (read.rs deps): build id, file name,
 * image size; loaded (next to this image) before it is bound. */
static void read_deps(void) {
    const uint8_t *t = img.table[T_DEPS];
    uint64_t n = img.tsize[T_DEPS];
    if (n % DEP_SIZE) {
        char found[24], want[32];
        snprintf(found, sizeof found, "%" PRIu64, n), snprintf(want, sizeof want, "a multiple of %u", DEP_SIZE);
        field(".kiln.deps size", found, want);
    }
    img.ndeps = (uint32_t)(n / DEP_SIZE);
    if (!(img.deps = calloc(img.ndeps + 1, sizeof *img.deps))) die("out of memory");
    for (uint32_t i = 0; i < img.ndeps; i++) {
        const uint8_t *r = t + (uint64_t)i * DEP_SIZE;
        struct dep *d = &img.deps[i];
        d->build_id = r, d->name = string(r + 32, "dependency name"), d->size = U64(r + 40);
        int twice = !memcmp(r, img.f + HEADER_AT + 40, 32);
        for (uint32_t j = 0; j < i; j++) twice |= !memcmp(r, img.deps[j].build_id, 32);
        if (twice) bad("dependency %u (%s) is the image itself or listed twice", i, cstr(d->name));
        if (d->size == 0 || d->size > MAX_IMAGE) {
            char found[24];
            snprintf(found, sizeof found, "%" PRIu64, d->size);
            field("dependency image size", found, "1..=4294967296");
        }
    }
}

/* Each table as both the header and the section table say; .eh_frame. */
static void tables(void) {
    const uint8_t *h = img.f + HEADER_AT, *s = section(".kiln.header");
    if (!s) bad("no .kiln.header section");
    expect(".kiln.header offset", U64(s + 24), HEADER_AT);
    for (int i = 0; i < N_TABLES; i++) {
        uint64_t off = U64(h + 136 + 16 * i), size = U64(h + 144 + 16 * i);
        if (!(s = section(TABLES[i]))) bad("no %s section", TABLES[i]);
        if (U64(s + 24) != off || U64(s + 32) != size)
            bad("%s: the header says offset %#" PRIx64 " size %#" PRIx64 ", the section table offset %#" PRIx64
                " size %#" PRIx64, TABLES[i], off, size, U64(s + 24), U64(s + 32));
        if (!inside(off, size, img.size))
            bad("%s (%#" PRIx64 "+%#" PRIx64 ") is outside the file", TABLES[i], off, size);
        img.table[i] = img.f + off, img.tsize[i] = size;
    }
    read_deps();
    expect(".kiln.hosttab size", img.tsize[T_HOSTTAB], 0);
    if (img.eh_len == 0) return;
    s = section(".eh_frame");
    if (!s || U64(s + 16) != img.eh_off || U64(s + 32) != img.eh_len)
        bad("the header's .eh_frame %#" PRIx64 "+%#" PRIx64 " does not match the section table's", img.eh_off,
            img.eh_len);
    for (unsigned i = 0; i < img.nseg; i++) {
        struct seg *g = &img.seg[i];
        if (img.eh_len >= 4 && g->prot == PROT_RO && img.eh_off >= g->vaddr &&
            inside(img.eh_off - g->vaddr, img.eh_len, g->filesz))
            return;
    }
    bad(".eh_frame %#" PRIx64 "+%#" PRIx64 " is not inside a read-only segment's file bytes", img.eh_off,
        img.eh_len);
}

/* Whether the word at `off` lies in a non-text segment. */
static void writable(uint64_t off, const char *what) {
    for (unsigned i = 0; i < img.nseg; i++) {
        struct seg *g = &img.seg[i];
        if (g->prot != PROT_RX && off >= g->vaddr && inside(off - g->vaddr, 8, g->memsz)) return;
    }
    bad("%s at %#" PRIx64 " is not a word of a non-text segment", what, off);
}

/* RELR (format.rs relr_decode): checks every offset; with `base`, rebases. */
static void rebase(int apply, uint64_t base) {
    const uint8_t *t = img.table[T_REBASE];
    uint64_t n = img.tsize[T_REBASE], limit = img.image_size / 8, count = 0, last = 0, b = 0;
    int has_last = 0, has_base = 0;
    if (n % 8) bad(".kiln.rebase size is not a multiple of 8");
    for (uint64_t i = 0; i < n / 8; i++) {
        uint64_t w = U64(t + 8 * i), bits = w >> 1, at = b; /* a bitmap of the 63 words at b */
        if (w & 1) {
            if (!has_base) bad(".kiln.rebase: rebase entry %" PRIu64 ": a bitmap with no address before it", i);
        } else { /* an address */
            if (w % 8) bad(".kiln.rebase: rebase entry %" PRIu64 ": offset %#" PRIx64 " is not 8-aligned", i, w);
            bits = 1, at = w;
        }
        for (; bits; bits >>= 1) {
            if (bits & 1) {
                if (has_last && at <= last) bad(".kiln.rebase: rebase offset %#" PRIx64 " is not ascending", at);
                last = at, has_last = 1;
                if (++count > limit) bad(".kiln.rebase: more than %" PRIu64 " rebased words", limit);
                writable(at, ".kiln.rebase: rebased word");
                if (apply) put64(img.mem + at, U64(img.mem + at) + base);
            }
            if (at > UINT64_MAX - 8) bad(".kiln.rebase: rebase offset overflows");
            at += 8;
        }
        if (w & 1) {
            if (b > UINT64_MAX - 63 * 8) bad(".kiln.rebase: rebase offset overflows");
            b += 63 * 8;
        } else {
            b = w + 8, has_base = 1;
        }
    }
    expect("rebased word count", count, img.nrebased);
}

/* `tls`: 0, or 1 + the kind of a thread-local slot (`var`: the variable's
 * offset in the TLS template). */
struct import { uint64_t offset, addend, var; char *name; int weak, tls, pc32; int64_t dep; };

/* Bytes an import writes: a PC32 field 4, a word 8. */
static uint64_t import_width(const struct import *m) { return m->pc32 ? 4 : 8; }

/* A PC32 field (format.rs): 4 bytes in any segment, text included. */
static void in_a_segment(uint64_t off, const char *what) {
    for (unsigned i = 0; i < img.nseg; i++) {
        struct seg *g = &img.seg[i];
        if (off >= g->vaddr && inside(off - g->vaddr, 4, g->memsz)) return;
    }
    bad("%s at %#" PRIx64 " is not a 4-byte field of a segment", what, off);
}

/* A thread-local slot (read.rs tls_slot): its kind, the variable inside
 * the template; initial-exec slots only in an image that says it uses
 * static TLS. */
static void tls_slot(const uint8_t *r) {
    char found[64];
    uint32_t kind = U32(r + 28);
    if (kind > 3) {
        snprintf(found, sizeof found, "%u", kind);
        field("thread-local slot kind", found, "0..=3");
    }
    if (kind == TLS_TP_OFFSET && img.tls_static == 0) {
        snprintf(found, sizeof found, "%" PRIu64, img.tls_static);
        field("static TLS use", found, "1 or 2 (the image has initial-exec slots)");
    }
    if (kind >= TLS_DESC_RESOLVER) img.tls_desc = 1;
    if (U64(r + 8) > img.tls_size) {
        snprintf(found, sizeof found, "%#" PRIx64, U64(r + 8));
        char want[64];
        snprintf(want, sizeof want, "at most the TLS template size %#" PRIx64, img.tls_size);
        field("thread-local slot offset", found, want);
    }
    expect("thread-local slot addend", U64(r + 16), 0);
}
static void read_imports(void) {
    const uint8_t *t = img.table[T_IMPORTS];
    expect(".kiln.imports size", img.tsize[T_IMPORTS], (uint64_t)img.nimports * IMPORT_SIZE);
    imports = calloc(img.nimports + 1, sizeof *imports);
    if (!imports) die("out of memory");
    for (uint32_t i = 0; i < img.nimports; i++) {
        const uint8_t *r = t + (uint64_t)i * IMPORT_SIZE;
        uint8_t flags = r[24], source = r[25];
        if (source == SOURCE_TLS && img.tls_size) {
            tls_slot(r);
            struct import *m = &imports[i];
            m->offset = U64(r), m->tls = 1 + (int)U32(r + 28), m->var = U64(r + 8), m->name = "";
            if (flags & ~3u) bad("thread-local slot %u: flags %u", i, flags);
            if (i > 0 && imports[i - 1].offset + import_width(&imports[i - 1]) > m->offset)
                bad("import %u () is not sorted by offset or overlaps the previous", i);
            writable(m->offset, "import");
            continue;
        }
        if (source != SOURCE_BY_NAME && source != SOURCE_DEPENDENCY) {
            char found[64];
            snprintf(found, sizeof found, "%u", source);
            field("import source", found, "0 (by name) or 2 (a dependency's build id and offset)");
        }
        if (flags & ~7u) {
            char found[8];
            snprintf(found, sizeof found, "%u", flags);
            field("import flags", found, "a combination of WEAK (1), SLOT (2) and PC32 (4)");
        }
        struct import *m = &imports[i];
        m->offset = U64(r), m->addend = U64(r + 16), m->weak = flags & 1, m->dep = -1, m->pc32 = (flags & 4) != 0;
        if (m->pc32) {
            char found[8];
            if (!img.pc32) field("flags", "0", "1 (PC32 imports): an import has the PC32 flag");
            snprintf(found, sizeof found, "%u", flags);
            if (flags != 4) field("import flags", found, "PC32 (4) alone: a PC32 import is neither weak nor a slot");
            snprintf(found, sizeof found, "%u", source);
            if (source != SOURCE_BY_NAME) field("import source", found, "0 (by name) for a PC32 import");
        }
        if (source == SOURCE_DEPENDENCY) {
            uint32_t index = U32(r + 28);
            char found[64], want[64];
            if (index >= img.ndeps) {
                snprintf(found, sizeof found, "%u", index), snprintf(want, sizeof want, "below the dependency count %u", img.ndeps);
                field("import dependency index", found, want);
            }
            if (U64(r + 8) > img.deps[index].size) {
                snprintf(found, sizeof found, "%#" PRIx64, U64(r + 8));
                snprintf(want, sizeof want, "at most its image size %#" PRIx64, img.deps[index].size);
                field("import offset in a dependency", found, want);
            }
            m->dep = index, m->var = U64(r + 8), m->name = "";
        } else {
            m->name = cstr(string(r + 8, "import name"));
        }
        if (i > 0 && imports[i - 1].offset + import_width(&imports[i - 1]) > m->offset)
            bad("import %u (%s) is not sorted by offset or overlaps the previous", i, m->name);
        if (m->pc32) in_a_segment(m->offset, "import");
        else writable(m->offset, "import");
    }
    int any_pc32 = 0;
    for (uint32_t i = 0; i < img.nimports; i++) any_pc32 |= imports[i].pc32;
    if (img.pc32 && !any_pc32) field("flags", "1", "0: the image has no PC32 import");
}

/* Exports sorted by name, inside the image; returns `main`'s offset. */
static int64_t read_exports(void) {
    const uint8_t *t = img.table[T_EXPORTS];
    struct strref prev = {0};
    int64_t main_at = -1;
    expect(".kiln.exports size", img.tsize[T_EXPORTS], (uint64_t)img.nexports * EXPORT_SIZE);
    for (uint32_t i = 0; i < img.nexports; i++) {
        const uint8_t *r = t + (uint64_t)i * EXPORT_SIZE;
        uint64_t off = U64(r);
        struct strref n = string(r + 8, "export name");
        if (off >= img.image_size) {
            char found[300], e[64];
            snprintf(found, sizeof found, "%#" PRIx64 " (%.*s)", off, (int)(n.len > 200 ? 200 : n.len),
                     (const char *)n.p);
            snprintf(e, sizeof e, "below the image size %#" PRIx64, img.image_size);
            field("export offset", found, e);
        }
        uint32_t common = n.len < prev.len ? n.len : prev.len;
        int c = memcmp(prev.p ? prev.p : n.p, n.p, common);
        if (n.len == 0 || (i > 0 && (c > 0 || (c == 0 && prev.len >= n.len))))
            bad("export `%.*s` is empty, out of order or a duplicate", (int)(n.len > 200 ? 200 : n.len),
                (const char *)n.p);
        if (n.len == 4 && !memcmp(n.p, "main", 4)) main_at = (int64_t)off;
        prev = n;
    }
    return main_at;
}

/* runtime/init.rs init_priority: kind and sort key of a section, or -1. */
enum kind { PREINIT, INIT, CTORS, FINI, DTORS };
#define DEFAULT_PRIORITY 65536u
static int init_priority(struct strref s, uint32_t *key) {
    static const char *const prefix[] = {".init_array", ".fini_array", ".ctors", ".dtors"};
    static const enum kind kinds[] = {INIT, FINI, CTORS, DTORS};
    *key = DEFAULT_PRIORITY;
    if (s.len == 14 && !memcmp(s.p, ".preinit_array", 14)) return PREINIT;
    for (int k = 0; k < 4; k++) {
        size_t pl = strlen(prefix[k]);
        if (s.len < pl || memcmp(s.p, prefix[k], pl)) continue;
        const uint8_t *rest = s.p + pl;
        size_t rl = s.len - pl;
        if (rl == 0) return kinds[k];
        if (rest[0] != '.') return -1;
        uint64_t n = 0;
        int ok = rl > 1;
        for (size_t i = 1; i < rl && ok; i++) {
            ok = rest[i] >= '0' && rest[i] <= '9';
            n = n * 10 + (uint64_t)(rest[i] - '0');
            if (n > 65535) n = 65536; /* saturate: any bigger number gets no priority */
        }
        if (ok && n <= 65535) *key = kinds[k] == CTORS || kinds[k] == DTORS ? 65535 - (uint32_t)n : (uint32_t)n;
        return kinds[k];
    }
    return -1;
}

static void push(struct list *l, uint32_t key, uint64_t off) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        if (!(l->e = realloc(l->e, l->cap * sizeof *l->e))) die("out of memory");
    }
    l->e[l->n] = (struct entry){key, (uint32_t)l->n, off}, l->n++;
}
static int by_key(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}
static int in_text(uint64_t off) {
    for (unsigned s = 0; s < img.nseg; s++)
        if (img.seg[s].prot == PROT_RX && off >= img.seg[s].vaddr && off - img.seg[s].vaddr < img.seg[s].filesz)
            return 1;
    return off == UINT64_MAX; /* an entry outside the image: skipped */
}
static void read_init_fini(void) {
    const uint8_t *t = img.table[T_INIT], *ents = img.table[T_INITENTS];
    uint64_t n = img.tsize[T_INIT], ne = img.tsize[T_INITENTS];
    if (n % INIT_SIZE || ne % 8) bad(".kiln.init or .kiln.initents has a partial record");
    for (uint64_t i = 0; i < n / INIT_SIZE; i++) {
        const uint8_t *r = t + i * INIT_SIZE;
        struct strref name = string(r, "initializer section name");
        uint32_t key, first = U32(r + 8), count = U32(r + 12);
        int kind = init_priority(name, &key);
        if (kind < 0)
            field("initializer section", cstr(name),
                  ".init_array*, .fini_array*, .ctors*, .dtors* or .preinit_array");
        if (!inside((uint64_t)first * 8, (uint64_t)count * 8, ne))
            bad("%s: entries %u+%u are outside .kiln.initents", cstr(name), first, count);
        for (uint32_t j = 0; j < count; j++)
            if (!in_text(U64(ents + 8 * ((uint64_t)first + j))))
                bad("%s: entry %#" PRIx64 " is not in text", cstr(name), U64(ents + 8 * ((uint64_t)first + j)));
        struct list *l = kind == PREINIT ? &preinits : kind == INIT || kind == CTORS ? &inits : &finis;
        for (uint32_t j = 0; j < count; j++) {
            /* .ctors runs each section last-first; ld reverses .dtors. */
            uint64_t at = kind == CTORS || kind == DTORS ? (uint64_t)first + count - 1 - j : (uint64_t)first + j;
            uint64_t off = U64(ents + 8 * at);
            if (off != UINT64_MAX) push(l, key, off);
        }
    }
    if (inits.n) qsort(inits.e, inits.n, sizeof *inits.e, by_key);
    if (finis.n) qsort(finis.e, finis.n, sizeof *finis.e, by_key);
}

/* ------------------------------ loading ------------------------------ */
extern void __register_frame(void *begin); /* libgcc_s */
extern int __cxa_atexit(void (*f)(void *), void *arg, void *dso);
extern void __cxa_finalize(void *dso);
extern char **environ;

/* `atexit` lives in libc_nonshared.a, not in libc.so: kiln's runtime
 * provides it, and so does the loader — a handler of the image (its
 * __dso_handle is the image's first byte), as libc_nonshared's does. */
static int image_atexit(void (*f)(void)) {
    const uint8_t *from = __builtin_return_address(0);
    void *dso = loaded[nloaded - 1]->mem; /* the program's, if no image holds the caller */
    for (unsigned i = 0; i < nloaded; i++)
        if (from >= loaded[i]->mem && from < loaded[i]->mem + loaded[i]->image_size) dso = loaded[i]->mem;
    return __cxa_atexit((void (*)(void *))(void (*)(void))f, NULL, dso);
}

/* The image's thread-locals. The loader has a static TLS area of its own:
 * `kl_area`, a thread-local of this executable, so it lies at the same
 * thread-pointer offset in every thread (variant II on x86-64: below the
 * thread pointer; variant I on aarch64: after the 16-byte TCB), and glibc
 * gives every new thread a copy of the executable's PT_TLS init image. The
 * image's block goes there: at the range its local-exec code was linked
 * against (`static TLS use` 2; the range must lie inside the area), else at
 * the area's start. Initial-exec slots get the block's thread-pointer
 * offset, TLSDESC descriptors the static resolver, module ids KL_TLS_MODULE
 * (the loader's `__tls_get_addr`). The image's initial values are copied
 * into the calling thread's area and into the init image, before any code
 * of the image runs. Only an image of the general/local-dynamic model whose
 * template does not fit the area gets a heap block per thread instead
 * (allocated on the thread's first access, freed by a pthread key
 * destructor after its C++ thread_local destructors ran). */
#define KL_AREA_SIZE 0x10000u
#define KL_AREA_ALIGN 64u
#define KL_AREA_MAGIC "kiln-load static TLS area 1"
static _Thread_local struct kl_area {
    uint8_t bytes[KL_AREA_SIZE];
    char magic[64]; /* non-zero: the area is in .tdata, found in the init image by it */
} __attribute__((aligned(KL_AREA_ALIGN))) kl_area = {.magic = KL_AREA_MAGIC};
__attribute__((visibility("hidden"))) void kl_tlsdesc_static(void);
static int64_t kl_area_tp(void) { return (int64_t)(kl_area.bytes - (uint8_t *)isa_thread_pointer()); }
static size_t tls_in_area; /* the block's offset in kl_area (static placement) */
static struct image *tls_img; /* the image with thread-locals (one at most) */

/* Where the image's block goes; refuses what the area cannot give. */
static void tls_place(void) {
    char here[40], at[40], found[200], want[320];
    int64_t area = kl_area_tp(), start;
    tp_offset(area, here, sizeof here);
    if (img.tls_static == 2) {
        if (__builtin_add_overflow(img.tls_area_tp, (int64_t)img.tls_area_off, &start) || start < area ||
            start - area > (int64_t)KL_AREA_SIZE || img.tls_size > KL_AREA_SIZE - (uint64_t)(start - area)) {
            tp_offset(img.tls_area_tp, at, sizeof at);
            snprintf(found, sizeof found, "%s (0x%" PRIx64 " bytes), range 0x%" PRIx64 "..0x%" PRIx64, at,
                     img.tls_area_size, img.tls_area_off, img.tls_area_off + img.tls_size);
            snprintf(want, sizeof want,
                     "a range inside kiln-load's static TLS area %s (%#x bytes) (the image's local-exec code "
                     "addresses its thread-locals at thread-pointer offsets fixed when it was linked)",
                     here, KL_AREA_SIZE);
            field("static TLS area", found, want);
        }
    } else if (img.tls_align <= KL_AREA_ALIGN && img.tls_size <= KL_AREA_SIZE) {
        start = area;
    } else if (img.tls_static == 1 || img.tls_desc) {
        snprintf(found, sizeof found, "0x%" PRIx64 " (align %" PRIu64 ")", img.tls_size, img.tls_align);
        snprintf(want, sizeof want,
                 "at most %#x bytes aligned to at most %u (initial-exec and TLSDESC code need kiln-load's "
                 "static TLS area)", KL_AREA_SIZE, KL_AREA_ALIGN);
        field("TLS template size", found, want);
    } else {
        return; /* general/local-dynamic: a heap block per thread */
    }
    img.tls_block = start, img.tls_static_block = 1, tls_in_area = (size_t)(start - area);
}

struct tls_ctx { const uint8_t *init; uint64_t size, relro_lo, relro_hi, load_lo, load_hi; uint32_t load_flags; };
static int find_tls_image(struct dl_phdr_info *info, size_t n, void *data) {
    struct tls_ctx *c = data;
    (void)n;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uint64_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_TLS) c->init = (const uint8_t *)(uintptr_t)lo, c->size = ph->p_filesz;
        if (ph->p_type == PT_GNU_RELRO) c->relro_lo = lo, c->relro_hi = lo + ph->p_memsz;
    }
    for (int i = 0; i < info->dlpi_phnum && c->init; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uint64_t lo = info->dlpi_addr + ph->p_vaddr, at = (uint64_t)(uintptr_t)c->init;
        if (ph->p_type == PT_LOAD && at >= lo && at - lo < ph->p_memsz)
            c->load_lo = lo, c->load_hi = lo + ph->p_memsz, c->load_flags = ph->p_flags;
    }
    return 1; /* the first object is the executable */
}

/* The image's initial values into the loader's PT_TLS init image (which
 * glibc copies into every thread it creates) at `off` in kl_area. */
static void tls_template_write(size_t off, const uint8_t *src, size_t len) {
    struct tls_ctx c = {0};
    dl_iterate_phdr(find_tls_image, &c);
    const uint8_t *magic = NULL;
    if (c.init && c.size >= sizeof kl_area) magic = memmem(c.init, (size_t)c.size, KL_AREA_MAGIC, sizeof KL_AREA_MAGIC);
    if (!magic || magic - c.init < (ptrdiff_t)KL_AREA_SIZE || !c.load_hi)
        die("kiln-load's static TLS area is not in its PT_TLS init image (was it built by build.sh?)");
    uint8_t *dst = (uint8_t *)(uintptr_t)(magic - KL_AREA_SIZE + off);
    uintptr_t page = (uintptr_t)dst & ~(uintptr_t)(img.page - 1), end = (uintptr_t)(dst + len);
    if (mprotect((void *)page, end - page, PROT_READ | PROT_WRITE)) die("mprotect: %s", strerror(errno));
    memcpy(dst, src, len);
    int relro = (uint64_t)page >= c.relro_lo && (uint64_t)end <= c.relro_hi;
    int prot = relro ? PROT_READ : (c.load_flags & PF_R ? PROT_READ : 0) | (c.load_flags & PF_W ? PROT_WRITE : 0);
    if (mprotect((void *)page, end - page, prot)) die("mprotect: %s", strerror(errno));
}

struct tls_index { uint64_t module, offset; };
static pthread_key_t tls_key;
static void *(*real_tls_get_addr)(struct tls_index *);
static void *tls_block(void) {
    const struct image *t = tls_img;
    if (t->tls_static_block) return kl_area.bytes + tls_in_area;
    void *b = pthread_getspecific(tls_key);
    if (b) return b;
    size_t size = (size_t)((t->tls_size + t->tls_align - 1) / t->tls_align * t->tls_align);
    b = aligned_alloc((size_t)t->tls_align, size);
    if (!b || pthread_setspecific(tls_key, b)) die("cannot allocate a thread's %zu TLS bytes", size);
    memcpy(b, t->mem + t->tls_image_off, (size_t)t->tls_image_size);
    memset((uint8_t *)b + t->tls_image_size, 0, size - (size_t)t->tls_image_size);
    return b;
}
ISA_TLS_GET_ADDR_ALIGN static void *image_tls_get_addr(struct tls_index *ti) {
    if (ti->module != KL_TLS_MODULE || !tls_img) {
        if (!real_tls_get_addr) die("thread-local access to module %#" PRIx64 ", which is not the image's", ti->module);
        return real_tls_get_addr(ti);
    }
    return (uint8_t *)tls_block() + ti->offset;
}
static void set_up_tls(void) {
    if (!img.tls_size) return;
    if (tls_img) die("both %s and this image have thread-locals (kiln-load gives one image a TLS block)", tls_img->path);
    tls_img = cur;
    tls_place();
    if (!img.tls_static_block && pthread_key_create(&tls_key, free)) die("pthread_key_create failed");
    *(void **)(void *)&real_tls_get_addr = dlsym(RTLD_DEFAULT, "__tls_get_addr");
}
/* After rebase and bind, before any code of the image runs: the initial
 * values into this (the only) thread's block and the init image. */
static void initialize_tls(void) {
    if (!img.tls_static_block || !img.tls_image_size) return;
    const uint8_t *init = img.mem + img.tls_image_off;
    memcpy(kl_area.bytes + tls_in_area, init, (size_t)img.tls_image_size);
    tls_template_write(tls_in_area, init, (size_t)img.tls_image_size);
}
/* The word a thread-local slot gets (`tls`: 1 + its kind). */
static uint64_t tls_slot_value(const struct import *m) {
    switch (m->tls - 1) {
    case TLS_MODULE_ID: return KL_TLS_MODULE;
    case TLS_TP_OFFSET: return (uint64_t)img.tls_block + m->var;
    case TLS_DESC_RESOLVER: return (uint64_t)(uintptr_t)kl_tlsdesc_static;
    default: return (uint64_t)img.tls_block + m->var; /* TLSDESC argument */
    }
}

static const struct { const char *name; void (*addr)(void); } OVERRIDES[] = {
    {"atexit", (void (*)(void))image_atexit},
    /* Also in libc_nonshared.a only (libc.so has a compat pthread_atfork
     * dlsym cannot find, and no at_quick_exit): the loader's own, for the
     * image it never unmaps. */
    {"pthread_atfork", (void (*)(void))pthread_atfork},
    {"at_quick_exit", (void (*)(void))at_quick_exit},
    {"__tls_get_addr", (void (*)(void))image_tls_get_addr},
};

static void *lookup(const char *name);

/* Where to ask for an image with PC32 imports (`bind` checks their reach):
 * just below its first PC32 target, which a free range there puts within
 * 2 GiB of it (the kernel's own choice otherwise: below the libraries). */
static void *pc32_hint(uint64_t len) {
    if (!img.pc32) return NULL;
    for (uint32_t i = 0; i < img.nimports; i++) {
        if (!imports[i].pc32) continue;
        uintptr_t t = (uintptr_t)lookup(imports[i].name), room = len + img.base_align + (64u << 20);
        return t > room ? (void *)((t - room) & ~(uintptr_t)(img.page - 1)) : NULL;
    }
    return NULL;
}

/* `len` bytes of RW memory at a multiple of the image's base alignment,
 * near `hint` if the kernel can: over-reserved by the alignment, the excess
 * before and after unmapped. */
static void *map_aligned(uint64_t len, void *hint) {
    uint64_t extra = img.base_align > img.page ? img.base_align - img.page : 0;
    void *m = mmap(hint, len + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        die("cannot map %" PRIu64 " bytes (aligned to %#" PRIx64 ") for the image: %s", len, img.base_align,
            strerror(errno));
    uintptr_t b = (uintptr_t)m, a = (b + img.base_align - 1) & ~(uintptr_t)(img.base_align - 1);
    if (a > b) munmap(m, a - b);
    if (b + extra > a) munmap((void *)(a + len), b + extra - a);
    return (void *)a;
}

/* Memory for the image: RW, page-rounded, at a multiple of its base
 * alignment, not touching an address whose low 32 bits are zero (libgcc
 * drops FDEs of code there; kiln's slab avoids it). */
static void map_image(void) {
    uint64_t len = (img.image_size + img.page - 1) / img.page * img.page;
    void *tried[4] = {0};
    for (int t = 0; t < 4 && !img.mem; t++) {
        void *m = map_aligned(len, pc32_hint(len));
        uintptr_t b = (uintptr_t)m;
        if ((b & 0xffffffffu) == 0 || (b >> 32) != ((b + len - 1) >> 32)) tried[t] = m;
        else img.mem = m;
    }
    for (int t = 0; t < 4; t++)
        if (tried[t]) munmap(tried[t], len);
    if (!img.mem) die("cannot map the image away from a 4 GiB boundary");
    for (unsigned i = 0; i < img.nseg; i++)
        memcpy(img.mem + img.seg[i].vaddr, img.f + img.seg[i].offset, img.seg[i].filesz);
}

#if defined(__aarch64__)
/* libgcc's outline atomics (gcc's and clang's -moutline-atomics, gcc's
 * default): only the static libgcc defines them, hidden, so no library
 * exports them to dlsym; kiln saves them as imports by name (kiln-arch's
 * `is_static_runtime_helper`) and this loader binds its own copies. */
#define KL_ORDERS(op, n) X(op##n##_relax) X(op##n##_acq) X(op##n##_rel) X(op##n##_acq_rel) X(op##n##_sync)
#define KL_SIZES(op) KL_ORDERS(op, 1) KL_ORDERS(op, 2) KL_ORDERS(op, 4) KL_ORDERS(op, 8)
#define KL_OUTLINE_ATOMICS                                                                                             \
    KL_SIZES(cas) KL_ORDERS(cas, 16) KL_SIZES(swp) KL_SIZES(ldadd) KL_SIZES(ldclr) KL_SIZES(ldeor) KL_SIZES(ldset)
#define X(f) extern void __aarch64_##f(void);
KL_OUTLINE_ATOMICS
#undef X
#define X(f) {"__aarch64_" #f, __aarch64_##f},
static const struct { const char *name; void (*addr)(void); } RUNTIME_HELPERS[] = {KL_OUTLINE_ATOMICS};
#undef X
#endif

/* The loader's own copy of a static runtime helper `name`, or NULL. */
static void *runtime_helper(const char *name) {
#if defined(__aarch64__)
    for (size_t i = 0; i < sizeof RUNTIME_HELPERS / sizeof RUNTIME_HELPERS[0]; i++)
        if (!strcmp(name, RUNTIME_HELPERS[i].name)) return *(void **)(void *)&RUNTIME_HELPERS[i].addr;
#else
    (void)name;
#endif
    return NULL;
}

static void *lookup(const char *name) {
    for (size_t i = 0; i < sizeof OVERRIDES / sizeof OVERRIDES[0]; i++)
        if (!strcmp(name, OVERRIDES[i].name)) return *(void **)(void *)&OVERRIDES[i].addr;
    void *helper = runtime_helper(name);
    return helper ? helper : dlsym(RTLD_DEFAULT, name);
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Binds every import by name: kiln's runtime names and libgcc's static-only
 * helpers first, then the process (dlsym). Images record no libraries (format version 2): the loader loads
 * what kiln's host loads by default — libm, libgcc_s, libstdc++ — when a
 * name is not found without them. Every missing strong import is listed. */
static void bind(void) {
    void **addr = calloc(img.nimports + 1, sizeof *addr);
    char **missing = calloc(img.nimports + 1, sizeof *missing);
    size_t nmissing = 0;
    if (!addr || !missing) die("out of memory");
    for (int pass = 0; pass < 2; pass++) {
        nmissing = 0;
        for (uint32_t i = 0; i < img.nimports; i++) {
            if (imports[i].tls || imports[i].dep >= 0) continue;
            if (!addr[i]) addr[i] = lookup(imports[i].name);
            if (!addr[i] && !imports[i].weak) missing[nmissing++] = imports[i].name;
        }
        int any = nmissing > 0; /* weak ones too: kiln's host has these libraries loaded */
        for (uint32_t i = 0; i < img.nimports; i++) any |= !addr[i] && !imports[i].tls && imports[i].dep < 0;
        if (!any || pass) break;
        static const char *const libs[] = {"libm.so.6", "libgcc_s.so.1", "libstdc++.so.6"};
        for (int l = 0; l < 3; l++) dlopen(libs[l], RTLD_NOW | RTLD_GLOBAL); /* optional, as in kiln */
    }
    if (nmissing) {
        qsort(missing, nmissing, sizeof *missing, by_name);
        fprintf(stderr, "kiln-load: %s: imported symbols not found: ", image_path);
        for (size_t i = 0; i < nmissing; i++)
            if (i == 0 || strcmp(missing[i], missing[i - 1]))
                fprintf(stderr, "%s%s", i ? ", " : "", missing[i]);
        fputc('\n', stderr);
        exit(127);
    }
    for (uint32_t i = 0; i < img.nimports; i++) {
        const struct import *m = &imports[i];
        uint64_t v = m->tls        ? tls_slot_value(m)
                     : m->dep >= 0 ? (uint64_t)(uintptr_t)img.deps[m->dep].image->mem + m->var + m->addend
                     : addr[i]     ? (uint64_t)(uintptr_t)addr[i] + m->addend
                                   : 0;
        if (m->pc32) {
            /* S + A - P: the image must lie within 2 GiB of the target. */
            int64_t d = (int64_t)(v - (uint64_t)(uintptr_t)(img.mem + m->offset));
            if (d < INT32_MIN || d > INT32_MAX)
                die("`%s` at %p is out of reach of the 32-bit PC-relative field at image offset %#" PRIx64
                    " (image at %p): compile with -fPIC so the code reaches it through the GOT",
                    m->name, addr[i], m->offset, (void *)img.mem);
            int32_t d32 = (int32_t)d;
            memcpy(img.mem + m->offset, &d32, 4);
            continue;
        }
        put64(img.mem + m->offset, v);
    }
    free(addr), free(missing);
}

/* Final protections: text R-X, read-only data R--, data RW-, gaps none. */
static void protect(void) {
    uint64_t len = (img.image_size + img.page - 1) / img.page * img.page;
    if (mprotect(img.mem, len, PROT_NONE)) die("mprotect: %s", strerror(errno));
    for (unsigned i = 0; i < img.nseg; i++) {
        struct seg *s = &img.seg[i];
        uint64_t l = (s->memsz + img.page - 1) / img.page * img.page;
        int p = s->prot == PROT_RX ? PROT_READ | PROT_EXEC : s->prot == PROT_RO ? PROT_READ : PROT_READ | PROT_WRITE;
        if (l && mprotect(img.mem + s->vaddr, l, p)) die("mprotect: %s", strerror(errno));
        if (s->prot == PROT_RX) isa_sync_code((char *)img.mem + s->vaddr, l);
    }
}

/* runtime/eh_frame.rs: a whole section of records, then a zero word. */
static void register_eh_frame(void) {
    if (img.eh_len == 0) return;
    const uint8_t *p = img.mem + img.eh_off;
    uint64_t len = img.eh_len - 4, at = 0;
    while (at < len) {
        if (len - at < 4) bad(".eh_frame at offset %#" PRIx64 ": truncated record length", at);
        uint64_t rec = U32(p + at);
        if (rec == 0) bad(".eh_frame at offset %#" PRIx64 ": zero length word before the end of the section", at);
        if (rec == 0xffffffffu) {
            if (len - at < 12) bad(".eh_frame at offset %#" PRIx64 ": truncated 64-bit record length", at);
            rec = U64(p + at + 4);
            if (rec > UINT64_MAX - 12) bad(".eh_frame at offset %#" PRIx64 ": 64-bit record length out of range", at);
            rec += 12;
        } else {
            rec += 4;
        }
        if (rec > len - at) bad(".eh_frame at offset %#" PRIx64 ": record extends past the end of the section", at);
        at += rec;
    }
    if (U32(p + len)) bad(".eh_frame: no 4-byte zero terminator after the section");
    __register_frame((void *)p);
}

/* Finalizers at exit, as kiln's executable teardown: exit() has run the
 * handlers registered after this one (the image's atexit/__cxa_atexit
 * handlers, newest first); then .fini_array/.dtors backwards (default
 * priority first, then descending priorities), then handlers registered
 * meanwhile. */
static void run_finalizers(void) {
    for (unsigned k = nloaded; k-- > 0;) {
        cur = loaded[k];
        __cxa_finalize(img.mem);
        for (size_t i = finis.n; i-- > 0;) ((void (*)(void))(uintptr_t)(img.mem + finis.e[i].off))();
        __cxa_finalize(img.mem);
    }
}

static void read_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) die("cannot read: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) die("cannot read: not a regular file");
    if ((uint64_t)st.st_size > ((uint64_t)1 << 34)) die("cannot read: %" PRIu64 " bytes is too big", (uint64_t)st.st_size);
    uint8_t *f = malloc((size_t)st.st_size + 1);
    if (!f) die("out of memory");
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, f + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("cannot read: %s", n ? strerror(errno) : "the file shrank");
        got += (size_t)n;
    }
    close(fd);
    img.f = f, img.size = got;
}

/* `name` (a dependency's recorded file name) in the directory of `path`. */
static char *next_to(const char *path, struct strref name) {
    const char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path) + 1 : 0;
    char *p = malloc(dir + name.len + 1);
    if (!p) die("out of memory");
    memcpy(p, path, dir), memcpy(p + dir, name.p, name.len), p[dir + name.len] = 0;
    return p;
}

/* A dependency's file is the build it was saved against, or is refused
 * naming both build ids (under the dependent's name). */
static void check_dependency(const struct dep *d, const struct image *found) {
    char want[65], got[65];
    hex(d->build_id, want), hex(found->f + HEADER_AT + 40, got);
    if (memcmp(want, got, 64))
        die("dependency %s (%s) has build id %s, not %s, the build this image was saved against", cstr(d->name),
            found->path, got, want);
    if (found->image_size != d->size)
        die("dependency %s (%s, build id %s) spans %#" PRIx64 " bytes, not %#" PRIx64, cstr(d->name), found->path, got,
            found->image_size, d->size);
}

/* Checks, maps, rebases and binds the image at `path`, after the images it
 * links against (each found next to it by the file name it was saved under,
 * loaded once however many images link against it). `want`: the dependency
 * record naming it (NULL for the program). Nothing of it runs yet. */
static struct image *load_image(const char *path, const struct dep *want) {
    struct image *dependent = cur;
    for (unsigned i = 0; want && i < nloaded; i++)
        if (!memcmp(loaded[i]->f + HEADER_AT + 40, want->build_id, 32)) {
            check_dependency(want, loaded[i]); /* loaded before, by build id: its size */
            return loaded[i];
        }
    if (want && access(path, R_OK)) {
        char id[65];
        hex(want->build_id, id);
        die("dependency %s (build id %s) is not loaded: cannot read %s: %s", cstr(want->name), id, path,
            strerror(errno));
    }
    if (nloaded == sizeof loaded / sizeof loaded[0]) die("more than %zu images", sizeof loaded / sizeof loaded[0]);
    if (!(cur = calloc(1, sizeof *cur))) die("out of memory");
    struct image *me = cur;
    img.path = path;
    read_file(path);
    /* Every check before any memory is mapped (read.rs parse order). */
    check_header();
    if (want) cur = dependent, check_dependency(want, me), cur = me;
    segments();
    tables();
    string(img.f + HEADER_AT + 280, "image name");
    rebase(0, 0);
    read_imports();
    img.main_at = read_exports();
    read_init_fini();
    long sys_page = sysconf(_SC_PAGESIZE);
    img.page = ISA_PAGE;
    if (sys_page <= 0 || ISA_PAGE % (uint64_t)sys_page)
        die("the image's page size %u is not a multiple of this system's %ld", ISA_PAGE, sys_page);
    for (uint32_t i = 0; i < me->ndeps; i++) {
        struct dep *d = &me->deps[i];
        d->image = load_image(next_to(me->path, d->name), d);
    }
    /* Map, rebase, bind, protect, register. */
    map_image();
    rebase(1, (uint64_t)(uintptr_t)img.mem);
    set_up_tls();
    bind();
    protect();
    initialize_tls();
    register_eh_frame();
    loaded[nloaded++] = me;
    cur = dependent;
    return me;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: kiln-load IMAGE [ARGS...]   (runs a kiln image; exit status: main's)\n");
        return 127;
    }
    struct image *prog = load_image(argv[1], NULL);
    cur = prog;
    const char *noexec = getenv("KILN_LOAD_NOEXEC");
    if (noexec && !strcmp(noexec, "1")) return 0;
    if (img.main_at < 0) die("the image exports no `main`");
    /* main's argv is the loader's from IMAGE on, as `kiln run IMAGE -- ARGS`. */
    int margc = argc - 1;
    char **margv = argv + 1;
    if (atexit(run_finalizers)) die("atexit failed");
    /* Initializers: the images linked against first. */
    typedef void (*init_fn)(int, char **, char **);
    for (unsigned k = 0; k < nloaded; k++) {
        cur = loaded[k];
        for (size_t i = 0; i < preinits.n; i++) ((init_fn)(uintptr_t)(img.mem + preinits.e[i].off))(margc, margv, environ);
        for (size_t i = 0; i < inits.n; i++) ((init_fn)(uintptr_t)(img.mem + inits.e[i].off))(margc, margv, environ);
    }
    cur = prog;
    int (*entry)(int, char **, char **) = (int (*)(int, char **, char **))(uintptr_t)(img.mem + img.main_at);
    exit(entry(margc, margv, environ));
}
