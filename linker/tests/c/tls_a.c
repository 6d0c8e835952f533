/* thread-local variables defined in one object and used in another, from
   several threads: every TLS access model the compiler picks for the flags. */
#include <pthread.h>
#include <stdio.h>

extern __thread int tls_shared;          /* tls_b.c: initialized to 1000 */
extern __thread long tls_zeroed[4];      /* tls_b.c: .tbss */
static __thread int tls_here = 7;        /* local, initialized */
static __thread char tls_buf[64];        /* local, .tbss */
int bump_b(int by);                      /* tls_b.c */
int *shared_address(void);               /* tls_b.c */

static long results[6];

static void *worker(void *arg) {
    long id = (long)arg;
    tls_shared += (int)id;
    tls_zeroed[id % 4] += id * 3;
    tls_here *= (int)id + 1;
    tls_buf[id] = (char)('a' + id);
    int b = bump_b((int)id);
    results[id] = tls_shared * 100000L + tls_zeroed[id % 4] * 1000 + tls_here * 10 + b % 10 +
                  (shared_address() == &tls_shared ? 0 : 5000000) + (tls_buf[id] - 'a') * 100000000L;
    return 0;
}

int main(void) {
    pthread_t t[6];
    for (long i = 0; i < 6; i++) pthread_create(&t[i], 0, worker, (void *)i);
    for (int i = 0; i < 6; i++) pthread_join(t[i], 0);
    for (int i = 0; i < 6; i++) printf("thread %d: %ld\n", i, results[i]);
    worker((void *)5);
    printf("main: %ld shared=%d here=%d\n", results[5], tls_shared, tls_here);
    return tls_shared % 256;
}
