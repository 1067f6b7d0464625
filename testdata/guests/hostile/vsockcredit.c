/*
 * vsockcredit: a vsock guest that connects conns= times (default 32) to
 * the host's port port= (the host listens on UDS_PATH_<port>), each time
 * advertising a receive buffer of bufalloc= bytes (default 0xffffffff,
 * 4 GiB) and never reading: it posts no receive buffer at all. A host
 * service that streams data then tempts capsule to buffer up to that
 * credit. capsule must buffer no more than its own bound.
 *
 * Prints "credit: ready", waits delay= seconds (default 1), sends the
 * requests, prints "credit: requested N" and then idles until stopped
 * (--timeout or a signal).
 */
#include "kit.h"

int main(void)
{
	u32 conns = arg_u64("conns", 32), port = arg_u64("port", 5000);
	u32 bufalloc = arg_u64("bufalloc", 0xffffffffu);
	static struct vdev d;
	if (vdev_find(&d, VIRTIO_ID_VSOCK, 0) < 0 || vdev_begin(&d, VIRTIO_F_VERSION_1) < 0) {
		puts("credit: no usable vsock device\n");
		return 1;
	}
	u64 cid = *(volatile u32 *)((u8 *)d.regs + VM_CONFIG);
	struct vq *rx = &d.q[0], *tx = &d.q[1], *ev = &d.q[2];
	vq_alloc(rx, 256);
	vq_alloc(tx, 256);
	vq_alloc(ev, 256);
	if (vq_setup(&d, 0, rx) || vq_setup(&d, 1, tx) || vq_setup(&d, 2, ev)) {
		puts("credit: queue setup failed\n");
		return 1;
	}
	vdev_driver_ok(&d);
	if (conns > tx->size)
		conns = tx->size;
	struct vsock_hdr *h = galloc(sizeof *h * conns, 64);
	printf("credit: ready (cid %lu)\n", cid);
	sleep_s(arg_u64("delay", 1));
	for (u32 i = 0; i < conns; i++) {
		vsock_hdr(&h[i], cid, VSOCK_HOST_CID, 40000 + i, port, VSOCK_TYPE_STREAM, VSOCK_OP_REQUEST, 0,
			  bufalloc, 0);
		vq_desc(tx, i, (u64)&h[i], sizeof h[i], 0, 0);
		vq_offer(tx, i);
	}
	vq_publish(tx);
	vq_kick(&d, tx);
	if (vq_wait_used(tx, tx->next_avail, 5) < 0) {
		puts("credit: requests not taken\n");
		return 3;
	}
	printf("credit: requested %u\n", conns);
	for (;;)
		__asm__ volatile("hlt");
}
