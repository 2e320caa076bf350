/* aiosigbridge: the interrupt timer (see sb_owner.c and src/aiosigbridge/_interrupt.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "sb_owner.h"

/* -- the interrupt timer ----------------------------------------------------------------
 * An interrupt of the main loop's running task is raised where the task is only once it
 * kept the CPU a while after the signal (see _interrupt.py); until then it lands at the
 * task's next await.  This thread trips Python's handler again at the time the hook asks
 * for, without the GIL: PyErr_SetInterruptEx is safe from any thread while Python's
 * table holds a callable (the owner's lock and the current action say so). */

static pthread_mutex_t g_timer_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_timer_cond;
static int g_timer_started, g_kicker_started;
static int64_t g_timer_at[SB_NSIG];
/* What a trip asks of BRIDGED: SB_T_RECHECK (the hook looks again at a pending
 * interrupt) and/or SB_T_REDO (a nested call to run again).  Both at once is a re-check:
 * it runs the hook, which a redo with nothing forwarded would not. */
#define SB_T_RECHECK 1
#define SB_T_REDO 2
/* A check that the last trip was taken: BRIDGED consumes the mark (retrip) when it runs.
 * A mark still there later means the trip was not acted on (by CPython or by us, in a
 * window no test has pinned down): trip again, backing off from 50 ms to 1 s, for as
 * long as the signal is held with BRIDGED in the table.  Without it, one lost trip
 * would leave a CPU-bound task uninterrupted for good. */
#define SB_T_VERIFY 4
#define SB_VERIFY_FIRST_NS 50000000LL
#define SB_VERIFY_MAX_NS 1000000000LL
static int g_timer_kind[SB_NSIG];
static int64_t g_verify_ns[SB_NSIG]; /* the next verify's delay (g_timer_lock) */

/* Mark the trip for sb_bridged(): 1 re-check, 2 not a delivery.  Never lowers a pending
 * 1 to 2 (a re-check BRIDGED has not consumed yet would be lost, and with it the raise
 * into a task that hogs the CPU). */
static void mark_retrip(int sig, int want)
{
    int cur = 0;
    while (!atomic_compare_exchange_weak(&g_sig[sig].retrip, &cur, want)) {
        if (cur == 1 || cur == want)
            return;
    }
}

/* -- the kicker: what needs the GIL --------------------------------------------------
 * The timer never waits for the GIL: with two threads trading it every switch interval,
 * a third waiter can starve for seconds (CPython asks for a switch only when none
 * happened), and a timer stuck there trips nothing.  The kicker thread does it instead:
 * it takes the GIL to make the main thread look at tripped signals now (from another
 * thread a trip alone may go unnoticed until the main thread next gives up the GIL:
 * 3.10-3.13 recompute "signals pending" for the main thread only then), and pokes
 * table restores owed to the main thread (read under the GIL).  Its state is under
 * g_timer_lock. */
static pthread_cond_t g_kick_cond = PTHREAD_COND_INITIALIZER;
static int g_kick;           /* take the GIL once */
static char g_debt[SB_NSIG]; /* poke these signals' owed table restores */

static void *kicker_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_timer_lock);
    for (;;) {
        int sig = 1;
        while (sig < SB_NSIG && !g_debt[sig])
            sig++;
        if (sig == SB_NSIG && !g_kick) {
            pthread_cond_wait(&g_kick_cond, &g_timer_lock);
            continue;
        }
        g_kick = 0;
        if (sig < SB_NSIG)
            g_debt[sig] = 0;
        pthread_mutex_unlock(&g_timer_lock);
        if (Py_IsInitialized()) {
            PyGILState_STATE gs = PyGILState_Ensure();
            if (sig < SB_NSIG) {
                /* Trip BRIDGED if the table still holds it (nothing writes the table
                 * while we hold the GIL). */
                PyObject *h = PyObject_CallFunction(sbo_getsignal_fn, "i", sig);
                if (h == NULL)
                    PyErr_Clear();
                if (h == sbo_bridged) {
                    mark_retrip(sig, 2); /* a poke: no delivery, if held again */
                    PyErr_SetInterruptEx(sig);
                }
                Py_XDECREF(h);
            }
            PyGILState_Release(gs); /* taking it was the kick */
        }
        pthread_mutex_lock(&g_timer_lock);
    }
    return NULL;
}

/* Trip BRIDGED now for a table restore owed to the main thread (the caller checked that
 * the table holds BRIDGED, a callable: PyErr_SetInterruptEx is then safe from any thread,
 * with or without the GIL).  A main thread that waits for the GIL (join(), a lock) sees
 * it when it takes the GIL back; one that runs Python code is made to look by the
 * kicker (sbo_timer_request). */
void sbo_poke_now(int sig)
{
    mark_retrip(sig, 2); /* a poke: no delivery, if held again */
    PyErr_SetInterruptEx(sig);
}

/* Start a detached thread with every signal blocked (deliveries go to the program's
 * threads).  0 or -errno. */
static int start_thread(void *(*fn)(void *))
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* inherited: blocked from its first moment */
    pthread_t t;
    pthread_attr_t ta;
    pthread_attr_init(&ta);
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &ta, fn, NULL);
    pthread_attr_destroy(&ta);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return -rc;
}

