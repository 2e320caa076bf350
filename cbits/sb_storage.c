/* aiosigbridge: per-subscriber storage of deliveries, and the drain.
 *
 * Each subscriber (one event loop, or a watchdog thread) owns a slot: a pipe whose
 * read end its loop watches, and storage the signal handler writes into, lock-free:
 *
 *   - queued (realtime) signals: a bounded multi-producer ring (Vyukov's bounded queue:
 *     producers claim a cell with a CAS on `head` and publish it with a release store of
 *     the cell's sequence number; the drain is the single consumer).  The ring has at
 *     least two cells (the algorithm needs them); `used` holds the subscriber to exactly
 *     `capacity` records, beyond which deliveries are counted as overflowed.
 *   - standard signals: per signal, up to SB_STD_SENDERS events, one per distinct sender
 *     (pid, uid, kind of si_code), each with a delivery count: deliveries of the same
 *     sender coalesce into its event as the kernel would coalesce them; a new sender gets
 *     an event of its own, so a sender filter never loses an accepted sender's signal
 *     because a refused one sent it first.  Past SB_STD_SENDERS senders at once, the
 *     rest go to one more event that names no sender (SB_SI_MIXED: every filter takes
 *     it, rather than lose an accepted sender's delivery).  The events of one signal live in one of two banks: producers
 *     write the current bank (a busy count per bank tells the drain they are there); the
 *     drain switches the bank, waits for the producers still in the old one (a few
 *     instructions each: they run in a signal handler, never blocked) and then owns it.
 *
 * State first, byte second: a delivery is stored before the wake-up byte is written,
 * and the drain empties the pipe before it reads the state, so a full pipe (EAGAIN)
 * loses nothing.  A subscriber's storage and pipe are freed only once `busy` (handlers
 * using it right now) is zero with `active` cleared, so a handler on another thread
 * never writes to a closed (and possibly reused) fd.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sb_internal.h"

#define SB_CAS_TRIES 64
#define SB_BANK_TRIES 8

typedef struct {
    _Atomic uint64_t seq;
    sb_record rec;
} sb_cell;

typedef struct {
    _Atomic uint64_t key; /* 0: free; else sender_key() of the delivery that claimed it */
    _Atomic uint32_t count;
    sb_record info; /* written by the claimer before it leaves the bank */
} sb_std_entry;

typedef struct {
    _Atomic int active;    /* handlers may use this slot */
    _Atomic int busy;      /* handlers currently using it */
    _Atomic int woken;     /* a wake byte is in the pipe and no drain has begun since */
    _Atomic uint64_t mask; /* bit (sig - 1): watched */
    _Atomic uint64_t consume; /* bit (sig - 1): its demand consumes it (no forward) */
    int wfd;               /* written before `active` is set: stable while busy */
    int rfd;
    sb_cell *cells;
    uint64_t cap_mask;
    uint32_t capacity;        /* logical bound on records kept */
    _Atomic uint32_t used;    /* records in the ring (claimed by producers, not yet read) */
    _Atomic uint64_t head;    /* next cell producers claim */
    uint64_t tail;            /* next cell the consumer reads (consumer only) */
    _Atomic uint64_t std_pending; /* bit (sig - 1): a standard event may wait */
    _Atomic int bank[SB_NSIG];
    _Atomic uint32_t bank_busy[2][SB_NSIG];
    sb_std_entry std[2][SB_NSIG][SB_STD_SENDERS + 1]; /* the last: several senders */
    _Atomic uint64_t received[SB_NSIG];
    _Atomic uint64_t overflowed[SB_NSIG];
    _Atomic uint64_t coalesced[SB_NSIG];
    _Atomic int64_t undrained[SB_NSIG]; /* deliveries stored, not drained yet */
    uint32_t gen; /* which use of the slot this is: a stale subscriber is refused */
} sb_slot;

static sb_slot g_slots[SB_MAX_SLOTS];
static _Atomic int g_slot_count; /* high-water mark of slots ever used */
static pthread_mutex_t g_slots_lock = PTHREAD_MUTEX_INITIALIZER;

