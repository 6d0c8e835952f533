// Shared by the statics_* objects: an object that reports its lifetime.
#pragma once

struct Tracer {
    const char *name;
    explicit Tracer(const char *n);
    ~Tracer();
};

void trace(const char *what, const char *who);
int a_value();
