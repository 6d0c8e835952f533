// A TLS template larger than kiln's static TLS area (32 KiB): kiln places it
// in dynamic TLS, which general-dynamic (-fPIC) code can use and
// initial-exec/local-exec (-fPIE) code cannot.
#pragma once

extern thread_local unsigned char big_buffer[48 * 1024];
extern thread_local int big_marker;

unsigned big_checksum();