static int is_user_code(int code)
{
    return code == SI_USER || code == SI_QUEUE ||
           (SB_SI_TKILL != SB_SI_NONE && code == SB_SI_TKILL);
}

/* async-signal-safe: reads siginfo fields only.  `value` is si_value.sival_int, the
 * portable member: senders that fill only sival_int (util-linux `kill -q`) leave the
 * rest of the union undefined. */
static void fill_record(sb_record *r, int sig, const siginfo_t *info, int64_t ts)
{
    r->timestamp_ns = ts;
    r->signum = sig;
    r->coalesced = 1;
    if (info != NULL) {
        r->code = info->si_code;
        r->pid = (int32_t)info->si_pid;
        r->uid = (uint32_t)info->si_uid;
        r->status = info->si_status;
        r->value = (int64_t)info->si_value.sival_int;
    } else {
        r->code = SB_SI_UNKNOWN;
        r->pid = 0;
        r->uid = 0;
        r->status = 0;
        r->value = 0;
    }
}

/* Who sent it, as one non-zero word: kind of si_code (user / kernel / unknown), pid, uid. */
/* Not a sender_key() (kind 3): the entry of several senders. */
#define SB_MIXED_KEY (((uint64_t)1 << 63) | ((uint64_t)3 << 61))

static uint64_t sender_key(const sb_record *r)
{
    uint64_t kind = r->code == SB_SI_UNKNOWN ? 2 : (is_user_code(r->code) ? 0 : 1);
    return ((uint64_t)1 << 63) | (kind << 61) | (((uint64_t)(uint32_t)r->pid & 0x1fffffffu) << 32) |
           (uint64_t)r->uid;
}

/* async-signal-safe: atomics and plain stores into preallocated memory; bounded. */
static int ring_push(sb_slot *s, const sb_record *rec)
{
    if (atomic_fetch_add_explicit(&s->used, 1, memory_order_acq_rel) >= s->capacity) {
        atomic_fetch_sub_explicit(&s->used, 1, memory_order_acq_rel);
        return 0; /* full: `capacity` records wait already */
    }
    uint64_t pos = atomic_load_explicit(&s->head, memory_order_relaxed);
    for (int tries = 0; tries < SB_CAS_TRIES; tries++) {
        sb_cell *cell = &s->cells[pos & s->cap_mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&s->head, &pos, pos + 1,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed)) {
                cell->rec = *rec;
                atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
                return 1;
            }
            /* CAS failure reloaded pos: another producer won that cell. */
        } else if (dif < 0) {
            break; /* a cell not yet freed by the consumer (cannot happen below capacity) */
        } else {
            pos = atomic_load_explicit(&s->head, memory_order_relaxed);
        }
    }
    atomic_fetch_sub_explicit(&s->used, 1, memory_order_acq_rel);
    return 0; /* contention beyond the bound: counted as overflow, never silent */
}

