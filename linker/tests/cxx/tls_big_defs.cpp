// Large thread_local data, object 1 of 2.
#include "tls_big.h"

thread_local unsigned char big_buffer[48 * 1024];
thread_local int big_marker = 7;

unsigned big_checksum() {
    unsigned sum = 0;
    for (unsigned char c : big_buffer) sum += c;
    return sum + unsigned(big_marker);
}
