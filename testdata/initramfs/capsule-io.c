/*
 * capsule-io: port I/O for the shell scripts of capsule's test guests.
 *
 *     capsule-io outb PORT VALUE
 *     capsule-io vsock-echo CID PORT MESSAGE
 *     capsule-io vsock-serve PORT
 *     capsule-io ping IPV4ADDR
 *     capsule-io blkbench DEVICE MIB
 *     capsule-io tcpsend IPV4ADDR PORT SECONDS
 *     capsule-io conspeed LINES
 *     capsule-io fsbench DIR MIB FILES
 *
 * outb writes the byte VALUE to the I/O port PORT. Both are decimal, or hex
 * with a 0x prefix. The guest's /init uses it for the boot-time marker
 * (port 0xf5) and the exit port (0xf4).
 *
 * vsock-echo connects to vsock CID:PORT, sends MESSAGE and a newline,
 * reads the answer up to a newline and prints "vsock-echo: got: ANSWER";
 * it exits 0 when the answer equals MESSAGE. vsock-serve listens on vsock
 * PORT, prints "vsock-serve: listening on PORT", accepts one connection and
 * echoes what it reads until the peer closes; it exits 0 after echoing at
 * least one byte.
 *
 * ping sends up to three ICMP echo requests to IPV4ADDR, one a second, and
 * exits 0 at the first reply, 1 without one. Unlike busybox ping it needs
 * no POSIX timers (the minimal test kernel has none): it waits with poll.
 *
 * blkbench measures DEVICE with O_DIRECT (no guest page cache): MIB MiB of
 * sequential 1 MiB writes (then fdatasync), the same of sequential 1 MiB
 * reads, then 4 KiB reads at random offsets in that range for two
 * seconds, one at a time, and prints
 * "blkbench: seqwrite=W MB/s seqread=R MB/s randread=N IOPS".
 * tcpsend connects to IPV4ADDR:PORT and writes 64 KiB blocks for SECONDS,
 * then closes; the receiver measures.
 *
 * conspeed measures the console: it writes LINES lines of 80 characters
 * (79 and a newline, "conspeed NNNNNN " and a fixed pattern), one write(2)
 * each, to standard output (the init's is /dev/console), waits with
 * tcdrain until the UART has sent them all, and prints
 * "conspeed: N bytes in T s = X chars/s", N counting the bytes written
 * (the tty adds a carriage return to each line on the wire).
 *
 * fsbench measures the file system mounted at DIR (capsule bench --workload
 * fs mounts a shared directory there): it writes DIR/fsbench.dat, MIB MiB
 * of sequential 1 MiB writes, then fsync; drops the guest's caches (sync,
 * 3 to /proc/sys/vm/drop_caches) and reads it back in 1 MiB reads; drops
 * them again and reads 4 KiB at random offsets in it for two seconds, one
 * at a time, with readahead off (POSIX_FADV_RANDOM); removes it; creates
 * FILES empty files in DIR/fsbench.meta, then stats each, then unlinks
 * each; and extracts DIR/tree.tar into DIR/tree with busybox tar, then
 * syncfs. It prints
 * "fsbench: seqwrite=W MB/s seqread=R MB/s randread=N IOPS meta=M files/s tar=T s"
 * (M counts a file created, stat'ed and unlinked as one) and, before it,
 * "fsbench: meta create=C s stat=S s unlink=U s"; each phase prints
 * "fsbench: PHASE done in T s" as it ends.
 *
 * It asks for all ports with iopl(3) and falls back to ioperm() for the one
 * port where iopl is refused. Both need root and a kernel built with
 * CONFIG_X86_IOPL_IOPERM (ENOSYS otherwise). Since Linux 5.5, iopl() does
 * not raise the CPU's IOPL: the kernel emulates it with an all-allowed TSS
 * I/O bitmap, so both calls rely on the CPU's I/O bitmap check.
 *
 * Exit status: 0 written, 1 no port access (not root?), 2 usage error.
 * Built by internal/images with gcc -static -Os.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/io.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <fcntl.h>
#include <stdlib.h>
#include <termios.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/wait.h>

static const char usage[] =
	"usage: capsule-io outb PORT VALUE\n"
	"       capsule-io vsock-echo CID PORT MESSAGE\n"
	"       capsule-io vsock-serve PORT\n"
	"       capsule-io ping IPV4ADDR\n"
	"       capsule-io blkbench DEVICE MIB\n"
	"       capsule-io tcpsend IPV4ADDR PORT SECONDS\n"
	"       capsule-io conspeed LINES\n"
	"       capsule-io fsbench DIR MIB FILES\n"
	"  PORT 0-65535 and VALUE 0-255, decimal or hex with 0x\n";

/* parse reads a decimal or 0x-prefixed hex number of at most max. */
static int parse(const char *s, unsigned long max, unsigned long *out)
{
	unsigned long v = 0, base = 10;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (*s == '\0')
		return -1;
	for (; *s; s++) {
		unsigned long d;

		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			return -1;
		v = v * base + d;
		if (v > max)
			return -1;
	}
	*out = v;
	return 0;
}

