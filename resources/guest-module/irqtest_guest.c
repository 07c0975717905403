// SPDX-License-Identifier: GPL-2.0
/*
 * irqtest_guest: in-guest self-test for the VMM's "irqtest" PCI device (1b36:0110).
 *
 * On probe it runs these checks against the device and prints one machine-readable line
 * (IRQTEST-RESULT key=value ...) with pr_info:
 *
 *   a. MSI-X: nvec vectors from pci_alloc_irq_vectors(), each fired a distinct number of
 *      times, exact per-vector counts.
 *   b. Post-enable (dynamic) MSI-X allocation with pci_msix_alloc_irq_at() while a kthread
 *      keeps firing vector 0 in ping-pong (fire, wait for it, fire again); half of the
 *      dynamic vectors are freed and allocated again; nothing may be lost or duplicated.
 *   e. Affinity changes under load: MSI-X vectors are moved between CPUs with
 *      irq_set_affinity() (the guest rewrites their messages) while one is hammered from a
 *      kthread and another is fired after every move. Handler invocations that carry no
 *      new message from the device (its DELIVERED counter did not move) are counted as
 *      spurious instead of received: x86 Linux without interrupt remapping retriggers a
 *      moved MSI when its new vector is pending in the old CPU's IRR, which is also the
 *      case when another interrupt owning that vector number there is pending.
 *   c. Masking at the device: the MSI-X table entry's mask bit (fires stay pending, the PBA
 *      bit is set, one delivery on unmask, PBA clear) and the MSI-X function mask.
 *   d. MSI: pci_alloc_irq_vectors(1..4, PCI_IRQ_MSI), exact counts, and the per-vector
 *      MSI mask/pending bits.
 *
 * Every fire is a single FIRE command; the test waits for the interrupt before firing
 * the same vector again, because a second edge on a vector that is still pending in the
 * local APIC merges with the first one (architectural coalescing, not a loss).
 * Different vectors are in flight at the same time.
 *
 * On a miscount the module prints the device's counters for the vector and a trace of
 * the last fires, handler runs and affinity changes (CPU, programmed message, x86 vector).
 *
 * With keep=1 (default) the MSI vectors of check d stay requested until the module is
 * removed, so /proc/interrupts shows them.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/msi.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/ktime.h>
#include <asm/hw_irq.h>

#define IRQT_VENDOR	0x1b36
#define IRQT_DEVICE	0x0110
#define IRQT_MAGIC	0x54515249

/* BAR0 registers */
#define REG_MAGIC	0x00
#define REG_MSIX_VECS	0x04
#define REG_MSI_VECS	0x08
#define REG_MODE	0x0c
#define REG_FIRE	0x10
#define REG_SELECT	0x14
#define REG_FIRES	0x18
#define REG_DELIVERED	0x1c
#define REG_PENDING	0x20
#define REG_DROPPED	0x24
#define REG_REJECTED	0x28

#define MODE_NONE	0
#define MODE_MSI	1
#define MODE_MSIX	2

/* BAR2: MSI-X table at 0, PBA at 0x8000 */
#define MSIX_ENTRY_SIZE		16
#define MSIX_ENTRY_CTRL		12
#define MSIX_PBA_OFFSET		0x8000
#define BAR2_MIN_SIZE		0x10000

#define MAX_STATIC	32
#define MAX_DYN		32
#define MAX_SLOTS	(MAX_STATIC + 2 * MAX_DYN + 32)

static unsigned int nvec = 8;
module_param(nvec, uint, 0444);
MODULE_PARM_DESC(nvec, "MSI-X vectors allocated with pci_alloc_irq_vectors (default 8, max 32)");

static unsigned int ndyn = 16;
module_param(ndyn, uint, 0444);
MODULE_PARM_DESC(ndyn, "vectors allocated after enable with pci_msix_alloc_irq_at (default 16, max 32)");

static unsigned int wait_ms = 5000;
module_param(wait_ms, uint, 0444);
MODULE_PARM_DESC(wait_ms, "how long to wait for one interrupt before calling it lost (ms)");

static unsigned int settle_ms = 300;
module_param(settle_ms, uint, 0444);
MODULE_PARM_DESC(settle_ms, "extra delay before final counts are compared, to catch duplicates (ms)");

static unsigned int hammer_gap_us = 100;
module_param(hammer_gap_us, uint, 0444);
MODULE_PARM_DESC(hammer_gap_us, "pause between two fires of the background kthread (us)");

static unsigned int hammer_max = 100000;
module_param(hammer_max, uint, 0444);
MODULE_PARM_DESC(hammer_max, "upper bound on background fires");

static unsigned int migrations = 300;
module_param(migrations, uint, 0444);
MODULE_PARM_DESC(migrations, "affinity changes in the migration check");

static unsigned int migrate_flags = 3;
module_param(migrate_flags, uint, 0444);
MODULE_PARM_DESC(migrate_flags, "migration check: bit 0 moves the hammered vector, bit 1 the ping-pong vector");

static unsigned int inject;
module_param(inject, uint, 0444);
MODULE_PARM_DESC(inject, "checks the checker: 1 expects one interrupt too many on the first vector (reports it lost), 2 one too few (reports a duplicate)");

static bool keep = true;
module_param(keep, bool, 0444);
MODULE_PARM_DESC(keep, "keep the MSI vectors requested until the module is removed");

struct irqt_dev;

struct irqt_vec {
	struct irqt_dev *d;
	atomic_t count;		/* handler invocations */
	unsigned int expected;	/* deliveries the test expects */
	unsigned int fires;	/* FIRE commands issued for this vector */
	int need;		/* count the current wait is for: a new interrupt, and all expected */
	bool classify;		/* count only invocations the device's DELIVERED counter confirms */
	u32 dev_seen;		/* DELIVERED at the last confirmed invocation */
	atomic_t spurious;	/* invocations without a new device message (classify only) */
	unsigned int dups_seen;	/* most interrupts seen beyond the expected count */
	unsigned int index;	/* MSI-X table entry or MSI message number */
	int virq;
	bool msi;		/* MSI (else MSI-X) */
	bool dynamic;		/* from pci_msix_alloc_irq_at */
	bool requested;
	bool dyn_allocated;
	bool accounted;
	struct msi_map map;
	char name[32];
};

