/* aiosigbridge: what Python calls of the owner (see sb_owner.c): init, demand (with the
 * caller's registry commit), unsubscribe, check, BRIDGED's question, escalation, state,
 * fork. */
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

int sb_owner_init(uintptr_t bridged, uintptr_t signal_fn, uintptr_t getsignal_fn)
{
    PyGILState_STATE gs = PyGILState_Ensure();
    memset(&sbo_dfl_action, 0, sizeof sbo_dfl_action);
    sbo_dfl_action.sa_handler = SIG_DFL;
    sigemptyset(&sbo_dfl_action.sa_mask);
    sbo_ign_action = sbo_dfl_action;
    sbo_ign_action.sa_handler = SIG_IGN;
    PyObject *objs[3] = {(PyObject *)bridged, (PyObject *)signal_fn, (PyObject *)getsignal_fn};
    PyObject **slots[3] = {&sbo_bridged, &sbo_signal_fn, &sbo_getsignal_fn};
    for (int i = 0; i < 3; i++) {
        PyObject *old = *slots[i];
        Py_INCREF(objs[i]);
        *slots[i] = objs[i];
        Py_XDECREF(old);
    }
    if (sbo_sig_dfl == NULL)
        sbo_sig_dfl = PyLong_FromLong(0);
    /* CPython installs its C handler for SIGINT at start-up (default_int_handler). */
    PyObject *h = PyObject_CallFunction(sbo_getsignal_fn, "i", SIGINT);
    struct sigaction cur;
    if (h != NULL && sbo_py_kind(h) == 2 && sigaction(SIGINT, NULL, &cur) == 0 &&
        !(cur.sa_flags & SA_SIGINFO) && !sb_is_dfl_or_ign(&cur) && !sb_handler_is(&cur))
        sbo_py_handler = (uintptr_t)cur.sa_handler;
    if (h == NULL)
        PyErr_Clear();
    Py_XDECREF(h);
    PyGILState_Release(gs);
    return sbo_sig_dfl == NULL ? -ENOMEM : 0;
}

/* The caller's own bookkeeping, made in the same change: `ops` is a list of
 * (dict, key, value) triples, value None deleting the key.  A registration is then
 * whole or not at all, whatever Python-level handler runs before or after the call. */
static void commit(sb_change *c, uintptr_t ops_id)
{
    if (ops_id == 0)
        return;
    sbo_need_gil(c);
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
            sbo_box_drop(c, old);
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
    int rc = sbo_change_begin(&c, box);
    if (rc != 0)
        return rc;
    if (!sb_slot_valid(slot) || sb_slot_gen(slot) != gen) {
        sbo_change_end(&c);
        return -ESTALE; /* the subscription was closed */
    }
    sb_own *o = &sbo_own[sig];
    int old = o->demand[slot];
    o->demand[slot] = (uint8_t)flags;
    if (is_main)
        sbo_pay_debts(&c);
    /* The slot records the signal from before our action goes in, and stops before it
     * goes: a delivery is never taken by our handler and stored nowhere.  Consuming: on
     * before forwarding stops, off after it starts again, so that a delivery the slot
     * recorded while it consumed is never also forwarded (the handler decides by what
     * it recorded, not by the forward flag it reads later). */
    if (flags & SB_WANT_WATCH)
        sb_slot_watch(slot, sig, 1);
    if ((flags & SB_WANT_WATCH) && (flags & SB_WANT_CONSUME))
        sb_slot_consume(slot, sig, 1);
    rc = sbo_reconcile(&c, sig, is_main);
    if (rc < 0) {
        o->demand[slot] = (uint8_t)old;
        sbo_reconcile(&c, sig, is_main);
    } else {
        commit(&c, ops);
    }
    if (!(o->demand[slot] & SB_WANT_WATCH) || !(o->demand[slot] & SB_WANT_CONSUME))
        sb_slot_consume(slot, sig, 0);
    if (!(o->demand[slot] & SB_WANT_WATCH))
        sb_slot_watch(slot, sig, 0);
    int end = sbo_change_end(&c);
    return rc < 0 ? rc : end;
}

int sb_unsubscribe(int slot, uint32_t gen, int is_main, uintptr_t box)
{
    sb_change c;
    int rc = sbo_change_begin(&c, box);
    if (rc != 0)
        return rc;
    if (!sb_slot_valid(slot) || sb_slot_gen(slot) != gen) {
        sbo_change_end(&c);
        return -ESTALE; /* closed already (a close cut short, made again) */
    }
    if (is_main)
        sbo_pay_debts(&c);
    for (int sig = 1; sig < SB_NSIG; sig++) {
        if (sbo_own[sig].demand[slot] == 0)
            continue;
        sbo_own[sig].demand[slot] = 0;
        sb_slot_consume(slot, sig, 0); /* what it records from here is not consumed */
        sb_slot_watch(slot, sig, 0);
        sbo_reconcile(&c, sig, is_main);
    }
    int end = sbo_change_end(&c);
    rc = sb_slot_release(slot);
    return rc < 0 ? rc : end;
}

