#include <functional>
#include <iomanip>
#include <iostream>
#include <typeinfo>
#include <unordered_map>

#include "stl.h"

static std::unordered_map<std::string, int> counts{{"start", 1}};

int main() {
    std::vector<std::shared_ptr<Shape>> shapes;
    for (int i = 1; i <= 400; i++) shapes.push_back(make(i % 2 ? "rect" : "circle", i * 0.5, i * 0.25));
    for (auto &[kind, area] : tally(shapes))
        std::cout << kind << ' ' << std::fixed << std::setprecision(2) << area << '\n';
    try {
        make("hexagon", 1, 1);
    } catch (const BadShape &e) {
        std::cout << "caught " << e.what() << " (" << (typeid(e) == typeid(BadShape)) << ")\n";
    }
    std::function<int(int)> square = [](int x) { return x * x; };
    std::vector<int> xs;
    for (int i = 0; i < 10; i++) xs.push_back(square(i));
    std::cout << describe(xs) << '\n' << counts["start"] << std::endl;
    return 0;
}
