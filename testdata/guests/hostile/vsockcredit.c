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
	u64 cid = vsock_open(&d, "credit");
	if (!cid)
		return 1;
	struct vq *tx = &d.q[1];
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
