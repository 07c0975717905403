// SPDX-License-Identifier: GPL-2.0
/*
 * vhost-probe: the small socket tool of the vhost tests (busybox has no AF_VSOCK and its nc
 * does not half-close). Built static by resources/vhost-initramfs.sh; runs in L1 and in L2.
 *
 *   vhost-probe vsock-listen PORT           accept forever; per connection read one line
 *                                           and answer "reply from CID <cid>: <line>"
 *   vhost-probe vsock-connect CID PORT MSG  connect (retrying up to 60 s), send MSG + "\n",
 *                                           print the answer line; exit 0 on an answer
 *   vhost-probe hold-cid CID                claim CID on /dev/vhost-vsock, print "held CID",
 *                                           then sleep until killed (a CID in use)
 *   vhost-probe tcp-recv PORT               accept one TCP connection, copy it to stdout
 *   vhost-probe tcp-send IPV4 PORT          connect (retrying up to 60 s), copy stdin to
 *                                           it, half-close, wait for the peer to close
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vhost.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int die(const char *what)
{
	fprintf(stderr, "vhost-probe: %s: %s\n", what, strerror(errno));
	return 1;
}

static int copy(int in, int out)
{
	char buf[65536];
	for (;;) {
		ssize_t n = read(in, buf, sizeof(buf));
		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(out, buf + off, n - off);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				return -1;
			}
			off += w;
		}
	}
}

static int connect_retry(int family, const struct sockaddr *sa, socklen_t len)
{
	for (int i = 0; i < 600; i++) {
		int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -1;
		if (connect(fd, sa, len) == 0)
			return fd;
		close(fd);
		usleep(100 * 1000);
	}
	return -1;
}

static int vsock_listen(unsigned port)
{
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
				  .svm_port = port };
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return die("socket(AF_VSOCK)");
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return die("bind");
	if (listen(fd, 8) < 0)
		return die("listen");
	unsigned cid = 0;
	ioctl(open("/dev/vsock", O_RDONLY), IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid);
	printf("vsock listening on port %u (local CID %u)\n", port, cid);
	fflush(stdout);
	for (;;) {
		int c = accept(fd, NULL, NULL);
		if (c < 0)
			continue;
		char line[256];
		ssize_t n = 0;
		while (n < (ssize_t)sizeof(line) - 1) {
			ssize_t r = read(c, line + n, 1);
			if (r <= 0 || line[n] == '\n')
				break;
			n++;
		}
		line[n] = 0;
		dprintf(c, "reply from CID %u: %s\n", cid, line);
		close(c);
	}
}

static int vsock_connect(unsigned cid, unsigned port, const char *msg)
{
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
	int fd = connect_retry(AF_VSOCK, (struct sockaddr *)&sa, sizeof(sa));
	if (fd < 0)
		return die("connect(AF_VSOCK)");
	dprintf(fd, "%s\n", msg);
	char buf[512];
	ssize_t n = 0, r;
	while (n < (ssize_t)sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
		n += r;
	buf[n] = 0;
	if (n == 0) {
		fprintf(stderr, "vhost-probe: no answer\n");
		return 1;
	}
	printf("%s", buf);
	return 0;
}

static int hold_cid(unsigned long long cid)
{
	uint64_t c = cid;
	int fd = open("/dev/vhost-vsock", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return die("/dev/vhost-vsock");
	if (ioctl(fd, VHOST_VSOCK_SET_GUEST_CID, &c) < 0)
		return die("VHOST_VSOCK_SET_GUEST_CID");
	printf("held %llu\n", cid);
	fflush(stdout);
	for (;;)
		pause();
}

static int tcp_recv(unsigned port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_ANY) };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return die("bind");
	if (listen(fd, 1) < 0)
		return die("listen");
	int c = accept(fd, NULL, NULL);
	if (c < 0)
		return die("accept");
	if (copy(c, 1) < 0)
		return die("receive");
	return 0;
}

static int tcp_send(const char *ip, unsigned port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
		fprintf(stderr, "vhost-probe: bad address %s\n", ip);
		return 2;
	}
	int fd = connect_retry(AF_INET, (struct sockaddr *)&sa, sizeof(sa));
	if (fd < 0)
		return die("connect");
	if (copy(0, fd) < 0)
		return die("send");
	shutdown(fd, SHUT_WR);
	char b[64];
	while (read(fd, b, sizeof(b)) > 0)
		;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "vsock-listen"))
		return vsock_listen(strtoul(argv[2], NULL, 0));
	if (argc == 5 && !strcmp(argv[1], "vsock-connect"))
		return vsock_connect(strtoul(argv[2], NULL, 0), strtoul(argv[3], NULL, 0), argv[4]);
	if (argc == 3 && !strcmp(argv[1], "hold-cid"))
		return hold_cid(strtoull(argv[2], NULL, 0));
	if (argc == 3 && !strcmp(argv[1], "tcp-recv"))
		return tcp_recv(strtoul(argv[2], NULL, 0));
	if (argc == 4 && !strcmp(argv[1], "tcp-send"))
		return tcp_send(argv[2], strtoul(argv[3], NULL, 0));
	fprintf(stderr, "usage: vhost-probe vsock-listen PORT | vsock-connect CID PORT MSG | "
			"hold-cid CID | tcp-recv PORT | tcp-send IPV4 PORT\n");
	return 2;
}