struct irqt_result {
	unsigned int msix_table;
	unsigned int msix_used;
	bool dyn_supported;
	unsigned int dyn_allocs;
	unsigned int dyn_frees;
	unsigned int hammer_fires;
	unsigned int migrations;
	unsigned int spurious;
	int migrate_ok;
	unsigned long fires;
	unsigned long expected;
	unsigned long received;
	unsigned long lost;
	unsigned long dup;
	int masked_pending_ok;	/* -1 not run */
	int fmask_ok;
	int msi_vectors;
	int msi_mask_ok;
	unsigned long dev_dropped;
	unsigned int dev_rejected;
	bool failed;
	char reason[160];
};

/* Event ring for diagnosing a miscount: fires, handler runs, affinity changes. */
#define TRACE_SLOTS	512
enum { EV_FIRE = 'F', EV_IRQ = 'I', EV_AFF = 'A', EV_SPURIOUS = 'S' };

struct irqt_event {
	u64 ns;
	const struct irqt_vec *v;
	u32 msg_data;		/* programmed message at the time (vector in bits 7:0) */
	u32 msg_addr;		/* destination APIC ID in bits 19:12 */
	u16 cpu;
	u8 type;
	u8 cfg_vector;		/* the x86 vector layer's current vector */
	u32 cfg_dest;
	u32 tbl_data;		/* F: the device's MSI-X table entry as read back */
	u32 tbl_addr;
	int count;
};

struct irqt_dev {
	struct pci_dev *pdev;
	void __iomem *regs;
	void __iomem *bar2;
	wait_queue_head_t wq;
	struct mutex lock;	/* reason, slots */
	spinlock_t sel_lock;	/* SELECT and the counter reads after it */
	struct irqt_vec vecs[MAX_SLOTS];
	unsigned int nslots;
	struct irqt_vec *stat[MAX_STATIC];
	unsigned int nstat;
	struct irqt_vec *msi[32];
	unsigned int nmsi;
	bool msix_on;
	bool msi_on;
	struct task_struct *hammer;
	struct irqt_vec *hammer_vec;
	const char *hammer_phase;
	unsigned int hammer_run;
	bool hammer_dead;
	struct irqt_result r;
	unsigned long dup_traced;
	bool trace_frozen;
	atomic_t trace_next;
	struct irqt_event trace[TRACE_SLOTS];
};

/* ------------------------------------------------------------------ helpers */

static __printf(2, 3) void irqt_fail(struct irqt_dev *d, const char *fmt, ...)
{
	char buf[160];
	va_list ap;
	char *p;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	pr_info("FAIL: %s\n", buf);
	mutex_lock(&d->lock);
	if (!d->r.failed) {
		d->r.failed = true;
		for (p = buf; *p; p++)
			if (*p == ' ' || *p == '=')
				*p = *p == ' ' ? '_' : ':';
		strscpy(d->r.reason, buf, sizeof(d->r.reason));
	}
	mutex_unlock(&d->lock);
}

static u32 reg_rd(struct irqt_dev *d, unsigned int off)
{
	return readl(d->regs + off);
}

static void reg_wr(struct irqt_dev *d, unsigned int off, u32 v)
{
	writel(v, d->regs + off);
}

struct dev_counters {
	u32 fires, delivered, pending, dropped;
};

/* Counters of one vector (SELECT is shared with the interrupt handler: sel_lock). */
static struct dev_counters dev_vec(struct irqt_dev *d, unsigned int index)
{
	struct dev_counters c;
	unsigned long flags;

	spin_lock_irqsave(&d->sel_lock, flags);
	reg_wr(d, REG_SELECT, index);
	c.fires = reg_rd(d, REG_FIRES);
	c.delivered = reg_rd(d, REG_DELIVERED);
	c.pending = reg_rd(d, REG_PENDING);
	c.dropped = reg_rd(d, REG_DROPPED);
	spin_unlock_irqrestore(&d->sel_lock, flags);
	return c;
}

/* The device's DELIVERED counter of one vector (any context). */
static u32 dev_delivered(struct irqt_dev *d, unsigned int index)
{
	unsigned long flags;
	u32 n;

	spin_lock_irqsave(&d->sel_lock, flags);
	reg_wr(d, REG_SELECT, index);
	n = reg_rd(d, REG_DELIVERED);
	spin_unlock_irqrestore(&d->sel_lock, flags);
	return n;
}

static void trace_dump(struct irqt_dev *d, const struct irqt_vec *v, unsigned int max);

static void dump_vec(struct irqt_dev *d, struct irqt_vec *v)
{
	struct dev_counters c = dev_vec(d, v->index);

	pr_info("  %s: index %u virq %d expected %u received %d fires %u | device mode %u fires %u delivered %u pending %u dropped %u rejected %u\n",
		v->name, v->index, v->virq, v->expected, atomic_read(&v->count), v->fires,
		reg_rd(d, REG_MODE), c.fires, c.delivered, c.pending, c.dropped,
		reg_rd(d, REG_REJECTED));
	trace_dump(d, v, 24);
}

static void trace_ev(struct irqt_dev *d, const struct irqt_vec *v, u8 type, int count)
{
	struct msi_msg msg = {};
	struct irqt_event *e;
	struct irq_data *irqd;
	struct irq_cfg *cfg;
	unsigned int i;

	if (READ_ONCE(d->trace_frozen))
		return;
	i = (unsigned int)atomic_inc_return(&d->trace_next) % TRACE_SLOTS;
	e = &d->trace[i];

	e->ns = ktime_get_ns();
	e->v = v;
	e->type = type;
	e->cpu = raw_smp_processor_id();
	e->count = count;
	e->cfg_vector = 0;
	e->cfg_dest = 0;
	if (v->virq > 0) {
		get_cached_msi_msg(v->virq, &msg);
		irqd = irq_get_irq_data(v->virq);
		cfg = irqd ? irqd_cfg(irqd) : NULL;
		if (cfg) {
			e->cfg_vector = cfg->vector;
			e->cfg_dest = cfg->dest_apicid;
		}
	}
	e->msg_data = msg.data;
	e->msg_addr = msg.address_lo;
	e->tbl_data = 0;
	e->tbl_addr = 0;
	if (type == EV_FIRE && !v->msi && d->bar2) {
		e->tbl_addr = readl(d->bar2 + v->index * MSIX_ENTRY_SIZE);
		e->tbl_data = readl(d->bar2 + v->index * MSIX_ENTRY_SIZE + 8);
	}
}

