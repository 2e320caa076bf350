/* Benchmark helper, built by benchmarks/_common.py into benchmarks/out/pipe_handler.so
 * and loaded with ctypes by the <loop>/pipe-cb receivers of bench_latency and
 * bench_instructions: the loop floor.  A C handler that only writes a byte to a
 * non-blocking pipe whose read end the loop's reader watches: the least any loop-based
 * delivery costs after the kernel (the loop's wake-up, its poll, one callback).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static int g_pipe_fd = -1;

static void pipe_handler(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)si;
    (void)ctx;
    int saved = errno; /* write() is async-signal-safe; errno is the interrupted code's */
    char b = 1;
    ssize_t r = write(g_pipe_fd, &b, 1); /* a full pipe (EAGAIN) wakes the loop all the same */
    (void)r;
    errno = saved;
}

int pipe_handler_install(int sig, int fd)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = pipe_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    g_pipe_fd = fd;
    return sigaction(sig, &sa, NULL);
}
