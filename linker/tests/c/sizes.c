/* R_X86_64_SIZE32/64 through inline assembly, and GOT-relative forms. */
#include <stdio.h>
char big_table[1234];
long local_words[10];

int main(void) {
    unsigned int s32;
    unsigned long s64;
    __asm__("movl $big_table@SIZE, %0" : "=r"(s32));
    __asm__("movabsq $local_words@SIZE + 8, %0" : "=r"(s64));
    printf("size32=%u size64=%lu\n", s32, s64);
    big_table[3] = 7;
    local_words[2] = 9;
    return (int)(s32 % 100 + s64 % 7 + big_table[3] + local_words[2]);
}
