/* aiosigbridge: the C signal handler, per-subscriber storage, install/restore.
 *
 * Why it works this way
 * ---------------------
 * Python's own handler (signal.signal) loses siginfo, wakes one fd per process and
 * carries data in a wake-up byte that is dropped when the pipe is full.  Here the
 * handler installed with sigaction(SA_SIGINFO) records each delivery with its sender
 * into storage owned by each subscriber (one per event loop), *then* writes one byte
 * (the signal number, the PySignal_SetWakeupFd wire format) to that subscriber's
 * non-blocking pipe.  The byte is only a wake-up: state first, byte second, so a full
 * pipe (EAGAIN) loses nothing.  The reader drains the pipe first and the state second.
 *
 * Storage per subscriber:
 *   - queued (realtime) signals: a bounded multi-producer ring (Vyukov's bounded queue,
 *     producers claim a cell with a CAS on `head`, publish it with a release store of the
 *     cell's sequence number).  Producers are signal handlers on any thread (they do
 *     not nest on one thread: the action blocks the other signals while it runs); the
 *     single consumer is the subscriber's drain.  A full ring
 *     counts overflow, per subscriber and signal: never silent.
 *   - standard signals: one pending record per signal plus a delivery count.  The
 *     delivery that moves the count from 0 writes the record; later ones only count
 *     (they are "coalesced" into it), exactly as the kernel would coalesce them.
 *
 * Fan-out safety: a subscriber's storage and pipe are freed only after its `busy`
 * count (handlers currently using it) has drained to zero with `active` cleared, so a
 * handler on another thread never writes to a closed (and possibly reused) fd.
 *
 * Async-signal-safety of the handler path (sb_handler and what it calls):
 *   errno (save/restore)      plain variable access
 *   clock_gettime             async-signal-safe (POSIX.1-2008 list)
 *   getpid                    async-signal-safe
 *   write                     async-signal-safe; the fd is O_NONBLOCK, EAGAIN ignored
 *   PyErr_SetInterruptEx      documented by CPython as safe to call from a signal
 *                             handler (it only sets atomics and writes the wakeup fd)
 *   sigaction                 async-signal-safe; only to give back SIG_DFL after the
 *                             number of deliveries set with sb_reset_after()
 *   C11 atomics               lock-free, checked at compile time and by sb_lock_free()
 *   the chained handler       whatever was installed before us; calling it is what the
 *                             kernel would have done
 * No malloc, no locks, no other Python API, and every loop is bounded (SB_MAX_SLOTS
 * subscribers, SB_CAS_TRIES attempts to claim a ring cell).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first: pyconfig.h sets the feature-test macros */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sigbridge.h"

#if ATOMIC_INT_LOCK_FREE != 2 || ATOMIC_LLONG_LOCK_FREE != 2 || ATOMIC_POINTER_LOCK_FREE != 2
#error "aiosigbridge needs always-lock-free atomics: a signal handler cannot take a lock"
#endif

#define SB_CAS_TRIES 64

typedef struct {
    _Atomic uint64_t seq;
    sb_record rec;
} sb_cell;

typedef struct {
    _Atomic uint32_t count; /* deliveries since the last drain */
    _Atomic int ready;      /* `info` is fully written */
    sb_record info;         /* written only by the delivery that moved count from 0 */
} sb_std;

typedef struct {
    _Atomic int active;   /* handlers may use this slot */
    _Atomic int busy;     /* handlers currently using it */
    _Atomic int woken;    /* a wake byte is in the pipe and no drain has begun since */
    _Atomic uint64_t mask; /* bit (sig - 1): subscribed */
    int wfd;              /* written before `active` is set, read after: stable while busy */
    int rfd;
    sb_cell *cells;
    uint64_t cap_mask;
    _Atomic uint64_t head; /* next cell producers claim */
    uint64_t tail;         /* next cell the consumer reads (consumer only) */
    sb_std std[SB_NSIG];
    _Atomic uint64_t received[SB_NSIG];
    _Atomic uint64_t overflowed[SB_NSIG];
    _Atomic uint64_t coalesced[SB_NSIG];
} sb_slot;

