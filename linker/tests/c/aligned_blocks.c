/* Globals (initialized and zero-filled) and a function asking for 64 KiB
 * and BIG (default 2 MiB) alignment; prints each address modulo its
 * alignment: all zero when the loader honours the image's base alignment
 * (tests/images.rs, c_loader.rs, aarch64_images.rs). */
#include <stdio.h>
#include <stdint.h>
__attribute__((aligned(65536))) int data64k[4] = {1, 2, 3, 4};
#ifndef BIG
#define BIG 2097152
#endif
__attribute__((aligned(BIG))) char data2m[16] = "two megabytes";
__attribute__((aligned(65536))) int bss64k[4];
__attribute__((aligned(65536), noinline)) int func64k(int x) { return x + bss64k[0]; }
int main(void) {
    printf("%lu %lu %lu %lu\n", (unsigned long)((uintptr_t)data64k % 65536),
           (unsigned long)((uintptr_t)data2m % BIG),
           (unsigned long)((uintptr_t)bss64k % 65536),
           (unsigned long)((uintptr_t)&func64k % 65536));
    return func64k(data64k[1]) + data2m[0] - 't';
}
