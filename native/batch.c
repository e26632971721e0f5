// SPDX-License-Identifier: GPL-2.0
/*
 * Ring-buffer records in batches, and their JSON lines, at kernel speed.
 *
 * A Python callback per record costs microseconds (ctypes builds a frame for
 * every call); `nstrace watch --json` has to keep up with hundreds of
 * thousands of records a second. So the ring buffer's sample callback is
 * batch_sample() below: it only copies the record into a batch. Python then asks
 * batch_classify() which records it must look at itself (a /proc check, or a
 * record this file cannot format), and batch_format() writes the rest.
 *
 * One source of truth for names: every string (op, flag, errno, signal and
 * namespace names) comes from Python (nstrace/kernel/flags.py and
 * nstrace/record/layout.py, which read the tables of probes/) through
 * struct batch_tables. The record layout is probes/nstrace.h itself. The reference
 * decoder is nstrace/record/decode.py + nstrace/record/jsonline.py
 * json_line(): for every record formatted here the bytes are identical,
 * which tests/test_batch.py checks on records of real namespace operations,
 * and tests/test_json_output.py in every routing state (enum batch_state),
 * hostile names and all.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/bpf.h>
#include <linux/types.h>

#include "../probes/nstrace.h"

#define BATCH_EXPORT __attribute__((visibility("default")))

/* CSIGNAL: the exit signal's byte of clone()'s flags, which are no flags (probes/uapi.def) */
enum {
#define NSTRACE_CLONE_MASK(name, value) name = value,
#include "../probes/uapi.def"
};

/*
 * What batch_classify() decided for a record: independent bits, each tested on
 * its own (never a whole state compared with ==: a record can be Python's
 * and superseded at once). The bits are defined here only: nstrace/record/reader.py
 * reads their names and values from batch_state_bits[] in this library.
 */
#define BATCH_STATE_BITS(X)							\
	/* Python decodes it, filters it, and writes its whole line (batch_set) */	\
	X(PYTHON, 0x01)								\
	/* Python reads its /proc; a line of C's waits for that proc_check (batch_set) */ \
	X(CHECK, 0x02)								\
	/* superseded: the checked task moves after it, in this batch; /proc not read */ \
	X(LATER, 0x04)								\
	/* not shown: --op/--comm/--type (C's filter, or Python's via batch_set) */	\
	X(FILTERED, 0x08)

enum batch_state {
	BATCH_FORMAT = 0,		/* none of them: formatted here, proc_check null */
#define BATCH_ENUM(name, bit) BATCH_##name = bit,
	BATCH_STATE_BITS(BATCH_ENUM)
#undef BATCH_ENUM
};

struct batch_state_bit {
	const char *name;
	__u8 bit;
};

BATCH_EXPORT const struct batch_state_bit batch_state_bits[] = {
#define BATCH_ENTRY(name, bit) { #name, bit },
	BATCH_STATE_BITS(BATCH_ENTRY)
#undef BATCH_ENTRY
	{ NULL, 0 }
};

/* Names, filled once by nstrace/record/reader.py tables(); strings are JSON-ready ("\"clone\""). */
struct batch_tables {
	const char *ops[OP_MAX];	/* by enum nstrace_op; NULL: "op<n>" */
	const char *flag_names[64];	/* flags.CLONE_FLAGS, in its order */
	__u64 flag_bits[64];
	__u32 nflags;
	const char *entries[NS_SLOTS];	/* /proc/<pid>/ns entry names, JSON-ready */
	__u64 entry_type_bit[NS_SLOTS];	/* CLONE_NEW* of each entry (pid_for_children: NEWPID) */
	const char *errnos[256];	/* errno.errorcode; NULL: the number as a string */
	const char *signals[65];	/* signal.Signals names; NULL: the number as a string */
	const char *target_kinds[5];	/* layout.TARGET_KINDS; NULL: null */
	const char *nstype_names[8];	/* the namespace types, by nstype_bits */
	__u64 nstype_bits[8];
	__s64 wall_offset_ns;		/* CLOCK_MONOTONIC -> wall clock (decode.WALL_OFFSET_NS) */
	__u32 raw_addresses;
	/* ops with a flag table of their own (flags.flag_table(): unshare, open_tree, fsmount); 0 names: CLONE_* */
	__u32 op_nflags[OP_MAX];
	const char *op_flag_names[OP_MAX][64];
	__u64 op_flag_bits[OP_MAX][64];
	/* each op's flags that make a namespace (flags.ns_flags()): the flag, and its type's CLONE_NEW* */
	__u32 op_nmakers[OP_MAX];
	__u64 op_maker_flag[OP_MAX][16];
	__u64 op_maker_type[OP_MAX][16];
	const char *contexts[8];	/* layout.CONTEXTS, by enum nstrace_context; NULL: null */
	const char *holders[8];		/* layout.HOLDERS, by enum nstrace_holder; NULL: null */
};

#define BATCH_MAX_COMMS 16
#define BATCH_MAX_NS 16

/*
 * --op/--comm/--type/--container/--ns (zero: no filter), filled by
 * nstrace/record/filters.py Filter.to_c(), which refuses what these arrays
 * cannot hold; comms are the kernel's bytes, NUL-padded. --container is
 * decided per container fragment by Python (struct batch_frags .match); --ns is
 * a namespace by type and inode, or by ns_id (ns_type_bit 0), that the
 * record's before, after or target holds.
 */
struct batch_filter {
	__u32 ops_mask;			/* bit n: enum nstrace_op n wanted */
	__u32 ncomms;
	char comms[BATCH_MAX_COMMS][sizeof(((struct nstrace_event *)0)->comm)];
	__u64 types_mask;		/* CLONE_NEW* bits wanted */
	__u32 containers;		/* --container given */
	__u32 nns;
	__u64 ns_type_bit[BATCH_MAX_NS];	/* CLONE_NEW* of the namespace; 0: by ns_id */
	__u64 ns_inum[BATCH_MAX_NS];
	__u64 ns_id[BATCH_MAX_NS];
};

