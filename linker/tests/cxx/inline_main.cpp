// Header-defined classes used from main's object, and across objects a and b.
#include "inline.h"

int main() {
    Widget plain;
    Gadget g(7);
    std::printf("main: %s %s, ticket %d\n", plain.name().c_str(), g.name().c_str(),
                next_ticket());
    int r = use_in_a(2);
    try {
        r += use_in_b(3);
    } catch (const BagError &e) {
        std::printf("main: caught BagError from b: %s (%d)\n", e.what(), e.code);
        r += 100;
    }
    checked_weight(g);
    for (const auto &kv : tally()) std::printf("tally %s = %d\n", kv.first.c_str(), kv.second);
    std::printf("total %d, tickets %d\n", r, next_ticket());
    return r & 0x7f;
}
