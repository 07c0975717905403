// SPDX-License-Identifier: GPL-2.0
/*
 * dsa_guest: in-guest self-test for the VMM's emulated Intel DSA (PCI 8086:0b25), without
 * the idxd driver. It binds its own pci_driver to the device and, inside probe:
 *
 *   - enables the function, bus mastering, maps BAR0 (registers) and BAR2 (portals);
 *   - allocates MSI-X vectors 0 (device events) and 1 (WQ 0 completions) with
 *     pci_alloc_irq_vectors(), and every other free table entry with pci_msix_alloc_irq_at()
 *     as "donor" vectors: their messages (get_cached_msi_msg(); remappable-format under
 *     interrupt remapping) are written into IMS entries 0..n-1, and their own MSI-X table
 *     entries are masked in the device, so only the IMS path can raise them;
 *   - resets the device, configures group 0 = WQ 0 + engine 0 and WQ 0 (dedicated, size 16,
 *     priority 1, max_xfer_shift/max_batch_shift from the module parameters) through GRPCFG
 *     and WQCFG, enables the device and the WQ (polling CMDSTS), and — when CMDCAP
 *     advertises command 13 — requests an interrupt handle for MSI-X vector 1 (the device
 *     then names MSI-X completions by handle on its MSI-X portals);
 *   - submits descriptors as eight 8-byte MMIO stores into 64-byte slots of the MSI-X and
 *     IMS portals of WQ 0 (limited and unlimited): MEMMOVE, MEMFILL, COMPARE (equal,
 *     different, check-result), CRC generation, copy with CRC, NOOP and BATCH, each with a
 *     completion record (CRAV|RCR, dma_alloc_coherent) and, for most, a completion
 *     interrupt; it checks the moved data, the records and exact per-vector interrupt counts
 *     (one interrupt in flight per vector at a time, since a second edge on a vector still
 *     pending in the local APIC merges with the first);
 *   - masks an IMS entry, completes a NOOP through it (no interrupt, pending bit set),
 *     unmasks it (exactly one interrupt);
 *   - submits hostile descriptors (addresses outside RAM, in MMIO, wrapping; transfer sizes
 *     0 and too large; bad batch counts and lists; unknown opcodes; invalid flags; non-zero
 *     reserved fields; invalid interrupt handles; misaligned and unwritable completion
 *     records) and checks the status codes, SWERR and that no stray interrupt arrives;
 *
 * and prints one machine-readable line:
 *
 *   DSA-RESULT status=pass|fail msix_irqs=.. misc_irqs=.. ims_irqs=.. descriptors=..
 *     data_ok=0|1 ims_mask_ok=0|1 hostile_ok=0|1 counts_ok=0|1 handles=0|1 donors=..
 *     remappable=0|1 reason=<first failure|none>
 *
 * inject=1|2 makes a check fail on purpose, to check the checker.
 *
 * With keep=1 (default) everything stays set up until the module is removed, so
 * /proc/interrupts shows the vectors.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/msi.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/unaligned.h>
#include <linux/wait.h>

#define DSA_VENDOR	0x8086
#define DSA_DEVICE	0x0b25

/* BAR0 registers */
#define R_VERSION	0x00
#define R_GENCAP	0x10
#define R_WQCAP		0x20
#define R_GRPCAP	0x30
#define R_ENGCAP	0x38
#define R_OPCAP		0x40
#define R_TABLE_OFF	0x60
#define R_GENCFG	0x80
#define R_GENCTRL	0x88
#define R_GENSTS	0x90
#define R_INTCAUSE	0x98
#define R_CMD		0xa0
#define R_CMDSTS	0xa8
#define R_CMDCAP	0xb0
#define R_SWERR		0xc0

#define TABLE_MULT	0x100
#define GRPCFG_SIZE	64
#define WQCFG_SIZE	32	/* WQCAP.wqcfg_size 0 */
#define IMS_ENTRY_SIZE	16
#define IMS_CTRL_MASK	BIT(0)
#define IMS_CTRL_PENDING BIT(1)

#define GENCTRL_SOFTERR	BIT(0)
#define INTCAUSE_ERR	BIT(0)

#define CMD_ENABLE_DEV		1
#define CMD_DISABLE_DEV		2
#define CMD_RESET_DEV		5
#define CMD_ENABLE_WQ		6
#define CMD_DISABLE_WQ		7
#define CMD_REQ_INT_HANDLE	13
#define CMD_REL_INT_HANDLE	14
#define CMDSTS_ACTIVE		BIT(31)

#define WQCFG_MODE_DEDICATED	BIT(0)
#define WQCFG_PRIV		BIT(29)

/* BAR2: WQ n at n * 0x4000 */
#define PORTAL_MSIX_U	0	/* unlimited, MSI-X */
#define PORTAL_MSIX_L	1	/* limited, MSI-X */
#define PORTAL_IMS_U	2	/* unlimited, IMS */
#define PORTAL_IMS_L	3	/* limited, IMS */
#define PORTAL_PAGE	0x1000
#define SLOTS		(PORTAL_PAGE / 64)

/* opcodes */
#define OP_NOOP		0x00
#define OP_BATCH	0x01
#define OP_MEMMOVE	0x03
#define OP_MEMFILL	0x04
#define OP_COMPARE	0x05
#define OP_TRANSL_FETCH	0x0a
#define OP_CRCGEN	0x10
#define OP_COPY_CRC	0x11

/* descriptor flags */
#define F_FENCE		BIT(0)
#define F_CRAV		BIT(2)
#define F_RCR		BIT(3)
#define F_RCI		BIT(4)
#define F_UNDEFINED	BIT(6)
#define F_CHECK_RESULT	BIT(7)
#define F_REC		(F_CRAV | F_RCR)

/* completion status */
#define ST_SUCCESS		0x01
#define ST_SUCCESS_PRED		0x02
#define ST_PAGE_FAULT		0x03
#define ST_BATCH_FAIL		0x05
#define ST_BAD_OPCODE		0x10
#define ST_INVALID_FLAGS	0x11
#define ST_NONZERO_RESERVED	0x12
#define ST_XFER_ERANGE		0x13
#define ST_DESC_CNT_ERANGE	0x14
#define ST_DESCLIST_ALIGN	0x18
#define ST_INT_HANDLE_INVAL	0x19
#define ST_CRA_XLAT		0x1a
#define ST_CRA_ALIGN		0x1b
#define ST_WRITE_FAULT		0x80

/* DMA buffer layout (one coherent allocation) */
#define BUF_SIZE	0x10000
#define OFF_RECS	0x0000	/* 128 completion records */
#define NREC		128
#define OFF_LIST	0x1000	/* batch descriptor lists */
#define OFF_SRC		0x2000
#define OFF_DST		0x4000
#define OFF_DST2	0x6000
#define OFF_MISC	0x8000
#define DATA_MAX	0x2000

#define MAX_DONORS	16
#define HOSTILE_ADDR	(1ULL << 45)

static unsigned int wait_ms = 5000;
module_param(wait_ms, uint, 0444);
MODULE_PARM_DESC(wait_ms, "how long to wait for a completion record, a command or an interrupt (ms)");

static unsigned int settle_ms = 300;
module_param(settle_ms, uint, 0444);
MODULE_PARM_DESC(settle_ms, "delay before checking that no (further) interrupt arrived (ms)");

static unsigned int xfer_shift = 16;
module_param(xfer_shift, uint, 0444);
MODULE_PARM_DESC(xfer_shift, "WQ 0 max_xfer_shift (default 16: 64 KiB per descriptor)");

static unsigned int batch_shift = 3;
module_param(batch_shift, uint, 0444);
MODULE_PARM_DESC(batch_shift, "WQ 0 max_batch_shift (default 3: 8 descriptors per batch)");

