// Static construction/destruction order, object 1 of 3: priorities via
// init_priority and constructor/destructor attributes, and atexit.
#include "tracer.h"

#include <cstdio>
#include <cstdlib>

Tracer::Tracer(const char *n) : name(n) { trace("construct", n); }
Tracer::~Tracer() { trace("destroy", name); }
void trace(const char *what, const char *who) { std::printf("%s %s\n", what, who); }

Tracer a_early __attribute__((init_priority(101)))("a_early(101)");
Tracer a_late __attribute__((init_priority(300)))("a_late(300)");
Tracer a_default("a_default");

static void a_atexit() { std::puts("atexit handler registered by a"); }

__attribute__((constructor(150))) static void a_ctor150() {
    std::puts("constructor(150) in a");
    std::atexit(a_atexit);
}
__attribute__((destructor(150))) static void a_dtor150() { std::puts("destructor(150) in a"); }
__attribute__((destructor)) static void a_dtor() { std::puts("destructor in a"); }

int a_value() { return a_default.name[0] == 'a' ? 7 : -1; }
