/* aiosigbridge: the one owner of each signal's process-wide state.
 *
 * Why it is in C
 * --------------
 * A signal's process-wide state is four things that must agree: the C action, Python's
 * table entry (signal.getsignal()), whether our handler forwards to Python
 * (PyErr_SetInterruptEx, only while the table holds a callable), and the originals to
 * give back.  Every change of them happens here, in one call, under one lock, with every
 * signal blocked in the changing thread (libuv's discipline) and forwards to Python held
 * back until the change ends.  Written in Python, a change could be cut in the middle by
 * a Python-level signal handler (KeyboardInterrupt, the bridge's own interrupt) at any
 * bytecode; here no Python code runs during a change except inside `_signal.signal()`,
 * which first runs the handlers of signals already tripped: one that raises makes it fail
 * before it changes anything, so the exception is kept, the write retried, and the
 * exception handed to the caller once the change is complete (SB_RAISED).
 *
 * Python objects cross cffi as id() (their address in CPython): the caller passes a list
 * (the "box") that the call appends its Python results to, as (kind, signum, object):
 * "expect" (the table entry now expected), "warn" (replaced behind our back), "raise"
 * (an exception to re-raise), "original" (BRIDGED's previous handler), "drop" (a
 * reference released outside the change).
 *
 * The states of one signal (FREE: nobody holds it; HELD: some subscriber does):
 *
 *            first holder                     last holder, main thread
 *   FREE ──────────────────> HELD ────────────────────────────────────> FREE
 *                           │  ▲                     │ last holder, another thread,
 *      replaced behind our  │  │ put back (table as  │ BRIDGED in Python's table
 *      back (warned once)   ▼  │ we left it, CPython's▼
 *                        REPLACED  handler or DFL)   OWED ── main thread's next call,
 *                                                         or BRIDGED running ──> FREE
 *
 *   Python's table while HELD: the previous Python handler when there was one (it keeps
 *   running: our handler forwards to it), else asb.BRIDGED, put there by the main thread
 *   only; BRIDGED also once the main thread's loop wants Python-level code (interrupts),
 *   and then until the signal is FREE again.  A change needing the table off the main
 *   thread records the debt (OWED); the main thread pays it at its next call, or at once
 *   when BRIDGED runs (the releasing thread trips it where the original is SIG_DFL/IGN).
 *   Fork: the child's C actions are given back inside fork() (sigbridge.c); its Python
 *   hook pays the table (sb_fork_child).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sb_internal.h"

#if defined(__GNUC__)
/* PyErr_Fetch/Restore: the stable ABI's way for 3.10 (deprecated, not removed, in 3.12). */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif

typedef struct {
    int held;
    PyObject *py_original;   /* the table entry before us (strong ref) while held or owed */
    PyObject *last_original; /* after release: what a BRIDGED put back later stands for */
    int orig_callable;
    int table_bridged; /* BRIDGED sits in Python's table because we put it there */
    int debt;          /* not held; the table still owes py_original */
    int poked;         /* ... and BRIDGED was tripped to pay it (a poke, not a delivery) */
    int replaced;
    int warned;
    int behind; /* reached through a C handler installed over ours (it chains to ours) */
    int orphan; /* let go while a C handler was over ours: it may still chain to ours */
    int restart;
    int user_restart; /* SA_RESTART chosen by others (signal.siginterrupt(sig, False)) */
    int arms;         /* run()s that armed the escalation */
    uint8_t demand[SB_MAX_SLOTS];
} sb_own;

typedef struct {
    sigset_t mask;
    int gil;
    PyGILState_STATE gs;
    PyObject *box;
    int raised;
} sb_change;

static sb_own g_own[SB_NSIG];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uintptr_t g_changer; /* the thread inside a change, 0 if none */
static int g_fork_locked;
static uint64_t g_deferred;  /* BRIDGED calls that came during a change (changer only) */
static PyObject *g_bridged, *g_signal_fn, *g_getsignal_fn, *g_sig_dfl;
static uintptr_t g_py_handler; /* CPython's own C handler, once seen */
static struct sigaction g_dfl_action, g_ign_action;

static uint64_t bit_of(int sig) { return (uint64_t)1 << (sig - 1); }

/* -- Python helpers (GIL held) --------------------------------------------------------- */

static void box_add(sb_change *c, const char *kind, int sig, PyObject *obj)
{
    if (c->box == NULL)
        return;
    PyObject *t = Py_BuildValue("(siO)", kind, sig, obj != NULL ? obj : Py_None);
    if (t == NULL || PyList_Append(c->box, t) != 0)
        PyErr_Clear();
    Py_XDECREF(t);
}

/* Release a reference outside the change: the box keeps the object alive until the
 * caller drops the box, so no destructor (Python code) runs in the middle. */