/* async-signal-safe: atomics, preallocated memory; bounded. */
static int std_push(sb_slot *s, int sig, const sb_record *rec)
{
    int b = -1;
    for (int tries = 0; tries < SB_BANK_TRIES; tries++) {
        int cur = atomic_load(&s->bank[sig]);
        atomic_fetch_add(&s->bank_busy[cur][sig], 1);
        if (atomic_load(&s->bank[sig]) == cur) {
            b = cur;
            break;
        }
        atomic_fetch_sub(&s->bank_busy[cur][sig], 1); /* the drain switched: retry */
    }
    if (b < 0)
        return 0;
    uint64_t key = sender_key(rec);
    sb_std_entry *e = s->std[b][sig];
    int i;
    for (i = 0; i < SB_STD_SENDERS; i++) {
        uint64_t k = atomic_load(&e[i].key);
        if (k == 0) {
            if (atomic_compare_exchange_strong(&e[i].key, &k, key)) {
                e[i].info = *rec;
                atomic_fetch_add(&e[i].count, 1);
                break;
            }
            /* k now holds the key that won the entry */
        }
        if (k == key) {
            atomic_fetch_add(&e[i].count, 1);
            atomic_fetch_add_explicit(&s->coalesced[sig], 1, memory_order_relaxed);
            break;
        }
    }
    if (i == SB_STD_SENDERS) {
        /* Every entry has another sender: the "several senders" entry takes it, with no
         * sender's identity (a filter must not judge them all by one of them). */
        sb_std_entry *m = &e[SB_STD_SENDERS];
        uint64_t k = 0;
        if (atomic_compare_exchange_strong(&m->key, &k, SB_MIXED_KEY)) {
            m->info = *rec;
            m->info.code = SB_SI_MIXED;
            m->info.pid = 0;
            m->info.uid = 0;
            m->info.status = 0;
            m->info.value = 0;
            atomic_fetch_add(&m->count, 1);
        } else {
            atomic_fetch_add(&m->count, 1);
            atomic_fetch_add_explicit(&s->coalesced[sig], 1, memory_order_relaxed);
        }
    }
    atomic_fetch_or(&s->std_pending, (uint64_t)1 << (sig - 1));
    atomic_fetch_sub(&s->bank_busy[b][sig], 1);
    return 1;
}

int sb_store(int sig, const siginfo_t *info, int64_t ts)
{
    int consumed = 0;
    sb_record rec;
    fill_record(&rec, sig, info, ts);
    uint64_t bit = (uint64_t)1 << (sig - 1);
    int queued = sb_is_queued(sig);
    int n = atomic_load_explicit(&g_slot_count, memory_order_acquire);
    for (int i = 0; i < n; i++) { /* bounded by SB_MAX_SLOTS */
        sb_slot *s = &g_slots[i];
        if (!(atomic_load_explicit(&s->mask, memory_order_relaxed) & bit))
            continue;
        atomic_fetch_add_explicit(&s->busy, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&s->active, memory_order_seq_cst) &&
            (atomic_load_explicit(&s->mask, memory_order_relaxed) & bit)) {
            atomic_fetch_add_explicit(&s->received[sig], 1, memory_order_relaxed);
            /* Read in the same look as the mask: whether this delivery was consumed is
             * decided by what the recording subscriber wanted when it recorded it. */
            if (atomic_load_explicit(&s->consume, memory_order_seq_cst) & bit)
                consumed = 1;
            int kept = queued ? ring_push(s, &rec) : std_push(s, sig, &rec);
            if (kept)
                atomic_fetch_add_explicit(&s->undrained[sig], 1, memory_order_relaxed);
            else
                atomic_fetch_add_explicit(&s->overflowed[sig], 1, memory_order_relaxed);
            /* ... byte second: write() is async-signal-safe; the pipe is non-blocking
             * and EAGAIN (full) is fine: the state holds the truth.  Only when no
             * wake-up is pending: a storm costs one write per drain, not per signal. */
            if (!atomic_exchange_explicit(&s->woken, 1, memory_order_seq_cst)) {
                unsigned char byte = (unsigned char)sig;
                ssize_t w = write(s->wfd, &byte, 1);
                (void)w;
            }
        }
        atomic_fetch_sub_explicit(&s->busy, 1, memory_order_seq_cst);
    }
    return consumed;
}

static int make_pipe(int fds[2])
{
#ifdef __linux__
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
        return -errno;
#else
    if (pipe(fds) != 0)
        return -errno;
    for (int i = 0; i < 2; i++) {
        if (fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK) != 0 ||
            fcntl(fds[i], F_SETFD, FD_CLOEXEC) != 0) {
            int e = errno;
            close(fds[0]);
            close(fds[1]);
            return -e;
        }
    }
#endif
    return 0;
}

