/* Runs kiln's generated aarch64 code under qemu-user (or on real aarch64).
 *
 * The code page comes from kiln_aarch64_blob.h, which the Rust test
 * (tests/aarch64_qemu.rs) generates with kiln_arch's aarch64 writers for a
 * page-aligned base: all references inside the blob are PC-relative
 * (ADRP + LDR), so it runs wherever mmap puts it. The harness fills the
 * absolute parts itself: the pointer slots and the resolver literal.
 *
 * Checks:
 *  1. a call through a redirectable stub, then a redirect;
 *  2. a PLT stub jumping through its GOT slot;
 *  3. a first call through a lazy stub -> reentry trampoline -> generated
 *     reentry entry -> resolver (which clobbers x0-x17 and v0-v31) ->
 *     implementation, which must see x0-x7, q0-q7, its stack argument and
 *     x8 (indirect result) intact; x29 and sp must be intact in the caller;
 *  4. 8 threads making the first call at once through a second lazy stub:
 *     all enter the resolver, all get the right result.
 * Prints one line per check and "all ok"; exits non-zero on any failure.
 */
#include <arm_neon.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kiln_aarch64_blob.h"

static uint8_t *base;
static int failures;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                       \
            printf(__VA_ARGS__);                                               \
            printf("\n");                                                      \
            failures++;                                                        \
        }                                                                      \
    } while (0)

static uint64_t *slot(uint64_t off) { return (uint64_t *)(base + KILN_DATA_OFF + off); }
static uint64_t code(uint64_t off) { return (uint64_t)(base + off); }

static long add1(long x) { return x + 1; }
static long times2(long x) { return x * 2; }

/* ---- the implementation behind the lazy stubs ---- */

struct big { long bad; long who; long pad[2]; }; /* 32 bytes: returned through x8 */

static int32_t lane(long who, int arg, int l) { return (int32_t)(0x9e3779b9u * (uint32_t)(who + 1)) ^ (arg << 24) ^ (l << 16) ^ 0x5a5a; }
static long ival(long who, int i) { return who * 100 + i; }
static int32x4_t vval(long who, int arg) {
    int32_t v[4];
    for (int l = 0; l < 4; l++) v[l] = lane(who, arg, l);
    return vld1q_s32(v);
}

__attribute__((noinline)) static struct big
check_args(long a0, long a1, long a2, long a3, long a4, long a5, long a6, long a7,
           int32x4_t v0, int32x4_t v1, int32x4_t v2, int32x4_t v3,
           int32x4_t v4, int32x4_t v5, int32x4_t v6, int32x4_t v7, long s8) {
    long who = a0, bad = 0;
    long a[] = {a1, a2, a3, a4, a5, a6, a7, s8};
    for (int i = 0; i < 8; i++)
        if (a[i] != ival(who, i + 1)) bad |= 1L << i;
    int32x4_t v[] = {v0, v1, v2, v3, v4, v5, v6, v7};
    for (int i = 0; i < 8; i++) {
        int32_t got[4];
        vst1q_s32(got, v[i]);
        for (int l = 0; l < 4; l++)
            if (got[l] != lane(who, i, l)) bad |= 1L << (8 + i);
    }
    struct big r = {bad, who, {0, 0}};
    return r;
}

typedef struct big (*check_fn)(long, long, long, long, long, long, long, long,
                               int32x4_t, int32x4_t, int32x4_t, int32x4_t,
                               int32x4_t, int32x4_t, int32x4_t, int32x4_t, long);

static struct big call_check(uint64_t stub, long who, uint64_t *fp_sp_ok) {
    check_fn f = (check_fn)stub;
    uint64_t fp0, sp0, fp1, sp1;
    __asm__ volatile("mov %0, x29\n mov %1, sp" : "=r"(fp0), "=r"(sp0));
    struct big r = f(who, ival(who, 1), ival(who, 2), ival(who, 3), ival(who, 4), ival(who, 5),
                     ival(who, 6), ival(who, 7), vval(who, 0), vval(who, 1), vval(who, 2),
                     vval(who, 3), vval(who, 4), vval(who, 5), vval(who, 6), vval(who, 7),
                     ival(who, 8));
    __asm__ volatile("mov %0, x29\n mov %1, sp" : "=r"(fp1), "=r"(sp1));
    *fp_sp_ok = (fp0 == fp1) && (sp0 == sp1);
    return r;
}

