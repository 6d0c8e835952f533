/* lua_bench_driver.c - the `main` for the Lua input of benches/link-compare.
 *
 * Links against every part of Lua 5.4 that a real embedder pulls in: the
 * state and allocator (lauxlib), every standard library (luaL_openlibs
 * reaches lbaselib, lstrlib, ltablib, lmathlib, liolib, loslib, lcorolib,
 * lutf8lib, ldblib, loadlib), the parser and code generator (luaL_loadstring),
 * the VM and GC (lua_pcall), and the binary chunk writer/reader (lua_dump,
 * then lua_load of the dumped bytes: ldump.c and lundump.c).
 *
 * With `-noexec` nothing runs; the program is still a correct one, so the
 * script can check once that kiln runs it and prints the native output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

static const char *const script =
    "local t = {}\n"
    "for i = 1, 2000 do t[i] = string.format('%05d', (i * 7919) % 10007) end\n"
    "table.sort(t)\n"
    "local acc = 0\n"
    "for i, v in ipairs(t) do acc = (acc * 31 + tonumber(v) + i) % 1000000007 end\n"
    "local co = coroutine.wrap(function(n) for k = 1, n do coroutine.yield(k * k) end end)\n"
    "local sq = 0\n"
    "for _ = 1, 10 do sq = sq + co(10) end\n"
    "local words = {}\n"
    "for w in ('the quick brown fox jumps over the lazy dog'):gmatch('%a+') do\n"
    "  words[#words + 1] = w:upper()\n"
    "end\n"
    "return string.format('%d %d %s %.3f %d', acc, sq, table.concat(words, '-'),\n"
    "                     math.sqrt(2), utf8.len('h\\u{e9}llo'))\n";

/* lua_Writer collecting a dumped chunk into a growing buffer. */
struct buffer {
    char *data;
    size_t len, cap;
};

static int collect(lua_State *L, const void *p, size_t n, void *ud) {
    struct buffer *b = ud;
    (void)L;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) return 1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int main(void) {
    lua_State *L = luaL_newstate();
    if (!L) {
        fputs("lua_bench_driver: cannot create a Lua state\n", stderr);
        return 2;
    }
    luaL_openlibs(L);
    if (luaL_loadstring(L, script) != LUA_OK) {
        fprintf(stderr, "lua_bench_driver: %s\n", lua_tostring(L, -1));
        lua_close(L);
        return 1;
    }
    /* Round-trip the compiled chunk through the binary format. */
    struct buffer b = {0};
    if (lua_dump(L, collect, &b, 1) != 0) {
        fputs("lua_bench_driver: lua_dump failed\n", stderr);
        free(b.data);
        lua_close(L);
        return 1;
    }
    lua_pop(L, 1);
    if (luaL_loadbufferx(L, b.data, b.len, "=dumped", "b") != LUA_OK ||
        lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "lua_bench_driver: %s\n", lua_tostring(L, -1));
        free(b.data);
        lua_close(L);
        return 1;
    }
    printf("lua: %s\n", lua_tostring(L, -1));
    free(b.data);
    lua_close(L);
    return 0;
}