static int vsock_echo(const char *cid_s, const char *port_s, const char *msg)
{
	unsigned long cid, port;
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK };
	char buf[4096];
	size_t n = 0, len = strlen(msg);
	int fd;

	if (parse(cid_s, 0xffffffff, &cid) != 0 || parse(port_s, 0xffffffff, &port) != 0 || len + 1 > sizeof(buf)) {
		fputs(usage, stderr);
		return 2;
	}
	sa.svm_cid = cid;
	sa.svm_port = port;
	fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		fprintf(stderr, "capsule-io: vsock connect %lu:%lu: %s\n", cid, port, strerror(errno));
		return 1;
	}
	memcpy(buf, msg, len);
	buf[len] = '\n';
	if (write(fd, buf, len + 1) != (ssize_t)(len + 1)) {
		fprintf(stderr, "capsule-io: vsock write: %s\n", strerror(errno));
		return 1;
	}
	while (n < sizeof(buf) - 1) {
		ssize_t k = read(fd, buf + n, 1);
		if (k <= 0 || buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
	printf("vsock-echo: got: %s\n", buf);
	close(fd);
	return strcmp(buf, msg) == 0 ? 0 : 1;
}

static int vsock_serve(const char *port_s)
{
	unsigned long port;
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY };
	char buf[4096];
	size_t total = 0;
	ssize_t k;
	int fd, c;

	if (parse(port_s, 0xffffffff, &port) != 0) {
		fputs(usage, stderr);
		return 2;
	}
	sa.svm_port = port;
	fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 1) != 0) {
		fprintf(stderr, "capsule-io: vsock listen on %lu: %s\n", port, strerror(errno));
		return 1;
	}
	printf("vsock-serve: listening on %lu\n", port);
	fflush(stdout);
	c = accept(fd, NULL, NULL);
	if (c < 0) {
		fprintf(stderr, "capsule-io: vsock accept: %s\n", strerror(errno));
		return 1;
	}
	while ((k = read(c, buf, sizeof(buf))) > 0) {
		if (write(c, buf, k) != k)
			return 1;
		total += k;
	}
	close(c);
	close(fd);
	printf("vsock-serve: echoed %zu bytes\n", total);
	return total > 0 ? 0 : 1;
}

