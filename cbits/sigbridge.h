/* aiosigbridge C layer: a sigaction handler that records every signal with its
 * sender into lock-free per-subscriber storage and wakes each subscribed event loop
 * through its own non-blocking pipe.  See sigbridge.c for the design and
 * sigbridge.cdef.h for the same declarations as cffi reads them. */
#ifndef AIOSIGBRIDGE_SIGBRIDGE_H
#define AIOSIGBRIDGE_SIGBRIDGE_H

#include <signal.h>
#include <stdint.h>

/* Most subscribers (event loops) at once, process-wide. */
#define SB_MAX_SLOTS 64
/* Signal numbers 1..SB_NSIG-1 are addressable (Linux NSIG is 65, macOS 32). */
#define SB_NSIG 65
/* Records a subscriber keeps for queued (realtime) signals before it counts overflow. */
#define SB_DEFAULT_CAPACITY 1024
#define SB_MAX_CAPACITY (1u << 20)

/* si_code values that are not on every platform (SB_SI_NONE where absent). */
#define SB_SI_NONE 0x7fffffff
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

/* One delivery (or, for a standard signal, `coalesced` deliveries) as the handler saw it. */
typedef struct {
    int64_t timestamp_ns; /* CLOCK_MONOTONIC when the handler ran */
    int64_t value;        /* si_value as a pointer-sized integer (meaningful for SI_QUEUE) */
    int32_t signum;
    int32_t code;   /* si_code */
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

/* All return 0 (or a non-negative result) on success and -errno on failure. */
int sb_init(void);
int sb_rtmin(void);
int sb_rtmax(void);
int sb_lock_free(void);

int sb_save_original(int sig, uintptr_t python_handler);
int sb_install(int sig, int forward);
int sb_set_forward(int sig, int forward);
int sb_restore(int sig, int only_if_ours);
int sb_disposition(int sig, uintptr_t *handler, int *flags);
int sb_is_installed(int sig);
int sb_stash(int sig, int put_back);
int sb_reset_after(int sig, int deliveries);

int sb_subscribe(uint32_t capacity, int *read_fd);
int sb_unsubscribe(int slot);
int sb_watch(int slot, int sig, int on);
int sb_drain(int slot, sb_record *out, int max);
int sb_drain_records(int slot, sb_record *out, int max);
int sb_counters_get(int slot, int sig, sb_counters *out);

void sb_after_fork_child(void);
int sb_sigqueue(int pid, int sig, int64_t value);
int64_t sb_monotonic_ns(void);

#endif
