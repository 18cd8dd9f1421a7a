/* test_error.c - the first-failure keeper (error.h): the first failure
 * and its message are kept, whichever thread asks for them; with
 * positions, the lowest position wins whatever the order of arrival. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "unit.h"
#include "zcow.h"

static void test_first_wins(void)
{
    struct zerr_first f;
    zerr_first_init(&f);
    CHECK(zerr_failed(&f) == 0);
    CHECK(zerr_kept(&f) == 0);
    CHECK(zerr_keep(&f, 0) == 0); /* success keeps nothing */
    CHECK(zerr_failed(&f) == 0);

    CHECK(zerr_keep(&f, zerr(EIO, "cannot read 'a'")) == -EIO);
    CHECK(zerr_keep(&f, zerr(ENOSPC, "cannot write 'b'")) == -ENOSPC);
    CHECK(zerr_failed(&f) == -EIO);
    zerr(EINVAL, "something else");
    CHECK(zerr_kept(&f) == -EIO);
    CHECKF(!strcmp(zcow_get_error(), "cannot read 'a'"), "message '%s'", zcow_get_error());
    zerr_first_destroy(&f);

    /* A failure without a message still names its errno. */
    zerr_first_init(&f);
    zerr_clear();
    zerr_keep(&f, -ENOMEM);
    zerr_clear();
    CHECK(zerr_kept(&f) == -ENOMEM);
    CHECKF(!strcmp(zcow_get_error(), strerror(ENOMEM)), "message '%s'", zcow_get_error());
    zerr_first_destroy(&f);
}

static void test_lowest_position_wins(void)
{
    struct zerr_first f;
    zerr_first_init(&f);
    zerr_keep_at(&f, zerr(EIO, "at 300"), 300);
    zerr_keep_at(&f, zerr(EIO, "at 500"), 500);
    zerr_keep_at(&f, zerr(ENXIO, "at 100"), 100);
    zerr_keep_at(&f, zerr(EIO, "at 100 again"), 100); /* a tie: the first stays */
    zerr_keep_at(&f, zerr(EIO, "at 200"), 200);
    CHECK(zerr_kept_at(&f) == 100);
    CHECK(zerr_kept(&f) == -ENXIO);
    CHECKF(!strcmp(zcow_get_error(), "at 100"), "message '%s'", zcow_get_error());
    zerr_first_destroy(&f);
}

/* Many threads fail at once, each at its own position with its own
 * message; the main thread, which failed at nothing, reports the lowest. */
#define N_THREADS 16
#define ROUNDS 200

struct racer {
    struct zerr_first *f;
    pthread_barrier_t *go;
    uint64_t at;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    pthread_barrier_wait(r->go);
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t at = r->at + (uint64_t)i * N_THREADS;
        zerr_keep_at(r->f, zerr(EIO, "failed at %llu", (unsigned long long)at), at);
        (void)zerr_failed(r->f);
    }
    return NULL;
}

static void test_threads(void)
{
    uint64_t st = unit_stream(1);
    for (int round = 0; round < 20; round++) {
        struct zerr_first f;
        zerr_first_init(&f);
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, N_THREADS);
        pthread_t t[N_THREADS];
        struct racer r[N_THREADS];
        uint64_t lowest = UINT64_MAX;
        for (int i = 0; i < N_THREADS; i++) {
            r[i] = (struct racer){ &f, &go, unit_range(&st, 1, 1u << 30) * N_THREADS + i };
            lowest = r[i].at < lowest ? r[i].at : lowest;
        }
        for (int i = 0; i < N_THREADS; i++)
            pthread_create(&t[i], NULL, race, &r[i]);
        for (int i = 0; i < N_THREADS; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&go);
        char want[64];
        snprintf(want, sizeof(want), "failed at %llu", (unsigned long long)lowest);
        zerr_clear();
        CHECK(zerr_kept(&f) == -EIO);
        CHECKF(zerr_kept_at(&f) == lowest, "kept %llu, lowest %llu",
               (unsigned long long)zerr_kept_at(&f), (unsigned long long)lowest);
        CHECKF(!strcmp(zcow_get_error(), want), "message '%s', want '%s'", zcow_get_error(), want);
        zerr_first_destroy(&f);
    }
}

int main(void)
{
    unit_init("test_error");
    test_first_wins();
    test_lowest_position_wins();
    test_threads();
    return unit_done();
}
