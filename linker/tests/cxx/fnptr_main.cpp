// Function pointers as map keys and member function pointers compared
// across objects (with fnptr_lib.cpp): one address per function.
#include <cstdio>
#include <functional>
#include <map>

#include "fnptr.h"

int main() {
    std::map<Op, const char *> names;
    names[op_add] = "add";
    names[op_mul] = "mul";
    register_ops(names);  // the library adds its own view of the same keys
    std::printf("keys %zu add=%s mul=%s\n", names.size(), names[op_add], names[op_mul]);
    std::function<int(int, int)> f = op_add;
    std::printf("target %d\n", f.target<Op>() && *f.target<Op>() == lib_op(0));
    std::printf("member %d\n", &Counter::bump == lib_bump());
    Op sub = op_sub;
    std::printf("inline %d %d\n", sub == lib_inline_op(), sub(7, 2));
    Counter c;
    (c.*lib_bump())();
    Shape *s = make_square(3);
    std::printf("virtual %d area %d\n", s->same_area_fn(&Square::area_fn), s->area());
    delete s;
    return names.size() == 2 ? 0 : 3;
}
