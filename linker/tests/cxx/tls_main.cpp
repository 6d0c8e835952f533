// thread_local, object 2 of 2: std::thread users.
#include "tls.h"

#include <cstdio>
#include <thread>
#include <vector>

static const char *const names[] = {"main", "one", "two", "three"};

// A thread_local with a printing destructor, defined here.
struct Farewell {
    int id = -1;
    ~Farewell() {
        if (id >= 0) std::printf("thread %d: farewell (tl_plain=%d)\n", id, tl_plain);
    }
};
thread_local Farewell farewell;

static void sequential_worker(int id) {
    std::printf("thread %d: start tl_plain=%d tl_zero=%ld tl_name=%s counter=%ld\n", id, tl_plain, tl_zero,
                tl_name, tl_counter.value);
    farewell.id = id;
    tl_name = names[id];
    tl_zero += id;
    bump_plain(id);
    counter_add(id * 10);
    std::printf("thread %d: now tl_plain=%d tl_zero=%ld tl_name=%s counter=%ld\n", id, tl_plain, tl_zero, tl_name,
                tl_counter.value);
}

static void concurrent_worker(int id, long *out) {
    for (int i = 0; i < 100000; ++i) {
        counter_add(1);
        tl_zero += 2;
        if (i % 1000 == 0) bump_plain(1);
    }
    out[0] = tl_counter.value;
    out[1] = tl_zero;
    out[2] = tl_plain;
    out[3] = id;
}

int main() {
    std::printf("main: tl_plain=%d tl_name=%s\n", tl_plain, tl_name);
    bump_plain(1);
    counter_add(5);
    std::printf("main: after bump tl_plain=%d counter=%ld\n", tl_plain, tl_counter.value);
    for (int id = 1; id <= 3; ++id) {
        std::thread t(sequential_worker, id);
        t.join();
    }
    const int n = 8;
    std::vector<long> results(4 * n);
    std::vector<std::thread> threads;
    for (int id = 0; id < n; ++id) threads.emplace_back(concurrent_worker, id, &results[4 * id]);
    for (auto &t : threads) t.join();
    for (int id = 0; id < n; ++id)
        std::printf("worker %ld: counter=%ld zero=%ld plain=%ld\n", results[4 * id + 3], results[4 * id],
                    results[4 * id + 1], results[4 * id + 2]);
    std::printf("main: still tl_plain=%d tl_name=%s counter=%ld\n", tl_plain, tl_name, tl_counter.value);
    std::printf("counters constructed=%d destroyed=%d\n", constructed_counters.load(), destroyed_counters.load());
    return 0;
}
