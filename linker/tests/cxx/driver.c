/* Native reference for the C++ acceptance programs: loads the program built
 * as a shared object, runs its main, and unloads it with dlclose -- the
 * lifecycle kiln gives a linked image (initializers at load, finalizers and
 * atexit handlers at unload, before the memory goes). Also provides the host
 * callback the exception program calls. */
#include <dlfcn.h>
#include <stdio.h>

void kiln_host_invoke(void (*cb)(void *), void *ctx) { cb(ctx); }

int main(int argc, char **argv) {
    if (argc < 2) return 126;
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        fprintf(stderr, "%s\n", dlerror());
        return 127;
    }
    int (*m)(int, char **) = (int (*)(int, char **))dlsym(h, "main");
    if (!m) return 125;
    int r = m(argc - 1, argv + 1);
    fflush(stdout);
    dlclose(h);
    fflush(stdout);
    return r;
}