/* Prints the last `max` traced events of v (of every vector if v is NULL), oldest first. */
static void trace_dump(struct irqt_dev *d, const struct irqt_vec *v, unsigned int max)
{
	unsigned int last = (unsigned int)atomic_read(&d->trace_next);
	unsigned int i, n = 0, first;
	u64 t0 = 0;

	for (first = last; first > 0 && last - first < TRACE_SLOTS - 1; first--) {
		const struct irqt_event *e = &d->trace[first % TRACE_SLOTS];

		if (e->v && (!v || e->v == v) && ++n >= max)
			break;
	}
	pr_info("  trace of %s (event cpu +us name | msg vector/dest | x86 cfg vector/dest | table vector/dest | count):\n",
		v ? v->name : "all vectors");
	for (i = first; i != last + 1; i++) {
		const struct irqt_event *e = &d->trace[i % TRACE_SLOTS];

		if (!e->v || (v && e->v != v))
			continue;
		if (!t0)
			t0 = e->ns;
		pr_info("    %c cpu%u +%llu %s | msg %#x/%u | cfg %#x/%u | tbl %#x/%u | %d\n", e->type,
			e->cpu, (e->ns - t0) / 1000, e->v->name, e->msg_data & 0xff,
			(e->msg_addr >> 12) & 0xff, e->cfg_vector, e->cfg_dest, e->tbl_data & 0xff,
			(e->tbl_addr >> 12) & 0xff, e->count);
	}
}

static irqreturn_t irqt_handler(int irq, void *data)
{
	struct irqt_vec *v = data;
	int c;

	if (READ_ONCE(v->classify)) {
		/*
		 * Like a driver checking a status register: an invocation without a new
		 * message from the device (its DELIVERED counter did not move) is spurious.
		 */
		u32 n = dev_delivered(v->d, v->index);

		if (n == v->dev_seen) {
			atomic_inc(&v->spurious);
			trace_ev(v->d, v, EV_SPURIOUS, atomic_read(&v->count));
			return IRQ_HANDLED;
		}
		v->dev_seen = n;
	}
	c = atomic_inc_return(&v->count);
	trace_ev(v->d, v, EV_IRQ, c);
	wake_up(&v->d->wq);
	return IRQ_HANDLED;
}

/* Starts (or stops) telling spurious invocations of v apart by the device's counter. */
static void vec_classify(struct irqt_dev *d, struct irqt_vec *v, bool on)
{
	if (on)
		v->dev_seen = dev_delivered(d, v->index);
	WRITE_ONCE(v->classify, on);
}

static struct irqt_vec *new_slot(struct irqt_dev *d, const char *kind, unsigned int index)
{
	struct irqt_vec *v;

	mutex_lock(&d->lock);
	if (d->nslots >= MAX_SLOTS) {
		mutex_unlock(&d->lock);
		return NULL;
	}
	v = &d->vecs[d->nslots++];
	mutex_unlock(&d->lock);
	memset(v, 0, sizeof(*v));
	v->d = d;
	atomic_set(&v->count, 0);
	atomic_set(&v->spurious, 0);
	v->index = index;
	v->virq = -1;
	snprintf(v->name, sizeof(v->name), "irqtest-%s%u", kind, index);
	return v;
}

static int vec_request(struct irqt_dev *d, struct irqt_vec *v)
{
	int ret = request_irq(v->virq, irqt_handler, 0, v->name, v);

	if (ret) {
		irqt_fail(d, "request_irq %s virq %d: %d", v->name, v->virq, ret);
		return ret;
	}
	v->requested = true;
	return 0;
}

/*
 * One more interrupt is expected for v. The wait that follows is for a new interrupt (one
 * more than counted now) even if the count is already ahead because of a duplicate, so
 * that a vector is never fired again while its previous interrupt may still be pending in
 * the APIC (where two would merge into one).
 */
static void vec_expect(struct irqt_vec *v)
{
	int now = atomic_read(&v->count);

	WRITE_ONCE(v->expected, v->expected + 1);
	WRITE_ONCE(v->need, max(now + 1, (int)v->expected));
}

/* One FIRE command; the handler may run before writel returns. */
static void vec_fire(struct irqt_dev *d, struct irqt_vec *v)
{
	vec_expect(v);
	v->fires++;
	trace_ev(d, v, EV_FIRE, v->expected);
	reg_wr(d, REG_FIRE, v->index);
}

static bool vec_done(struct irqt_vec *v)
{
	return atomic_read(&v->count) >= READ_ONCE(v->need);
}

/* Every interrupt's x86 vector and target CPU (who else uses the vectors seen in a trace). */
static void dump_vectors(void)
{
	unsigned int irq;

	for (irq = 1; irq < nr_irqs; irq++) {
		struct irq_data *irqd = irq_get_irq_data(irq);
		struct irq_cfg *cfg;

		if (!irqd || !irqd->chip)
			continue;
		cfg = irqd_cfg(irqd);
		if (!cfg || !cfg->vector)
			continue;
		pr_info("  irq %u: vector %#x cpu %u chip %s\n", irq, cfg->vector, cfg->dest_apicid,
			irqd->chip->name ? irqd->chip->name : "?");
	}
}

/* Notes (once per device, with a trace) the first time v is seen above its expected count. */
static void vec_check_dup(struct irqt_dev *d, struct irqt_vec *v, const char *where)
{
	int extra = atomic_read(&v->count) - (int)READ_ONCE(v->expected);

	if (extra <= 0 || extra <= (int)v->dups_seen)
		return;
	v->dups_seen = extra;
	pr_info("%s: %s received %d interrupts more than fired (expected %u)\n", where, v->name,
		extra, v->expected);
	if (!test_and_set_bit(0, &d->dup_traced)) {
		WRITE_ONCE(d->trace_frozen, true);
		dump_vec(d, v);
		trace_dump(d, NULL, 48);
		dump_vectors();
		WRITE_ONCE(d->trace_frozen, false);
	}
}

static bool vec_wait(struct irqt_dev *d, struct irqt_vec *v)
{
	wait_event_timeout(d->wq, vec_done(v), msecs_to_jiffies(wait_ms));
	if (!vec_done(v))
		return false;
	vec_check_dup(d, v, "wait");
	return true;
}

/*
 * Fires vecs[i] want[i] times: in each round every vector that still needs fires is fired
 * once, then all of them are awaited. Stops at the first vector that does not arrive.
 */