static sb_slot g_slots[SB_MAX_SLOTS];
static _Atomic int g_slot_count; /* high-water mark of slots ever used */
static pthread_mutex_t g_slots_lock = PTHREAD_MUTEX_INITIALIZER;

static _Atomic int g_owner_pid;
static int g_rtmin = SB_NSIG; /* first queued signal; SB_NSIG where there are none */
static int g_rtmax = 0;

static _Atomic int g_forward[SB_NSIG];
static _Atomic int g_chain[SB_NSIG];
static _Atomic int g_installed[SB_NSIG];
static int g_have_original[SB_NSIG];
static struct sigaction g_original[SB_NSIG];
static _Atomic uint64_t g_received[SB_NSIG];
static _Atomic uint64_t g_forwarded[SB_NSIG];
/* sb_reset_after(): after this many more deliveries the handler itself puts back
 * SIG_DFL, so that a process stuck in C code (no Python can run) still dies. */
static _Atomic int g_reset_after[SB_NSIG];
static struct sigaction g_default_action;

/* async-signal-safe: clock_gettime. */
static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t sb_monotonic_ns(void) { return now_ns(); }

static int valid_sig(int sig) { return sig > 0 && sig < SB_NSIG && sig < NSIG; }

static int is_queued(int sig) { return sig >= g_rtmin && sig <= g_rtmax; }

/* async-signal-safe: reads siginfo fields only. */
static void fill_record(sb_record *r, int sig, const siginfo_t *info, int64_t ts)
{
    r->timestamp_ns = ts;
    r->signum = sig;
    r->coalesced = 1;
    if (info != NULL) {
        r->code = info->si_code;
        r->pid = (int32_t)info->si_pid;
        r->uid = (uint32_t)info->si_uid;
        r->status = info->si_status;
        r->value = (int64_t)(intptr_t)info->si_value.sival_ptr;
    } else {
        r->code = 0;
        r->pid = 0;
        r->uid = 0;
        r->status = 0;
        r->value = 0;
    }
}

/* async-signal-safe: atomics and plain stores into preallocated memory; bounded. */
static int ring_push(sb_slot *s, int sig, const siginfo_t *info, int64_t ts)
{
    uint64_t pos = atomic_load_explicit(&s->head, memory_order_relaxed);
    for (int tries = 0; tries < SB_CAS_TRIES; tries++) {
        sb_cell *cell = &s->cells[pos & s->cap_mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&s->head, &pos, pos + 1,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed)) {
                fill_record(&cell->rec, sig, info, ts);
                atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
                return 1;
            }
            /* CAS failure reloaded pos: another producer won that cell. */
        } else if (dif < 0) {
            return 0; /* full: the consumer has not freed this cell yet */
        } else {
            pos = atomic_load_explicit(&s->head, memory_order_relaxed);
        }
    }
    return 0; /* contention beyond the bound: counted as overflow, never silent */
}

/* async-signal-safe: atomics, preallocated memory. */
static void std_push(sb_slot *s, int sig, const siginfo_t *info, int64_t ts)
{
    sb_std *p = &s->std[sig];
    if (atomic_fetch_add_explicit(&p->count, 1, memory_order_acq_rel) == 0) {
        /* Only the delivery that moved the count from 0 writes the record, and the
         * drain clears `ready` before it resets the count: one writer at a time. */
        fill_record(&p->info, sig, info, ts);
        atomic_store_explicit(&p->ready, 1, memory_order_release);
    } else {
        atomic_fetch_add_explicit(&s->coalesced[sig], 1, memory_order_relaxed);
    }
}