struct batch_counts {
	__u64 by_op[OP_MAX];		/* every record, by enum nstrace_op (0: unknown) */
	__u64 superseded;
	__u64 filtered;
	__u64 lines;			/* lines written by batch_format */
};

/*
 * The "container" JSON of each key (a cgroup id; a setns target), written by
 * Python (nstrace/trace/attribution.py, containers are user space's knowledge)
 * and copied here as it is: the two writers write the same bytes by construction.
 * match: the --container filter takes it. Open addressing; Python owns the text.
 * A key whose frag is NULL has no text: its records' container is their
 * caller's, from its cgroup v1 hierarchies, which Python reads per task
 * (attribution.PER_TASK): batch_classify() leaves those records to Python.
 */
struct batch_frags {
	__u64 *key;
	const char **frag;
	__u32 *len;
	__u8 *match, *used;
	__u32 mask, count;
};

enum batch_frag_table {
	BATCH_CGROUPS = 0,		/* by cgroup id: kept for the life of the reader (ids are never reused) */
	BATCH_TARGETS = 1,		/* by target key: a batch's only (namespaces change hands) */
};

struct batch {
	char *data;			/* records back to back, 8-byte aligned */
	size_t used, cap;
	__u32 n, max;
	__u32 *off, *len;
	__u8 *state;
	const char **frag;		/* BATCH_CHECK: proc_check JSON; BATCH_PYTHON: the line */
	__u32 *frag_len;
	char *out;
	size_t out_len, out_cap;
	struct batch_counts counts;
	int oom;
	/* the ring buffer again, read-only, to look at records not consumed yet (batch_moved_on) */
	const char *ring_pos;		/* its consumer and producer pages */
	int ring_fd;
	__u64 ring_mask;		/* data bytes - 1 */
	long page;
	int inflight_fd;
	void *inflight_value;
	struct batch_frags frags[2];	/* enum batch_frag_table */
};

BATCH_EXPORT struct batch *batch_new(__u32 max)
{
	struct batch *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->max = max;
	b->off = calloc(max, sizeof(*b->off));
	b->len = calloc(max, sizeof(*b->len));
	b->state = calloc(max, sizeof(*b->state));
	b->frag = calloc(max, sizeof(*b->frag));
	b->frag_len = calloc(max, sizeof(*b->frag_len));
	if (!b->off || !b->len || !b->state || !b->frag || !b->frag_len) {
		free(b->off), free(b->len), free(b->state), free(b->frag), free(b->frag_len), free(b);
		return NULL;
	}
	return b;
}

BATCH_EXPORT void batch_free(struct batch *b)
{
	if (!b)
		return;
	if (b->ring_pos)
		munmap((void *)b->ring_pos, 2 * b->page);
	free(b->inflight_value);
	for (int i = 0; i < 2; i++) {
		struct batch_frags *t = &b->frags[i];

		free(t->key), free(t->frag), free(t->len), free(t->match), free(t->used);
	}
	free(b->data), free(b->out);
	free(b->off), free(b->len), free(b->state), free(b->frag), free(b->frag_len);
	free(b);
}

static int reserve(char **buf, size_t *cap, size_t need)
{
	size_t cap2 = *cap ? *cap : 64 << 10;
	char *p;

	if (need <= *cap)
		return 0;
	while (cap2 < need)
		cap2 *= 2;
	p = realloc(*buf, cap2);
	if (!p)
		return -1;
	*buf = p, *cap = cap2;
	return 0;
}

/*
 * libbpf's ring_buffer_sample_fn. A negative return makes libbpf stop after
 * this record (which it has already consumed), so a full batch ends the
 * consume call and the rest waits in the ring buffer.
 */
BATCH_EXPORT int batch_sample(void *ctx, void *data, size_t size)
{
	struct batch *b = ctx;
	size_t at = (b->used + 7) & ~(size_t)7;

	if (reserve(&b->data, &b->cap, at + size)) {
		b->oom = 1;
		return -ENOMEM;
	}
	memcpy(b->data + at, data, size);
	b->off[b->n] = at;
	b->len[b->n] = size;
	b->frag[b->n] = NULL;
	b->used = at + size;
	return ++b->n >= b->max ? -E2BIG : 0;
}

static void frags_clear(struct batch_frags *t)
{
	if (t->used)
		memset(t->used, 0, t->mask + 1);
	t->count = 0;
}

BATCH_EXPORT void batch_reset(struct batch *b)
{
	b->n = 0, b->used = 0, b->out_len = 0;
	frags_clear(&b->frags[BATCH_TARGETS]);
}

BATCH_EXPORT __u32 batch_count(const struct batch *b)
{
	return b->n;
}

BATCH_EXPORT const void *batch_record(const struct batch *b, __u32 i, __u32 *size)
{
	*size = b->len[i];
	return b->data + b->off[i];
}

BATCH_EXPORT const __u8 *batch_states(const struct batch *b)
{
	return b->state;
}

BATCH_EXPORT const struct batch_counts *batch_counts(const struct batch *b)
{
	return &b->counts;
}

BATCH_EXPORT int batch_oom(const struct batch *b)
{
	return b->oom;
}

/*
 * Python's fragment for record i: its whole line (BATCH_PYTHON; NULL: Python's
 * filter dropped it) or its proc_check (BATCH_CHECK).
 */
BATCH_EXPORT void batch_set(struct batch *b, __u32 i, const char *frag, __u32 len)
{
	b->frag[i] = frag;
	b->frag_len[i] = len;
	if ((b->state[i] & BATCH_PYTHON) && !frag)
		b->state[i] |= BATCH_FILTERED;
}

static const struct nstrace_event *rec(const struct batch *b, __u32 i)
{
	return (const void *)(b->data + b->off[i]);
}

