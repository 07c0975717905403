// SPDX-License-Identifier: GPL-2.0
/*
 * irqlat_guest: in-guest interrupt latency, device fire -> handler, on two devices:
 *
 *   - the VMM's "irqtest" PCI device (1b36:0110): one MSI-X vector, fired by writing
 *     vector 0 / count 1 to its FIRE register (BAR0 + 0x10), or, when the device has
 *     doorbells (`doorbell=on`: a BAR1), by writing vector 0's doorbell (BAR1 + 0), which
 *     the VMM makes a KVM ioeventfd on the vector's irqfd (no exit to the VMM);
 *   - QEMU's "edu" device (1234:11e8): its one MSI vector, raised by writing 1 to
 *     BAR0 + 0x60 and acknowledged in the handler by writing 1 to BAR0 + 0x64.
 *
 * A kthread bound to CPU 0 (the interrupt's affinity is CPU 0 too) takes `samples`
 * samples after `warmup` unrecorded ones: t0 = ktime_get_ns() just before the trigger
 * write, t1 = ktime_get_ns() first thing in the handler; it spins (interrupts enabled)
 * until the handler ran, at most 100 ms (a miss is counted as lost). The sorted samples
 * give one line per device:
 *
 *   irqlat_guest: IRQLAT-RESULT dev=irqtest|edu irq=msix|msi fire=register|doorbell
 *     remapped=0|1 samples=N
 *     lost=N min_ns=.. median_ns=.. p99_ns=.. max_ns=..
 *
 * (one line). remapped=1 when the vector's irq domain chain goes through interrupt
 * remapping ("IR-" in a domain name).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/irq.h>
#include <linux/irqdomain.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/completion.h>

#define IRQT_VENDOR	0x1b36
#define IRQT_DEVICE	0x0110
#define IRQT_REG_FIRE	0x10

#define EDU_VENDOR	0x1234
#define EDU_DEVICE	0x11e8
#define EDU_REG_ID	0x00
#define EDU_REG_RAISE	0x60
#define EDU_REG_ACK	0x64

#define SAMPLE_TIMEOUT_NS	(100 * NSEC_PER_MSEC)

static unsigned int samples = 2000;
module_param(samples, uint, 0444);
MODULE_PARM_DESC(samples, "recorded samples per device (default 2000)");

static unsigned int warmup = 100;
module_param(warmup, uint, 0444);
MODULE_PARM_DESC(warmup, "unrecorded samples taken first (default 100)");

struct lat_dev {
	struct pci_dev *pdev;
	void __iomem *bar;
	void __iomem *doorbell;
	bool edu;
	int irq;
	u64 t_handler;
	int done;
	u64 *ns;
	unsigned int n;
	unsigned int lost;
	struct completion finished;
};

static irqreturn_t lat_irq(int irq, void *data)
{
	struct lat_dev *ld = data;
	u64 now = ktime_get_ns();

	if (ld->edu)
		iowrite32(1, ld->bar + EDU_REG_ACK);
	WRITE_ONCE(ld->t_handler, now);
	smp_store_release(&ld->done, 1);
	return IRQ_HANDLED;
}

/* One fire -> handler round trip; returns the latency in ns, or 0 if the handler did
 * not run within SAMPLE_TIMEOUT_NS. */
static u64 lat_sample(struct lat_dev *ld)
{
	u64 t0, limit;

	WRITE_ONCE(ld->done, 0);
	t0 = ktime_get_ns();
	if (ld->edu)
		iowrite32(1, ld->bar + EDU_REG_RAISE);
	else if (ld->doorbell)
		iowrite32(1, ld->doorbell); /* vector 0's doorbell */
	else
		iowrite32(0, ld->bar + IRQT_REG_FIRE); /* vector 0, count 1 */
	limit = t0 + SAMPLE_TIMEOUT_NS;
	while (!smp_load_acquire(&ld->done)) {
		if (ktime_get_ns() > limit)
			return 0;
		cpu_relax();
	}
	return max_t(u64, READ_ONCE(ld->t_handler) - t0, 1);
}