static void box_drop(sb_change *c, PyObject *obj)
{
    if (obj == NULL)
        return;
    box_add(c, "drop", 0, obj);
    Py_DECREF(obj);
}

static void need_gil(sb_change *c)
{
    if (!c->gil) {
        c->gs = PyGILState_Ensure();
        c->gil = 1;
    }
}

static void stash_exception(sb_change *c)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v != NULL && tb != NULL)
        PyException_SetTraceback(v, tb);
    if (v != NULL) {
        box_add(c, "raise", 0, v);
        c->raised = 1;
    }
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
}

static PyObject *table_get(sb_change *c, int sig)
{
    need_gil(c);
    PyObject *h = PyObject_CallFunction(g_getsignal_fn, "i", sig);
    if (h == NULL)
        PyErr_Clear();
    return h;
}

/* 0 SIG_DFL, 1 SIG_IGN, 2 a callable, 3 none known (a handler Python did not install). */
static int py_kind(PyObject *h)
{
    if (h == NULL || h == Py_None)
        return 3;
    if (PyLong_Check(h)) {
        long v = PyLong_AsLong(h);
        if (v == -1 && PyErr_Occurred())
            PyErr_Clear();
        return v == 1 ? 1 : 0;
    }
    return PyCallable_Check(h) ? 2 : 3;
}

static int same_entry(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    if (a == NULL || b == NULL || !PyLong_Check(a) || !PyLong_Check(b))
        return 0;
    int r = PyObject_RichCompareBool(a, b, Py_EQ);
    if (r < 0)
        PyErr_Clear();
    return r == 1;
}

static int is_python_handler(const struct sigaction *sa)
{
    return g_py_handler != 0 && !(sa->sa_flags & SA_SIGINFO) &&
           (uintptr_t)sa->sa_handler == g_py_handler;
}

static int is_foreign(const struct sigaction *sa)
{
    return !sb_handler_is(sa) && !sb_is_dfl_or_ign(sa) && !is_python_handler(sa);
}

/* Python's table entry for sig := obj.  Main thread only.  `_signal.signal()` first
 * runs the Python-level handlers of tripped signals; one that raises makes it fail
 * before it changes anything: keep the exception (re-raised after the change) and try
 * again.  It installs CPython's C handler (or SIG_DFL/IGN): callers put ours back. */
static int table_set(sb_change *c, int sig, PyObject *obj)
{
    need_gil(c);
    for (int tries = 0; tries < 16; tries++) {
        PyObject *old = PyObject_CallFunction(g_signal_fn, "iO", sig, obj);
        if (old != NULL) {
            box_drop(c, old);
            struct sigaction cur;
            if (PyCallable_Check(obj) && sigaction(sig, NULL, &cur) == 0 &&
                !(cur.sa_flags & SA_SIGINFO) && !sb_is_dfl_or_ign(&cur))
                g_py_handler = (uintptr_t)cur.sa_handler;
            return 0;
        }
        stash_exception(c);
    }
    return -EINTR;
}

/* What to write back: the original entry, or SIG_DFL where it was a C handler Python
 * did not install (None cannot be written; the C action is put back exactly anyway). */
static PyObject *table_original(const sb_own *o)
{
    int k = py_kind(o->py_original);
    return k == 3 ? g_sig_dfl : o->py_original;
}

/* -- changes ----------------------------------------------------------------------------- */

static int change_begin(sb_change *c, uintptr_t box)
{
    uintptr_t self = (uintptr_t)pthread_self();
    if (atomic_load(&g_changer) == self)
        return -EDEADLK; /* called back from inside a change (a Python-level handler) */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &c->mask);
    pthread_mutex_lock(&g_lock);
    atomic_store(&g_changer, self);
    atomic_store(&g_hold, 1);
    c->gil = 0;
    c->box = (PyObject *)box;
    c->raised = 0;
    return 0;
}

static int change_end(sb_change *c)
{
    /* Forwards owed during the change, now that the state agrees again. */
    atomic_store(&g_hold, 0);
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_sig *g = &g_sig[sig];
        if (atomic_exchange(&g->owed, 0) && atomic_load(&g->forward) && atomic_load(&g->held))
            sb_forward(sig);
    }
    /* BRIDGED calls that came while _signal.signal() ran (we held the GIL then). */
    if (g_deferred != 0 && c->gil) {
        for (int sig = 1; sig < SB_NSIG; sig++) {
            if (!(g_deferred & bit_of(sig)))
                continue;
            PyObject *h = table_get(c, sig);
            if (h != NULL && PyCallable_Check(h))
                PyErr_SetInterruptEx(sig);
            Py_XDECREF(h);
        }
    }
    g_deferred = 0;
    atomic_store(&g_changer, 0);
    int raised = c->raised;
    if (c->gil)
        PyGILState_Release(c->gs);
    pthread_mutex_unlock(&g_lock);
    pthread_sigmask(SIG_SETMASK, &c->mask, NULL);
    return raised ? SB_RAISED : 0;
}

