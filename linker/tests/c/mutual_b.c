/* Member of libmutual_b.a: calls back into libmutual_a.a. */
int ma_helper(int x);

int mb_middle(int x) { return ma_helper(x) + 10; }
