int helper(int x) {
    int doubled = x * 2;
    int result = doubled + 1;
    return result;
}
