#include <mutex>
#include <thread>

#include "stl.h"

std::map<std::string, double> tally(const std::vector<std::shared_ptr<Shape>> &shapes) {
    std::map<std::string, double> sums;
    std::mutex lock;
    std::vector<std::thread> threads;
    for (size_t t = 0; t < 4; t++)
        threads.emplace_back([&, t] {
            for (size_t i = t; i < shapes.size(); i += 4) {
                std::shared_ptr<Shape> s = shapes[i];  // a reference count taken and dropped
                std::string n = s->name();
                double a = s->area();
                std::lock_guard<std::mutex> g(lock);
                sums[n] += a;
            }
        });
    for (auto &t : threads) t.join();
    return sums;
}