static bool fire_rounds(struct irqt_dev *d, const char *phase, struct irqt_vec **vecs,
			const unsigned int *want, unsigned int n)
{
	unsigned int round, i, rounds = 0;

	for (i = 0; i < n; i++)
		rounds = max(rounds, want[i]);
	for (round = 0; round < rounds; round++) {
		for (i = 0; i < n; i++)
			if (want[i] > round)
				vec_fire(d, vecs[i]);
		for (i = 0; i < n; i++) {
			if (want[i] <= round || vec_wait(d, vecs[i]))
				continue;
			irqt_fail(d, "%s: %s lost: expected %u got %d after %u ms", phase,
				  vecs[i]->name, vecs[i]->expected, atomic_read(&vecs[i]->count),
				  wait_ms);
			dump_vec(d, vecs[i]);
			return false;
		}
	}
	return true;
}

/* After settle_ms, every vector must have exactly what was expected. */
static bool check_exact(struct irqt_dev *d, const char *phase, struct irqt_vec **vecs,
			unsigned int n)
{
	bool ok = true;
	unsigned int i;

	msleep(settle_ms);
	for (i = 0; i < n; i++) {
		int got = atomic_read(&vecs[i]->count);

		if (got == (int)vecs[i]->expected)
			continue;
		irqt_fail(d, "%s: %s expected %u got %d", phase, vecs[i]->name,
			  vecs[i]->expected, got);
		dump_vec(d, vecs[i]);
		ok = false;
	}
	return ok;
}

/* Final bookkeeping of a vector that is about to be freed (after a settle delay). */
static void account(struct irqt_dev *d, struct irqt_vec *v)
{
	int got = atomic_read(&v->count);
	struct dev_counters c;

	if (v->accounted)
		return;
	v->accounted = true;
	c = dev_vec(d, v->index);
	d->r.dev_dropped += c.dropped;
	d->r.fires += v->fires;
	d->r.expected += v->expected;
	d->r.received += got;
	if (got < (int)v->expected)
		d->r.lost += v->expected - got;
	/* a duplicate seen earlier counts even if a later loss hides it in the total */
	d->r.dup += max_t(int, got - (int)v->expected, v->dups_seen);
	if (got != (int)v->expected) {
		irqt_fail(d, "%s: final count expected %u got %d", v->name, v->expected, got);
		dump_vec(d, v);
	}
	if (c.dropped)
		irqt_fail(d, "%s: device dropped %u fires", v->name, c.dropped);
}

static void vec_free_irq(struct irqt_vec *v)
{
	if (v->requested) {
		free_irq(v->virq, v);
		v->requested = false;
	}
}

static void free_dyn(struct irqt_dev *d, struct irqt_vec *v)
{
	vec_free_irq(v);
	if (v->dyn_allocated) {
		pci_msix_free_irq(d->pdev, v->map);
		v->dyn_allocated = false;
		d->r.dyn_frees++;
	}
}

/* Accounts for and frees every MSI-X vector, then disables MSI-X. */
static void msix_teardown(struct irqt_dev *d)
{
	unsigned int i;

	if (!d->msix_on)
		return;
	msleep(settle_ms);
	for (i = 0; i < d->nslots; i++) {
		struct irqt_vec *v = &d->vecs[i];

		if (v->msi || (!v->requested && !v->dyn_allocated))
			continue;
		account(d, v);
		if (v->dynamic)
			free_dyn(d, v);
		else
			vec_free_irq(v);
	}
	pci_free_irq_vectors(d->pdev);
	d->msix_on = false;
}

static void msi_teardown(struct irqt_dev *d, bool do_account)
{
	unsigned int i;

	if (!d->msi_on)
		return;
	if (do_account)
		msleep(settle_ms);
	for (i = 0; i < d->nmsi; i++) {
		if (do_account)
			account(d, d->msi[i]);
		vec_free_irq(d->msi[i]);
	}
	d->nmsi = 0;
	pci_free_irq_vectors(d->pdev);
	d->msi_on = false;
}

/* ------------------------------------------------------------------ a. MSI-X */

static bool test_msix(struct irqt_dev *d)
{
	struct pci_dev *pdev = d->pdev;
	unsigned int want[MAX_STATIC];
	unsigned int i, n;
	int ret;
	u32 mode;

	/* leave at least half of the table for the dynamic allocations */
	n = min3(nvec, (unsigned int)MAX_STATIC, max(d->r.msix_table / 2, 1u));
	if (n == 0) {
		irqt_fail(d, "msix: no vectors to test");
		return false;
	}
	ret = pci_alloc_irq_vectors(pdev, n, n, PCI_IRQ_MSIX);
	if (ret < 0) {
		irqt_fail(d, "msix: pci_alloc_irq_vectors(%u, MSIX) failed: %d", n, ret);
		return false;
	}
	d->msix_on = true;
	d->r.msix_used = n;
	mode = reg_rd(d, REG_MODE);
	if (mode != MODE_MSIX)
		irqt_fail(d, "msix: device MODE is %u after enabling MSI-X", mode);

	for (i = 0; i < n; i++) {
		struct irqt_vec *v = new_slot(d, "x", i);

		if (!v)
			return false;
		v->virq = pci_irq_vector(pdev, i);
		if (v->virq < 0) {
			irqt_fail(d, "msix: pci_irq_vector(%u): %d", i, v->virq);
			return false;
		}
		d->stat[d->nstat++] = v;
		if (vec_request(d, v))
			return false;
		want[i] = i + 1;	/* distinct counts */
	}
	if (inject == 1)
		d->stat[0]->expected++;
	if (!fire_rounds(d, "msix", d->stat, want, n))
		return false;
	if (inject == 2)
		d->stat[0]->expected--;
	return check_exact(d, "msix", d->stat, n);
}

/* ------------------------------------------------------------------ b. dynamic MSI-X */

static int hammer_fn(void *arg)
{
	struct irqt_dev *d = arg;
	struct irqt_vec *v = d->hammer_vec;

	while (!kthread_should_stop()) {
		if (READ_ONCE(d->hammer_dead) || d->hammer_run >= hammer_max) {
			schedule_timeout_interruptible(HZ / 50);
			continue;
		}
		vec_fire(d, v);
		d->hammer_run++;
		if (!vec_wait(d, v)) {
			irqt_fail(d, "%s: background %s lost: expected %u got %d after %u ms",
				  d->hammer_phase, v->name, v->expected, atomic_read(&v->count),
				  wait_ms);
			WRITE_ONCE(d->hammer_dead, true);
			continue;
		}
		if (hammer_gap_us)
			usleep_range(hammer_gap_us, hammer_gap_us * 2);
		else
			cond_resched();
	}
	return 0;
}