static unsigned int inject;
module_param(inject, uint, 0444);
MODULE_PARM_DESC(inject, "checks the checker: 1 leaves the IMS entry unmasked in the mask check (must report ims_mask_ok=0), 2 expects one interrupt too many on vector 1 (must report counts_ok=0)");

static bool keep = true;
module_param(keep, bool, 0444);
MODULE_PARM_DESC(keep, "keep the device enabled and the vectors requested until the module is removed");

struct dsa_desc {
	u32 pasid;
	u32 flags_op;
	u64 compl;
	u64 src;
	u64 dst;
	u32 size;
	u16 int_handle;
	u16 rsvd;
	u8 op[24];
} __packed;

struct dsa_rec {
	u8 status;
	u8 result;
	u8 fault_info;
	u8 rsvd;
	u32 completed;
	u64 fault_addr;
	u32 op32;
	u32 pad[3];
} __packed;

static_assert(sizeof(struct dsa_desc) == 64);
static_assert(sizeof(struct dsa_rec) == 32);

struct dsa_t;

struct dvec {
	struct dsa_t *d;
	atomic_t count;
	unsigned int expected;
	unsigned int msix_index;
	int ims_index;		/* IMS entry carrying this vector's message, or -1 */
	int virq;
	bool requested;
	bool dynamic;
	struct msi_map map;
	struct msi_msg msg;
	u32 intcause;		/* vector 0: INTCAUSE bits seen */
	char name[32];
};

enum fail_cat { CAT_SETUP, CAT_DATA, CAT_MASK, CAT_HOSTILE, CAT_COUNTS, CAT_N };

struct dsa_t {
	struct pci_dev *pdev;
	void __iomem *regs;
	void __iomem *bar2;
	wait_queue_head_t wq;

	u64 gencap, wqcap, grpcap, engcap, opcap0;
	u32 cmdcap, version;
	unsigned int grpcfg_off, wqcfg_off, msix_perm_off, ims_off;
	unsigned int ims_n, msix_n, wqs;
	void __iomem *msix_table;

	struct dvec misc, wqv;
	struct dvec donors[MAX_DONORS];
	unsigned int ndonors;
	bool vectors_allocated;

	bool handles;
	u16 wq_handle;		/* int_handle of vector 1 on the MSI-X portals */
	bool handle_held;
	bool dev_enabled;
	bool regions;
	bool remappable;

	void *buf;
	dma_addr_t buf_dma;
	unsigned int next_rec;
	unsigned int slot[4];
	unsigned int ndesc;

	unsigned int fails[CAT_N];
	char reason[200];
};

static struct dsa_t *the_dev;

/* ------------------------------------------------------------------ helpers */

static __printf(3, 4) void dsa_fail(struct dsa_t *d, enum fail_cat cat, const char *fmt, ...)
{
	char buf[200];
	va_list ap;
	char *p;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	pr_info("FAIL: %s\n", buf);
	d->fails[cat]++;
	if (!d->reason[0]) {
		for (p = buf; *p; p++)
			if (*p == ' ' || *p == '=')
				*p = *p == ' ' ? '_' : ':';
		strscpy(d->reason, buf, sizeof(d->reason));
	}
}

#define CHECK(d, cat, cond, fmt, ...) ({					\
	bool __ok = !!(cond);							\
	if (!__ok)								\
		dsa_fail(d, cat, "%s:%d " fmt, __func__, __LINE__, ##__VA_ARGS__); \
	__ok;									\
})

static void *bufp(struct dsa_t *d, unsigned int off)
{
	return (u8 *)d->buf + off;
}

static u64 bufa(struct dsa_t *d, unsigned int off)
{
	return (u64)d->buf_dma + off;
}

static void dump_state(struct dsa_t *d, const char *why)
{
	pr_info("  state (%s): GENSTS %#x CMDSTS %#x INTCAUSE %#x SWERR %#llx %#llx %#llx %#llx WQCFG0.dw6 %#x\n",
		why, readl(d->regs + R_GENSTS), readl(d->regs + R_CMDSTS),
		readl(d->regs + R_INTCAUSE), readq(d->regs + R_SWERR),
		readq(d->regs + R_SWERR + 8), readq(d->regs + R_SWERR + 16),
		readq(d->regs + R_SWERR + 24), readl(d->regs + d->wqcfg_off + 6 * 4));
}

/* Runs a command (no completion interrupt) and returns CMDSTS once it is not active. */
static u32 dsa_cmd(struct dsa_t *d, u32 code, u32 operand)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(wait_ms);
	u32 sts;

	writel((code << 20) | operand, d->regs + R_CMD);
	while ((sts = readl(d->regs + R_CMDSTS)) & CMDSTS_ACTIVE) {
		if (time_after(jiffies, deadline))
			break;
		usleep_range(10, 50);
	}
	return sts;
}

static irqreturn_t dsa_irq(int irq, void *data)
{
	struct dvec *v = data;

	if (v->msix_index == 0) {
		u32 cause = readl(v->d->regs + R_INTCAUSE);

		writel(cause, v->d->regs + R_INTCAUSE);
		v->intcause |= cause;
	}
	atomic_inc(&v->count);
	wake_up(&v->d->wq);
	return IRQ_HANDLED;
}

static int vec_request(struct dsa_t *d, struct dvec *v, const char *kind, unsigned int n)
{
	int ret;

	v->d = d;
	atomic_set(&v->count, 0);
	v->ims_index = -1;
	snprintf(v->name, sizeof(v->name), "dsa_guest-%s%u", kind, n);
	ret = request_irq(v->virq, dsa_irq, 0, v->name, v);
	if (ret)
		return ret;
	v->requested = true;
	get_cached_msi_msg(v->virq, &v->msg);
	return 0;
}

static void rec_init(struct dsa_t *d, struct dsa_rec **rec, u64 *dma)
{
	unsigned int i = d->next_rec++ % NREC;

	*rec = (struct dsa_rec *)bufp(d, OFF_RECS + i * sizeof(struct dsa_rec));
	memset(*rec, 0, sizeof(**rec));
	*dma = bufa(d, OFF_RECS + i * sizeof(struct dsa_rec));
}

static void desc_init(struct dsa_desc *x, u8 op, u32 flags)
{
	memset(x, 0, sizeof(*x));
	x->flags_op = flags | ((u32)op << 24);
}

/* Eight 8-byte stores into the next 64-byte slot of WQ 0's portal `portal`. */
static void submit(struct dsa_t *d, unsigned int portal, const struct dsa_desc *x)
{
	void __iomem *p = d->bar2 + portal * PORTAL_PAGE + d->slot[portal] * 64;
	const u64 *q = (const u64 *)x;
	int i;

	d->slot[portal] = (d->slot[portal] + 1) % SLOTS;
	wmb();	/* buffers, records and batch lists before the submission */
	for (i = 0; i < 8; i++)
		writeq(q[i], p + i * 8);
	d->ndesc++;
}

static bool wait_rec(struct dsa_t *d, struct dsa_rec *r)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(wait_ms);

	while (!READ_ONCE(r->status)) {
		if (time_after(jiffies, deadline))
			return false;
		usleep_range(20, 100);
	}
	dma_rmb();
	return true;
}

static bool wait_irq(struct dsa_t *d, struct dvec *v)
{
	return wait_event_timeout(d->wq, atomic_read(&v->count) >= v->expected,
				  msecs_to_jiffies(wait_ms)) > 0;
}

static struct dvec *all_vecs(struct dsa_t *d, unsigned int i)
{
	if (i == 0)
		return &d->misc;
	if (i == 1)
		return &d->wqv;
	if (i - 2 < d->ndonors)
		return &d->donors[i - 2];
	return NULL;
}

/* Checks that every vector got exactly what it was expected to get. */
static bool counts_exact(struct dsa_t *d, enum fail_cat cat, const char *when)
{
	struct dvec *v;
	bool ok = true;
	unsigned int i;

	for (i = 0; (v = all_vecs(d, i)); i++) {
		int c = atomic_read(&v->count);

		if (c != v->expected) {
			dsa_fail(d, cat, "%s: %s expected %u interrupts, got %d", when, v->name,
				 v->expected, c);
			ok = false;
		}
	}
	return ok;
}

