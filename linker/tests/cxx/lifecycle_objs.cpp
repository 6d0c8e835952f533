// Static objects whose destructors call into lifecycle_util (first call
// at exit), and a frame that exceptions from lifecycle_util unwind through.
#include "lifecycle.h"

#include <cstdio>
#include <memory>

Noisy::Noisy(const char *t) : tag(t) { std::printf("construct %s\n", tag.c_str()); }
Noisy::~Noisy() {
    std::printf("destroy %s (checksum %d)\n", tag.c_str(), util_checksum(tag));
}

static Noisy objs_static("objs-static");
static std::unique_ptr<Noisy> objs_heap(new Noisy("objs-heap"));

struct Guard {
    int kind;
    ~Guard() { std::printf("unwinding through objs, kind %d\n", kind); }
};

static int rethrow_as_app(int kind) {
    Guard g{kind};
    util_throw(kind);
    return kind;
}

int objs_parse(const std::string &s) {
    if (s.empty()) throw ParseError("empty");
    return std::stoi(s);
}

int objs_run(int first) {
    int sum = 0;
    for (int k = first; k < 5; k++) {
        try {
            sum += rethrow_as_app(k);
            std::printf("kind %d: no throw\n", k);
        } catch (const ParseError &e) {
            std::printf("kind %d: ParseError %s %d\n", k, e.what(), e.code);
            sum += e.code;
        } catch (const std::out_of_range &e) {
            std::printf("kind %d: out_of_range %s\n", k, e.what());
            sum += 100;
        } catch (...) {
            std::printf("kind %d: rethrown\n", k);
            throw;
        }
    }
    return sum;
}
