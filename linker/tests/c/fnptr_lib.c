/* The functions whose addresses fnptr_main.c compares, and addresses of
 * them taken inside their own object. */
typedef int (*fn)(int);

int fp_twice(int x) { return 2 * x; }
int fp_thrice(int x) { return 3 * x; }

fn fp_table[2] = {fp_twice, fp_thrice};

fn fp_twice_from_lib(void) { return fp_twice; }

fn fp_pick(int which) {
    volatile int w = which;
    return w ? fp_thrice : fp_twice;
}

fn *fp_table_address(void) { return fp_table; }
