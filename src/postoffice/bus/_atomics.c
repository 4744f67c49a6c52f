/* Atomic 64-bit operations on shared memory, and the slot protocol's scans, for the bus.
 *
 * Python has no compare-and-swap, so the bus's channel library (channel.py) calls these
 * on a writable buffer (an mmap of a channel's control block) at byte offsets. Every
 * operation is sequentially consistent (__atomic builtins with __ATOMIC_SEQ_CST): the
 * ordering arguments in docs/design/bus-memory.md rely on one total order of all of
 * them. The scans walk the slot array in C so that finding a slot or a message is one
 * call from Python, not a Python loop per slot. The slot line's layout below must match
 * postoffice/bus/memory.py (a unit test compares the constants this module exports).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define SLOT_BYTES 64
#define SLOT_SEQ 0
#define SLOT_HOLDERS 8
#define SLOT_UNREAD 16
#define SLOT_SIZE 24 /* size u32, then metadata size u32 */
#define SLOT_TIMESTAMP 32
#define SLOT_BUFFER_VCHAN 40 /* buffer index u32, then vchan id i32: one word */
#define SLOT_VCHAN_ORDINAL 48
#define SLOT_FLAGS 56 /* flags u32, then checksum u32: one word */
#define SLOT_FLAG_CHECKSUM 1
#define SLOT_FLAG_ACTIVATION 2
#define SLOT_FLAG_RETIRE 4
#define RETIRE_PUBLISHER_SHIFT 8
#define RETIRE_TAG_SHIFT 16
#define BUSY_BIT (UINT64_C(1) << 63)
#define MAX_USERS 64
#define MAX_SLOTS 65536

/* The channel-wide CCB words a publish and a release touch (memory.py's CCB_*). */
#define CCB_NEXT_ORDINAL 256
#define CCB_MESSAGES 320
#define CCB_BYTES_PUBLISHED 328
#define CCB_MAX_MESSAGE 336
#define CCB_RELIABLE_SUBSCRIBERS 408
#define CCB_WHOLE_SUBSCRIBERS 424
#define CCB_SUBSCRIBERS_WAITING 448
#define CCB_PUBLISHERS_WAITING 456
#define CCB_PENDING 512
#define CCB_SLOTS 3072
#define VCHAN_SUBSCRIBERS 8

/* The outcomes of a message scan. */
#define SCAN_NONE 0      /* nothing newer than the subscriber's last ordinal */
#define SCAN_FOUND 1     /* a message (held, if asked) */
#define SCAN_IN_FLIGHT 2 /* a newer message exists, but an older one is being published */

static inline uint64_t *word(char *base, Py_ssize_t offset) {
    return (uint64_t *)(base + offset);
}

static inline uint64_t load(char *base, Py_ssize_t offset) {
    return __atomic_load_n(word(base, offset), __ATOMIC_SEQ_CST);
}

static inline void store(char *base, Py_ssize_t offset, uint64_t value) {
    __atomic_store_n(word(base, offset), value, __ATOMIC_SEQ_CST);
}

static inline int cas(char *base, Py_ssize_t offset, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(word(base, offset), &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* Get a writable buffer and check that [offset, offset + length) lies in it and that
 * offset is 8-byte aligned (in the buffer and in memory). Returns 0, or -1 with
 * ValueError set and the buffer released. */
static int checked_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t offset,
                          Py_ssize_t length) {
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (offset < 0 || length < 0 || offset > view->len || length > view->len - offset) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd length %zd outside a buffer of %zd bytes", offset, length,
                     view->len);
        PyBuffer_Release(view);
        return -1;
    }
    if (offset % 8 != 0 || ((uintptr_t)view->buf) % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not 8-byte aligned", offset);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The slot array [slots, slots + num_slots * 64) checked the same way. */
static int checked_slots(PyObject *obj, Py_buffer *view, Py_ssize_t slots,
                         Py_ssize_t num_slots) {
    if (num_slots < 1 || num_slots > MAX_SLOTS) {
        PyErr_Format(PyExc_ValueError, "num_slots %zd out of range", num_slots);
        return -1;
    }
    return checked_buffer(obj, view, slots, num_slots * SLOT_BYTES);
}

/* An argument converter (O&) for a u64: an int in 0..2**64-1, else OverflowError or
 * TypeError, where the "K" format would silently wrap a negative or oversized value. */
static int u64_arg(PyObject *obj, void *out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_OverflowError, "%R is not a u64 (0..2**64-1)", obj);
        return 0;
    }
    *(unsigned long long *)out = value;
    return 1;
}

static PyObject *py_load_acquire_u64(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t offset;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "On:load_acquire_u64", &obj, &offset)) return NULL;
    if (checked_buffer(obj, &view, offset, 8) < 0) return NULL;
    uint64_t value = load(view.buf, offset);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *py_store_release_u64(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t offset;
    unsigned long long value;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnO&:store_release_u64", &obj, &offset, u64_arg, &value)) {
        return NULL;
    }
    if (checked_buffer(obj, &view, offset, 8) < 0) return NULL;
    store(view.buf, offset, (uint64_t)value);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *py_cas_u64(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t offset;
    unsigned long long expected, desired;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnO&O&:cas_u64", &obj, &offset, u64_arg, &expected, u64_arg,
                          &desired)) {
        return NULL;
    }
    if (checked_buffer(obj, &view, offset, 8) < 0) return NULL;
    uint64_t old = (uint64_t)expected;
    int ok = __atomic_compare_exchange_n(word(view.buf, offset), &old, (uint64_t)desired, 0,
                                         __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    PyBuffer_Release(&view);
    /* On success `old` still holds `expected`; on failure, the value found. */
    return Py_BuildValue("(OK)", ok ? Py_True : Py_False, (unsigned long long)old);
}

enum rmw { RMW_ADD, RMW_OR, RMW_AND };

