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

#include "sb_owner.h"

sb_own sbo_own[SB_NSIG];
pthread_mutex_t sbo_lock = PTHREAD_MUTEX_INITIALIZER;
_Atomic uintptr_t sbo_changer;
int sbo_fork_locked;
_Atomic uintptr_t sbo_fork_holder;
uint64_t sbo_deferred;
PyObject *sbo_bridged, *sbo_signal_fn, *sbo_getsignal_fn, *sbo_sig_dfl;
uintptr_t sbo_py_handler;
struct sigaction sbo_dfl_action, sbo_ign_action;

int sbo_install_ours(int sig)
{
    sb_sig *g = &g_sig[sig];
    sb_handler_action(&g->ours, sbo_own[sig].restart);
    return sigaction(sig, &g->ours, NULL) == 0 ? 0 : -errno;
}

/* The saved original C action back (SIG_DFL if it was one-shot and has fired). */
static void sbo_restore_action(int sig)
{
    const struct sigaction *o = sb_original(sig);
    if (o == NULL || atomic_load(&g_sig[sig].oneshot_fired))
        o = &sbo_dfl_action;
    sigaction(sig, o, NULL);
}

int sbo_union_demand(int sig)
{
    int u = 0;
    for (int i = 0; i < SB_MAX_SLOTS; i++)
        u |= sbo_own[sig].demand[i];
    return u;
}

/* forward and SA_RESTART from the demand.  SA_RESTART: as the original chose where it
 * was a handler (signal.siginterrupt(sig, False) sets it; CPython's own leaves it off);
 * for SIG_DFL/IGN originals, on unless we forward: a main thread blocked in a
 * restartable call would not see Python's handler until the call returns. */
static int settle_flags(int sig, int u)
{
    sb_own *o = &sbo_own[sig];
    int hook = o->table_bridged && (u & (SB_WANT_PYLEVEL | SB_WANT_FAST));
    int fwd = hook || (o->orig_callable && !(u & SB_WANT_CONSUME));
    atomic_store(&g_sig[sig].forward_hook, hook);
    atomic_store(&g_sig[sig].forward, fwd);
    const struct sigaction *orig = sb_original(sig);
    int orig_handler = orig != NULL && !sb_is_dfl_or_ign(orig);
    return o->user_restart || (!orig_handler && !fwd);
}

static void set_original_from(sb_change *c, int sig, const struct sigaction *cur)
{
    sb_own *o = &sbo_own[sig];
    (void)c;
    if (sb_handler_is(cur)) {
        if (sb_original(sig) == NULL)
            sb_set_original(sig, &sbo_dfl_action);
        return; /* ours already (escalated, or not given back): keep what we saved */
    }
    if (sbo_is_python_handler(cur) && o->table_bridged) {
        /* CPython's handler is there because someone put BRIDGED back with
         * signal.signal(): the original C action is what BRIDGED stood for. */
        int k = sbo_py_kind(o->py_original);
        sb_set_original(sig, k == 1 ? &sbo_ign_action : k == 2 ? cur : &sbo_dfl_action);
        return;
    }
    sb_set_original(sig, cur);
}

