__thread int tls_shared = 1000;
__thread long tls_zeroed[4];
static __thread int tls_counter = 40;

int bump_b(int by) {
    tls_counter += by;
    return tls_counter + tls_shared;
}

int *shared_address(void) { return &tls_shared; }
