/* Prints the protections of the mappings that hold its code, read-only data
   and data, and how many mappings of the process are writable and
   executable at once (W^X: none). */
#include <stdio.h>

static const char ro[] = "read-only data";
int rw = 1;

static void scan(const void *p, const char *what, int *wx) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512], perm[8];
    unsigned long lo, hi;
    if (!f) return;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perm) == 3) {
            if (what && (unsigned long)p >= lo && (unsigned long)p < hi) printf("%s %s\n", what, perm);
            if (wx && perm[1] == 'w' && perm[2] == 'x') ++*wx;
        }
    fclose(f);
}

int main(void) {
    int wx = 0;
    scan((const void *)main, "text", 0);
    scan(ro, "rodata", 0);
    scan(&rw, "data", 0);
    scan(0, 0, &wx);
    printf("writable and executable: %d\n", wx);
    return ro[0] == 'r' ? rw : 9;
}