/*
 * Submits `x` through `portal` with a fresh completion record (unless `own_compl`: the
 * caller set x->compl), waits for the record and, if `iv`, for one more interrupt on it.
 * Returns the record, or NULL (failure recorded under `cat`).
 */
static struct dsa_rec *exec(struct dsa_t *d, enum fail_cat cat, const char *what,
			    unsigned int portal, struct dsa_desc *x, struct dvec *iv)
{
	struct dsa_rec *r;
	u64 dma;

	rec_init(d, &r, &dma);
	x->compl = dma;
	if (iv)
		iv->expected++;
	submit(d, portal, x);
	if (!wait_rec(d, r)) {
		dsa_fail(d, cat, "%s: no completion record within %u ms", what, wait_ms);
		dump_state(d, what);
		return NULL;
	}
	if (iv && !wait_irq(d, iv)) {
		dsa_fail(d, cat, "%s: completion interrupt on %s missing (expected %u, got %d)",
			 what, iv->name, iv->expected, atomic_read(&iv->count));
		dump_state(d, what);
	}
	return r;
}

static bool st_is(struct dsa_t *d, enum fail_cat cat, const char *what, struct dsa_rec *r, u8 want)
{
	if (!r)
		return false;
	return CHECK(d, cat, r->status == want,
		     "%s: status %#x (expected %#x) result %u completed %u fault_addr %#llx op %#x",
		     what, r->status, want, r->result, r->completed, r->fault_addr, r->op32);
}

static u32 crc32c_sw(u32 seed, const u8 *p, size_t n)
{
	u32 c = ~seed;
	int k;

	while (n--) {
		c ^= *p++;
		for (k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82f63b78 & -(c & 1));
	}
	return ~c;
}

static void fill_pattern(u8 *p, size_t n, u32 seed)
{
	size_t i;
	u32 x = seed | 1;

	for (i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = x;
	}
}

static struct dvec *donor(struct dsa_t *d, unsigned int i)
{
	return &d->donors[i % d->ndonors];
}

static u16 ims_handle(struct dsa_t *d, unsigned int i)
{
	return donor(d, i)->ims_index;
}

/* ------------------------------------------------------------------ setup */

static int setup_vectors(struct dsa_t *d)
{
	struct pci_dev *pdev = d->pdev;
	unsigned int i;
	u32 tbl;
	int ret;

	d->msix_n = pci_msix_vec_count(pdev);
	if (!CHECK(d, CAT_SETUP, (int)d->msix_n >= 2, "MSI-X table size %d", (int)d->msix_n))
		return -ENODEV;
	ret = pci_alloc_irq_vectors(pdev, 2, 2, PCI_IRQ_MSIX);
	if (!CHECK(d, CAT_SETUP, ret == 2, "pci_alloc_irq_vectors(2, MSI-X) = %d", ret))
		return ret < 0 ? ret : -ENOSPC;
	d->vectors_allocated = true;
	d->misc.msix_index = 0;
	d->misc.virq = pci_irq_vector(pdev, 0);
	ret = vec_request(d, &d->misc, "msix", 0);
	if (!CHECK(d, CAT_SETUP, !ret, "request_irq(vector 0) = %d", ret))
		return ret;
	d->wqv.msix_index = 1;
	d->wqv.virq = pci_irq_vector(pdev, 1);
	ret = vec_request(d, &d->wqv, "msix", 1);
	if (!CHECK(d, CAT_SETUP, !ret, "request_irq(vector 1) = %d", ret))
		return ret;

	if (!CHECK(d, CAT_SETUP, pci_msix_can_alloc_dyn(pdev),
		   "MSI-X domain cannot allocate vectors after enable"))
		return -EOPNOTSUPP;
	pci_read_config_dword(pdev, pdev->msix_cap + PCI_MSIX_TABLE, &tbl);
	if (!CHECK(d, CAT_SETUP, (tbl & PCI_MSIX_TABLE_BIR) == 0, "MSI-X table in BAR %u",
		   tbl & PCI_MSIX_TABLE_BIR))
		return -ENODEV;
	d->msix_table = d->regs + (tbl & PCI_MSIX_TABLE_OFFSET);

	for (i = 0; i < MAX_DONORS && i + 2 < d->msix_n; i++) {
		struct dvec *v = &d->donors[i];

		v->map = pci_msix_alloc_irq_at(pdev, MSI_ANY_INDEX, NULL);
		if (v->map.index < 0) {
			dsa_fail(d, CAT_SETUP, "pci_msix_alloc_irq_at #%u = %d", i, v->map.index);
			return v->map.index;
		}
		v->dynamic = true;
		v->msix_index = v->map.index;
		v->virq = v->map.virq;
		d->ndonors++;
		ret = vec_request(d, v, "ims", i);
		if (!CHECK(d, CAT_SETUP, !ret, "request_irq(donor %u) = %d", i, ret))
			return ret;
	}
	if (!CHECK(d, CAT_SETUP, d->ndonors >= 3, "only %u donor vectors (need 3)", d->ndonors))
		return -ENOSPC;
	d->remappable = d->wqv.msg.address_lo & BIT(4);
	for (i = 0; i < 2 + d->ndonors; i++) {
		struct dvec *v = all_vecs(d, i);

		pr_info("vector %s: msix index %u virq %d msg addr %#x:%08x data %#x\n", v->name,
			v->msix_index, v->virq, v->msg.address_hi, v->msg.address_lo, v->msg.data);
	}
	return 0;
}

/* Writes the donors' messages into IMS entries 0..n-1 and masks their MSI-X entries. */
static int setup_ims(struct dsa_t *d)
{
	unsigned int i;

	if (!CHECK(d, CAT_SETUP, d->ims_off && d->ims_n >= d->ndonors,
		   "no IMS table (offset %#x, %u entries)", d->ims_off, d->ims_n))
		return -ENODEV;
	for (i = 0; i < d->ndonors; i++) {
		struct dvec *v = &d->donors[i];
		void __iomem *e = d->regs + d->ims_off + i * IMS_ENTRY_SIZE;
		void __iomem *m = d->msix_table + v->msix_index * PCI_MSIX_ENTRY_SIZE;
		u32 back[4];
		int k;

		writel(IMS_CTRL_MASK, e + 12);
		writel(v->msg.address_lo, e + 0);
		writel(v->msg.address_hi, e + 4);
		writel(v->msg.data, e + 8);
		writel(0, e + 12);
		for (k = 0; k < 4; k++)
			back[k] = readl(e + 4 * k);
		if (!CHECK(d, CAT_SETUP,
			   back[0] == v->msg.address_lo && back[1] == v->msg.address_hi &&
			   back[2] == v->msg.data && back[3] == 0,
			   "IMS entry %u reads back %#x %#x %#x %#x", i, back[0], back[1], back[2],
			   back[3]))
			return -EIO;
		v->ims_index = i;
		/* only the IMS path may raise the donor from now on */
		writel(readl(m + PCI_MSIX_ENTRY_VECTOR_CTRL) | PCI_MSIX_ENTRY_CTRL_MASKBIT,
		       m + PCI_MSIX_ENTRY_VECTOR_CTRL);
		if (!CHECK(d, CAT_SETUP,
			   readl(m + PCI_MSIX_ENTRY_VECTOR_CTRL) & PCI_MSIX_ENTRY_CTRL_MASKBIT,
			   "MSI-X entry %u does not stay masked", v->msix_index))
			return -EIO;
	}
	return 0;
}

