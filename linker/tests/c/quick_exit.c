/* at_quick_exit handlers (libc_nonshared.a only): quick_exit runs them
 * newest first, and not the atexit ones. */
#include <stdio.h>
#include <stdlib.h>

static void first(void) { printf("quick 1\n"); fflush(stdout); }
static void second(void) { printf("quick 2\n"); fflush(stdout); }
static void not_run(void) { printf("atexit\n"); }

int main(void) {
    if (at_quick_exit(first) || at_quick_exit(second) || atexit(not_run)) return 1;
    printf("main\n");
    fflush(stdout);
    quick_exit(7);
}
