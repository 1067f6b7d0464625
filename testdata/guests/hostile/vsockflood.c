/*
 * vsockflood: a vsock guest that never posts a receive buffer and sends
 * count= malformed packets (default op 99 on a stream to port 9999, where
 * nothing is connected), each of which capsule answers with a RST it can
 * never deliver. capsule must not queue those answers without bound.
 *
 * Every entry of the 256-entry transmit ring names the same one-descriptor
 * chain, so a batch costs the guest one index update and one kick.
 *
 * Command line: count=N (default 1000000) op=N type=N port=N delay=S
 * (seconds to wait after "flood: ready", default 1, so that the host can
 * measure capsule before the flood).
 * Prints "flood: ready", then "flood: sent N" and exits 0; exits 3 with
 * "flood: stalled after N" if the device stops taking packets for 5 s,
 * and 1 if there is no vsock device.
 */
#include "kit.h"

int main(void)
{
	u64 count = arg_u64("count", 1000000);
	u16 op = arg_u64("op", 99), type = arg_u64("type", VSOCK_TYPE_STREAM);
	u32 port = arg_u64("port", 9999);
	static struct vdev d;
	u64 cid = vsock_open(&d, "flood");
	if (!cid)
		return 1;
	struct vq *tx = &d.q[1];
	struct vsock_hdr *h = galloc(sizeof *h, 64);
	vsock_hdr(h, cid, VSOCK_HOST_CID, 1234, port, type, op, 0, 0, 0);
	vq_desc(tx, 0, (u64)h, sizeof *h, 0, 0);
	/* All ring entries stay 0: head 0 every time. */
	printf("flood: ready (cid %lu)\n", cid);
	sleep_s(arg_u64("delay", 1));
	u64 sent = 0;
	while (sent < count) {
		u16 batch = count - sent < tx->size ? (u16)(count - sent) : tx->size;
		tx->next_avail += batch;
		vq_publish(tx);
		vq_kick(&d, tx);
		if (vq_wait_used(tx, tx->next_avail, 5) < 0) {
			sent += (u16)(vq_used_idx(tx) - (u16)(tx->next_avail - batch));
			printf("flood: stalled after %lu\n", sent);
			return 3;
		}
		sent += batch;
	}
	printf("flood: sent %lu\n", sent);
	return 0;
}