/* Replaced behind our back?  Put back (the table as we left it, and the action that
 * signal.signal() installs for it)?  Our action put back by C code without SA_SIGINFO,
 * or its SA_RESTART changed by signal.siginterrupt()?  Debts (main thread). */
int sb_check(int is_main, uintptr_t box)
{
    sb_change c;
    int rc = sbo_change_begin(&c, box);
    if (rc != 0)
        return rc;
    if (is_main)
        sbo_pay_debts(&c);
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_own *o = &sbo_own[sig];
        struct sigaction cur;
        if (!o->held || o->behind || sigaction(sig, NULL, &cur) != 0)
            continue;
        if (sb_handler_is(&cur)) {
            if (!(cur.sa_flags & SA_SIGINFO))
                sbo_install_ours(sig); /* put back by C code with signal(): whole again */
            else
                sbo_adopt_restart(sig, &cur);
            o->replaced = 0;
            continue;
        }
        PyObject *now = sbo_table_get(&c, sig);
        PyObject *want = o->table_bridged ? sbo_bridged : o->py_original;
        int k = sbo_py_kind(want);
        int put_back = sbo_same_entry(now, want) &&
                       ((k == 2 && sbo_is_python_handler(&cur)) ||
                        (k == 0 && sb_is_dfl(&cur)) || (k == 1 && sb_is_ign(&cur)));
        sbo_box_drop(&c, now);
        if (put_back) {
            sbo_install_ours(sig);
            o->replaced = o->warned = 0;
        } else if (!o->replaced) {
            o->replaced = 1;
            if (!o->warned) {
                o->warned = 1;
                sbo_box_add(&c, "warn", sig, NULL);
            }
        }
    }
    return sbo_change_end(&c);
}

/* asb.BRIDGED is running in the main thread (Python-level, signals-unblocked). */
int sb_bridged(int sig, uintptr_t box)
{
    if (!sb_valid_sig(sig))
        return 0;
    if (atomic_load(&sbo_changer) == (uintptr_t)pthread_self()) {
        sbo_deferred |= sbo_bit_of(sig); /* inside _signal.signal() of a change: after it */
        return SB_B_DEFER;
    }
    if (getpid() != atomic_load(&g_owner_pid))
        return SB_B_FORK;
    if (atomic_load(&sbo_fork_holder) == (uintptr_t)pthread_self()) {
        sbo_deferred |= sbo_bit_of(sig); /* in os.fork()'s window: after it (sb_fork_parent) */
        return SB_B_DEFER;
    }
    sb_change c;
    if (sbo_change_begin(&c, box) != 0)
        return SB_B_DEFER;
    sb_own *o = &sbo_own[sig];
    sb_sig *g = &g_sig[sig];
    int res = 0;
    int forwarded = atomic_exchange(&g->fwd_pending, 0);
    int kick = atomic_exchange(&g->retrip, 0); /* the timer's: 1 re-check, 2 redo */
    sbo_need_gil(&c);
    if (o->held && kick == 1 && !forwarded) {
        /* The interrupt timer: the hook looks again at an interrupt still pending. */
        res |= SB_B_HELD | SB_B_RETRIP | SB_B_HOOK;
    } else if (o->held && kick == 2 && !forwarded) {
        res |= SB_B_HELD; /* a deferred call whose forward another call took: done */
    } else if (o->held) {
        res |= SB_B_HELD;
        struct sigaction cur;
        int put_back = !forwarded && sigaction(sig, NULL, &cur) == 0 &&
                       sbo_is_python_handler(&cur) && o->table_bridged && !o->behind;
        /* A trip of ours that came after Python began this handler's round is consumed
         * with it, and then leaves one more call with nothing forwarded: a leftover. */
        int leftover = !forwarded && !put_back &&
                       sb_now_ns() - atomic_load(&g->fwd_ns) < 1000000;
        if (leftover) {
            return res | sbo_change_end(&c);
        }
        if (!forwarded) {
            /* Not from our handler: CPython's handler ran (someone put BRIDGED back with
             * signal.signal()) or the signal was simulated (_thread.interrupt_main()).
             * Take the action back, and record this delivery without its siginfo. */
            if (put_back) {
                sbo_install_ours(sig);
                o->replaced = o->warned = 0;
            }
            sb_store(sig, NULL, sb_now_ns());
        }
        int u = sbo_union_demand(sig);
        if (o->orig_callable && !(u & SB_WANT_CONSUME)) {
            res |= SB_B_ORIGINAL;
            sbo_box_add(&c, "original", sig, o->py_original);
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
            sbo_pay_debt(&c, sig);
        } else {
            sbo_table_set(&c, sig, orig != NULL && sbo_py_kind(orig) != 3 ? orig : sbo_sig_dfl);
        }
        sbo_expect(&c, sig);
        if (!poke) {
            int k = sbo_py_kind(orig);
            if (k == 2) {
                res |= SB_B_ORIGINAL;
                sbo_box_add(&c, "original", sig, orig);
            } else if (k != 1) {
                res |= SB_B_DIE;
            }
        }
        sbo_box_drop(&c, orig);
    }
    return res | sbo_change_end(&c);
}

