/* A small host for Lua 5.4: runs a script through the C API and prints what
   it produces. main returns a checksum of the results. */
#include <stdio.h>
#include <string.h>
#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static const char *script =
    "local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end\n"
    "print('fib', fib(20))\n"
    "local t = {}\n"
    "for i = 1, 200 do t[i] = (i * 7919) % 1009 end\n"
    "table.sort(t, function(a, b) return a > b end)\n"
    "print('sorted', t[1], t[2], t[100], t[200])\n"
    "local words = {}\n"
    "for w in string.gmatch('the quick brown fox jumps over the lazy dog', '%a+') do words[#words+1] = w:upper() end\n"
    "print(table.concat(words, ','))\n"
    "print(string.format('%5.2f|%-6s|%x|%q', math.pi, 'ab', 255, 'a\\nb'))\n"
    "print(('abc'):rep(3, '-'), ('hello world'):gsub('o', '0'))\n"
    "local co = coroutine.create(function(a, b)\n"
    "  local c = coroutine.yield(a + b)\n"
    "  local d, e = coroutine.yield(c * 2)\n"
    "  return d + e\n"
    "end)\n"
    "print('co', coroutine.resume(co, 1, 2))\n"
    "print('co', coroutine.resume(co, 10))\n"
    "print('co', coroutine.resume(co, 3, 4))\n"
    "print('co', coroutine.resume(co))\n"
    "local gen = coroutine.wrap(function() for i = 1, 5 do coroutine.yield(i * i) end end)\n"
    "local s = 0 for i = 1, 5 do s = s + gen() end print('squares', s)\n"
    "local okt, et = pcall(function() error({code = 42}) end) print('pcall', okt, type(et), et.code)\n"
    "local ok, msg = pcall(function() error('boom', 0) end) print('pcall', ok, msg)\n"
    "local ok2, msg2 = pcall(function() local x = nil; return x.field end) print('pcall', ok2, (msg2:gsub('^.-:%d+: ', '')))\n"
    "print(select('#', xpcall(function() error('deep') end, function(m) return 'handled: ' .. m end)))\n"
    "local mt = setmetatable({}, {__index = function(_, k) return k .. '!' end, __call = function(self, x) return x * 3 end})\n"
    "print(mt.foo, mt(14))\n"
    "print(math.floor(3.7), math.max(1, 9, 4), 7 // 2, 7 % 3, 2^10, math.sqrt(2))\n"
    "print(string.byte('A'), string.char(72, 105), #'\\u{48}\\u{49}', utf8 and utf8.char(72, 228))\n"
    "local big = {} for i = 1, 10000 do big[i] = tostring(i) end print('concat', #table.concat(big))\n"
    "collectgarbage() print('gc ok')\n"
    "io.write('io.write works\\n')\n"
    "return fib(15)\n";

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    lua_State *L = luaL_newstate();
    if (!L) return 99;
    luaL_openlibs(L);
    int status = luaL_loadstring(L, script);
    if (status == LUA_OK) status = lua_pcall(L, 0, 1, 0);
    int result = 0;
    if (status != LUA_OK) {
        printf("error: %s\n", lua_tostring(L, -1));
        result = 100 + status;
    } else {
        result = (int)lua_tointeger(L, -1) % 200;
        printf("result %d\n", result);
    }
    lua_close(L);
    fflush(stdout);
    return result;
}
