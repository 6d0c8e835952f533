// Exceptions across objects and across the host/JIT boundary.
#pragma once

#include <stdexcept>
#include <string>

struct AppError : std::runtime_error {
    int code;
    AppError(const std::string &message, int code);
    ~AppError() override;  // key function: typeinfo and vtable live in exc_lib.o
};

struct DerivedError : AppError {
    explicit DerivedError(int code);
    ~DerivedError() override;
};

// Prints when released, to show unwinding runs destructors.
struct Guard {
    const char *name;
    explicit Guard(const char *n);
    ~Guard();
};

void throw_app(int code);  // code 1: AppError, 2: DerivedError, 3: int, 4: std::string
int checked_div(int a, int b);  // throws std::domain_error for b == 0
void wrap_and_rethrow(int code);  // catches throw_app's, throws std::runtime_error nested
int catch_inside(int code);  // throws and catches within exc_lib.o

// Provided by the host (the Rust test, or the native driver): calls cb(ctx).
extern "C" void kiln_host_invoke(void (*cb)(void *), void *ctx);