static int setup_device(struct dsa_t *d)
{
	void __iomem *grp, *wq;
	u64 toff;
	u32 sts, xs, bs;
	int i;

	d->version = readl(d->regs + R_VERSION);
	d->gencap = readq(d->regs + R_GENCAP);
	d->wqcap = readq(d->regs + R_WQCAP);
	d->grpcap = readq(d->regs + R_GRPCAP);
	d->engcap = readq(d->regs + R_ENGCAP);
	d->opcap0 = readq(d->regs + R_OPCAP);
	d->cmdcap = (d->gencap & BIT(4)) ? readl(d->regs + R_CMDCAP) : 0;
	toff = readq(d->regs + R_TABLE_OFF);
	d->grpcfg_off = (toff & 0xffff) * TABLE_MULT;
	d->wqcfg_off = ((toff >> 16) & 0xffff) * TABLE_MULT;
	d->msix_perm_off = ((toff >> 32) & 0xffff) * TABLE_MULT;
	d->ims_off = ((toff >> 48) & 0xffff) * TABLE_MULT;
	d->ims_n = ((d->gencap >> 25) & 0x3f) * 256;
	d->wqs = (d->wqcap >> 16) & 0xff;
	pr_info("version %#x gencap %#llx wqcap %#llx grpcap %#llx engcap %#llx opcap0 %#llx cmdcap %#x tables grpcfg %#x wqcfg %#x msix_perm %#x ims %#x (%u entries)\n",
		d->version, d->gencap, d->wqcap, d->grpcap, d->engcap, d->opcap0, d->cmdcap,
		d->grpcfg_off, d->wqcfg_off, d->msix_perm_off, d->ims_off, d->ims_n);
	if (!CHECK(d, CAT_SETUP, d->gencap & BIT(31), "GENCAP.config_en clear"))
		return -ENODEV;
	xs = (d->gencap >> 16) & 0x1f;
	bs = (d->gencap >> 21) & 0xf;
	if (!CHECK(d, CAT_SETUP, xfer_shift <= xs && batch_shift <= bs && batch_shift >= 2,
		   "xfer_shift %u / batch_shift %u beyond GENCAP %u / %u", xfer_shift, batch_shift,
		   xs, bs))
		return -EINVAL;

	sts = dsa_cmd(d, CMD_RESET_DEV, 0);
	if (!CHECK(d, CAT_SETUP, sts == 0, "reset device: CMDSTS %#x", sts))
		return -EIO;

	/* group 0: WQ 0 and engine 0; everything else empty */
	grp = d->regs + d->grpcfg_off;
	for (i = 0; i < 4; i++)
		writeq(i == 0 ? 1 : 0, grp + i * 8);
	writeq(1, grp + 32);
	writeq(0, grp + 40);
	if (!CHECK(d, CAT_SETUP, readq(grp) == 1 && readq(grp + 32) == 1,
		   "GRPCFG reads back %#llx / %#llx", readq(grp), readq(grp + 32)))
		return -EIO;
	/* WQ 0: dedicated, 16 entries, priority 1 */
	wq = d->regs + d->wqcfg_off;
	writel(16, wq + 0);
	writel(0, wq + 4);
	writel(WQCFG_MODE_DEDICATED | (1 << 4) | WQCFG_PRIV, wq + 8);
	writel(xfer_shift | (batch_shift << 5), wq + 12);
	if (!CHECK(d, CAT_SETUP, readl(wq) == 16 && (readl(wq + 12) & 0x1ff) == (xfer_shift | (batch_shift << 5)),
		   "WQCFG reads back %#x / %#x", readl(wq), readl(wq + 12)))
		return -EIO;
	writel(GENCTRL_SOFTERR, d->regs + R_GENCTRL);

	sts = dsa_cmd(d, CMD_ENABLE_DEV, 0);
	if (!CHECK(d, CAT_SETUP, sts == 0, "enable device: CMDSTS %#x", sts))
		return -EIO;
	d->dev_enabled = true;
	if (!CHECK(d, CAT_SETUP, (readl(d->regs + R_GENSTS) & 3) == 1, "GENSTS %#x after enable",
		   readl(d->regs + R_GENSTS)))
		return -EIO;
	sts = dsa_cmd(d, CMD_ENABLE_WQ, 0);
	if (!CHECK(d, CAT_SETUP, sts == 0, "enable WQ 0: CMDSTS %#x", sts))
		return -EIO;
	if (!CHECK(d, CAT_SETUP, (readl(wq + 6 * 4) >> 30) == 1, "WQCFG0.dw6 %#x after enable",
		   readl(wq + 6 * 4)))
		return -EIO;

	d->handles = d->cmdcap & BIT(CMD_REQ_INT_HANDLE);
	if (d->handles) {
		sts = dsa_cmd(d, CMD_REQ_INT_HANDLE, 1);
		if (!CHECK(d, CAT_SETUP, (sts & 0xff) == 0, "request interrupt handle for vector 1: CMDSTS %#x", sts))
			return -EIO;
		d->wq_handle = (sts >> 8) & 0xffff;
		d->handle_held = true;
	} else {
		d->wq_handle = 1;
	}
	pr_info("device and WQ 0 enabled; MSI-X portal int_handle for vector 1: %u (%s)\n",
		d->wq_handle, d->handles ? "handle from command 13" : "MSI-X index");
	return 0;
}

/* ------------------------------------------------------------------ data path */

