// C++ across two objects: static constructors with priorities and
// destructors, exceptions thrown in one object and caught in another (and
// thrown by the host's libstdc++), virtual calls, COMDAT templates,
// thread_local with std::thread.
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>
#include "cpp_common.h"

__attribute__((init_priority(200))) Tracer t_a200("a-priority-200");
Tracer t_a("a-default");
__attribute__((constructor(150))) static void c150() { std::printf("constructor 150\n"); }
__attribute__((constructor)) static void cdefault() { std::printf("constructor default\n"); }
__attribute__((destructor(150))) static void d150() { std::printf("destructor 150\n"); }
static void at_exit_handler() { std::printf("atexit handler\n"); }

thread_local int tl_counter = 5;

int main() {
    std::atexit(at_exit_handler);
    try {
        throw_in_b(3);
    } catch (const std::runtime_error &e) {
        std::printf("caught %s\n", e.what());
    }
    try {
        std::vector<int> v(2);
        (void)v.at(5);
    } catch (const std::out_of_range &) {
        std::printf("caught out_of_range from libstdc++\n");
    }
    Shape *s = make_square(3);
    std::printf("area %.1f name %s\n", s->area(), s->name().c_str());
    delete s;
    std::printf("twice %d %d %.1f\n", twice<int>(21), from_b_twice(4), twice<double>(1.25));
    int results[4] = {0, 0, 0, 0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 4; i++)
        ts.emplace_back([i, &results] {
            tl_counter += i;
            tl_b += 10 * i;
            results[i] = tl_counter * 1000 + read_tl_b();
        });
    for (auto &t : ts) t.join();
    for (int i = 0; i < 4; i++) std::printf("thread %d -> %d\n", i, results[i]);
    tl_counter += 1;
    std::printf("main tl %d %d\n", tl_counter, tl_b);
    static Tracer local_static("function-local static");
    std::fflush(stdout);
    return 0;
}
