/* aiosigbridge: the C signal handler.
 *
 * Why it works this way
 * ---------------------
 * Python's own handler (signal.signal) loses siginfo, wakes one fd per process and
 * carries data in a wake-up byte that is dropped when the pipe is full.  The handler
 * here, installed with sigaction(SA_SIGINFO), records each delivery with its sender
 * into storage owned by each subscriber (sb_storage.c), then writes one wake-up byte
 * to that subscriber's pipe; it forwards the delivery to Python's own machinery with
 * PyErr_SetInterruptEx where Python's table holds a callable for the signal, and calls
 * a foreign C handler that was there before it.  What it does for each signal is
 * decided by the owner (sb_owner.c) and read here lock-free from g_sig[].
 *
 * When the signal is not bridged (no subscriber holds it, or this is a forked child
 * whose at-fork handler has not run yet, or a C handler installed over ours still
 * chains to ours after the bridge let go), the handler acts as the original action
 * would: SIG_DFL terminates (or stops, or is ignored, as the default is), SIG_IGN
 * ignores, a handler is called.
 *
 * Async-signal-safety of the handler path (sb_handler and what it calls):
 *   errno (save/restore)      plain variable access
 *   clock_gettime             async-signal-safe (POSIX.1-2008 list)
 *   getpid                    async-signal-safe; a system call on glibc >= 2.25, so it
 *                             is right in a forked child too
 *   sigaction                 async-signal-safe: reading the current action (is it
 *                             ours, with SA_SIGINFO?), giving back SIG_DFL
 *   sigemptyset, sigaddset, sigismember, sigpending, pthread_sigmask, raise
 *                             async-signal-safe (POSIX.1-2008 list): acting as SIG_DFL
 *                             (reset, raise, unblock) and noticing a re-raise
 *   pthread_self, pthread_equal  read and compare the thread pointer; no state
 *   memset                    async-signal-safe (POSIX.1-2008 TC2)
 *   write                     async-signal-safe; the fd is O_NONBLOCK, EAGAIN ignored
 *   PyErr_SetInterruptEx      documented by CPython as safe to call from a signal
 *                             handler (it only sets atomics and writes the wakeup fd);
 *                             called only when Python's table holds a callable, the one
 *                             case where it needs no thread state on any version
 *   C11 atomics               lock-free, checked at compile time and by sb_lock_free()
 *   the chained handler       whatever was installed before us; calling it is what the
 *                             kernel would have done
 * No malloc, no locks, no other Python API, and every loop is bounded (SB_MAX_SLOTS
 * subscribers, SB_CAS_TRIES attempts to claim a ring cell, SB_STD_SENDERS entries).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first: pyconfig.h sets the feature-test macros */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sb_internal.h"

sb_sig g_sig[SB_NSIG];
_Atomic int g_owner_pid;
_Atomic int g_hold;
_Atomic uint64_t g_deliveries;
_Atomic int64_t g_main_handler_ns;
_Atomic int g_check_needed;
static pthread_t g_main_thread;
int g_rtmin = SB_NSIG;
int g_rtmax = 0;

static struct sigaction g_default_action;

int sb_valid_sig(int sig) { return sig > 0 && sig < SB_NSIG && sig < NSIG; }

int sb_is_queued(int sig) { return sig >= g_rtmin && sig <= g_rtmax; }

/* async-signal-safe: clock_gettime. */
int64_t sb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t sb_monotonic_ns(void) { return sb_now_ns(); }

uint64_t sb_deliveries(void) { return atomic_load_explicit(&g_deliveries, memory_order_relaxed); }

int64_t sb_main_handler_ns(void) { return atomic_load(&g_main_handler_ns); }

int sb_take_check_needed(void) { return atomic_exchange(&g_check_needed, 0); }

/* The thread whose CPU time the interrupt hook reads (Python's main thread). */
void sb_set_main_thread(void) { g_main_thread = pthread_self(); }