/* --- containers -------------------------------------------------------------- */

static __u32 frag_slot(const struct batch_frags *t, __u64 key)
{
	__u32 s = (__u32)((key * 0x9e3779b97f4a7c15ull) >> 32) & t->mask;

	while (t->used[s] && t->key[s] != key)
		s = (s + 1) & t->mask;
	return s;
}

/* Index of key's entry, or -1. */
static long frag_find(const struct batch_frags *t, __u64 key)
{
	__u32 s;

	if (!t->used)
		return -1;
	s = frag_slot(t, key);
	return t->used[s] ? (long)s : -1;
}

static int frags_grow(struct batch_frags *t)
{
	struct batch_frags old = *t, n = {};
	__u32 cap = old.used ? 2 * (old.mask + 1) : 256;

	n.mask = cap - 1;
	n.key = calloc(cap, sizeof(*n.key));
	n.frag = calloc(cap, sizeof(*n.frag));
	n.len = calloc(cap, sizeof(*n.len));
	n.match = calloc(cap, 1);
	n.used = calloc(cap, 1);
	if (!n.key || !n.frag || !n.len || !n.match || !n.used) {
		free(n.key), free(n.frag), free(n.len), free(n.match), free(n.used);
		return -1;
	}
	for (__u32 i = 0; old.used && i <= old.mask; i++) {
		if (!old.used[i])
			continue;
		__u32 s = frag_slot(&n, old.key[i]);

		n.used[s] = 1, n.key[s] = old.key[i], n.frag[s] = old.frag[i];
		n.len[s] = old.len[i], n.match[s] = old.match[i];
		n.count++;
	}
	free(old.key), free(old.frag), free(old.len), free(old.match), free(old.used);
	*t = n;
	return 0;
}

/* Python's container JSON for key in table (enum batch_frag_table); match: --container takes it. */
BATCH_EXPORT int batch_set_container(struct batch *b, __u32 table, __u64 key, const char *frag, __u32 len, __u8 match)
{
	struct batch_frags *t = &b->frags[table & 1];
	__u32 s;

	if ((!t->used || 2 * (t->count + 1) > t->mask + 1) && frags_grow(t))
		return -ENOMEM;
	s = frag_slot(t, key);
	t->count += !t->used[s];
	t->used[s] = 1, t->key[s] = key, t->frag[s] = frag, t->len[s] = len, t->match[s] = match;
	return 0;
}

/* The setns target a container is said of: the namespace (nsfs) or the process (pidfd); 0: none. */
static __u64 target_key(const struct nstrace_event *e)
{
	if (e->op != OP_SETNS)
		return 0;
	if (e->target_kind == TARGET_NSFS)
		return (__u64)e->target_nstype << 32 | e->target_inum;
	if (e->target_kind == TARGET_PIDFD)
		return 1ull << 63 | e->target_pid;
	return 0;
}

/*
 * The keys of this batch's records that have no container JSON yet: up to
 * max of them, each once, as (table, key). Python looks them up and calls
 * batch_set_container() before batch_classify().
 */
BATCH_EXPORT __u32 batch_missing(struct batch *b, __u8 *tables, __u64 *keys, __u32 max)
{
	__u32 n = 0;

	for (__u32 i = 0; i < b->n && n < max; i++) {
		const struct nstrace_event *e = rec(b, i);
		__u64 want[2] = { e->cgroup_id, target_key(e) };

		if (b->len[i] < offsetof(struct nstrace_event, steps))
			continue;
		for (__u32 tb = 0; tb < 2 && n < max; tb++) {
			__u32 k;

			if ((tb == BATCH_TARGETS && !want[tb]) || frag_find(&b->frags[tb], want[tb]) >= 0)
				continue;
			for (k = 0; k < n && !(tables[k] == tb && keys[k] == want[tb]); k++)
				;
			if (k == n)
				tables[n] = tb, keys[n++] = want[tb];
		}
	}
	return n;
}

/* Key's container text is there (not missing, not NULL: per task). */
static int frag_known(const struct batch_frags *t, __u64 key)
{
	long c = frag_find(t, key);

	return c >= 0 && t->frag[c];
}

/* Both of a record's container texts are there (else Python writes its line). */
static int containers_known(const struct batch *b, const struct nstrace_event *e)
{
	__u64 target = target_key(e);

	return frag_known(&b->frags[BATCH_CGROUPS], e->cgroup_id) &&
	       (!target || frag_known(&b->frags[BATCH_TARGETS], target));
}

static int container_wanted(const struct batch *b, const struct nstrace_event *e)
{
	long c = frag_find(&b->frags[BATCH_CGROUPS], e->cgroup_id);
	__u64 target = target_key(e);
	long tg = target ? frag_find(&b->frags[BATCH_TARGETS], target) : -1;

	return (c >= 0 && b->frags[BATCH_CGROUPS].match[c]) || (tg >= 0 && b->frags[BATCH_TARGETS].match[tg]);
}

/* open_tree, fsmount and free say which namespace they made or freed (decode.decode(): "ns"). */
static int has_ns(const struct nstrace_event *e)
{
	return e->op == OP_FREE || ((e->op == OP_OPEN_TREE || e->op == OP_FSMOUNT) && e->target_kind == TARGET_NSFS);
}

/*
 * Filter.wanted() for --ns: the namespace is one of the record's, before, after, as its setns
 * target, or the one it made or freed (open_tree, fsmount, free keep that in the target fields).
 */
