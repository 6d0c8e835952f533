// Large thread_local data, object 2 of 2: threads fill their own buffers.
#include "tls_big.h"

#include <cstdio>
#include <thread>
#include <vector>

static void fill(int id, unsigned *out) {
    for (auto &c : big_buffer) c = (unsigned char)id;
    big_marker += id;
    *out = big_checksum();
}

int main() {
    std::printf("main: checksum %u marker %d\n", big_checksum(), big_marker);
    const int n = 6;
    std::vector<unsigned> sums(n);
    std::vector<std::thread> threads;
    for (int id = 0; id < n; ++id) threads.emplace_back(fill, id + 1, &sums[id]);
    for (auto &t : threads) t.join();
    for (int id = 0; id < n; ++id) std::printf("thread %d: checksum %u\n", id + 1, sums[id]);
    std::printf("main: still checksum %u marker %d\n", big_checksum(), big_marker);
    return 0;
}
