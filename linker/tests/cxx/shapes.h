// Virtual calls across objects.
#pragma once

#include <memory>
#include <string>

struct Shape {
    virtual ~Shape();
    virtual double area() const = 0;
    virtual std::string name() const;
    std::string describe() const;  // non-virtual, calls virtuals
};

struct Circle : Shape {
    double r;
    explicit Circle(double radius) : r(radius) {}
    ~Circle() override;
    double area() const override;
    std::string name() const override;
};

struct Square : Shape {
    double side;
    explicit Square(double s) : side(s) {}
    ~Square() override;
    double area() const override;
    // name() inherited from Shape
};

std::unique_ptr<Shape> make_shape(int kind, double size);
double total_area(const Shape *const *shapes, int n);
// Calls back into a shape defined in another object.
std::string visit(const Shape &s);
