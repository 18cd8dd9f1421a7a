/* test_stress.c - the write cache and the allocator under many threads,
 * through the public API, judged by qemu-img; and sticky errors.
 *
 * Stress: 32 threads write their own random sets of guest clusters into
 * one image (zcow_write_cluster for single clusters, zcow_write for short
 * runs, from aligned and unaligned buffers) - text, random, half-zero,
 * repeated and all-zero data - for a bounded time, while reading some of
 * their clusters back (read-your-writes) and four of them flushing now and
 * then.  ZCOW_FAULT_DELAY_US=200 puts random sleeps between allocation and
 * write, so that chunks arrive at the cache in every order.  Then
 * zcow_close(); `qemu-img check` must exit 0, and `qemu-img convert -O raw`
 * must give back every byte written (the data is regenerated from the seed)
 * and zeros elsewhere.  Rounds cover 4 KiB, 64 KiB and 2 MiB clusters, zlib
 * and zstd, O_DIRECT and the page cache, and the smallest cache bound.
 *
 * Sticky errors: child processes (fault injection reads its environment
 * once) run with ZCOW_FAULT=write:K:EIO for K from 1 past the count of
 * writes, with several writer threads: once any call has returned an
 * error, every call started afterwards - zcow_write, zcow_write_cluster,
 * zcow_flush, zcow_close - must return one; the temporary file of the
 * atomic image must be gone after zcow_close() fails, and no destination
 * may appear.
 *
 * TEST_SEED reproduces a run; STRESS_SECONDS sets the time of each stress
 * round (default 2, 1 under the sanitizers). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "unit.h"
#include "zcow.h"

#define THREADS 32
#define STICKY_THREADS 4

static char tmpdir[4096];

/* ---- test data, regenerated from the seed ---------------------------------- */

enum kind { K_ZERO, K_TEXT, K_RANDOM, K_HALF, K_REPEAT, K_KINDS };

static enum kind cluster_kind(int round, uint64_t gci)
{
    uint64_t s = unit_stream(((uint64_t)round << 40) ^ gci ^ 0x5a5a);
    unsigned v = (unsigned)(unit_rand(&s) % 16);
    if (v < 2)
        return K_ZERO;
    if (v < 8)
        return K_TEXT;
    if (v < 11)
        return K_RANDOM;
    if (v < 14)
        return K_HALF;
    return K_REPEAT;
}

/* The guest data of cluster GCI in round ROUND: CS bytes into BUF. */
static void cluster_data(int round, uint64_t gci, uint32_t cs, uint8_t *buf)
{
    static const char *const words[] = {
        "qcow2 ", "cluster ", "zcow ", "the ", "compressed ", "write ", "cache ", "of ",
        "O_DIRECT ", "refcount ", "L2 ", "table\n", "backup ", "a ", "host ", "guest ",
    };
    uint64_t s = unit_stream(((uint64_t)round << 40) ^ gci);
    enum kind k = cluster_kind(round, gci);
    switch (k) {
    case K_ZERO:
        memset(buf, 0, cs);
        break;
    case K_RANDOM:
        unit_fill_random(&s, buf, cs);
        break;
    case K_HALF: /* compresses to about half */
        unit_fill_random(&s, buf, cs / 2);
        memset(buf + cs / 2, 0, cs - cs / 2);
        break;
    case K_REPEAT: {
        uint8_t b = (uint8_t)(unit_rand(&s) | 1);
        memset(buf, b, cs);
        buf[unit_rand(&s) % cs] ^= 0x80; /* not all clusters alike */
        break;
    }
    case K_TEXT:
    default: {
        uint32_t i = 0;
        uint64_t r = 0;
        int bits = 0;
        while (i < cs) {
            if (bits < 4) {
                r = unit_rand(&s);
                bits = 64;
            }
            const char *w = words[r & 15];
            r >>= 4;
            bits -= 4;
            while (*w && i < cs)
                buf[i++] = (uint8_t)*w++;
        }
        break;
    }
    }
}