static int involves_ns(const struct batch_tables *t, const struct batch_filter *f, const struct nstrace_event *e)
{
	const struct nstrace_ns_set *sets[2] = { &e->before, &e->after };
	int nsfs = (e->op == OP_SETNS && e->target_kind == TARGET_NSFS) || has_ns(e);

	for (__u32 k = 0; k < f->nns && k < BATCH_MAX_NS; k++) {
		for (int i = 0; i < 2; i++) {
			if (!sets[i]->valid)
				continue;
			for (int s = 0; s < NS_SLOTS; s++) {
				if (f->ns_type_bit[k] ? t->entry_type_bit[s] == f->ns_type_bit[k] &&
							sets[i]->inum[s] == f->ns_inum[k]
						      : sets[i]->ns_id[s] && sets[i]->ns_id[s] == f->ns_id[k])
					return 1;
			}
		}
		if (nsfs && (f->ns_type_bit[k] ? e->target_nstype == f->ns_type_bit[k] && e->target_inum == f->ns_inum[k]
					       : e->target_ns_id && e->target_ns_id == f->ns_id[k]))
			return 1;
	}
	return 0;
}

/* The operations that make a child (flags.CHILD_OPS) */
static int is_clone(__u32 op)
{
	return op == OP_CLONE || op == OP_CLONE3 || op == OP_FORK || op == OP_VFORK;
}

/*
 * A comm that safe_comm() (nstrace/linux/comm.py) leaves as it is and --comm
 * compares byte for byte: printable ASCII without a backslash. Anything else
 * (escapes, UTF-8) goes to Python, the reference, so there is one escaping
 * rule.
 */
static int comm_is_plain(const char *comm)
{
	for (int i = 0; i < 16 && comm[i]; i++)
		if (comm[i] < 0x20 || comm[i] > 0x7e || comm[i] == '\\')
			return 0;
	return 1;
}

/* Filter.wanted(): the types an operation touches (as CLONE_NEW* bits). */
static __u64 touched_types(const struct batch_tables *t, const struct nstrace_event *e)
{
	__u64 types = 0;

	for (__u32 i = 0; e->op < OP_MAX && i < t->op_nmakers[e->op]; i++)
		if (e->raw_flags & t->op_maker_flag[e->op][i])
			types |= t->op_maker_type[e->op][i];
	if (has_ns(e))
		types |= e->target_nstype;
	if (e->before.valid && e->after.valid)
		for (int s = 0; s < NS_SLOTS; s++)
			if (e->before.inum[s] != e->after.inum[s] || e->before.ns_id[s] != e->after.ns_id[s])
				types |= t->entry_type_bit[s];
	if (e->op == OP_SETNS && e->target_kind == TARGET_NSFS)
		types |= e->target_nstype;
	return types;
}

static int comm_wanted(const struct batch_filter *f, const char *comm)
{
	for (__u32 i = 0; i < f->ncomms && i < BATCH_MAX_COMMS; i++)
		if (!strncmp(f->comms[i], comm, sizeof(f->comms[i])))
			return 1;
	return 0;
}

static int wanted(const struct batch *b, const struct batch_tables *t, const struct batch_filter *f,
		  const struct nstrace_event *e)
{
	if (f->ops_mask && (e->op > 31 || !(f->ops_mask & (1u << e->op))))
		return 0;
	if (f->ncomms && !comm_wanted(f, e->comm))
		return 0;
	if (f->types_mask && !(touched_types(t, e) & f->types_mask))
		return 0;
	if (f->containers && !container_wanted(b, e))
		return 0;
	if (f->nns && !involves_ns(t, f, e))
		return 0;
	return 1;
}

/*
 * The task whose /proc/<pid>/ns the record's namespaces should show, and
 * which set that is: the child after a clone that made one, else the caller
 * (before a failed clone, after unshare/setns). Returns NULL: nothing to check.
 */
static const struct nstrace_ns_set *checked(const struct nstrace_event *e, __u32 *tid)
{
	if (is_clone(e->op)) {
		if (e->ret < 0 || !e->child_pid) {
			*tid = e->tid;
			return e->before.valid ? &e->before : NULL;
		}
		*tid = e->child_tid;
	} else {
		*tid = e->tid;
	}
	return e->after.valid ? &e->after : NULL;
}

/* Open addressing: tid -> index of the task's last record in the batch. */
struct last_seen {
	__u32 *tid, *idx;
	__u32 mask;
};

static __u32 *last_slot(struct last_seen *h, __u32 tid)
{
	__u32 s = (tid * 2654435761u) & h->mask;

	while (h->tid[s] && h->tid[s] != tid)
		s = (s + 1) & h->mask;
	h->tid[s] = tid;
	return &h->idx[s];
}

/*
 * Did this operation move its caller to other namespaces? Only a successful
 * unshare, setns or exec does: a clone changes the child, never the caller.
 */
static int moves_caller(const struct nstrace_event *e)
{
	if ((e->op != OP_UNSHARE && e->op != OP_SETNS && e->op != OP_EXEC) || e->ret < 0)
		return 0;
	if (!e->before.valid || !e->after.valid)
		return 1;
	return memcmp(e->before.inum, e->after.inum, sizeof(e->before.inum)) ||
	       memcmp(e->before.ns_id, e->after.ns_id, sizeof(e->before.ns_id));
}

/*
 * Decide every record's state; count ops, and the filtered and superseded
 * records written here. Returns how many records Python must see (BATCH_CHECK
 * or BATCH_PYTHON), or -1. A record is superseded (BATCH_LATER) when the task it
 * would check moves to other namespaces after it, in a record of this
 * batch: /proc already shows where it went, so it is not read. A BATCH_PYTHON
 * record carries BATCH_CHECK and BATCH_LATER as any other; Python filters it.
 */
