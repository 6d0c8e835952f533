// Static construction/destruction order, object 2 of 3.
#include "tracer.h"

#include <cstdio>

Tracer b_200 __attribute__((init_priority(200)))("b(200)");
Tracer b_default("b_default");
// Dynamic initialization that calls into another object.
int b_cached = a_value() * 6;

__attribute__((constructor(120))) static void b_ctor120() { std::puts("constructor(120) in b"); }
__attribute__((destructor(250))) static void b_dtor250() { std::puts("destructor(250) in b"); }
__attribute__((destructor)) static void b_dtor() { std::puts("destructor in b"); }
