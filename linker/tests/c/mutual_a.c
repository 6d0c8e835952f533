/* Member of libmutual_a.a: `ma_entry` needs libmutual_b.a, which needs
 * `ma_helper` back; `ma_unused` names a symbol nothing defines (`ld
 * --gc-sections` drops it). */
int mb_middle(int x);
int ma_nowhere(int x);

int ma_helper(int x) { return x * 3; }
int ma_entry(int x) { return mb_middle(x) + 1; }
int ma_unused(int x) { return ma_nowhere(x); }
