// Header-defined classes used from object a.
#include "inline.h"

int use_in_a(int x) {
    Gadget g(x);
    Bag<int> bag;
    bag.add(checked_weight(g));
    bag.add(g.doubled());
    std::printf("a: %s weighs %d, bag %d, ticket %d\n", g.name().c_str(), g.weight(), bag.sum(),
                next_ticket());
    try {
        bag.at(5);
    } catch (const std::out_of_range &e) {
        std::printf("a: caught %s\n", e.what());
    }
    Gadget bad(-x);
    try {
        checked_weight(bad);
    } catch (const BagError &e) {
        std::printf("a: caught BagError %s (%d)\n", e.what(), e.code);
    }
    return bag.sum();
}
