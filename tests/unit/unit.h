/* unit.h - a tiny harness for zcow's unit tests.
 *
 * Each test is one C file with its own main():
 *
 *     int main(void)
 *     {
 *         unit_init("test_x");
 *         CHECK(1 + 1 == 2);
 *         CHECKF(n == 3, "n = %d", n);
 *         return unit_done();
 *     }
 *
 * CHECK prints file:line and the failed expression, counts the failure and
 * goes on.  unit_done() prints a summary and returns 0 (all passed) or 1.
 * Randomised parts draw from unit_rand(); the seed is printed on every run
 * and taken from TEST_SEED to reproduce a failure (as ISA-L's tests do).
 * The counters are atomic: CHECK may be used from many threads. */
#ifndef ZCOW_UNIT_H
#define ZCOW_UNIT_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Built with a sanitizer: loops that only add volume may run shorter. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define UNIT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define UNIT_SANITIZED 1
#endif
#endif
#ifndef UNIT_SANITIZED
#define UNIT_SANITIZED 0
#endif

/* Print at most this many failures: a broken loop must not drown the log. */
#define UNIT_MAX_REPORTS 50

static atomic_long unit_checks;
static atomic_long unit_failures;
static uint64_t unit_seed;
static const char *unit_name = "test";

static void unit_report(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), unused));

static void unit_report(const char *file, int line, const char *expr, const char *fmt, ...)
{
    long n = atomic_fetch_add(&unit_failures, 1) + 1;
    if (n > UNIT_MAX_REPORTS) {
        if (n == UNIT_MAX_REPORTS + 1)
            fprintf(stderr, "%s: more failures, not shown\n", unit_name);
        return;
    }
    char extra[256] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(extra, sizeof(extra), fmt, ap);
        va_end(ap);
    }
    fprintf(stderr, "%s:%d: CHECK failed: %s%s%s\n", file, line, expr, *extra ? ": " : "", extra);
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        atomic_fetch_add_explicit(&unit_checks, 1, memory_order_relaxed);                          \
        if (!(cond))                                                                               \
            unit_report(__FILE__, __LINE__, #cond, NULL);                                          \
    } while (0)

/* CHECK with a printf-style explanation of the values involved. */
#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        atomic_fetch_add_explicit(&unit_checks, 1, memory_order_relaxed);                          \
        if (!(cond))                                                                               \
            unit_report(__FILE__, __LINE__, #cond, __VA_ARGS__);                                   \
    } while (0)

/* splitmix64: small, fast, and good enough for test data. */
static inline uint64_t unit_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A uniform value in [lo, hi]. */
static inline uint64_t unit_range(uint64_t *state, uint64_t lo, uint64_t hi)
{
    return lo + unit_rand(state) % (hi - lo + 1);
}

/* A state derived from the run's seed, distinct per STREAM (e.g. thread). */
static inline uint64_t unit_stream(uint64_t stream)
{
    uint64_t s = unit_seed ^ (stream * 0xd1b54a32d192ed03ull);
    unit_rand(&s);
    return s;
}

static inline void unit_fill_random(uint64_t *state, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len >= 8) {
        uint64_t v = unit_rand(state);
        memcpy(p, &v, 8);
        p += 8;
        len -= 8;
    }
    if (len) {
        uint64_t v = unit_rand(state);
        memcpy(p, &v, len);
    }
}

static inline void unit_init(const char *name)
{
    unit_name = name;
    const char *env = getenv("TEST_SEED");
    if (env && *env)
        unit_seed = strtoull(env, NULL, 0);
    else
        unit_seed = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    printf("%s: seed %llu (reproduce with TEST_SEED=%llu)\n", name,
           (unsigned long long)unit_seed, (unsigned long long)unit_seed);
    fflush(stdout);
}

static inline int unit_done(void)
{
    long f = atomic_load(&unit_failures), n = atomic_load(&unit_checks);
    printf("%s: %ld checks, %ld failed (seed %llu)\n", unit_name, n, f,
           (unsigned long long)unit_seed);
    return f ? 1 : 0;
}

/* Seconds since an arbitrary start, for bounding stress loops. */
static inline double unit_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#endif