/* Starts a kthread that fires v in ping-pong (fire, wait for it, fire again). */
static bool hammer_start(struct irqt_dev *d, struct irqt_vec *v, const char *phase)
{
	struct task_struct *t;

	d->hammer_vec = v;
	d->hammer_phase = phase;
	d->hammer_dead = false;
	d->hammer_run = 0;
	t = kthread_run(hammer_fn, d, "irqtest-hammer");
	if (IS_ERR(t)) {
		irqt_fail(d, "%s: kthread_run: %ld", phase, PTR_ERR(t));
		return false;
	}
	d->hammer = t;
	return true;
}

/* Stops the kthread; true if every background fire arrived exactly once. */
static bool hammer_stop(struct irqt_dev *d)
{
	struct irqt_vec *v = d->hammer_vec;
	bool ok = true;

	if (!d->hammer)
		return false;
	kthread_stop(d->hammer);
	d->hammer = NULL;
	d->r.hammer_fires += d->hammer_run;
	if (!READ_ONCE(d->hammer_dead) && !vec_wait(d, v)) {
		irqt_fail(d, "%s: background %s lost", d->hammer_phase, v->name);
		ok = false;
	}
	if (READ_ONCE(d->hammer_dead))
		ok = false;
	if (!check_exact(d, d->hammer_phase, &d->hammer_vec, 1))
		ok = false;
	return ok;
}

static struct irqt_vec *dyn_alloc(struct irqt_dev *d)
{
	struct irqt_vec *v;
	struct msi_map map;
	unsigned int i;

	map = pci_msix_alloc_irq_at(d->pdev, MSI_ANY_INDEX, NULL);
	if (map.index < 0) {
		irqt_fail(d, "dyn: pci_msix_alloc_irq_at failed: %d", map.index);
		return NULL;
	}
	d->r.dyn_allocs++;
	v = new_slot(d, "d", map.index);
	if (!v) {
		pci_msix_free_irq(d->pdev, map);
		d->r.dyn_frees++;
		irqt_fail(d, "dyn: out of slots");
		return NULL;
	}
	v->dynamic = true;
	v->dyn_allocated = true;
	v->map = map;
	v->virq = map.virq;
	/* the index must not be in use by another live vector */
	for (i = 0; i < d->nslots; i++) {
		struct irqt_vec *o = &d->vecs[i];

		if (o != v && !o->msi && o->index == v->index &&
		    (o->dyn_allocated || (!o->dynamic && o->requested))) {
			irqt_fail(d, "dyn: index %u handed out twice", v->index);
			free_dyn(d, v);
			return NULL;
		}
	}
	if (vec_request(d, v)) {
		free_dyn(d, v);
		return NULL;
	}
	return v;
}

static bool test_dyn(struct irqt_dev *d)
{
	struct irqt_vec *dv[MAX_DYN], *nv[MAX_DYN], *all[2 * MAX_DYN];
	unsigned int want[2 * MAX_DYN];
	unsigned int n, i, nn = 0, nall = 0;
	bool ok = true;

	if (!d->msix_on || !d->nstat) {
		irqt_fail(d, "dyn: MSI-X is not enabled");
		return false;
	}
	d->r.dyn_supported = pci_msix_can_alloc_dyn(d->pdev);
	if (!d->r.dyn_supported) {
		irqt_fail(d, "dyn: pci_msix_can_alloc_dyn() is false");
		return false;
	}
	n = min_t(unsigned int, ndyn, MAX_DYN);
	if (d->r.msix_table < d->r.msix_used + 1) {
		irqt_fail(d, "dyn: table of %u has no free entry", d->r.msix_table);
		return false;
	}
	n = min(n, d->r.msix_table - d->r.msix_used);
	if (n == 0)
		return true;

	if (!hammer_start(d, d->stat[0], "dyn-background"))
		ok = false;

	for (i = 0; i < n; i++) {
		dv[i] = dyn_alloc(d);
		if (!dv[i]) {
			n = i;
			ok = false;
			break;
		}
	}
	for (i = 0; i < n; i++)
		want[i] = i % 3 + 1;
	if (ok)
		ok = fire_rounds(d, "dyn", dv, want, n) && check_exact(d, "dyn", dv, n);

	/* free every other one, in the middle of the live set */
	if (ok) {
		for (i = 0; i < n; i += 2) {
			account(d, dv[i]);
			free_dyn(d, dv[i]);
		}
		for (i = 0; i < (n + 1) / 2; i++) {
			nv[i] = dyn_alloc(d);
			if (!nv[i]) {
				ok = false;
				break;
			}
			nn++;
		}
	}
	if (ok) {
		/* the new ones and the survivors, together */
		for (i = 0; i < nn; i++) {
			all[nall] = nv[i];
			want[nall++] = 2;
		}
		for (i = 1; i < n; i += 2) {
			all[nall] = dv[i];
			want[nall++] = 1;
		}
		ok = fire_rounds(d, "dyn-realloc", all, want, nall) &&
		     check_exact(d, "dyn-realloc", all, nall);
	}

	if (d->hammer) {
		if (!hammer_stop(d))
			ok = false;
		pr_info("dyn: background vector fired %u times during %u allocs and %u frees\n",
			d->hammer_run, d->r.dyn_allocs, d->r.dyn_frees);
	}

	/* free the remaining dynamic vectors */
	msleep(settle_ms);
	for (i = 0; i < d->nslots; i++) {
		struct irqt_vec *v = &d->vecs[i];

		if (v->dynamic && v->dyn_allocated) {
			account(d, v);
			free_dyn(d, v);
		}
	}
	return ok && !d->r.failed;
}

/* ------------------------------------------------------------------ e. affinity */

/*
 * Moves vectors between CPUs (the guest rewrites their messages) while one of them is
 * hammered from a kthread and another is fired in ping-pong after every move.
 */