BATCH_EXPORT int batch_classify(struct batch *b, const struct batch_tables *t, const struct batch_filter *f,
			  int check_proc)
{
	struct last_seen h;
	__u32 size = 16;
	int python = 0;

	while (size < 2 * b->n)
		size *= 2;
	h.mask = size - 1;
	h.tid = calloc(size, sizeof(__u32));
	h.idx = calloc(size, sizeof(__u32));
	if (!h.tid || !h.idx) {
		free(h.tid), free(h.idx);
		return -1;
	}
	/* tid 0 (the idle task) must not look like an empty slot */
	for (__u32 i = 0; i < b->n; i++)
		if (moves_caller(rec(b, i)))
			*last_slot(&h, rec(b, i)->tid ?: ~0u) = i + 1;

	for (__u32 i = 0; i < b->n; i++) {
		const struct nstrace_event *e = rec(b, i);
		int check = 0, later = 0;
		__u32 tid;
		__u8 st;

		b->counts.by_op[e->op < OP_MAX ? e->op : 0]++;
		if (check_proc && checked(e, &tid)) {
			__u32 last = *last_slot(&h, tid ?: ~0u);

			check = 1;
			/*
			 * A move after this record; for a clone's child, any move
			 * of its own: it runs before its parent's clone returns
			 * (CLONE_VFORK waits for it, and another CPU need not), so
			 * its record can come first. Its start time tells it from
			 * an earlier task with the same tid.
			 */
			later = last > i + 1 || (last && tid != e->tid &&
						 rec(b, last - 1)->start_time_ns == e->child_start_ns);
		}
		st = later ? BATCH_LATER : check ? BATCH_CHECK : BATCH_FORMAT;

		if (b->len[i] < offsetof(struct nstrace_event, steps) || !comm_is_plain(e->comm) || e->nsteps ||
		    !containers_known(b, e)) {
			st |= BATCH_PYTHON;
		} else if (!wanted(b, t, f, e)) {
			st = BATCH_FILTERED;
			b->counts.filtered++;
		} else if (later) {
			b->counts.superseded++;
		}
		b->state[i] = st;
		python += !!(st & (BATCH_PYTHON | BATCH_CHECK));
	}
	free(h.tid), free(h.idx);
	return python;
}

/* --- has the task moved on? ------------------------------------------------ */

/*
 * The ring buffer's consumer and producer positions, mapped read-only. Its
 * data pages are mapped only for a look, a window at a time: the kernel
 * inserts every page of a ring-buffer mapping when it is made
 * (kernel/bpf/ringbuf.c, ringbuf_map_mmap_kern() -> remap_vmalloc_range(),
 * with no fault handler), so a standing second view of 4 MiB of data, mapped
 * twice over for wrap-around, would add 8 MiB to the resident set.
 * inflight_fd: the in-flight table (record heads of syscalls in progress, by slot).
 */
BATCH_EXPORT int batch_watch_ring(struct batch *b, int ring_fd, __u32 data_bytes, int inflight_fd, __u32 value_bytes)
{
	void *p;

	b->page = sysconf(_SC_PAGESIZE);
	p = mmap(NULL, 2 * b->page, PROT_READ, MAP_SHARED, ring_fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	b->ring_pos = p;
	b->ring_fd = ring_fd;
	b->ring_mask = data_bytes - 1;
	b->inflight_fd = inflight_fd;
	b->inflight_value = calloc(1, value_bytes);
	return b->inflight_value ? 0 : -ENOMEM;
}

/*
 * The operation tid is inside now (OP_*), 0 if none: its slot of the
 * in-flight table (probes/inflight.bpf.h).
 */
BATCH_EXPORT __u32 batch_in_flight(struct batch *b, __u32 tid)
{
	const struct nstrace_event *head = b->inflight_value;

	if (!head)
		return 0;
	for (__u32 i = 0; i < INFLIGHT_PROBES; i++) {
		__u32 slot = (tid + i) & (INFLIGHT_SLOTS - 1);
		union bpf_attr attr = {
			.map_fd = b->inflight_fd,
			.key = (uintptr_t)&slot,
			.value = (uintptr_t)b->inflight_value,
		};

		if (syscall(SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr, sizeof(attr)))
			return 0;
		if (head->tid == tid)
			return head->op;
	}
	return 0;
}

static int in_flight_move(struct batch *b, __u32 tid)
{
	__u32 op = batch_in_flight(b, tid);

	return op == OP_UNSHARE || op == OP_SETNS || op == OP_EXEC;
}

#define WINDOW_PAGES 16	/* 64 KiB: a record is at most ~3.5 KiB */

/*
 * Look through records [*cons, prod) that fit one window of data pages.
 * The data pages follow the two position pages, and are there twice over,
 * so a window can run past the end of the data and a record never wraps.
 * Returns 1: tid moves in one; 0: not in this window (*cons advanced);
 * -1: stop (an uncommitted record, or the window cannot be mapped).
 */
static int look_in_window(struct batch *b, __u32 tid, __u64 *cons, __u64 prod)
{
	size_t data_pages = (b->ring_mask + 1 + b->page - 1) / b->page;
	size_t first = (*cons & b->ring_mask) / b->page;
	size_t pages = 2 * data_pages - first < WINDOW_PAGES ? 2 * data_pages - first : WINDOW_PAGES;
	size_t bytes = pages * b->page, at = (*cons & b->ring_mask) - first * b->page;
	const char *win = mmap(NULL, bytes, PROT_READ, MAP_SHARED, b->ring_fd, (2 + first) * b->page);
	int found = 0;

	if (win == MAP_FAILED)
		return -1;
	while (*cons < prod && at + BPF_RINGBUF_HDR_SZ <= bytes) {
		__u32 len = __atomic_load_n((const __u32 *)(win + at), __ATOMIC_ACQUIRE);
		__u64 size;

		if (len & BPF_RINGBUF_BUSY_BIT) {
			found = -1;
			break;
		}
		size = ((len & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)) + BPF_RINGBUF_HDR_SZ + 7) & ~7ull;
		if (at + size > bytes)
			break;	/* the next window starts with it */
		if (!(len & BPF_RINGBUF_DISCARD_BIT) && len >= offsetof(struct nstrace_event, steps)) {
			const struct nstrace_event *e = (const void *)(win + at + BPF_RINGBUF_HDR_SZ);

			if (e->tid == tid && moves_caller(e)) {
				found = 1;
				break;
			}
		}
		*cons += size;
		at += size;
	}
	munmap((void *)win, bytes);
	return found;
}

