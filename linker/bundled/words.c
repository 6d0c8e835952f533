#include <stdlib.h>
#include <string.h>

const char *kiln_words[] = {"relocate", "emit", "resolve", "link", "materialize", "ready"};
int kiln_word_count = sizeof kiln_words / sizeof kiln_words[0];

static int by_name(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void sort_words(const char **w, int n) { qsort(w, n, sizeof *w, by_name); }
