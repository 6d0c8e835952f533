// JIT'd code naming a far library's data PC-relatively (as -fPIE code
// does): writable data, read-only data, and C++ typeinfo (throw).
#include <cstdio>
#include <typeinfo>
#include "far.h"

int main() {
    int sum = 0;
    for (int i = 0; i < 4; i++) sum += far_table[i];
    std::printf("table %d counter %d\n", sum, far_counter);
    try {
        far_throw(7);
    } catch (const FarError &e) {
        std::printf("caught from the library: %s %d\n", e.what(), e.code);
    }
    try {
        throw FarError(9);
    } catch (const std::runtime_error &e) {
        const FarError *f = dynamic_cast<const FarError *>(&e);
        std::printf("caught own: %s %d %d\n", e.what(), f ? f->code : -1,
                    typeid(e) == typeid(FarError));
    }
    return sum;
}
