/*
 * netreset: resets virtio-net while the host is answering it. Each of
 * iterations= rounds (default 300) sets the device up with every receive
 * buffer posted, sends burst= frames (default 64) that make the user
 * network answer (DHCPDISCOVERs, which capsule answers at once, and ARP
 * requests for 10.0.2.2), kicks, waits a little (more each round, to
 * sweep the window in which the answers are being delivered) and resets
 * the device (status 0), so that the reset meets receive traffic.
 *
 * Every receive buffer is the same indirect table of rxdesc= one-byte
 * buffers (default 4096; the spec would bound it by the queue size, and a
 * device may refuse it, which is fine here): a long chain keeps the
 * device's receive path busy with each frame, which widens the window a
 * reset can hit. rxdesc=0 posts plain 2 KiB buffers instead.
 *
 * Prints "netreset: done N rounds, R frames received" and exits with
 * exit= (default 7); capsule must neither crash nor hang.
 */
#include "kit.h"

static struct vdev d;

int main(void)
{
	u32 rounds = arg_u64("iterations", 300), burst = arg_u64("burst", 64);
	u32 maxdelay = arg_u64("maxdelay", 512), rxdesc = arg_u64("rxdesc", 4096);
	int status = arg_u64("exit", 7);
	if (burst > 256)
		burst = 256;
	if (rxdesc > 65535)
		rxdesc = 65535;
	struct vq *rx = &d.q[0], *tx = &d.q[1];
	vq_alloc(rx, 256);
	vq_alloc(tx, 256);
	u8 *rxbuf = galloc(rxdesc ? rxdesc : 2048, 4096);
	volatile struct vring_desc *table = rxdesc ? galloc(16ull * rxdesc, 4096) : 0;
	for (u32 i = 0; i < rxdesc; i++) {
		table[i].addr = (u64)(rxbuf + i);
		table[i].len = 1;
		table[i].flags = VRING_DESC_F_WRITE | (i + 1 < rxdesc ? VRING_DESC_F_NEXT : 0);
		table[i].next = (u16)(i + 1);
	}
	if (rxdesc)
		vq_desc(rx, 0, (u64)table, 16 * rxdesc, VRING_DESC_F_INDIRECT, 0);
	else
		vq_desc(rx, 0, (u64)rxbuf, 2048, VRING_DESC_F_WRITE, 0);
	u8 *txbuf = galloc(2 * 512, 4096);
	u8 mac[6];
	u32 received = 0;
	for (u32 r = 0; r < rounds; r++) {
		if (vdev_find(&d, VIRTIO_ID_NET, 0) < 0 ||
		    vdev_begin(&d, VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | (1ull << 5)) < 0) {
			printf("netreset: round %u: device refused set-up (status %x)\n", r, vdev_status(&d));
			return 1;
		}
		if (r == 0) {
			if (rxdesc && !(d.features & VIRTIO_F_INDIRECT_DESC)) {
				puts("netreset: no VIRTIO_F_INDIRECT_DESC; use rxdesc=0\n");
				return 1;
			}
			for (int i = 0; i < 6; i++)
				mac[i] = ((volatile u8 *)d.regs)[VM_CONFIG + i];
			/* Two frames: a DHCPDISCOVER and an ARP request. */
			memset(txbuf, 0, 1024);
			int dl = dhcp_discover(txbuf + NET_HDR_LEN, mac, 0x1234);
			int al = arp_frame(txbuf + 512 + NET_HDR_LEN, 1, mac, GUEST_IP, mac_broadcast, GATEWAY_IP);
			vq_desc(tx, 0, (u64)txbuf, NET_HDR_LEN + dl, 0, 0);
			vq_desc(tx, 1, (u64)txbuf + 512, NET_HDR_LEN + al, 0, 0);
			puts("netreset: started\n");
		}
		vq_reset_indices(rx);
		vq_reset_indices(tx);
		for (u32 i = 0; i < rx->size; i++)
			vq_offer(rx, 0); /* every receive buffer is chain 0 */
		rx->avail->idx = rx->next_avail;
		if (vq_setup(&d, 0, rx) < 0 || vq_setup(&d, 1, tx) < 0) {
			puts("netreset: queue set-up refused\n");
			return 1;
		}
		vdev_driver_ok(&d);
		for (u32 i = 0; i < burst; i++)
			vq_offer(tx, (u16)(i & 1));
		vq_publish(tx);
		vq_kick(&d, tx);
		u32 spin = (r * 37) % (maxdelay + 1);
		for (volatile u32 i = 0; i < spin; i++)
			cpu_relax();
		received += vq_used_idx(rx);
		vdev_reset(&d);
	}
	printf("netreset: done %u rounds, %u frames received\n", rounds, received);
	return status;
}
