/* The compression drivers' input (zstd_driver.c, xz_driver.c,
   zlib_driver.c): text-like data with repeats at many distances, from a
   fixed seed, plus a noisy last sixteenth. */
#ifndef KILN_TEXT_DATA_H
#define KILN_TEXT_DATA_H
#include <stddef.h>
#include <string.h>

static void fill_text(unsigned char *buf, size_t n, unsigned seed) {
    static const char *words[] = {"kiln", "image", "relocation", "slot", "thread",
                                  "window", "stream", "linker", "loader", "block"};
    unsigned x = seed;
    size_t i = 0;
    while (i < n) {
        x = x * 1103515245u + 12345u;
        const char *w = words[(x >> 16) % 10];
        size_t len = strlen(w);
        for (size_t k = 0; k < len && i < n; k++) buf[i++] = (unsigned char)w[k];
        if (i < n) buf[i++] = (x >> 8) % 7 == 0 ? '\n' : ' ';
        if (i > n - n / 16 && i < n) buf[i++] = (unsigned char)(x >> 24);
    }
}
#endif