static void sb_handler(int sig, siginfo_t *info, void *uctx)
{
    /* 1. errno: write() and the chained handler may change it. */
    int saved_errno = errno;
    if (!valid_sig(sig)) {
        errno = saved_errno;
        return;
    }
    int64_t ts = now_ns(); /* clock_gettime: async-signal-safe */
    atomic_fetch_add_explicit(&g_received[sig], 1, memory_order_relaxed);

    /* After fork() the child shares the parent's pipes until its at-fork hook has run:
     * getpid() (async-signal-safe) keeps the child's signals out of the parent's loops. */
    int owner = getpid() == atomic_load_explicit(&g_owner_pid, memory_order_relaxed);
    if (owner) {
        uint64_t bit = (uint64_t)1 << (sig - 1);
        int n = atomic_load_explicit(&g_slot_count, memory_order_acquire);
        for (int i = 0; i < n; i++) { /* bounded by SB_MAX_SLOTS */
            sb_slot *s = &g_slots[i];
            if (!(atomic_load_explicit(&s->mask, memory_order_relaxed) & bit))
                continue;
            atomic_fetch_add_explicit(&s->busy, 1, memory_order_seq_cst);
            if (atomic_load_explicit(&s->active, memory_order_seq_cst) &&
                (atomic_load_explicit(&s->mask, memory_order_relaxed) & bit)) {
                atomic_fetch_add_explicit(&s->received[sig], 1, memory_order_relaxed);
                /* 2. record: state first ... */
                if (is_queued(sig)) {
                    if (!ring_push(s, sig, info, ts))
                        atomic_fetch_add_explicit(&s->overflowed[sig], 1,
                                                  memory_order_relaxed);
                } else {
                    std_push(s, sig, info, ts);
                }
                /* 4. ... byte second.  write() is async-signal-safe; the pipe is
                 * non-blocking and EAGAIN (full) is fine: the state above holds the
                 * truth, the byte only wakes the loop. */
                if (!atomic_exchange_explicit(&s->woken, 1, memory_order_seq_cst)) {
                    /* Only when no wake-up is pending: a storm costs one write per
                     * drain, not one per signal.  A drain clears `woken` before it
                     * reads the state, so a delivery that finds it set is seen by
                     * the drain that byte will cause. */
                    unsigned char byte = (unsigned char)sig;
                    ssize_t w = write(s->wfd, &byte, 1);
                    (void)w;
                }
            }
            atomic_fetch_sub_explicit(&s->busy, 1, memory_order_seq_cst);
        }
    }

    /* 3. Python's own machinery: PyErr_SetInterruptEx is documented as callable from a
     * signal handler.  It runs Python's handler for `sig` at the next bytecode boundary
     * in the main thread and writes the PySignal_SetWakeupFd byte, so asyncio/uvloop's
     * own add_signal_handler keeps working.  Not in a forked child before its hook. */
    if (owner && atomic_load_explicit(&g_forward[sig], memory_order_relaxed)) {
        PyErr_SetInterruptEx(sig);
        atomic_fetch_add_explicit(&g_forwarded[sig], 1, memory_order_relaxed);
    }

    /* A foreign C handler that was there before us is called after ours, as the
     * kernel would have called it.  g_original is written before our action is
     * installed (sigaction is the barrier) and not changed while it is. */
    if (atomic_load_explicit(&g_chain[sig], memory_order_relaxed)) {
        const struct sigaction *prev = &g_original[sig];
        if (prev->sa_flags & SA_SIGINFO)
            prev->sa_sigaction(sig, info, uctx);
        else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN)
            prev->sa_handler(sig);
    }

    /* Escalation (asb.run(): a third shutdown signal kills): sigaction is
     * async-signal-safe and g_default_action was filled in by sb_init(). */
    if (atomic_load_explicit(&g_reset_after[sig], memory_order_relaxed) > 0 &&
        atomic_fetch_sub_explicit(&g_reset_after[sig], 1, memory_order_acq_rel) == 1) {
        atomic_store_explicit(&g_forward[sig], 0, memory_order_relaxed);
        sigaction(sig, &g_default_action, NULL);
    }

    /* 5. errno restored. */
    errno = saved_errno;
}

