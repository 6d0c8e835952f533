/* Absolute 64-bit references whose addends do not fit in 32 bits, nor in
 * 48 (a link graph keeps narrow addends inline on the edge and wider ones
 * apart): each must link to exactly `target + addend`. */
#include <stdio.h>

char target[16];
extern const unsigned long long wide[];

__asm__(".section .data.rel.ro.wide,\"aw\"\n"
        ".p2align 3\n"
        ".globl wide\n"
        "wide:\n"
        ".quad target + 0x7fffffff\n"
        ".quad target + 0x100000000\n"
        ".quad target - 0x100000000\n"
        ".quad target + 0x7fffffffffff\n"
        ".quad target - 0x7fff00000000\n"
        ".quad target - 0x7fff80000000\n"
        ".quad target - 0x800000000000\n"
        ".quad target + 0x800000000000\n"
        ".quad target + 0x7fff000000000000\n"
        ".quad target - 0x7fff000000000001\n"
        ".quad target + 0x7fff000000000000\n"
        ".text\n");

static const long long want[] = {
    0x7fffffffLL,          0x100000000LL,          -0x100000000LL,
    0x7fffffffffffLL,      -0x7fff00000000LL,      -0x7fff80000000LL,
    -0x800000000000LL,     0x800000000000LL,       0x7fff000000000000LL,
    -0x7fff000000000001LL, 0x7fff000000000000LL,
};

int main(void) {
    unsigned long long base = (unsigned long long)target;
    int bad = 0;
    for (unsigned i = 0; i < sizeof want / sizeof want[0]; i++) {
        unsigned long long got = wide[i] - base;
        if (got != (unsigned long long)want[i]) {
            printf("wide[%u]: target%+lld, want %+lld\n", i, (long long)got, want[i]);
            bad = 1;
        }
    }
    printf("wide addends: %s\n", bad ? "wrong" : "ok");
    return bad;
}