/*
 * Called when /proc shows other namespaces than a task's last record said:
 * is that because the task moved on? Yes if a record the kernel submitted
 * but nobody read yet moves it, or if it is inside unshare/setns right now.
 * /proc was read before this runs, so any move it could show is one of the
 * two. Returns 0 if neither: then the mismatch is real.
 */
BATCH_EXPORT int batch_moved_on(struct batch *b, __u32 tid)
{
	__u64 cons, prod;

	if (!b->ring_pos)
		return 0;
	cons = __atomic_load_n((const __u64 *)b->ring_pos, __ATOMIC_ACQUIRE);
	prod = __atomic_load_n((const __u64 *)(b->ring_pos + b->page), __ATOMIC_ACQUIRE);
	while (cons < prod) {
		__u64 was = cons;
		int r = look_in_window(b, tid, &cons, prod);

		if (r > 0)
			return 1;
		if (r < 0 || cons == was)
			break;
	}
	return in_flight_move(b, tid);
}

/* --- JSON ------------------------------------------------------------------ */

struct out {
	char *p;
};

static void put(struct out *o, const char *s, size_t n)
{
	memcpy(o->p, s, n);
	o->p += n;
}

#define PUT(o, lit) put(o, lit, sizeof(lit) - 1)

static void puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static void put_u64(struct out *o, __u64 v)
{
	static const char pairs[] =
		"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
		"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
		"8081828384858687888990919293949596979899";
	char tmp[20];
	int n = 20;

	/* two digits per division: these are most of a record's bytes */
	while (v >= 100) {
		n -= 2;
		memcpy(tmp + n, pairs + (v % 100) * 2, 2);
		v /= 100;
	}
	if (v >= 10) {
		n -= 2;
		memcpy(tmp + n, pairs + v * 2, 2);
	} else {
		tmp[--n] = '0' + v;
	}
	put(o, tmp + n, 20 - n);
}

static void put_s64(struct out *o, __s64 v)
{
	if (v < 0) {
		*o->p++ = '-';
		put_u64(o, -(__u64)v);
	} else {
		put_u64(o, v);
	}
}