static void run_data(struct dsa_t *d)
{
	const enum fail_cat C = CAT_DATA;
	u8 *src = bufp(d, OFF_SRC), *dst = bufp(d, OFF_DST), *dst2 = bufp(d, OFF_DST2);
	struct dsa_desc *list = bufp(d, OFF_LIST);
	struct dsa_rec *r, *sub[4];
	struct dsa_desc x;
	u64 pattern = 0x0123456789abcdefULL, sdma[4];
	unsigned int i;
	u32 want;

	/* MEMMOVE, MSI-X limited portal, interrupt on vector 1 */
	fill_pattern(src, DATA_MAX, 1);
	memset(dst, 0, DATA_MAX);
	desc_init(&x, OP_MEMMOVE, F_REC | F_RCI);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 4096;
	x.int_handle = d->wq_handle;
	r = exec(d, C, "memmove/msix", PORTAL_MSIX_L, &x, &d->wqv);
	if (st_is(d, C, "memmove/msix", r, ST_SUCCESS))
		CHECK(d, C, !memcmp(src, dst, 4096), "memmove/msix: destination differs");

	/* MEMMOVE, unaligned, IMS unlimited portal, donor 0 */
	memset(dst, 0, DATA_MAX);
	desc_init(&x, OP_MEMMOVE, F_REC | F_RCI);
	x.src = bufa(d, OFF_SRC + 1);
	x.dst = bufa(d, OFF_DST + 3);
	x.size = 3000;
	x.int_handle = ims_handle(d, 0);
	r = exec(d, C, "memmove/ims", PORTAL_IMS_U, &x, donor(d, 0));
	if (st_is(d, C, "memmove/ims", r, ST_SUCCESS))
		CHECK(d, C, !memcmp(src + 1, dst + 3, 3000) && dst[2] == 0 && dst[3003] == 0,
		      "memmove/ims: destination wrong");

	/* MEMFILL, IMS limited portal, donor 1 */
	memset(dst2, 0, DATA_MAX);
	desc_init(&x, OP_MEMFILL, F_REC | F_RCI);
	x.src = pattern;
	x.dst = bufa(d, OFF_DST2);
	x.size = 4096;
	x.int_handle = ims_handle(d, 1);
	r = exec(d, C, "memfill/ims", PORTAL_IMS_L, &x, donor(d, 1));
	if (st_is(d, C, "memfill/ims", r, ST_SUCCESS)) {
		for (i = 0; i < 4096; i++)
			if (dst2[i] != (u8)(pattern >> (8 * (i % 8))))
				break;
		CHECK(d, C, i == 4096 && dst2[4096] == 0, "memfill/ims: byte %u is %#x", i,
		      i < DATA_MAX ? dst2[i] : 0);
	}

	/* COMPARE equal, MSI-X unlimited portal, vector 1 */
	memcpy(dst, src, 4096);
	desc_init(&x, OP_COMPARE, F_REC | F_RCI);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 4096;
	x.int_handle = d->wq_handle;
	r = exec(d, C, "compare-equal", PORTAL_MSIX_U, &x, &d->wqv);
	if (st_is(d, C, "compare-equal", r, ST_SUCCESS))
		CHECK(d, C, r->result == 0, "compare-equal: result %u", r->result);

	/* COMPARE different at byte 100, IMS limited portal, donor 2 */
	dst[100] ^= 0xff;
	desc_init(&x, OP_COMPARE, F_REC | F_RCI);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 4096;
	x.int_handle = ims_handle(d, 2);
	r = exec(d, C, "compare-diff", PORTAL_IMS_L, &x, donor(d, 2));
	if (st_is(d, C, "compare-diff", r, ST_SUCCESS))
		CHECK(d, C, r->result == 1 && r->completed == 100,
		      "compare-diff: result %u completed %u (expected 1, 100)", r->result, r->completed);

	/* COMPARE with check result (expects equal) on different data: false predicate */
	desc_init(&x, OP_COMPARE, F_REC | F_CHECK_RESULT);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 4096;
	x.op[0] = 0;
	r = exec(d, C, "compare-check", PORTAL_MSIX_L, &x, NULL);
	st_is(d, C, "compare-check", r, ST_SUCCESS_PRED);
	dst[100] ^= 0xff;

	/* CRC-32C of "123456789" (check value 0xe3069283), IMS unlimited, donor 0 */
	memcpy(bufp(d, OFF_MISC), "123456789", 9);
	desc_init(&x, OP_CRCGEN, F_REC | F_RCI);
	x.src = bufa(d, OFF_MISC);
	x.size = 9;
	x.int_handle = ims_handle(d, 0);
	r = exec(d, C, "crc-check", PORTAL_IMS_U, &x, donor(d, 0));
	if (st_is(d, C, "crc-check", r, ST_SUCCESS))
		CHECK(d, C, r->op32 == 0xe3069283 && crc32c_sw(0, bufp(d, OFF_MISC), 9) == 0xe3069283,
		      "crc-check: %#x (expected 0xe3069283)", r->op32);

	/* CRC over 4 KiB with a seed, no interrupt */
	desc_init(&x, OP_CRCGEN, F_REC);
	x.src = bufa(d, OFF_SRC);
	x.size = 4096;
	put_unaligned_le32(0x12345678, &x.op[0]);
	want = crc32c_sw(0x12345678, src, 4096);
	r = exec(d, C, "crc-seed", PORTAL_MSIX_L, &x, NULL);
	if (st_is(d, C, "crc-seed", r, ST_SUCCESS))
		CHECK(d, C, r->op32 == want, "crc-seed: %#x (expected %#x)", r->op32, want);

	/* copy with CRC, MSI-X limited, vector 1 */
	memset(dst, 0, DATA_MAX);
	desc_init(&x, OP_COPY_CRC, F_REC | F_RCI);
	x.src = bufa(d, OFF_SRC + 512);
	x.dst = bufa(d, OFF_DST);
	x.size = 2048;
	x.int_handle = d->wq_handle;
	want = crc32c_sw(0, src + 512, 2048);
	r = exec(d, C, "copy-crc", PORTAL_MSIX_L, &x, &d->wqv);
	if (st_is(d, C, "copy-crc", r, ST_SUCCESS))
		CHECK(d, C, r->op32 == want && !memcmp(src + 512, dst, 2048),
		      "copy-crc: crc %#x (expected %#x) or data wrong", r->op32, want);

	/* NOOP on every vector */
	desc_init(&x, OP_NOOP, F_REC | F_RCI);
	x.int_handle = d->wq_handle;
	r = exec(d, C, "noop/msix", PORTAL_MSIX_L, &x, &d->wqv);
	st_is(d, C, "noop/msix", r, ST_SUCCESS);
	for (i = 0; i < d->ndonors; i++) {
		desc_init(&x, OP_NOOP, F_REC | F_RCI);
		x.int_handle = ims_handle(d, i);
		r = exec(d, C, "noop/ims", i % 2 ? PORTAL_IMS_L : PORTAL_IMS_U, &x, donor(d, i));
		st_is(d, C, "noop/ims", r, ST_SUCCESS);
	}

	/*
	 * BATCH of 4 through the IMS portal: MEMMOVE (interrupt on donor 0), MEMFILL (donor 1),
	 * fenced NOOP, COMPARE with check result; the batch itself interrupts on donor 2.
	 */
	memset(dst, 0, DATA_MAX);
	memset(dst2, 0, DATA_MAX);
	for (i = 0; i < 4; i++)
		rec_init(d, &sub[i], &sdma[i]);
	desc_init(&list[0], OP_MEMMOVE, F_REC | F_RCI);
	list[0].compl = sdma[0];
	list[0].src = bufa(d, OFF_SRC);
	list[0].dst = bufa(d, OFF_DST);
	list[0].size = 1024;
	list[0].int_handle = ims_handle(d, 0);
	desc_init(&list[1], OP_MEMFILL, F_REC | F_RCI);
	list[1].compl = sdma[1];
	list[1].src = ~pattern;
	list[1].dst = bufa(d, OFF_DST2);
	list[1].size = 1024;
	list[1].int_handle = ims_handle(d, 1);
	desc_init(&list[2], OP_NOOP, F_REC | F_FENCE);
	list[2].compl = sdma[2];
	desc_init(&list[3], OP_COMPARE, F_REC | F_CHECK_RESULT);
	list[3].compl = sdma[3];
	list[3].src = bufa(d, OFF_SRC);
	list[3].dst = bufa(d, OFF_DST);
	list[3].size = 1024;
	donor(d, 0)->expected++;
	donor(d, 1)->expected++;
	desc_init(&x, OP_BATCH, F_REC | F_RCI);
	x.src = bufa(d, OFF_LIST);
	x.size = 4;
	x.int_handle = ims_handle(d, 2);
	r = exec(d, C, "batch/ims", PORTAL_IMS_U, &x, donor(d, 2));
	if (st_is(d, C, "batch/ims", r, ST_SUCCESS)) {
		CHECK(d, C, r->completed == 4, "batch/ims: %u descriptors completed", r->completed);
		for (i = 0; i < 4; i++)
			CHECK(d, C, sub[i]->status == ST_SUCCESS, "batch/ims: element %u status %#x",
			      i, sub[i]->status);
		CHECK(d, C, sub[3]->result == 0, "batch/ims: compare result %u", sub[3]->result);
		CHECK(d, C, !memcmp(src, dst, 1024) && dst[1024] == 0, "batch/ims: memmove data");
		for (i = 0; i < 1024; i++)
			if (dst2[i] != (u8)(~pattern >> (8 * (i % 8))))
				break;
		CHECK(d, C, i == 1024 && dst2[1024] == 0, "batch/ims: memfill byte %u", i);
	}
	for (i = 0; i < 2; i++)
		CHECK(d, C, wait_irq(d, donor(d, i)), "batch/ims: element interrupt on %s missing",
		      donor(d, i)->name);

	/* BATCH of 3 through the MSI-X portal: NOOP, MEMMOVE, NOOP; interrupt on vector 1 */
	memset(dst, 0, DATA_MAX);
	for (i = 0; i < 3; i++)
		rec_init(d, &sub[i], &sdma[i]);
	desc_init(&list[0], OP_NOOP, F_REC);
	list[0].compl = sdma[0];
	desc_init(&list[1], OP_MEMMOVE, F_REC);
	list[1].compl = sdma[1];
	list[1].src = bufa(d, OFF_SRC + 4096);
	list[1].dst = bufa(d, OFF_DST + 4096);
	list[1].size = 4096;
	desc_init(&list[2], OP_NOOP, F_REC | F_FENCE);
	list[2].compl = sdma[2];
	desc_init(&x, OP_BATCH, F_REC | F_RCI);
	x.src = bufa(d, OFF_LIST);
	x.size = 3;
	x.int_handle = d->wq_handle;
	r = exec(d, C, "batch/msix", PORTAL_MSIX_L, &x, &d->wqv);
	if (st_is(d, C, "batch/msix", r, ST_SUCCESS)) {
		CHECK(d, C, r->completed == 3, "batch/msix: %u descriptors completed", r->completed);
		for (i = 0; i < 3; i++)
			CHECK(d, C, sub[i]->status == ST_SUCCESS, "batch/msix: element %u status %#x",
			      i, sub[i]->status);
		CHECK(d, C, !memcmp(src + 4096, dst + 4096, 4096), "batch/msix: memmove data");
	}

	msleep(settle_ms);
	counts_exact(d, C, "data path");
}

