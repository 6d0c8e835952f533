// A library kiln's tests load after the slab is placed, far from it.
#include <stdexcept>

// The destructor is the key function: typeinfo and vtable live in the
// library only, so code throwing a FarError names them as host data.
struct FarError : std::runtime_error {
    explicit FarError(int code);
    ~FarError() override;
    int code;
};

extern "C" {
extern int far_counter;
extern const int far_table[4];
[[noreturn]] void far_throw(int code);
}