/* ---- one stress round ------------------------------------------------------------ */

struct extent {
    uint64_t first; /* guest cluster index */
    uint32_t count;
};

struct round {
    int id;
    const char *name;
    uint32_t cs;
    uint64_t vsize;
    zcow_image *img;
    struct extent *ext;
    size_t n_ext;
    uint8_t *written;   /* per guest cluster: 1 once written (set by its owner) */
    double deadline;
    atomic_long writes, reads, flushes, clusters;
    atomic_int stop;    /* set on the first failure */
};

struct worker {
    struct round *rd;
    int id;
};

static uint64_t n_clusters(const struct round *rd) { return (rd->vsize + rd->cs - 1) / rd->cs; }

/* Bytes of guest cluster GCI inside the image (less for the last one). */
static uint32_t cluster_len(const struct round *rd, uint64_t gci)
{
    uint64_t end = (gci + 1) * rd->cs;
    return end <= rd->vsize ? rd->cs : (uint32_t)(rd->vsize - gci * rd->cs);
}

static void *stress_thread(void *arg)
{
    struct worker *wk = arg;
    struct round *rd = wk->rd;
    uint32_t cs = rd->cs;
    uint32_t max_ext = cs >= (1u << 20) ? 1 : 4;
    /* One spare alignment unit: some writes come from an unaligned buffer. */
    uint8_t *mem = NULL;
    uint8_t *check = malloc(cs);
    if (posix_memalign((void **)&mem, 4096, (size_t)max_ext * cs + 4096) != 0 || !check) {
        CHECK(!"out of memory");
        atomic_store(&rd->stop, 1);
        free(check);
        return NULL;
    }
    uint64_t rs = unit_stream(((uint64_t)rd->id << 32) ^ (uint64_t)wk->id ^ 0xabcdef);
    size_t done = 0; /* extents of mine written so far */
    for (size_t e = (size_t)wk->id; e < rd->n_ext; e += THREADS) {
        if (atomic_load(&rd->stop) || unit_now() > rd->deadline)
            break;
        const struct extent *x = &rd->ext[e];
        uint8_t *buf = mem + ((unit_rand(&rs) % 4 == 0) ? 8 : 0);
        size_t len = 0;
        for (uint32_t i = 0; i < x->count; i++) {
            cluster_data(rd->id, x->first + i, cs, buf + (size_t)i * cs);
            len += cluster_len(rd, x->first + i);
        }
        uint64_t off = x->first * cs;
        int r = x->count == 1 && unit_rand(&rs) % 4 != 0
                    ? zcow_write_cluster(rd->img, off, buf, len)
                    : zcow_write(rd->img, off, buf, len);
        CHECKF(r == 0, "%s: write of %u clusters at %llu: %d %s", rd->name, x->count,
               (unsigned long long)off, r, zcow_get_error());
        if (r != 0) {
            atomic_store(&rd->stop, 1);
            break;
        }
        for (uint32_t i = 0; i < x->count; i++)
            rd->written[x->first + i] = 1;
        atomic_fetch_add(&rd->writes, 1);
        atomic_fetch_add(&rd->clusters, x->count);
        done++;

        /* Read back one of my clusters: from the cache or the file. */
        if (unit_rand(&rs) % 8 == 0) {
            size_t back = (size_t)wk->id + THREADS * (unit_rand(&rs) % done);
            const struct extent *y = &rd->ext[back];
            uint64_t gci = y->first + unit_rand(&rs) % y->count;
            uint32_t clen = cluster_len(rd, gci);
            r = zcow_read(rd->img, gci * cs, check, clen);
            cluster_data(rd->id, gci, cs, buf);
            CHECKF(r == 0 && memcmp(check, buf, clen) == 0,
                   "%s: read-your-writes of guest cluster %llu: %d %s", rd->name,
                   (unsigned long long)gci, r, r ? zcow_get_error() : "wrong data");
            atomic_fetch_add(&rd->reads, 1);
        }
        if (wk->id % 8 == 0 && done % 8 == 0) { /* four threads flush now and then */
            r = zcow_flush(rd->img);
            CHECKF(r == 0, "%s: flush: %d %s", rd->name, r, zcow_get_error());
            atomic_fetch_add(&rd->flushes, 1);
        }
    }
    free(mem);
    free(check);
    return NULL;
}

