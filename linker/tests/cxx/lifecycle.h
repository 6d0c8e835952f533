// Shared by the lifecycle_* objects: static objects whose constructors and
// destructors call into other objects, and exceptions that cross objects.
#pragma once

#include <stdexcept>
#include <string>

struct Noisy {
    std::string tag;
    explicit Noisy(const char *t);
    ~Noisy();
};

struct AppError : std::runtime_error {
    int code;
    AppError(const std::string &m, int c) : std::runtime_error(m), code(c) {}
};
struct ParseError : AppError {
    explicit ParseError(const std::string &m) : AppError("parse: " + m, 2) {}
};

// lifecycle_util.cpp: no static constructors (so under --lazy it is linked
// on its first call, which may come from a destructor at exit).
int util_scale(int x);
int util_checksum(const std::string &s);
void util_throw(int kind);
// lifecycle_objs.cpp
int objs_parse(const std::string &s);
// Throws kinds first..4 from lifecycle_util; rethrows what it cannot handle.
int objs_run(int first);
