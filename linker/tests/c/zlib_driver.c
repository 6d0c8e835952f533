/* A small zlib host: compress/uncompress at every level, raw deflate and
   inflate streaming in small pieces, and a gzip file written with
   gzprintf (varargs) and read back with gzgets through a temporary file.
   Prints sizes and checksums; main returns a value derived from them. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "zlib.h"
#include "text_data.h"

static void fail(const char *what, int r) {
    printf("zlib: %s failed: %d\n", what, r);
    exit(1);
}

/* Raw deflate of `in` streaming 1 KiB in and 3 KiB out at a time, then
   inflate back the same way; returns the compressed size. */
static size_t streamed(const unsigned char *in, size_t n, unsigned char *back) {
    size_t cap = deflateBound(NULL, n) + 64, used = 0, got = 0;
    unsigned char *z = malloc(cap);
    z_stream s;
    memset(&s, 0, sizeof s);
    int r = deflateInit2(&s, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
    if (r != Z_OK) fail("deflateInit2", r);
    size_t fed = 0;
    do {
        size_t k = n - fed < 1024 ? n - fed : 1024;
        s.next_in = (unsigned char *)in + fed;
        s.avail_in = (uInt)k;
        fed += k;
        int flush = fed == n ? Z_FINISH : Z_NO_FLUSH;
        do {
            s.next_out = z + used;
            s.avail_out = (uInt)(cap - used < 3072 ? cap - used : 3072);
            size_t before = s.avail_out;
            r = deflate(&s, flush);
            if (r == Z_STREAM_ERROR) fail("deflate", r);
            used += before - s.avail_out;
        } while (s.avail_out == 0);
    } while (fed < n);
    deflateEnd(&s);
    memset(&s, 0, sizeof s);
    if ((r = inflateInit2(&s, -15)) != Z_OK) fail("inflateInit2", r);
    s.next_in = z;
    s.avail_in = (uInt)used;
    do {
        s.next_out = back + got;
        s.avail_out = (uInt)(n - got < 3072 ? n - got : 3072);
        size_t before = s.avail_out;
        r = inflate(&s, Z_NO_FLUSH);
        if (r != Z_OK && r != Z_STREAM_END) fail("inflate", r);
        got += before - s.avail_out;
    } while (r != Z_STREAM_END);
    inflateEnd(&s);
    free(z);
    if (got != n || memcmp(back, in, n) != 0) fail("streamed round trip", -1);
    return used;
}

/* A gzip file through a temporary file: lines written with gzprintf, read
   back with gzgets; returns the file's size. */
static long gzip_file(void) {
    FILE *f = tmpfile();
    if (!f) fail("tmpfile", -1);
    gzFile w = gzdopen(dup(fileno(f)), "wb9");
    if (!w) fail("gzdopen (write)", -1);
    for (int i = 0; i < 5000; i++) gzprintf(w, "line %d: %s %x\n", i, "kiln", i * 2654435761u);
    if (gzclose(w) != Z_OK) fail("gzclose (write)", -1);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    gzFile r = gzdopen(dup(fileno(f)), "rb");
    if (!r) fail("gzdopen (read)", -1);
    char line[128], want[128];
    int lines = 0;
    while (gzgets(r, line, sizeof line)) {
        snprintf(want, sizeof want, "line %d: %s %x\n", lines, "kiln", lines * 2654435761u);
        if (strcmp(line, want) != 0) fail("gzgets line", lines);
        lines++;
    }
    gzclose(r);
    fclose(f);
    if (lines != 5000) fail("gzip lines", lines);
    return size;
}

int main(void) {
    const size_t n = 1u << 20;
    unsigned char *data = malloc(n), *back = malloc(n);
    uLongf cap = compressBound(n);
    unsigned char *z = malloc(cap);
    if (!data || !back || !z) return 2;
    fill_text(data, n, 777);
    uLong crc = crc32(0, data, (uInt)n), adler = adler32(1, data, (uInt)n);
    printf("zlib %s; input %zu bytes, crc32 %08lx, adler32 %08lx\n", zlibVersion(), n, crc, adler);
    unsigned long total = 0, last = 0;
    for (int level = 0; level <= 9; level++) {
        uLongf zn = cap, bn = n;
        int r = compress2(z, &zn, data, n, level);
        if (r != Z_OK) fail("compress2", r);
        r = uncompress(back, &bn, z, zn);
        if (r != Z_OK || bn != n || memcmp(back, data, n) != 0) fail("uncompress", r);
        printf("level %d: %lu bytes\n", level, (unsigned long)zn);
        total += zn;
        last = zn;
    }
    size_t raw = streamed(data, n, back);
    printf("raw deflate, streamed: %zu bytes\n", raw);
    long gz = gzip_file();
    printf("gzip file of 5000 lines: %ld bytes\n", gz);
    /* Level 9's stream with a byte flipped in its middle. */
    z[last / 2] ^= 0xff;
    uLongf bn = n;
    int damaged = uncompress(back, &bn, z, last);
    printf("damaged stream: %s\n", damaged == Z_OK ? "accepted" : "refused");
    printf("zlib: ok\n");
    free(data);
    free(back);
    free(z);
    return (int)((total + raw + (unsigned long)gz) % 97);
}