static int install_ours(int sig)
{
    sb_sig *g = &g_sig[sig];
    sb_handler_action(&g->ours, g_own[sig].restart);
    return sigaction(sig, &g->ours, NULL) == 0 ? 0 : -errno;
}

/* The saved original C action back (SIG_DFL if it was one-shot and has fired). */
static void restore_action(int sig)
{
    const struct sigaction *o = sb_original(sig);
    if (o == NULL || atomic_load(&g_sig[sig].oneshot_fired))
        o = &g_dfl_action;
    sigaction(sig, o, NULL);
}

static int union_demand(int sig)
{
    int u = 0;
    for (int i = 0; i < SB_MAX_SLOTS; i++)
        u |= g_own[sig].demand[i];
    return u;
}

/* forward and SA_RESTART from the demand.  SA_RESTART: as the original chose where it
 * was a handler (signal.siginterrupt(sig, False) sets it; CPython's own leaves it off);
 * for SIG_DFL/IGN originals, on unless we forward: a main thread blocked in a
 * restartable call would not see Python's handler until the call returns. */
static int settle_flags(int sig, int u)
{
    sb_own *o = &g_own[sig];
    int fwd;
    if (o->table_bridged)
        fwd = (u & (SB_WANT_PYLEVEL | SB_WANT_FAST)) || (o->orig_callable && !(u & SB_WANT_CONSUME));
    else
        fwd = o->orig_callable && !(u & SB_WANT_CONSUME);
    atomic_store(&g_sig[sig].forward, fwd);
    const struct sigaction *orig = sb_original(sig);
    int orig_handler = orig != NULL && !sb_is_dfl_or_ign(orig);
    return o->user_restart || (!orig_handler && !fwd);
}

static void set_original_from(sb_change *c, int sig, const struct sigaction *cur)
{
    sb_own *o = &g_own[sig];
    (void)c;
    if (sb_handler_is(cur)) {
        if (sb_original(sig) == NULL)
            sb_set_original(sig, &g_dfl_action);
        return; /* ours already (escalated, or not given back): keep what we saved */
    }
    if (is_python_handler(cur) && o->table_bridged) {
        /* CPython's handler is there because someone put BRIDGED back with
         * signal.signal(): the original C action is what BRIDGED stood for. */
        int k = py_kind(o->py_original);
        sb_set_original(sig, k == 1 ? &g_ign_action : k == 2 ? cur : &g_dfl_action);
        return;
    }
    sb_set_original(sig, cur);
}

static int take(sb_change *c, int sig, int u, int is_main)
{
    sb_own *o = &g_own[sig];
    sb_sig *g = &g_sig[sig];
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) != 0)
        return -errno;
    PyObject *now = table_get(c, sig);
    if (o->debt) {
        /* BRIDGED still in the table from an earlier holder: its original is owed. */
        o->debt = o->poked = 0;
        o->table_bridged = now == g_bridged;
        if (!o->table_bridged) { /* replaced meanwhile: that is the original now */
            box_drop(c, o->py_original);
            Py_XINCREF(now);
            o->py_original = now;
        }
    } else {
        box_drop(c, o->py_original);
        o->table_bridged = now == g_bridged;
        if (o->table_bridged) { /* BRIDGED put back after we let go */
            o->py_original = o->last_original != NULL ? o->last_original : g_sig_dfl;
            Py_INCREF(o->py_original);
        } else {
            Py_XINCREF(now);
            o->py_original = now;
        }
    }
    box_drop(c, now);
    o->orig_callable = py_kind(o->py_original) == 2;
    if (g_py_handler == 0 && o->orig_callable && !o->table_bridged &&
        !(cur.sa_flags & SA_SIGINFO) && !sb_is_dfl_or_ign(&cur) && !sb_handler_is(&cur))
        g_py_handler = (uintptr_t)cur.sa_handler; /* the table holds a Python callable */

    o->behind = o->orphan && is_foreign(&cur);
    o->orphan = 0;
    if (!o->behind)
        set_original_from(c, sig, &cur);
    const struct sigaction *orig = sb_original(sig);
    int foreign = orig != NULL && is_foreign(orig);
    atomic_store(&g->chain, foreign && !o->behind);
    atomic_store(&g->oneshot, foreign && (orig->sa_flags & SA_RESETHAND) != 0);
    atomic_store(&g->oneshot_fired, 0);
    atomic_store(&g->escalated, 0);
    atomic_store(&g->absorb_thread, 0);
    o->user_restart = orig != NULL && (orig->sa_flags & SA_RESTART); /* siginterrupt(s, False) */

    /* BRIDGED into Python's table (main thread only) where the original is SIG_DFL/IGN
     * (getsignal() must not claim a default action that no longer happens) or the main
     * loop wants Python-level code.  Before our action: CPython's C handler, which
     * signal.signal() installs, is then never in place while we hold the signal. */
    int k = py_kind(o->py_original);
    if (is_main && !o->table_bridged && !o->behind && (k <= 1 || (u & SB_WANT_PYLEVEL))) {
        if (table_set(c, sig, g_bridged) == 0)
            o->table_bridged = 1;
    }
    o->held = 1;
    o->replaced = o->warned = 0;
    o->restart = settle_flags(sig, u);
    atomic_store(&g->held, 1);
    if (!o->behind && install_ours(sig) != 0) {
        int e = errno;
        atomic_store(&g->held, 0);
        atomic_store(&g->forward, 0);
        atomic_store(&g->chain, 0);
        o->held = 0;
        sigaction(sig, &cur, NULL);
        if (o->table_bridged && is_main) {
            table_set(c, sig, table_original(o));
            sigaction(sig, &cur, NULL);
            o->table_bridged = 0;
        }
        return -e;
    }
    return 0;
}

