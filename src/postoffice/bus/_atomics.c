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

#define SLOT_BYTES 64
#define SLOT_SEQ 0
#define SLOT_HOLDERS 8
#define SLOT_UNREAD 16
#define SLOT_TIMESTAMP 32
#define SLOT_BUFFER_VCHAN 40 /* buffer index u32, then vchan id i32: one word */
#define SLOT_VCHAN_ORDINAL 48
#define BUSY_BIT (UINT64_C(1) << 63)
#define MAX_USERS 64

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
    if (num_slots < 1 || num_slots > PY_SSIZE_T_MAX / SLOT_BYTES) {
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

/* claim_slot(buffer, slots, num_slots, owner, unread_mask) -> slot index or -1.
 * A slot is claimable when it is not being written and no subscriber holds it, and when
 * no subscriber in unread_mask has still to read it: a reliable publisher passes the
 * reliable subscribers registered now (so a bit left by one removed while a publish was
 * under way does not block the slot forever), an unreliable one 0. Of the
 * claimable slots the oldest is taken (never published first, then the lowest ordinal).
 * The claim is a CAS of seq to `owner` (BUSY | publisher id), then a look at holders: a
 * subscriber that set its bit meanwhile wins, seq is put back, and the next is tried. */
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
    char *base = view.buf;
    Py_ssize_t claimed = -1;
    /* Slots lost to a racing subscriber are skipped for the rest of this call. A lost
     * CAS means another publisher made progress; the bound only guards against a bug. */
    unsigned char *skip = PyMem_Calloc((size_t)num_slots, 1);
    if (skip == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t attempt = 0; attempt < 4 * num_slots + 64 && claimed < 0; attempt++) {
        Py_ssize_t best = -1;
        uint64_t best_seq = 0;
        for (Py_ssize_t i = 0; i < num_slots; i++) {
            Py_ssize_t line = slot_at(slots, i);
            uint64_t seq = load(base, line + SLOT_SEQ);
            if (skip[i] || (seq & BUSY_BIT)) continue;
            if (load(base, line + SLOT_HOLDERS) != 0) continue;
            if (load(base, line + SLOT_UNREAD) & (uint64_t)unread_mask) continue;
            if (best < 0 || seq < best_seq) {
                best = i;
                best_seq = seq;
            }
        }
        if (best < 0) break;
        Py_ssize_t line = slot_at(slots, best);
        uint64_t expected = best_seq;
        if (!__atomic_compare_exchange_n(word(base, line + SLOT_SEQ), &expected,
                                         (uint64_t)owner, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST)) {
            continue; /* another publisher took it, or it was republished: look again */
        }
        if (load(base, line + SLOT_HOLDERS) != 0) {
            /* A subscriber got its hold in first; nothing was written, so put seq back. */
            store(base, line + SLOT_SEQ, best_seq);
            skip[best] = 1;
            continue;
        }
        claimed = best;
    }
    PyMem_Free(skip);
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
                        found_t *out) {
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
 *              [, vchan, vchan_of]) -> (status, slot, ordinal). subscriber -1 peeks
 * without holding. With a vchan id, only that vchan's messages count, `last` and the
 * ordinal are vchan ordinals, `pending` is the pending vchan ordinals' array and
 * `vchan_of` the publishers' vchans'. */
static PyObject *py_next_message(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t slots, num_slots, pending, vchan_of = 0;
    unsigned long long last;
    int user, reliable, vchan = -1;
    Py_buffer view;
    view_t scope;
    uint64_t bit;
    if (!PyArg_ParseTuple(args, "OnnnO&ip|in:next_message", &obj, &slots, &num_slots,
                          &pending, u64_arg, &last, &user, &reliable, &vchan, &vchan_of)) {
        return NULL;
    }
    if (user_bit(user, &bit) < 0) return NULL;
    if (checked_view(obj, &scope, vchan, pending, vchan_of) < 0) return NULL;
    if (checked_slots(obj, &view, slots, num_slots) < 0) return NULL;
    found_t found = {-1, 0, 0};
    int status = next_message(view.buf, slots, num_slots, &scope, (uint64_t)last, bit,
                              reliable, &found);
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
    for (Py_ssize_t n = 0; n < max_count; n++) {
        found_t found;
        status = next_message(view.buf, slots, num_slots, &scope, after, bit, reliable,
                              &found);
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
