/* kiln's bundled example: three objects linked in-process by `kiln` with no
 * arguments. It exercises calls across objects, libc (printf, qsort,
 * snprintf), function pointers, a constructor, an atexit handler and
 * thread-local data. */
#include <stdio.h>
#include <stdlib.h>

long fib(int n);                         /* math.c */
int is_prime(long n);                    /* math.c */
void sort_words(const char **w, int n);  /* words.c */
extern const char *kiln_words[];         /* words.c */
extern int kiln_word_count;              /* words.c */
extern __thread int calls;               /* math.c */

static int ready;
__attribute__((constructor)) static void init(void) { ready = 1; }
static void goodbye(void) { printf("atexit handler ran: goodbye from JIT'd code\n"); }

int main(int argc, char **argv) {
    atexit(goodbye);
    printf("hello from %s, linked in-process by kiln (constructor ran: %s)\n",
           argc > 0 ? argv[0] : "?", ready ? "yes" : "no");
    long primes = 0;
    for (int i = 0; i < 25; i++)
        primes += is_prime(fib(i));
    printf("fib(30) = %ld; %ld of fib(0..24) are prime; math calls on this thread: %d\n",
           fib(30), primes, calls);
    sort_words(kiln_words, kiln_word_count);
    printf("sorted:");
    for (int i = 0; i < kiln_word_count; i++)
        printf(" %s", kiln_words[i]);
    printf("\n");
    return 0;
}