/* The table owes its original (BRIDGED still there): pay it.  Main thread only. */
static void pay_debt(sb_change *c, int sig)
{
    sb_own *o = &g_own[sig];
    PyObject *now = table_get(c, sig);
    if (now == g_bridged) {
        struct sigaction cur;
        int have = sigaction(sig, NULL, &cur) == 0;
        PyObject *entry = table_original(o);
        table_set(c, sig, entry);
        /* signal.signal() set the C action too: put back the one before (the original
         * as restored, or a C handler installed since), unless it is CPython's handler
         * and the entry is not a callable. */
        if (have && (!is_python_handler(&cur) || py_kind(entry) == 2))
            sigaction(sig, &cur, NULL);
    }
    box_drop(c, now);
    o->debt = o->poked = o->table_bridged = 0;
    box_drop(c, o->last_original);
    o->last_original = o->py_original;
    o->py_original = NULL;
}

static int timer_request(int sig, int64_t deadline_ns, int redo);

static void give_back(sb_change *c, int sig, int is_main)
{
    sb_own *o = &g_own[sig];
    sb_sig *g = &g_sig[sig];
    /* From here our handler, if anything reaches it, acts as the original. */
    atomic_store(&g->held, 0);
    atomic_store(&g->forward, 0);
    atomic_store(&g->chain, 0);
    atomic_store(&g->reset_after, 0);
    o->held = 0;
    struct sigaction cur;
    sigaction(sig, NULL, &cur);
    int escalated = atomic_exchange(&g->escalated, 0);
    PyObject *now = table_get(c, sig);
    int table_ours = o->table_bridged ? now == g_bridged : same_entry(now, o->py_original);
    int warn = 0;
    if (o->behind) {
        o->behind = 0;
        o->orphan = 1; /* the C handler over ours still chains to it */
        table_ours = table_ours && o->table_bridged;
    } else if (sb_handler_is(&cur) || (escalated && sb_is_dfl_or_ign(&cur)) ||
               (table_ours && is_python_handler(&cur) &&
                (o->table_bridged || o->orig_callable))) {
        /* Still ours to give back (CPython's handler under the entry we left in the
         * table: someone put back what getsignal() returned). */
        restore_action(sig);
        o->orphan = 0;
    } else if (!table_ours) {
        /* signal.signal() replaced both: they are someone else's now. */
        o->table_bridged = 0;
        o->orphan = is_foreign(&cur);
        warn = !o->warned;
    } else {
        /* C code replaced ours, the table is as we left it: ours may still be chained
         * to by that handler, and then acts as the original. */
        o->orphan = 1;
        warn = !o->warned;
    }
    if (table_ours && o->table_bridged) {
        if (is_main) {
            struct sigaction before;
            sigaction(sig, NULL, &before);
            PyObject *entry = table_original(o);
            table_set(c, sig, entry);
            /* signal.signal() set a fresh action: the exact original back (its flags:
             * signal.siginterrupt()), or the C handler on top; never CPython's handler
             * under an entry that is not a callable. */
            if (!is_python_handler(&before) || py_kind(entry) == 2)
                sigaction(sig, &before, NULL);
            o->table_bridged = 0;
        } else {
            o->debt = 1;
            /* Trip BRIDGED (a callable: safe) so the main thread pays at its next
             * bytecode.  Only where nothing else reaches BRIDGED: with a callable
             * original, CPython's handler is back and a real delivery trips it too. */
            if (!o->orig_callable && !is_python_handler(&cur)) {
                o->poked = 1;
                timer_request(sig, sb_now_ns(), 1); /* it makes the main thread look */
            }
        }
    }
    box_drop(c, now);
    if (warn)
        box_add(c, "warn", sig, NULL);
    if (!o->debt) {
        box_drop(c, o->last_original);
        o->last_original = o->py_original;
        o->py_original = NULL;
        o->table_bridged = 0;
    }
    o->replaced = o->warned = 0;
}

