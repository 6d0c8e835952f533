/* Calls the Rust std staticlib (std_lib.rs). */
#include <stdio.h>

unsigned rs_work(unsigned n);

int main(void) {
    unsigned r = rs_work(5);
    printf("rs_work returned %u\n", r);
    fflush(stdout);
    return (int)(r % 100);
}
