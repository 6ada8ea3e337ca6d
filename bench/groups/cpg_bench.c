/* cpg_bench: the corosync side of bench/groups, doing what groups_bench does through
 * CPG (agreed order): one sender, receivers, one group.
 *
 *   cpg_bench send GROUP SIZE COUNT LATENCY MEMBERS
 *   cpg_bench recv GROUP LATENCY
 *
 * Message byte 0 is the kind (1 throughput, 2 latency probe with its send time in
 * microseconds at bytes 1..9, 3 end). A receiver prints the same line as groups_bench:
 * `recv msgs=N secs=T msgs_per_s=R mbit_per_s=B p50_us=X p99_us=Y`.
 *
 * Build: cc -O2 -o cpg_bench cpg_bench.c -lcpg   (Debian: libcpg-dev)
 */
#include <corosync/cpg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Pause between the throughput phase and the latency probes. */
#define SETTLE_US 1000000

static uint64_t now_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int members;
static uint64_t n, bytes, own1, own2, ended;
static double first, last;
static uint64_t *lat;
static size_t nlat, maxlat;

static void deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t nodeid, uint32_t pid,
                    void *msg, size_t len) {
    (void)h; (void)g; (void)nodeid;
    const unsigned char *m = msg;
    if (len < 1) return;
    if (pid == (uint32_t)getpid()) {
        if (m[0] == 1) own1++;
        else if (m[0] == 2) own2++;
    }
    if (m[0] == 1) {
        double t = mono();
        if (n == 0) first = t;
        last = t;
        n++;
        bytes += len;
    } else if (m[0] == 2 && len >= 9) {
        uint64_t sent;
        memcpy(&sent, m + 1, 8);
        if (nlat < maxlat) lat[nlat++] = now_us() - sent;
    } else if (m[0] == 3) {
        ended = 1;
    }
}

static void confchg(cpg_handle_t h, const struct cpg_name *g, const struct cpg_address *m, size_t nm,
                    const struct cpg_address *l, size_t nl, const struct cpg_address *j, size_t nj) {
    (void)h; (void)g; (void)m; (void)l; (void)nl; (void)j; (void)nj;
    members = (int)nm;
    if (getenv("CPG_BENCH_DEBUG")) fprintf(stderr, "cpg_bench: %d members\n", members);
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what, cs_error_t e) {
    fprintf(stderr, "cpg_bench: %s: error %d\n", what, (int)e);
    exit(1);
}

static void mcast(cpg_handle_t h, void *buf, size_t len) {
    struct iovec iov = {buf, len};
    for (;;) {
        cs_error_t e = cpg_mcast_joined(h, CPG_TYPE_AGREED, &iov, 1);
        if (e == CS_OK) return;
        if (e != CS_ERR_TRY_AGAIN) die("cpg_mcast_joined", e);
        cpg_dispatch(h, CS_DISPATCH_ALL);
        usleep(50);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: cpg_bench send GROUP SIZE COUNT LATENCY MEMBERS | recv GROUP LATENCY\n");
        return 2;
    }
    int sender = strcmp(argv[1], "send") == 0;
    if (sender && argc < 7) return 2;
    cpg_callbacks_t cb = {.cpg_deliver_fn = deliver, .cpg_confchg_fn = confchg};
    cpg_handle_t h;
    cs_error_t e;
    for (int tries = 0; (e = cpg_initialize(&h, &cb)) != CS_OK; tries++) {
        if (tries > 100) die("cpg_initialize", e);
        usleep(100000);
    }
    struct cpg_name g;
    memset(&g, 0, sizeof g);
    g.length = (uint32_t)strlen(argv[2]);
    memcpy(g.value, argv[2], g.length);
    if ((e = cpg_join(h, &g)) != CS_OK) die("cpg_join", e);
    if (!sender) {
        maxlat = (size_t)atol(argv[3]) + 1;
        lat = calloc(maxlat, sizeof *lat);
        while (!ended) {
            if ((e = cpg_dispatch(h, CS_DISPATCH_ONE)) != CS_OK) die("cpg_dispatch", e);
        }
        double secs = last - first;
        if (secs < 1e-6) secs = 1e-6;
        qsort(lat, nlat, sizeof *lat, cmp);
        uint64_t p50 = nlat ? lat[(size_t)(nlat * 0.50)] : 0;
        uint64_t p99 = nlat ? lat[(size_t)(nlat * 0.99) < nlat ? (size_t)(nlat * 0.99) : nlat - 1] : 0;
        printf("recv msgs=%llu secs=%.3f msgs_per_s=%.0f mbit_per_s=%.1f p50_us=%llu p99_us=%llu\n",
               (unsigned long long)n, secs, n / secs, bytes * 8.0 / secs / 1e6,
               (unsigned long long)p50, (unsigned long long)p99);
        cpg_finalize(h);
        return 0;
    }
    size_t size = (size_t)atol(argv[3]);
    uint64_t count = (uint64_t)atoll(argv[4]), probes = (uint64_t)atoll(argv[5]);
    int want = atoi(argv[6]);
    if (size < 16) size = 16;
    unsigned char *buf = malloc(size);
    memset(buf, 'x', size);
    while (members < want) {
        if ((e = cpg_dispatch(h, CS_DISPATCH_ONE)) != CS_OK) die("cpg_dispatch", e);
        usleep(1000);
    }
    if (getenv("CPG_BENCH_DEBUG")) fprintf(stderr, "cpg_bench: sending\n");
    double t0 = mono();
    buf[0] = 1;
    for (uint64_t i = 0; i < count; i++) {
        mcast(h, buf, size);
        if ((i & 63) == 0) cpg_dispatch(h, CS_DISPATCH_ALL);
    }
    /* The throughput phase ends when the sender has its own messages back, so the
     * latency probes do not queue behind it. */
    if (getenv("CPG_BENCH_DEBUG")) fprintf(stderr, "cpg_bench: sent, %llu back\n", (unsigned long long)own1);
    while (own1 < count) cpg_dispatch(h, CS_DISPATCH_ONE);
    if (getenv("CPG_BENCH_DEBUG")) fprintf(stderr, "cpg_bench: all back\n");
    double took = mono() - t0;
    /* The receivers may still be behind the sender: let them drain before probing, so
     * the probes measure latency, not the receivers' backlog (same pause in
     * groups_bench.rs). */
    usleep(SETTLE_US);
    buf[0] = 2;
    for (uint64_t i = 0; i < probes; i++) {
        uint64_t t = now_us();
        memcpy(buf + 1, &t, 8);
        mcast(h, buf, size);
        /* One probe in flight at a time: latency without queueing. */
        while (own2 <= i) {
            cs_error_t d = cpg_dispatch(h, CS_DISPATCH_ONE);
            if (getenv("CPG_BENCH_DEBUG")) fprintf(stderr, "cpg_bench: probe %llu dispatch %d own2 %llu\n", (unsigned long long)i, (int)d, (unsigned long long)own2);
        }
    }
    buf[0] = 3;
    mcast(h, buf, 1);
    while (!ended) cpg_dispatch(h, CS_DISPATCH_ONE);
    printf("send msgs=%llu secs=%.3f\n", (unsigned long long)count, took);
    cpg_finalize(h);
    return 0;
}