static unsigned short icmp_sum(const void *p, size_t n)
{
	const unsigned char *b = p;
	unsigned long sum = 0;
	size_t i;

	for (i = 0; i + 1 < n; i += 2)
		sum += b[i] << 8 | b[i + 1];
	if (n & 1)
		sum += b[n - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons(~sum & 0xffff);
}

static int ping(const char *addr)
{
	struct sockaddr_in to = { .sin_family = AF_INET };
	int fd, seq;

	if (inet_pton(AF_INET, addr, &to.sin_addr) != 1) {
		fputs(usage, stderr);
		return 2;
	}
	fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	if (fd < 0) {
		fprintf(stderr, "capsule-io: raw socket: %s\n", strerror(errno));
		return 1;
	}
	for (seq = 1; seq <= 3; seq++) {
		struct icmphdr req = { .type = ICMP_ECHO };
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		unsigned char buf[1500];

		req.un.echo.id = htons(getpid() & 0xffff);
		req.un.echo.sequence = htons(seq);
		req.checksum = icmp_sum(&req, sizeof(req));
		if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&to, sizeof(to)) < 0) {
			fprintf(stderr, "capsule-io: ping %s: %s\n", addr, strerror(errno));
			return 1;
		}
		while (poll(&pfd, 1, 1000) == 1) {
			ssize_t n = recv(fd, buf, sizeof(buf), 0);
			struct iphdr *ip = (struct iphdr *)buf;
			struct icmphdr *rep;

			if (n < (ssize_t)sizeof(*ip) || n < ip->ihl * 4 + (ssize_t)sizeof(*rep))
				continue;
			rep = (struct icmphdr *)(buf + ip->ihl * 4);
			if (ip->saddr == to.sin_addr.s_addr && rep->type == ICMP_ECHOREPLY &&
			    rep->un.echo.id == req.un.echo.id) {
				printf("ping: reply from %s\n", addr);
				return 0;
			}
		}
	}
	printf("ping: no reply from %s\n", addr);
	return 1;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int blkbench(const char *dev, const char *mib_s)
{
	unsigned long mib, i, ios = 0;
	double t0, wr, rd, end;
	unsigned char *buf;
	int fd;

	if (parse(mib_s, 1 << 20, &mib) != 0 || mib == 0) {
		fputs(usage, stderr);
		return 2;
	}
	fd = open(dev, O_RDWR | O_DIRECT);
	if (fd < 0 || posix_memalign((void **)&buf, 4096, 1 << 20) != 0) {
		fprintf(stderr, "capsule-io: %s: %s\n", dev, strerror(errno));
		return 1;
	}
	memset(buf, 0x5a, 1 << 20);
	t0 = now();
	for (i = 0; i < mib; i++)
		if (pwrite(fd, buf, 1 << 20, (off_t)i << 20) != 1 << 20)
			goto fail;
	if (fdatasync(fd) != 0)
		goto fail;
	wr = now() - t0;
	t0 = now();
	for (i = 0; i < mib; i++)
		if (pread(fd, buf, 1 << 20, (off_t)i << 20) != 1 << 20)
			goto fail;
	rd = now() - t0;
	srand(1);
	t0 = now();
	end = t0 + 2;
	while (now() < end) {
		off_t off = ((off_t)rand() % (off_t)(mib * 256)) * 4096;

		if (pread(fd, buf, 4096, off) != 4096)
			goto fail;
		ios++;
	}
	printf("blkbench: seqwrite=%.1f MB/s seqread=%.1f MB/s randread=%.0f IOPS\n",
		mib * 1.048576 / wr, mib * 1.048576 / rd, ios / (now() - t0));
	return 0;
fail:
	fprintf(stderr, "capsule-io: blkbench %s: %s\n", dev, strerror(errno));
	return 1;
}

static int tcpsend(const char *addr, const char *port_s, const char *secs_s)
{
	struct sockaddr_in to = { .sin_family = AF_INET };
	unsigned long port, secs;
	static char buf[65536];
	double end;
	int fd;

	if (inet_pton(AF_INET, addr, &to.sin_addr) != 1 || parse(port_s, 0xffff, &port) != 0 ||
	    parse(secs_s, 3600, &secs) != 0) {
		fputs(usage, stderr);
		return 2;
	}
	to.sin_port = htons(port);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) {
		fprintf(stderr, "capsule-io: tcpsend %s:%lu: %s\n", addr, port, strerror(errno));
		return 1;
	}
	memset(buf, 'c', sizeof(buf));
	end = now() + secs;
	while (now() < end)
		if (write(fd, buf, sizeof(buf)) <= 0) {
			fprintf(stderr, "capsule-io: tcpsend: %s\n", strerror(errno));
			return 1;
		}
	close(fd);
	return 0;
}