static PyObject *fetch_op(PyObject *args, const char *format, enum rmw op) {
    PyObject *obj;
    Py_ssize_t offset;
    unsigned long long operand;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, format, &obj, &offset, u64_arg, &operand)) return NULL;
    if (checked_buffer(obj, &view, offset, 8) < 0) return NULL;
    uint64_t *p = word(view.buf, offset);
    uint64_t old = 0;
    switch (op) {
    case RMW_ADD: old = __atomic_fetch_add(p, (uint64_t)operand, __ATOMIC_SEQ_CST); break;
    case RMW_OR: old = __atomic_fetch_or(p, (uint64_t)operand, __ATOMIC_SEQ_CST); break;
    case RMW_AND: old = __atomic_fetch_and(p, (uint64_t)operand, __ATOMIC_SEQ_CST); break;
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *py_fetch_add_u64(PyObject *self, PyObject *args) {
    return fetch_op(args, "OnO&:fetch_add_u64", RMW_ADD);
}

static PyObject *py_fetch_or_u64(PyObject *self, PyObject *args) {
    return fetch_op(args, "OnO&:fetch_or_u64", RMW_OR);
}

static PyObject *py_fetch_and_u64(PyObject *self, PyObject *args) {
    return fetch_op(args, "OnO&:fetch_and_u64", RMW_AND);
}

/* ---- the slot protocol ------------------------------------------------------------ */

static inline Py_ssize_t slot_at(Py_ssize_t slots, Py_ssize_t index) {
    return slots + index * SLOT_BYTES;
}

/* Hold a slot whose seq was seen as `ordinal`: set our bit in holders, then check that
 * seq is still `ordinal`. A publisher claims with CAS on seq and then reads holders, so
 * of the two one always sees the other (docs/design/bus-memory.md, "claim vs hold"). */
static int hold(char *base, Py_ssize_t line, uint64_t ordinal, uint64_t bit, int reliable) {
    __atomic_fetch_or(word(base, line + SLOT_HOLDERS), bit, __ATOMIC_SEQ_CST);
    if (load(base, line + SLOT_SEQ) != ordinal) {
        __atomic_fetch_and(word(base, line + SLOT_HOLDERS), ~bit, __ATOMIC_SEQ_CST);
        return 0;
    }
    if (reliable) {
        /* Read: this reliable subscriber no longer keeps the slot from a reliable
         * publisher; its hold does, until it releases. */
        __atomic_fetch_and(word(base, line + SLOT_UNREAD), ~bit, __ATOMIC_SEQ_CST);
    }
    return 1;
}

/* The oldest claimable slot, claimed, or -1. A slot is claimable when it is not being
 * written and no subscriber holds it, and when no subscriber in unread_mask has still to
 * read it. Of the claimable slots the oldest is taken (never published first, then the
 * lowest ordinal): a slot whose seq is not below the best so far is passed over on one
 * load, and a never-published one ends the scan. The claim is a CAS of seq to `owner`
 * (BUSY | publisher id), then a look at holders: a subscriber that set its bit meanwhile
 * wins, seq is put back, and the next is tried. */
static Py_ssize_t claim(char *base, Py_ssize_t slots, Py_ssize_t num_slots, uint64_t owner,
                        uint64_t unread_mask) {
    /* Slots lost to a racing subscriber are skipped for the rest of this call. A lost
     * CAS means another publisher made progress; the bound only guards against a bug. */
    uint64_t skip[MAX_SLOTS / 64];
    memset(skip, 0, (size_t)((num_slots + 63) / 64) * sizeof skip[0]);
    for (Py_ssize_t attempt = 0; attempt < 4 * num_slots + 64; attempt++) {
        Py_ssize_t best = -1;
        uint64_t best_seq = 0;
        for (Py_ssize_t i = 0; i < num_slots; i++) {
            Py_ssize_t line = slot_at(slots, i);
            uint64_t seq = load(base, line + SLOT_SEQ);
            if ((seq & BUSY_BIT) || (best >= 0 && seq >= best_seq)) continue;
            if ((skip[i / 64] >> (i % 64)) & 1) continue;
            if (load(base, line + SLOT_HOLDERS) != 0) continue;
            if (load(base, line + SLOT_UNREAD) & unread_mask) continue;
            best = i;
            best_seq = seq;
            if (seq == 0) break; /* never published: nothing is older */
        }
        if (best < 0) return -1;
        Py_ssize_t line = slot_at(slots, best);
        if (!cas(base, line + SLOT_SEQ, best_seq, owner)) {
            continue; /* another publisher took it, or it was republished: look again */
        }
        if (load(base, line + SLOT_HOLDERS) != 0) {
            /* A subscriber got its hold in first; nothing was written, so put seq back. */
            store(base, line + SLOT_SEQ, best_seq);
            skip[best / 64] |= UINT64_C(1) << (best % 64);
            continue;
        }
        return best;
    }
    return -1;
}

/* claim_slot(buffer, slots, num_slots, owner, unread_mask) -> slot index or -1: `claim`.
 * A reliable publisher passes as unread_mask the reliable subscribers registered now (so
 * a bit left by one removed while a publish was under way does not block the slot
 * forever), an unreliable one 0. */
static PyObject *py_claim_slot(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t slots, num_slots;
    unsigned long long owner, unread_mask;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnnO&O&:claim_slot", &obj, &slots, &num_slots, u64_arg,
                          &owner, u64_arg, &unread_mask)) {
        return NULL;
    }
    if (!((uint64_t)owner & BUSY_BIT)) {
        PyErr_SetString(PyExc_ValueError, "owner must have the busy bit set");
        return NULL;
    }
    if (checked_slots(obj, &view, slots, num_slots) < 0) return NULL;
    Py_ssize_t claimed = claim(view.buf, slots, num_slots, (uint64_t)owner,
                               (uint64_t)unread_mask);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(claimed);
}

typedef struct {
    Py_ssize_t slot;
    uint64_t ordinal; /* the reader's own: the vchan ordinal when it reads one vchan */
    uint64_t seq;     /* the slot's seq (the channel's ordinal), what a hold checks */
} found_t;

/* Where a scan looks: every message (vchan < 0), or one vchan's. In vchan mode,
 * `pending` is the publishers' pending vchan ordinals and `vchan_of` their vchans. */
typedef struct {
    int64_t vchan;
    Py_ssize_t pending;
    Py_ssize_t vchan_of;
} view_t;

/* The vchan and vchan ordinal of the message whose seq was seen as `seq`, read without
 * a hold: the words are stored atomically before seq, and a second load of seq that
 * still shows `seq` proves they were that message's (a publisher rewrites them only
 * after its CAS made seq BUSY; ordinals are never reused). 0 if the slot moved on. */
static int vchan_fields(char *base, Py_ssize_t line, uint64_t seq, int64_t *vchan,
                        uint64_t *ordinal) {
    uint64_t packed = load(base, line + SLOT_BUFFER_VCHAN);
    uint64_t vord = load(base, line + SLOT_VCHAN_ORDINAL);
    if (load(base, line + SLOT_SEQ) != seq) return 0;
    *vchan = (int64_t)(int32_t)(uint32_t)(packed >> 32);
    *ordinal = vord;
    return 1;
}

/* The published message with the smallest (own) ordinal above `last`, or slot -1. */
static found_t lowest_above(char *base, Py_ssize_t slots, Py_ssize_t num_slots,
                            const view_t *view, uint64_t last) {
    found_t best = {-1, 0, 0};
    for (Py_ssize_t i = 0; i < num_slots; i++) {
        Py_ssize_t line = slot_at(slots, i);
        uint64_t seq = load(base, line + SLOT_SEQ);
        if ((seq & BUSY_BIT) || seq == 0) continue;
        uint64_t ordinal = seq;
        if (view->vchan >= 0) {
            int64_t vchan;
            if (!vchan_fields(base, line, seq, &vchan, &ordinal) || vchan != view->vchan) {
                continue;
            }
        }
        if (ordinal <= last) continue;
        if (best.slot < 0 || ordinal < best.ordinal) {
            best.slot = i;
            best.ordinal = ordinal;
            best.seq = seq;
        }
    }
    return best;
}

/* Whether some publisher (of the vchan, in vchan mode) is publishing an ordinal in
 * (last, below). Its pending word is loaded before its vchan word, which it stored
 * before it could publish, so a pending ordinal is never matched to a stale vchan. */
static int in_flight(char *base, const view_t *view, uint64_t last, uint64_t below) {
    for (Py_ssize_t p = 0; p < MAX_USERS; p++) {
        uint64_t ordinal = load(base, view->pending + p * 8);
        if (ordinal <= last || ordinal >= below) continue;
        if (view->vchan < 0 || load(base, view->vchan_of + p * 8) == (uint64_t)view->vchan) {
            return 1;
        }
    }
    return 0;
}

/* The next message after `last`, held if `bit` is nonzero. A gap before the lowest newer
 * ordinal is a drop only once no publisher is still publishing an ordinal in it and a
 * second scan shows nothing new in it (the argument is in docs/design/bus-memory.md,
 * "ordinals"); an ordinal still being published means SCAN_IN_FLIGHT: not yet. */
