/* Every kind of initializer and finalizer section, with and without
   priorities: kiln-load must run them in the order kiln run does. */
#include <stdio.h>
#include <stdlib.h>
static void pre1(void) { printf("preinit 1\n"); }
static void pre2(void) { printf("preinit 2\n"); }
static void c1(void) { printf("ctors 1\n"); }
static void c2(void) { printf("ctors 2\n"); }
static void c101(void) { printf("ctors.101\n"); }
static void i1(void) { printf("init_array 1\n"); }
static void i2(void) { printf("init_array 2\n"); }
static void i300(void) { printf("init_array.300\n"); }
static void d1(void) { printf("dtors 1\n"); }
static void d2(void) { printf("dtors 2\n"); }
static void f1(void) { printf("fini_array 1\n"); }
static void f2(void) { printf("fini_array 2\n"); }
static void f300(void) { printf("fini_array.300\n"); }
static void ae(void) { printf("atexit\n"); }
__attribute__((used, section(".preinit_array"))) static void (*pa[])(void) = {pre1, pre2};
__attribute__((used, section(".ctors"))) static void (*ca[])(void) = {c1, c2};
__attribute__((used, section(".ctors.65434"))) static void (*cb[])(void) = {c101};
__attribute__((used, section(".init_array"))) static void (*ia[])(void) = {i1, i2};
__attribute__((used, section(".init_array.00300"))) static void (*ib[])(void) = {i300};
__attribute__((used, section(".dtors"))) static void (*da[])(void) = {d1, d2};
__attribute__((used, section(".fini_array"))) static void (*fa[])(void) = {f1, f2};
__attribute__((used, section(".fini_array.00300"))) static void (*fb[])(void) = {f300};
int main(int argc, char **argv) { atexit(ae); printf("main %d %s\n", argc, argc > 1 ? argv[1] : ""); return 3; }
