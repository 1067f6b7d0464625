/*
 * kit.h: a freestanding kit for hostile test guests of capsule.
 *
 * A guest is one C file with `int main(void)`, linked with start.S and
 * kit.c (see the Makefile): it runs in long mode, identity-mapped, with
 * interrupts off, prints on COM1, reads key=value words from its command
 * line and exits through port 0xf4 with main's result. It drives
 * virtio-mmio (version 2) devices by polling: no interrupts, split queues
 * in fixed guest memory from 16 MiB up (KIT_HEAP).
 *
 * Everything here is single-threaded and polled; the guest supervisor is
 * emulated on a PVM host (about a million instructions a second), so the
 * helpers avoid per-byte work where they can.
 */
#ifndef KIT_H
#define KIT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* ---- basics ---- */

struct bootinfo {
	u64 magic, cmdline, cmdline_len, mmap, mmap_n, cpus, ram, initrd, initrd_len;
};
#define BOOTINFO_MAGIC 0x31454c5553504143ull /* "CAPSULE1" */

extern struct bootinfo *kit_bootinfo;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

void putc(char c);
void puts(const char *s); /* no newline added */
/* printf understands %s %c %d %u %x %lu %lx %llu %llx %% and %02x-style
 * zero-padded widths; enough for test output. */
void printf(const char *fmt, ...);
void vprintf(const char *fmt, va_list ap);
__attribute__((noreturn)) void exit(int status);

/* ---- command line: whitespace-separated key=value words ---- */

/* arg returns the value of the last word key=..., and its length in *len,
 * or NULL. */
const char *arg(const char *key, u32 *len);
/* arg_u64 parses decimal or 0x-hex; def when absent or malformed. */
u64 arg_u64(const char *key, u64 def);
/* arg_is reports whether key=value is on the command line. */
int arg_is(const char *key, const char *value);
/* parse_ip parses a dotted quad into host order; returns chars used or 0. */
int parse_ip(const char *s, u32 len, u32 *ip);

/* ---- time: the CMOS clock, one-second resolution ---- */

u32 rtc_seconds(void); /* seconds since midnight (UTC) */
/* A deadline n seconds ahead; deadline_passed polls the clock only every
 * so many calls, so it can sit in a tight polling loop. */
struct deadline {
	u32 end;
	u32 calls;
};
void deadline_set(struct deadline *d, u32 seconds);
int deadline_passed(struct deadline *d);
void sleep_s(u32 seconds); /* at least seconds, at most one more */

/* ---- guest memory for queues and buffers ---- */

#define KIT_HEAP 0x1000000ull /* 16 MiB */
/* galloc hands out zeroed-at-boot memory from KIT_HEAP up, aligned. */
void *galloc(u64 size, u64 align);

/* ---- virtio-mmio (version 2) ---- */

#define VIRTIO_MMIO_BASE 0xd0000000ull
#define VIRTIO_MMIO_SLOTS 9
#define VIRTIO_MMIO_STRIDE 0x1000

enum {
	VIRTIO_ID_NET = 1,
	VIRTIO_ID_BLK = 2,
	VIRTIO_ID_RNG = 4,
	VIRTIO_ID_VSOCK = 19,
};

/* Registers (virtio 1.2, 4.2.2). */
enum {
	VM_MAGIC = 0x000, VM_VERSION = 0x004, VM_DEVICE_ID = 0x008, VM_VENDOR = 0x00c,
	VM_DEV_FEATURES = 0x010, VM_DEV_FEATURES_SEL = 0x014,
	VM_DRV_FEATURES = 0x020, VM_DRV_FEATURES_SEL = 0x024,
	VM_QUEUE_SEL = 0x030, VM_QUEUE_NUM_MAX = 0x034, VM_QUEUE_NUM = 0x038,
	VM_QUEUE_READY = 0x044, VM_QUEUE_NOTIFY = 0x050,
	VM_INT_STATUS = 0x060, VM_INT_ACK = 0x064, VM_STATUS = 0x070,
	VM_QUEUE_DESC_LO = 0x080, VM_QUEUE_DESC_HI = 0x084,
	VM_QUEUE_AVAIL_LO = 0x090, VM_QUEUE_AVAIL_HI = 0x094,
	VM_QUEUE_USED_LO = 0x0a0, VM_QUEUE_USED_HI = 0x0a4,
	VM_CONFIG_GEN = 0x0fc, VM_CONFIG = 0x100,
};

enum {
	VS_ACK = 1, VS_DRIVER = 2, VS_DRIVER_OK = 4, VS_FEATURES_OK = 8,
	VS_NEEDS_RESET = 64, VS_FAILED = 128,
};

