// Virtual calls, object 2 of 2: a subclass defined here, used by the library.
#include "shapes.h"

#include <cstdio>
#include <typeinfo>
#include <vector>

struct Triangle : Shape {
    double b, h;
    Triangle(double base, double height) : b(base), h(height) {}
    ~Triangle() override { std::printf("~Triangle\n"); }
    double area() const override { return b * h / 2; }
    std::string name() const override { return "triangle"; }
};

struct Tiny final : Circle {
    Tiny() : Circle(1) {}
    std::string name() const override { return "tiny " + Circle::name(); }
};

int main() {
    std::vector<std::unique_ptr<Shape>> shapes;
    shapes.push_back(make_shape(0, 2));
    shapes.push_back(make_shape(1, 3));
    shapes.push_back(std::make_unique<Triangle>(4, 5));
    shapes.push_back(std::make_unique<Tiny>());
    std::vector<const Shape *> raw;
    for (auto &s : shapes) {
        std::printf("%s | %s | circle? %d\n", s->describe().c_str(), visit(*s).c_str(),
                    dynamic_cast<Circle *>(s.get()) != nullptr);
        raw.push_back(s.get());
    }
    std::printf("typeid equal across objects: %d\n", typeid(*shapes[0]) == typeid(Circle));
    std::printf("total area %.2f\n", total_area(raw.data(), int(raw.size())));
    shapes.clear();
    std::puts("done");
    return 0;
}