static int next_message(char *base, Py_ssize_t slots, Py_ssize_t num_slots,
                        const view_t *view, uint64_t last, uint64_t bit, int reliable,
                        Py_ssize_t hint, found_t *out) {
    /* First a look at slot `hint` (where the next message usually is: publishers take
     * the oldest slot, so slots fill in turn): ordinal last + 1 there is the answer
     * without a scan, since ordinals are unique and none lies between. */
    if (hint >= 0 && hint < num_slots) {
        Py_ssize_t line = slot_at(slots, hint);
        uint64_t seq = load(base, line + SLOT_SEQ);
        uint64_t ordinal = seq;
        int64_t vchan = view->vchan;
        if (!(seq & BUSY_BIT) && seq != 0 &&
            (view->vchan < 0 || vchan_fields(base, line, seq, &vchan, &ordinal)) &&
            vchan == view->vchan && ordinal == last + 1 &&
            (bit == 0 || hold(base, line, seq, bit, reliable))) {
            out->slot = hint;
            out->ordinal = ordinal;
            out->seq = seq;
            return SCAN_FOUND;
        }
    }
    /* A hold fails only when the slot was reused after the scan saw it, which is a
     * publisher's progress; bound the retries all the same. */
    for (Py_ssize_t attempt = 0; attempt <= num_slots; attempt++) {
        found_t found = lowest_above(base, slots, num_slots, view, last);
        while (found.slot >= 0 && found.ordinal != last + 1) {
            if (in_flight(base, view, last, found.ordinal)) return SCAN_IN_FLIGHT;
            found_t again = lowest_above(base, slots, num_slots, view, last);
            if (again.slot >= 0 && again.ordinal == found.ordinal) break;
            found = again;
        }
        if (found.slot < 0) return SCAN_NONE;
        if (bit == 0 || hold(base, slot_at(slots, found.slot), found.seq, bit, reliable)) {
            *out = found;
            return SCAN_FOUND;
        }
    }
    return SCAN_NONE;
}

/* Check the vchan arguments and the arrays they name. */
static int checked_view(PyObject *obj, view_t *view, int vchan, Py_ssize_t pending,
                        Py_ssize_t vchan_of) {
    Py_buffer buffer;
    if (vchan < -1) {
        PyErr_Format(PyExc_ValueError, "vchan %d is not -1 or a vchan id", vchan);
        return -1;
    }
    view->vchan = vchan;
    view->pending = pending;
    view->vchan_of = vchan_of;
    if (checked_buffer(obj, &buffer, pending, MAX_USERS * 8) < 0) return -1;
    PyBuffer_Release(&buffer);
    if (vchan >= 0) {
        if (checked_buffer(obj, &buffer, vchan_of, MAX_USERS * 8) < 0) return -1;
        PyBuffer_Release(&buffer);
    }
    return 0;
}

static int user_bit(int user, uint64_t *bit) {
    if (user < -1 || user >= MAX_USERS) {
        PyErr_Format(PyExc_ValueError, "subscriber id %d outside 0..63", user);
        return -1;
    }
    *bit = user < 0 ? 0 : (UINT64_C(1) << user);
    return 0;
}

/* next_message(buffer, slots, num_slots, pending, last, subscriber, reliable
 *              [, vchan, vchan_of, hint]) -> (status, slot, ordinal). subscriber -1 peeks
 * without holding. With a vchan id, only that vchan's messages count, `last` and the
 * ordinal are vchan ordinals, `pending` is the pending vchan ordinals' array and
 * `vchan_of` the publishers' vchans'. `hint` is the slot to look at first (-1: none). */
static PyObject *py_next_message(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t slots, num_slots, pending, vchan_of = 0, hint = -1;
    unsigned long long last;
    int user, reliable, vchan = -1;
    Py_buffer view;
    view_t scope;
    uint64_t bit;
    if (!PyArg_ParseTuple(args, "OnnnO&ip|inn:next_message", &obj, &slots, &num_slots,
                          &pending, u64_arg, &last, &user, &reliable, &vchan, &vchan_of,
                          &hint)) {
        return NULL;
    }
    if (user_bit(user, &bit) < 0) return NULL;
    if (checked_view(obj, &scope, vchan, pending, vchan_of) < 0) return NULL;
    if (checked_slots(obj, &view, slots, num_slots) < 0) return NULL;
    found_t found = {-1, 0, 0};
    int status = next_message(view.buf, slots, num_slots, &scope, (uint64_t)last, bit,
                              reliable, hint, &found);
    PyBuffer_Release(&view);
    return Py_BuildValue("(inK)", status, found.slot, (unsigned long long)found.ordinal);
}

/* collect(buffer, slots, num_slots, pending, last, subscriber, reliable, max_count
 *         [, vchan, vchan_of]) -> (status, [(slot, ordinal), ...]): up to max_count
 * messages after `last`, each held, in ordinal order; status says why the batch ended
 * (as next_message's, whose vchan arguments these are). */