/* ------------------------------------------------------------------ IMS mask */

static void run_ims_mask(struct dsa_t *d)
{
	const enum fail_cat C = CAT_MASK;
	struct dvec *v = donor(d, 0);
	void __iomem *ctrl = d->regs + d->ims_off + v->ims_index * IMS_ENTRY_SIZE + 12;
	struct dsa_rec *r;
	struct dsa_desc x;
	u32 c;
	int before = atomic_read(&v->count);

	writel(inject == 1 ? 0 : IMS_CTRL_MASK, ctrl);
	c = readl(ctrl);
	if (inject != 1)	/* let the interrupt check below catch the injected fault */
		CHECK(d, C, c == IMS_CTRL_MASK, "masked IMS entry ctrl reads %#x", c);
	desc_init(&x, OP_NOOP, F_REC | F_RCI);
	x.int_handle = v->ims_index;
	r = exec(d, C, "ims-masked-noop", PORTAL_IMS_L, &x, NULL);
	st_is(d, C, "ims-masked-noop", r, ST_SUCCESS);
	msleep(settle_ms);
	CHECK(d, C, atomic_read(&v->count) == before,
	      "interrupt arrived through a masked IMS entry (%d -> %d)", before,
	      atomic_read(&v->count));
	c = readl(ctrl);
	CHECK(d, C, c == (IMS_CTRL_MASK | IMS_CTRL_PENDING),
	      "masked IMS entry after a fire: ctrl %#x (expected mask|pending %#lx)", c,
	      IMS_CTRL_MASK | IMS_CTRL_PENDING);

	v->expected++;
	writel(0, ctrl);
	CHECK(d, C, wait_irq(d, v), "no interrupt after unmasking the IMS entry");
	msleep(settle_ms);
	CHECK(d, C, atomic_read(&v->count) == before + 1,
	      "after unmask: %d interrupts (expected exactly 1)", atomic_read(&v->count) - before);
	c = readl(ctrl);
	CHECK(d, C, c == 0, "unmasked IMS entry ctrl reads %#x (pending not cleared?)", c);

	/* and the entry still works normally */
	desc_init(&x, OP_NOOP, F_REC | F_RCI);
	x.int_handle = v->ims_index;
	r = exec(d, C, "ims-unmasked-noop", PORTAL_IMS_U, &x, v);
	st_is(d, C, "ims-unmasked-noop", r, ST_SUCCESS);
	msleep(settle_ms);
	counts_exact(d, C, "IMS mask");
}

/* ------------------------------------------------------------------ hostile */

static void hostile_status(struct dsa_t *d, const char *what, unsigned int portal,
			   struct dsa_desc *x, u8 want, u64 want_fault)
{
	struct dsa_rec *r = exec(d, CAT_HOSTILE, what, portal, x, NULL);

	if (st_is(d, CAT_HOSTILE, what, r, want) && want_fault != ~0ULL)
		CHECK(d, CAT_HOSTILE, r->fault_addr == want_fault,
		      "%s: fault_addr %#llx (expected %#llx)", what, r->fault_addr, want_fault);
}

/* A descriptor whose completion record cannot be written: SWERR `code`, one vector-0 irq. */
static void hostile_swerr(struct dsa_t *d, const char *what, u64 compl, u8 code)
{
	const enum fail_cat C = CAT_HOSTILE;
	unsigned long deadline = jiffies + msecs_to_jiffies(wait_ms);
	struct dsa_desc x;
	u64 sw0, sw2;

	CHECK(d, C, !(readq(d->regs + R_SWERR) & 1), "%s: SWERR already valid: %#llx", what,
	      readq(d->regs + R_SWERR));
	desc_init(&x, OP_NOOP, F_REC);
	x.compl = compl;
	d->misc.expected++;
	submit(d, PORTAL_MSIX_L, &x);
	while (!((sw0 = readq(d->regs + R_SWERR)) & 1) && !time_after(jiffies, deadline))
		usleep_range(20, 100);
	sw2 = readq(d->regs + R_SWERR + 16);
	if (CHECK(d, C, sw0 & 1, "%s: SWERR not valid (%#llx)", what, sw0)) {
		CHECK(d, C, ((sw0 >> 8) & 0xff) == code && !(sw0 & 2) && sw2 == compl,
		      "%s: SWERR %#llx fault %#llx (expected error %#x at %#llx)", what, sw0, sw2,
		      code, compl);
		CHECK(d, C, ((sw0 >> 32) & 0xff) == OP_NOOP && (sw0 & BIT(2)) && (sw0 & BIT(3)) &&
			    ((sw0 >> 16) & 0xff) == 0,
		      "%s: SWERR descriptor fields %#llx", what, sw0);
	}
	CHECK(d, C, wait_irq(d, &d->misc), "%s: no software-error interrupt on vector 0", what);
	CHECK(d, C, d->misc.intcause & INTCAUSE_ERR, "%s: INTCAUSE %#x without the error bit", what,
	      d->misc.intcause);
	d->misc.intcause = 0;
	writel(sw0 & 3, d->regs + R_SWERR);
	CHECK(d, C, !(readq(d->regs + R_SWERR) & 3), "%s: SWERR not cleared: %#llx", what,
	      readq(d->regs + R_SWERR));
}