/* Still ours right now (an undetected replacement must not be written over)? */
/* signal.siginterrupt() changed SA_RESTART on our action: theirs to choose. */
static void adopt_restart(int sig, const struct sigaction *cur)
{
    sb_own *o = &g_own[sig];
    int restart = (cur->sa_flags & SA_RESTART) != 0;
    if (sb_handler_is(cur) && (cur->sa_flags & SA_SIGINFO) && restart != (o->restart != 0)) {
        o->user_restart = o->restart = restart;
        g_sig[sig].ours.sa_flags = cur->sa_flags;
    }
}

static int still_ours(sb_change *c, int sig)
{
    sb_own *o = &g_own[sig];
    struct sigaction cur;
    if (o->replaced || o->behind || sigaction(sig, NULL, &cur) != 0 || !sb_handler_is(&cur))
        return 0;
    adopt_restart(sig, &cur);
    PyObject *now = table_get(c, sig);
    int same = same_entry(now, o->table_bridged ? g_bridged : o->py_original);
    box_drop(c, now);
    return same;
}

static void adjust(sb_change *c, int sig, int u, int is_main)
{
    sb_own *o = &g_own[sig];
    if ((u & SB_WANT_PYLEVEL) && is_main && !o->table_bridged && still_ours(c, sig)) {
        /* Python-level code wanted in the main thread: BRIDGED goes into the table and
         * stays while the signal is held.  signal.signal() installs CPython's handler
         * for an instant; a delivery to another thread then reaches BRIDGED, which
         * records it (without its siginfo). */
        if (table_set(c, sig, g_bridged) == 0) {
            o->table_bridged = 1;
            install_ours(sig);
        }
    }
    int ours = still_ours(c, sig); /* adopts a SA_RESTART someone chose meanwhile */
    int restart = settle_flags(sig, u);
    if (restart != o->restart && ours) {
        o->restart = restart;
        install_ours(sig);
    }
}

static void expect(sb_change *c, int sig)
{
    sb_own *o = &g_own[sig];
    need_gil(c);
    box_add(c, "expect", sig, o->held ? (o->table_bridged ? g_bridged : o->py_original) : NULL);
}

/* Main thread: table restores owed, and BRIDGED put back (signal.signal() with what
 * getsignal() returned while it was bridged) after the signal was let go: the table gets
 * the original again (and signal.signal() sets the matching C action). */
static void pay_debts(sb_change *c)
{
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_own *o = &g_own[sig];
        if (o->held)
            continue;
        if (o->debt) {
            pay_debt(c, sig);
            expect(c, sig);
        } else if (o->last_original != NULL) {
            PyObject *now = table_get(c, sig);
            if (now == g_bridged)
                table_set(c, sig, py_kind(o->last_original) != 3 ? o->last_original : g_sig_dfl);
            box_drop(c, now);
        }
    }
}

static int reconcile(sb_change *c, int sig, int is_main)
{
    sb_own *o = &g_own[sig];
    int u = union_demand(sig);
    int rc = 0;
    if ((u & SB_WANT_WATCH) && !o->held)
        rc = take(c, sig, u, is_main);
    else if (!(u & SB_WANT_WATCH) && o->held)
        give_back(c, sig, is_main);
    else if (o->held)
        adjust(c, sig, u, is_main);
    if (!o->held && o->debt && is_main)
        pay_debt(c, sig);
    expect(c, sig);
    return rc;
}

/* -- entry points ------------------------------------------------------------------------ */

int sb_owner_init(uintptr_t bridged, uintptr_t signal_fn, uintptr_t getsignal_fn)
{
    PyGILState_STATE gs = PyGILState_Ensure();
    memset(&g_dfl_action, 0, sizeof g_dfl_action);
    g_dfl_action.sa_handler = SIG_DFL;
    sigemptyset(&g_dfl_action.sa_mask);
    g_ign_action = g_dfl_action;
    g_ign_action.sa_handler = SIG_IGN;
    PyObject *objs[3] = {(PyObject *)bridged, (PyObject *)signal_fn, (PyObject *)getsignal_fn};
    PyObject **slots[3] = {&g_bridged, &g_signal_fn, &g_getsignal_fn};
    for (int i = 0; i < 3; i++) {
        PyObject *old = *slots[i];
        Py_INCREF(objs[i]);
        *slots[i] = objs[i];
        Py_XDECREF(old);
    }
    if (g_sig_dfl == NULL)
        g_sig_dfl = PyLong_FromLong(0);
    /* CPython installs its C handler for SIGINT at start-up (default_int_handler). */
    PyObject *h = PyObject_CallFunction(g_getsignal_fn, "i", SIGINT);
    struct sigaction cur;
    if (h != NULL && py_kind(h) == 2 && sigaction(SIGINT, NULL, &cur) == 0 &&
        !(cur.sa_flags & SA_SIGINFO) && !sb_is_dfl_or_ign(&cur) && !sb_handler_is(&cur))
        g_py_handler = (uintptr_t)cur.sa_handler;
    if (h == NULL)
        PyErr_Clear();
    Py_XDECREF(h);
    PyGILState_Release(gs);
    return g_sig_dfl == NULL ? -ENOMEM : 0;
}