static PyObject *py_collect(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t slots, num_slots, pending, max_count, vchan_of = 0;
    unsigned long long last;
    int user, reliable, vchan = -1;
    Py_buffer view;
    view_t scope;
    uint64_t bit;
    if (!PyArg_ParseTuple(args, "OnnnO&ipn|in:collect", &obj, &slots, &num_slots, &pending,
                          u64_arg, &last, &user, &reliable, &max_count, &vchan, &vchan_of)) {
        return NULL;
    }
    if (user_bit(user, &bit) < 0) return NULL;
    if (bit == 0) {
        PyErr_SetString(PyExc_ValueError, "collect needs a subscriber id");
        return NULL;
    }
    if (checked_view(obj, &scope, vchan, pending, vchan_of) < 0) return NULL;
    if (checked_slots(obj, &view, slots, num_slots) < 0) return NULL;
    PyObject *batch = PyList_New(0);
    if (batch == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int status = SCAN_NONE;
    uint64_t after = (uint64_t)last;
    Py_ssize_t hint = -1;
    for (Py_ssize_t n = 0; n < max_count; n++) {
        found_t found;
        status = next_message(view.buf, slots, num_slots, &scope, after, bit, reliable,
                              n == 0 ? -1 : (hint + 1) % num_slots, &found);
        if (status != SCAN_FOUND) break;
        PyObject *item = Py_BuildValue("(nK)", found.slot, (unsigned long long)found.ordinal);
        if (item == NULL || PyList_Append(batch, item) < 0) {
            /* Give the holds back: the caller never learns of them. */
            Py_XDECREF(item);
            Py_ssize_t count = PyList_GET_SIZE(batch);
            for (Py_ssize_t k = 0; k < count; k++) {
                Py_ssize_t held = PyLong_AsSsize_t(
                    PyTuple_GET_ITEM(PyList_GET_ITEM(batch, k), 0));
                __atomic_fetch_and(word(view.buf, slot_at(slots, held) + SLOT_HOLDERS), ~bit,
                                   __ATOMIC_SEQ_CST);
            }
            __atomic_fetch_and(word(view.buf, slot_at(slots, found.slot) + SLOT_HOLDERS),
                               ~bit, __ATOMIC_SEQ_CST);
            Py_DECREF(batch);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(item);
        after = found.ordinal;
        hint = found.slot;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(iN)", status, batch);
}

/* newest_message(buffer, slots, num_slots, last, subscriber, reliable [, vchan])
 *   -> (slot, ordinal). The published message with the highest ordinal above `last`
 * (of the vchan, in vchan ordinals, with a vchan id), held; slot -1 if none. A reliable
 * subscriber skips the older ones on purpose, so its unread bit is cleared on each of
 * them (under a hold, so the slot cannot be reused while we clear it). */
static PyObject *py_newest_message(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t slots, num_slots;
    unsigned long long last;
    int user, reliable, vchan = -1;
    Py_buffer view;
    uint64_t bit;
    if (!PyArg_ParseTuple(args, "OnnO&ip|i:newest_message", &obj, &slots, &num_slots,
                          u64_arg, &last, &user, &reliable, &vchan)) {
        return NULL;
    }
    if (user_bit(user, &bit) < 0) return NULL;
    if (bit == 0) {
        PyErr_SetString(PyExc_ValueError, "newest_message needs a subscriber id");
        return NULL;
    }
    if (vchan < -1) {
        PyErr_Format(PyExc_ValueError, "vchan %d is not -1 or a vchan id", vchan);
        return NULL;
    }
    if (checked_slots(obj, &view, slots, num_slots) < 0) return NULL;
    char *base = view.buf;
    view_t scope = {vchan, 0, 0};
    found_t best = {-1, 0, 0};
    for (Py_ssize_t attempt = 0; attempt <= num_slots && best.slot < 0; attempt++) {
        found_t top = {-1, 0, 0};
        for (Py_ssize_t i = 0; i < num_slots; i++) {
            Py_ssize_t line = slot_at(slots, i);
            uint64_t seq = load(base, line + SLOT_SEQ);
            if ((seq & BUSY_BIT) || seq == 0) continue;
            uint64_t ordinal = seq;
            int64_t found_vchan;
            if (scope.vchan >= 0 && (!vchan_fields(base, line, seq, &found_vchan, &ordinal) ||
                                     found_vchan != scope.vchan)) {
                continue;
            }
            if (ordinal <= last) continue;
            if (top.slot < 0 || ordinal > top.ordinal) {
                top.slot = i;
                top.ordinal = ordinal;
                top.seq = seq;
            }
        }
        if (top.slot < 0) break;
        if (hold(base, slot_at(slots, top.slot), top.seq, bit, reliable)) best = top;
    }
    if (best.slot >= 0 && reliable) {
        for (Py_ssize_t i = 0; i < num_slots; i++) {
            Py_ssize_t line = slot_at(slots, i);
            uint64_t seq = load(base, line + SLOT_SEQ);
            if ((seq & BUSY_BIT) || seq == 0 || i == best.slot) continue;
            if (!(load(base, line + SLOT_UNREAD) & bit)) continue;
            /* Older in the reader's own order: on a vchan, two publishers may take
             * vchan and channel ordinals in opposite orders, so compare vchan ordinals. */
            uint64_t ordinal = seq;
            int64_t found_vchan;
            if (scope.vchan >= 0 && (!vchan_fields(base, line, seq, &found_vchan, &ordinal) ||
                                     found_vchan != scope.vchan)) {
                continue;
            }
            if (ordinal >= best.ordinal) continue;
            if (hold(base, line, seq, bit, 1)) {
                __atomic_fetch_and(word(base, line + SLOT_HOLDERS), ~bit, __ATOMIC_SEQ_CST);
            }
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nK)", best.slot, (unsigned long long)best.ordinal);
}

/* find_timestamp(buffer, slots, num_slots, timestamp, subscriber [, vchan])
 *   -> (slot, ordinal). The published message stamped exactly `timestamp` (and on the
 * vchan, given one: then the ordinal is its vchan ordinal), held; slot -1 if none is. */
static PyObject *py_find_timestamp(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t slots, num_slots;
    unsigned long long timestamp;
    int user, vchan = -1;
    Py_buffer view;
    uint64_t bit;
    if (!PyArg_ParseTuple(args, "OnnO&i|i:find_timestamp", &obj, &slots, &num_slots, u64_arg,
                          &timestamp, &user, &vchan)) {
        return NULL;
    }
    if (user_bit(user, &bit) < 0) return NULL;
    if (bit == 0) {
        PyErr_SetString(PyExc_ValueError, "find_timestamp needs a subscriber id");
        return NULL;
    }
    if (checked_slots(obj, &view, slots, num_slots) < 0) return NULL;
    char *base = view.buf;
    found_t found = {-1, 0, 0};
    for (Py_ssize_t i = 0; i < num_slots && found.slot < 0; i++) {
        Py_ssize_t line = slot_at(slots, i);
        uint64_t seq = load(base, line + SLOT_SEQ);
        if ((seq & BUSY_BIT) || seq == 0) continue;
        /* The timestamp is a plain field, stable only under a hold: hold, then compare. */
        if (!hold(base, line, seq, bit, 0)) continue;
        int64_t found_vchan = (int32_t)(uint32_t)(load(base, line + SLOT_BUFFER_VCHAN) >> 32);
        if (*(volatile uint64_t *)(base + line + SLOT_TIMESTAMP) == (uint64_t)timestamp &&
            (vchan < 0 || found_vchan == vchan)) {
            found.slot = i;
            found.ordinal = vchan < 0 ? seq : load(base, line + SLOT_VCHAN_ORDINAL);
        } else {
            __atomic_fetch_and(word(base, line + SLOT_HOLDERS), ~bit, __ATOMIC_SEQ_CST);
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nK)", found.slot, (unsigned long long)found.ordinal);
}

/* release_subscriber(buffer, slots, num_slots, subscriber) -> slots it held or owed.
 * Crash cleanup: the subscriber's bit leaves every slot's holders and unread. */
static PyObject *py_release_subscriber(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t slots, num_slots;
    int user;
    Py_buffer view;
    uint64_t bit;
    if (!PyArg_ParseTuple(args, "Onni:release_subscriber", &obj, &slots, &num_slots, &user)) {
        return NULL;
    }
    if (user_bit(user, &bit) < 0) return NULL;
    if (bit == 0) {
        PyErr_SetString(PyExc_ValueError, "release_subscriber needs a subscriber id");
        return NULL;
    }
    if (checked_slots(obj, &view, slots, num_slots) < 0) return NULL;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < num_slots; i++) {
        Py_ssize_t line = slot_at(slots, i);
        uint64_t held = __atomic_fetch_and(word(view.buf, line + SLOT_HOLDERS), ~bit,
                                           __ATOMIC_SEQ_CST);
        uint64_t owed = __atomic_fetch_and(word(view.buf, line + SLOT_UNREAD), ~bit,
                                           __ATOMIC_SEQ_CST);
        if ((held | owed) & bit) count++;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(count);
}

/* free_publisher(buffer, slots, num_slots, owner) -> slots freed.
 * Crash cleanup: every slot left BUSY by `owner` becomes never-published again. */
static PyObject *py_free_publisher(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t slots, num_slots;
    unsigned long long owner;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnnO&:free_publisher", &obj, &slots, &num_slots, u64_arg,
                          &owner)) {
        return NULL;
    }
    if (!((uint64_t)owner & BUSY_BIT)) {
        PyErr_SetString(PyExc_ValueError, "owner must have the busy bit set");
        return NULL;
    }
    if (checked_slots(obj, &view, slots, num_slots) < 0) return NULL;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < num_slots; i++) {
        Py_ssize_t line = slot_at(slots, i);
        if (load(view.buf, line + SLOT_SEQ) != (uint64_t)owner) continue;
        store(view.buf, line + SLOT_UNREAD, 0);
        store(view.buf, line + SLOT_SEQ, 0);
        count++;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(count);
}

/* ---- the hot path: a whole publish, a batch of reads, a batch of releases ------------ */

/* FASTCALL argument helpers: an int as Py_ssize_t, or as a u32. */
static int ssize_at(PyObject *const *args, Py_ssize_t i, Py_ssize_t *out) {
    *out = PyLong_AsSsize_t(args[i]);
    return !(*out == -1 && PyErr_Occurred());
}

static int u32_at(PyObject *const *args, Py_ssize_t i, uint32_t *out) {
    unsigned long long value;
    if (!u64_arg(args[i], &value)) return 0;
    if (value > UINT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "%R is not a u32 (0..2**32-1)", args[i]);
        return 0;
    }
    *out = (uint32_t)value;
    return 1;
}

static int check_arity(const char *name, Py_ssize_t nargs, Py_ssize_t expected) {
    if (nargs == expected) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments, got %zd", name, expected, nargs);
    return -1;
}

/* Whether [offset, offset + length) is an aligned part of an acquired buffer; ValueError
 * if not (the buffer stays acquired: the caller releases it). */
static int inside(const Py_buffer *view, Py_ssize_t offset, Py_ssize_t length) {
    if (offset < 0 || offset > view->len || length > view->len - offset || offset % 8 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd length %zd is not an aligned part of a buffer of %zd bytes",
                     offset, length, view->len);
        return 0;
    }
    return 1;
}

/* What a publish writes besides the payload. */
typedef struct {
    Py_ssize_t line;         /* the claimed slot's line */
    uint32_t size;           /* payload bytes */
    uint32_t meta_size;      /* metadata bytes (already in the slot's metadata area) */
    uint32_t flags;          /* SLOT_FLAG_CHECKSUM, SLOT_FLAG_ACTIVATION */
    uint32_t checksum;
    uint64_t buffer_vchan;   /* buffer index | vchan id << 32 */
    Py_ssize_t vchan_line;   /* the publisher's vchan's line, or -1 for none */
    Py_ssize_t pending;      /* the publisher's pending-ordinal word */
    Py_ssize_t pending_vchan;
    int retire_publisher;    /* the publisher id to tag for retirement, or -1 */
} commit_t;

/* Publish the claimed slot `c->line`: the steps of "Publish" in docs/design/bus-memory.md
 * after the payload and metadata are written, in that order. Returns the ordinal and
 * stores the vchan ordinal (0 without a vchan) in *vchan_ordinal. */
static uint64_t commit_slot(char *base, const commit_t *c, uint64_t *vchan_ordinal) {
    char *slot = base + c->line;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); /* time.monotonic_ns's clock */
    uint64_t stamp = (uint64_t)now.tv_sec * UINT64_C(1000000000) + (uint64_t)now.tv_nsec;
    /* Plain fields: nobody reads a BUSY slot, and the store of seq below publishes them. */
    memcpy(slot + SLOT_SIZE, &c->size, 4);
    memcpy(slot + SLOT_SIZE + 4, &c->meta_size, 4);
    memcpy(slot + SLOT_TIMESTAMP, &stamp, 8);
    uint64_t tail = (uint64_t)c->flags | (uint64_t)c->checksum << 32;
    if (c->retire_publisher < 0) memcpy(slot + SLOT_FLAGS, &tail, 8);
    /* Who must read it before a reliable publisher may reuse the slot. */
    uint64_t readers = load(base, CCB_WHOLE_SUBSCRIBERS);
    if (c->vchan_line >= 0) readers |= load(base, c->vchan_line + VCHAN_SUBSCRIBERS);
    store(base, c->line + SLOT_UNREAD, readers & load(base, CCB_RELIABLE_SUBSCRIBERS));
    /* The ordinals: each announced as pending before it is taken, so that a subscriber
     * that sees a later one published knows this one is on its way, not dropped. */
    uint64_t vchan_last = 0, last;
    if (c->vchan_line >= 0) {
        do {
            vchan_last = load(base, c->vchan_line);
            store(base, c->pending_vchan, vchan_last + 1);
        } while (!cas(base, c->vchan_line, vchan_last, vchan_last + 1));
        *vchan_ordinal = vchan_last + 1;
    } else {
        *vchan_ordinal = 0;
    }
    do {
        last = load(base, CCB_NEXT_ORDINAL);
        store(base, c->pending, last + 1);
    } while (!cas(base, CCB_NEXT_ORDINAL, last, last + 1));
    uint64_t ordinal = last + 1;
    if (c->retire_publisher >= 0) {
        /* Atomically: a releaser of this slot's previous message may CAS this word. */
        tail |= SLOT_FLAG_RETIRE | (uint64_t)c->retire_publisher << RETIRE_PUBLISHER_SHIFT |
                (ordinal & 0xFFFF) << RETIRE_TAG_SHIFT;
        store(base, c->line + SLOT_FLAGS, tail);
    }
    /* The words a vchan scan reads without a hold, atomically and before seq. */
    store(base, c->line + SLOT_BUFFER_VCHAN, c->buffer_vchan);
    store(base, c->line + SLOT_VCHAN_ORDINAL, *vchan_ordinal);
    store(base, c->line + SLOT_SEQ, ordinal);
    store(base, c->pending, 0);
    if (c->vchan_line >= 0) store(base, c->pending_vchan, 0);
    __atomic_fetch_add(word(base, CCB_MESSAGES), 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(word(base, CCB_BYTES_PUBLISHED), c->size, __ATOMIC_SEQ_CST);
    uint64_t largest = load(base, CCB_MAX_MESSAGE);
    while (c->size > largest &&
           !__atomic_compare_exchange_n(word(base, CCB_MAX_MESSAGE), &largest,
                                        (uint64_t)c->size, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    return ordinal;
}

/* The CCB words below the slots that a commit touches must lie in the buffer. */
static int checked_commit(const Py_buffer *view, const commit_t *c) {
    if (!inside(view, 0, CCB_SLOTS) || !inside(view, c->line, SLOT_BYTES) ||
        !inside(view, c->pending, 8)) {
        return 0;
    }
    if (c->line < CCB_SLOTS || (c->line - CCB_SLOTS) % SLOT_BYTES != 0) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not a slot's line", c->line);
        return 0;
    }
    if (c->vchan_line >= 0 &&
        (!inside(view, c->vchan_line, 16) || !inside(view, c->pending_vchan, 8))) {
        return 0;
    }
    return 1;
}

/* commit(buffer, line, size, meta_size, flags, checksum, buffer_vchan, vchan_line,
 *        pending, pending_vchan, retire_publisher) -> (ordinal, vchan ordinal, waiting).
 * Publish the slot at `line`, which the caller claimed and filled: stamp its size,
 * metadata size and time, mark it unread by the reliable subscribers that must read it,
 * take its ordinals, store seq, count it. `waiting` is the subscribers' waiting mask
 * after the store of seq: the caller wakes them when it is not 0. */
static PyObject *py_commit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    commit_t c;
    Py_ssize_t retire;
    unsigned long long buffer_vchan;
    if (check_arity("commit", nargs, 11) < 0) return NULL;
    if (!ssize_at(args, 1, &c.line) || !u32_at(args, 2, &c.size) ||
        !u32_at(args, 3, &c.meta_size) || !u32_at(args, 4, &c.flags) ||
        !u32_at(args, 5, &c.checksum) || !u64_arg(args[6], &buffer_vchan) ||
        !ssize_at(args, 7, &c.vchan_line) || !ssize_at(args, 8, &c.pending) ||
        !ssize_at(args, 9, &c.pending_vchan) || !ssize_at(args, 10, &retire)) {
        return NULL;
    }
    c.buffer_vchan = (uint64_t)buffer_vchan;
    if (retire < -1 || retire >= MAX_USERS) {
        PyErr_Format(PyExc_ValueError, "publisher id %zd outside 0..63", retire);
        return NULL;
    }
    c.retire_publisher = (int)retire;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) return NULL;
    if (((uintptr_t)view.buf) % 8 != 0 || !checked_commit(&view, &c)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "buffer is not aligned");
        PyBuffer_Release(&view);
        return NULL;
    }
    uint64_t vchan_ordinal;
    uint64_t ordinal = commit_slot(view.buf, &c, &vchan_ordinal);
    uint64_t waiting = load(view.buf, CCB_SUBSCRIBERS_WAITING);
    PyBuffer_Release(&view);
    return Py_BuildValue("(KKK)", (unsigned long long)ordinal,
                         (unsigned long long)vchan_ordinal, (unsigned long long)waiting);
}

