/* Benchmark helper, built by benchmarks/_common.py into benchmarks/out/c_floor.
 *
 * Three roles, all timed with CLOCK_MONOTONIC (the clock of time.monotonic_ns()):
 *
 *   c_floor floor <sig> <total> <ack_fd>
 *       The latency floor: block <sig>, print READY, then <total> times wait for it with
 *       sigwaitinfo(), take the time, write one ack byte.  Prints the times, one a line.
 *
 *   c_floor send <pid> <sig> <total> <ack_fd> <gap_min_us> <gap_max_us> <queue>
 *       The paced sender: <total> times sleep a random gap, take the time, kill() (or
 *       sigqueue() when <queue> is 1), then wait for the receiver's ack byte.  Only
 *       the time just before kill() and the receiver's own handler time are compared:
 *       the ack round trip is never part of a figure.  Prints the send times; stops
 *       early (exit 3) when the ack pipe reaches EOF or an ack takes over 10 s.
 *
 *   c_floor storm <pid> <sig> <duration_ms> <queue> [<rate>]
 *       As fast as it can for <duration_ms>: sigqueue() (value = sequence number) or
 *       kill().  EAGAIN (the kernel's queue of pending signals is full) is retried and
 *       not counted as sent.  With <rate> (signals/s), paced to it instead: batches of
 *       up to 64 whenever the sent count falls behind rate x elapsed time.  Prints
 *       "<sent> <eagain>".
 *
 *   c_floor sink <sig> <duration_ms>
 *       The storm's floor: what the machine leaves the main line of *any* receiver.  A
 *       handler that only counts <sig> and stamps the first and last; the main line
 *       sleeps 1 ms at a time, like an idle event loop, for <duration_ms> after READY.
 *       Prints "<handled> <main-line wake-ups between the first and last signal>
 *       <that window, ns> <the longest stretch in it without a wake-up, ns>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_us(long us)
{
    if (us <= 0)
        return;
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
    }
}

static int role_floor(int sig, long total, int ack_fd)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) {
        perror("sigprocmask");
        return 2;
    }
    int64_t *t1 = calloc((size_t)total, sizeof *t1);
    if (t1 == NULL)
        return 2;
    printf("READY\n");
    fflush(stdout);
    long n = 0;
    while (n < total) {
        siginfo_t info;
        int got = sigwaitinfo(&set, &info);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            perror("sigwaitinfo");
            break;
        }
        t1[n++] = now_ns();
        char b = 'a';
        if (write(ack_fd, &b, 1) != 1)
            break;
    }
    for (long i = 0; i < n; i++)
        printf("%lld\n", (long long)t1[i]);
    return n == total ? 0 : 3;
}

static int role_send(pid_t pid, int sig, long total, int ack_fd, long gmin, long gmax, int queue)
{
    int64_t *t0 = calloc((size_t)total, sizeof *t0);
    if (t0 == NULL)
        return 2;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* precise gaps */
    srand((unsigned)getpid());
    long n = 0;
    int rc = 0;
    for (; n < total; n++) {
        long gap = gmin + (gmax > gmin ? rand() % (gmax - gmin + 1) : 0);
        sleep_us(gap);
        int64_t t = now_ns();
        int r;
        if (queue) {
            union sigval v;
            v.sival_ptr = (void *)(intptr_t)n;
            r = sigqueue(pid, sig, v);
        } else {
            r = kill(pid, sig);
        }
        if (r != 0) {
            perror("kill");
            rc = 3;
            break;
        }
        t0[n] = t;
        struct pollfd p = {ack_fd, POLLIN, 0};
        int pr;
        while ((pr = poll(&p, 1, 10000)) < 0 && errno == EINTR) {
        }
        if (pr == 0) {
            fprintf(stderr, "c_floor send: no ack for signal %ld within 10 s\n", n);
            rc = 3;
            break;
        }
        char b;
        ssize_t got = read(ack_fd, &b, 1);
        if (got != 1) { /* EOF: the receiver ended (e.g. a variant that is unavailable) */
            rc = 3;
            break;
        }
    }
    for (long i = 0; i < n; i++)
        printf("%lld\n", (long long)t0[i]);
    return rc;
}