/* Run a shell command; returns its exit status (or 128 + signal). */
static int shell(const char *cmd)
{
    int st = system(cmd);
    if (st == -1)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The image against the data: qemu-img check, then a raw copy by
 * qemu-img convert compared cluster by cluster. */
static void verify_round(struct round *rd, const char *path)
{
    char cmd[9000], raw[4300];
    snprintf(cmd, sizeof(cmd), "qemu-img check -q -f qcow2 '%s'", path);
    int st = shell(cmd);
    CHECKF(st == 0, "%s: qemu-img check exit %d", rd->name, st);
    if (st != 0) {
        snprintf(cmd, sizeof(cmd), "qemu-img check -f qcow2 '%s' 2>&1 | head -20", path);
        shell(cmd);
    }
    snprintf(raw, sizeof(raw), "%s.raw", path);
    snprintf(cmd, sizeof(cmd), "qemu-img convert -f qcow2 -O raw '%s' '%s'", path, raw);
    st = shell(cmd);
    CHECKF(st == 0, "%s: qemu-img convert exit %d", rd->name, st);
    int fd = open(raw, O_RDONLY | O_CLOEXEC);
    CHECKF(fd >= 0, "%s: cannot open '%s': %s", rd->name, raw, strerror(errno));
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0)
        CHECKF((uint64_t)sb.st_size == rd->vsize, "%s: raw copy of %lld bytes, want %llu",
               rd->name, (long long)sb.st_size, (unsigned long long)rd->vsize);
    uint8_t *want = malloc(rd->cs), *got = malloc(rd->cs);
    uint64_t bad = 0, n = n_clusters(rd);
    for (uint64_t gci = 0; fd >= 0 && want && got && gci < n; gci++) {
        uint32_t len = cluster_len(rd, gci);
        ssize_t k = pread(fd, got, len, (off_t)(gci * rd->cs));
        if (rd->written[gci])
            cluster_data(rd->id, gci, rd->cs, want);
        else
            memset(want, 0, rd->cs);
        if (k != (ssize_t)len || memcmp(want, got, len) != 0) {
            if (bad++ < 5)
                CHECKF(0, "%s: guest cluster %llu (%s, kind %d) reads back wrong", rd->name,
                       (unsigned long long)gci, rd->written[gci] ? "written" : "not written",
                       (int)cluster_kind(rd->id, gci));
        }
    }
    CHECKF(bad == 0, "%s: %llu of %llu clusters wrong", rd->name, (unsigned long long)bad,
           (unsigned long long)n);
    free(want);
    free(got);
    if (fd >= 0)
        close(fd);
    unlink(raw);
}