/* The caller's own bookkeeping, made in the same change: `ops` is a list of
 * (dict, key, value) triples, value None deleting the key.  A registration is then
 * whole or not at all, whatever Python-level handler runs before or after the call. */
static void commit(sb_change *c, uintptr_t ops_id)
{
    if (ops_id == 0)
        return;
    need_gil(c);
    PyObject *ops = (PyObject *)ops_id;
    Py_ssize_t n = PyList_Size(ops);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *op = PyList_GetItem(ops, i); /* borrowed */
        PyObject *d = PyTuple_GetItem(op, 0), *key = PyTuple_GetItem(op, 1);
        PyObject *value = PyTuple_GetItem(op, 2);
        if (d == NULL || key == NULL || value == NULL)
            break;
        PyObject *old = PyDict_GetItem(d, key); /* borrowed: kept in the box, freed later */
        if (old != NULL) {
            Py_INCREF(old);
            box_drop(c, old);
        }
        if (value == Py_None) {
            if (old != NULL && PyDict_DelItem(d, key) != 0)
                PyErr_Clear();
        } else if (PyDict_SetItem(d, key, value) != 0) {
            PyErr_Clear();
        }
    }
    if (PyErr_Occurred())
        PyErr_Clear();
}

int sb_demand(int slot, uint32_t gen, int sig, int flags, int is_main, uintptr_t box, uintptr_t ops)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    sb_change c;
    int rc = change_begin(&c, box);
    if (rc != 0)
        return rc;
    if (!sb_slot_valid(slot) || sb_slot_gen(slot) != gen) {
        change_end(&c);
        return -ESTALE; /* the subscription was closed */
    }
    sb_own *o = &g_own[sig];
    int old = o->demand[slot];
    o->demand[slot] = (uint8_t)flags;
    if (is_main)
        pay_debts(&c);
    /* The slot records the signal from before our action goes in, and stops before it
     * goes: a delivery is never taken by our handler and stored nowhere. */
    if (flags & SB_WANT_WATCH)
        sb_slot_watch(slot, sig, 1);
    rc = reconcile(&c, sig, is_main);
    if (rc < 0) {
        o->demand[slot] = (uint8_t)old;
        reconcile(&c, sig, is_main);
    } else {
        commit(&c, ops);
    }
    if (!(o->demand[slot] & SB_WANT_WATCH))
        sb_slot_watch(slot, sig, 0);
    int end = change_end(&c);
    return rc < 0 ? rc : end;
}

int sb_unsubscribe(int slot, uint32_t gen, int is_main, uintptr_t box)
{
    sb_change c;
    int rc = change_begin(&c, box);
    if (rc != 0)
        return rc;
    if (!sb_slot_valid(slot) || sb_slot_gen(slot) != gen) {
        change_end(&c);
        return -ESTALE; /* closed already (a close cut short, made again) */
    }
    if (is_main)
        pay_debts(&c);
    for (int sig = 1; sig < SB_NSIG; sig++) {
        if (g_own[sig].demand[slot] == 0)
            continue;
        g_own[sig].demand[slot] = 0;
        sb_slot_watch(slot, sig, 0);
        reconcile(&c, sig, is_main);
    }
    int end = change_end(&c);
    rc = sb_slot_release(slot);
    return rc < 0 ? rc : end;
}

/* Replaced behind our back?  Put back (the table as we left it, and the action that
 * signal.signal() installs for it)?  Our action put back by C code without SA_SIGINFO,
 * or its SA_RESTART changed by signal.siginterrupt()?  Debts (main thread). */