static void run_hostile(struct dsa_t *d)
{
	const enum fail_cat C = CAT_HOSTILE;
	struct dsa_desc *list = bufp(d, OFF_LIST);
	u64 bar2 = pci_resource_start(d->pdev, 2);
	struct dsa_rec *r, *sub[2];
	struct dsa_desc x;
	u64 sdma[2];
	unsigned int i;

	/* DMA addresses outside guest RAM: page fault with the faulting address */
	desc_init(&x, OP_MEMMOVE, F_REC);
	x.src = HOSTILE_ADDR;
	x.dst = bufa(d, OFF_DST);
	x.size = 4096;
	hostile_status(d, "src-outside-ram", PORTAL_MSIX_L, &x, ST_PAGE_FAULT, HOSTILE_ADDR);
	desc_init(&x, OP_MEMMOVE, F_REC);
	x.src = bufa(d, OFF_SRC);
	x.dst = HOSTILE_ADDR;
	x.size = 4096;
	hostile_status(d, "dst-outside-ram", PORTAL_MSIX_L, &x, ST_PAGE_FAULT | ST_WRITE_FAULT,
		       HOSTILE_ADDR);
	desc_init(&x, OP_MEMFILL, F_REC);
	x.src = 0x5a5a5a5a5a5a5a5aULL;
	x.dst = HOSTILE_ADDR;
	x.size = 64;
	hostile_status(d, "fill-outside-ram", PORTAL_IMS_U, &x, ST_PAGE_FAULT | ST_WRITE_FAULT,
		       HOSTILE_ADDR);
	/* the device's own portal BAR (MMIO) as source and as destination */
	desc_init(&x, OP_MEMMOVE, F_REC);
	x.src = bar2;
	x.dst = bufa(d, OFF_DST);
	x.size = 64;
	hostile_status(d, "src-own-bar2", PORTAL_MSIX_L, &x, ST_PAGE_FAULT, bar2);
	desc_init(&x, OP_MEMMOVE, F_REC);
	x.src = bufa(d, OFF_SRC);
	x.dst = bar2 + PORTAL_PAGE;
	x.size = 64;
	hostile_status(d, "dst-own-bar2", PORTAL_MSIX_L, &x, ST_PAGE_FAULT | ST_WRITE_FAULT,
		       bar2 + PORTAL_PAGE);
	/* a range that wraps past 2^64 */
	desc_init(&x, OP_COMPARE, F_REC);
	x.src = ~0ULL - 15;
	x.dst = bufa(d, OFF_DST);
	x.size = 64;
	hostile_status(d, "src-wraps", PORTAL_MSIX_L, &x, ST_PAGE_FAULT, ~0ULL - 15);
	/* CRC seed address outside RAM */
	desc_init(&x, OP_CRCGEN, F_REC | BIT(16));
	x.src = bufa(d, OFF_SRC);
	x.size = 64;
	put_unaligned_le64(HOSTILE_ADDR, &x.op[8]);
	hostile_status(d, "crc-seed-outside-ram", PORTAL_MSIX_L, &x, ST_PAGE_FAULT, HOSTILE_ADDR);

	/* transfer sizes */
	desc_init(&x, OP_MEMMOVE, F_REC);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 0;
	hostile_status(d, "size-0", PORTAL_MSIX_L, &x, ST_XFER_ERANGE, ~0ULL);
	x.size = (1u << xfer_shift) + 1;
	hostile_status(d, "size-over-wq-max", PORTAL_MSIX_L, &x, ST_XFER_ERANGE, ~0ULL);
	x.size = 0xffffffff;
	hostile_status(d, "size-4g", PORTAL_IMS_L, &x, ST_XFER_ERANGE, ~0ULL);

	/* opcodes, flags, reserved fields */
	desc_init(&x, 0x7f, F_REC);
	hostile_status(d, "opcode-0x7f", PORTAL_MSIX_L, &x, ST_BAD_OPCODE, ~0ULL);
	desc_init(&x, OP_TRANSL_FETCH, F_REC);
	hostile_status(d, "opcode-translation-fetch", PORTAL_MSIX_L, &x, ST_BAD_OPCODE, ~0ULL);
	desc_init(&x, OP_NOOP, F_REC | F_UNDEFINED);
	r = exec(d, C, "flags-undefined", PORTAL_MSIX_L, &x, NULL);
	if (st_is(d, C, "flags-undefined", r, ST_INVALID_FLAGS))
		CHECK(d, C, r->op32 == F_UNDEFINED, "flags-undefined: invalid flags %#x", r->op32);
	desc_init(&x, OP_MEMMOVE, F_REC | F_CHECK_RESULT);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 64;
	hostile_status(d, "flags-check-result-on-memmove", PORTAL_MSIX_L, &x, ST_INVALID_FLAGS, ~0ULL);
	desc_init(&x, OP_NOOP, F_REC);
	x.src = bufa(d, OFF_SRC);
	hostile_status(d, "noop-reserved-src", PORTAL_MSIX_L, &x, ST_NONZERO_RESERVED, ~0ULL);
	desc_init(&x, OP_MEMMOVE, F_REC);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 64;
	x.rsvd = 1;
	hostile_status(d, "memmove-reserved", PORTAL_MSIX_L, &x, ST_NONZERO_RESERVED, ~0ULL);

	/* batches */
	for (i = 0; i < (1u << batch_shift) + 1; i++)
		desc_init(&list[i], OP_NOOP, 0);
	desc_init(&x, OP_BATCH, F_REC);
	x.src = bufa(d, OFF_LIST);
	x.size = 1;
	hostile_status(d, "batch-count-1", PORTAL_MSIX_L, &x, ST_DESC_CNT_ERANGE, ~0ULL);
	x.size = (1u << batch_shift) + 1;
	hostile_status(d, "batch-count-over-max", PORTAL_MSIX_L, &x, ST_DESC_CNT_ERANGE, ~0ULL);
	x.src = bufa(d, OFF_LIST + 32);
	x.size = 2;
	hostile_status(d, "batch-list-misaligned", PORTAL_MSIX_L, &x, ST_DESCLIST_ALIGN, ~0ULL);
	x.src = HOSTILE_ADDR;
	hostile_status(d, "batch-list-outside-ram", PORTAL_MSIX_L, &x, 0x06, HOSTILE_ADDR);
	/* a batch inside a batch fails that element (0x10) and the batch (0x05) */
	for (i = 0; i < 2; i++)
		rec_init(d, &sub[i], &sdma[i]);
	desc_init(&list[0], OP_NOOP, F_REC);
	list[0].compl = sdma[0];
	desc_init(&list[1], OP_BATCH, F_REC);
	list[1].compl = sdma[1];
	list[1].src = bufa(d, OFF_LIST);
	list[1].size = 2;
	desc_init(&x, OP_BATCH, F_REC);
	x.src = bufa(d, OFF_LIST);
	x.size = 2;
	r = exec(d, C, "batch-in-batch", PORTAL_MSIX_L, &x, NULL);
	if (st_is(d, C, "batch-in-batch", r, ST_BATCH_FAIL))
		CHECK(d, C, sub[0]->status == ST_SUCCESS && sub[1]->status == ST_BAD_OPCODE,
		      "batch-in-batch: elements %#x %#x (expected 0x1, 0x10)", sub[0]->status,
		      sub[1]->status);

	/* invalid interrupt handles: 0x19 and no interrupt anywhere */
	desc_init(&x, OP_NOOP, F_REC | F_RCI);
	x.int_handle = 0xffff;
	hostile_status(d, "msix-handle-0xffff", PORTAL_MSIX_L, &x, ST_INT_HANDLE_INVAL, ~0ULL);
	desc_init(&x, OP_NOOP, F_REC | F_RCI);
	/* with handles the raw MSI-X index is no handle; without, the table size is too big */
	x.int_handle = d->handles ? 1 : d->msix_n;
	if (d->handles && d->wq_handle == 1)
		x.int_handle = 0xfffe;
	hostile_status(d, "msix-handle-bad", PORTAL_MSIX_U, &x, ST_INT_HANDLE_INVAL, ~0ULL);
	desc_init(&x, OP_NOOP, F_REC | F_RCI);
	x.int_handle = d->ims_n;
	hostile_status(d, "ims-handle-past-table", PORTAL_IMS_L, &x, ST_INT_HANDLE_INVAL, ~0ULL);
	desc_init(&x, OP_MEMMOVE, F_REC | F_RCI);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 64;
	x.int_handle = 0xffff;
	hostile_status(d, "ims-handle-0xffff", PORTAL_IMS_U, &x, ST_INT_HANDLE_INVAL, ~0ULL);

	/* a failing descriptor with a valid handle still interrupts */
	desc_init(&x, OP_MEMMOVE, F_REC | F_RCI);
	x.src = HOSTILE_ADDR;
	x.dst = bufa(d, OFF_DST);
	x.size = 64;
	x.int_handle = ims_handle(d, 1);
	r = exec(d, C, "fault-with-interrupt", PORTAL_IMS_L, &x, donor(d, 1));
	st_is(d, C, "fault-with-interrupt", r, ST_PAGE_FAULT);

	msleep(settle_ms);
	counts_exact(d, C, "hostile descriptors");

	/* completion records that cannot be written: SWERR and the vector-0 interrupt */
	hostile_swerr(d, "record-misaligned", bufa(d, OFF_RECS + 8), ST_CRA_ALIGN);
	hostile_swerr(d, "record-outside-ram", HOSTILE_ADDR, ST_CRA_XLAT);

	/* the device is still fine */
	fill_pattern(bufp(d, OFF_SRC), 4096, 7);
	memset(bufp(d, OFF_DST), 0, 4096);
	desc_init(&x, OP_MEMMOVE, F_REC | F_RCI);
	x.src = bufa(d, OFF_SRC);
	x.dst = bufa(d, OFF_DST);
	x.size = 4096;
	x.int_handle = d->wq_handle;
	r = exec(d, C, "after-hostile", PORTAL_MSIX_L, &x, &d->wqv);
	if (st_is(d, C, "after-hostile", r, ST_SUCCESS))
		CHECK(d, C, !memcmp(bufp(d, OFF_SRC), bufp(d, OFF_DST), 4096),
		      "after-hostile: data differs");
	CHECK(d, C, (readl(d->regs + R_GENSTS) & 3) == 1, "GENSTS %#x after hostile descriptors",
	      readl(d->regs + R_GENSTS));
}