static int conspeed(const char *lines_s)
{
	static const char pattern[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
	unsigned long lines, i;
	char line[81];
	double t0, t;

	if (parse(lines_s, 1000000, &lines) != 0 || lines == 0) {
		fputs(usage, stderr);
		return 2;
	}
	t0 = now();
	for (i = 0; i < lines; i++) {
		int n = snprintf(line, sizeof(line), "conspeed %06lu ", i % 1000000);

		while (n < 79) {
			line[n] = pattern[(n + i) % (sizeof(pattern) - 1)];
			n++;
		}
		line[79] = '\n';
		if (write(1, line, 80) != 80) {
			fprintf(stderr, "capsule-io: conspeed: %s\n", strerror(errno));
			return 1;
		}
	}
	tcdrain(1); /* ENOTTY when not a terminal: nothing to wait for */
	t = now() - t0;
	printf("conspeed: %lu bytes in %.3f s = %.0f chars/s\n", lines * 80, t, lines * 80 / t);
	return 0;
}

/* dropcaches writes back and drops the guest's page, dentry and inode
 * caches, so that the next reads go to the device. */
static int dropcaches(void)
{
	int fd;

	sync();
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd < 0 || write(fd, "3\n", 2) != 2) {
		fprintf(stderr, "capsule-io: fsbench: drop_caches: %s\n", strerror(errno));
		return -1;
	}
	close(fd);
	return 0;
}

/* progress reports a phase of fsbench as it ends, so that a run that
 * hangs shows how far it got. */
static void progress(const char *phase, double secs)
{
	printf("fsbench: %s done in %.3f s\n", phase, secs);
	fflush(stdout);
}

