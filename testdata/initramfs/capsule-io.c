/*
 * capsule-io: port I/O for the shell scripts of capsule's test guests.
 *
 *     capsule-io outb PORT VALUE
 *
 * writes the byte VALUE to the I/O port PORT. Both are decimal, or hex with
 * a 0x prefix. The guest's /init uses it for the boot-time marker (port
 * 0xf5) and the exit port (0xf4).
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
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/io.h>

static const char usage[] =
	"usage: capsule-io outb PORT VALUE\n"
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

int main(int argc, char **argv)
{
	unsigned long port, value;
	int iopl_err;

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
