// Header-defined classes used from object b.
#include "inline.h"

#include <memory>

int use_in_b(int x) {
    std::unique_ptr<Widget> p(new Gadget(x * 3));
    Bag<int> bag;
    bag.add(checked_weight(*p));
    bag.add(p->doubled());
    std::printf("b: %s bag %d, ticket %d, is a gadget: %d\n", p->name().c_str(), bag.sum(),
                next_ticket(), dynamic_cast<Gadget *>(p.get()) != nullptr);
    Bag<std::string> words;
    words.add("in");
    words.add("line");
    std::printf("b: %s\n", words.sum().c_str());
    Gadget bad(-1);
    checked_weight(bad);  // throws BagError, caught in main's object
    return bag.sum();
}