/* Trip BRIDGED for `sig` (g_timer_lock not held: the owner's lock comes first). */
static void timer_trip(int sig, int kind)
{
    pthread_mutex_lock(&sbo_lock);
    sb_own *o = &sbo_own[sig];
    struct sigaction cur;
    int trip = o->held && o->table_bridged && sigaction(sig, NULL, &cur) == 0 &&
               (sb_handler_is(&cur) || sbo_is_python_handler(&cur));
    if (trip && !(kind & (SB_T_RECHECK | SB_T_REDO)))
        trip = atomic_load(&g_sig[sig].retrip) != 0; /* a verify: the mark not taken */
    else if (trip)
        mark_retrip(sig, kind & SB_T_RECHECK ? 1 : 2);
    if (trip)
        PyErr_SetInterruptEx(sig); /* the table holds BRIDGED: safe without the GIL */
    int debt = !o->held && o->debt;
    pthread_mutex_unlock(&sbo_lock);
    if (trip || debt) {
        pthread_mutex_lock(&g_timer_lock);
        g_kick |= trip;
        g_debt[sig] |= (char)debt;
        pthread_cond_signal(&g_kick_cond);
        if (trip) {
            int64_t wait = kind & (SB_T_RECHECK | SB_T_REDO) || g_verify_ns[sig] == 0
                               ? SB_VERIFY_FIRST_NS
                               : g_verify_ns[sig];
            g_verify_ns[sig] = wait * 2 < SB_VERIFY_MAX_NS ? wait * 2 : SB_VERIFY_MAX_NS;
            int64_t at = sb_now_ns() + wait;
            if (g_timer_at[sig] == 0 || at < g_timer_at[sig])
                g_timer_at[sig] = at;
            g_timer_kind[sig] |= SB_T_VERIFY;
            pthread_cond_signal(&g_timer_cond);
        }
        pthread_mutex_unlock(&g_timer_lock);
    }
}

static void *timer_main(void *arg)
{
    (void)arg;
#ifdef __linux__
    /* Wake at the time asked, not up to the default 50 µs of timer slack later: the
     * re-checks are 100 µs apart at first (prctl(2), PR_SET_TIMERSLACK; this thread
     * only). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
    pthread_mutex_lock(&g_timer_lock);
    for (;;) {
        int64_t now = sb_now_ns(), next = 0;
        int tripped = 0;
        for (int sig = 1; sig < SB_NSIG; sig++) {
            int64_t at = g_timer_at[sig];
            if (at == 0)
                continue;
            if (at <= now) {
                int kind = g_timer_kind[sig];
                g_timer_at[sig] = 0;
                g_timer_kind[sig] = 0;
                pthread_mutex_unlock(&g_timer_lock);
                timer_trip(sig, kind);
                pthread_mutex_lock(&g_timer_lock);
                tripped = 1;
            } else if (next == 0 || at < next) {
                next = at;
            }
        }
        /* The lock was let go for a trip: what came in meanwhile is not in `next` (a slot
         * this pass had looked at already: the trip's own verify, or the main thread's
         * next re-check or redo, which on 3.13 often comes before timer_trip returns),
         * and its signal came while nobody waited.  Sleeping now would sleep on it for
         * good (the missed interrupt of a CPU-bound task): look again first. */
        if (tripped)
            continue;
        if (next == 0) {
            pthread_cond_wait(&g_timer_cond, &g_timer_lock);
        } else {
            struct timespec ts = {(time_t)(next / 1000000000), (long)(next % 1000000000)};
            pthread_cond_timedwait(&g_timer_cond, &g_timer_lock, &ts);
        }
    }
    return NULL;
}

int sbo_timer_request(int sig, int64_t deadline_ns, int redo)
{
    pthread_mutex_lock(&g_timer_lock);
    if (!g_timer_started) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
#ifndef __APPLE__
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
#endif
        pthread_cond_init(&g_timer_cond, &attr);
        pthread_condattr_destroy(&attr);
        int rc = g_kicker_started ? 0 : start_thread(kicker_main);
        g_kicker_started = rc == 0;
        if (rc == 0)
            rc = start_thread(timer_main);
        if (rc != 0) {
            pthread_mutex_unlock(&g_timer_lock);
            return rc;
        }
        g_timer_started = 1;
    }
    if (g_timer_at[sig] == 0 || deadline_ns < g_timer_at[sig])
        g_timer_at[sig] = deadline_ns;
    g_timer_kind[sig] |= redo ? SB_T_REDO : SB_T_RECHECK;
    pthread_cond_signal(&g_timer_cond);
    pthread_mutex_unlock(&g_timer_lock);
    return 0;
}

int sb_retrip_at(int sig, int64_t deadline_ns)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    return sbo_timer_request(sig, deadline_ns, 0);
}


/* Inside fork(), in the child: the timer and kicker threads are not there; new ones on
 * demand. */
void sbo_timer_after_fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_timer_lock = fresh;
    g_timer_started = 0;
    memset(g_timer_at, 0, sizeof g_timer_at);
    memset(g_timer_kind, 0, sizeof g_timer_kind);
    memset(g_verify_ns, 0, sizeof g_verify_ns);
    pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
    g_kick_cond = fresh_cond;
    g_kicker_started = g_kick = 0;
    memset(g_debt, 0, sizeof g_debt);
}
