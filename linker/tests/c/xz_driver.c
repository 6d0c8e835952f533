/* A small liblzma (xz) host: compresses a deterministic buffer with the
   multithreaded encoder (worker threads that liblzma starts, its mutexes
   and condition variables) and with the single-threaded one, decompresses
   both streaming in small pieces and in one call, checks the round trips
   and prints sizes and CRC64s. main returns a value derived from them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lzma.h"
#include "text_data.h"

static void fail(const char *what, lzma_ret r) {
    printf("xz: %s failed: %d\n", what, (int)r);
    exit(1);
}

/* Runs an initialized encoder over `in` into `out`; returns the size. */
static size_t encode(lzma_stream *s, const uint8_t *in, size_t n, uint8_t *out, size_t cap,
                     const char *what) {
    s->next_in = in;
    s->avail_in = n;
    s->next_out = out;
    s->avail_out = cap;
    lzma_ret r;
    do {
        r = lzma_code(s, LZMA_FINISH);
    } while (r == LZMA_OK);
    if (r != LZMA_STREAM_END) fail(what, r);
    size_t used = cap - s->avail_out;
    lzma_end(s);
    return used;
}

/* Decodes `in` streaming, 4 KiB in and 7 KiB out at a time. */
static size_t decode_in_pieces(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    lzma_stream s = LZMA_STREAM_INIT;
    lzma_ret r = lzma_stream_decoder(&s, UINT64_MAX, LZMA_CONCATENATED);
    if (r != LZMA_OK) fail("lzma_stream_decoder", r);
    size_t fed = 0, got = 0;
    for (;;) {
        uint8_t piece[7 * 1024];
        if (s.avail_in == 0 && fed < n) {
            size_t k = n - fed < 4096 ? n - fed : 4096;
            s.next_in = in + fed;
            s.avail_in = k;
            fed += k;
        }
        s.next_out = piece;
        s.avail_out = sizeof piece;
        r = lzma_code(&s, fed == n ? LZMA_FINISH : LZMA_RUN);
        size_t k = sizeof piece - s.avail_out;
        if (got + k > cap) fail("decoded too much", LZMA_DATA_ERROR);
        memcpy(out + got, piece, k);
        got += k;
        if (r == LZMA_STREAM_END) break;
        if (r != LZMA_OK) fail("streaming decode", r);
    }
    lzma_end(&s);
    return got;
}

int main(void) {
    const size_t n = 2u << 20;
    uint8_t *data = malloc(n);
    uint8_t *back = malloc(n);
    size_t cap = lzma_stream_buffer_bound(n);
    uint8_t *mt_out = malloc(cap);
    uint8_t *st_out = malloc(cap);
    if (!data || !back || !mt_out || !st_out) return 2;
    fill_text(data, n, 4242);
    uint64_t crc = lzma_crc64(data, n, 0);
    printf("input: %zu bytes, crc64 %016llx\n", n, (unsigned long long)crc);

    /* Three worker threads, eight blocks of 256 KiB. */
    lzma_mt mt;
    memset(&mt, 0, sizeof mt);
    mt.threads = 3;
    mt.block_size = 256 * 1024;
    mt.preset = 2;
    mt.check = LZMA_CHECK_CRC64;
    lzma_stream s = LZMA_STREAM_INIT;
    lzma_ret r = lzma_stream_encoder_mt(&s, &mt);
    if (r != LZMA_OK) fail("lzma_stream_encoder_mt", r);
    size_t mt_size = encode(&s, data, n, mt_out, cap, "multithreaded encode");
    printf("multithreaded (3 threads, 256 KiB blocks, preset 2): %zu bytes\n", mt_size);

    lzma_stream s2 = LZMA_STREAM_INIT;
    r = lzma_easy_encoder(&s2, 2, LZMA_CHECK_CRC64);
    if (r != LZMA_OK) fail("lzma_easy_encoder", r);
    size_t st_size = encode(&s2, data, n, st_out, cap, "single-threaded encode");
    printf("single-threaded (preset 2): %zu bytes\n", st_size);

    size_t got = decode_in_pieces(mt_out, mt_size, back, n);
    if (got != n || memcmp(back, data, n) != 0) fail("multithreaded round trip", LZMA_DATA_ERROR);
    memset(back, 0, n);
    uint64_t memlimit = UINT64_MAX;
    size_t in_pos = 0, out_pos = 0;
    r = lzma_stream_buffer_decode(&memlimit, 0, NULL, st_out, &in_pos, st_size, back, &out_pos, n);
    if (r != LZMA_OK || out_pos != n) fail("lzma_stream_buffer_decode", r);
    uint64_t crc_back = lzma_crc64(back, n, 0);
    printf("round trips: crc64 %016llx\n", (unsigned long long)crc_back);
    if (crc_back != crc) fail("single-threaded round trip", LZMA_DATA_ERROR);

    /* A damaged stream is refused, not decoded. */
    mt_out[mt_size / 2] ^= 0x55;
    got = 0;
    lzma_stream s3 = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&s3, UINT64_MAX, 0) != LZMA_OK) return 3;
    s3.next_in = mt_out;
    s3.avail_in = mt_size;
    s3.next_out = back;
    s3.avail_out = n;
    do {
        r = lzma_code(&s3, LZMA_FINISH);
    } while (r == LZMA_OK);
    lzma_end(&s3);
    printf("damaged stream: %s\n", r == LZMA_STREAM_END ? "accepted" : "refused");
    printf("xz: ok\n");
    free(data);
    free(back);
    free(mt_out);
    free(st_out);
    return (int)((mt_size + st_size) % 97) + (r == LZMA_STREAM_END ? 100 : 0);
}