int sb_lock_free(void)
{
    _Atomic uint64_t u64;
    _Atomic int i32;
    return atomic_is_lock_free(&u64) && atomic_is_lock_free(&i32);
}

int sb_init(void)
{
    if (!sb_lock_free())
        return -ENOTSUP;
#ifdef SIGRTMIN
    g_rtmin = SIGRTMIN; /* a function call on glibc: cache it outside the handler */
    g_rtmax = SIGRTMAX;
#endif
    atomic_store(&g_owner_pid, (int)getpid());
    memset(&g_default_action, 0, sizeof g_default_action);
    g_default_action.sa_handler = SIG_DFL;
    sigemptyset(&g_default_action.sa_mask);
    return 0;
}

int sb_reset_after(int sig, int deliveries)
{
    if (!valid_sig(sig) || deliveries < 0)
        return -EINVAL;
    atomic_store(&g_reset_after[sig], deliveries);
    return 0;
}

int sb_rtmin(void) { return g_rtmin < SB_NSIG ? g_rtmin : 0; }
int sb_rtmax(void) { return g_rtmax; }

static int handler_is_ours(const struct sigaction *sa)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == sb_handler;
}

static uintptr_t handler_address(const struct sigaction *sa)
{
    if (sa->sa_flags & SA_SIGINFO)
        return (uintptr_t)sa->sa_sigaction;
    return (uintptr_t)sa->sa_handler;
}

int sb_disposition(int sig, uintptr_t *handler, int *flags)
{
    struct sigaction cur;
    if (!valid_sig(sig))
        return -EINVAL;
    if (sigaction(sig, NULL, &cur) != 0)
        return -errno;
    if (flags != NULL)
        *flags = cur.sa_flags;
    if (handler != NULL)
        *handler = handler_address(&cur);
    if (handler_is_ours(&cur))
        return SB_DISP_OURS;
    if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL)
        return SB_DISP_DEFAULT;
    if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_IGN)
        return SB_DISP_IGNORE;
    return SB_DISP_OTHER;
}

int sb_is_installed(int sig) { return valid_sig(sig) && atomic_load(&g_installed[sig]); }

/* Keep the current C action across a call that would change it (signal.signal() when
 * only Python's table needs fixing): put_back == 0 saves it, 1 re-applies it. */
static struct sigaction g_stash[SB_NSIG];

int sb_stash(int sig, int put_back)
{
    if (!valid_sig(sig))
        return -EINVAL;
    if (put_back ? sigaction(sig, &g_stash[sig], NULL) : sigaction(sig, NULL, &g_stash[sig]))
        return -errno;
    return 0;
}

/* Remember the action to give back; chain to it if it is a foreign C handler, i.e. a
 * handler that is neither ours nor CPython's (`python_handler`, 0 if unknown: then no
 * handler is taken for foreign, as calling CPython's twice would double its effects).
 * Returns 1 when the original will be chained to, 0 otherwise. */
int sb_save_original(int sig, uintptr_t python_handler)
{
    struct sigaction cur;
    if (!valid_sig(sig))
        return -EINVAL;
    if (atomic_load(&g_installed[sig]))
        return -EBUSY;
    if (sigaction(sig, NULL, &cur) != 0)
        return -errno;
    if (handler_is_ours(&cur))
        return -EALREADY; /* a previous owner never restored: refuse to chain to ourselves */
    g_original[sig] = cur;
    g_have_original[sig] = 1;
    uintptr_t addr = handler_address(&cur);
    int foreign = python_handler != 0 && addr != python_handler &&
                  ((cur.sa_flags & SA_SIGINFO) ||
                   (cur.sa_handler != SIG_DFL && cur.sa_handler != SIG_IGN));
    atomic_store(&g_chain[sig], foreign);
    return foreign;
}