static void stress_round(int id, const char *name, uint32_t cs, uint64_t vsize, int type,
                         int cache_mode, unsigned cache_clusters, double seconds)
{
    struct round rd = { .id = id, .name = name, .cs = cs, .vsize = vsize };
    char path[4200];
    snprintf(path, sizeof(path), "%s/stress-%d.qcow2", tmpdir, id);
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_virtual_size(o, vsize) == 0 &&
          zcow_create_opts_set_cluster_size(o, cs) == 0 &&
          zcow_create_opts_set_compression_type(o, type) == 0 &&
          zcow_create_opts_set_cache_mode(o, cache_mode) == 0 &&
          zcow_create_opts_set_drop_pages(o, cache_mode == ZCOW_CACHE_WRITEBACK) == 0 &&
          zcow_create_opts_set_cache_clusters(o, cache_clusters) == 0 &&
          zcow_create_opts_set_atomic(o, id % 2) == 0);

    /* Guest clusters cut into extents of 1..4 (mostly 1), shuffled, and
     * dealt out to the threads round-robin. */
    uint64_t n = n_clusters(&rd);
    uint32_t max_ext = cs >= (1u << 20) ? 1 : 4;
    rd.ext = calloc(n, sizeof(*rd.ext));
    rd.written = calloc(n, 1);
    if (!rd.ext || !rd.written) {
        CHECK(!"out of memory");
        free(rd.ext);
        free(rd.written);
        zcow_create_opts_free(o);
        return;
    }
    uint64_t rs = unit_stream(((uint64_t)id << 32) ^ 0x77);
    for (uint64_t g = 0; g < n;) {
        uint32_t c = unit_rand(&rs) % 3 == 0 ? (uint32_t)unit_range(&rs, 1, max_ext) : 1;
        if (c > n - g)
            c = (uint32_t)(n - g);
        rd.ext[rd.n_ext++] = (struct extent){ g, c };
        g += c;
    }
    for (size_t i = rd.n_ext - 1; i > 0; i--) {
        size_t j = unit_rand(&rs) % (i + 1);
        struct extent t = rd.ext[i];
        rd.ext[i] = rd.ext[j];
        rd.ext[j] = t;
    }

    int r = zcow_create(path, o, &rd.img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "%s: zcow_create: %d %s", name, r, zcow_get_error());
    if (r != 0) {
        free(rd.ext);
        free(rd.written);
        return;
    }
    double t0 = unit_now();
    rd.deadline = t0 + seconds;
    pthread_t tids[THREADS];
    struct worker wk[THREADS];
    int started = 0;
    for (int i = 0; i < THREADS; i++) {
        wk[i] = (struct worker){ &rd, i };
        if (pthread_create(&tids[i], NULL, stress_thread, &wk[i]) != 0)
            break;
        started++;
    }
    CHECKF(started == THREADS, "%s: started %d threads of %d", name, started, THREADS);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    zcow_info *info = zcow_info_new();
    CHECK(zcow_get_info(rd.img, info) == 0);
    r = zcow_close(rd.img);
    double t1 = unit_now();
    CHECKF(r == 0, "%s: zcow_close: %d %s", name, r, zcow_get_error());
    printf("%s: %ld clusters of %llu in %ld writes by %d threads in %.1f s (%llu compressed, "
           "%llu normal, %llu zero), %ld reads back, %ld flushes\n",
           name, atomic_load(&rd.clusters), (unsigned long long)n, atomic_load(&rd.writes), started,
           t1 - t0, (unsigned long long)zcow_info_get_clusters_compressed(info),
           (unsigned long long)zcow_info_get_clusters_normal(info),
           (unsigned long long)zcow_info_get_clusters_zero(info), atomic_load(&rd.reads),
           atomic_load(&rd.flushes));
    zcow_info_free(info);
    fflush(stdout);
    CHECKF(atomic_load(&rd.clusters) > 0, "%s: only %ld clusters written", name,
           atomic_load(&rd.clusters));
    if (r == 0)
        verify_round(&rd, path);
    unlink(path);
    free(rd.ext);
    free(rd.written);
}

/* ---- sticky errors (child processes) ----------------------------------------------- */

struct sticky {
    zcow_image *img;
    const char *path;
    uint32_t cs;
    uint64_t n;             /* guest clusters */
    atomic_int err_seen;    /* some call has returned an error */
    atomic_long calls, errors;
};

struct sticky_arg {
    struct sticky *s;
    int id;
};

