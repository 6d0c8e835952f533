// Classes defined entirely in a header and used from several objects: every
// object that uses them carries the same COMDAT groups (inline and virtual
// member functions, vtables, typeinfo, template instances, inline variables
// and function-local statics), and the linker keeps one copy of each.
#pragma once

#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

struct Widget {
    virtual ~Widget() {}
    virtual int weight() const { return 1; }
    virtual std::string name() const { return "widget"; }
    int doubled() const { return 2 * weight(); }
};

struct Gadget : Widget {
    int w;
    explicit Gadget(int x) : w(x) {}
    ~Gadget() override {}
    int weight() const override { return w; }
    std::string name() const override { return "gadget" + std::to_string(w); }
};

template <typename T>
struct Bag {
    std::vector<T> items;
    void add(const T &t) { items.push_back(t); }
    T sum() const {
        T s{};
        for (const T &i : items) s += i;
        return s;
    }
    const T &at(size_t i) const {
        if (i >= items.size()) throw std::out_of_range("Bag::at");
        return items[i];
    }
};

struct BagError : std::runtime_error {
    int code;
    BagError(const std::string &m, int c) : std::runtime_error(m), code(c) {}
};

// One counter for the whole program, whichever object calls it first.
inline int next_ticket() {
    static int n = 0;
    return ++n;
}

inline std::map<std::string, int> &tally() {
    static std::map<std::string, int> t;
    return t;
}

inline int checked_weight(const Widget &w) {
    if (w.weight() < 0) throw BagError("negative weight " + w.name(), w.weight());
    tally()[w.name()] += w.weight();
    return w.weight();
}

int use_in_a(int x);
int use_in_b(int x);