static int take(sb_change *c, int sig, int u, int is_main)
{
    sb_own *o = &sbo_own[sig];
    sb_sig *g = &g_sig[sig];
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) != 0)
        return -errno;
    PyObject *now = sbo_table_get(c, sig);
    if (o->debt) {
        /* BRIDGED still in the table from an earlier holder: its original is owed. */
        o->debt = o->poked = 0;
        o->table_bridged = now == sbo_bridged;
        if (!o->table_bridged) { /* replaced meanwhile: that is the original now */
            sbo_box_drop(c, o->py_original);
            Py_XINCREF(now);
            o->py_original = now;
        }
    } else {
        sbo_box_drop(c, o->py_original);
        o->table_bridged = now == sbo_bridged;
        if (o->table_bridged) { /* BRIDGED put back after we let go */
            o->py_original = o->last_original != NULL ? o->last_original : sbo_sig_dfl;
            Py_INCREF(o->py_original);
        } else {
            Py_XINCREF(now);
            o->py_original = now;
        }
    }
    sbo_box_drop(c, now);
    o->orig_callable = sbo_py_kind(o->py_original) == 2;
    if (sbo_py_handler == 0 && o->orig_callable && !o->table_bridged &&
        !(cur.sa_flags & SA_SIGINFO) && !sb_is_dfl_or_ign(&cur) && !sb_handler_is(&cur))
        sbo_py_handler = (uintptr_t)cur.sa_handler; /* the table holds a Python callable */

    o->behind = o->orphan && sbo_is_foreign(&cur);
    o->orphan = 0;
    if (!o->behind)
        set_original_from(c, sig, &cur);
    const struct sigaction *orig = sb_original(sig);
    int foreign = orig != NULL && sbo_is_foreign(orig);
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
    int k = sbo_py_kind(o->py_original);
    if (is_main && !o->table_bridged && !o->behind && (k <= 1 || (u & SB_WANT_PYLEVEL))) {
        if (sbo_table_set(c, sig, sbo_bridged) == 0)
            o->table_bridged = 1;
    }
    o->held = 1;
    o->replaced = o->warned = 0;
    o->restart = settle_flags(sig, u);
    atomic_store(&g->held, 1);
    if (!o->behind && sbo_install_ours(sig) != 0) {
        int e = errno;
        atomic_store(&g->held, 0);
        atomic_store(&g->forward, 0);
        atomic_store(&g->chain, 0);
        o->held = 0;
        sigaction(sig, &cur, NULL);
        if (o->table_bridged && is_main) {
            sbo_table_set(c, sig, sbo_table_original(o));
            sigaction(sig, &cur, NULL);
            o->table_bridged = 0;
        }
        return -e;
    }
    return 0;
}

/* The table owes its original (BRIDGED still there): pay it.  Main thread only. */
void sbo_pay_debt(sb_change *c, int sig)
{
    sb_own *o = &sbo_own[sig];
    PyObject *now = sbo_table_get(c, sig);
    if (now == sbo_bridged) {
        struct sigaction cur;
        int have = sigaction(sig, NULL, &cur) == 0;
        PyObject *entry = sbo_table_original(o);
        sbo_table_set(c, sig, entry);
        /* signal.signal() set the C action too: put back the one before (the original
         * as restored, or a C handler installed since), unless it is CPython's handler
         * and the entry is not a callable. */
        if (have && (!sbo_is_python_handler(&cur) || sbo_py_kind(entry) == 2))
            sigaction(sig, &cur, NULL);
    }
    sbo_box_drop(c, now);
    o->debt = o->poked = o->table_bridged = 0;
    sbo_box_drop(c, o->last_original);
    o->last_original = o->py_original;
    o->py_original = NULL;
}

static void give_back(sb_change *c, int sig, int is_main)
{
    sb_own *o = &sbo_own[sig];
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
    PyObject *now = sbo_table_get(c, sig);
    int table_ours = o->table_bridged ? now == sbo_bridged : sbo_same_entry(now, o->py_original);
    int warn = 0;
    if (o->behind) {
        o->behind = 0;
        o->orphan = 1; /* the C handler over ours still chains to it */
        table_ours = table_ours && o->table_bridged;
    } else if (sb_handler_is(&cur) || (escalated && sb_is_dfl_or_ign(&cur)) ||
               (table_ours && sbo_is_python_handler(&cur) &&
                (o->table_bridged || o->orig_callable))) {
        /* Still ours to give back (CPython's handler under the entry we left in the
         * table: someone put back what getsignal() returned). */
        sbo_restore_action(sig);
        o->orphan = 0;
    } else if (!table_ours) {
        /* signal.signal() replaced both: they are someone else's now. */
        o->table_bridged = 0;
        o->orphan = sbo_is_foreign(&cur);
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
            PyObject *entry = sbo_table_original(o);
            sbo_table_set(c, sig, entry);
            /* signal.signal() set a fresh action: the exact original back (its flags:
             * signal.siginterrupt()), or the C handler on top; never CPython's handler
             * under an entry that is not a callable. */
            if (!sbo_is_python_handler(&before) || sbo_py_kind(entry) == 2)
                sigaction(sig, &before, NULL);
            o->table_bridged = 0;
        } else {
            o->debt = 1;
            /* Trip BRIDGED (a callable: safe) so the main thread pays at its next
             * bytecode.  Only where nothing else reaches BRIDGED: with a callable
             * original, CPython's handler is back and a real delivery trips it too. */
            if (!o->orig_callable && !sbo_is_python_handler(&cur)) {
                o->poked = 1;
                sbo_poke_now(sig);                      /* seen once main takes the GIL */
                sbo_timer_request(sig, sb_now_ns(), 1); /* it makes the main thread look */
            }
        }
    }
    sbo_box_drop(c, now);
    if (warn)
        sbo_box_add(c, "warn", sig, NULL);
    if (!o->debt) {
        sbo_box_drop(c, o->last_original);
        o->last_original = o->py_original;
        o->py_original = NULL;
        o->table_bridged = 0;
    }
    o->replaced = o->warned = 0;
}