static bool test_migrate(struct irqt_dev *d)
{
	unsigned int cpus[8], ncpu = 0, k, cpu;
	struct irqt_vec *hv, *pv;
	bool ok = true;
	int ret;

	if (!d->msix_on || !d->nstat) {
		irqt_fail(d, "migrate: MSI-X is not enabled");
		return false;
	}
	for_each_online_cpu(cpu) {
		if (ncpu < ARRAY_SIZE(cpus))
			cpus[ncpu++] = cpu;
	}
	if (ncpu < 2) {
		pr_info("migrate: skipped, only %u CPU online\n", ncpu);
		return true;
	}
	hv = d->stat[0];
	pv = d->nstat > 1 ? d->stat[1] : NULL;
	/*
	 * Without interrupt remapping, x86 Linux moves an MSI whose vector and CPU both change
	 * through an intermediate message (new vector, old CPU), and then retriggers the
	 * interrupt if that vector is pending in the old CPU's IRR - which it also is when
	 * another interrupt that owns the same vector number there is pending. Such
	 * invocations carry no new message from the device; they are counted as spurious.
	 */
	vec_classify(d, hv, true);
	if (pv)
		vec_classify(d, pv, true);
	if (!hammer_start(d, hv, "migrate-background")) {
		vec_classify(d, hv, false);
		if (pv)
			vec_classify(d, pv, false);
		return false;
	}
	for (k = 0; k < migrations && ok && !READ_ONCE(d->hammer_dead); k++) {
		ret = 0;
		if (migrate_flags & 1)
			ret = irq_set_affinity(hv->virq, cpumask_of(cpus[k % ncpu]));
		if (!ret && pv && (migrate_flags & 2)) {
			ret = irq_set_affinity(pv->virq, cpumask_of(cpus[(k + 1) % ncpu]));
			trace_ev(d, pv, EV_AFF, cpus[(k + 1) % ncpu]);
		}
		if (ret) {
			irqt_fail(d, "migrate: irq_set_affinity: %d", ret);
			ok = false;
			break;
		}
		d->r.migrations++;
		if (!pv) {
			usleep_range(200, 400);
			continue;
		}
		vec_fire(d, pv);
		if (!vec_wait(d, pv)) {
			irqt_fail(d, "migrate: %s lost after move %u to CPU %u: expected %u got %d",
				  pv->name, k, cpus[(k + 1) % ncpu], pv->expected,
				  atomic_read(&pv->count));
			dump_vec(d, pv);
			ok = false;
		}
		usleep_range(200, 400);
	}
	if (!hammer_stop(d))
		ok = false;
	pr_info("migrate: %u moves, background vector fired %u times\n", d->r.migrations,
		d->hammer_run);
	if (pv && !check_exact(d, "migrate", &pv, 1))
		ok = false;
	vec_classify(d, hv, false);
	d->r.spurious += atomic_read(&hv->spurious);
	if (pv) {
		vec_classify(d, pv, false);
		d->r.spurious += atomic_read(&pv->spurious);
	}
	pr_info("migrate: %u spurious invocations (no device message) during the moves\n",
		d->r.spurious);
	/* back to the default affinity */
	irq_set_affinity(hv->virq, cpu_online_mask);
	if (pv)
		irq_set_affinity(pv->virq, cpu_online_mask);
	return ok;
}

/* ------------------------------------------------------------------ c. masking */

static bool pba_bit(struct irqt_dev *d, unsigned int index)
{
	u32 w = readl(d->bar2 + MSIX_PBA_OFFSET + (index / 32) * 4);

	return w & BIT(index % 32);
}

static bool test_entry_mask(struct irqt_dev *d)
{
	struct irqt_vec *v;
	void __iomem *ctrl;
	u32 saved;
	int before;
	bool ok = true;
	struct dev_counters c;
	unsigned int k;

	if (!d->msix_on || !d->nstat) {
		irqt_fail(d, "mask: MSI-X is not enabled");
		return false;
	}
	v = d->stat[d->nstat > 1 ? 1 : 0];
	ctrl = d->bar2 + v->index * MSIX_ENTRY_SIZE + MSIX_ENTRY_CTRL;
	saved = readl(ctrl);
	if (saved & PCI_MSIX_ENTRY_CTRL_MASKBIT) {
		irqt_fail(d, "mask: %s is masked in the table while requested (ctrl %#x)",
			  v->name, saved);
		return false;
	}
	if (atomic_read(&v->count) != (int)v->expected || pba_bit(d, v->index)) {
		irqt_fail(d, "mask: %s not idle before the test (PBA %d)", v->name,
			  pba_bit(d, v->index));
		return false;
	}
	before = atomic_read(&v->count);
	writel(saved | PCI_MSIX_ENTRY_CTRL_MASKBIT, ctrl);
	readl(ctrl);
	for (k = 0; k < 3; k++) {
		v->fires++;
		reg_wr(d, REG_FIRE, v->index);
	}
	msleep(settle_ms);
	if (atomic_read(&v->count) != before) {
		irqt_fail(d, "mask: %s delivered %d while its entry was masked", v->name,
			  atomic_read(&v->count) - before);
		ok = false;
	}
	if (!pba_bit(d, v->index)) {
		irqt_fail(d, "mask: PBA bit of %s not set after 3 masked fires", v->name);
		ok = false;
	}
	c = dev_vec(d, v->index);
	if (c.pending != 1) {
		irqt_fail(d, "mask: device PENDING of %s is %u while masked", v->name, c.pending);
		ok = false;
	}
	if (!ok)
		dump_vec(d, v);
	/* unmask: the pending message goes out exactly once */
	vec_expect(v);
	writel(saved, ctrl);
	readl(ctrl);
	if (!vec_wait(d, v)) {
		irqt_fail(d, "mask: %s pending interrupt not delivered on unmask", v->name);
		ok = false;
	}
	msleep(settle_ms);
	if (atomic_read(&v->count) != before + 1) {
		irqt_fail(d, "mask: %s got %d interrupts for 3 masked fires, expected 1",
			  v->name, atomic_read(&v->count) - before);
		ok = false;
	}
	if (pba_bit(d, v->index)) {
		irqt_fail(d, "mask: PBA bit of %s still set after unmask", v->name);
		ok = false;
	}
	c = dev_vec(d, v->index);
	if (c.pending) {
		irqt_fail(d, "mask: device PENDING of %s still set after unmask", v->name);
		ok = false;
	}
	if (!ok)
		dump_vec(d, v);
	/* and it still works normally */
	vec_fire(d, v);
	if (!vec_wait(d, v)) {
		irqt_fail(d, "mask: %s lost after unmask", v->name);
		ok = false;
	}
	return ok;
}

