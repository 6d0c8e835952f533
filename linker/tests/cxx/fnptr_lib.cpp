// The functions fnptr_main.cpp compares, with addresses taken here too.
#include "fnptr.h"

int op_add(int a, int b) { return a + b; }
int op_mul(int a, int b) { return a * b; }

void register_ops(std::map<Op, const char *> &names) {
    names[op_add] = "add";
    names[op_mul] = "mul";
}

Op lib_op(int which) { return which ? op_mul : op_add; }
Op lib_inline_op() { return op_sub; }

void Counter::bump() { ++n; }
Bump lib_bump() { return &Counter::bump; }

int Square::area_fn(const Shape *s) { return static_cast<const Square *>(s)->side * static_cast<const Square *>(s)->side; }
int Square::area() const { return area_fn(this); }
bool Square::same_area_fn(int (*f)(const Shape *)) const { return f == &Square::area_fn; }
Shape *make_square(int side) { return new Square(side); }
