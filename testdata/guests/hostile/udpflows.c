/*
 * udpflows: sends one UDP datagram from each of flows= source ports
 * (default 2000, from sport= up, default 20000) to dst= (default
 * 10.0.2.2) port port=, 256 frames per kick. On --net user each is a new
 * flow, which capsule must not turn into one host socket per flow
 * without bound.
 *
 * Prints "udpflows: sent N", waits hold= seconds (default 2) so that the
 * host can count capsule's descriptors, and exits 0.
 */
#include "kit.h"

int main(void)
{
	u32 flows = arg_u64("flows", 2000), port = arg_u64("port", 9), sport = arg_u64("sport", 20000);
	u32 dst = GATEWAY_IP, len;
	const char *v = arg("dst", &len);
	if (v && !parse_ip(v, len, &dst)) {
		puts("udpflows: bad dst=\n");
		return 1;
	}
	static struct net n;
	if (net_open(&n, 0, 256) < 0) {
		puts("udpflows: no usable virtio-net device\n");
		return 1;
	}
	u8 gw[6];
	if (net_arp_gateway(&n, gw, 5) < 0) {
		puts("udpflows: no ARP reply from 10.0.2.2\n");
		return 1;
	}
	static const char msg[] = "capsule udp flow";
	u32 sent = 0;
	while (sent < flows) {
		u32 batch = flows - sent < 256 ? flows - sent : 256;
		for (u32 i = 0; i < batch; i++) {
			int l = udp_frame(net_tx_slot(&n), n.mac, gw, GUEST_IP, (u16)(sport + sent + i), dst,
					  (u16)port, msg, sizeof msg - 1);
			net_tx_post(&n, l);
		}
		if (net_tx_flush(&n, 5) < 0) {
			printf("udpflows: transmit stalled after %u\n", sent);
			return 3;
		}
		sent += batch;
		/* keep the receive ring moving (ARP, ICMP errors) */
		u32 l;
		while (net_poll(&n, &l))
			;
	}
	printf("udpflows: sent %u\n", sent);
	struct deadline dl;
	deadline_set(&dl, arg_u64("hold", 2));
	while (!deadline_passed(&dl)) {
		u32 l;
		net_poll(&n, &l);
		cpu_relax();
	}
	return 0;
}
