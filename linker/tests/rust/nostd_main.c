/* Calls the no_std staticlib (nostd_lib.rs). */
#include <stddef.h>
#include <stdio.h>

unsigned ns_sum(const unsigned *p, size_t n);
size_t ns_format(char *buf, size_t len, unsigned v);

int main(void) {
    unsigned v[] = {1, 2, 3, 40};
    char buf[96];
    unsigned s = ns_sum(v, 4);
    size_t n = ns_format(buf, sizeof buf, s);
    printf("sum %u: %.*s\n", s, (int)n, buf);
    return (int)s;
}