/* The oldest claimable slots as one scan saw them, oldest first, for a batch to claim
 * one after the other: one scan for up to MAX_CANDIDATES messages, not one each. */
#define MAX_CANDIDATES 64
typedef struct {
    int count, next;
    Py_ssize_t slot[MAX_CANDIDATES];
    uint64_t seq[MAX_CANDIDATES];
} candidates_t;

/* Scan for the `want` (at most MAX_CANDIDATES) oldest slots claimable under
 * unread_mask, as claim judges them; a slot is passed over on one load of seq when it is
 * BUSY or not older than the youngest kept once `want` are kept. */
static void find_candidates(char *base, Py_ssize_t num_slots, uint64_t unread_mask,
                            candidates_t *found, Py_ssize_t want) {
    int limit = want < MAX_CANDIDATES ? (int)want : MAX_CANDIDATES;
    int count = 0;
    for (Py_ssize_t i = 0; i < num_slots; i++) {
        Py_ssize_t line = slot_at(CCB_SLOTS, i);
        uint64_t seq = load(base, line + SLOT_SEQ);
        if ((seq & BUSY_BIT) || (count == limit && seq >= found->seq[count - 1])) continue;
        if (load(base, line + SLOT_HOLDERS) != 0) continue;
        if (load(base, line + SLOT_UNREAD) & unread_mask) continue;
        /* Insert in order of seq (after equals: never-published slots in index order). */
        int at = count < limit ? count : limit - 1;
        while (at > 0 && found->seq[at - 1] > seq) {
            found->seq[at] = found->seq[at - 1];
            found->slot[at] = found->slot[at - 1];
            at--;
        }
        found->seq[at] = seq;
        found->slot[at] = i;
        if (count < limit) count++;
    }
    found->count = count;
    found->next = 0;
}

