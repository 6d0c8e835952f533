// Shared by cpp_a.cpp and cpp_b.cpp: inline functions, templates and a
// class with only inline virtuals, so both objects carry the same COMDAT
// groups (code, vtable, typeinfo) and kiln must keep exactly one copy.
#pragma once
#include <cstdio>
#include <string>

struct Shape {
    virtual ~Shape() {}
    virtual double area() const = 0;
    virtual std::string name() const = 0;
};

template <class T> T twice(T x) {
    volatile T y = x;  // keep it out of line at -O0 and -O2 alike
    return y * 2;
}

struct Tracer {
    const char *n;
    explicit Tracer(const char *n) : n(n) { std::printf("ctor %s\n", n); }
    ~Tracer() { std::printf("dtor %s\n", n); }
};

int throw_in_b(int x);
int from_b_twice(int x);
Shape *make_square(double side);
extern thread_local int tl_b;
int read_tl_b();
