/* kit.c: see kit.h. */
#include "kit.h"

struct bootinfo *kit_bootinfo;
static const char *cmdline = "";
static u32 cmdline_len;

int main(void);

void kit_start(struct bootinfo *bi)
{
	kit_bootinfo = bi;
	if (bi->magic != BOOTINFO_MAGIC) {
		puts("bad boot info\n");
		exit(2);
	}
	cmdline = (const char *)bi->cmdline;
	cmdline_len = bi->cmdline_len;
	exit(main());
}

/* ---- basics ---- */

void *memset(void *d, int c, size_t n)
{
	void *r = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return r;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *r = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return r;
}

void *memmove(void *d, const void *s, size_t n)
{
	u8 *dp = d;
	const u8 *sp = s;
	if (dp <= sp || dp >= sp + n)
		return memcpy(d, s, n);
	while (n--)
		dp[n] = sp[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

void putc(char c) { outb(0x3f8, c); }

void puts(const char *s)
{
	while (*s)
		putc(*s++);
}

static void putnum(u64 v, int base, int width, char pad, int neg)
{
	char buf[24];
	int i = 0;
	do {
		buf[i++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		buf[i++] = '-';
	while (i < width)
		putc(pad), width--;
	while (i)
		putc(buf[--i]);
}

void vprintf(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			putc(*fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, longs = 0;
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')
			longs++, fmt++;
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			puts(s ? s : "(null)");
			break;
		}
		case 'c':
			putc((char)va_arg(ap, int));
			break;
		case 'd': {
			long long v = longs ? va_arg(ap, long long) : va_arg(ap, int);
			putnum(v < 0 ? -(u64)v : (u64)v, 10, width, pad, v < 0);
			break;
		}
		case 'u':
		case 'x': {
			u64 v = longs ? va_arg(ap, u64) : va_arg(ap, u32);
			putnum(v, *fmt == 'u' ? 10 : 16, width, pad, 0);
			break;
		}
		case '%':
			putc('%');
			break;
		case 0:
			return;
		default:
			putc('%');
			putc(*fmt);
		}
	}
}

void printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

void exit(int status)
{
	outb(0xf4, (u8)status);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* ---- command line ---- */

const char *arg(const char *key, u32 *len)
{
	u32 klen = strlen(key);
	const char *found = 0;
	u32 flen = 0;
	u32 i = 0;
	while (i < cmdline_len) {
		while (i < cmdline_len && (u8)cmdline[i] <= ' ')
			i++;
		u32 start = i;
		while (i < cmdline_len && (u8)cmdline[i] > ' ')
			i++;
		u32 wlen = i - start;
		if (wlen > klen && cmdline[start + klen] == '=' && memcmp(cmdline + start, key, klen) == 0) {
			found = cmdline + start + klen + 1;
			flen = wlen - klen - 1;
		}
	}
	if (len)
		*len = flen;
	return found;
}

u64 arg_u64(const char *key, u64 def)
{
	u32 len;
	const char *v = arg(key, &len);
	if (!v || len == 0)
		return def;
	u64 x = 0;
	u32 i = 0;
	int base = 10;
	if (len > 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X'))
		base = 16, i = 2;
	for (; i < len; i++) {
		char c = v[i];
		int dig;
		if (c >= '0' && c <= '9')
			dig = c - '0';
		else if (base == 16 && c >= 'a' && c <= 'f')
			dig = c - 'a' + 10;
		else if (base == 16 && c >= 'A' && c <= 'F')
			dig = c - 'A' + 10;
		else
			return def;
		x = x * base + dig;
	}
	return x;
}

int arg_is(const char *key, const char *value)
{
	u32 len;
	const char *v = arg(key, &len);
	return v && len == strlen(value) && memcmp(v, value, len) == 0;
}

int parse_ip(const char *s, u32 len, u32 *ip)
{
	u32 v = 0, part = 0, i = 0;
	int parts = 0, digits = 0;
	for (; i < len; i++) {
		char c = s[i];
		if (c >= '0' && c <= '9') {
			part = part * 10 + (c - '0');
			if (part > 255)
				return 0;
			digits++;
		} else if (c == '.' && digits && parts < 3) {
			v = v << 8 | part;
			part = 0, digits = 0, parts++;
		} else {
			break;
		}
	}
	if (parts != 3 || !digits)
		return 0;
	*ip = v << 8 | part;
	return i;
}

/* ---- time ---- */

static u8 cmos(u8 reg)
{
	outb(0x70, reg);
	return inb(0x71);
}

u32 rtc_seconds(void)
{
	u8 s, m, h, s2;
	do {
		s = cmos(0), m = cmos(2), h = cmos(4);
		s2 = cmos(0);
	} while (s != s2);
	if (!(cmos(0x0b) & 4)) { /* BCD */
		s = (s & 15) + (s >> 4) * 10;
		m = (m & 15) + (m >> 4) * 10;
		h = (h & 15) + ((h & 0x70) >> 4) * 10;
	}
	return (u32)h * 3600 + m * 60 + s;
}

void deadline_set(struct deadline *d, u32 seconds)
{
	/* A deadline of n seconds ends when the clock has ticked n+1 times
	 * at most and n times at least: ask for n+1 ticks to wait >= n. */
	d->end = rtc_seconds() + seconds + 1;
	d->calls = 0;
}

int deadline_passed(struct deadline *d)
{
	if (++d->calls % 4096)
		return 0;
	u32 now = rtc_seconds();
	if (now + 43200 < d->end) /* the clock went past midnight */
		now += 86400;
	return now >= d->end;
}

void sleep_s(u32 seconds)
{
	struct deadline d;
	deadline_set(&d, seconds);
	while (!deadline_passed(&d))
		cpu_relax();
}

/* ---- memory ---- */

static u64 heap = KIT_HEAP;

void *galloc(u64 size, u64 align)
{
	heap = (heap + align - 1) & ~(align - 1);
	void *p = (void *)heap;
	heap += size;
	return p;
}

/* ---- virtio-mmio ---- */

u32 vm_read(struct vdev *d, u32 off) { return d->regs[off / 4]; }
void vm_write(struct vdev *d, u32 off, u32 v) { d->regs[off / 4] = v; }

int vdev_find(struct vdev *d, u32 type, int nth)
{
	for (int slot = 0; slot < VIRTIO_MMIO_SLOTS; slot++) {
		volatile u32 *r = (volatile u32 *)(VIRTIO_MMIO_BASE + (u64)slot * VIRTIO_MMIO_STRIDE);
		if (r[VM_MAGIC / 4] != 0x74726976 || r[VM_VERSION / 4] != 2 || r[VM_DEVICE_ID / 4] != type)
			continue;
		if (nth-- > 0)
			continue;
		/* d->q is kept: a driver may find its device again after a
		 * reset and keep its ring memory. */
		d->slot = slot;
		d->regs = r;
		d->type = type;
		d->offered = d->features = 0;
		return 0;
	}
	return -1;
}

u32 vdev_status(struct vdev *d) { return vm_read(d, VM_STATUS); }

void vdev_reset(struct vdev *d)
{
	vm_write(d, VM_STATUS, 0);
	while (vm_read(d, VM_STATUS) != 0)
		cpu_relax();
}

int vdev_begin(struct vdev *d, u64 want)
{
	vdev_reset(d);
	vm_write(d, VM_STATUS, VS_ACK);
	vm_write(d, VM_STATUS, VS_ACK | VS_DRIVER);
	vm_write(d, VM_DEV_FEATURES_SEL, 0);
	u64 f = vm_read(d, VM_DEV_FEATURES);
	vm_write(d, VM_DEV_FEATURES_SEL, 1);
	f |= (u64)vm_read(d, VM_DEV_FEATURES) << 32;
	d->offered = f;
	d->features = f & want;
	vm_write(d, VM_DRV_FEATURES_SEL, 0);
	vm_write(d, VM_DRV_FEATURES, (u32)d->features);
	vm_write(d, VM_DRV_FEATURES_SEL, 1);
	vm_write(d, VM_DRV_FEATURES, (u32)(d->features >> 32));
	vm_write(d, VM_STATUS, VS_ACK | VS_DRIVER | VS_FEATURES_OK);
	if (!(vm_read(d, VM_STATUS) & VS_FEATURES_OK))
		return -1;
	return 0;
}

void vq_alloc(struct vq *q, u16 size)
{
	q->size = size;
	q->desc = galloc(16ull * size, 4096);
	q->avail = galloc(6 + 2ull * size, 4096);
	q->used = galloc(6 + 8ull * size, 4096);
	q->next_avail = q->last_used = 0;
}

void vq_reset_indices(struct vq *q)
{
	q->avail->flags = 0;
	q->avail->idx = 0;
	q->used->flags = 0;
	q->used->idx = 0;
	q->next_avail = q->last_used = 0;
	mb();
}

int vq_setup(struct vdev *d, u32 qi, struct vq *q)
{
	q->index = qi;
	vm_write(d, VM_QUEUE_SEL, qi);
	u32 max = vm_read(d, VM_QUEUE_NUM_MAX);
	if (max == 0 || q->size > max)
		return -1;
	vm_write(d, VM_QUEUE_NUM, q->size);
	u64 desc = (u64)q->desc, avail = (u64)q->avail, used = (u64)q->used;
	vm_write(d, VM_QUEUE_DESC_LO, (u32)desc);
	vm_write(d, VM_QUEUE_DESC_HI, (u32)(desc >> 32));
	vm_write(d, VM_QUEUE_AVAIL_LO, (u32)avail);
	vm_write(d, VM_QUEUE_AVAIL_HI, (u32)(avail >> 32));
	vm_write(d, VM_QUEUE_USED_LO, (u32)used);
	vm_write(d, VM_QUEUE_USED_HI, (u32)(used >> 32));
	vm_write(d, VM_QUEUE_READY, 1);
	return 0;
}

void vdev_driver_ok(struct vdev *d)
{
	vm_write(d, VM_STATUS, VS_ACK | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
}

int vq_wait_used(struct vq *q, u16 target, u32 seconds)
{
	struct deadline dl;
	deadline_set(&dl, seconds);
	while (vq_used_idx(q) != target) {
		if (deadline_passed(&dl))
			return -1;
		cpu_relax();
	}
	return 0;
}

int vq_get(struct vq *q, u32 *id, u32 *len)
{
	if (vq_used_idx(q) == q->last_used)
		return 0;
	volatile struct vring_used_elem *e = &q->used->ring[q->last_used % q->size];
	*id = e->id;
	*len = e->len;
	q->last_used++;
	return 1;
}

/* ---- frames ---- */

const u8 mac_broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

u32 csum_add(u32 sum, const void *p, u32 len)
{
	const u8 *b = p;
	u64 s = sum;
	while (len >= 2) {
		s += (u32)(b[0] << 8 | b[1]);
		b += 2, len -= 2;
	}
	if (len)
		s += (u32)b[0] << 8;
	while (s >> 32)
		s = (s & 0xffffffff) + (s >> 32);
	return (u32)s;
}

u16 csum_fold(u32 sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

int eth_hdr(u8 *p, const u8 *dst, const u8 *src, u16 type)
{
	memcpy(p, dst, 6);
	memcpy(p + 6, src, 6);
	put16(p + 12, type);
	return ETH_LEN;
}

int arp_frame(u8 *p, u16 op, const u8 *src_mac, u32 src_ip, const u8 *dst_mac, u32 dst_ip)
{
	static const u8 zero[6];
	eth_hdr(p, op == 1 ? mac_broadcast : dst_mac, src_mac, 0x0806);
	u8 *a = p + ETH_LEN;
	put16(a, 1);      /* Ethernet */
	put16(a + 2, 0x0800);
	a[4] = 6, a[5] = 4;
	put16(a + 6, op);
	memcpy(a + 8, src_mac, 6);
	put32(a + 14, src_ip);
	memcpy(a + 18, op == 1 ? zero : dst_mac, 6);
	put32(a + 24, dst_ip);
	return ETH_LEN + 28;
}

void ip_hdr(u8 *p, u8 proto, u32 src, u32 dst, u16 payload_len, u16 id)
{
	p[0] = 0x45, p[1] = 0;
	put16(p + 2, IP_LEN + payload_len);
	put16(p + 4, id);
	put16(p + 6, 0x4000); /* don't fragment */
	p[8] = 64, p[9] = proto;
	put16(p + 10, 0);
	put32(p + 12, src);
	put32(p + 16, dst);
	put16(p + 10, csum_fold(csum_add(0, p, IP_LEN)));
}

static u32 pseudo_sum(u32 src, u32 dst, u8 proto, u16 len)
{
	u8 ph[12];
	put32(ph, src);
	put32(ph + 4, dst);
	ph[8] = 0, ph[9] = proto;
	put16(ph + 10, len);
	return csum_add(0, ph, 12);
}

int udp_frame(u8 *p, const u8 *src_mac, const u8 *dst_mac, u32 src, u16 sport, u32 dst, u16 dport,
	      const void *data, u16 len)
{
	eth_hdr(p, dst_mac, src_mac, 0x0800);
	ip_hdr(p + ETH_LEN, 17, src, dst, UDP_LEN + len, sport);
	u8 *u = p + ETH_LEN + IP_LEN;
	put16(u, sport);
	put16(u + 2, dport);
	put16(u + 4, UDP_LEN + len);
	put16(u + 6, 0);
	memcpy(u + UDP_LEN, data, len);
	u16 c = csum_fold(csum_add(pseudo_sum(src, dst, 17, UDP_LEN + len), u, UDP_LEN + len));
	put16(u + 6, c ? c : 0xffff);
	return ETH_LEN + IP_LEN + UDP_LEN + len;
}

int tcp_frame(u8 *p, const u8 *src_mac, const u8 *dst_mac, u32 src, u16 sport, u32 dst, u16 dport,
	      u32 seq, u32 ack, u8 flags, u16 window)
{
	int opt = (flags & TCP_SYN) ? 4 : 0; /* MSS option on a SYN */
	u16 tlen = TCP_LEN + opt;
	eth_hdr(p, dst_mac, src_mac, 0x0800);
	ip_hdr(p + ETH_LEN, 6, src, dst, tlen, (u16)seq);
	u8 *t = p + ETH_LEN + IP_LEN;
	put16(t, sport);
	put16(t + 2, dport);
	put32(t + 4, seq);
	put32(t + 8, ack);
	t[12] = (u8)((tlen / 4) << 4);
	t[13] = flags;
	put16(t + 14, window);
	put16(t + 16, 0);
	put16(t + 18, 0);
	if (opt) {
		t[20] = 2, t[21] = 4;
		put16(t + 22, 1460);
	}
	put16(t + 16, csum_fold(csum_add(pseudo_sum(src, dst, 6, tlen), t, tlen)));
	return ETH_LEN + IP_LEN + tlen;
}

int dhcp_discover(u8 *p, const u8 *mac, u32 xid)
{
	u8 *ip = p + ETH_LEN, *u = ip + IP_LEN, *m = u + UDP_LEN;
	const u16 mlen = 300;
	memset(m, 0, mlen);
	m[0] = 1, m[1] = 1, m[2] = 6; /* BOOTREQUEST, Ethernet */
	put32(m + 4, xid);
	put16(m + 10, 0x8000); /* broadcast */
	memcpy(m + 28, mac, 6);
	put32(m + 236, 0x63825363);
	u8 *o = m + 240;
	*o++ = 53, *o++ = 1, *o++ = 1; /* DHCPDISCOVER */
	*o++ = 55, *o++ = 3, *o++ = 1, *o++ = 3, *o++ = 6;
	*o++ = 255;
	eth_hdr(p, mac_broadcast, mac, 0x0800);
	ip_hdr(ip, 17, 0, 0xffffffff, UDP_LEN + mlen, (u16)xid);
	put16(u, 68);
	put16(u + 2, 67);
	put16(u + 4, UDP_LEN + mlen);
	put16(u + 6, 0);
	u16 c = csum_fold(csum_add(pseudo_sum(0, 0xffffffff, 17, UDP_LEN + mlen), u, UDP_LEN + mlen));
	put16(u + 6, c ? c : 0xffff);
	return ETH_LEN + IP_LEN + UDP_LEN + mlen;
}

int parse_frame(const u8 *f, u32 len, struct pkt *k)
{
	memset(k, 0, sizeof *k);
	if (len < ETH_LEN)
		return -1;
	k->ethertype = get16(f + 12);
	k->src_mac = f + 6;
	const u8 *p = f + ETH_LEN;
	len -= ETH_LEN;
	if (k->ethertype == 0x0806) {
		if (len < 28)
			return -1;
		k->arp_op = get16(p + 6);
		k->arp_sha = p + 8;
		k->arp_sip = get32(p + 14);
		k->arp_tip = get32(p + 24);
		return 0;
	}
	if (k->ethertype != 0x0800 || len < IP_LEN || (p[0] >> 4) != 4)
		return -1;
	u32 ihl = (p[0] & 15) * 4;
	if (ihl < IP_LEN || len < ihl)
		return -1;
	k->proto = p[9];
	k->src = get32(p + 12);
	k->dst = get32(p + 16);
	p += ihl, len -= ihl;
	if ((k->proto == 6 && len >= TCP_LEN) || (k->proto == 17 && len >= UDP_LEN)) {
		k->sport = get16(p);
		k->dport = get16(p + 2);
	}
	if (k->proto == 6 && len >= TCP_LEN) {
		k->seq = get32(p + 4);
		k->ack = get32(p + 8);
		k->flags = p[13];
	}
	return 0;
}

/* ---- virtio-net ---- */

int net_open(struct net *n, int nth, u16 qsize)
{
	if (vdev_find(&n->d, VIRTIO_ID_NET, nth) < 0)
		return -1;
	struct vdev *d = &n->d;
	if (vdev_begin(d, VIRTIO_F_VERSION_1 | (1ull << 5) /* MAC */) < 0)
		return -1;
	for (int i = 0; i < 6; i++)
		n->mac[i] = ((volatile u8 *)d->regs)[VM_CONFIG + i];
	struct vq *rx = &d->q[0], *tx = &d->q[1];
	if (!n->rxbuf) {
		vq_alloc(rx, qsize);
		vq_alloc(tx, qsize);
		n->nrx = qsize;
		n->rxbuf = galloc((u64)qsize * NET_RX_BUF, 4096);
		n->txbuf = galloc((u64)qsize * NET_RX_BUF, 4096);
		for (u16 i = 0; i < tx->size; i++)
			vq_desc(tx, i, (u64)(n->txbuf + (u64)i * NET_RX_BUF), 0, 0, 0);
	}
	vq_reset_indices(rx);
	vq_reset_indices(tx);
	n->tx_next = 0;
	n->rx_pending = -1;
	for (u16 i = 0; i < n->nrx; i++) {
		vq_desc(rx, i, (u64)(n->rxbuf + (u64)i * NET_RX_BUF), NET_RX_BUF, VRING_DESC_F_WRITE, 0);
		vq_offer(rx, i);
	}
	rx->avail->idx = rx->next_avail;
	if (vq_setup(d, 0, rx) < 0 || vq_setup(d, 1, tx) < 0)
		return -1;
	vdev_driver_ok(d);
	vq_kick(d, rx);
	return 0;
}

u8 *net_tx_slot(struct net *n)
{
	u8 *b = n->txbuf + (u64)(n->tx_next % n->d.q[1].size) * NET_RX_BUF;
	memset(b, 0, NET_HDR_LEN);
	return b + NET_HDR_LEN;
}

void net_tx_post(struct net *n, u32 frame_len)
{
	struct vq *tx = &n->d.q[1];
	u16 i = n->tx_next % tx->size;
	tx->desc[i].len = NET_HDR_LEN + frame_len;
	vq_offer(tx, i);
	n->tx_next++;
}

int net_tx_flush(struct net *n, u32 seconds)
{
	struct vq *tx = &n->d.q[1];
	vq_publish(tx);
	vq_kick(&n->d, tx);
	int r = vq_wait_used(tx, tx->next_avail, seconds);
	tx->last_used = vq_used_idx(tx);
	return r;
}

int net_send(struct net *n, const u8 *frame, u32 len)
{
	memcpy(net_tx_slot(n), frame, len);
	net_tx_post(n, len);
	return net_tx_flush(n, 5);
}

const u8 *net_poll(struct net *n, u32 *len)
{
	struct vq *rx = &n->d.q[0];
	if (n->rx_pending >= 0) {
		vq_offer(rx, (u16)n->rx_pending);
		vq_publish(rx);
		vq_kick(&n->d, rx);
		n->rx_pending = -1;
	}
	u32 id, l;
	while (vq_get(rx, &id, &l)) {
		if (id >= n->nrx)
			continue;
		n->rx_frames++;
		const u8 *f = n->rxbuf + (u64)id * NET_RX_BUF + NET_HDR_LEN;
		u32 flen = l > NET_HDR_LEN ? l - NET_HDR_LEN : 0;
		struct pkt k;
		if (parse_frame(f, flen, &k) == 0 && k.ethertype == 0x0806 && k.arp_op == 1 && k.arp_tip == GUEST_IP) {
			u8 reply[64];
			u8 sha[6];
			memcpy(sha, k.arp_sha, 6);
			int rl = arp_frame(reply, 2, n->mac, GUEST_IP, sha, k.arp_sip);
			vq_offer(rx, (u16)id);
			vq_publish(rx);
			vq_kick(&n->d, rx);
			net_send(n, reply, rl);
			continue;
		}
		n->rx_pending = (int)id;
		*len = flen;
		return f;
	}
	return 0;
}

int net_arp_gateway(struct net *n, u8 *gw_mac, u32 seconds)
{
	u8 f[64];
	int l = arp_frame(f, 1, n->mac, GUEST_IP, mac_broadcast, GATEWAY_IP);
	net_send(n, f, l);
	struct deadline dl;
	deadline_set(&dl, seconds);
	while (!deadline_passed(&dl)) {
		u32 len;
		const u8 *r = net_poll(n, &len);
		struct pkt k;
		if (r && parse_frame(r, len, &k) == 0 && k.ethertype == 0x0806 && k.arp_op == 2 &&
		    k.arp_sip == GATEWAY_IP) {
			memcpy(gw_mac, k.arp_sha, 6);
			return 0;
		}
		cpu_relax();
	}
	return -1;
}

/* ---- vsock ---- */

void vsock_hdr(struct vsock_hdr *h, u64 src_cid, u64 dst_cid, u32 src_port, u32 dst_port, u16 type,
	       u16 op, u32 len, u32 buf_alloc, u32 fwd_cnt)
{
	h->src_cid = src_cid;
	h->dst_cid = dst_cid;
	h->src_port = src_port;
	h->dst_port = dst_port;
	h->len = len;
	h->type = type;
	h->op = op;
	h->flags = 0;
	h->buf_alloc = buf_alloc;
	h->fwd_cnt = fwd_cnt;
}

u64 vsock_open(struct vdev *d, const char *who)
{
	if (vdev_find(d, VIRTIO_ID_VSOCK, 0) < 0 || vdev_begin(d, VIRTIO_F_VERSION_1) < 0) {
		printf("%s: no usable vsock device\n", who);
		return 0;
	}
	u64 cid = *(volatile u32 *)((u8 *)d->regs + VM_CONFIG);
	for (int i = 0; i < 3; i++) {
		vq_alloc(&d->q[i], 256);
		if (vq_setup(d, i, &d->q[i])) {
			printf("%s: queue setup failed\n", who);
			return 0;
		}
	}
	vdev_driver_ok(d);
	return cid;
}