static int install_action(int sig, int forward)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sb_handler;
    /* SA_RESTART only where nothing is forwarded to Python: a main thread blocked in a
     * restartable call would otherwise not see Python's handler until the call
     * returns.  CPython's own handlers leave it off and rely on PEP 475 retries. */
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | (forward ? 0 : SA_RESTART);
    /* Every other catchable signal is blocked while the handler runs, so handlers
     * never nest on one thread: nested signal frames (~3 KiB each with the FPU state)
     * overflow a small sigaltstack such as faulthandler's within a few levels, and the
     * kernel can then only kill the process.  Deliveries to other threads still run
     * concurrently, which the storage is built for.  Synchronous faults stay
     * unblocked: a fault with its signal blocked is fatal anyway. */
    sigfillset(&sa.sa_mask);
    sigdelset(&sa.sa_mask, SIGSEGV);
    sigdelset(&sa.sa_mask, SIGBUS);
    sigdelset(&sa.sa_mask, SIGFPE);
    sigdelset(&sa.sa_mask, SIGILL);
    if (sigaction(sig, &sa, NULL) != 0)
        return -errno;
    return 0;
}

int sb_install(int sig, int forward)
{
    if (!valid_sig(sig))
        return -EINVAL;
    if (!g_have_original[sig])
        return -ENOENT;
    atomic_store(&g_forward[sig], forward ? 1 : 0);
    int rc = install_action(sig, forward);
    if (rc == 0)
        atomic_store(&g_installed[sig], 1);
    return rc;
}

int sb_set_forward(int sig, int forward)
{
    if (!valid_sig(sig))
        return -EINVAL;
    if (!atomic_load(&g_installed[sig]))
        return -ENOENT;
    atomic_store(&g_forward[sig], forward ? 1 : 0);
    return install_action(sig, forward);
}

/* Give back the saved action.  With only_if_ours, do nothing (return 1) when the
 * current action is no longer ours: whoever replaced it keeps it. */
int sb_restore(int sig, int only_if_ours)
{
    struct sigaction cur;
    if (!valid_sig(sig))
        return -EINVAL;
    if (!g_have_original[sig])
        return -ENOENT;
    if (sigaction(sig, NULL, &cur) != 0)
        return -errno;
    int replaced = !handler_is_ours(&cur);
    if (!(replaced && only_if_ours)) {
        if (sigaction(sig, &g_original[sig], NULL) != 0)
            return -errno;
    }
    atomic_store(&g_installed[sig], 0);
    atomic_store(&g_forward[sig], 0);
    atomic_store(&g_chain[sig], 0);
    atomic_store(&g_reset_after[sig], 0);
    g_have_original[sig] = 0;
    return replaced && only_if_ours ? 1 : 0;
}

static int make_pipe(int fds[2])
{
#ifdef __linux__
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
        return -errno;
#else
    if (pipe(fds) != 0)
        return -errno;
    for (int i = 0; i < 2; i++) {
        if (fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK) != 0 ||
            fcntl(fds[i], F_SETFD, FD_CLOEXEC) != 0) {
            int e = errno;
            close(fds[0]);
            close(fds[1]);
            return -e;
        }
    }
#endif
    return 0;
}

static void slot_reset_storage(sb_slot *s)
{
    free(s->cells);
    s->cells = NULL;
    s->cap_mask = 0;
    atomic_store(&s->head, 0);
    s->tail = 0;
    for (int sig = 0; sig < SB_NSIG; sig++) {
        atomic_store(&s->std[sig].count, 0);
        atomic_store(&s->std[sig].ready, 0);
        atomic_store(&s->received[sig], 0);
        atomic_store(&s->overflowed[sig], 0);
        atomic_store(&s->coalesced[sig], 0);
    }
}

