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
 *   c_floor storm <pid> <sig> <duration_ms> <queue>
 *       As fast as it can for <duration_ms>: sigqueue() (value = sequence number) or
 *       kill().  EAGAIN (the kernel's queue of pending signals is full) is retried and
 *       not counted as sent.  Prints "<sent> <eagain>".
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

static int role_storm(pid_t pid, int sig, long duration_ms, int queue)
{
    int64_t end = now_ns() + (int64_t)duration_ms * 1000000;
    unsigned long long sent = 0, eagain = 0;
    while (now_ns() < end) {
        for (int k = 0; k < 64; k++) {
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

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "floor") == 0)
        return role_floor(atoi(argv[2]), atol(argv[3]), atoi(argv[4]));
    if (argc >= 9 && strcmp(argv[1], "send") == 0)
        return role_send((pid_t)atol(argv[2]), atoi(argv[3]), atol(argv[4]), atoi(argv[5]),
                         atol(argv[6]), atol(argv[7]), atoi(argv[8]));
    if (argc >= 6 && strcmp(argv[1], "storm") == 0)
        return role_storm((pid_t)atol(argv[2]), atoi(argv[3]), atol(argv[4]), atoi(argv[5]));
    fprintf(stderr,
            "usage: c_floor floor SIG TOTAL ACK_FD\n"
            "       c_floor send PID SIG TOTAL ACK_FD GAP_MIN_US GAP_MAX_US QUEUE\n"
            "       c_floor storm PID SIG DURATION_MS QUEUE\n");
    return 2;
}
