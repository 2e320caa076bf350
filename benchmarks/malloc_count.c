/* Benchmark helper, built into benchmarks/out/malloc_count.so and loaded with
 * LD_PRELOAD by bench_memory.py: counts every malloc/calloc/realloc/aligned
 * allocation in the process, and offers mc_kill_burst(), which sends `n` signals to
 * the process itself from C, with no Python code running in between, and returns
 * how many allocations happened meanwhile: the allocations of the C signal path.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static _Atomic unsigned long long g_allocs;

void *malloc(size_t n)
{
    atomic_fetch_add_explicit(&g_allocs, 1, memory_order_relaxed);
    return __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
    atomic_fetch_add_explicit(&g_allocs, 1, memory_order_relaxed);
    return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
    atomic_fetch_add_explicit(&g_allocs, 1, memory_order_relaxed);
    return __libc_realloc(p, n);
}

void *memalign(size_t al, size_t n)
{
    atomic_fetch_add_explicit(&g_allocs, 1, memory_order_relaxed);
    return __libc_memalign(al, n);
}

int posix_memalign(void **out, size_t al, size_t n)
{
    atomic_fetch_add_explicit(&g_allocs, 1, memory_order_relaxed);
    void *p = __libc_memalign(al, n);
    if (p == NULL)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void *aligned_alloc(size_t al, size_t n)
{
    atomic_fetch_add_explicit(&g_allocs, 1, memory_order_relaxed);
    return __libc_memalign(al, n);
}

unsigned long long mc_allocs(void) { return atomic_load(&g_allocs); }

/* Send `n` signals to this process from C; the allocations counted meanwhile. */
unsigned long long mc_kill_burst(int sig, int n)
{
    pid_t me = getpid();
    unsigned long long before = atomic_load(&g_allocs);
    for (int i = 0; i < n; i++)
        kill(me, sig);
    return atomic_load(&g_allocs) - before;
}
