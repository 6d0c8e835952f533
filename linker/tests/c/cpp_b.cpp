#include <stdexcept>
#include <string>
#include "cpp_common.h"

thread_local int tl_b = 100;
static thread_local int tl_local = 7;
Tracer t_b("b-default");
__attribute__((init_priority(101))) Tracer t_b101("b-priority-101");

struct Square : Shape {
    double side;
    explicit Square(double s) : side(s) {}
    double area() const override { return side * side; }
    std::string name() const override { return "square"; }
};

Shape *make_square(double side) { return new Square(side); }

int throw_in_b(int x) {
    if (x > 2) throw std::runtime_error("from b: " + std::to_string(x));
    return x;
}

int from_b_twice(int x) { return twice<int>(x); }

int read_tl_b() { return tl_b + tl_local++; }