int sb_subscribe(uint32_t capacity, int *read_fd)
{
    if (capacity == 0 || capacity > SB_MAX_CAPACITY)
        return -EINVAL;
    uint64_t cap = 1;
    while (cap < capacity)
        cap <<= 1;
    sb_cell *cells = calloc(cap, sizeof *cells);
    if (cells == NULL)
        return -ENOMEM;
    for (uint64_t i = 0; i < cap; i++)
        atomic_init(&cells[i].seq, i);
    int fds[2];
    int rc = make_pipe(fds);
    if (rc != 0) {
        free(cells);
        return rc;
    }

    pthread_mutex_lock(&g_slots_lock);
    int slot = -1;
    for (int i = 0; i < SB_MAX_SLOTS; i++) {
        if (!atomic_load(&g_slots[i].active) && g_slots[i].cells == NULL &&
            atomic_load(&g_slots[i].busy) == 0) {
            slot = i;
            break;
        }
    }
    if (slot < 0) {
        pthread_mutex_unlock(&g_slots_lock);
        close(fds[0]);
        close(fds[1]);
        free(cells);
        return -EMFILE;
    }
    sb_slot *s = &g_slots[slot];
    slot_reset_storage(s);
    s->cells = cells;
    s->cap_mask = cap - 1;
    s->rfd = fds[0];
    s->wfd = fds[1];
    atomic_store(&s->woken, 0);
    atomic_store(&s->mask, 0);
    atomic_store(&s->active, 1); /* publishes the fields above to handlers */
    if (slot + 1 > atomic_load(&g_slot_count))
        atomic_store(&g_slot_count, slot + 1);
    pthread_mutex_unlock(&g_slots_lock);
    *read_fd = fds[0];
    return slot;
}

static int valid_slot(int slot)
{
    return slot >= 0 && slot < SB_MAX_SLOTS && g_slots[slot].cells != NULL;
}

int sb_unsubscribe(int slot)
{
    pthread_mutex_lock(&g_slots_lock);
    if (!valid_slot(slot)) {
        pthread_mutex_unlock(&g_slots_lock);
        return -EBADF;
    }
    sb_slot *s = &g_slots[slot];
    atomic_store(&s->mask, 0);
    atomic_store(&s->active, 0);
    /* Wait for handlers that saw the slot active to leave it.  Each holds it for a
     * bounded, short time; new ones see active == 0.  Bounded wait (about 1 s): if a
     * handler is somehow still inside, leak the storage rather than free it under it. */
    int drained = 0;
    for (int i = 0; i < 1000000; i++) {
        if (atomic_load(&s->busy) == 0) {
            drained = 1;
            break;
        }
        if (i > 1000) {
            struct timespec pause = {0, 1000};
            nanosleep(&pause, NULL);
        } else {
            sched_yield();
        }
    }
    if (drained) {
        close(s->rfd);
        close(s->wfd);
        slot_reset_storage(s);
    } else {
        s->cells = NULL; /* leaked on purpose, see above */
    }
    pthread_mutex_unlock(&g_slots_lock);
    return 0;
}

int sb_watch(int slot, int sig, int on)
{
    if (!valid_slot(slot))
        return -EBADF;
    if (!valid_sig(sig))
        return -EINVAL;
    uint64_t bit = (uint64_t)1 << (sig - 1);
    if (on)
        atomic_fetch_or(&g_slots[slot].mask, bit);
    else
        atomic_fetch_and(&g_slots[slot].mask, ~bit);
    return 0;
}

static int drain_state(sb_slot *s, sb_record *out, int max);

/* One call empties the pipe and copies out every pending record (up to max; call
 * again while it returns max).  Records come out in timestamp order. */
int sb_drain(int slot, sb_record *out, int max)
{
    if (!valid_slot(slot))
        return -EBADF;
    sb_slot *s = &g_slots[slot];
    /* Empty the pipe, then clear `woken`, then read the state.  In this order a
     * delivery either found `woken` set before the clear (its state is written
     * before its exchange, so the state read below sees it), or sets it after the
     * clear and writes a byte that is still in the pipe for the next drain.  (Clearing
     * first would let such a byte be read here, leaving `woken` set over an empty pipe:
     * every later delivery would skip its byte and the loop would sleep.) */
    char sink[512];
    while (read(s->rfd, sink, sizeof sink) == (ssize_t)sizeof sink) {
        /* a short read emptied the pipe: no second read() just to see EAGAIN */
    }
    /* An exchange (a read-modify-write), not a store: it reads the value a handler's
     * exchange wrote and so orders the state reads below after that handler's writes,
     * on weakly ordered CPUs too (a store followed by acquire loads would not). */
    atomic_exchange_explicit(&s->woken, 0, memory_order_acq_rel);
    return drain_state(s, out, max);
}

