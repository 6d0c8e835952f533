#include <cmath>
#include <regex>
#include <sstream>

#include "stl.h"

namespace {
struct Rect : Shape {
    double w, h;
    Rect(double w_, double h_) : w(w_), h(h_) {}
    double area() const override { return w * h; }
    std::string name() const override { return "rect"; }
};
struct Circle : Shape {
    double r;
    explicit Circle(double r_) : r(r_) {}
    double area() const override { return M_PI * r * r; }
    std::string name() const override { return "circle"; }
};
}  // namespace

std::unique_ptr<Shape> make(const std::string &kind, double a, double b) {
    static const std::regex known("^(rect|circle)$");
    if (!std::regex_match(kind, known)) throw BadShape("unknown shape: " + kind);
    if (kind == "rect") return std::make_unique<Rect>(a, b);
    return std::make_unique<Circle>(a);
}

std::string describe(const std::vector<int> &xs) {
    std::ostringstream os;
    for (int x : xs) os << x << (x % 3 == 0 ? "!" : "") << ' ';
    return os.str();
}