int sb_check(int is_main, uintptr_t box)
{
    sb_change c;
    int rc = change_begin(&c, box);
    if (rc != 0)
        return rc;
    if (is_main)
        pay_debts(&c);
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_own *o = &g_own[sig];
        struct sigaction cur;
        if (!o->held || o->behind || sigaction(sig, NULL, &cur) != 0)
            continue;
        if (sb_handler_is(&cur)) {
            if (!(cur.sa_flags & SA_SIGINFO))
                install_ours(sig); /* put back by C code with signal(): whole again */
            else
                adopt_restart(sig, &cur);
            o->replaced = 0;
            continue;
        }
        PyObject *now = table_get(&c, sig);
        PyObject *want = o->table_bridged ? g_bridged : o->py_original;
        int k = py_kind(want);
        int put_back = same_entry(now, want) &&
                       ((k == 2 && is_python_handler(&cur)) ||
                        (k == 0 && sb_is_dfl(&cur)) || (k == 1 && sb_is_ign(&cur)));
        box_drop(&c, now);
        if (put_back) {
            install_ours(sig);
            o->replaced = o->warned = 0;
        } else if (!o->replaced) {
            o->replaced = 1;
            if (!o->warned) {
                o->warned = 1;
                box_add(&c, "warn", sig, NULL);
            }
        }
    }
    return change_end(&c);
}

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
    pthread_mutex_lock(&g_lock);
    sb_own *o = &g_own[sig];
    struct sigaction cur;
    int trip = o->held && o->table_bridged && sigaction(sig, NULL, &cur) == 0 &&
               (sb_handler_is(&cur) || is_python_handler(&cur));
    if (trip) {
        atomic_store(&g_sig[sig].retrip, redo ? 2 : 1);
        PyErr_SetInterruptEx(sig); /* the table holds BRIDGED: safe without the GIL */
    }
    int debt = !o->held && o->debt;
    pthread_mutex_unlock(&g_lock);
    if (!Py_IsInitialized())
        return;
    if (debt) {
        /* A table restore owed to the main thread: trip BRIDGED if it is still there
         * (read under the GIL: nothing writes the table meanwhile). */
        PyGILState_STATE gs = PyGILState_Ensure();
        PyObject *h = PyObject_CallFunction(g_getsignal_fn, "i", sig);
        if (h == NULL)
            PyErr_Clear();
        trip = h == g_bridged;
        if (trip)
            PyErr_SetInterruptEx(sig);
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

static int timer_request(int sig, int64_t deadline_ns, int redo)
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
    return timer_request(sig, deadline_ns, 0);
}

/* asb.BRIDGED is running in the main thread (Python-level, signals-unblocked). */
int sb_bridged(int sig, uintptr_t box)
{
    if (!sb_valid_sig(sig))
        return 0;
    if (atomic_load(&g_changer) == (uintptr_t)pthread_self()) {
        g_deferred |= bit_of(sig); /* inside _signal.signal() of a change: after it */
        return SB_B_DEFER;
    }
    if (getpid() != atomic_load(&g_owner_pid))
        return SB_B_FORK;
    sb_change c;
    if (change_begin(&c, box) != 0)
        return SB_B_DEFER;
    sb_own *o = &g_own[sig];
    sb_sig *g = &g_sig[sig];
    int res = 0;
    int forwarded = atomic_exchange(&g->fwd_pending, 0);
    int kick = atomic_exchange(&g->retrip, 0); /* the timer's: 1 re-check, 2 redo */
    need_gil(&c);
    if (o->held && kick == 1 && !forwarded) {
        /* The interrupt timer: the hook looks again at an interrupt still pending. */
        res |= SB_B_HELD | SB_B_RETRIP | SB_B_HOOK;
    } else if (o->held && kick == 2 && !forwarded) {
        res |= SB_B_HELD; /* a deferred call whose forward another call took: done */
    } else if (o->held) {
        res |= SB_B_HELD;
        struct sigaction cur;
        int put_back = !forwarded && sigaction(sig, NULL, &cur) == 0 &&
                       is_python_handler(&cur) && o->table_bridged && !o->behind;
        /* A trip of ours that came after Python began this handler's round is consumed
         * with it, and then leaves one more call with nothing forwarded: a leftover. */
        int leftover = !forwarded && !put_back &&
                       sb_now_ns() - atomic_load(&g->fwd_ns) < 1000000;
        if (leftover) {
            return res | change_end(&c);
        }
        if (!forwarded) {
            /* Not from our handler: CPython's handler ran (someone put BRIDGED back with
             * signal.signal()) or the signal was simulated (_thread.interrupt_main()).
             * Take the action back, and record this delivery without its siginfo. */
            if (put_back) {
                install_ours(sig);
                o->replaced = o->warned = 0;
            }
            sb_store(sig, NULL, sb_now_ns());
        }
        int u = union_demand(sig);
        if (o->orig_callable && !(u & SB_WANT_CONSUME)) {
            res |= SB_B_ORIGINAL;
            box_add(&c, "original", sig, o->py_original);
        }
        if (u & (SB_WANT_PYLEVEL | SB_WANT_FAST))
            res |= SB_B_HOOK;
    } else {
        /* Not bridged: the table owes its original, or BRIDGED was put back after we
         * let go.  The table gets the original again and this call acts as it. */
        int poke = o->poked;
        PyObject *orig = o->debt ? o->py_original : o->last_original;
        Py_XINCREF(orig);
        if (o->debt) {
            pay_debt(&c, sig);
        } else {
            table_set(&c, sig, orig != NULL && py_kind(orig) != 3 ? orig : g_sig_dfl);
        }
        expect(&c, sig);
        if (!poke) {
            int k = py_kind(orig);
            if (k == 2) {
                res |= SB_B_ORIGINAL;
                box_add(&c, "original", sig, orig);
            } else if (k != 1) {
                res |= SB_B_DIE;
            }
        }
        box_drop(&c, orig);
    }
    return res | change_end(&c);
}

