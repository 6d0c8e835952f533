int level2(int);
__attribute__((noinline)) int level1(int n) {
    int r = level2(n + 1);
    return r * 2 + 1;
}