static void *sticky_thread(void *arg)
{
    struct sticky_arg *a = arg;
    struct sticky *s = a->s;
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, 4 * (size_t)s->cs) != 0)
        return NULL;
    uint64_t rs = unit_stream(0x5171c4 + (uint64_t)a->id);
    int after = 0; /* calls made after my own error */
    for (uint64_t g = (uint64_t)a->id * 4; g < s->n && after < 5; g += STICKY_THREADS * 4) {
        uint32_t count = (uint32_t)(s->n - g < 4 ? s->n - g : 4);
        for (uint32_t i = 0; i < count; i++)
            cluster_data(99, g + i, s->cs, buf + (size_t)i * s->cs);
        int before = atomic_load(&s->err_seen);
        int r;
        const char *what;
        if (a->id == 0 && unit_rand(&rs) % 4 == 0) {
            what = "zcow_flush";
            r = zcow_flush(s->img);
        } else if (unit_rand(&rs) % 2) {
            what = "zcow_write_cluster";
            r = zcow_write_cluster(s->img, g * s->cs, buf, s->cs);
        } else {
            what = "zcow_write";
            r = zcow_write(s->img, g * s->cs, buf, (size_t)count * s->cs);
        }
        atomic_fetch_add(&s->calls, 1);
        if (before)
            CHECKF(r < 0, "%s after an error returned %d: success after lost data", what, r);
        if (r < 0) {
            const char *msg = zcow_get_error();
            CHECKF(r == -EIO, "%s: %d, want -EIO (%s)", what, r, msg);
            CHECKF(strstr(msg, s->path) != NULL, "%s: the message names no file: '%s'", what,
                   msg);
            atomic_fetch_add(&s->errors, 1);
            atomic_store(&s->err_seen, 1);
            after++;
        }
    }
    free(buf);
    return NULL;
}

/* Exit status: 0 passed and the fault was hit (the close failed), 2 passed
 * with no error at all, 1 failed. */
static int child_sticky(const char *path)
{
    uint32_t cs = 64 << 10;
    uint64_t size = 8u << 20;
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_cluster_size(o, cs) == 0 &&
          zcow_create_opts_set_virtual_size(o, size) == 0 &&
          zcow_create_opts_set_atomic(o, true) == 0 &&
          zcow_create_opts_set_cache_clusters(o, 1) == 0);
    struct sticky s = { .path = path, .cs = cs, .n = size / cs };
    int r = zcow_create(path, o, &s.img);
    zcow_create_opts_free(o);
    if (r < 0) { /* an injected fault on open is not ours to judge */
        fprintf(stderr, "zcow_create: %s\n", zcow_get_error());
        return 1;
    }
    pthread_t tids[STICKY_THREADS];
    struct sticky_arg args[STICKY_THREADS];
    for (int i = 0; i < STICKY_THREADS; i++) {
        args[i] = (struct sticky_arg){ &s, i };
        CHECK(pthread_create(&tids[i], NULL, sticky_thread, &args[i]) == 0);
    }
    for (int i = 0; i < STICKY_THREADS; i++)
        pthread_join(tids[i], NULL);
    int before = atomic_load(&s.err_seen);
    r = zcow_flush(s.img);
    if (before)
        CHECKF(r < 0, "zcow_flush after an error returned %d", r);
    if (r < 0)
        atomic_store(&s.err_seen, 1);
    int seen = atomic_load(&s.err_seen);
    r = zcow_close(s.img);
    if (seen)
        CHECKF(r < 0, "zcow_close after an error returned %d: success after lost data", r);
    /* No temporary file, and no destination unless the close succeeded. */
    char dir[4200], base[512];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    *slash = 0;
    snprintf(base, sizeof(base), "%s.zcow-tmp-", slash + 1);
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));)
        CHECKF(strncmp(e->d_name, base, strlen(base)) != 0, "temporary file left: %s",
               e->d_name);
    if (d)
        closedir(d);
    struct stat sb;
    if (r < 0) {
        CHECKF(stat(path, &sb) != 0 && errno == ENOENT, "zcow_close failed (%s), yet '%s' exists",
               zcow_get_error(), path);
    } else {
        char cmd[4400];
        snprintf(cmd, sizeof(cmd), "qemu-img check -q -f qcow2 '%s'", path);
        CHECKF(shell(cmd) == 0, "no fault hit, yet qemu-img check fails");
    }
    unlink(path);
    int failed = unit_done();
    return failed ? 1 : r < 0 ? 0 : 2;
}