/* Still ours right now (an undetected replacement must not be written over)? */
/* signal.siginterrupt() changed SA_RESTART on our action: theirs to choose. */
void sbo_adopt_restart(int sig, const struct sigaction *cur)
{
    sb_own *o = &sbo_own[sig];
    int restart = (cur->sa_flags & SA_RESTART) != 0;
    if (sb_handler_is(cur) && (cur->sa_flags & SA_SIGINFO) && restart != (o->restart != 0)) {
        o->user_restart = o->restart = restart;
        g_sig[sig].ours.sa_flags = cur->sa_flags;
    }
}

static int sbo_still_ours(sb_change *c, int sig)
{
    sb_own *o = &sbo_own[sig];
    struct sigaction cur;
    if (o->replaced || o->behind || sigaction(sig, NULL, &cur) != 0 || !sb_handler_is(&cur))
        return 0;
    sbo_adopt_restart(sig, &cur);
    PyObject *now = sbo_table_get(c, sig);
    int same = sbo_same_entry(now, o->table_bridged ? sbo_bridged : o->py_original);
    sbo_box_drop(c, now);
    return same;
}

static void adjust(sb_change *c, int sig, int u, int is_main)
{
    sb_own *o = &sbo_own[sig];
    if ((u & SB_WANT_PYLEVEL) && is_main && !o->table_bridged && sbo_still_ours(c, sig)) {
        /* Python-level code wanted in the main thread: BRIDGED goes into the table and
         * stays while the signal is held.  signal.signal() installs CPython's handler
         * for an instant; a delivery to another thread then reaches BRIDGED, which
         * records it (without its siginfo). */
        if (sbo_table_set(c, sig, sbo_bridged) == 0) {
            o->table_bridged = 1;
            sbo_install_ours(sig);
        }
    }
    int ours = sbo_still_ours(c, sig); /* adopts a SA_RESTART someone chose meanwhile */
    int restart = settle_flags(sig, u);
    if (restart != o->restart && ours) {
        o->restart = restart;
        sbo_install_ours(sig);
    }
}

void sbo_expect(sb_change *c, int sig)
{
    sb_own *o = &sbo_own[sig];
    sbo_need_gil(c);
    PyObject *want = o->table_bridged ? sbo_bridged : o->py_original;
    sbo_box_add(c, "expect", sig, o->held ? want : NULL);
}

/* Main thread: table restores owed, and BRIDGED put back (signal.signal() with what
 * getsignal() returned while it was bridged) after the signal was let go: the table gets
 * the original again (and signal.signal() sets the matching C action). */
void sbo_pay_debts(sb_change *c)
{
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_own *o = &sbo_own[sig];
        if (o->held)
            continue;
        if (o->debt) {
            sbo_pay_debt(c, sig);
            sbo_expect(c, sig);
        } else if (o->last_original != NULL) {
            PyObject *now = sbo_table_get(c, sig);
            if (now == sbo_bridged)
                sbo_table_set(c, sig,
                              sbo_py_kind(o->last_original) != 3 ? o->last_original
                                                                 : sbo_sig_dfl);
            sbo_box_drop(c, now);
        }
    }
}

int sbo_reconcile(sb_change *c, int sig, int is_main)
{
    sb_own *o = &sbo_own[sig];
    int u = sbo_union_demand(sig);
    int rc = 0;
    if ((u & SB_WANT_WATCH) && !o->held)
        rc = take(c, sig, u, is_main);
    else if (!(u & SB_WANT_WATCH) && o->held)
        give_back(c, sig, is_main);
    else if (o->held)
        adjust(c, sig, u, is_main);
    if (!o->held && o->debt && is_main)
        sbo_pay_debt(c, sig);
    sbo_expect(c, sig);
    return rc;
}

