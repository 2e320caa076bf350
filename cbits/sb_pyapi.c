/* aiosigbridge: Python's side of the owner's changes (see sb_owner.c): the box that
 * carries Python results out, Python's signal table (read and written with the GIL, the
 * write retried past Python-level handlers that raise), and one change: every signal
 * blocked in the changing thread, the owner's lock, forwards held back until the end. */
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

void sbo_box_add(sb_change *c, const char *kind, int sig, PyObject *obj)
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
void sbo_box_drop(sb_change *c, PyObject *obj)
{
    if (obj == NULL)
        return;
    sbo_box_add(c, "drop", 0, obj);
    Py_DECREF(obj);
}

void sbo_need_gil(sb_change *c)
{
    if (!c->gil) {
        c->gs = PyGILState_Ensure();
        c->gil = 1;
    }
}

static void sbo_stash_exception(sb_change *c)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v != NULL && tb != NULL)
        PyException_SetTraceback(v, tb);
    if (v != NULL) {
        sbo_box_add(c, "raise", 0, v);
        c->raised = 1;
    }
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
}

PyObject *sbo_table_get(sb_change *c, int sig)
{
    sbo_need_gil(c);
    PyObject *h = PyObject_CallFunction(sbo_getsignal_fn, "i", sig);
    if (h == NULL)
        PyErr_Clear();
    return h;
}

/* 0 SIG_DFL, 1 SIG_IGN, 2 a callable, 3 none known (a handler Python did not install). */
int sbo_py_kind(PyObject *h)
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

int sbo_same_entry(PyObject *a, PyObject *b)
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

int sbo_is_python_handler(const struct sigaction *sa)
{
    return sbo_py_handler != 0 && !(sa->sa_flags & SA_SIGINFO) &&
           (uintptr_t)sa->sa_handler == sbo_py_handler;
}

int sbo_is_foreign(const struct sigaction *sa)
{
    return !sb_handler_is(sa) && !sb_is_dfl_or_ign(sa) && !sbo_is_python_handler(sa);
}

/* Python's table entry for sig := obj.  Main thread only.  `_signal.signal()` first
 * runs the Python-level handlers of tripped signals; one that raises makes it fail
 * before it changes anything: keep the exception (re-raised after the change) and try
 * again.  It installs CPython's C handler (or SIG_DFL/IGN): callers put ours back. */
int sbo_table_set(sb_change *c, int sig, PyObject *obj)
{
    sbo_need_gil(c);
    for (int tries = 0; tries < 16; tries++) {
        PyObject *old = PyObject_CallFunction(sbo_signal_fn, "iO", sig, obj);
        if (old != NULL) {
            sbo_box_drop(c, old);
            struct sigaction cur;
            if (PyCallable_Check(obj) && sigaction(sig, NULL, &cur) == 0 &&
                !(cur.sa_flags & SA_SIGINFO) && !sb_is_dfl_or_ign(&cur))
                sbo_py_handler = (uintptr_t)cur.sa_handler;
            return 0;
        }
        sbo_stash_exception(c);
    }
    return -EINTR;
}

/* What to write back: the original entry, or SIG_DFL where it was a C handler Python
 * did not install (None cannot be written; the C action is put back exactly anyway). */
PyObject *sbo_table_original(const sb_own *o)
{
    int k = sbo_py_kind(o->py_original);
    return k == 3 ? sbo_sig_dfl : o->py_original;
}


int sbo_change_begin(sb_change *c, uintptr_t box)
{
    uintptr_t self = (uintptr_t)pthread_self();
    if (atomic_load(&sbo_changer) == self)
        return -EDEADLK; /* called back from inside a change (a Python-level handler) */
    if (atomic_load(&sbo_fork_holder) == self)
        return -EDEADLK; /* inside os.fork()'s window (another at-fork hook, a handler) */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &c->mask);
    pthread_mutex_lock(&sbo_lock);
    atomic_store(&sbo_changer, self);
    atomic_store(&g_hold, 1);
    c->gil = 0;
    c->box = (PyObject *)box;
    c->raised = 0;
    return 0;
}

int sbo_change_end(sb_change *c)
{
    /* Forwards owed during the change, now that the state agrees again. */
    atomic_store(&g_hold, 0);
    for (int sig = 1; sig < SB_NSIG; sig++) {
        sb_sig *g = &g_sig[sig];
        if (atomic_exchange(&g->owed, 0) && atomic_load(&g->forward) && atomic_load(&g->held))
            sb_forward(sig);
    }
    /* BRIDGED calls that came while _signal.signal() ran (we held the GIL then). */
    if (sbo_deferred != 0 && c->gil) {
        for (int sig = 1; sig < SB_NSIG; sig++) {
            if (!(sbo_deferred & sbo_bit_of(sig)))
                continue;
            PyObject *h = sbo_table_get(c, sig);
            if (h != NULL && PyCallable_Check(h))
                PyErr_SetInterruptEx(sig);
            Py_XDECREF(h);
        }
    }
    sbo_deferred = 0;
    atomic_store(&sbo_changer, 0);
    int raised = c->raised;
    if (c->gil)
        PyGILState_Release(c->gs);
    pthread_mutex_unlock(&sbo_lock);
    pthread_sigmask(SIG_SETMASK, &c->mask, NULL);
    return raised ? SB_RAISED : 0;
}