#define VIRTIO_F_INDIRECT_DESC (1ull << 28)
#define VIRTIO_F_EVENT_IDX (1ull << 29)
#define VIRTIO_F_VERSION_1 (1ull << 32)

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4

struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
} __attribute__((packed));

struct vring_avail {
	u16 flags;
	u16 idx;
	u16 ring[];
} __attribute__((packed));

struct vring_used_elem {
	u32 id;
	u32 len;
} __attribute__((packed));

struct vring_used {
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[];
} __attribute__((packed));

struct vq {
	u32 index;
	u16 size;
	volatile struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	u16 next_avail; /* the driver's avail idx */
	u16 last_used;  /* used entries consumed */
};

struct vdev {
	int slot;
	volatile u32 *regs;
	u32 type;
	u64 offered;
	u64 features;
	struct vq q[4];
};

u32 vm_read(struct vdev *d, u32 off);
void vm_write(struct vdev *d, u32 off, u32 v);
/* vdev_find finds the nth (from 0) device of type in the slots; 0 or -1.
 * It leaves d->q as it is (zero it before the first use, e.g. static). */
int vdev_find(struct vdev *d, u32 type, int nth);
/* vdev_reset writes status 0 and waits until the device reads back 0. */
void vdev_reset(struct vdev *d);
/* vdev_begin resets, sets ACKNOWLEDGE|DRIVER, negotiates want (which
 * should include VIRTIO_F_VERSION_1) against the offered features and
 * sets FEATURES_OK; 0, or -1 if the device refused. */
int vdev_begin(struct vdev *d, u64 want);
/* vq_alloc gets ring memory for a queue of size entries (galloc, spec
 * alignments); vq_setup tells the device where the rings are and enables
 * the queue (between FEATURES_OK and DRIVER_OK). */
void vq_alloc(struct vq *q, u16 size);
int vq_setup(struct vdev *d, u32 qi, struct vq *q);
void vdev_driver_ok(struct vdev *d);
u32 vdev_status(struct vdev *d);
/* vq_reset_indices forgets queue positions (after a device reset that
 * keeps the ring memory): avail idx, used idx. */
void vq_reset_indices(struct vq *q);

static inline void vq_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	q->desc[i].addr = addr;
	q->desc[i].len = len;
	q->desc[i].flags = flags;
	q->desc[i].next = next;
}
/* vq_offer puts head in the next avail slot (not yet published). */
static inline void vq_offer(struct vq *q, u16 head)
{
	q->avail->ring[q->next_avail % q->size] = head;
	q->next_avail++;
}
/* vq_publish makes the offered heads visible (avail idx). */
static inline void vq_publish(struct vq *q)
{
	mb();
	q->avail->idx = q->next_avail;
	mb();
}
static inline void vq_kick(struct vdev *d, struct vq *q) { vm_write(d, VM_QUEUE_NOTIFY, q->index); }
static inline u16 vq_used_idx(struct vq *q)
{
	u16 v = q->used->idx;
	barrier();
	return v;
}
/* vq_wait_used polls until the used idx reaches target; 0, or -1 after
 * seconds without it. */
int vq_wait_used(struct vq *q, u16 target, u32 seconds);
/* vq_get takes the next used element, if any: 1 and *id, *len, else 0. */
int vq_get(struct vq *q, u32 *id, u32 *len);

/* ---- network frames (IPv4 over Ethernet, big-endian on the wire) ---- */

#define NET_HDR_LEN 12 /* struct virtio_net_hdr_v1 with VERSION_1 */
#define ETH_LEN 14
#define IP_LEN 20
#define UDP_LEN 8
#define TCP_LEN 20

#define IP4(a, b, c, d) (((u32)(a) << 24) | ((u32)(b) << 16) | ((u32)(c) << 8) | (u32)(d))
#define GUEST_IP IP4(10, 0, 2, 15)
#define GATEWAY_IP IP4(10, 0, 2, 2)

enum { TCP_FIN = 1, TCP_SYN = 2, TCP_RST = 4, TCP_PSH = 8, TCP_ACK = 16 };

static inline void put16(u8 *p, u16 v) { p[0] = v >> 8; p[1] = v; }
static inline void put32(u8 *p, u32 v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static inline u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static inline u32 get32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }

/* csum_add adds len bytes to a one's-complement sum; csum_fold finishes. */
u32 csum_add(u32 sum, const void *p, u32 len);
u16 csum_fold(u32 sum);

extern const u8 mac_broadcast[6];

