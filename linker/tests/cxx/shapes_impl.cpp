// Virtual calls, object 1 of 2: the library of shapes.
#include "shapes.h"

#include <cstdio>

Shape::~Shape() { std::printf("~Shape\n"); }
std::string Shape::name() const { return "shape"; }
std::string Shape::describe() const {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2f", area());
    return name() + " with area " + buf;
}

Circle::~Circle() { std::printf("~Circle(%.1f)\n", r); }
double Circle::area() const { return 3.0 * r * r; }
std::string Circle::name() const { return "circle"; }

Square::~Square() { std::printf("~Square(%.1f)\n", side); }
double Square::area() const { return side * side; }

std::unique_ptr<Shape> make_shape(int kind, double size) {
    if (kind == 0) return std::make_unique<Circle>(size);
    return std::make_unique<Square>(size);
}

double total_area(const Shape *const *shapes, int n) {
    double t = 0;
    for (int i = 0; i < n; ++i) t += shapes[i]->area();
    return t;
}

std::string visit(const Shape &s) {
    if (auto c = dynamic_cast<const Circle *>(&s)) return "visited a circle of radius " + std::to_string(int(c->r));
    if (dynamic_cast<const Square *>(&s)) return "visited a square";
    return "visited an unknown " + s.name();
}