static void sb_handler(int sig, siginfo_t *info, void *uctx);

uintptr_t sb_handler_address(const struct sigaction *sa)
{
    if (sa->sa_flags & SA_SIGINFO)
        return (uintptr_t)sa->sa_sigaction;
    return (uintptr_t)sa->sa_handler;
}

/* Ours whether or not SA_SIGINFO is set: C code that saved our action and put it back
 * with signal() (prompt_toolkit does, for SIGINT) installs it without. */
int sb_handler_is(const struct sigaction *sa)
{
    return sb_handler_address(sa) == (uintptr_t)sb_handler;
}

/* By the handler's address, whatever the flags: when an SA_RESETHAND handler fires,
 * Linux resets the handler to SIG_DFL but leaves SA_SIGINFO set. */
int sb_is_dfl(const struct sigaction *sa) { return sb_handler_address(sa) == (uintptr_t)SIG_DFL; }

int sb_is_ign(const struct sigaction *sa) { return sb_handler_address(sa) == (uintptr_t)SIG_IGN; }

int sb_is_dfl_or_ign(const struct sigaction *sa) { return sb_is_dfl(sa) || sb_is_ign(sa); }

const struct sigaction *sb_original(int sig)
{
    int i = atomic_load_explicit(&g_sig[sig].orig_index, memory_order_acquire);
    return i < 0 ? NULL : &g_sig[sig].original[i];
}

/* Owner only (under its lock): write the buffer the handler is not reading, then
 * publish it. */
void sb_set_original(int sig, const struct sigaction *sa)
{
    sb_sig *g = &g_sig[sig];
    int next = atomic_load(&g->orig_index) == 0 ? 1 : 0;
    if (sa == NULL) {
        atomic_store(&g->orig_index, -1);
        return;
    }
    g->original[next] = *sa;
    atomic_store_explicit(&g->orig_index, next, memory_order_release);
}

/* Our action.  SA_RESTART as the owner decides (see sb_owner.c).  Every other
 * catchable signal is blocked while the handler runs, so handlers never nest on one
 * thread: nested signal frames (~3 KiB each with the FPU state) overflow a small
 * sigaltstack such as faulthandler's within a few levels.  Deliveries to other threads
 * still run concurrently, which the storage is built for.  Synchronous faults stay
 * unblocked: a fault with its signal blocked is fatal anyway. */
void sb_handler_action(struct sigaction *sa, int restart)
{
    memset(sa, 0, sizeof *sa);
    sa->sa_sigaction = sb_handler;
    sa->sa_flags = SA_SIGINFO | SA_ONSTACK | (restart ? SA_RESTART : 0);
    sigfillset(&sa->sa_mask);
    sigdelset(&sa->sa_mask, SIGSEGV);
    sigdelset(&sa->sa_mask, SIGBUS);
    sigdelset(&sa->sa_mask, SIGFPE);
    sigdelset(&sa->sa_mask, SIGILL);
}

/* async-signal-safe: the one documented way into the interpreter from a handler.
 * Only called while Python's table holds a callable for `sig` (see sb_owner.c). */
void sb_forward(int sig)
{
    atomic_store_explicit(&g_sig[sig].fwd_ns, sb_now_ns(), memory_order_relaxed);
    atomic_store_explicit(&g_sig[sig].fwd_pending, 1, memory_order_release);
    PyErr_SetInterruptEx(sig);
    atomic_fetch_add_explicit(&g_sig[sig].forwarded, 1, memory_order_relaxed);
}

/* Signals whose default action is to do nothing. */
static int default_is_ignore(int sig)
{
    return sig == SIGCHLD || sig == SIGCONT || sig == SIGURG || sig == SIGWINCH;
}

/* async-signal-safe: what SIG_DFL would have done.  The signal is blocked while our
 * handler runs: reset the action, raise it (pending), unblock it: the kernel applies
 * the default action now.  Still here (a stop signal, then SIGCONT): put back what
 * was installed. */