static int lat_thread(void *data)
{
	struct lat_dev *ld = data;
	unsigned int i;
	u64 v;

	for (i = 0; i < warmup; i++)
		lat_sample(ld);
	for (i = 0; i < samples; i++) {
		v = lat_sample(ld);
		if (!v) {
			ld->lost++;
			if (ld->edu) /* a raise without handler: clear it for the next one */
				iowrite32(1, ld->bar + EDU_REG_ACK);
			continue;
		}
		ld->ns[ld->n++] = v;
		if ((i & 63) == 63)
			cond_resched();
	}
	complete(&ld->finished);
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	u64 x = *(const u64 *)a, y = *(const u64 *)b;

	return x < y ? -1 : x > y;
}

static bool irq_remapped(int irq)
{
	struct irq_data *d;

	for (d = irq_get_irq_data(irq); d; d = d->parent_data)
		if (d->domain && d->domain->name && strstr(d->domain->name, "IR-"))
			return true;
	return false;
}

static int lat_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct lat_dev *ld;
	struct task_struct *t;
	const char *name;
	int ret, nvec;

	ld = devm_kzalloc(&pdev->dev, sizeof(*ld), GFP_KERNEL);
	if (!ld)
		return -ENOMEM;
	ld->pdev = pdev;
	ld->edu = pdev->vendor == EDU_VENDOR;
	name = ld->edu ? "edu" : "irqtest";
	init_completion(&ld->finished);
	ld->ns = devm_kcalloc(&pdev->dev, max(samples, 1u), sizeof(u64), GFP_KERNEL);
	if (!ld->ns)
		return -ENOMEM;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	pci_set_master(pdev);
	ld->bar = pcim_iomap(pdev, 0, 0);
	if (!ld->bar)
		return -ENOMEM;
	if (ld->edu)
		pr_info("%s: edu id %#x\n", pci_name(pdev), ioread32(ld->bar + EDU_REG_ID));
	if (!ld->edu && pci_resource_len(pdev, 1)) {
		ld->doorbell = pcim_iomap(pdev, 1, 0);
		if (!ld->doorbell)
			return -ENOMEM;
	}

	nvec = pci_alloc_irq_vectors(pdev, 1, 1, ld->edu ? PCI_IRQ_MSI : PCI_IRQ_MSIX);
	if (nvec < 1) {
		pr_err("IRQLAT-RESULT dev=%s error=no-vector(%d)\n", name, nvec);
		return nvec < 0 ? nvec : -ENOSPC;
	}
	ld->irq = pci_irq_vector(pdev, 0);
	ret = request_irq(ld->irq, lat_irq, 0, "irqlat", ld);
	if (ret) {
		pci_free_irq_vectors(pdev);
		return ret;
	}
	irq_set_affinity(ld->irq, cpumask_of(0));

	t = kthread_create(lat_thread, ld, "irqlat");
	if (IS_ERR(t)) {
		ret = PTR_ERR(t);
		goto out;
	}
	kthread_bind(t, 0);
	wake_up_process(t);
	wait_for_completion(&ld->finished);

	if (ld->n) {
		sort(ld->ns, ld->n, sizeof(u64), cmp_u64, NULL);
		pr_info("IRQLAT-RESULT dev=%s irq=%s fire=%s remapped=%d samples=%u lost=%u min_ns=%llu median_ns=%llu p99_ns=%llu max_ns=%llu\n",
			name, ld->edu ? "msi" : "msix", ld->doorbell ? "doorbell" : "register",
			irq_remapped(ld->irq), ld->n, ld->lost,
			ld->ns[0], ld->ns[ld->n / 2], ld->ns[(u64)ld->n * 99 / 100],
			ld->ns[ld->n - 1]);
	} else {
		pr_err("IRQLAT-RESULT dev=%s error=no-interrupts lost=%u\n", name, ld->lost);
	}
	ret = 0;
out:
	free_irq(ld->irq, ld);
	pci_free_irq_vectors(pdev);
	return ret;
}

static const struct pci_device_id lat_ids[] = {
	{ PCI_DEVICE(IRQT_VENDOR, IRQT_DEVICE) },
	{ PCI_DEVICE(EDU_VENDOR, EDU_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, lat_ids);

static struct pci_driver lat_driver = {
	.name = "irqlat_guest",
	.id_table = lat_ids,
	.probe = lat_probe,
};
module_pci_driver(lat_driver);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("device fire -> handler interrupt latency on irqtest and QEMU edu");