/* ---- the resolver the generated entry calls ---- */

static long entries1, entries2;
static uint64_t last_trampoline;

static void clobber(void) {
    __asm__ volatile(
        "mov x0, #-1\n mov x1, #-1\n mov x2, #-1\n mov x3, #-1\n mov x4, #-1\n mov x5, #-1\n"
        "mov x6, #-1\n mov x7, #-1\n mov x8, #-1\n mov x9, #-1\n mov x10, #-1\n mov x11, #-1\n"
        "mov x12, #-1\n mov x13, #-1\n mov x14, #-1\n mov x15, #-1\n mov x16, #-1\n mov x17, #-1\n"
        "movi v0.16b, #0xee\n movi v1.16b, #0xee\n movi v2.16b, #0xee\n movi v3.16b, #0xee\n"
        "movi v4.16b, #0xee\n movi v5.16b, #0xee\n movi v6.16b, #0xee\n movi v7.16b, #0xee\n"
        "movi v16.16b, #0xee\n movi v17.16b, #0xee\n movi v31.16b, #0xee\n"
        ::: "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12",
            "x13", "x14", "x15", "x16", "x17", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7",
            "v16", "v17", "v31", "memory");
}

static uint64_t resolver(uint64_t trampoline) {
    __atomic_store_n(&last_trampoline, trampoline, __ATOMIC_SEQ_CST);
    clobber();
    uint64_t impl = (uint64_t)check_args;
    if (trampoline == code(KILN_TRAMP_OFF)) {
        __atomic_fetch_add(&entries1, 1, __ATOMIC_SEQ_CST);
        __atomic_store_n(slot(KILN_LAZY_SLOT), impl, __ATOMIC_RELEASE);
    } else if (trampoline == code(KILN_TRAMP2_OFF)) {
        /* Hold every resolver until all threads entered: all arrive before the redirect. */
        __atomic_fetch_add(&entries2, 1, __ATOMIC_SEQ_CST);
        time_t start = time(NULL);
        while (__atomic_load_n(&entries2, __ATOMIC_SEQ_CST) < KILN_THREADS && time(NULL) - start < 20)
            usleep(100);
        __atomic_store_n(slot(KILN_LAZY2_SLOT), impl, __ATOMIC_RELEASE);
    } else {
        printf("FAIL resolver called with unknown trampoline %#llx\n", (unsigned long long)trampoline);
        failures++;
    }
    clobber();
    return impl;
}

/* ---- threads ---- */

static pthread_barrier_t barrier;
static long thread_bad[KILN_THREADS];

static void *thread_main(void *arg) {
    long who = (long)arg;
    uint64_t fp_sp_ok;
    pthread_barrier_wait(&barrier);
    struct big r = call_check(code(KILN_LAZY2_OFF), who, &fp_sp_ok);
    thread_bad[who - 100] = r.bad | (r.who != who ? 1L << 32 : 0) | (fp_sp_ok ? 0 : 1L << 33);
    return NULL;
}

