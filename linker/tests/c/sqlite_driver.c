/* A small SQLite host: an in-memory database with two tables, rows inserted
   in a transaction through a prepared statement, an index, aggregates, a
   join, a rolled-back transaction and a recursive CTE; prints every result.
   main returns a value derived from the results. */
#include <stdio.h>
#include <string.h>
#include "sqlite3.h"

static int rows_seen;

static int print_row(void *tag, int n, char **vals, char **cols) {
    printf("%s:", (const char *)tag);
    for (int i = 0; i < n; i++) printf(" %s=%s", cols[i], vals[i] ? vals[i] : "NULL");
    printf("\n");
    rows_seen++;
    return 0;
}

static int run(sqlite3 *db, const char *tag, const char *sql) {
    char *err = NULL;
    if (sqlite3_exec(db, sql, print_row, (void *)tag, &err) != SQLITE_OK) {
        printf("%s: error: %s\n", tag, err);
        sqlite3_free(err);
        return 1;
    }
    return 0;
}

int main(void) {
    sqlite3 *db;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) return 99;
    printf("sqlite %s\n", sqlite3_libversion());
    int bad = run(db, "schema",
                  "CREATE TABLE city(id INTEGER PRIMARY KEY, name TEXT, country TEXT);"
                  "CREATE TABLE sale(id INTEGER PRIMARY KEY, city INTEGER, amount INTEGER,"
                  " item TEXT, price REAL);");
    const char *cities[][2] = {{"Lyon", "FR"}, {"Oslo", "NO"}, {"Kyoto", "JP"},
                               {"Porto", "PT"}, {"Quito", "EC"}, {"Bergen", "NO"}};
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "INSERT INTO city(name, country) VALUES (?1, ?2)", -1, &st, NULL);
    for (int i = 0; i < 6; i++) {
        sqlite3_bind_text(st, 1, cities[i][0], -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, cities[i][1], -1, SQLITE_STATIC);
        bad |= sqlite3_step(st) != SQLITE_DONE;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    bad |= run(db, "begin", "BEGIN");
    sqlite3_prepare_v2(db, "INSERT INTO sale(city, amount, item, price) VALUES (?, ?, ?, ?)",
                       -1, &st, NULL);
    unsigned x = 7;
    char item[32];
    for (int i = 0; i < 2000; i++) {
        x = x * 1103515245u + 12345u;
        snprintf(item, sizeof item, "item-%03u", (x >> 8) % 250);
        sqlite3_bind_int(st, 1, 1 + (int)((x >> 16) % 6));
        sqlite3_bind_int(st, 2, 1 + (int)((x >> 4) % 40));
        sqlite3_bind_text(st, 3, item, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(st, 4, ((x >> 12) % 10000) / 100.0);
        bad |= sqlite3_step(st) != SQLITE_DONE;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    bad |= run(db, "commit", "COMMIT");
    bad |= run(db, "index", "CREATE INDEX sale_item ON sale(item, amount)");
    bad |= run(db, "count", "SELECT count(*) AS n, sum(amount) AS total, min(price) AS lo,"
                            " max(price) AS hi, printf('%.3f', avg(price)) AS mean FROM sale");
    bad |= run(db, "by-country",
               "SELECT c.country, count(*) AS n, sum(s.amount) AS qty,"
               " printf('%.2f', sum(s.amount * s.price)) AS revenue"
               " FROM sale s JOIN city c ON c.id = s.city GROUP BY c.country ORDER BY revenue DESC");
    bad |= run(db, "top-items",
               "SELECT item, count(*) AS n, sum(amount) AS qty FROM sale"
               " GROUP BY item HAVING n >= 13 ORDER BY qty DESC, item LIMIT 5");
    bad |= run(db, "indexed", "SELECT id, amount, price FROM sale"
                              " WHERE item = 'item-042' AND amount > 30 ORDER BY id");
    bad |= run(db, "plan", "EXPLAIN QUERY PLAN SELECT id FROM sale WHERE item = 'item-042'");
    bad |= run(db, "rollback",
               "BEGIN; DELETE FROM sale WHERE amount < 20; SELECT count(*) AS left_ FROM sale;"
               " ROLLBACK; SELECT count(*) AS after FROM sale");
    bad |= run(db, "cte",
               "WITH RECURSIVE fib(i, a, b) AS (SELECT 1, 0, 1 UNION ALL"
               " SELECT i + 1, b, a + b FROM fib WHERE i < 40)"
               " SELECT group_concat(a, ',') AS fib FROM (SELECT a FROM fib WHERE i % 8 = 0)");
    bad |= run(db, "strings", "SELECT upper(name) || '/' || lower(country) AS s, length(name) AS l,"
                              " substr(name, 2, 3) AS sub, hex(name) AS h FROM city ORDER BY name");
    bad |= run(db, "window", "SELECT city, amount, sum(amount) OVER (PARTITION BY city ORDER BY id"
                             " ROWS 2 PRECEDING) AS run FROM sale WHERE id <= 8 ORDER BY id");
    bad |= !run(db, "error", "SELECT * FROM missing_table");
    printf("changes %d, rows %d\n", sqlite3_total_changes(db), rows_seen);
    sqlite3_close(db);
    return bad ? 1 : rows_seen % 50 + 20;
}
