// thread_local variables defined in one object and used in another.
#pragma once

#include <atomic>

struct Counter {
    long value;
    Counter();   // non-trivial: counts constructions
    ~Counter();  // non-trivial: counts destructions
};

extern std::atomic<int> constructed_counters;
extern std::atomic<int> destroyed_counters;

extern thread_local Counter tl_counter;    // dynamic initialization + destructor
extern thread_local int tl_plain;          // .tdata, initial value 42
extern thread_local long tl_zero;          // .tbss
extern thread_local const char *tl_name;   // .tdata holding a relocated pointer

int bump_plain(int by);  // accesses tl_plain from its defining object
long counter_add(long by);  // accesses tl_counter from its defining object
