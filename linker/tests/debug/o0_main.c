/* gdb test, with o0_helper.c: a breakpoint on helper, bt, info locals,
 * next, finish back into main (another JIT'd object). */
#include <stdio.h>
int helper(int x);
int main(void) {
    int total = 0;
    for (int i = 0; i < 3; i++) {
        total += helper(i);
    }
    printf("total %d\n", total);
    return total == 9 ? 0 : 1;
}
