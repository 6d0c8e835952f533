// Shared by fnptr_main.cpp and fnptr_lib.cpp.
#pragma once
#include <map>

typedef int (*Op)(int, int);
int op_add(int a, int b);
int op_mul(int a, int b);
void register_ops(std::map<Op, const char *> &names);
Op lib_op(int which);
// Defined in every object that uses it (a COMDAT group in each).
inline int op_sub(int a, int b) { return a - b; }
Op lib_inline_op();

struct Counter {
    int n = 0;
    void bump();
};
typedef void (Counter::*Bump)();
Bump lib_bump();

struct Shape {
    virtual ~Shape() {}
    virtual int area() const = 0;
    // Whether this shape's area is computed by `f` (compared by address).
    virtual bool same_area_fn(int (*f)(const Shape *)) const = 0;
};
struct Square : Shape {
    int side;
    explicit Square(int s) : side(s) {}
    int area() const override;
    bool same_area_fn(int (*f)(const Shape *)) const override;
    static int area_fn(const Shape *s);
};
Shape *make_square(int side);