static void slot_reset_storage(sb_slot *s)
{
    /* The pointer goes before the memory: a fork() from C code at this instant (no
     * prepare handler holds the lock then) leaves the child a leak, not a double free. */
    sb_cell *cells = s->cells;
    s->cells = NULL;
    free(cells);
    s->cap_mask = 0;
    s->capacity = 0;
    atomic_store(&s->used, 0);
    atomic_store(&s->head, 0);
    s->tail = 0;
    atomic_store(&s->std_pending, 0);
    /* A slot never used is all zero already (static storage): not written, its pages
     * stay untouched (out of the process's RSS) until a delivery writes an entry. */
    if (s->gen != 0)
        memset(s->std, 0, sizeof s->std);
    for (int sig = 0; sig < SB_NSIG; sig++) {
        atomic_store(&s->bank[sig], 0);
        atomic_store(&s->bank_busy[0][sig], 0);
        atomic_store(&s->bank_busy[1][sig], 0);
        atomic_store(&s->received[sig], 0);
        atomic_store(&s->overflowed[sig], 0);
        atomic_store(&s->coalesced[sig], 0);
        atomic_store(&s->undrained[sig], 0);
    }
}

int sb_subscribe(uint32_t capacity, int *read_fd)
{
    if (capacity == 0 || capacity > SB_MAX_CAPACITY)
        return -EINVAL;
    uint64_t cap = 2; /* Vyukov's ring needs two cells at least */
    while (cap < capacity)
        cap <<= 1;
    sb_cell *cells = calloc(cap, sizeof *cells);
    if (cells == NULL)
        return -ENOMEM;
    for (uint64_t i = 0; i < cap; i++)
        atomic_init(&cells[i].seq, i);
    int fds[2];
    int rc = make_pipe(fds);
    if (rc != 0) {
        free(cells);
        return rc;
    }
    pthread_mutex_lock(&g_slots_lock);
    int slot = -1;
    for (int i = 0; i < SB_MAX_SLOTS; i++) {
        if (!atomic_load(&g_slots[i].active) && g_slots[i].cells == NULL &&
            atomic_load(&g_slots[i].busy) == 0) {
            slot = i;
            break;
        }
    }
    if (slot < 0) {
        pthread_mutex_unlock(&g_slots_lock);
        close(fds[0]);
        close(fds[1]);
        free(cells);
        return -EMFILE;
    }
    sb_slot *s = &g_slots[slot];
    slot_reset_storage(s);
    s->cells = cells;
    s->cap_mask = cap - 1;
    s->capacity = capacity;
    s->rfd = fds[0];
    s->wfd = fds[1];
    s->gen++;
    atomic_store(&s->woken, 0);
    atomic_store(&s->mask, 0);
    atomic_store(&s->consume, 0);
    atomic_store(&s->active, 1); /* publishes the fields above to handlers */
    if (slot + 1 > atomic_load(&g_slot_count))
        atomic_store(&g_slot_count, slot + 1);
    pthread_mutex_unlock(&g_slots_lock);
    *read_fd = fds[0];
    return slot;
}

int sb_slot_valid(int slot)
{
    return slot >= 0 && slot < SB_MAX_SLOTS && g_slots[slot].cells != NULL &&
           atomic_load(&g_slots[slot].active);
}

uint32_t sb_slot_gen(int slot)
{
    return slot >= 0 && slot < SB_MAX_SLOTS ? g_slots[slot].gen : 0;
}

/* Set or clear sig's bit in one of a valid slot's masks (mask: its offset). */
static int slot_bit(int slot, int sig, int on, size_t mask)
{
    if (!sb_slot_valid(slot))
        return -EBADF;
    if (!sb_valid_sig(sig))
        return -EINVAL;
    uint64_t bit = (uint64_t)1 << (sig - 1);
    _Atomic uint64_t *m = (_Atomic uint64_t *)((char *)&g_slots[slot] + mask);
    if (on)
        atomic_fetch_or(m, bit);
    else
        atomic_fetch_and(m, ~bit);
    return 0;
}