/* Claim the next candidate still as the scan saw it, as claim does (CAS of seq from the
 * value seen, then a look at holders); -1 when none is left. A slot whose seq moved was
 * taken or republished, so its unread bits can only have been cleared since the scan. */
static Py_ssize_t take_candidate(char *base, candidates_t *found, uint64_t owner) {
    while (found->next < found->count) {
        Py_ssize_t slot = found->slot[found->next];
        uint64_t seq = found->seq[found->next];
        found->next++;
        Py_ssize_t line = slot_at(CCB_SLOTS, slot);
        if (!cas(base, line + SLOT_SEQ, seq, owner)) continue;
        if (load(base, line + SLOT_HOLDERS) != 0) {
            store(base, line + SLOT_SEQ, seq); /* a subscriber got its hold in first */
            continue;
        }
        return slot;
    }
    return -1;
}

/* publish_many(ccb, num_slots, owner, reliable, buffer, slot_size, buffer_index, payloads,
 *              start) -> (next, claimed, waiting, ordinal).
 * Publish payloads[start:] (a list or tuple of bytes-like objects), each copied into a
 * slot claimed as claim_slot does, as a plain publisher with no vchan, no metadata, no
 * checksum and no retirement. The slots come from one scan per MAX_CANDIDATES messages
 * (the oldest claimable then; a slot let go after that scan waits for the next one), and
 * from claim when those are gone. Stops before a payload it cannot take whole (not 1 to
 * slot_size bytes: the caller's slower path grows the channel or refuses it), when no
 * slot is free (claimed -1), when a claimed slot still carries a retirement request
 * (claimed: that slot, claimed and not yet written, for the caller to report and fill).
 * `next` is the index of the first payload not published, `ordinal` the last one
 * published (0: none), `waiting` the subscribers' waiting mask loaded after it (the
 * caller wakes them when it is not 0: once per batch, not once per message). */
static PyObject *py_publish_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t num_slots, reliable, slot_size, buffer_index, start;
    unsigned long long owner;
    if (check_arity("publish_many", nargs, 9) < 0) return NULL;
    if (!ssize_at(args, 1, &num_slots) || !u64_arg(args[2], &owner) ||
        !ssize_at(args, 3, &reliable) || !ssize_at(args, 5, &slot_size) ||
        !ssize_at(args, 6, &buffer_index) || !ssize_at(args, 8, &start)) {
        return NULL;
    }
    if (!((uint64_t)owner & BUSY_BIT) || (owner & ~BUSY_BIT) >= MAX_USERS) {
        PyErr_SetString(PyExc_ValueError, "owner must be the busy bit and a publisher id");
        return NULL;
    }
    if (slot_size < 1 || buffer_index < 0 || buffer_index > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "slot size %zd or buffer index %zd out of range",
                     slot_size, buffer_index);
        return NULL;
    }
    PyObject *payloads = args[7];
    if (!PyList_Check(payloads) && !PyTuple_Check(payloads)) {
        PyErr_Format(PyExc_TypeError, "payloads must be a list or a tuple, got %s",
                     Py_TYPE(payloads)->tp_name);
        return NULL;
    }
    Py_buffer ccb, buffer;
    if (checked_slots(args[0], &ccb, CCB_SLOTS, num_slots) < 0) return NULL;
    if (!inside(&ccb, 0, CCB_SLOTS)) {
        PyBuffer_Release(&ccb);
        return NULL;
    }
    if (PyObject_GetBuffer(args[4], &buffer, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&ccb);
        return NULL;
    }
    if (slot_size > buffer.len / num_slots) {
        PyErr_Format(PyExc_ValueError, "%zd slots of %zd bytes do not fit a buffer of %zd",
                     num_slots, slot_size, buffer.len);
        PyBuffer_Release(&buffer);
        PyBuffer_Release(&ccb);
        return NULL;
    }
    char *base = ccb.buf;
    Py_ssize_t publisher = (Py_ssize_t)(owner & ~BUSY_BIT);
    commit_t c = {0, 0, 0, 0, 0, (uint64_t)buffer_index | (UINT64_C(0xFFFFFFFF) << 32), -1,
                  CCB_PENDING + publisher * 8, 0, -1};
    Py_ssize_t claimed = -1, next = start < 0 ? 0 : start;
    uint64_t waiting = 0, ordinal = 0;
    candidates_t ahead = {0, 0, {0}, {0}};
    for (; next < PySequence_Fast_GET_SIZE(payloads); next++) {
        Py_buffer data;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(payloads, next), &data,
                               PyBUF_SIMPLE) < 0) {
            PyErr_Clear(); /* not bytes-like: the caller's path says so */
            break;
        }
        if (data.len < 1 || data.len > slot_size) {
            PyBuffer_Release(&data);
            break;
        }
        uint64_t mask = reliable ? load(base, CCB_RELIABLE_SUBSCRIBERS) : 0;
        Py_ssize_t slot = take_candidate(base, &ahead, (uint64_t)owner);
        if (slot < 0) {
            Py_ssize_t left = PySequence_Fast_GET_SIZE(payloads) - next;
            find_candidates(base, num_slots, mask, &ahead, left);
            slot = take_candidate(base, &ahead, (uint64_t)owner);
        }
        if (slot < 0) slot = claim(base, CCB_SLOTS, num_slots, (uint64_t)owner, mask);
        if (slot < 0) {
            PyBuffer_Release(&data);
            break;
        }
        c.line = slot_at(CCB_SLOTS, slot);
        if (load(base, c.line + SLOT_FLAGS) & SLOT_FLAG_RETIRE) {
            PyBuffer_Release(&data);
            claimed = slot;
            break;
        }
        memmove((char *)buffer.buf + slot * slot_size, data.buf, (size_t)data.len);
        c.size = (uint32_t)data.len;
        PyBuffer_Release(&data);
        uint64_t vchan_ordinal;
        ordinal = commit_slot(base, &c, &vchan_ordinal);
    }
    /* After the last publish: the wake-up argument needs the load after the progress. */
    if (ordinal != 0) waiting = load(base, CCB_SUBSCRIBERS_WAITING);
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&ccb);
    return Py_BuildValue("(nnKK)", next, claimed, (unsigned long long)waiting,
                         (unsigned long long)ordinal);
}