static void default_action(int sig)
{
    if (default_is_ignore(sig))
        return;
    struct sigaction prev;
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    if (sigaction(sig, &g_default_action, &prev) != 0)
        return;
    raise(sig);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    pthread_sigmask(SIG_BLOCK, &one, NULL);
    sigaction(sig, &prev, NULL);
}

/* async-signal-safe: call a saved action as the kernel would have.  `info` NULL: we
 * have none (the kernel gave us none); a handler that wants one gets a zeroed one. */
static void call_action(int sig, const struct sigaction *o, siginfo_t *info, void *uctx)
{
    if (sb_is_dfl(o)) {
        default_action(sig);
    } else if (sb_is_ign(o)) {
        /* ignored */
    } else if (o->sa_flags & SA_SIGINFO) {
        siginfo_t zero;
        if (info == NULL) {
            memset(&zero, 0, sizeof zero);
            zero.si_signo = sig;
            info = &zero;
        }
        o->sa_sigaction(sig, info, uctx);
    } else {
        o->sa_handler(sig);
    }
}

/* async-signal-safe: not bridged here: behave as the original action. */
static void act_as_original(int sig, siginfo_t *info, void *uctx)
{
    sb_sig *g = &g_sig[sig];
    const struct sigaction *o = sb_original(sig);
    if (o == NULL || atomic_load(&g->oneshot_fired)) {
        default_action(sig);
        return;
    }
    if (atomic_load(&g->oneshot) && atomic_exchange(&g->oneshot_fired, 1)) {
        default_action(sig); /* SA_RESETHAND: the kernel would have reset it already */
        return;
    }
    call_action(sig, o, info, uctx);
}

/* async-signal-safe: the foreign handler that was there before us runs after ours.
 * It runs with every signal blocked (ours is still running): a handler that "chains
 * on" by restoring its own previous action and raising the signal again
 * (faulthandler.register(chain=True) does) leaves the signal pending instead of
 * killing the process; that re-raise is its hand-back to the default action, which
 * the bridge owns: it is absorbed (see absorbed()), and if the handler re-registered
 * itself over ours, ours is put back. */
static void chain_call(int sig, siginfo_t *info, void *uctx)
{
    sb_sig *g = &g_sig[sig];
    const struct sigaction *o = sb_original(sig);
    if (o == NULL)
        return;
    if (atomic_load(&g->oneshot)) {
        /* SA_RESETHAND: once, as the kernel would; after that the default action,
         * which the bridge took over. */
        if (atomic_exchange(&g->oneshot_fired, 1))
            return;
    }
    call_action(sig, o, info, uctx);
    if (!atomic_load(&g->held))
        return;
    struct sigaction now;
    if (sigaction(sig, NULL, &now) == 0 && !sb_handler_is(&now) &&
        (sb_handler_address(&now) == sb_handler_address(o) || sb_is_dfl_or_ign(&now)))
        sigaction(sig, &g->ours, NULL);
    sigset_t pending;
    if (sigpending(&pending) == 0 && sigismember(&pending, sig) == 1)
        atomic_store(&g->absorb_thread, (uintptr_t)pthread_self());
}

/* async-signal-safe: the chained handler's own re-raise, coming back on its thread. */
static int absorbed(int sig, const siginfo_t *info)
{
    sb_sig *g = &g_sig[sig];
    uintptr_t t = atomic_load_explicit(&g->absorb_thread, memory_order_relaxed);
    if (t == 0 || t != (uintptr_t)pthread_self())
        return 0;
    /* raise() is tgkill() on Linux (SI_TKILL); SI_USER where there is no SI_TKILL. */
    int raise_code = SB_SI_TKILL != SB_SI_NONE ? SB_SI_TKILL : SI_USER;
    int own_raise = info != NULL && info->si_pid == getpid() && info->si_code == raise_code;
    if (!own_raise)
        return 0;
    atomic_store(&g->absorb_thread, 0);
    return 1;
}

