// main: constructors before it, destructors after it, and exceptions
// thrown two objects away caught here.
#include "lifecycle.h"

#include <cstdio>
#include <cstdlib>

static Noisy main_static("main-static");

static void at_exit() { std::printf("atexit handler, scale %d\n", util_scale(14)); }

__attribute__((constructor)) static void early() {
    std::printf("constructor in main's object\n");
    std::atexit(at_exit);
}

__attribute__((destructor)) static void late() {
    std::printf("destructor in main's object, scale %d\n", util_scale(5));
}

int main() {
    static Noisy local("main-local");
    int sum = 0;
    for (int first : {0, 2, 4}) {
        try {
            sum += objs_run(first);
        } catch (const AppError &e) {
            std::printf("main: AppError %s %d\n", e.what(), e.code);
            sum += e.code;
        } catch (int i) {
            std::printf("main: int %d\n", i);
            sum += i;
        }
    }
    for (const char *s : {"12", "", "x"}) {
        try {
            sum += objs_parse(s);
            std::printf("parsed '%s'\n", s);
        } catch (const AppError &e) {
            std::printf("parse failed: %s\n", e.what());
        } catch (const std::invalid_argument &e) {
            std::printf("stoi failed: %s\n", e.what());
        }
    }
    std::printf("sum %d\n", sum);
    return sum % 100;
}
