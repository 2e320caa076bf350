/* aiosigbridge C layer: a sigaction handler that records every signal with its
 * sender into lock-free per-subscriber storage and wakes each subscribed event loop
 * through its own non-blocking pipe, and the one owner of each signal's process-wide
 * state (the C action, Python's table entry, forwarding).  sigbridge.c holds the
 * handler, sb_storage.c the storage, sb_owner.c the owner; sigbridge.cdef.h has the
 * same declarations as cffi reads them. */
#ifndef AIOSIGBRIDGE_SIGBRIDGE_H
#define AIOSIGBRIDGE_SIGBRIDGE_H

#include <signal.h>
#include <stdint.h>

/* Most subscribers (event loops, watchdog threads) at once, process-wide. */
#define SB_MAX_SLOTS 64
/* Signal numbers 1..SB_NSIG-1 are addressable (Linux NSIG is 65, macOS 32). */
#define SB_NSIG 65
/* Records a subscriber keeps for queued (realtime) signals before it counts overflow. */
#define SB_DEFAULT_CAPACITY 1024
#define SB_MAX_CAPACITY (1u << 20)
/* Distinct senders of one standard signal kept apart while their events wait. */
#define SB_STD_SENDERS 4
/* Records a drain may return beyond the ring's: the standard signals' events (the
 * distinct senders' and one of "several senders" each). */
#define SB_STD_RESERVE ((SB_STD_SENDERS + 1) * SB_NSIG)

/* si_code values that are not on every platform (SB_SI_NONE where absent). */
#define SB_SI_NONE 0x7fffffff
/* A delivery that reached the bridge without a siginfo (CPython's own C handler ran
 * instead of ours, or ours was installed without SA_SIGINFO): the sender is unknown. */
#define SB_SI_UNKNOWN 0x7ffffffe
/* An event of a standard signal standing for deliveries of more senders than
 * SB_STD_SENDERS at once (the ones past them): pid and uid 0, the senders unknown. */
#define SB_SI_MIXED 0x7ffffffd
#ifdef SI_KERNEL
#define SB_SI_KERNEL SI_KERNEL
#else
#define SB_SI_KERNEL SB_SI_NONE
#endif
#ifdef SI_TKILL
#define SB_SI_TKILL SI_TKILL
#else
#define SB_SI_TKILL SB_SI_NONE
#endif

/* sb_disposition() results. */
#define SB_DISP_DEFAULT 0
#define SB_DISP_IGNORE 1
#define SB_DISP_OURS 2
#define SB_DISP_OTHER 3

/* What a subscriber wants of a signal (sb_demand() flags). */
#define SB_WANT_WATCH 1   /* record it for this subscriber */
#define SB_WANT_CONSUME 2 /* Python's own handler for it must not run */
#define SB_WANT_PYLEVEL 4 /* Python-level code in the main thread (interrupts of the main loop) */
#define SB_WANT_FAST 8    /* the main thread's stock loop may dispatch from Python's handler */

/* sb_bridged() answers: what the Python-level handler (asb.BRIDGED) does next. */
#define SB_B_DEFER 1    /* nothing now: it runs again once the change or outer call ends */
#define SB_B_FORK 2     /* in a forked child before its hook: run the hook, ask again */
#define SB_B_HELD 4     /* the signal is bridged */
#define SB_B_ORIGINAL 8 /* call the previous Python handler (appended to the box) */
#define SB_B_HOOK 16    /* run the bridge's interrupt / dispatch hook */
#define SB_B_DIE 32     /* act as SIG_DFL: the action is back, send the signal again */
#define SB_B_RETRIP 64  /* not a delivery: the interrupt timer asks the hook to look again */

/* sb_change_end() result bit: a Python-level handler raised during the change; the
 * exception is in the box (the change itself completed). */
#define SB_RAISED 0x40000000

/* One delivery (or, for a standard signal, `coalesced` deliveries) as the handler saw it. */
typedef struct {
    int64_t timestamp_ns; /* CLOCK_MONOTONIC when the handler ran */
    int64_t value;        /* si_value.sival_int (sign-extended), meaningful for SI_QUEUE */
    int32_t signum;
    int32_t code;   /* si_code, or SB_SI_UNKNOWN */
    int32_t pid;    /* si_pid (0 when the kernel sent it) */
    uint32_t uid;   /* si_uid */
    int32_t status; /* si_status (SIGCHLD) */
    uint32_t coalesced;
} sb_record;

typedef struct {
    uint64_t received;   /* deliveries that reached this subscriber (or the process: slot -1) */
    uint64_t overflowed; /* deliveries dropped because the subscriber's storage was full */
    uint64_t forwarded;  /* process-wide: deliveries passed on with PyErr_SetInterruptEx */
    uint64_t coalesced;  /* deliveries folded into an earlier, not yet drained event */
} sb_counters;

/* The owner's view of one signal (tests, stats, repr). */
typedef struct {
    int held;          /* some subscriber watches it: our handler records it */
    int forward;       /* our handler calls PyErr_SetInterruptEx */
    int chain;         /* our handler calls the previous C handler */
    int table_bridged; /* asb.BRIDGED sits in Python's table because we put it there */
    int debt;          /* not held, but Python's table still owes its original entry */
    int replaced;      /* our action was replaced behind our back */
    int behind;        /* reached through a C handler that chains to ours */
    int restart;       /* SA_RESTART in our action */
    int demand;        /* union of the subscribers' SB_WANT_* flags */
} sb_sigstate;

/* All return 0 (or a non-negative result) on success and -errno on failure. */
int sb_init(void);
int sb_rtmin(void);
int sb_rtmax(void);
int sb_lock_free(void);
int sb_disposition(int sig, uintptr_t *handler, int *flags);
int sb_sigqueue(int pid, int sig, int32_t value);
int64_t sb_monotonic_ns(void);
uint64_t sb_deliveries(void);
int64_t sb_main_handler_ns(void);
int sb_take_check_needed(void);
void sb_set_main_thread(void);

/* storage */
int sb_subscribe(uint32_t capacity, int *read_fd);
int sb_drain(int slot, sb_record *out, int max);
int sb_drain_records(int slot, sb_record *out, int max);
int sb_fastpy_init(uintptr_t box, uintptr_t event_type, uintptr_t signals);
int sb_counters_get(int slot, int sig, sb_counters *out);
uint32_t sb_slot_gen(int slot);
int64_t sb_undrained(int slot, int sig);

/* owner: `box` is id() of a Python list the call appends its Python results to */
int sb_owner_init(uintptr_t bridged, uintptr_t signal_fn, uintptr_t getsignal_fn);
int sb_demand(int slot, uint32_t gen, int sig, int flags, int is_main, uintptr_t box,
              uintptr_t ops);
int sb_unsubscribe(int slot, uint32_t gen, int is_main, uintptr_t box);
int sb_check(int is_main, uintptr_t box);
int sb_bridged(int sig, uintptr_t box);
int sb_redo(int sig);
int sb_escalate(int sig, int arm, int lower_to);
int sb_retrip_at(int sig, int64_t deadline_ns);
int sb_state(int sig, sb_sigstate *out);
uint64_t sb_held_mask(void);
int sb_actions_changed(int plain_only);
int sb_fork_prepare(void);
void sb_fork_parent(void);
int sb_fork_child(uintptr_t box);

#endif
