/* The owner's internals, shared by its files (not part of the interface cffi sees):
 *   sb_owner.c   the state of each signal and its transitions (take, give back, adjust)
 *   sb_pyapi.c   Python's side of a change: the box, Python's table, one change
 *   sb_entry.c   what Python calls: demand, unsubscribe, check, BRIDGED, fork, state
 *   sb_timer.c   the interrupt timer (trips Python's handler again; kicks the main thread)
 * The states are drawn in sb_owner.c. */
#ifndef AIOSIGBRIDGE_SB_OWNER_H
#define AIOSIGBRIDGE_SB_OWNER_H

#include <Python.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

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

/* One change in progress (sbo_change_begin .. sbo_change_end). */
typedef struct {
    sigset_t mask;
    int gil;
    PyGILState_STATE gs;
    PyObject *box;
    int raised;
} sb_change;

extern sb_own sbo_own[SB_NSIG];
extern pthread_mutex_t sbo_lock;
extern _Atomic uintptr_t sbo_changer; /* the thread inside a change, 0 if none */
extern int sbo_fork_locked;
extern _Atomic uintptr_t sbo_fork_holder; /* the thread in os.fork()'s window, 0 if none */
extern uint64_t sbo_deferred; /* BRIDGED calls that came during a change (changer only) */
extern PyObject *sbo_bridged, *sbo_signal_fn, *sbo_getsignal_fn, *sbo_sig_dfl;
extern uintptr_t sbo_py_handler; /* CPython's own C handler, once seen */
extern struct sigaction sbo_dfl_action, sbo_ign_action;

static inline uint64_t sbo_bit_of(int sig) { return (uint64_t)1 << (sig - 1); }

/* sb_pyapi.c (GIL taken as needed) */
void sbo_box_add(sb_change *c, const char *kind, int sig, PyObject *obj);
void sbo_box_drop(sb_change *c, PyObject *obj);
void sbo_need_gil(sb_change *c);
PyObject *sbo_table_get(sb_change *c, int sig);
int sbo_py_kind(PyObject *h);
int sbo_same_entry(PyObject *a, PyObject *b);
int sbo_is_python_handler(const struct sigaction *sa);
int sbo_is_foreign(const struct sigaction *sa);
int sbo_table_set(sb_change *c, int sig, PyObject *obj);
PyObject *sbo_table_original(const sb_own *o);
int sbo_change_begin(sb_change *c, uintptr_t box);
int sbo_change_end(sb_change *c);

/* sb_owner.c */
int sbo_install_ours(int sig);
int sbo_union_demand(int sig);
int sbo_reconcile(sb_change *c, int sig, int is_main);
void sbo_pay_debt(sb_change *c, int sig);
void sbo_pay_debts(sb_change *c);
void sbo_expect(sb_change *c, int sig);
void sbo_adopt_restart(int sig, const struct sigaction *cur);

/* sb_timer.c */
int sbo_timer_request(int sig, int64_t deadline_ns, int redo);
void sbo_poke_now(int sig);
void sbo_timer_after_fork_child(void);

#endif