/* Is `info` what the kernel filled in for this delivery?  Only when the action that
 * got us here has SA_SIGINFO: ours installed by C code without it, or a foreign
 * handler without it that calls ours, hand us garbage. */
static int info_is_real(const struct sigaction *cur)
{
    if (sb_handler_is(cur))
        return (cur->sa_flags & SA_SIGINFO) != 0;
    /* A foreign SA_SIGINFO handler chaining to ours passes what it got; SIG_DFL/IGN
     * now: a restore raced with this delivery, which the kernel set up with ours. */
    return (cur->sa_flags & SA_SIGINFO) || sb_is_dfl_or_ign(cur);
}

static void sb_handler(int sig, siginfo_t *info, void *uctx)
{
    /* 1. errno: write(), sigaction() and the chained handler may change it. */
    int saved_errno = errno;
    if (!sb_valid_sig(sig)) {
        errno = saved_errno;
        return;
    }
    sb_sig *g = &g_sig[sig];
    int64_t ts = sb_now_ns(); /* clock_gettime: async-signal-safe */
    atomic_fetch_add_explicit(&g_deliveries, 1, memory_order_relaxed);
    struct sigaction cur;
    int have_cur = sigaction(sig, NULL, &cur) == 0;
    if (info == NULL || !have_cur || !info_is_real(&cur)) {
        info = NULL;
        uctx = NULL;
    }
    /* Our action put back without SA_SIGINFO, or another C handler over ours that
     * chains to us: the owner has a look at the next drain. */
    if (have_cur && (sb_handler_is(&cur) ? !(cur.sa_flags & SA_SIGINFO) : !sb_is_dfl_or_ign(&cur)))
        atomic_store_explicit(&g_check_needed, 1, memory_order_relaxed);

    /* Not bridged here (a forked child before its at-fork handler ran: getpid() is a
     * system call, right in the child; or nobody holds the signal): the original. */
    if (getpid() != atomic_load_explicit(&g_owner_pid, memory_order_relaxed) ||
        !atomic_load_explicit(&g->held, memory_order_acquire)) {
        act_as_original(sig, info, uctx);
        errno = saved_errno;
        return;
    }
    if (absorbed(sig, info)) {
        errno = saved_errno;
        return;
    }
    atomic_fetch_add_explicit(&g->received, 1, memory_order_relaxed);

    /* 2. record, and 4. wake each subscriber: state first, byte second (sb_storage.c).
     * `consumed`: a subscriber whose demand consumes sig recorded it. */
    int consumed = sb_store(sig, info, ts);

    /* 3. Python's own machinery, only while Python's table holds a callable for sig
     * (the owner sets `forward` only then) and the action is not SIG_DFL/SIG_IGN now
     * (signal.signal() changes the action before the table: an action that is
     * SIG_DFL/IGN means a table about to say so).  During a change of process-wide
     * state (g_hold) the forward is owed, and paid when the change ends, so that no
     * Python-level handler runs in the middle of it.
     * Not a delivery a consuming subscriber recorded (unless forwarded for BRIDGED's
     * hook): once recorded, the subscriber may act on it and let go of the signal
     * before this handler gets here (run() in another thread ends on it), and the
     * forward flag then says what holds for the next delivery, not for this one. */
    if (atomic_load_explicit(&g->forward, memory_order_seq_cst) &&
        (!consumed || atomic_load_explicit(&g->forward_hook, memory_order_seq_cst)) &&
        have_cur && !sb_is_dfl_or_ign(&cur)) {
        atomic_store(&g->owed, 1);
        if (!atomic_load(&g_hold) && atomic_exchange(&g->owed, 0))
            sb_forward(sig);
    }

    /* A foreign C handler that was there before us, after ours. */
    if (atomic_load_explicit(&g->chain, memory_order_relaxed))
        chain_call(sig, info, uctx);

    /* Escalation (asb.run(): a third shutdown signal kills a process stuck in C):
     * sigaction is async-signal-safe and g_default_action was filled in by sb_init(). */
    if (atomic_load_explicit(&g->reset_after, memory_order_relaxed) > 0 &&
        atomic_fetch_sub_explicit(&g->reset_after, 1, memory_order_acq_rel) == 1) {
        atomic_store(&g->forward, 0);
        atomic_store(&g->escalated, 1);
        sigaction(sig, &g_default_action, NULL);
    }

    /* What the handler cost the main thread is not the interrupted code's own time
     * (the interrupt hook's measure of a task hogging the CPU). */
    if (pthread_equal(pthread_self(), g_main_thread))
        atomic_fetch_add_explicit(&g_main_handler_ns, sb_now_ns() - ts, memory_order_relaxed);

    /* 5. errno restored. */
    errno = saved_errno;
}