/* A held message's fields as take returns them (built directly: a format string
 * parsed per message cost a third of the call). */
static PyObject *fields_tuple(Py_ssize_t slot, uint64_t ordinal, uint32_t size,
                              uint32_t meta_size, uint64_t stamp, uint32_t index,
                              int32_t vchan_id, uint64_t vchan_ordinal, uint32_t flags,
                              uint32_t checksum) {
    PyObject *item = PyTuple_New(10);
    if (item == NULL) return NULL;
    PyObject *values[10] = {
        PyLong_FromSsize_t(slot),
        PyLong_FromUnsignedLongLong(ordinal),
        PyLong_FromUnsignedLong(size),
        PyLong_FromUnsignedLong(meta_size),
        PyLong_FromUnsignedLongLong(stamp),
        PyLong_FromUnsignedLong(index),
        PyLong_FromLong(vchan_id),
        PyLong_FromUnsignedLongLong(vchan_ordinal),
        PyLong_FromUnsignedLong(flags),
        PyLong_FromUnsignedLong(checksum),
    };
    int failed = 0;
    for (Py_ssize_t i = 0; i < 10; i++) {
        if (values[i] == NULL) failed = 1;
        PyTuple_SET_ITEM(item, i, values[i]); /* a NULL item is fine for Py_DECREF */
    }
    if (failed) {
        Py_DECREF(item);
        return NULL;
    }
    return item;
}

/* take(buffer, slots, num_slots, pending, last, subscriber, reliable, max_count, vchan,
 *      vchan_of, hint) -> (status, [(slot, ordinal, size, meta_size, timestamp,
 *      buffer_index, vchan_id, vchan_ordinal, flags, checksum), ...], uniform).
 * collect, with each message's slot fields read under its hold (where they are stable),
 * so that a read needs no other call: up to max_count messages after `last`, held, in
 * order. `hint` is the slot to look at first (-1: none); later ones look after the slot
 * before. `uniform` is the buffer index of every message when they all are in one
 * buffer, in consecutive ordinals, and none carries a checksum or is an activation
 * (so the caller may wrap them all alike), else -1. */
