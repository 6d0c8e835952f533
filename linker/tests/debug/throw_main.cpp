// gdb test: an exception thrown in throw_thrower.cpp, caught here.
#include <cstdio>
#include <stdexcept>
void thrower(int n);
int main() {
    try {
        thrower(7);
    } catch (const std::runtime_error &e) {
        std::printf("caught %s\n", e.what());
        return 0;
    }
    return 1;
}