/* A BRIDGED call that came while BRIDGED ran (Python handlers nest; a storm would
 * recurse): run it again soon, from the timer thread.  Tripped now it would run at the
 * next bytecode, still inside the outer call's frame, and nest after all. */
int sb_redo(int sig)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    return timer_request(sig, sb_now_ns() + 20000, 1);
}

/* run()'s escalation: while armed, the handler gives back SIG_DFL after the second
 * delivery (or `lower_to` more).  Counted: several run()s arm and disarm in any order. */
int sb_escalate(int sig, int arm, int lower_to)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    sb_change c;
    int rc = change_begin(&c, 0);
    if (rc != 0)
        return rc;
    sb_own *o = &g_own[sig];
    sb_sig *g = &g_sig[sig];
    o->arms += arm;
    if (o->arms < 0)
        o->arms = 0;
    if (arm > 0 && o->arms == arm && !atomic_load(&g->escalated))
        atomic_store(&g->reset_after, 2);
    if (o->arms == 0)
        atomic_store(&g->reset_after, 0);
    if (lower_to > 0 && o->arms > 0) {
        int now = atomic_load(&g->reset_after);
        if (now > lower_to)
            atomic_store(&g->reset_after, lower_to);
    }
    return change_end(&c);
}

int sb_state(int sig, sb_sigstate *out)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    sb_own *o = &g_own[sig];
    out->held = o->held;
    out->forward = atomic_load(&g_sig[sig].forward);
    out->chain = atomic_load(&g_sig[sig].chain);
    out->table_bridged = o->table_bridged;
    out->debt = o->debt;
    out->replaced = o->replaced;
    out->behind = o->behind;
    out->restart = o->restart;
    out->demand = union_demand(sig);
    return 0;
}

/* Cheap, without the lock: is some held signal's C action not ours (replaced, or put
 * back by someone)?  Per drain, only the signals whose table entry is not BRIDGED are
 * looked at (`plain_only`): put back with signal.signal(), a BRIDGED entry brings its
 * own look (BRIDGED runs at the next delivery); the previous handler, or SIG_DFL left in
 * the table by a bridge of another thread, does not. */
int sb_actions_changed(int plain_only)
{
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_own *o = &g_own[sig];
        struct sigaction cur;
        if (!o->held || o->behind || (plain_only && o->table_bridged))
            continue;
        if (sigaction(sig, NULL, &cur) != 0)
            continue;
        if (!sb_handler_is(&cur) || !(cur.sa_flags & SA_SIGINFO))
            return 1;
    }
    return 0;
}

uint64_t sb_held_mask(void)
{
    uint64_t m = 0;
    for (int sig = 1; sig < SB_NSIG; sig++)
        if (g_own[sig].held)
            m |= bit_of(sig);
    return m;
}

/* os.register_at_fork(before=...): no change is half done when the child is made. */
int sb_fork_prepare(void)
{
    if (atomic_load(&g_changer) == (uintptr_t)pthread_self())
        return 0;
    pthread_mutex_lock(&g_lock);
    g_fork_locked = 1;
    return 0;
}

void sb_fork_parent(void)
{
    if (g_fork_locked) {
        g_fork_locked = 0;
        pthread_mutex_unlock(&g_lock);
    }
}

/* Inside fork(), in the child (sigbridge.c's at-fork handler). */
void sb_owner_after_fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_lock = fresh;
    g_timer_lock = fresh; /* the timer thread is not in the child: a new one on demand */
    g_timer_started = 0;
    memset(g_timer_at, 0, sizeof g_timer_at);
    memset(g_timer_redo, 0, sizeof g_timer_redo);
    g_fork_locked = 0;
    atomic_store(&g_changer, 0);
    atomic_store(&g_hold, 0);
    g_deferred = 0;
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_own *o = &g_own[sig];
        o->held = o->behind = o->replaced = o->warned = o->arms = 0;
        memset(o->demand, 0, sizeof o->demand);
        if (o->table_bridged)
            o->debt = 1; /* Python's hook pays it (sb_fork_child) */
    }
}

/* The child's Python at-fork hook, in its main thread: this process owns what is left,
 * and Python's table gets its originals back. */
int sb_fork_child(uintptr_t box)
{
    atomic_store(&g_owner_pid, (int)getpid());
    sb_set_main_thread(); /* the thread that forked is the child's main thread */
    sb_change c;
    int rc = change_begin(&c, box);
    if (rc != 0)
        return rc;
    pay_debts(&c);
    return change_end(&c);
}
