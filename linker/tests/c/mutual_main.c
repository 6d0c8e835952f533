/* Calls into libmutual_a.a, whose member calls into libmutual_b.a, whose
 * member calls back into the first member of libmutual_a.a. */
#include <stdio.h>

int ma_entry(int x);

int main(void) {
    printf("ma_entry %d\n", ma_entry(5));
    return 0;
}
