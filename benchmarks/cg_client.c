/* Benchmark helper, built by benchmarks/bench_instructions.py into
 * benchmarks/out/cg_client.so and loaded with ctypes by the receivers it runs under
 * valgrind --tool=callgrind --instr-atstart=no: callgrind's client request that switches
 * instrumentation on (valgrind/callgrind.h; a few no-op instructions outside valgrind).
 * The receiver calls it once it is set up, so Python's start-up and imports run at
 * valgrind's uninstrumented speed (3x faster).  Nothing here is on the measured path:
 * the counting is bracketed by callgrind's --dump-before triggers (bench_instructions).
 */
#define _GNU_SOURCE
#include <valgrind/callgrind.h>

int cg_on_valgrind(void) { return (int)RUNNING_ON_VALGRIND; }

void cg_start_instrumentation(void) { CALLGRIND_START_INSTRUMENTATION; }

/* The loop floor (target <loop>/pipe-cb): a C handler that only writes a byte to a
 * non-blocking pipe whose read end a loop's reader watches: the least any loop-based
 * delivery costs after the kernel.  write() is async-signal-safe; errno is kept. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static int g_pipe_fd = -1;

static void cg_pipe_handler(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)si;
    (void)ctx;
    int saved = errno;
    char b = 1;
    ssize_t r = write(g_pipe_fd, &b, 1); /* a full pipe (EAGAIN) already wakes the loop */
    (void)r;
    errno = saved;
}

int cg_install_pipe_handler(int sig, int fd)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = cg_pipe_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    g_pipe_fd = fd;
    return sigaction(sig, &sa, NULL);
}
