#include "far.h"

FarError::FarError(int c) : std::runtime_error("far error"), code(c) {}
FarError::~FarError() {}

extern "C" {
int far_counter = 5;
const int far_table[4] = {1, 2, 3, 4};
void far_throw(int code) { throw FarError(code); }
}