/* Each builder writes a whole Ethernet frame at p and returns its length. */
int eth_hdr(u8 *p, const u8 *dst, const u8 *src, u16 type);
int arp_frame(u8 *p, u16 op, const u8 *src_mac, u32 src_ip, const u8 *dst_mac, u32 dst_ip);
/* ip_hdr writes a 20-byte IPv4 header with its checksum. */
void ip_hdr(u8 *p, u8 proto, u32 src, u32 dst, u16 payload_len, u16 id);
int udp_frame(u8 *p, const u8 *src_mac, const u8 *dst_mac, u32 src, u16 sport, u32 dst, u16 dport,
	      const void *data, u16 len);
int tcp_frame(u8 *p, const u8 *src_mac, const u8 *dst_mac, u32 src, u16 sport, u32 dst, u16 dport,
	      u32 seq, u32 ack, u8 flags, u16 window);
/* dhcp_discover builds a DHCPDISCOVER broadcast from mac. */
int dhcp_discover(u8 *p, const u8 *mac, u32 xid);

/* A parsed frame. */
struct pkt {
	u16 ethertype;
	const u8 *src_mac;
	/* ARP */
	u16 arp_op;
	u32 arp_sip, arp_tip;
	const u8 *arp_sha;
	/* IPv4 */
	u8 proto;
	u32 src, dst;
	u16 sport, dport;
	/* TCP */
	u32 seq, ack;
	u8 flags;
};
int parse_frame(const u8 *frame, u32 len, struct pkt *k);

/* ---- a polled virtio-net driver ---- */

#define NET_RX_BUF 2048
struct net {
	struct vdev d;
	u8 mac[6];
	u16 nrx;   /* receive buffers posted (one per rx descriptor) */
	u8 *rxbuf; /* nrx * NET_RX_BUF */
	u8 *txbuf; /* size tx slots of NET_RX_BUF */
	u16 tx_next;
	u32 rx_frames;
	int rx_pending; /* the buffer net_poll handed out last, or -1 */
};
/* net_open finds the nth virtio-net device, negotiates VERSION_1 (and the
 * MAC feature), sets up both queues of size qsize with rx buffers posted,
 * and sets DRIVER_OK. Ring memory is allocated once per struct net, so
 * net_open may be called again after a reset. */
int net_open(struct net *n, int nth, u16 qsize);
/* net_tx_slot returns the frame area (after the 12-byte header) of the
 * next transmit slot; net_tx_post queues it with the frame's length and
 * net_tx_flush publishes, kicks and waits for the device to take them. */
u8 *net_tx_slot(struct net *n);
void net_tx_post(struct net *n, u32 frame_len);
int net_tx_flush(struct net *n, u32 seconds);
int net_send(struct net *n, const u8 *frame, u32 len);
/* net_poll returns the next received frame (without the net header) and
 * its length, or NULL; ARP requests for GUEST_IP are answered on the way.
 * The buffer is recycled by the next net_poll. */
const u8 *net_poll(struct net *n, u32 *len);
/* net_arp_gateway asks for 10.0.2.2's MAC (which also teaches the user
 * network this guest's MAC); 0 on a reply within seconds. */
int net_arp_gateway(struct net *n, u8 *gw_mac, u32 seconds);

/* ---- vsock packets ---- */

struct vsock_hdr {
	u64 src_cid;
	u64 dst_cid;
	u32 src_port;
	u32 dst_port;
	u32 len;
	u16 type;
	u16 op;
	u32 flags;
	u32 buf_alloc;
	u32 fwd_cnt;
} __attribute__((packed));
_Static_assert(sizeof(struct vsock_hdr) == 44, "virtio_vsock_hdr is 44 bytes");

enum {
	VSOCK_TYPE_STREAM = 1,
	VSOCK_OP_REQUEST = 1, VSOCK_OP_RESPONSE = 2, VSOCK_OP_RST = 3, VSOCK_OP_SHUTDOWN = 4,
	VSOCK_OP_RW = 5, VSOCK_OP_CREDIT_UPDATE = 6, VSOCK_OP_CREDIT_REQUEST = 7,
};
#define VSOCK_HOST_CID 2

void vsock_hdr(struct vsock_hdr *h, u64 src_cid, u64 dst_cid, u32 src_port, u32 dst_port, u16 type,
	       u16 op, u32 len, u32 buf_alloc, u32 fwd_cnt);

/*
 * vsock_open finds the vsock device, negotiates VERSION_1 and sets up its
 * three queues (rx, tx, event) of 256 entries, then sets DRIVER_OK. It
 * returns the guest CID, or 0 after printing "WHO: ..." on failure.
 */
u64 vsock_open(struct vdev *d, const char *who);

#endif