static int fsbench(const char *dir, const char *mib_s, const char *files_s)
{
	unsigned long mib, files, i, ios = 0;
	double t0, wr, rd, rr, cr, st, ul, tr, end;
	const char *what = "fsbench.dat";
	char name[32];
	struct stat sb;
	unsigned char *buf;
	int fd, status;
	pid_t pid;

	if (parse(mib_s, 1 << 16, &mib) != 0 || mib == 0 || parse(files_s, 1000000, &files) != 0 || files == 0) {
		fputs(usage, stderr);
		return 2;
	}
	/* Every name below is relative to DIR. */
	if (chdir(dir) != 0) {
		fprintf(stderr, "capsule-io: fsbench %s: %s\n", dir, strerror(errno));
		return 1;
	}
	if (posix_memalign((void **)&buf, 4096, 1 << 20) != 0)
		return 1;
	memset(buf, 0x5a, 1 << 20);

	/* Sequential write, then fsync. */
	t0 = now();
	fd = open("fsbench.dat", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		goto fail;
	for (i = 0; i < mib; i++)
		if (write(fd, buf, 1 << 20) != 1 << 20)
			goto fail;
	if (fsync(fd) != 0 || close(fd) != 0)
		goto fail;
	wr = now() - t0;
	progress("seqwrite", wr);

	/* Sequential read, from the device. */
	if (dropcaches() != 0)
		return 1;
	t0 = now();
	fd = open("fsbench.dat", O_RDONLY);
	if (fd < 0)
		goto fail;
	for (i = 0; i < mib; i++)
		if (read(fd, buf, 1 << 20) != 1 << 20)
			goto fail;
	close(fd);
	rd = now() - t0;
	progress("seqread", rd);

	/* 4 KiB random reads, no readahead. */
	if (dropcaches() != 0)
		return 1;
	fd = open("fsbench.dat", O_RDONLY);
	if (fd < 0)
		goto fail;
	posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
	srand(1);
	t0 = now();
	end = t0 + 2;
	while (now() < end) {
		off_t off = ((off_t)rand() % (off_t)(mib * 256)) * 4096;

		if (pread(fd, buf, 4096, off) != 4096)
			goto fail;
		ios++;
	}
	rr = now() - t0;
	progress("randread", rr);
	close(fd);
	if (unlink("fsbench.dat") != 0)
		goto fail;

	/* Metadata: create, stat and unlink FILES files. */
	what = "fsbench.meta";
	if (mkdir("fsbench.meta", 0755) != 0 || chdir("fsbench.meta") != 0)
		goto fail;
	what = name;
	t0 = now();
	for (i = 0; i < files; i++) {
		snprintf(name, sizeof(name), "f%lu", i);
		fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
		if (fd < 0 || close(fd) != 0)
			goto fail;
	}
	cr = now() - t0;
	progress("create", cr);
	t0 = now();
	for (i = 0; i < files; i++) {
		snprintf(name, sizeof(name), "f%lu", i);
		if (stat(name, &sb) != 0)
			goto fail;
	}
	st = now() - t0;
	progress("stat", st);
	t0 = now();
	for (i = 0; i < files; i++) {
		snprintf(name, sizeof(name), "f%lu", i);
		if (unlink(name) != 0)
			goto fail;
	}
	ul = now() - t0;
	progress("unlink", ul);
	what = "fsbench.meta";
	if (chdir("..") != 0 || rmdir("fsbench.meta") != 0)
		goto fail;

	/* tar x of the tree the host packed, then syncfs. */
	what = "tree";
	if (mkdir("tree", 0755) != 0)
		goto fail;
	if (dropcaches() != 0)
		return 1;
	t0 = now();
	pid = fork();
	if (pid < 0)
		goto fail;
	if (pid == 0) {
		execlp("tar", "tar", "-x", "-f", "tree.tar", "-C", "tree", (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "capsule-io: fsbench: tar -x -f %s/tree.tar failed (status %#x)\n", dir, status);
		return 1;
	}
	fd = open("tree", O_RDONLY | O_DIRECTORY);
	if (fd < 0 || syncfs(fd) != 0)
		goto fail;
	close(fd);
	tr = now() - t0;

	printf("fsbench: meta create=%.3f s stat=%.3f s unlink=%.3f s\n", cr, st, ul);
	printf("fsbench: seqwrite=%.1f MB/s seqread=%.1f MB/s randread=%.0f IOPS meta=%.0f files/s tar=%.3f s\n",
		mib * 1.048576 / wr, mib * 1.048576 / rd, ios / rr, files / (cr + st + ul), tr);
	return 0;
fail:
	fprintf(stderr, "capsule-io: fsbench %s/%s: %s\n", dir, what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	unsigned long port, value;
	int iopl_err;

	if (argc == 5 && strcmp(argv[1], "vsock-echo") == 0)
		return vsock_echo(argv[2], argv[3], argv[4]);
	if (argc == 3 && strcmp(argv[1], "vsock-serve") == 0)
		return vsock_serve(argv[2]);
	if (argc == 3 && strcmp(argv[1], "ping") == 0)
		return ping(argv[2]);
	if (argc == 4 && strcmp(argv[1], "blkbench") == 0)
		return blkbench(argv[2], argv[3]);
	if (argc == 5 && strcmp(argv[1], "tcpsend") == 0)
		return tcpsend(argv[2], argv[3], argv[4]);
	if (argc == 3 && strcmp(argv[1], "conspeed") == 0)
		return conspeed(argv[2]);
	if (argc == 5 && strcmp(argv[1], "fsbench") == 0)
		return fsbench(argv[2], argv[3], argv[4]);
	if (argc != 4 || strcmp(argv[1], "outb") != 0) {
		fputs(usage, stderr);
		return 2;
	}
	if (parse(argv[2], 0xffff, &port) != 0) {
		fprintf(stderr, "capsule-io: bad port \"%s\": want 0-65535, decimal or 0x hex\n", argv[2]);
		return 2;
	}
	if (parse(argv[3], 0xff, &value) != 0) {
		fprintf(stderr, "capsule-io: bad value \"%s\": want 0-255, decimal or 0x hex\n", argv[3]);
		return 2;
	}
	if (iopl(3) != 0) {
		iopl_err = errno;
		if (ioperm(port, 1, 1) != 0) {
			fprintf(stderr, "capsule-io: no access to port %#lx: iopl: %s, ioperm: %s\n",
				port, strerror(iopl_err), strerror(errno));
			return 1;
		}
	}
	outb((unsigned char)value, (unsigned short)port);
	return 0;
}