static int role_storm(pid_t pid, int sig, long duration_ms, int queue, long rate)
{
    int64_t start = now_ns(), end = start + (int64_t)duration_ms * 1000000;
    unsigned long long sent = 0, eagain = 0;
    for (int64_t t = start; t < end; t = now_ns()) {
        int batch = 64;
        if (rate > 0) {
            long long due = (long long)((double)(t - start) * (double)rate / 1e9) - (long long)sent;
            if (due <= 0) {
                sleep_us(20);
                continue;
            }
            batch = due < 64 ? (int)due : 64;
        }
        for (int k = 0; k < batch; k++) {
            int r;
            if (queue) {
                union sigval v;
                v.sival_ptr = (void *)(intptr_t)sent;
                r = sigqueue(pid, sig, v);
            } else {
                r = kill(pid, sig);
            }
            if (r == 0) {
                sent++;
            } else if (errno == EAGAIN) {
                eagain++;
            } else {
                perror("storm");
                printf("%llu %llu\n", sent, eagain);
                return 3;
            }
        }
    }
    printf("%llu %llu\n", sent, eagain);
    return 0;
}

static volatile sig_atomic_t g_sunk;
static int64_t g_sink_first, g_sink_last; /* written by the handler only */
#define SINK_MAX_WAKES 200000
static int64_t g_wakes[SINK_MAX_WAKES];

static void sink_handler(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)si;
    (void)ctx;
    int64_t t = now_ns(); /* clock_gettime is async-signal-safe */
    if (g_sink_first == 0)
        g_sink_first = t;
    g_sink_last = t;
    g_sunk = g_sunk + 1;
}

static int role_sink(int sig, long duration_ms)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sink_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0) {
        perror("sigaction");
        return 3;
    }
    printf("READY\n");
    fflush(stdout);
    int64_t last = now_ns(), end = last + (int64_t)duration_ms * 1000000;
    long n = 0;
    while (last < end && n < SINK_MAX_WAKES) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL); /* EINTR: a wake-up all the same */
        last = g_wakes[n++] = now_ns();
    }
    /* Block the signal before reading what the handler wrote. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int64_t first = g_sink_first, lastsig = g_sink_last, stall = 0;
    long in_storm = 0;
    if (first != 0) {
        /* The longest stretch of [first signal, last signal] without a wake-up. */
        int64_t prev = first;
        for (long i = 0; i < n; i++) {
            if (g_wakes[i] < first || g_wakes[i] > lastsig)
                continue;
            in_storm++;
            if (g_wakes[i] - prev > stall)
                stall = g_wakes[i] - prev;
            prev = g_wakes[i];
        }
        if (lastsig - prev > stall)
            stall = lastsig - prev;
    }
    printf("%ld %ld %lld %lld\n", (long)g_sunk, in_storm, (long long)(lastsig - first),
           (long long)stall);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "floor") == 0)
        return role_floor(atoi(argv[2]), atol(argv[3]), atoi(argv[4]));
    if (argc >= 9 && strcmp(argv[1], "send") == 0)
        return role_send((pid_t)atol(argv[2]), atoi(argv[3]), atol(argv[4]), atoi(argv[5]),
                         atol(argv[6]), atol(argv[7]), atoi(argv[8]));
    if (argc >= 6 && strcmp(argv[1], "storm") == 0)
        return role_storm((pid_t)atol(argv[2]), atoi(argv[3]), atol(argv[4]), atoi(argv[5]),
                          argc >= 7 ? atol(argv[6]) : 0);
    if (argc >= 4 && strcmp(argv[1], "sink") == 0)
        return role_sink(atoi(argv[2]), atol(argv[3]));
    fprintf(stderr,
            "usage: c_floor floor SIG TOTAL ACK_FD\n"
            "       c_floor send PID SIG TOTAL ACK_FD GAP_MIN_US GAP_MAX_US QUEUE\n"
            "       c_floor storm PID SIG DURATION_MS QUEUE [RATE]\n"
            "       c_floor sink SIG DURATION_MS\n");
    return 2;
}
