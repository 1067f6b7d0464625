/*
 * tcpprobe: sends a TCP SYN to each ADDR:PORT of to= (comma-separated,
 * e.g. to=10.0.2.2:8080,10.0.2.3:80) over virtio-net and reports what
 * came back within wait= seconds (default 3): a line
 * "probe ADDR:PORT synack", "probe ADDR:PORT rst" or "probe ADDR:PORT none".
 *
 * With hold=1 a SYN-ACK is answered with an ACK, completing the
 * connection ("probe ... established"), and the guest then idles, still
 * answering ARP, until it is stopped: an idle peer for capsule's stop path.
 * Otherwise it waits linger= seconds (default 0), still answering ARP, and
 * exits 0 (1 if the network is unusable).
 */
#include "kit.h"

static struct net n;
static u8 gw[6];

static const char *probe(u32 ip, u16 port, u16 sport, u32 wait, int hold)
{
	u8 f[128];
	u32 iss = 0x10000000u + sport;
	int l = tcp_frame(f, n.mac, gw, GUEST_IP, sport, ip, port, iss, 0, TCP_SYN, 64240);
	net_send(&n, f, l);
	struct deadline dl;
	deadline_set(&dl, wait);
	while (!deadline_passed(&dl)) {
		u32 len;
		const u8 *r = net_poll(&n, &len);
		struct pkt k;
		if (!r || parse_frame(r, len, &k) < 0 || k.proto != 6 || k.src != ip || k.sport != port ||
		    k.dport != sport) {
			cpu_relax();
			continue;
		}
		if (k.flags & TCP_RST)
			return "rst";
		if ((k.flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)) {
			if (!hold)
				return "synack";
			l = tcp_frame(f, n.mac, gw, GUEST_IP, sport, ip, port, iss + 1, k.seq + 1, TCP_ACK, 64240);
			net_send(&n, f, l);
			return "established";
		}
	}
	return "none";
}

int main(void)
{
	u32 len, wait = arg_u64("wait", 3);
	int hold = arg_u64("hold", 0) != 0;
	const char *to = arg("to", &len);
	if (!to) {
		puts("tcpprobe: no to=\n");
		return 1;
	}
	if (net_open(&n, 0, 256) < 0) {
		puts("tcpprobe: no usable virtio-net device\n");
		return 1;
	}
	if (net_arp_gateway(&n, gw, 5) < 0) {
		puts("tcpprobe: no ARP reply from 10.0.2.2\n");
		return 1;
	}
	puts("tcpprobe: network up\n");
	u16 sport = 33000;
	u32 i = 0;
	while (i < len) {
		u32 ip, port = 0;
		int k = parse_ip(to + i, len - i, &ip);
		if (!k || i + k >= len || to[i + k] != ':') {
			puts("tcpprobe: bad to=\n");
			return 1;
		}
		i += k + 1;
		while (i < len && to[i] >= '0' && to[i] <= '9')
			port = port * 10 + (to[i++] - '0');
		if (i < len && to[i] == ',')
			i++;
		const char *res = probe(ip, (u16)port, sport++, wait, hold);
		printf("probe %u.%u.%u.%u:%u %s\n", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255, port, res);
	}
	if (!hold) {
		struct deadline dl;
		deadline_set(&dl, arg_u64("linger", 0));
		while (!deadline_passed(&dl)) {
			u32 l;
			net_poll(&n, &l);
			cpu_relax();
		}
		return 0;
	}
	puts("tcpprobe: holding\n");
	for (;;) {
		u32 l;
		net_poll(&n, &l);
		cpu_relax();
	}
}
