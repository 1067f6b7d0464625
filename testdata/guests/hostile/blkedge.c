/*
 * blkedge: virtqueue edge cases on virtio-blk, through the MMIO transport.
 * case= picks one:
 *
 *   indirect  a read whose chain is one indirect table of 65535
 *             descriptors (header, 65533 data buffers, status). The spec
 *             bounds a chain by the queue size (256), so the request must
 *             fail (status not OK, or used length 0); then a plain read
 *             must still work. Last, 256 copies of the big request are
 *             queued and the guest exits at once ("indirect: storm
 *             queued"): capsule must still stop promptly.
 *   align     the available ring 2 bytes past a 4-byte boundary, which
 *             the spec allows (2-byte alignment): a plain read must work
 *             and the device must not ask for a reset.
 *   nostatus  a request with no device-writable buffer at all, so no
 *             status byte: it must come back with used length 0, and a
 *             plain read must work after it.
 *
 * A plain read reads sector 0 and checks that it starts with "CAPSULE-".
 * Exit status: 0 as expected, 4 the device served what it must refuse
 * (or failed what it must serve), 2 no answer within wait= seconds
 * (default 10; a device that sets NEEDS_RESET ends the wait at once), 3
 * the device is unusable afterwards, 1 no disk.
 */
#include "kit.h"

struct blk_hdr {
	u32 type, reserved;
	u64 sector;
} __attribute__((packed));

static struct vdev d;
static struct vq *q;
static struct blk_hdr *hdr;
static u8 *data, *status;
static u32 wait_s = 10;

/* wait_used waits for the device to use every offered chain; -1 after
 * wait_s seconds, or as soon as the device asks for a reset. */
static int wait_used(void)
{
	for (u32 i = 0; i < wait_s; i++) {
		if (vq_wait_used(q, q->next_avail, 1) == 0)
			return 0;
		if (vdev_status(&d) & VS_NEEDS_RESET)
			return -1;
	}
	return -1;
}

/* plain_read reads sector 0 through descriptors 1-3; 0 if it worked. */
static int plain_read(void)
{
	hdr->type = 0, hdr->sector = 0;
	memset(data, 0, 512);
	*status = 0xee;
	vq_desc(q, 1, (u64)hdr, sizeof *hdr, VRING_DESC_F_NEXT, 2);
	vq_desc(q, 2, (u64)data, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 3);
	vq_desc(q, 3, (u64)status, 1, VRING_DESC_F_WRITE, 0);
	vq_offer(q, 1);
	vq_publish(q);
	vq_kick(&d, q);
	if (wait_used() < 0) {
		printf("plain read: no answer (device status %x)\n", vdev_status(&d));
		return -1;
	}
	u32 id, len;
	vq_get(q, &id, &len);
	int ok = *status == 0 && memcmp(data, "CAPSULE-", 8) == 0 && len == 513;
	printf("plain read: %s (status %u, used len %u, device status %x)\n", ok ? "ok" : "FAILED", *status, len,
	       vdev_status(&d));
	return ok ? 0 : -1;
}

static int case_indirect(void)
{
	const u32 n = 65535;
	volatile struct vring_desc *t = galloc(16ull * n, 4096);
	u8 *buf = galloc(512 << 10, 4096);
	t[0].addr = (u64)hdr, t[0].len = sizeof *hdr, t[0].flags = VRING_DESC_F_NEXT, t[0].next = 1;
	for (u32 i = 1; i < n - 2; i++) {
		t[i].addr = (u64)(buf + 8ull * (i - 1));
		t[i].len = 8;
		t[i].flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
		t[i].next = (u16)(i + 1);
	}
	t[n - 2].addr = (u64)(buf + 8ull * (n - 3)), t[n - 2].len = 32;
	t[n - 2].flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, t[n - 2].next = (u16)(n - 1);
	t[n - 1].addr = (u64)status, t[n - 1].len = 1, t[n - 1].flags = VRING_DESC_F_WRITE, t[n - 1].next = 0;
	vq_desc(q, 0, (u64)t, 16 * n, VRING_DESC_F_INDIRECT, 0);
	hdr->type = 0, hdr->sector = 0;
	*status = 0xee;
	vq_offer(q, 0);
	vq_publish(q);
	vq_kick(&d, q);
	if (wait_used() < 0) {
		printf("indirect: no answer (device status %x)\n", vdev_status(&d));
		return 2;
	}
	u32 id, len;
	vq_get(q, &id, &len);
	int served = len != 0 && *status == 0;
	printf("indirect: 65535-entry table %s (used len %u, status %u, device status %x)\n",
	       served ? "SERVED" : "refused", len, *status, vdev_status(&d));
	int r = served ? 4 : 0;
	if (plain_read() < 0)
		r = 3;
	for (int i = 0; i < 256; i++)
		vq_offer(q, 0);
	vq_publish(q);
	vq_kick(&d, q);
	puts("indirect: storm queued\n");
	return r;
}

static int case_align(void)
{
	u32 s = vdev_status(&d);
	printf("align: available ring at %lx\n", (u64)q->avail);
	if (plain_read() < 0 || (vdev_status(&d) & VS_NEEDS_RESET)) {
		printf("align: FAILED (device status %x, was %x)\n", vdev_status(&d), s);
		return 4;
	}
	puts("align: ok\n");
	return 0;
}

static int case_nostatus(void)
{
	hdr->type = 0, hdr->sector = 0;
	vq_desc(q, 0, (u64)hdr, sizeof *hdr, 0, 0);
	vq_offer(q, 0);
	vq_publish(q);
	vq_kick(&d, q);
	if (wait_used() < 0) {
		printf("nostatus: no answer (device status %x)\n", vdev_status(&d));
		return 2;
	}
	u32 id, len;
	vq_get(q, &id, &len);
	printf("nostatus: used len %u (device status %x)\n", len, vdev_status(&d));
	int r = len == 0 ? 0 : 4;
	if (plain_read() < 0)
		r = 3;
	return r;
}

int main(void)
{
	if (vdev_find(&d, VIRTIO_ID_BLK, 0) < 0 || vdev_begin(&d, VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC) < 0) {
		puts("blkedge: no usable virtio-blk device\n");
		return 1;
	}
	wait_s = arg_u64("wait", 10);
	q = &d.q[0];
	vq_alloc(q, 256);
	if (arg_is("case", "align"))
		q->avail = (volatile struct vring_avail *)((u8 *)q->avail + 2);
	if (vq_setup(&d, 0, q) < 0) {
		puts("blkedge: queue setup failed\n");
		return 1;
	}
	vdev_driver_ok(&d);
	hdr = galloc(sizeof *hdr, 16);
	data = galloc(512, 512);
	status = galloc(1, 1);
	if (arg_is("case", "indirect"))
		return case_indirect();
	if (arg_is("case", "align"))
		return case_align();
	if (arg_is("case", "nostatus"))
		return case_nostatus();
	puts("blkedge: case= must be indirect, align or nostatus\n");
	return 1;
}
