// SPDX-License-Identifier: Apache-2.0
// blkbench: O_DIRECT reads of a block device through Linux AIO at a fixed queue depth, for
// the virtio-blk benchmark (tests/tests/virtio_blk.rs). Static, no libaio: raw syscalls.
//
//   blkbench DEV randread|seqread SECONDS
//     randread: 4 KiB reads at random 4 KiB-aligned offsets, queue depth 32
//     seqread:  1 MiB reads in order (wrapping at the end), queue depth 4
// Prints: BLKBENCH mode=M bs=B qd=Q secs=S ios=N iops=X mbps=Y
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: blkbench DEV randread|seqread SECONDS\n");
        return 2;
    }
    int seq = strcmp(argv[2], "seqread") == 0;
    if (!seq && strcmp(argv[2], "randread") != 0) {
        fprintf(stderr, "blkbench: unknown mode %s\n", argv[2]);
        return 2;
    }
    double secs = atof(argv[3]);
    size_t bs = seq ? 1 << 20 : 4096;
    int qd = seq ? 4 : 32;
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0) {
        perror("blkbench: open");
        return 1;
    }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0 || size < bs * qd) {
        fprintf(stderr, "blkbench: device too small or not a block device\n");
        return 1;
    }
    uint64_t blocks = size / bs;
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, qd, &ctx) < 0) {
        perror("blkbench: io_setup");
        return 1;
    }
    struct iocb *cbs = calloc(qd, sizeof(*cbs));
    struct io_event *ev = calloc(qd, sizeof(*ev));
    uint64_t seq_next = 0;
    for (int i = 0; i < qd; i++) {
        void *buf;
        if (posix_memalign(&buf, 4096, bs)) return 1;
        cbs[i].aio_fildes = fd;
        cbs[i].aio_lio_opcode = IOCB_CMD_PREAD;
        cbs[i].aio_buf = (uint64_t)(uintptr_t)buf;
        cbs[i].aio_nbytes = bs;
        cbs[i].aio_data = i;
    }
    uint64_t ios = 0;
    double start = now(), end = start + secs;
    int inflight = 0;
    for (int i = 0; i < qd; i++) {
        struct iocb *p = &cbs[i];
        p->aio_offset = (seq ? seq_next++ % blocks : next_rand() % blocks) * bs;
        if (syscall(SYS_io_submit, ctx, 1, &p) != 1) {
            perror("blkbench: io_submit");
            return 1;
        }
        inflight++;
    }
    double t = start;
    while (inflight > 0) {
        int n = syscall(SYS_io_getevents, ctx, 1, qd, ev, NULL);
        if (n < 0) {
            perror("blkbench: io_getevents");
            return 1;
        }
        t = now();
        for (int k = 0; k < n; k++) {
            inflight--;
            if (ev[k].res != (int64_t)bs) {
                fprintf(stderr, "blkbench: short or failed read (%lld)\n", (long long)ev[k].res);
                return 1;
            }
            ios++;
            if (t < end) {
                struct iocb *p = &cbs[ev[k].data];
                p->aio_offset = (seq ? seq_next++ % blocks : next_rand() % blocks) * bs;
                if (syscall(SYS_io_submit, ctx, 1, &p) != 1) {
                    perror("blkbench: io_submit");
                    return 1;
                }
                inflight++;
            }
        }
    }
    double el = t - start;
    printf("BLKBENCH mode=%s bs=%zu qd=%d secs=%.2f ios=%llu iops=%.0f mbps=%.1f\n", argv[2], bs,
           qd, el, (unsigned long long)ios, ios / el, ios * (double)bs / el / 1e6);
    return 0;
}