/* The common BRIDGED call, kept short (the GIL is held throughout; no signal is blocked,
 * nothing is changed but the forward flag): a delivery our handler forwarded, of a held
 * signal, with no timer mark pending and no previous Python handler to hand back.  The
 * owner's lock is only tried: held by anyone (a change in progress, this thread's own
 * change, a fork), the full path (sb_bridged) waits for it.  Returns what sb_bridged
 * would, or -1 for "take the full path". */
int sb_bridged_fast(int sig)
{
    if (!sb_valid_sig(sig) || getpid() != atomic_load(&g_owner_pid))
        return -1;
    if (pthread_mutex_trylock(&sbo_lock) != 0)
        return -1;
    sb_own *o = &sbo_own[sig];
    sb_sig *g = &g_sig[sig];
    int res = -1;
    if (o->held && !o->orig_callable && atomic_load(&g->retrip) == 0 &&
        atomic_exchange(&g->fwd_pending, 0) != 0) {
        res = SB_B_HELD;
        if (sbo_union_demand(sig) & (SB_WANT_PYLEVEL | SB_WANT_FAST))
            res |= SB_B_HOOK;
    }
    pthread_mutex_unlock(&sbo_lock);
    return res;
}

/* A BRIDGED call that came while BRIDGED ran (Python handlers nest; a storm would
 * recurse): run it again soon, from the timer thread.  Tripped now it would run at the
 * next bytecode, still inside the outer call's frame, and nest after all. */
int sb_redo(int sig)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    return sbo_timer_request(sig, sb_now_ns() + 20000, 1);
}

/* run()'s escalation: while armed, the handler gives back SIG_DFL after the second
 * delivery (or `lower_to` more).  Counted: several run()s arm and disarm in any order. */
int sb_escalate(int sig, int arm, int lower_to)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    sb_change c;
    int rc = sbo_change_begin(&c, 0);
    if (rc != 0)
        return rc;
    sb_own *o = &sbo_own[sig];
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
    return sbo_change_end(&c);
}

int sb_state(int sig, sb_sigstate *out)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    sb_own *o = &sbo_own[sig];
    out->held = o->held;
    out->forward = atomic_load(&g_sig[sig].forward);
    out->chain = atomic_load(&g_sig[sig].chain);
    out->table_bridged = o->table_bridged;
    out->debt = o->debt;
    out->replaced = o->replaced;
    out->behind = o->behind;
    out->restart = o->restart;
    out->demand = sbo_union_demand(sig);
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
        sb_own *o = &sbo_own[sig];
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
        if (sbo_own[sig].held)
            m |= sbo_bit_of(sig);
    return m;
}

/* os.register_at_fork(before=...): no change is half done when the child is made. */
int sb_fork_prepare(void)
{
    if (atomic_load(&sbo_changer) == (uintptr_t)pthread_self())
        return 0;
    pthread_mutex_lock(&sbo_lock);
    sb_storage_fork_lock(1); /* no slot half freed either (sb_slot_release) */
    sbo_fork_locked = 1;
    /* Until after_in_parent the lock is ours: other at-fork hooks run in between, and a
     * Python-level signal handler may run in them (BRIDGED): it must not wait for the
     * lock this thread holds.  It is deferred, and tripped again below. */
    atomic_store(&sbo_fork_holder, (uintptr_t)pthread_self());
    return 0;
}

void sb_fork_parent(void)
{
    if (sbo_fork_locked) {
        atomic_store(&sbo_fork_holder, 0);
        sbo_fork_locked = 0;
        uint64_t deferred = sbo_deferred;
        sbo_deferred = 0;
        for (int sig = 1; sig < SB_NSIG; sig++) {
            /* BRIDGED calls that came in the window: again, now that the lock is free
             * (BRIDGED is in the table: a callable, so the trip is safe). */
            if ((deferred & sbo_bit_of(sig)) && sbo_own[sig].held && sbo_own[sig].table_bridged)
                PyErr_SetInterruptEx(sig);
        }
        sb_storage_fork_lock(0);
        pthread_mutex_unlock(&sbo_lock);
    }
}

/* Inside fork(), in the child (sigbridge.c's at-fork handler). */
void sb_owner_after_fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    sbo_lock = fresh;
    sbo_timer_after_fork_child();
    sbo_fork_locked = 0;
    atomic_store(&sbo_fork_holder, 0);
    atomic_store(&sbo_changer, 0);
    atomic_store(&g_hold, 0);
    sbo_deferred = 0;
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_own *o = &sbo_own[sig];
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
    int rc = sbo_change_begin(&c, box);
    if (rc != 0)
        return rc;
    sbo_pay_debts(&c);
    return sbo_change_end(&c);
}
