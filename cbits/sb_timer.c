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

#include "sb_owner.h"

/* -- the interrupt timer ----------------------------------------------------------------
 * An interrupt of the main loop's running task is raised where the task is only once it
 * kept the CPU a while after the signal (see _interrupt.py); until then it lands at the
 * task's next await.  This thread trips Python's handler again at the time the hook asks
 * for, without the GIL: PyErr_SetInterruptEx is safe from any thread while Python's
 * table holds a callable (the owner's lock and the current action say so). */

static pthread_mutex_t g_timer_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_timer_cond;
static int g_timer_started;
static int64_t g_timer_at[SB_NSIG];
static int g_timer_redo[SB_NSIG]; /* a BRIDGED call to run again (not a re-check) */

/* Make the main thread look at tripped signals now: from another thread, a trip alone
 * may go unnoticed until the main thread next gives up the GIL (3.10-3.13 recompute
 * "signals pending" for the main thread only then), so ask for the GIL. */
static void kick_main_thread(void)
{
    PyGILState_STATE gs = PyGILState_Ensure();
    PyGILState_Release(gs);
}

static void timer_trip(int sig, int redo)
{
    pthread_mutex_lock(&sbo_lock);
    sb_own *o = &sbo_own[sig];
    struct sigaction cur;
    int trip = o->held && o->table_bridged && sigaction(sig, NULL, &cur) == 0 &&
               (sb_handler_is(&cur) || sbo_is_python_handler(&cur));
    if (trip) {
        atomic_store(&g_sig[sig].retrip, redo ? 2 : 1);
        PyErr_SetInterruptEx(sig); /* the table holds BRIDGED: safe without the GIL */
    }
    int debt = !o->held && o->debt;
    pthread_mutex_unlock(&sbo_lock);
    if (!Py_IsInitialized())
        return;
    if (debt) {
        /* A table restore owed to the main thread: trip BRIDGED if it is still there
         * (read under the GIL: nothing writes the table meanwhile). */
        PyGILState_STATE gs = PyGILState_Ensure();
        PyObject *h = PyObject_CallFunction(sbo_getsignal_fn, "i", sig);
        if (h == NULL)
            PyErr_Clear();
        trip = h == sbo_bridged;
        if (trip) {
            atomic_store(&g_sig[sig].retrip, 2); /* a poke: no delivery, if held again */
            PyErr_SetInterruptEx(sig);
        }
        Py_XDECREF(h);
        PyGILState_Release(gs);
    }
    if (trip)
        kick_main_thread();
}

static void *timer_main(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* deliveries go to the program's threads */
    pthread_mutex_lock(&g_timer_lock);
    for (;;) {
        int64_t now = sb_now_ns(), next = 0;
        for (int sig = 1; sig < SB_NSIG; sig++) {
            int64_t at = g_timer_at[sig];
            if (at == 0)
                continue;
            if (at <= now) {
                int redo = g_timer_redo[sig];
                g_timer_at[sig] = 0;
                g_timer_redo[sig] = 0;
                pthread_mutex_unlock(&g_timer_lock);
                timer_trip(sig, redo);
                pthread_mutex_lock(&g_timer_lock);
            } else if (next == 0 || at < next) {
                next = at;
            }
        }
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
        pthread_t t;
        pthread_attr_t ta;
        pthread_attr_init(&ta);
        pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &ta, timer_main, NULL);
        pthread_attr_destroy(&ta);
        if (rc != 0) {
            pthread_mutex_unlock(&g_timer_lock);
            return -rc;
        }
        g_timer_started = 1;
    }
    if (g_timer_at[sig] == 0 || deadline_ns < g_timer_at[sig])
        g_timer_at[sig] = deadline_ns;
    g_timer_redo[sig] |= redo;
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


/* Inside fork(), in the child: the timer thread is not there; a new one on demand. */
void sbo_timer_after_fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_timer_lock = fresh;
    g_timer_started = 0;
    memset(g_timer_at, 0, sizeof g_timer_at);
    memset(g_timer_redo, 0, sizeof g_timer_redo);
}
