/* aiosigbridge: the per-delivery calls as CPython builtins (not cffi calls).
 *
 * cffi releases the GIL around every call and its result goes through a buffer that
 * Python code then unpacks record by record: for one delivery that was more than the
 * rest of the drain.  drain_events() keeps the GIL (the drain takes no lock: it reads the
 * pipe, which is non-blocking, and the lock-free storage, sb_storage.c) and builds the
 * SignalEvents itself, in one call.  Its object is handed to Python through the box
 * (sb_fastpy_init), as the owner's calls hand theirs.
 *
 *   drain_events(slot, buf_address, buf_len, read_pipe) -> list[SignalEvent]
 *   needs_check(expected) -> bool       the owner's per-drain look (_owner.needs_check)
 *
 * buf_address/buf_len: the subscription's record buffer (cffi-owned).  A list of
 * buf_len events means more realtime records wait: the caller drains the rest. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>

#include "sb_internal.h"
#include "sb_owner.h"

static PyObject *g_event_type;  /* SignalEvent (a tuple subclass) */
static PyObject *g_signals;     /* tuple: index n -> signal.Signals member or int */
static allocfunc g_event_alloc; /* SignalEvent's tp_alloc */

static int has_value(int code)
{
    return code == SI_QUEUE || code == SI_TIMER || code == SI_MESGQ || code == SI_ASYNCIO;
}

static int has_status(int sig, int code)
{
    return sig == SIGCHLD && code >= CLD_EXITED && code <= CLD_CONTINUED;
}

static PyObject *event_from(const sb_record *r)
{
    PyObject *ev = g_event_alloc((PyTypeObject *)g_event_type, 8);
    if (ev == NULL)
        return NULL;
    PyObject *signum;
    if (r->signum > 0 && r->signum < PyTuple_Size(g_signals)) {
        signum = PyTuple_GetItem(g_signals, r->signum); /* borrowed */
        Py_XINCREF(signum);
    } else {
        signum = PyLong_FromLong(r->signum);
    }
    PyObject *items[8] = {
        signum,
        PyLong_FromLong(r->code),
        PyLong_FromLong(r->pid),
        PyLong_FromUnsignedLong(r->uid),
        has_value(r->code) ? PyLong_FromLongLong(r->value) : (Py_INCREF(Py_None), Py_None),
        has_status(r->signum, r->code) ? PyLong_FromLong(r->status)
                                       : (Py_INCREF(Py_None), Py_None),
        PyLong_FromLongLong(r->timestamp_ns),
        PyLong_FromUnsignedLong(r->coalesced),
    };
    int failed = 0;
    for (int i = 0; i < 8; i++) {
        if (items[i] == NULL) {
            failed = 1;
            continue;
        }
        if (PyTuple_SetItem(ev, i, items[i]) != 0) /* steals, even on failure */
            failed = 1;
    }
    if (failed) {
        Py_DECREF(ev);
        return NULL;
    }
    return ev;
}

static PyObject *drain_events(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "drain_events(slot, buf_address, buf_len, read_pipe)");
        return NULL;
    }
    long slot = PyLong_AsLong(args[0]);
    uintptr_t addr = (uintptr_t)PyLong_AsUnsignedLongLong(args[1]);
    long len = PyLong_AsLong(args[2]);
    int read_pipe = PyObject_IsTrue(args[3]);
    if (PyErr_Occurred())
        return NULL;
    sb_record *buf = (sb_record *)addr;
    int n = read_pipe ? sb_drain((int)slot, buf, (int)len) : sb_drain_records((int)slot, buf, (int)len);
    if (n < 0) {
        errno = -n;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *ev = event_from(&buf[i]);
        if (ev == NULL) {
            Py_DECREF(out);
            return NULL; /* MemoryError: the records are gone, as with any failed read */
        }
        PyList_SetItem(out, i, ev);
    }
    return out;
}