/* The owner: does this subscriber record sig (SB_WANT_WATCH)? */
int sb_slot_watch(int slot, int sig, int on)
{
    return slot_bit(slot, sig, on, offsetof(sb_slot, mask));
}

/* The owner: does this subscriber's demand for sig consume it (SB_WANT_CONSUME)? */
int sb_slot_consume(int slot, int sig, int on)
{
    return slot_bit(slot, sig, on, offsetof(sb_slot, consume));
}

/* Called by the owner (sb_unsubscribe) once the slot's demands are dropped. */
int sb_slot_release(int slot)
{
    pthread_mutex_lock(&g_slots_lock);
    if (!sb_slot_valid(slot)) {
        pthread_mutex_unlock(&g_slots_lock);
        return -EBADF;
    }
    sb_slot *s = &g_slots[slot];
    atomic_store(&s->mask, 0);
    atomic_store(&s->consume, 0);
    atomic_store(&s->active, 0);
    /* Wait for handlers that saw the slot active to leave it.  Each holds it for a
     * bounded, short time; new ones see active == 0.  Bounded wait (about 1 s): if a
     * handler is somehow still inside, leak the storage rather than free it under it. */
    int drained = 0;
    for (int i = 0; i < 1000000; i++) {
        if (atomic_load(&s->busy) == 0) {
            drained = 1;
            break;
        }
        if (i > 1000) {
            struct timespec pause = {0, 1000};
            nanosleep(&pause, NULL);
        } else {
            sched_yield();
        }
    }
    if (drained) {
        close(s->rfd);
        close(s->wfd);
        slot_reset_storage(s);
    } else {
        s->cells = NULL; /* leaked on purpose, see above */
    }
    pthread_mutex_unlock(&g_slots_lock);
    return 0;
}

/* Take bank b of `sig` from the producers: switch them to the other one, wait for those
 * still in b (each a few instructions inside a signal handler: never blocked). */
static int take_std(sb_slot *s, int sig, sb_record *out)
{
    int b = atomic_load(&s->bank[sig]);
    atomic_store(&s->bank[sig], 1 - b);
    for (unsigned spin = 0; atomic_load(&s->bank_busy[b][sig]) != 0; spin++) {
        if (spin > 64)
            sched_yield();
    }
    int n = 0;
    sb_std_entry *e = s->std[b][sig];
    for (int i = 0; i <= SB_STD_SENDERS; i++) {
        if (atomic_load(&e[i].key) == 0)
            continue;
        out[n] = e[i].info;
        out[n].coalesced = atomic_exchange(&e[i].count, 0);
        atomic_store(&e[i].key, 0);
        if (out[n].coalesced > 0)
            n++;
    }
    return n;
}

