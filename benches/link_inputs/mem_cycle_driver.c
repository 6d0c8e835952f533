/* mem_cycle_driver.c - what `mem-cycles` calls in each cycle, after linking
 * Lua 5.4's objects: a fresh state with every standard library (which
 * reaches nearly every object), a short script compiled and run, the state
 * closed. Returns n * (n + 1) / 2, or a negative number on failure.
 */
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

int kiln_mem_cycle(int n) {
    lua_State *L = luaL_newstate();
    if (!L) return -1;
    luaL_openlibs(L);
    lua_pushinteger(L, n);
    lua_setglobal(L, "n");
    if (luaL_dostring(L, "local s = 0 for i = 1, n do s = s + i end "
                         "return tonumber(string.format('%d', s))") != LUA_OK) {
        lua_close(L);
        return -2;
    }
    int r = (int)lua_tointeger(L, -1);
    lua_close(L);
    return r;
}