/* bridged_fast(sig) -> int: sb_bridged_fast() without cffi's GIL release. */
static PyObject *bridged_fast(PyObject *self, PyObject *arg)
{
    (void)self;
    long sig = PyLong_AsLong(arg);
    if (sig == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(sb_bridged_fast((int)sig));
}

/* main_handler_ns() -> int: sb_main_handler_ns() without cffi's GIL release. */
static PyObject *main_handler_ns(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLongLong(sb_main_handler_ns());
}

/* needs_check(expected) -> bool: the per-drain look of _owner.needs_check() in one call
 * (it cost more than the drain as cffi calls and a generator): did the C handler ask for
 * a check, is a held signal's C action not ours while Python's table does not hold
 * BRIDGED, or is a table entry of `expected` ({signum: the entry the owner expects}) not
 * what it expects?  _signal.getsignal runs no Python code, so `expected` cannot change
 * under the iteration (we hold the GIL throughout). */
static PyObject *needs_check(PyObject *self, PyObject *expected)
{
    (void)self;
    if (!PyDict_Check(expected)) {
        PyErr_SetString(PyExc_TypeError, "needs_check(expected): a dict");
        return NULL;
    }
    /* PyBool_FromLong, not Py_RETURN_TRUE: 3.12/3.13 headers expand that to a bare
     * `return Py_True` even under Py_LIMITED_API 3.10, a reference short on 3.10/3.11
     * (this abi3 module may be built by one and loaded by the other). */
    if (sb_take_check_needed() || sb_actions_changed(1))
        return PyBool_FromLong(1);
    if (sbo_getsignal_fn == NULL) /* before the owner's init: let the full check look */
        return PyBool_FromLong(PyDict_Size(expected) > 0);
    Py_ssize_t pos = 0;
    PyObject *sig, *want;
    while (PyDict_Next(expected, &pos, &sig, &want)) {
        PyObject *cur = PyObject_CallFunctionObjArgs(sbo_getsignal_fn, sig, NULL);
        if (cur == NULL)
            return NULL;
        Py_DECREF(cur); /* only its identity is compared; `want` keeps the object alive */
        if (cur != want)
            return PyBool_FromLong(1);
    }
    return PyBool_FromLong(0);
}

static PyMethodDef g_defs[] = {
    {"drain_events", (PyCFunction)(void (*)(void))drain_events, METH_FASTCALL,
     "drain_events(slot, buf_address, buf_len, read_pipe)"},
    {"bridged_fast", bridged_fast, METH_O, "bridged_fast(sig)"},
    {"main_handler_ns", main_handler_ns, METH_NOARGS, "main_handler_ns()"},
    {"needs_check", needs_check, METH_O, "needs_check(expected)"},
};
#define SB_NFAST ((int)(sizeof g_defs / sizeof g_defs[0]))

/* Called once at import, with the GIL: remember SignalEvent and the signum table, and
 * append ("fast", i, builtin) to the box for each of g_defs.  0 or -errno. */
int sb_fastpy_init(uintptr_t box, uintptr_t event_type, uintptr_t signals)
{
    static PyObject *made[SB_NFAST];
    PyGILState_STATE gs = PyGILState_Ensure();
    int rc = 0;
    if (made[0] == NULL) {
        g_event_alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)event_type, Py_tp_alloc);
        if (g_event_alloc == NULL) {
            PyErr_Clear();
            rc = -EINVAL;
            goto out;
        }
        for (int i = 0; i < SB_NFAST; i++) {
            made[i] = PyCFunction_New(&g_defs[i], NULL);
            if (made[i] == NULL) {
                PyErr_Clear();
                rc = -ENOMEM;
                goto out;
            }
        }
        g_event_type = (PyObject *)event_type;
        g_signals = (PyObject *)signals;
        Py_INCREF(g_event_type);
        Py_INCREF(g_signals);
    }
    for (int i = 0; i < SB_NFAST && rc == 0; i++) {
        PyObject *item = Py_BuildValue("(siO)", "fast", i, made[i]);
        if (item == NULL || PyList_Append((PyObject *)box, item) != 0) {
            PyErr_Clear();
            rc = -ENOMEM;
        }
        Py_XDECREF(item);
    }
out:
    PyGILState_Release(gs);
    return rc;
}
