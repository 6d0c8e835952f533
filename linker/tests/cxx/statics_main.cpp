// Static construction/destruction order, object 3 of 3: main.
#include "tracer.h"

#include <cstdio>

extern int b_cached;
Tracer main_default("main_default");

static Tracer &function_local() {
    static Tracer t("function-local static");
    return t;
}

int main() {
    std::printf("main: b_cached=%d\n", b_cached);
    std::printf("main: %s\n", function_local().name);
    std::puts("main returns 3");
    return 3;
}