int sb_lock_free(void)
{
    _Atomic uint64_t u64;
    _Atomic int i32;
    return atomic_is_lock_free(&u64) && atomic_is_lock_free(&i32);
}

static void after_fork_child(void);

int sb_init(void)
{
    static int done;
    if (!sb_lock_free())
        return -ENOTSUP;
    if (done)
        return 0;
    done = 1;
#ifdef SIGRTMIN
    g_rtmin = SIGRTMIN; /* a function call on glibc: cache it outside the handler */
    g_rtmax = SIGRTMAX;
#endif
    for (int sig = 0; sig < SB_NSIG; sig++)
        atomic_store(&g_sig[sig].orig_index, -1);
    atomic_store(&g_owner_pid, (int)getpid());
    g_main_thread = pthread_self();
    memset(&g_default_action, 0, sizeof g_default_action);
    g_default_action.sa_handler = SIG_DFL;
    sigemptyset(&g_default_action.sa_mask);
    /* From the instant fork() returns in a child (C code's forks included, which run no
     * Python hook), every bridged signal has its original action back. */
    int rc = pthread_atfork(NULL, NULL, after_fork_child);
    return rc == 0 ? 0 : -rc;
}

/* In the child, inside fork(): one thread, no locks held by anyone else.  The original
 * actions come back (sigaction), the subscriptions are dropped (sb_storage.c). */
static void after_fork_child(void)
{
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_sig *g = &g_sig[sig];
        if (!atomic_load(&g->held))
            continue;
        atomic_store(&g->held, 0);
        atomic_store(&g->forward, 0);
        atomic_store(&g->chain, 0);
        atomic_store(&g->reset_after, 0);
        struct sigaction cur;
        if (sigaction(sig, NULL, &cur) == 0 && sb_handler_is(&cur)) {
            const struct sigaction *o = sb_original(sig);
            if (o == NULL || atomic_load(&g->oneshot_fired))
                o = &g_default_action;
            sigaction(sig, o, NULL);
        }
    }
    sb_storage_after_fork_child();
    sb_owner_after_fork_child();
}

int sb_rtmin(void) { return g_rtmin < SB_NSIG ? g_rtmin : 0; }
int sb_rtmax(void) { return g_rtmax; }

int sb_disposition(int sig, uintptr_t *handler, int *flags)
{
    struct sigaction cur;
    if (!sb_valid_sig(sig))
        return -EINVAL;
    if (sigaction(sig, NULL, &cur) != 0)
        return -errno;
    if (flags != NULL)
        *flags = cur.sa_flags;
    if (handler != NULL)
        *handler = sb_handler_address(&cur);
    if (sb_handler_is(&cur))
        return SB_DISP_OURS;
    if (sb_is_dfl(&cur))
        return SB_DISP_DEFAULT;
    if (sb_is_ign(&cur))
        return SB_DISP_IGNORE;
    return SB_DISP_OTHER;
}

int sb_sigqueue(int pid, int sig, int32_t value)
{
#if defined(__linux__)
    union sigval v;
    memset(&v, 0, sizeof v); /* the whole union: a receiver reading sival_ptr sees value */
    v.sival_int = value;
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
