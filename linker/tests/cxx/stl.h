// Shapes built behind a std::regex check, tallied on four std::threads,
// described through iostreams: the standard library's templates (COMDAT
// groups in every object), shared_ptr reference counts (atomics: libgcc's
// outline atomics on aarch64, `__libc_single_threaded` with g++), an
// exception class thrown in one object and caught in another, typeid.
#pragma once
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

struct Shape {
    virtual ~Shape() = default;
    virtual double area() const = 0;
    virtual std::string name() const = 0;
};

std::unique_ptr<Shape> make(const std::string &kind, double a, double b);
std::map<std::string, double> tally(const std::vector<std::shared_ptr<Shape>> &shapes);
std::string describe(const std::vector<int> &xs);

struct BadShape : std::runtime_error {
    using std::runtime_error::runtime_error;
};
