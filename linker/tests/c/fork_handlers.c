/* pthread_atfork handlers and a pthread key destructor, in the program's
 * own code: glibc exports pthread_atfork only as a compat symbol (programs
 * get it from libc_nonshared.a), so a JIT must provide it, and both kinds
 * of handler are called by glibc at times the program does not choose. */
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static int prepared, in_parent, in_child, order[8], n_order;
static pthread_key_t key;
static long destroyed;

static void prepare_a(void) { prepared++; order[n_order++ % 8] = 1; }
static void prepare_b(void) { order[n_order++ % 8] = 2; }
static void parent_a(void) { in_parent++; order[n_order++ % 8] = 3; }
static void parent_b(void) { order[n_order++ % 8] = 4; }
static void child_a(void) { in_child++; }
static void destroy(void *v) { destroyed += (long)v; }

static void *holds_a_value(void *v) {
    pthread_setspecific(key, v);
    return NULL;
}

int main(void) {
    if (pthread_atfork(prepare_a, parent_a, child_a) || pthread_atfork(prepare_b, parent_b, NULL)) return 1;
    if (pthread_key_create(&key, destroy)) return 2;
    for (int round = 0; round < 2; round++) {
        int fds[2];
        if (pipe(fds)) return 3;
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) return 4;
        if (pid == 0) {
            int seen[2] = {in_child, prepared};
            (void)!write(fds[1], seen, sizeof seen);
            _exit(0);
        }
        int seen[2] = {0, 0};
        (void)!read(fds[0], seen, sizeof seen);
        waitpid(pid, NULL, 0);
        close(fds[0]);
        close(fds[1]);
        printf("fork %d: child handler ran %d time(s), child saw %d prepare(s); parent %d\n", round, seen[0], seen[1],
               in_parent);
    }
    printf("order:");
    for (int i = 0; i < n_order && i < 8; i++) printf(" %d", order[i]);
    printf("\n");
    for (long v = 1; v <= 3; v++) {
        pthread_t t;
        if (pthread_create(&t, NULL, holds_a_value, (void *)v) || pthread_join(t, NULL)) return 5;
    }
    printf("key destructor saw %ld\n", destroyed);
    return pthread_key_delete(key);
}