static PyObject *py_take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t slots, num_slots, pending, user, reliable, max_count, vchan, vchan_of, hint;
    unsigned long long last;
    if (check_arity("take", nargs, 11) < 0) return NULL;
    if (!ssize_at(args, 1, &slots) || !ssize_at(args, 2, &num_slots) ||
        !ssize_at(args, 3, &pending) || !u64_arg(args[4], &last) ||
        !ssize_at(args, 5, &user) || !ssize_at(args, 6, &reliable) ||
        !ssize_at(args, 7, &max_count) || !ssize_at(args, 8, &vchan) ||
        !ssize_at(args, 9, &vchan_of) || !ssize_at(args, 10, &hint)) {
        return NULL;
    }
    uint64_t bit;
    view_t scope;
    if (user < 0 || user >= MAX_USERS || vchan < -1 || vchan > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "subscriber id %zd or vchan %zd out of range", user,
                     vchan);
        return NULL;
    }
    if (user_bit((int)user, &bit) < 0) return NULL;
    if (checked_view(args[0], &scope, (int)vchan, pending, vchan_of) < 0) return NULL;
    Py_buffer view;
    if (checked_slots(args[0], &view, slots, num_slots) < 0) return NULL;
    char *base = view.buf;
    PyObject *batch = PyList_New(0);
    if (batch == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int status = SCAN_NONE;
    uint64_t after = (uint64_t)last;
    int64_t uniform = -1;
    for (Py_ssize_t n = 0; n < max_count; n++) {
        found_t found;
        status = next_message(base, slots, num_slots, &scope, after, bit, (int)reliable,
                              hint, &found);
        if (status != SCAN_FOUND) break;
        const char *slot = base + slot_at(slots, found.slot);
        uint32_t size, meta_size, index, flags, checksum;
        int32_t vchan_id;
        uint64_t stamp, vchan_ordinal;
        memcpy(&size, slot + SLOT_SIZE, 4);
        memcpy(&meta_size, slot + SLOT_SIZE + 4, 4);
        memcpy(&stamp, slot + SLOT_TIMESTAMP, 8);
        memcpy(&index, slot + SLOT_BUFFER_VCHAN, 4);
        memcpy(&vchan_id, slot + SLOT_BUFFER_VCHAN + 4, 4);
        memcpy(&vchan_ordinal, slot + SLOT_VCHAN_ORDINAL, 8);
        memcpy(&flags, slot + SLOT_FLAGS, 4);
        memcpy(&checksum, slot + SLOT_FLAGS + 4, 4);
        if (flags & (SLOT_FLAG_CHECKSUM | SLOT_FLAG_ACTIVATION)) {
            uniform = -1;
        } else if (n == 0) {
            uniform = index;
        } else if (uniform != (int64_t)index || found.ordinal != after + 1) {
            uniform = -1; /* and -1 from here on: no index is -1 */
        }
        PyObject *item = fields_tuple(found.slot, found.ordinal, size, meta_size, stamp, index,
                                      vchan_id, vchan_ordinal, flags, checksum);
        if (item == NULL || PyList_Append(batch, item) < 0) {
            /* Give the holds back: the caller never learns of them. */
            Py_XDECREF(item);
            Py_ssize_t count = PyList_GET_SIZE(batch);
            for (Py_ssize_t k = 0; k < count; k++) {
                Py_ssize_t held = PyLong_AsSsize_t(
                    PyTuple_GET_ITEM(PyList_GET_ITEM(batch, k), 0));
                __atomic_fetch_and(word(base, slot_at(slots, held) + SLOT_HOLDERS), ~bit,
                                   __ATOMIC_SEQ_CST);
            }
            __atomic_fetch_and(word(base, slot_at(slots, found.slot) + SLOT_HOLDERS), ~bit,
                               __ATOMIC_SEQ_CST);
            Py_DECREF(batch);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(item);
        after = found.ordinal;
        hint = (found.slot + 1) % num_slots;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(iNL)", status, batch, (long long)uniform);
}

/* release_slots(buffer, slots, num_slots, subscriber, indexes) -> (waiting, retiring).
 * Let go of the slots in `indexes` (a list or tuple of slot indexes): clear the
 * subscriber's holders bit in each. `retiring` lists those whose message asked for a
 * retirement notice (the caller checks and reports them), `waiting` is the reliable
 * publishers' waiting mask after the releases (the caller wakes them when it is not 0). */
static PyObject *py_release_slots(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t slots, num_slots, user;
    if (check_arity("release_slots", nargs, 5) < 0) return NULL;
    if (!ssize_at(args, 1, &slots) || !ssize_at(args, 2, &num_slots) ||
        !ssize_at(args, 3, &user)) {
        return NULL;
    }
    PyObject *indexes = args[4];
    if (!PyList_Check(indexes) && !PyTuple_Check(indexes)) {
        PyErr_Format(PyExc_TypeError, "indexes must be a list or a tuple, got %s",
                     Py_TYPE(indexes)->tp_name);
        return NULL;
    }
    uint64_t bit;
    if (user < 0 || user >= MAX_USERS) {
        PyErr_Format(PyExc_ValueError, "subscriber id %zd outside 0..63", user);
        return NULL;
    }
    if (user_bit((int)user, &bit) < 0) return NULL;
    Py_buffer view;
    if (checked_slots(args[0], &view, slots, num_slots) < 0) return NULL;
    if (!inside(&view, CCB_PUBLISHERS_WAITING, 8)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    char *base = view.buf;
    PyObject *retiring = PyList_New(0);
    if (retiring == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    /* Check every index before letting any slot go, so an error releases nothing. */
    Py_ssize_t count = PySequence_Fast_GET_SIZE(indexes);
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t index = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(indexes, k));
        if (index == -1 && PyErr_Occurred()) goto fail;
        if (index < 0 || index >= num_slots) {
            PyErr_Format(PyExc_ValueError, "slot %zd outside 0..%zd", index, num_slots - 1);
            goto fail;
        }
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(indexes, k);
        Py_ssize_t line = slot_at(slots, PyLong_AsSsize_t(item));
        __atomic_fetch_and(word(base, line + SLOT_HOLDERS), ~bit, __ATOMIC_SEQ_CST);
        /* A message's retire bit is stored before its seq, so whoever held it sees the
         * bit here (retirement.check does the rest). */
        if ((load(base, line + SLOT_FLAGS) & SLOT_FLAG_RETIRE) &&
            PyList_Append(retiring, item) < 0) {
            goto fail;
        }
    }
    uint64_t waiting = load(base, CCB_PUBLISHERS_WAITING);
    PyBuffer_Release(&view);
    return Py_BuildValue("(KN)", (unsigned long long)waiting, retiring);
fail:
    Py_DECREF(retiring);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"load_acquire_u64", py_load_acquire_u64, METH_VARARGS, "Atomically load a u64."},
    {"store_release_u64", py_store_release_u64, METH_VARARGS, "Atomically store a u64."},
    {"cas_u64", py_cas_u64, METH_VARARGS, "Compare and swap a u64: (success, old value)."},
    {"fetch_add_u64", py_fetch_add_u64, METH_VARARGS, "Add to a u64 (mod 2**64); old value."},
    {"fetch_or_u64", py_fetch_or_u64, METH_VARARGS, "OR into a u64; old value."},
    {"fetch_and_u64", py_fetch_and_u64, METH_VARARGS, "AND into a u64; old value."},
    {"claim_slot", py_claim_slot, METH_VARARGS, "Claim the oldest claimable slot, or -1."},
    {"next_message", py_next_message, METH_VARARGS, "The next message after an ordinal."},
    {"collect", py_collect, METH_VARARGS, "The next messages after an ordinal, held."},
    {"newest_message", py_newest_message, METH_VARARGS, "The newest message, held."},
    {"find_timestamp", py_find_timestamp, METH_VARARGS, "The message with a timestamp."},
    {"release_subscriber", py_release_subscriber, METH_VARARGS, "Drop a subscriber's bits."},
    {"free_publisher", py_free_publisher, METH_VARARGS, "Free a publisher's busy slots."},
    {"commit", (PyCFunction)(void (*)(void))py_commit, METH_FASTCALL,
     "Publish a claimed slot: (ordinal, vchan ordinal, subscribers waiting)."},
    {"publish_many", (PyCFunction)(void (*)(void))py_publish_many, METH_FASTCALL,
     "Claim, copy and publish payloads: (next, claimed, subscribers waiting, ordinal)."},
    {"take", (PyCFunction)(void (*)(void))py_take, METH_FASTCALL,
     "The next messages after an ordinal, held, with their slot fields."},
    {"release_slots", (PyCFunction)(void (*)(void))py_release_slots, METH_FASTCALL,
     "Let slots go: (publishers waiting, slots asking for retirement)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_atomics",
    "Sequentially consistent u64 atomics on shared memory and the bus's slot scans.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__atomics(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "SLOT_BYTES", SLOT_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_SEQ", SLOT_SEQ) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_HOLDERS", SLOT_HOLDERS) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_UNREAD", SLOT_UNREAD) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_TIMESTAMP", SLOT_TIMESTAMP) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_BUFFER_VCHAN", SLOT_BUFFER_VCHAN) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_VCHAN_ORDINAL", SLOT_VCHAN_ORDINAL) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_SIZE", SLOT_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_FLAGS", SLOT_FLAGS) < 0 ||
        PyModule_AddIntConstant(m, "SLOT_FLAG_RETIRE", SLOT_FLAG_RETIRE) < 0 ||
        PyModule_AddIntConstant(m, "RETIRE_PUBLISHER_SHIFT", RETIRE_PUBLISHER_SHIFT) < 0 ||
        PyModule_AddIntConstant(m, "RETIRE_TAG_SHIFT", RETIRE_TAG_SHIFT) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SLOTS", MAX_SLOTS) < 0 ||
        PyModule_AddIntConstant(m, "CCB_NEXT_ORDINAL", CCB_NEXT_ORDINAL) < 0 ||
        PyModule_AddIntConstant(m, "CCB_MESSAGES", CCB_MESSAGES) < 0 ||
        PyModule_AddIntConstant(m, "CCB_BYTES_PUBLISHED", CCB_BYTES_PUBLISHED) < 0 ||
        PyModule_AddIntConstant(m, "CCB_MAX_MESSAGE", CCB_MAX_MESSAGE) < 0 ||
        PyModule_AddIntConstant(m, "CCB_RELIABLE_SUBSCRIBERS", CCB_RELIABLE_SUBSCRIBERS) < 0 ||
        PyModule_AddIntConstant(m, "CCB_WHOLE_SUBSCRIBERS", CCB_WHOLE_SUBSCRIBERS) < 0 ||
        PyModule_AddIntConstant(m, "CCB_SUBSCRIBERS_WAITING", CCB_SUBSCRIBERS_WAITING) < 0 ||
        PyModule_AddIntConstant(m, "CCB_PUBLISHERS_WAITING", CCB_PUBLISHERS_WAITING) < 0 ||
        PyModule_AddIntConstant(m, "CCB_PENDING", CCB_PENDING) < 0 ||
        PyModule_AddIntConstant(m, "CCB_SLOTS", CCB_SLOTS) < 0 ||
        PyModule_AddIntConstant(m, "VCHAN_SUBSCRIBERS", VCHAN_SUBSCRIBERS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_USERS", MAX_USERS) < 0 ||
        PyModule_AddIntConstant(m, "SCAN_NONE", SCAN_NONE) < 0 ||
        PyModule_AddIntConstant(m, "SCAN_FOUND", SCAN_FOUND) < 0 ||
        PyModule_AddIntConstant(m, "SCAN_IN_FLIGHT", SCAN_IN_FLIGHT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *busy = PyLong_FromUnsignedLongLong(BUSY_BIT);
    if (busy == NULL || PyModule_AddObjectRef(m, "BUSY_BIT", busy) < 0) {
        Py_XDECREF(busy);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(busy);
    return m;
}