static void put_hex(struct out *o, __u64 v, int min_digits)
{
	char tmp[16];
	int n = 0;

	do {
		tmp[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	while (n < min_digits)
		tmp[n++] = '0';
	while (n)
		*o->p++ = tmp[--n];
}

/* whole.frac as Python's float repr shows a value with `digits` decimals: trailing zeros dropped, at least one. */
static void put_fixed(struct out *o, __u64 whole, __u64 frac, int digits)
{
	char tmp[8];

	put_u64(o, whole);
	*o->p++ = '.';
	for (int i = digits - 1; i >= 0; i--, frac /= 10)
		tmp[i] = '0' + frac % 10;
	while (digits > 1 && tmp[digits - 1] == '0')
		digits--;
	put(o, tmp, digits);
}

/* The number as a JSON string, as Python's str(n) for an unknown errno or signal. */
static void put_num_str(struct out *o, __s64 v)
{
	*o->p++ = '"';
	put_s64(o, v);
	*o->p++ = '"';
}

/*
 * The comm as jsonline.json_line() writes it: json.dumps() of a plain comm
 * (see comm_is_plain), with '"' escaped, and '<', '>' and '&' as \u00XX so
 * that a line pasted into HTML cannot end a <script> element. No other byte
 * below 0x20 or above 0x7e gets here (batch_classify() sends such records to
 * Python, whose escaping is the reference); were one to, it would still be
 * written as \u00XX, never raw.
 */
static void put_comm(struct out *o, const char *comm)
{
	*o->p++ = '"';
	for (int i = 0; i < 16 && comm[i]; i++) {
		unsigned char c = comm[i];

		if (c == '"' || c == '\\') {
			*o->p++ = '\\';
			*o->p++ = c;
		} else if (c < 0x20 || c > 0x7e || c == '<' || c == '>' || c == '&') {
			PUT(o, "\\u00");
			*o->p++ = "0123456789abcdef"[c >> 4];
			*o->p++ = "0123456789abcdef"[c & 15];
		} else {
			*o->p++ = c;
		}
	}
	*o->p++ = '"';
}

/* flags.decode_flags(): names in table order, then leftover bits as one hex string. */
static void put_flags(struct out *o, const struct batch_tables *t, __u64 v, __u32 op)
{
	const char *const *names = t->flag_names;
	const __u64 *bits = t->flag_bits;
	__u32 n = t->nflags;
	int first = 1;

	if (op == OP_CLONE)
		v &= ~CSIGNAL;
	if (op < OP_MAX && t->op_nflags[op]) {
		names = t->op_flag_names[op];
		bits = t->op_flag_bits[op];
		n = t->op_nflags[op];
	}
	*o->p++ = '[';
	for (__u32 i = 0; i < n; i++) {
		if (!(v & bits[i]))
			continue;
		if (!first)
			*o->p++ = ',';
		puts_(o, names[i]);
		v &= ~bits[i];
		first = 0;
	}
	if (v) {
		if (!first)
			*o->p++ = ',';
		PUT(o, "\"0x");
		put_hex(o, v, 1);
		*o->p++ = '"';
	}
	*o->p++ = ']';
}

static void put_ns_map_uncached(struct out *o, const struct batch_tables *t, const __u64 *v)
{
	*o->p++ = '{';
	for (int i = 0; i < NS_SLOTS; i++) {
		if (i)
			*o->p++ = ',';
		puts_(o, t->entries[i]);
		*o->p++ = ':';
		if (v[i])
			put_u64(o, v[i]);
		else
			PUT(o, "null");
	}
	*o->p++ = '}';
}

/*
 * A record carries four such maps and most of them repeat from record to
 * record (the host's namespaces): the last few are kept as text.
 */
#define MAP_CACHE 8
#define MAP_TEXT (NS_SLOTS * 48)

static struct map_text {
	__u64 v[NS_SLOTS];
	const struct batch_tables *t;
	__u32 len;
	char text[MAP_TEXT];
} map_cache[MAP_CACHE];
static __u32 map_next;

static void put_ns_map(struct out *o, const struct batch_tables *t, const struct nstrace_ns_set *s, int ids)
{
	__u64 v[NS_SLOTS];
	struct map_text *m;

	if (!s->valid) {
		PUT(o, "null");
		return;
	}
	for (int i = 0; i < NS_SLOTS; i++)
		v[i] = ids ? s->ns_id[i] : s->inum[i];
	for (m = map_cache; m < map_cache + MAP_CACHE; m++) {
		if (m->t == t && !memcmp(m->v, v, sizeof(v))) {
			put(o, m->text, m->len);
			return;
		}
	}
	m = &map_cache[map_next++ % MAP_CACHE];
	struct out text = { m->text };

	put_ns_map_uncached(&text, t, v);
	memcpy(m->v, v, sizeof(v));
	m->t = t;
	m->len = text.p - m->text;
	put(o, m->text, m->len);
}

/* decode.format_id(): 8 hex digits, or the address with --raw-addresses. */
static void put_id(struct out *o, const struct batch_tables *t, __u64 v)
{
	if (!v) {
		PUT(o, "null");
		return;
	}
	PUT(o, "\"");
	if (t->raw_addresses)
		PUT(o, "0x");
	put_hex(o, v, t->raw_addresses ? 1 : 8);
	PUT(o, "\"");
}

/* The container JSON of key (batch_classify() sent every record without one to Python). */
static void put_container(struct out *o, const struct batch_frags *t, __u64 key)
{
	long c = frag_find(t, key);

	if (c >= 0)
		put(o, t->frag[c], t->len[c]);
	else
		PUT(o, "null");
}

/* The namespace type of a CLONE_NEW* bit, as put_target() writes it. */
static void put_nstype(struct out *o, const struct batch_tables *t, __u32 nstype)
{
	int i;

	for (i = 0; i < 8 && t->nstype_bits[i] != nstype; i++)
		;
	if (i < 8) {
		puts_(o, t->nstype_names[i]);
	} else {
		PUT(o, "\"0x");
		put_hex(o, nstype, 1);
		*o->p++ = '"';
	}
}

static void put_target(struct out *o, const struct batch *b, const struct batch_tables *t,
		       const struct nstrace_event *e)
{
	const char *kind = e->target_kind < 5 ? t->target_kinds[e->target_kind] : t->target_kinds[TARGET_OTHER];

	PUT(o, "{\"fd\":");
	put_s64(o, e->setns_fd);
	PUT(o, ",\"kind\":");
	if (kind)
		puts_(o, kind);
	else
		PUT(o, "null");
	if (e->target_kind == TARGET_NSFS) {
		PUT(o, ",\"type\":");
		put_nstype(o, t, e->target_nstype);
		PUT(o, ",\"inode\":");
		put_u64(o, e->target_inum);
		PUT(o, ",\"ns_id\":");
		if (e->target_ns_id)
			put_u64(o, e->target_ns_id);
		else
			PUT(o, "null");
	} else if (e->target_kind == TARGET_PIDFD) {
		PUT(o, ",\"pid\":");
		put_u64(o, e->target_pid);
	}
	if (target_key(e)) {
		PUT(o, ",\"container\":");
		put_container(o, &b->frags[BATCH_TARGETS], target_key(e));
	}
	*o->p++ = '}';
}

static void put_opt_u64(struct out *o, __u64 v)
{
	if (v)
		put_u64(o, v);
	else
		PUT(o, "null");
}

/* What a record's container texts add to its line. */
static size_t containers_len(const struct batch *b, const struct nstrace_event *e)
{
	long c = frag_find(&b->frags[BATCH_CGROUPS], e->cgroup_id);
	long tg = target_key(e) ? frag_find(&b->frags[BATCH_TARGETS], target_key(e)) : -1;

	return (c >= 0 ? b->frags[BATCH_CGROUPS].len[c] : 0) + (tg >= 0 ? b->frags[BATCH_TARGETS].len[tg] : 0);
}

/* A table's JSON-ready name, or null */
static void put_name(struct out *o, const char *name)
{
	if (name)
		puts_(o, name);
	else
		PUT(o, "null");
}

/* "ns" of open_tree, fsmount and free: the namespace made or freed (and how long it lived). */
static void put_ns(struct out *o, const struct batch_tables *t, const struct nstrace_event *e)
{
	if (!has_ns(e)) {
		PUT(o, "null");
		return;
	}
	PUT(o, "{\"type\":");
	put_nstype(o, t, e->target_nstype);
	PUT(o, ",\"inode\":");
	put_u64(o, e->target_inum);
	PUT(o, ",\"ns_id\":");
	put_opt_u64(o, e->target_ns_id);
	if (e->op == OP_FREE) {
		PUT(o, ",\"lived_ns\":");
		put_opt_u64(o, e->lived_ns);
		PUT(o, ",\"context\":");
		put_name(o, e->context < 8 ? t->contexts[e->context] : NULL);
		PUT(o, ",\"held_by\":");
		put_name(o, e->holder < 8 ? t->holders[e->holder] : NULL);
	}
	*o->p++ = '}';
}

/* Longest line put_line() can write, without the proc_check and container fragments. */
#define LINE_MAX_BYTES (4096 + 16 * 8 + 64 * 32)

static void put_line(struct out *o, const struct batch *b, const struct batch_tables *t,
		     const struct nstrace_event *e, const char *proc, __u32 proc_len)
{
	int clone = is_clone(e->op);
	__u64 us = (e->exit_ns + t->wall_offset_ns + 500) / 1000;
	__u64 dur = e->exit_ns > e->enter_ns ? e->exit_ns - e->enter_ns : 0;

	PUT(o, "{\"ts\":");
	put_fixed(o, us / 1000000, us % 1000000, 6);
	PUT(o, ",\"duration_us\":");
	put_fixed(o, dur / 1000, dur % 1000, 3);
	PUT(o, ",\"op\":");
	if (e->op < OP_MAX && t->ops[e->op]) {
		puts_(o, t->ops[e->op]);
	} else {
		PUT(o, "\"op");
		put_u64(o, e->op);
		*o->p++ = '"';
	}
	PUT(o, ",\"pid\":");
	put_u64(o, e->pid);
	PUT(o, ",\"tid\":");
	put_u64(o, e->tid);
	PUT(o, ",\"ppid\":");
	put_u64(o, e->ppid);
	PUT(o, ",\"uid\":");
	put_u64(o, e->uid);
	PUT(o, ",\"comm\":");
	put_comm(o, e->comm);
	PUT(o, ",\"raw_flags\":");
	put_u64(o, e->raw_flags);
	PUT(o, ",\"flags\":");
	put_flags(o, t, e->raw_flags, e->op);
	PUT(o, ",\"ret\":");
	put_s64(o, e->ret);
	PUT(o, ",\"errno\":");
	if (e->ret >= 0)
		PUT(o, "null");
	else if (-(__u64)e->ret < 256 && t->errnos[-e->ret])
		puts_(o, t->errnos[-e->ret]);
	else {
		*o->p++ = '"';
		put_u64(o, -(__u64)e->ret);
		*o->p++ = '"';
	}
	PUT(o, ",\"exit_signal\":");
	if (!clone || !e->exit_signal)
		PUT(o, "null");
	else if (e->exit_signal > 0 && e->exit_signal <= 64 && t->signals[e->exit_signal])
		puts_(o, t->signals[e->exit_signal]);
	else
		put_num_str(o, e->exit_signal);
	PUT(o, ",\"child_pid\":");
	put_opt_u64(o, clone ? e->child_pid : 0);
	PUT(o, ",\"child_tid\":");
	put_opt_u64(o, clone ? e->child_tid : 0);
	PUT(o, ",\"target\":");
	if (e->op == OP_SETNS)
		put_target(o, b, t, e);
	else
		PUT(o, "null");
	PUT(o, ",\"ns_before\":");
	put_ns_map(o, t, &e->before, 0);
	PUT(o, ",\"ns_after\":");
	put_ns_map(o, t, &e->after, 0);
	PUT(o, ",\"ns_id_before\":");
	put_ns_map(o, t, &e->before, 1);
	PUT(o, ",\"ns_id_after\":");
	put_ns_map(o, t, &e->after, 1);
	PUT(o, ",\"changed\":[");
	if (e->before.valid && e->after.valid) {
		int first = 1;

		for (int s = 0; s < NS_SLOTS; s++) {
			if (e->before.inum[s] == e->after.inum[s] && e->before.ns_id[s] == e->after.ns_id[s])
				continue;
			if (!first)
				*o->p++ = ',';
			puts_(o, t->entries[s]);
			first = 0;
		}
	}
	PUT(o, "],\"nsproxy\":{\"before\":");
	put_id(o, t, e->before.nsproxy_id);
	PUT(o, ",\"after\":");
	put_id(o, t, e->after.nsproxy_id);
	PUT(o, "},\"start_time_ns\":");
	put_u64(o, e->start_time_ns);
	PUT(o, ",\"child_start_ns\":");
	put_opt_u64(o, clone ? e->child_start_ns : 0);
	PUT(o, ",\"cgroup_id\":");
	put_u64(o, e->cgroup_id);
	PUT(o, ",\"container\":");
	put_container(o, &b->frags[BATCH_CGROUPS], e->cgroup_id);
	PUT(o, ",\"ns\":");
	put_ns(o, t, e);
	PUT(o, ",\"kernel_path\":[],\"kernel_path_dropped\":");
	put_u64(o, e->steps_dropped);
	PUT(o, ",\"proc_check\":");
	if (proc)
		put(o, proc, proc_len);
	else
		PUT(o, "null");
	PUT(o, "}\n");
}

/*
 * Write the lines of up to `limit` shown records (0: all) into the batch's
 * output buffer; *out points at them. Returns the byte count, or -1.
 */
BATCH_EXPORT long batch_format(struct batch *b, const struct batch_tables *t, __u32 limit, const char **out)
{
	struct out o;
	__u32 lines = 0;

	b->out_len = 0;
	for (__u32 i = 0; i < b->n && (!limit || lines < limit); i++) {
		__u8 st = b->state[i];
		size_t need = b->out_len + LINE_MAX_BYTES + b->frag_len[i] +
			      (b->len[i] >= offsetof(struct nstrace_event, steps) ? containers_len(b, rec(b, i)) : 0);

		/* a Python record is never written here: its line, or nothing */
		if ((st & BATCH_FILTERED) || ((st & BATCH_PYTHON) && !b->frag[i]))
			continue;
		if (reserve(&b->out, &b->out_cap, need))
			return -1;
		o.p = b->out + b->out_len;
		if (st & BATCH_PYTHON) {
			put(&o, b->frag[i], b->frag_len[i]);
		} else if (st & BATCH_LATER) {
			char frag[48] = "{\"status\":\"superseded\",\"pid\":";
			struct out f = { frag + strlen(frag) };
			__u32 tid;

			checked(rec(b, i), &tid);
			put_u64(&f, tid);
			*f.p++ = '}';
			put_line(&o, b, t, rec(b, i), frag, f.p - frag);
		} else {
			put_line(&o, b, t, rec(b, i), b->frag[i], b->frag_len[i]);
		}
		b->out_len = o.p - b->out;
		lines++;
	}
	b->counts.lines += lines;
	*out = b->out;
	return b->out_len;
}
