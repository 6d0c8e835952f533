// Exceptions, object 2 of 2: catchers, and a round trip through the host.
#include "exc.h"

#include <cstdio>
#include <exception>
#include <vector>

struct Ctx {
    int code;
    int caught_inside;
};

// Called back by the host: throws out of the callback, through the host's
// frame, back into main.
static void throwing_callback(void *p) {
    Ctx *ctx = static_cast<Ctx *>(p);
    Guard g("in callback");
    ctx->caught_inside = catch_inside(2);  // a complete throw/catch inside the callback
    throw_app(ctx->code);
}

static void print_nested(const std::exception &e, int depth) {
    std::printf("%*snested: %s\n", depth * 2, "", e.what());
    try {
        std::rethrow_if_nested(e);
    } catch (const std::exception &inner) {
        print_nested(inner, depth + 1);
    }
}

int main() {
    int caught = 0;
    for (int code = 1; code <= 5; ++code) {
        try {
            throw_app(code);
        } catch (const DerivedError &e) {
            std::printf("caught DerivedError: %s (code %d)\n", e.what(), e.code);
            ++caught;
        } catch (const AppError &e) {
            std::printf("caught AppError: %s (code %d)\n", e.what(), e.code);
            ++caught;
        } catch (int v) {
            std::printf("caught int %d\n", v);
            ++caught;
        } catch (...) {
            std::printf("caught something else\n");
            ++caught;
        }
    }
    try {
        std::printf("10/2=%d\n", checked_div(10, 2));
        std::printf("never printed %d\n", checked_div(1, 0));
    } catch (const std::logic_error &e) {
        std::printf("caught logic_error: %s\n", e.what());
        ++caught;
    }
    try {
        std::vector<int> v(3);
        v.at(7) = 1;  // thrown by libstdc++ (host code)
    } catch (const std::out_of_range &) {
        std::printf("caught out_of_range from the host library\n");
        ++caught;
    }
    try {
        wrap_and_rethrow(2);
    } catch (const std::exception &e) {
        print_nested(e, 0);
        ++caught;
    }
    Ctx ctx{1, 0};
    try {
        Guard g("around host call");
        kiln_host_invoke(throwing_callback, &ctx);
        std::printf("host call returned normally\n");
    } catch (const AppError &e) {
        std::printf("caught across the host: %s (code %d), inside=%d\n", e.what(), e.code, ctx.caught_inside);
        ++caught;
    }
    std::exception_ptr saved;
    try {
        throw_app(2);
    } catch (...) {
        saved = std::current_exception();
    }
    try {
        std::rethrow_exception(saved);
    } catch (const AppError &e) {
        std::printf("rethrown exception_ptr: %s\n", e.what());
        ++caught;
    }
    std::printf("caught %d exceptions\n", caught);
    return caught;
}