static int run_child(const char *fault, const char *stats, const char *path)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (fault)
            setenv("ZCOW_FAULT", fault, 1);
        if (stats)
            setenv("ZCOW_FAULT_STATS", stats, 1);
        unsetenv("ZCOW_FAULT_DELAY_US");
        char seed[32];
        snprintf(seed, sizeof(seed), "%llu", (unsigned long long)unit_seed);
        setenv("TEST_SEED", seed, 1);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO); /* the child's summary line */
        execl("/proc/self/exe", "test_stress", "--child-sticky", path, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void test_sticky(void)
{
    char path[4200], stats[4200];
    snprintf(path, sizeof(path), "%s/sticky.qcow2", tmpdir);
    snprintf(stats, sizeof(stats), "%s/sticky.stats", tmpdir);
    int r = run_child(NULL, stats, path);
    CHECKF(r == 2, "sticky child without a fault: exit %d", r);
    long writes = 0, n;
    char op[32];
    FILE *f = fopen(stats, "r");
    while (f && fscanf(f, "%31s %ld", op, &n) == 2)
        if (!strcmp(op, "write"))
            writes = n;
    if (f)
        fclose(f);
    unlink(stats);
    CHECKF(writes > 2, "a clean sticky run made %ld writes", writes);
    int hit = 0, clean = 0, runs = 0;
    /* Every K; under the sanitizers (slow children) every third. */
    long step = UNIT_SANITIZED ? 3 : 1;
    for (long k = 1; k <= writes + 1; k++) {
        if ((k - 1) % step != 0 && k != writes + 1)
            continue;
        char fault[64];
        snprintf(fault, sizeof(fault), "write:%ld:EIO", k);
        r = run_child(fault, NULL, path);
        CHECKF(r == 0 || r == 2, "sticky child with ZCOW_FAULT=%s: exit %d", fault, r);
        hit += r == 0;
        clean += r == 2;
        runs++;
    }
    /* Thread timing moves a few writes; most faults must be hit. */
    CHECKF(hit >= runs * 3 / 4, "only %d of %d faults hit", hit, runs);
    printf("sticky: %d faults (write:K:EIO, K = 1..%ld), %d hit and reported by every later "
           "call, %d not hit\n", runs, writes + 1, hit, clean);
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--child-sticky")) {
        unit_init("test_stress (sticky child)");
        return child_sticky(argv[2]);
    }
    unit_init("test_stress");
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/zcow-stress-XXXXXX", t && *t ? t : "/var/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "test_stress: cannot create '%s': %s\n", tmpdir, strerror(errno));
        return 1;
    }
    test_sticky();

    /* Before the first I/O of this process: read once. */
    setenv("ZCOW_FAULT_DELAY_US", "200", 0);
    const char *sec = getenv("STRESS_SECONDS");
    double s = sec && *sec ? atof(sec) : UNIT_SANITIZED ? 1.0 : 2.0;
    unsigned shift = UNIT_SANITIZED ? 2 : 0;
    const uint64_t MiB = 1u << 20;
    stress_round(1, "64k zlib O_DIRECT", 64u << 10, (256 * MiB >> shift) - 3 * 512,
                 ZCOW_COMPRESSION_ZLIB, ZCOW_CACHE_NONE, 0, s);
    stress_round(2, "4k zstd O_DIRECT smallest cache", 4u << 10, (64 * MiB >> shift) - 512,
                 ZCOW_COMPRESSION_ZSTD, ZCOW_CACHE_NONE, 1, s);
    stress_round(3, "64k zstd writeback drop-pages", 64u << 10, 128 * MiB >> shift,
                 ZCOW_COMPRESSION_ZSTD, ZCOW_CACHE_WRITEBACK, 0, s);
    stress_round(4, "2M zlib O_DIRECT", 2u << 20, (128 * MiB >> shift) - 2 * MiB + 4096,
                 ZCOW_COMPRESSION_ZLIB, ZCOW_CACHE_NONE, 0, s);

    rmdir(tmpdir);
    return unit_done();
}
