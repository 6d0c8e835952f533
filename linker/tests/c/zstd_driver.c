/* A small zstd host: compresses a deterministic buffer at several levels
   (one-shot and streaming), decompresses it, checks the round trip and
   prints sizes and checksums. main returns a value derived from them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "zstd.h"
#include "text_data.h"

static unsigned long long fnv1a(const unsigned char *p, size_t n) {
    unsigned long long h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

static int streaming(const unsigned char *src, size_t n, int level, unsigned char *out,
                     size_t cap, size_t *csize) {
    ZSTD_CCtx *c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    ZSTD_outBuffer ob = {out, cap, 0};
    size_t chunk = 4096 + 17;
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk;
        ZSTD_inBuffer ib = {src + off, len, 0};
        ZSTD_EndDirective mode = off + len == n ? ZSTD_e_end : ZSTD_e_continue;
        size_t r;
        do {
            r = ZSTD_compressStream2(c, &ob, &ib, mode);
            if (ZSTD_isError(r)) { printf("stream error: %s\n", ZSTD_getErrorName(r)); return 1; }
        } while (mode == ZSTD_e_end ? r != 0 : ib.pos < ib.size);
    }
    ZSTD_freeCCtx(c);
    *csize = ob.pos;
    return 0;
}

int main(void) {
    const size_t n = 300 * 1024;
    unsigned char *src = malloc(n), *back = malloc(n);
    size_t cap = ZSTD_compressBound(n);
    unsigned char *dst = malloc(cap);
    if (!src || !back || !dst) return 99;
    fill_text(src, n, 12345);
    printf("zstd %s, input %zu bytes, fnv %016llx\n", ZSTD_versionString(), n, fnv1a(src, n));
    int levels[] = {1, 3, 9, 15, -5};
    unsigned long long total = 0;
    for (int k = 0; k < 5; k++) {
        size_t c = ZSTD_compress(dst, cap, src, n, levels[k]);
        if (ZSTD_isError(c)) { printf("compress error: %s\n", ZSTD_getErrorName(c)); return 1; }
        unsigned long long content = ZSTD_getFrameContentSize(dst, c);
        size_t d = ZSTD_decompress(back, n, dst, c);
        if (ZSTD_isError(d) || d != n || memcmp(src, back, n) != 0) {
            printf("level %d: round trip failed\n", levels[k]);
            return 2;
        }
        printf("level %3d: %7zu bytes, content %llu, fnv %016llx, round trip ok\n", levels[k], c,
               content, fnv1a(dst, c));
        total += c;
    }
    size_t cs;
    if (streaming(src, n, 5, dst, cap, &cs)) return 3;
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    ZSTD_inBuffer ib = {dst, cs, 0};
    ZSTD_outBuffer ob = {back, n, 0};
    size_t r = ZSTD_decompressStream(dc, &ob, &ib);
    ZSTD_freeDCtx(dc);
    int ok = !ZSTD_isError(r) && r == 0 && ob.pos == n && memcmp(src, back, n) == 0;
    printf("streaming level 5 with checksum: %zu bytes, fnv %016llx, round trip %s\n", cs,
           fnv1a(dst, cs), ok ? "ok" : "FAILED");
    size_t bad = ZSTD_decompress(back, n, dst, cs / 2);
    printf("truncated frame: %s\n", ZSTD_isError(bad) ? ZSTD_getErrorName(bad) : "no error?");
    free(src); free(back); free(dst);
    return ok ? (int)(total % 100) + 10 : 4;
}