/* The records only, leaving the pipe (and `woken`) alone: for a dispatch that runs
 * ahead of the loop's reader, which still wakes up, reads the byte and finds the rest. */
int sb_drain_records(int slot, sb_record *out, int max)
{
    if (!valid_slot(slot))
        return -EBADF;
    return drain_state(&g_slots[slot], out, max);
}

static int drain_state(sb_slot *s, sb_record *out, int max)
{
    int n = 0;
    while (n < max) {
        sb_cell *cell = &s->cells[s->tail & s->cap_mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        if ((int64_t)(seq - (s->tail + 1)) < 0)
            break; /* empty, or the next cell is claimed but not yet published */
        out[n++] = cell->rec;
        atomic_store_explicit(&cell->seq, s->tail + s->cap_mask + 1, memory_order_release);
        s->tail++;
    }
    int last_std = g_rtmin < SB_NSIG ? g_rtmin : SB_NSIG;
    for (int sig = 1; sig < last_std && n < max; sig++) {
        sb_std *p = &s->std[sig];
        if (atomic_load_explicit(&p->count, memory_order_acquire) == 0 ||
            !atomic_load_explicit(&p->ready, memory_order_acquire))
            continue;
        sb_record r = p->info;
        atomic_store_explicit(&p->ready, 0, memory_order_release);
        r.coalesced = atomic_exchange_explicit(&p->count, 0, memory_order_acq_rel);
        out[n++] = r;
    }
    /* Stable insertion sort by timestamp: the batch is short and nearly sorted. */
    for (int i = 1; i < n; i++) {
        sb_record r = out[i];
        int j = i - 1;
        while (j >= 0 && out[j].timestamp_ns > r.timestamp_ns) {
            out[j + 1] = out[j];
            j--;
        }
        out[j + 1] = r;
    }
    return n;
}

int sb_counters_get(int slot, int sig, sb_counters *out)
{
    if (!valid_sig(sig))
        return -EINVAL;
    memset(out, 0, sizeof *out);
    out->forwarded = atomic_load(&g_forwarded[sig]);
    if (slot < 0) {
        out->received = atomic_load(&g_received[sig]);
        return 0;
    }
    if (!valid_slot(slot))
        return -EBADF;
    out->received = atomic_load(&g_slots[slot].received[sig]);
    out->overflowed = atomic_load(&g_slots[slot].overflowed[sig]);
    out->coalesced = atomic_load(&g_slots[slot].coalesced[sig]);
    return 0;
}

/* Runs in the child right after fork() (os.register_at_fork): the child starts with
 * no subscriptions; its copies of the parent's pipes are closed. */
void sb_after_fork_child(void)
{
    atomic_store(&g_owner_pid, (int)getpid());
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_slots_lock = fresh; /* the parent may have held it in another thread */
    for (int i = 0; i < SB_MAX_SLOTS; i++) {
        sb_slot *s = &g_slots[i];
        atomic_store(&s->active, 0);
        atomic_store(&s->mask, 0);
        atomic_store(&s->busy, 0);
        if (s->cells != NULL) {
            close(s->rfd);
            close(s->wfd);
            slot_reset_storage(s);
        }
    }
}

int sb_sigqueue(int pid, int sig, int64_t value)
{
#if defined(__linux__)
    union sigval v;
    memset(&v, 0, sizeof v);
    v.sival_ptr = (void *)(intptr_t)value;
    if (sigqueue((pid_t)pid, sig, v) != 0)
        return -errno;
    return 0;
#else
    (void)pid;
    (void)sig;
    (void)value;
    return -ENOSYS;
#endif
}