static bool test_function_mask(struct irqt_dev *d)
{
	struct pci_dev *pdev = d->pdev;
	unsigned int n = min(d->nstat, 4u), i;
	int before[4];
	u16 flags;
	bool ok = true;

	if (!d->msix_on || !n || !pdev->msix_cap) {
		irqt_fail(d, "fmask: MSI-X is not enabled");
		return false;
	}
	pci_read_config_word(pdev, pdev->msix_cap + PCI_MSIX_FLAGS, &flags);
	pci_write_config_word(pdev, pdev->msix_cap + PCI_MSIX_FLAGS,
			      flags | PCI_MSIX_FLAGS_MASKALL);
	for (i = 0; i < n; i++) {
		before[i] = atomic_read(&d->stat[i]->count);
		d->stat[i]->fires++;
		reg_wr(d, REG_FIRE, d->stat[i]->index);
	}
	msleep(settle_ms);
	for (i = 0; i < n; i++) {
		struct irqt_vec *v = d->stat[i];

		if (atomic_read(&v->count) != before[i]) {
			irqt_fail(d, "fmask: %s delivered while the function was masked", v->name);
			ok = false;
		}
		if (!pba_bit(d, v->index)) {
			irqt_fail(d, "fmask: PBA bit of %s not set while the function was masked",
				  v->name);
			ok = false;
		}
	}
	for (i = 0; i < n; i++)
		vec_expect(d->stat[i]);
	pci_write_config_word(pdev, pdev->msix_cap + PCI_MSIX_FLAGS, flags);
	for (i = 0; i < n; i++) {
		if (!vec_wait(d, d->stat[i])) {
			irqt_fail(d, "fmask: %s not delivered after function unmask",
				  d->stat[i]->name);
			ok = false;
		}
	}
	msleep(settle_ms);
	for (i = 0; i < n; i++) {
		struct irqt_vec *v = d->stat[i];

		if (atomic_read(&v->count) != before[i] + 1) {
			irqt_fail(d, "fmask: %s got %d after function unmask, expected 1",
				  v->name, atomic_read(&v->count) - before[i]);
			ok = false;
		}
		if (pba_bit(d, v->index)) {
			irqt_fail(d, "fmask: PBA bit of %s still set after function unmask",
				  v->name);
			ok = false;
		}
		if (!ok)
			dump_vec(d, v);
	}
	return ok;
}

/* ------------------------------------------------------------------ d. MSI */

static bool test_msi_mask(struct irqt_dev *d)
{
	struct pci_dev *pdev = d->pdev;
	struct irqt_vec *v = d->msi[0];
	int mask_off, pend_off, before;
	u32 mask, pend;
	u16 flags;
	bool ok = true;

	pci_read_config_word(pdev, pdev->msi_cap + PCI_MSI_FLAGS, &flags);
	if (!(flags & PCI_MSI_FLAGS_MASKBIT)) {
		irqt_fail(d, "msi-mask: capability has no per-vector masking (flags %#x)", flags);
		return false;
	}
	mask_off = pdev->msi_cap + ((flags & PCI_MSI_FLAGS_64BIT) ? PCI_MSI_MASK_64 : PCI_MSI_MASK_32);
	pend_off = mask_off + 4;
	pci_read_config_dword(pdev, mask_off, &mask);
	if (mask & 1) {
		irqt_fail(d, "msi-mask: vector 0 masked while requested (mask %#x)", mask);
		return false;
	}
	before = atomic_read(&v->count);
	pci_write_config_dword(pdev, mask_off, mask | 1);
	v->fires += 2;
	reg_wr(d, REG_FIRE, v->index);
	reg_wr(d, REG_FIRE, v->index);
	msleep(settle_ms);
	pci_read_config_dword(pdev, pend_off, &pend);
	if (atomic_read(&v->count) != before) {
		irqt_fail(d, "msi-mask: %s delivered while masked", v->name);
		ok = false;
	}
	if (!(pend & 1)) {
		irqt_fail(d, "msi-mask: pending bit not set while masked (pending %#x)", pend);
		ok = false;
	}
	vec_expect(v);
	pci_write_config_dword(pdev, mask_off, mask);
	if (!vec_wait(d, v)) {
		irqt_fail(d, "msi-mask: %s not delivered on unmask", v->name);
		ok = false;
	}
	msleep(settle_ms);
	pci_read_config_dword(pdev, pend_off, &pend);
	if (atomic_read(&v->count) != before + 1) {
		irqt_fail(d, "msi-mask: %s got %d for 2 masked fires, expected 1", v->name,
			  atomic_read(&v->count) - before);
		ok = false;
	}
	if (pend & 1) {
		irqt_fail(d, "msi-mask: pending bit still set after unmask (pending %#x)", pend);
		ok = false;
	}
	if (!ok)
		dump_vec(d, v);
	return ok;
}

static bool test_msi(struct irqt_dev *d)
{
	struct pci_dev *pdev = d->pdev;
	unsigned int want[32];
	int n, i;
	u32 mode;

	msix_teardown(d);
	mode = reg_rd(d, REG_MODE);
	if (mode != MODE_NONE)
		irqt_fail(d, "msi: device MODE is %u after disabling MSI-X", mode);

	n = pci_alloc_irq_vectors(pdev, 1, 4, PCI_IRQ_MSI);
	if (n < 0) {
		irqt_fail(d, "msi: pci_alloc_irq_vectors(1..4, MSI) failed: %d", n);
		return false;
	}
	d->msi_on = true;
	d->r.msi_vectors = n;
	mode = reg_rd(d, REG_MODE);
	if (mode != MODE_MSI)
		irqt_fail(d, "msi: device MODE is %u after enabling MSI", mode);
	for (i = 0; i < n; i++) {
		struct irqt_vec *v = new_slot(d, "msi", i);

		if (!v)
			return false;
		v->msi = true;
		v->virq = pci_irq_vector(pdev, i);
		if (v->virq < 0) {
			irqt_fail(d, "msi: pci_irq_vector(%d): %d", i, v->virq);
			return false;
		}
		d->msi[d->nmsi++] = v;
		if (vec_request(d, v))
			return false;
		want[i] = i + 2;
	}
	if (!fire_rounds(d, "msi", d->msi, want, n) || !check_exact(d, "msi", d->msi, n))
		return false;
	d->r.msi_mask_ok = test_msi_mask(d);
	return d->r.msi_mask_ok && check_exact(d, "msi-after-mask", d->msi, n);
}

/* ------------------------------------------------------------------ driver */

