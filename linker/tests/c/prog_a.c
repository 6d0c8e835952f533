/* Part A of a two-object C program: mutual recursion, extern data, function
   pointers, string literals, jump tables, printf. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int is_odd(unsigned n);
extern long counter;                 /* defined in prog_b.c */
extern const char *const greetings[];
extern int (*const ops[])(int, int);
extern int apply_op(int which, int a, int b);
extern double average(const int *v, int n);
int shared_common;                   /* a tentative definition (COMMON with -fcommon) */
__attribute__((weak)) int weak_value(void) { return 1; }

int is_even(unsigned n) {
    counter++;
    return n == 0 ? 1 : is_odd(n - 1);
}

static const char *classify(int x) {
    switch (x) { /* dense: a jump table at -O2 */
    case 0: return "zero";
    case 1: return "one";
    case 2: return "two";
    case 3: return "three";
    case 4: return "four";
    case 5: return "five";
    case 6: return "six";
    case 7: return "seven";
    default: return "many";
    }
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int main(void) {
    unsigned long sum = 0;
    for (unsigned i = 0; i < 25; i++) {
        int e = is_even(i);
        printf("%u is %s\n", i, e ? "even" : "odd");
        sum = sum * 31 + (unsigned)e;
    }
    printf("counter=%ld\n", counter);
    for (int i = 0; i < 10; i++) printf("%d:%s ", i, classify(i));
    printf("\n");
    for (int i = 0; greetings[i]; i++) printf("%s|", greetings[i]);
    printf("\n");
    for (int i = 0; i < 4; i++) {
        int r = apply_op(i, 17, 5);
        printf("op%d=%d direct=%d\n", i, r, ops[i](17, 5));
        sum = sum * 31 + (unsigned)r;
    }
    int v[] = {9, 3, 7, 1, 8, 2, 6, 4, 5, 0};
    qsort(v, 10, sizeof v[0], cmp_int);
    for (int i = 0; i < 10; i++) printf("%d", v[i]);
    printf(" avg=%.3f\n", average(v, 10));
    char *buf = malloc(64);
    snprintf(buf, 64, "%s-%05.1f-%x", "fmt", 3.14159, 48879);
    printf("%s len=%zu\n", buf, strlen(buf));
    free(buf);
    shared_common += 42;
    printf("common=%d weak=%d\n", shared_common, weak_value());
    fprintf(stdout, "to stdout %d\n", 7);
    fflush(stdout);
    return (int)(sum % 251);
}
