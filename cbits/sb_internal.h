/* Shared between the handler (sigbridge.c), the storage (sb_storage.c) and the owner
 * (sb_owner.c); not part of the interface cffi sees. */
#ifndef AIOSIGBRIDGE_SB_INTERNAL_H
#define AIOSIGBRIDGE_SB_INTERNAL_H

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include "sigbridge.h"

#if ATOMIC_INT_LOCK_FREE != 2 || ATOMIC_LLONG_LOCK_FREE != 2 || ATOMIC_POINTER_LOCK_FREE != 2
#error "aiosigbridge needs always-lock-free atomics: a signal handler cannot take a lock"
#endif

/* What the handler reads of one signal, lock-free.  The owner writes it under its lock
 * with every signal blocked in the writing thread (sb_owner.c). */
typedef struct {
    _Atomic int held;       /* some subscriber watches it: record, forward, chain */
    _Atomic int forward;    /* PyErr_SetInterruptEx: Python's table holds a callable */
    _Atomic int forward_hook; /* ... for BRIDGED's hook: forwarded even when consumed */
    _Atomic int chain;      /* call the original (a foreign C handler) after recording */
    _Atomic int oneshot;    /* the original had SA_RESETHAND: it runs once */
    _Atomic int oneshot_fired;
    _Atomic int orig_index; /* which of original[] is current (-1: none: SIG_DFL) */
    _Atomic int reset_after; /* escalation: after this many deliveries give back SIG_DFL */
    _Atomic int escalated;   /* ... which the handler then did */
    _Atomic int fwd_pending; /* forwarded since BRIDGED last asked */
    _Atomic int64_t fwd_ns;  /* when the last forward was made */
    _Atomic int owed;        /* a forward waits for the end of a change (g_hold) */
    _Atomic int retrip;      /* the interrupt timer tripped Python's handler: no delivery */
    _Atomic uintptr_t absorb_thread; /* a chained handler re-raised on this thread */
    _Atomic uint64_t received;
    _Atomic uint64_t forwarded;
    /* Double-buffered so the handler never reads one being rewritten. */
    struct sigaction original[2];
    struct sigaction ours; /* our action as installed; stable while held */
} sb_sig;

extern sb_sig g_sig[SB_NSIG];
extern _Atomic int g_owner_pid; /* the process the subscriptions belong to */
extern _Atomic int g_hold;      /* a change is in progress: forwards are owed */
extern _Atomic uint64_t g_deliveries; /* every delivery to our handler, any signal */
extern _Atomic int64_t g_main_handler_ns; /* time our handler ran on the main thread */
extern int g_rtmin;             /* first queued signal; SB_NSIG where there are none */
extern int g_rtmax;

int sb_valid_sig(int sig);
int sb_is_queued(int sig);
int64_t sb_now_ns(void);
int sb_handler_is(const struct sigaction *sa);      /* our handler, SA_SIGINFO or not */
uintptr_t sb_handler_address(const struct sigaction *sa);
int sb_is_dfl(const struct sigaction *sa);
int sb_is_ign(const struct sigaction *sa);
int sb_is_dfl_or_ign(const struct sigaction *sa);
void sb_forward(int sig);                           /* async-signal-safe */
void sb_set_main_thread(void);
const struct sigaction *sb_original(int sig);       /* NULL: none saved */
void sb_set_original(int sig, const struct sigaction *sa);
void sb_handler_action(struct sigaction *sa, int restart);
void sb_owner_after_fork_child(void); /* sb_owner.c: locks re-initialised */

/* storage (sb_storage.c) */
/* Record one delivery for every subscriber watching `sig` and wake each: async-signal-
 * safe.  `info` NULL: no siginfo (code SB_SI_UNKNOWN).  1: a subscriber whose demand
 * consumes `sig` recorded it. */
int sb_store(int sig, const siginfo_t *info, int64_t ts);
int sb_slot_valid(int slot);
uint32_t sb_slot_gen(int slot);
int sb_slot_watch(int slot, int sig, int on);
int sb_slot_consume(int slot, int sig, int on);
int sb_slot_release(int slot);
void sb_storage_after_fork_child(void);
void sb_storage_fork_lock(int lock);

/* sb_entry.c, for sb_fastpy.c (not part of the cffi interface) */
int sb_bridged_fast(int sig);

#endif