static void print_result(struct irqt_dev *d)
{
	struct irqt_result *r = &d->r;

	pr_info("IRQTEST-RESULT status=%s msix_vectors=%u msix_used=%u dyn_supported=%d dyn_allocs=%u dyn_frees=%u hammer_fires=%u migrations=%u migrate_ok=%d spurious=%u fires=%lu expected=%lu received=%lu lost=%lu dup=%lu masked_pending_ok=%d fmask_ok=%d msi_vectors=%d msi_mask_ok=%d dev_dropped=%lu dev_rejected=%u reason=%s\n",
		r->failed ? "fail" : "pass", r->msix_table, r->msix_used, r->dyn_supported,
		r->dyn_allocs, r->dyn_frees, r->hammer_fires, r->migrations, r->migrate_ok, r->spurious, r->fires, r->expected, r->received,
		r->lost, r->dup, r->masked_pending_ok, r->fmask_ok, r->msi_vectors,
		r->msi_mask_ok, r->dev_dropped, r->dev_rejected,
		r->failed ? r->reason : "none");
}

static void run_tests(struct irqt_dev *d)
{
	unsigned long t0 = jiffies;
	u32 magic, rej0;

	magic = reg_rd(d, REG_MAGIC);
	if (magic != IRQT_MAGIC) {
		irqt_fail(d, "bad MAGIC %#x", magic);
		return;
	}
	d->r.msix_table = reg_rd(d, REG_MSIX_VECS);
	if (pci_msix_vec_count(d->pdev) != (int)d->r.msix_table)
		irqt_fail(d, "MSIX_VECTORS register %u but capability table size %d",
			  d->r.msix_table, pci_msix_vec_count(d->pdev));
	if (d->r.msix_table > BAR2_MIN_SIZE / 2 / MSIX_ENTRY_SIZE)
		d->r.msix_table = BAR2_MIN_SIZE / 2 / MSIX_ENTRY_SIZE;
	pr_info("device: MSI-X table %u, MSI %u messages, mode %u\n", d->r.msix_table,
		reg_rd(d, REG_MSI_VECS), reg_rd(d, REG_MODE));
	rej0 = reg_rd(d, REG_REJECTED);

	pr_info("a. MSI-X: %s\n", test_msix(d) ? "ok" : "FAILED");
	if (d->msix_on) {
		pr_info("b. dynamic MSI-X: %s\n", test_dyn(d) ? "ok" : "FAILED");
		d->r.migrate_ok = test_migrate(d);
		pr_info("e. affinity changes under load: %s\n", d->r.migrate_ok ? "ok" : "FAILED");
		d->r.masked_pending_ok = test_entry_mask(d);
		pr_info("c. entry mask: %s\n", d->r.masked_pending_ok ? "ok" : "FAILED");
		d->r.fmask_ok = test_function_mask(d);
		pr_info("c. function mask: %s\n", d->r.fmask_ok ? "ok" : "FAILED");
	}
	d->r.dev_rejected = reg_rd(d, REG_REJECTED) - rej0;
	pr_info("d. MSI: %s\n", test_msi(d) ? "ok" : "FAILED");
	d->r.dev_rejected = reg_rd(d, REG_REJECTED) - rej0;
	if (d->r.dev_rejected)
		irqt_fail(d, "device rejected %u fire commands", d->r.dev_rejected);
	pr_info("self-test took %u ms\n", jiffies_to_msecs(jiffies - t0));
}

static int irqt_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct irqt_dev *d;
	int ret;

	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		return -ENOMEM;
	d->pdev = pdev;
	init_waitqueue_head(&d->wq);
	mutex_init(&d->lock);
	spin_lock_init(&d->sel_lock);
	d->r.masked_pending_ok = -1;
	d->r.fmask_ok = -1;
	d->r.msi_mask_ok = -1;
	d->r.migrate_ok = -1;
	pci_set_drvdata(pdev, d);

	ret = pci_enable_device(pdev);
	if (ret) {
		irqt_fail(d, "pci_enable_device: %d", ret);
		goto out_print;
	}
	ret = pci_request_regions(pdev, KBUILD_MODNAME);
	if (ret) {
		irqt_fail(d, "pci_request_regions: %d", ret);
		goto out_disable;
	}
	if (pci_resource_len(pdev, 0) < 0x1000 || pci_resource_len(pdev, 2) < BAR2_MIN_SIZE) {
		irqt_fail(d, "BARs too small: BAR0 %llu BAR2 %llu",
			  (unsigned long long)pci_resource_len(pdev, 0),
			  (unsigned long long)pci_resource_len(pdev, 2));
		ret = -ENODEV;
		goto out_release;
	}
	d->regs = pci_iomap(pdev, 0, 0x1000);
	d->bar2 = pci_iomap(pdev, 2, BAR2_MIN_SIZE);
	if (!d->regs || !d->bar2) {
		irqt_fail(d, "pci_iomap failed");
		ret = -ENOMEM;
		goto out_unmap;
	}
	pci_set_master(pdev);

	run_tests(d);
	if (keep && !d->r.failed && d->msi_on) {
		unsigned int i;

		/* final counts now; the vectors stay requested until remove */
		msleep(settle_ms);
		for (i = 0; i < d->nmsi; i++)
			account(d, d->msi[i]);
	} else {
		msix_teardown(d);
		msi_teardown(d, true);
	}
	print_result(d);
	return 0;

out_unmap:
	if (d->bar2)
		pci_iounmap(pdev, d->bar2);
	if (d->regs)
		pci_iounmap(pdev, d->regs);
out_release:
	pci_release_regions(pdev);
out_disable:
	pci_disable_device(pdev);
out_print:
	print_result(d);
	pci_set_drvdata(pdev, NULL);
	kfree(d);
	return ret;
}

static void irqt_remove(struct pci_dev *pdev)
{
	struct irqt_dev *d = pci_get_drvdata(pdev);

	if (!d)
		return;
	if (d->hammer)
		kthread_stop(d->hammer);
	msix_teardown(d);
	msi_teardown(d, false);
	pci_clear_master(pdev);
	pci_iounmap(pdev, d->bar2);
	pci_iounmap(pdev, d->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	kfree(d);
}

static const struct pci_device_id irqt_ids[] = {
	{ PCI_DEVICE(IRQT_VENDOR, IRQT_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, irqt_ids);

static struct pci_driver irqt_driver = {
	.name = KBUILD_MODNAME,
	.id_table = irqt_ids,
	.probe = irqt_probe,
	.remove = irqt_remove,
};
module_pci_driver(irqt_driver);

MODULE_DESCRIPTION("Self-test for the VMM irqtest PCI device (MSI, MSI-X, dynamic MSI-X, masking)");
MODULE_LICENSE("GPL");