static int drain_state(sb_slot *s, sb_record *out, int max)
{
    int n = 0;
    /* Standard signals first: they always fit (the caller reserves SB_STD_RESERVE). */
    uint64_t pending = atomic_exchange(&s->std_pending, 0);
    while (pending != 0 && n + SB_STD_SENDERS <= max) {
        int sig = __builtin_ctzll(pending) + 1;
        pending &= pending - 1;
        n += take_std(s, sig, out + n);
    }
    if (pending != 0) /* no room (a caller's mistake): leave them for the next drain */
        atomic_fetch_or(&s->std_pending, pending);
    while (n < max) {
        sb_cell *cell = &s->cells[s->tail & s->cap_mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        if ((int64_t)(seq - (s->tail + 1)) < 0)
            break; /* empty, or the next cell is claimed but not yet published */
        out[n++] = cell->rec;
        atomic_store_explicit(&cell->seq, s->tail + s->cap_mask + 1, memory_order_release);
        s->tail++;
        atomic_fetch_sub_explicit(&s->used, 1, memory_order_acq_rel);
    }
    for (int i = 0; i < n; i++)
        atomic_fetch_sub_explicit(&s->undrained[out[i].signum], (int64_t)out[i].coalesced,
                                  memory_order_relaxed);
    /* Stable insertion sort by timestamp: the ring part is nearly sorted already, the
     * standard part is short. */
    for (int i = 1; i < n; i++) {
        sb_record r = out[i];
        int j = i - 1;
        while (j >= 0 && out[j].timestamp_ns > r.timestamp_ns) {
            out[j + 1] = out[j];
            j--;
        }
        out[j + 1] = r;
    }
    return n;
}

/* One call empties the pipe and copies out every pending record, sorted by time.  The
 * caller passes max >= SB_STD_RESERVE + 1; when it returns max, more realtime records
 * wait: call sb_drain_records() again (and merge the two batches by time). */
int sb_drain(int slot, sb_record *out, int max)
{
    if (!sb_slot_valid(slot))
        return -EBADF;
    if (max <= SB_STD_RESERVE)
        return -EINVAL;
    sb_slot *s = &g_slots[slot];
    /* Empty the pipe, then clear `woken`, then read the state.  In this order a
     * delivery either found `woken` set before the clear (its state is written before
     * its exchange, so the state read below sees it), or sets it after the clear and
     * writes a byte that is still in the pipe for the next drain. */
    char sink[512];
    while (read(s->rfd, sink, sizeof sink) == (ssize_t)sizeof sink) {
        /* a short read emptied the pipe: no second read() just to see EAGAIN */
    }
    /* An exchange (a read-modify-write), not a store: it reads the value a handler's
     * exchange wrote and so orders the state reads below after that handler's writes,
     * on weakly ordered CPUs too. */
    atomic_exchange_explicit(&s->woken, 0, memory_order_acq_rel);
    return drain_state(s, out, max);
}

/* The records only, leaving the pipe (and `woken`) alone: for a dispatch that runs
 * ahead of the loop's reader, which still wakes up, reads the byte and finds the rest. */
int sb_drain_records(int slot, sb_record *out, int max)
{
    if (!sb_slot_valid(slot))
        return -EBADF;
    if (max <= SB_STD_RESERVE)
        return -EINVAL;
    return drain_state(&g_slots[slot], out, max);
}

/* Deliveries of `sig` stored for `slot` and not drained yet (0 when none). */
int64_t sb_undrained(int slot, int sig)
{
    if (!sb_slot_valid(slot) || !sb_valid_sig(sig))
        return 0;
    return atomic_load(&g_slots[slot].undrained[sig]);
}

int sb_counters_get(int slot, int sig, sb_counters *out)
{
    if (!sb_valid_sig(sig))
        return -EINVAL;
    memset(out, 0, sizeof *out);
    out->forwarded = atomic_load(&g_sig[sig].forwarded);
    if (slot < 0) {
        out->received = atomic_load(&g_sig[sig].received);
        return 0;
    }
    if (!sb_slot_valid(slot))
        return -EBADF;
    out->received = atomic_load(&g_slots[slot].received[sig]);
    out->overflowed = atomic_load(&g_slots[slot].overflowed[sig]);
    out->coalesced = atomic_load(&g_slots[slot].coalesced[sig]);
    return 0;
}

/* os.fork() (its prepare hook, sb_fork_prepare): no slot is half freed in the child. */
void sb_storage_fork_lock(int lock)
{
    if (lock)
        pthread_mutex_lock(&g_slots_lock);
    else
        pthread_mutex_unlock(&g_slots_lock);
}

/* In the child, inside fork(): no subscriptions; the child's copies of the parent's
 * pipes are closed (Python's at-fork hook only marks its objects closed). */
void sb_storage_after_fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    g_slots_lock = fresh; /* another thread of the parent may have held it */
    for (int i = 0; i < SB_MAX_SLOTS; i++) {
        sb_slot *s = &g_slots[i];
        atomic_store(&s->active, 0);
        atomic_store(&s->mask, 0);
        atomic_store(&s->consume, 0);
        atomic_store(&s->busy, 0);
        if (s->cells != NULL) {
            close(s->rfd);
            close(s->wfd);
            slot_reset_storage(s);
        }
    }
    atomic_store(&g_slot_count, 0);
}
