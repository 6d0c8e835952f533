/* Drives mimalloc, linked from its own sources: blocks allocated on four
 * threads and freed on others (its thread-local heaps, atomic free lists
 * and, on aarch64, libgcc's outline atomics), aligned, zeroed and
 * reallocated blocks, and a first-class heap destroyed whole. Prints
 * checksums that depend on no address, then "mimalloc: ok". */
#include <mimalloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define THREADS 4
#define BLOCKS 20000

static void *blocks[THREADS][BLOCKS];

static unsigned long fill(unsigned char *p, size_t n, unsigned seed) {
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i++) {
        p[i] = (unsigned char)(seed + i * 31);
        sum += p[i];
    }
    return sum;
}

static void *allocate(void *arg) {
    long t = (long)arg;
    unsigned long sum = 0;
    for (int i = 0; i < BLOCKS; i++) {
        size_t n = 1 + (size_t)((i * 7919u + (unsigned)t * 104729u) % 3000);
        unsigned char *p = mi_malloc(n);
        if (!p) return NULL;
        sum += fill(p, n, (unsigned)(i + t));
        blocks[t][i] = p;
    }
    return (void *)sum;
}

/* Frees the blocks thread (t + 1) % THREADS allocated. */
static void *free_neighbours(void *arg) {
    long t = (long)arg;
    for (int i = 0; i < BLOCKS; i++) mi_free(blocks[(t + 1) % THREADS][i]);
    return NULL;
}

static int threads(void) {
    pthread_t th[THREADS];
    unsigned long total = 0;
    for (long t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, allocate, (void *)t);
    for (long t = 0; t < THREADS; t++) {
        void *sum;
        pthread_join(th[t], &sum);
        if (!sum) return 1;
        total += (unsigned long)sum;
    }
    for (long t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, free_neighbours, (void *)t);
    for (long t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    printf("threads: checksum %lu\n", total);
    return 0;
}

static int blocks_of_every_kind(void) {
    int aligned = 1;
    for (size_t a = 16; a <= 65536; a *= 2) {
        void *p = mi_malloc_aligned(a * 3 + 1, a);
        aligned &= p && (uintptr_t)p % a == 0;
        mi_free(p);
    }
    printf("aligned: %s\n", aligned ? "yes" : "no");

    unsigned char *z = mi_zalloc(1 << 20);
    if (!z) return 1;
    unsigned long zeros = 0;
    for (int i = 0; i < (1 << 20); i++) zeros += z[i];
    printf("zalloc: sum %lu, usable %s\n", zeros, mi_usable_size(z) >= (1 << 20) ? "enough" : "short");
    mi_free(z);

    char *s = mi_strdup("kiln");
    for (int i = 0; s && i < 12; i++) {
        size_t len = strlen(s);
        s = mi_realloc(s, 2 * len + 1);
        if (s) {
            memcpy(s + len, s, len);
            s[2 * len] = 0;
        }
    }
    if (!s) return 1;
    printf("realloc: length %zu, starts %.8s\n", strlen(s), s);
    mi_free(s);

    mi_heap_t *heap = mi_heap_new();
    unsigned long sum = 0;
    for (int i = 0; i < 50000; i++) {
        int *q = mi_heap_malloc(heap, sizeof(int) * (size_t)(1 + i % 17));
        if (!q) return 1;
        q[0] = i;
        sum += (unsigned long)q[0];
    }
    mi_heap_destroy(heap);
    printf("heap: sum %lu\n", sum);
    return 0;
}

int main(void) {
    if (threads() || blocks_of_every_kind()) {
        puts("mimalloc: out of memory");
        return 1;
    }
    puts("mimalloc: ok");
    return 0;
}
