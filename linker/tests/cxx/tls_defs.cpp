// thread_local, object 1 of 2: the definitions.
#include "tls.h"

std::atomic<int> constructed_counters{0};
std::atomic<int> destroyed_counters{0};

Counter::Counter() : value(1000) { constructed_counters++; }
Counter::~Counter() { destroyed_counters++; }

thread_local Counter tl_counter;
thread_local int tl_plain = 42;
thread_local long tl_zero;
thread_local const char *tl_name = "unnamed";

int bump_plain(int by) { return tl_plain += by; }
long counter_add(long by) { return tl_counter.value += by; }
