/* Function pointer identity across objects (with fnptr_lib.c): one
 * address per function, whichever object takes it and however (lea, an
 * absolute address, a GOT load, a pointer in initialized data), and
 * whether or not the function's own object is linked yet. */
#include <stdio.h>

int fp_twice(int x);
int fp_thrice(int x);
typedef int (*fn)(int);
fn fp_twice_from_lib(void);
fn fp_pick(int which);
extern fn fp_table[2];
extern fn *fp_table_address(void);

static fn mine[2] = {fp_twice, fp_thrice};

int main(void) {
    fn here = fp_twice;
    /* Taken here before the library object is linked, and there after. */
    printf("same %d\n", here == fp_twice_from_lib());
    printf("table %d %d\n", fp_table[0] == here, fp_table[1] == mine[1]);
    printf("pick %d %d\n", fp_pick(0) == mine[0], fp_pick(1) == fp_thrice);
    printf("via address %d\n", fp_table_address()[1] == fp_thrice);
    printf("calls %d %d\n", here(5), fp_pick(1)(5));
    return (here == fp_twice_from_lib()) ? 0 : 3;
}
