// Helpers without static constructors, called from other objects'
// constructors, destructors and exception paths.
#include "lifecycle.h"

int util_scale(int x) { return x * 3; }

int util_checksum(const std::string &s) {
    int c = 0;
    for (char ch : s) c = c * 31 + ch;
    return c & 0xffff;
}

void util_throw(int kind) {
    switch (kind) {
    case 0: throw ParseError("bad token");
    case 1: throw AppError("app", 7);
    case 2: throw std::out_of_range("range");
    case 3: throw 42;
    default: break;
    }
}
