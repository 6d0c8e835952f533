/* Part B: the other half of the mutual recursion, and data used by A. */
#include <stddef.h>

extern int is_even(unsigned n);
long counter = 100;
const char *const greetings[] = {"hello", "bonjour", "hallo", "ciao", NULL};

static int add(int a, int b) { return a + b; }
static int sub(int a, int b) { return a - b; }
static int mul(int a, int b) { return a * b; }
static int mod(int a, int b) { return a % b; }
int (*const ops[])(int, int) = {add, sub, mul, mod};

int is_odd(unsigned n) {
    counter += 2;
    return n == 0 ? 0 : is_even(n - 1);
}

int apply_op(int which, int a, int b) {
    int (*f)(int, int) = ops[which & 3];
    return f(a, b);
}

double average(const int *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return n ? s / n : 0.0;
}

int weak_value(void) { return 2; } /* strong: overrides A's weak one */
