/* on_exit handlers (glibc's, exported) beside atexit ones: exit runs them
 * newest first with the exit status, from main's return and from exit(). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void bye(int status, void *arg) { printf("on_exit %d %s\n", status, (const char *)arg); }
static void later(void) { printf("atexit\n"); }

int main(int argc, char **argv) {
    if (on_exit(bye, "first") || atexit(later) || on_exit(bye, "last")) return 1;
    printf("main\n");
    if (argc > 1 && !strcmp(argv[1], "exit")) exit(5);
    return 3;
}