int main(void) {
    long page = sysconf(_SC_PAGESIZE);
    if (page != KILN_DATA_OFF) {
        printf("skip: page size %ld, the blob assumes %d\n", page, KILN_DATA_OFF);
        return 0;
    }
    base = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 2; }
    memcpy(base, kiln_code, sizeof kiln_code);
    /* Absolute parts: the resolver literal and the pointer slots. */
    uint64_t resolver_addr = (uint64_t)resolver;
    memcpy(base + KILN_ENTRY_OFF + KILN_ENTRY_RESOLVER_PATCH, &resolver_addr, 8);
    *slot(KILN_ENTRY_SLOT) = code(KILN_ENTRY_OFF);
    *slot(KILN_STUB_SLOT) = (uint64_t)add1;
    *slot(KILN_GOT_SLOT) = (uint64_t)times2;
    *slot(KILN_LAZY_SLOT) = code(KILN_TRAMP_OFF);
    *slot(KILN_LAZY2_SLOT) = code(KILN_TRAMP2_OFF);
    /* Never W+X: the code page becomes RX, the slots stay RW. */
    if (mprotect(base, page, PROT_READ | PROT_EXEC) != 0) { perror("mprotect"); return 2; }
    __builtin___clear_cache((char *)base, (char *)base + page);

    /* 1. Redirectable stub, then redirect. */
    long (*stub)(long) = (long (*)(long))code(KILN_STUB_OFF);
    CHECK(stub(41) == 42, "stub -> add1: got %ld", stub(41));
    __atomic_store_n(slot(KILN_STUB_SLOT), (uint64_t)times2, __ATOMIC_RELEASE);
    CHECK(stub(41) == 82, "redirected stub -> times2: got %ld", stub(41));
    printf("redirectable stub and redirect: %s\n", failures ? "FAILED" : "ok");

    /* 2. PLT stub through its GOT slot. */
    long (*plt)(long) = (long (*)(long))code(KILN_PLT_OFF);
    CHECK(plt(21) == 42, "plt -> times2: got %ld", plt(21));
    printf("plt stub: %s\n", failures ? "FAILED" : "ok");

    /* 3. First call through the reentry path, then a direct one. */
    uint64_t fp_sp_ok = 0;
    struct big r = call_check(code(KILN_LAZY_OFF), 7, &fp_sp_ok);
    CHECK(r.bad == 0, "first call: corrupted arguments, mask %#lx (bits 0-7 x1-x7/stack, 8-15 q0-q7)", r.bad);
    CHECK(r.who == 7, "first call: x0 or the x8 result pointer corrupted (who = %ld)", r.who);
    CHECK(fp_sp_ok, "first call: x29 or sp changed across the call");
    CHECK(entries1 == 1, "first call: resolver entered %ld times", entries1);
    CHECK(last_trampoline == code(KILN_TRAMP_OFF), "resolver got trampoline %#llx, want %#llx",
          (unsigned long long)last_trampoline, (unsigned long long)code(KILN_TRAMP_OFF));
    CHECK(*slot(KILN_LAZY_SLOT) == (uint64_t)check_args, "lazy slot not redirected");
    r = call_check(code(KILN_LAZY_OFF), 8, &fp_sp_ok);
    CHECK(r.bad == 0 && r.who == 8 && fp_sp_ok, "second call: bad %#lx who %ld", r.bad, r.who);
    CHECK(entries1 == 1, "second call entered the resolver again");
    printf("reentry first call (x0-x8, q0-q7, stack arg, x29, sp intact): %s\n", failures ? "FAILED" : "ok");

    /* 4. Many threads make the first call at once. */
    pthread_t t[KILN_THREADS];
    pthread_barrier_init(&barrier, NULL, KILN_THREADS);
    for (long i = 0; i < KILN_THREADS; i++) pthread_create(&t[i], NULL, thread_main, (void *)(100 + i));
    for (int i = 0; i < KILN_THREADS; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < KILN_THREADS; i++) CHECK(thread_bad[i] == 0, "thread %d: mask %#lx", i, thread_bad[i]);
    CHECK(entries2 == KILN_THREADS, "resolver entered %ld times, want %d", entries2, KILN_THREADS);
    printf("%d threads first call: %ld resolver entries: %s\n", KILN_THREADS, entries2, failures ? "FAILED" : "ok");

    if (failures) {
        printf("%d failures\n", failures);
        return 1;
    }
    printf("all ok\n");
    return 0;
}