/* ------------------------------------------------------------------ teardown */

static void dsa_teardown(struct dsa_t *d)
{
	struct pci_dev *pdev = d->pdev;
	unsigned int i;
	u32 sts;

	if (d->dev_enabled) {
		if (d->handle_held) {
			sts = dsa_cmd(d, CMD_REL_INT_HANDLE, d->wq_handle);
			if (sts & 0xff)
				pr_info("release interrupt handle %u: CMDSTS %#x\n", d->wq_handle, sts);
			d->handle_held = false;
		}
		sts = dsa_cmd(d, CMD_DISABLE_WQ, 1);
		if (sts & 0xff)
			pr_info("disable WQ 0: CMDSTS %#x\n", sts);
		sts = dsa_cmd(d, CMD_DISABLE_DEV, 0);
		if (sts & 0xff)
			pr_info("disable device: CMDSTS %#x\n", sts);
		d->dev_enabled = false;
	}
	if (d->regs)
		dsa_cmd(d, CMD_RESET_DEV, 0);
	for (i = 0; i < d->ndonors; i++) {
		struct dvec *v = &d->donors[i];

		if (v->requested && d->msix_table) {
			void __iomem *m = d->msix_table + v->msix_index * PCI_MSIX_ENTRY_SIZE;

			/* back to what Linux believes the entry holds; free_irq masks it */
			writel(readl(m + PCI_MSIX_ENTRY_VECTOR_CTRL) & ~PCI_MSIX_ENTRY_CTRL_MASKBIT,
			       m + PCI_MSIX_ENTRY_VECTOR_CTRL);
		}
		if (v->requested)
			free_irq(v->virq, v);
		v->requested = false;
		if (v->dynamic)
			pci_msix_free_irq(pdev, v->map);
		v->dynamic = false;
	}
	d->ndonors = 0;
	if (d->wqv.requested)
		free_irq(d->wqv.virq, &d->wqv);
	d->wqv.requested = false;
	if (d->misc.requested)
		free_irq(d->misc.virq, &d->misc);
	d->misc.requested = false;
	if (d->vectors_allocated)
		pci_free_irq_vectors(pdev);
	d->vectors_allocated = false;
	if (d->buf)
		dma_free_coherent(&pdev->dev, BUF_SIZE, d->buf, d->buf_dma);
	d->buf = NULL;
	if (d->bar2)
		pci_iounmap(pdev, d->bar2);
	d->bar2 = NULL;
	if (d->regs)
		pci_iounmap(pdev, d->regs);
	d->regs = NULL;
	if (d->regions) {
		pci_clear_master(pdev);
		pci_release_regions(pdev);
		pci_disable_device(pdev);
	}
	d->regions = false;
}

/* ------------------------------------------------------------------ probe */

static void report(struct dsa_t *d)
{
	unsigned int i, ims = 0, total = 0;

	for (i = 0; i < d->ndonors; i++)
		ims += atomic_read(&d->donors[i].count);
	for (i = 0; i < CAT_N; i++)
		total += d->fails[i];
	pr_info("DSA-RESULT status=%s msix_irqs=%d misc_irqs=%d ims_irqs=%u descriptors=%u data_ok=%d ims_mask_ok=%d hostile_ok=%d counts_ok=%d handles=%d donors=%u remappable=%d reason=%s\n",
		total ? "fail" : "pass", atomic_read(&d->wqv.count), atomic_read(&d->misc.count),
		ims, d->ndesc, !d->fails[CAT_SETUP] && !d->fails[CAT_DATA],
		!d->fails[CAT_SETUP] && !d->fails[CAT_MASK],
		!d->fails[CAT_SETUP] && !d->fails[CAT_HOSTILE], !d->fails[CAT_COUNTS],
		d->handles, d->ndonors, d->remappable, d->reason[0] ? d->reason : "none");
}

static int dsa_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct dsa_t *d;
	int ret;

	if (the_dev)
		return -EBUSY;
	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		return -ENOMEM;
	d->pdev = pdev;
	init_waitqueue_head(&d->wq);
	the_dev = d;
	pci_set_drvdata(pdev, d);

	ret = pci_enable_device(pdev);
	if (!CHECK(d, CAT_SETUP, !ret, "pci_enable_device = %d", ret))
		goto out;
	ret = pci_request_regions(pdev, KBUILD_MODNAME);
	if (!CHECK(d, CAT_SETUP, !ret, "pci_request_regions = %d", ret)) {
		pci_disable_device(pdev);
		goto out;
	}
	d->regions = true;
	pci_set_master(pdev);
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (!CHECK(d, CAT_SETUP, !ret, "dma_set_mask_and_coherent(64) = %d", ret))
		goto out;
	d->regs = pci_iomap(pdev, 0, 0);
	d->bar2 = pci_iomap(pdev, 2, 0);
	if (!CHECK(d, CAT_SETUP, d->regs && d->bar2, "cannot map BAR0/BAR2"))
		goto out;
	pr_info("BAR0 %pR BAR2 %pR\n", &pdev->resource[0], &pdev->resource[2]);
	d->buf = dma_alloc_coherent(&pdev->dev, BUF_SIZE, &d->buf_dma, GFP_KERNEL);
	if (!CHECK(d, CAT_SETUP, d->buf, "dma_alloc_coherent(%u) failed", BUF_SIZE))
		goto out;
	CHECK(d, CAT_SETUP, d->buf_dma == virt_to_phys(d->buf),
	      "DMA address %pad is not the physical address %pa (DMA remapping?)", &d->buf_dma,
	      &(phys_addr_t){ virt_to_phys(d->buf) });

	if (setup_vectors(d) || setup_device(d) || setup_ims(d))
		goto out;
	pr_info("%u donor vectors in IMS entries 0..%u, %s messages\n", d->ndonors,
		d->ndonors - 1, d->remappable ? "remappable" : "compatibility-format");

	run_data(d);
	run_ims_mask(d);
	run_hostile(d);
	if (inject == 2)
		d->wqv.expected++;
	msleep(settle_ms);
	counts_exact(d, CAT_COUNTS, "final");
out:
	report(d);
	if (!keep || d->fails[CAT_SETUP])
		dsa_teardown(d);
	return 0;
}

static void dsa_remove(struct pci_dev *pdev)
{
	struct dsa_t *d = pci_get_drvdata(pdev);

	if (!d)
		return;
	dsa_teardown(d);
	if (the_dev == d)
		the_dev = NULL;
	kfree(d);
}

static const struct pci_device_id dsa_ids[] = {
	{ PCI_DEVICE(DSA_VENDOR, DSA_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, dsa_ids);

static struct pci_driver dsa_driver = {
	.name = "dsa_guest",
	.id_table = dsa_ids,
	.probe = dsa_probe,
	.remove = dsa_remove,
};
module_pci_driver(dsa_driver);

MODULE_DESCRIPTION("Self-test for the VMM's emulated Intel DSA without idxd (portals, IMS, hostile descriptors)");
MODULE_LICENSE("GPL");
