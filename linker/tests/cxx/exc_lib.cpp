// Exceptions, object 1 of 2: the throwers.
#include "exc.h"

#include <cstdio>
#include <exception>

AppError::AppError(const std::string &message, int c) : std::runtime_error(message), code(c) {}
AppError::~AppError() {}
DerivedError::DerivedError(int c) : AppError("derived error " + std::to_string(c), c) {}
DerivedError::~DerivedError() {}

Guard::Guard(const char *n) : name(n) { std::printf("guard %s taken\n", n); }
Guard::~Guard() { std::printf("guard %s released\n", name); }

void throw_app(int code) {
    Guard g("in throw_app");
    switch (code) {
    case 1: throw AppError("app error", code);
    case 2: throw DerivedError(code);
    case 3: throw code;
    case 4: throw std::string("a string");
    default: break;
    }
    std::printf("throw_app(%d) did not throw\n", code);
}

int checked_div(int a, int b) {
    if (b == 0) throw std::domain_error("division by zero");
    return a / b;
}

void wrap_and_rethrow(int code) {
    try {
        throw_app(code);
    } catch (const AppError &) {
        std::throw_with_nested(std::runtime_error("while wrapping " + std::to_string(code)));
    }
}

int catch_inside(int code) {
    try {
        throw_app(code);
    } catch (const DerivedError &e) {
        return 100 + e.code;
    } catch (const AppError &e) {
        return e.code;
    } catch (...) {
        return -1;
    }
    return 0;
}
