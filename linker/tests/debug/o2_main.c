/* gdb test at -O2 without -g, with o2_level1.c: a breakpoint on the host's
 * getppid, called by main -> level1 -> level2 (two JIT'd objects); the
 * backtrace names every JIT'd frame from .eh_frame and .symtab alone. */
#include <stdio.h>
#include <unistd.h>
int level1(int);
__attribute__((noinline)) int level2(int n) {
    int r = (int)getppid();
    return r + n * 3;
}
int main(void) {
    int v = level1(5);
    printf("%d\n", v > 0);
    return 0;
}
