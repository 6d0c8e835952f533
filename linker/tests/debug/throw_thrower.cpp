#include <stdexcept>
#include <string>
__attribute__((noinline)) void thrower(int n) {
    if (n > 0)
        throw std::runtime_error("boom " + std::to_string(n));
}
