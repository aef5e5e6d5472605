/* virtio.c: minimal polling drivers for virtio-mmio devices (VIRTIO 1.2,
 * MMIO register layout version 2 only): block, network and entropy, plus
 * the console commands that drive them and a "hostile driver" command that
 * submits malformed rings. No interrupts: after each notify the driver polls
 * the used ring (TSC-bounded), then acknowledges InterruptStatus.
 *
 * One request is in flight per queue at a time (except the network receive
 * queue, which is kept full of buffers, and the benchmark commands), so
 * descriptors 0..2 are reused for every request. Rings and data buffers live in .bss.noinit (the entry code
 * does not clear it; everything is initialized here before use). Guest
 * physical == virtual (identity map), and everything is below 4 GiB.
 * Protocol: README.md. */
#include "guest.h"

/* --- virtio-mmio registers (VIRTIO 1.2 section 4.2.2) --- */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_STATUS 0x060
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC_LOW 0x080
#define VM_QUEUE_DESC_HIGH 0x084
#define VM_QUEUE_DRIVER_LOW 0x090
#define VM_QUEUE_DRIVER_HIGH 0x094
#define VM_QUEUE_DEVICE_LOW 0x0a0
#define VM_QUEUE_DEVICE_HIGH 0x0a4
#define VM_CONFIG_GENERATION 0x0fc
#define VM_CONFIG 0x100

#define VIRTIO_MAGIC 0x74726976 /* "virt" */

/* Where to look: our VMM (boot/x86_64/layout.h kVirtioMmioBase), then QEMU
 * microvm (VIRTIO_MMIO_BASE, 512-byte transports; 8 or 24 of them). */
#define OURS_BASE 0xd0001000u
#define OURS_STRIDE 0x1000u
#define OURS_SLOTS 16
#define QEMU_BASE 0xfeb00000u
#define QEMU_STRIDE 0x200u
#define QEMU_SLOTS 32

#define ID_NET 1
#define ID_BLK 2
#define ID_RNG 4

#define ST_ACKNOWLEDGE 0x01
#define ST_DRIVER 0x02
#define ST_DRIVER_OK 0x04
#define ST_FEATURES_OK 0x08
#define ST_NEEDS_RESET 0x40
#define ST_FAILED 0x80

#define F_VERSION_1 (1ull << 32)
#define BLK_F_RO (1ull << 5)
#define BLK_F_FLUSH (1ull << 9)
#define NET_F_MAC (1ull << 5)

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_ID_BYTES 20
#define SECTOR 512u
#define BLK_MAX_REQ (64u * 1024) /* bytes per request */
#define BLK_MAX_SECTORS 1024u    /* per command: 512 KiB */

#define NET_HDR 12 /* struct virtio_net_hdr_v1 (VERSION_1: num_buffers included) */
#define ETH_MAX 1514
#define ETH_MIN 60
#define ETH_TYPE_TEST 0x88b5 /* IEEE local experimental */
#define NET_RX_BUF (NET_HDR + ETH_MAX)
#define NET_RXQ 0
#define NET_TXQ 1

#define RNG_MAX 64

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

#define QSIZE_MAX 16 /* we ask for min(QueueNumMax, 16), rounded down to a power of two */
#define MAX_QUEUES 2
#define MAX_VDEVS 16

/* The TSC rate is unknown; like smp.c assume ~3 GHz (timeouts are longer on a
 * slower TSC). */
#define TSC_PER_MS 3000000ull
#define REQ_TIMEOUT_MS 5000 /* one request */
#define VBAD_WAIT_MS 1000   /* vbad: how long to wait for DEVICE_NEEDS_RESET */

/* --- Split virtqueue (VIRTIO 1.2 section 2.7) --- */
struct vring_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
struct vring_avail {
  uint16_t flags;
  uint16_t idx;
  uint16_t ring[QSIZE_MAX + 1]; /* + used_event (unused: no EVENT_IDX) */
};
struct vring_used_elem {
  uint32_t id;
  uint32_t len;
};
struct vring_used {
  uint16_t flags;
  uint16_t idx;
  struct vring_used_elem ring[QSIZE_MAX];
  uint16_t avail_event;
};
/* One queue's rings: descriptor table 16-aligned, avail 2, used 4. */
struct vq_mem {
  struct vring_desc desc[QSIZE_MAX];
  struct vring_avail avail;
  struct vring_used used;
} __attribute__((aligned(64)));

struct vq {
  uint16_t size;      /* negotiated QueueNum */
  uint16_t avail_idx; /* next avail->idx we publish */
  uint16_t used_idx;  /* used elements consumed */
  struct vq_mem *m;
};

struct vdev {
  uintptr_t base;
  unsigned slot; /* 0..15: ours, 16 + i: QEMU microvm transport i */
  uint32_t id;
  uint32_t version;
  bool ready;  /* initialized, DRIVER_OK */
  bool broken; /* vbad or a timeout: needs vreset */
  unsigned nq;
  uint64_t features; /* offered by the device */
  uint64_t acked;
  struct vq q[MAX_QUEUES];
  uint8_t mac[6];
};

#define NOINIT __attribute__((section(".bss.noinit")))

static struct vq_mem vq_mem[MAX_VDEVS][MAX_QUEUES] NOINIT;
static struct vdev vdevs[MAX_VDEVS] NOINIT;
/* Block data: BLK_MAX_REQ for the plain commands; blkbench uses all of it
 * (BENCH_MAX_REQ: its requests are up to 128 KiB). */
#define BENCH_MAX_REQ (128u * 1024)
static uint8_t blk_data[BENCH_MAX_REQ] __attribute__((aligned(4096))) NOINIT;
static uint8_t net_rx[QSIZE_MAX][NET_RX_BUF + 2] __attribute__((aligned(64))) NOINIT;
static uint8_t net_tx[ETH_MAX] __attribute__((aligned(64))) NOINIT;
static uint8_t rng_buf[RNG_MAX] NOINIT;

/* Zeroed bss: small. */
static unsigned vdev_count;
static bool probed;
static struct {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
} blk_hdr;
static volatile uint8_t blk_status;
static const uint8_t net_tx_hdr[NET_HDR]; /* all zero: no offloads */

/* --- MMIO (every register access is 32 bits wide) --- */
static inline uint32_t mr32(const struct vdev *d, unsigned off) {
  return *(volatile uint32_t *)(d->base + off);
}
static inline void mw32(const struct vdev *d, unsigned off, uint32_t v) {
  *(volatile uint32_t *)(d->base + off) = v;
}
static inline uint8_t cfg8(const struct vdev *d, unsigned off) {
  return *(volatile uint8_t *)(d->base + VM_CONFIG + off);
}

static uint64_t deadline_ms(uint64_t ms) { return rdtsc() + ms * TSC_PER_MS; }

static void delay_ms(uint64_t ms) {
  uint64_t end = deadline_ms(ms);
  while (rdtsc() < end) cpu_pause();
}

/* --- Small output/parse helpers --- */
static void con_hexbytes(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    con_putc("0123456789abcdef"[p[i] >> 4]);
    con_putc("0123456789abcdef"[p[i] & 15]);
  }
}

static void con_sha256(const char *prefix, const void *data, size_t n) {
  struct sha256 s;
  uint8_t h[32];
  sha256_init(&s);
  sha256_update(&s, data, n);
  sha256_final(&s, h);
  con_puts(prefix);
  con_hexbytes(h, 32);
}

/* Splits arg at spaces into at most max words; returns the count, or max + 1
 * if there are more. */
static unsigned split_args(const char *arg, char words[][24], unsigned max) {
  unsigned n = 0;
  while (*arg) {
    while (*arg == ' ') arg++;
    if (!*arg) break;
    if (n == max) return max + 1;
    unsigned len = 0;
    while (*arg && *arg != ' ') {
      if (len < 23)
        words[n][len++] = *arg;
      else
        return max + 1; /* absurdly long word */
      arg++;
    }
    words[n][len] = 0;
    n++;
  }
  return n;
}

static void bad_argument(void) { con_puts("ERR bad argument\n"); }

/* --- Discovery --- */
static void probe_window(uintptr_t base, uintptr_t stride, unsigned n, unsigned slot0) {
  for (unsigned i = 0; i < n && vdev_count < MAX_VDEVS; i++) {
    uintptr_t b = base + i * stride;
    if (*(volatile uint32_t *)b != VIRTIO_MAGIC) continue;
    uint32_t id = *(volatile uint32_t *)(b + VM_DEVICE_ID);
    if (id == 0) continue; /* transport without a device (QEMU) */
    struct vdev *d = &vdevs[vdev_count++];
    memset(d, 0, sizeof(*d));
    d->base = b;
    d->slot = slot0 + i;
    d->id = id;
    d->version = *(volatile uint32_t *)(b + VM_VERSION);
  }
}

static void vdev_probe(void) {
  if (probed) return;
  probed = true;
  probe_window(OURS_BASE, OURS_STRIDE, OURS_SLOTS, 0);
  probe_window(QEMU_BASE, QEMU_STRIDE, QEMU_SLOTS, OURS_SLOTS);
}

/* --- Driver initialization (VIRTIO 1.2 section 3.1.1, 4.2.3) --- */
static unsigned queues_for(uint32_t id) { return id == ID_NET ? 2 : 1; }

static uint64_t wanted_features(uint32_t id) {
  switch (id) {
    case ID_BLK:
      return F_VERSION_1 | BLK_F_RO | BLK_F_FLUSH;
    case ID_NET:
      return F_VERSION_1 | NET_F_MAC;
    default:
      return F_VERSION_1;
  }
}

static bool vq_setup(struct vdev *d, unsigned qi) {
  struct vq *q = &d->q[qi];
  mw32(d, VM_QUEUE_SEL, qi);
  if (mr32(d, VM_QUEUE_READY) != 0) return false;
  uint32_t max = mr32(d, VM_QUEUE_NUM_MAX);
  if (max == 0) return false;
  uint16_t n = QSIZE_MAX;
  while (n > max) n >>= 1;
  q->m = &vq_mem[d - vdevs][qi];
  memset(q->m, 0, sizeof(*q->m));
  q->size = n;
  q->avail_idx = 0;
  q->used_idx = 0;
  uintptr_t desc = (uintptr_t)q->m->desc, avail = (uintptr_t)&q->m->avail,
            used = (uintptr_t)&q->m->used;
  mw32(d, VM_QUEUE_NUM, n);
  mw32(d, VM_QUEUE_DESC_LOW, (uint32_t)desc);
  mw32(d, VM_QUEUE_DESC_HIGH, (uint32_t)((uint64_t)desc >> 32));
  mw32(d, VM_QUEUE_DRIVER_LOW, (uint32_t)avail);
  mw32(d, VM_QUEUE_DRIVER_HIGH, (uint32_t)((uint64_t)avail >> 32));
  mw32(d, VM_QUEUE_DEVICE_LOW, (uint32_t)used);
  mw32(d, VM_QUEUE_DEVICE_HIGH, (uint32_t)((uint64_t)used >> 32));
  mw32(d, VM_QUEUE_READY, 1);
  return true;
}

static void net_fill_rx(struct vdev *d);

/* Resets and initializes d. On failure prints nothing and returns a reason. */
static const char *vdev_init(struct vdev *d) {
  d->ready = false;
  d->broken = false;
  if (d->version != 2) return "unsupported version";
  if (d->id != ID_BLK && d->id != ID_NET && d->id != ID_RNG) return "unsupported device";
  mw32(d, VM_STATUS, 0);
  uint64_t end = deadline_ms(1000);
  while (mr32(d, VM_STATUS) != 0)
    if (rdtsc() > end) return "reset did not complete";
  mw32(d, VM_STATUS, ST_ACKNOWLEDGE);
  mw32(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
  mw32(d, VM_DEVICE_FEATURES_SEL, 0);
  uint64_t lo = mr32(d, VM_DEVICE_FEATURES);
  mw32(d, VM_DEVICE_FEATURES_SEL, 1);
  uint64_t hi = mr32(d, VM_DEVICE_FEATURES);
  d->features = hi << 32 | lo;
  if (!(d->features & F_VERSION_1)) {
    mw32(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FAILED);
    return "no VIRTIO_F_VERSION_1";
  }
  d->acked = d->features & wanted_features(d->id);
  mw32(d, VM_DRIVER_FEATURES_SEL, 0);
  mw32(d, VM_DRIVER_FEATURES, (uint32_t)d->acked);
  mw32(d, VM_DRIVER_FEATURES_SEL, 1);
  mw32(d, VM_DRIVER_FEATURES, (uint32_t)(d->acked >> 32));
  mw32(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
  if (!(mr32(d, VM_STATUS) & ST_FEATURES_OK)) {
    mw32(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FAILED);
    return "FEATURES_OK refused";
  }
  d->nq = queues_for(d->id);
  for (unsigned i = 0; i < d->nq; i++) {
    if (!vq_setup(d, i)) {
      mw32(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_FAILED);
      return "queue unavailable";
    }
  }
  if (d->id == ID_NET)
    for (unsigned i = 0; i < 6; i++) d->mac[i] = cfg8(d, i);
  mw32(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
  uint32_t st = mr32(d, VM_STATUS);
  if (st & (ST_NEEDS_RESET | ST_FAILED) || !(st & ST_DRIVER_OK)) return "DRIVER_OK refused";
  d->ready = true;
  if (d->id == ID_NET) net_fill_rx(d);
  return 0;
}

static void print_init_error(const char *why, const struct vdev *d) {
  con_puts("ERR virtio init: ");
  con_puts(why);
  con_puts(" status=0x");
  con_hex(mr32(d, VM_STATUS));
  con_putc('\n');
}

/* The index-th device with this id, initialized; or 0 after printing an ERR line. */
static struct vdev *vdev_get(uint32_t id, uint64_t index) {
  vdev_probe();
  for (unsigned i = 0; i < vdev_count; i++) {
    struct vdev *d = &vdevs[i];
    if (d->id != id || index--) continue;
    if (d->broken) {
      con_puts("ERR device needs vreset\n");
      return 0;
    }
    if (!d->ready) {
      const char *why = vdev_init(d);
      if (why) {
        print_init_error(why, d);
        return 0;
      }
    }
    return d;
  }
  con_puts("ERR no device\n");
  return 0;
}

/* --- Queue operations --- */
static void vq_publish(struct vq *q, uint16_t head) {
  q->m->avail.ring[q->avail_idx % q->size] = head;
  barrier(); /* the entry before the index (x86 keeps stores in order) */
  q->avail_idx++;
  *(volatile uint16_t *)&q->m->avail.idx = q->avail_idx;
  barrier();
}

static void vq_kick(struct vdev *d, unsigned qi, uint16_t head) {
  vq_publish(&d->q[qi], head);
  mw32(d, VM_QUEUE_NOTIFY, qi);
}

static bool vq_has_used(const struct vq *q) {
  return *(volatile uint16_t *)&q->m->used.idx != q->used_idx;
}

static void vq_take_used(struct vdev *d, struct vq *q, uint32_t *id, uint32_t *len) {
  barrier(); /* read the element (and the buffers) after the index */
  volatile struct vring_used_elem *e = &q->m->used.ring[q->used_idx % q->size];
  *id = e->id;
  *len = e->len;
  q->used_idx++;
  uint32_t isr = mr32(d, VM_INTERRUPT_STATUS);
  if (isr) mw32(d, VM_INTERRUPT_ACK, isr);
}

enum { VQ_OK, VQ_TIMEOUT, VQ_BADUSED };

/* Waits for the one outstanding chain (head `head`) on queue qi. */
static int vq_wait(struct vdev *d, unsigned qi, uint16_t head, uint32_t *len) {
  struct vq *q = &d->q[qi];
  uint64_t end = deadline_ms(REQ_TIMEOUT_MS);
  while (!vq_has_used(q)) {
    if (rdtsc() > end) {
      d->broken = true; /* the device still owns the buffers */
      return VQ_TIMEOUT;
    }
    cpu_pause();
  }
  uint32_t id;
  vq_take_used(d, q, &id, len);
  if (id != head) {
    d->broken = true;
    return VQ_BADUSED;
  }
  return VQ_OK;
}

static void set_desc(struct vring_desc *x, const volatile void *addr, uint32_t len, uint16_t flags,
                     uint16_t next) {
  x->addr = (uint64_t)(uintptr_t)addr;
  x->len = len;
  x->flags = flags;
  x->next = next;
}

/* Prints "<name> timeout" / "<name> badused" for a failed wait. */
static void print_vq_error(const char *name, int r) {
  con_puts(name);
  con_puts(r == VQ_TIMEOUT ? " timeout\n" : " badused\n");
}

/* --- Block (VIRTIO 1.2 section 5.2) --- */

/* One request: header, optional data (device-writable for reads), status.
 * Returns VQ_*; *status gets the device's status byte. */
static int blk_request(struct vdev *d, uint32_t type, uint64_t sector, void *data, uint32_t len,
                       bool data_writable, uint8_t *status) {
  struct vring_desc *desc = d->q[0].m->desc;
  blk_hdr.type = type;
  blk_hdr.reserved = 0;
  blk_hdr.sector = sector;
  blk_status = 0xff;
  unsigned n = 1;
  set_desc(&desc[0], &blk_hdr, sizeof(blk_hdr), DESC_F_NEXT, 1);
  if (len) {
    set_desc(&desc[1], data, len, DESC_F_NEXT | (data_writable ? DESC_F_WRITE : 0), 2);
    n = 2;
  }
  set_desc(&desc[n], &blk_status, 1, DESC_F_WRITE, 0);
  vq_kick(d, 0, 0);
  uint32_t used_len;
  int r = vq_wait(d, 0, 0, &used_len);
  barrier();
  *status = blk_status;
  return r;
}

/* Optional trailing device index argument: words[i] if present. */
static bool dev_index(char words[][24], unsigned n, unsigned i, uint64_t *dev) {
  *dev = 0;
  return n <= i || parse_dec(words[i], MAX_VDEVS, dev);
}

static void blkinfo_u(const char *arg) {
  char w[2][24];
  unsigned n = split_args(arg, w, 1);
  uint64_t dev;
  if (n > 1 || !dev_index(w, n, 0, &dev)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_BLK, dev);
  if (!d) return;
  uint32_t gen, lo, hi;
  do { /* capacity is a u64: two 32-bit reads, consistent per ConfigGeneration */
    gen = mr32(d, VM_CONFIG_GENERATION);
    lo = mr32(d, VM_CONFIG);
    hi = mr32(d, VM_CONFIG + 4);
  } while (gen != mr32(d, VM_CONFIG_GENERATION));
  con_puts("BLK capacity=");
  con_dec((uint64_t)hi << 32 | lo);
  con_puts(" ro=");
  con_dec((d->features & BLK_F_RO) ? 1 : 0);
  con_puts(" features=0x");
  con_hex(d->features);
  con_putc('\n');
}

static void blkread_u(const char *arg) {
  char w[3][24];
  unsigned n = split_args(arg, w, 3);
  uint64_t sector, count, dev;
  if (n < 2 || n > 3 || !parse_dec(w[0], ~0ull, &sector) ||
      !parse_dec(w[1], BLK_MAX_SECTORS, &count) || count == 0 || !dev_index(w, n, 2, &dev)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_BLK, dev);
  if (!d) return;
  struct sha256 s;
  sha256_init(&s);
  while (count) {
    uint64_t chunk = count < BLK_MAX_REQ / SECTOR ? count : BLK_MAX_REQ / SECTOR;
    uint8_t st;
    int r = blk_request(d, BLK_T_IN, sector, blk_data, (uint32_t)(chunk * SECTOR), true, &st);
    if (r != VQ_OK) {
      print_vq_error("BLKREAD", r);
      return;
    }
    if (st != 0) {
      con_puts("BLKREAD status=");
      con_dec(st);
      con_putc('\n');
      return;
    }
    sha256_update(&s, blk_data, chunk * SECTOR);
    sector += chunk;
    count -= chunk;
  }
  uint8_t h[32];
  sha256_final(&s, h);
  con_puts("BLKREAD ok sha256=");
  con_hexbytes(h, 32);
  con_putc('\n');
}

static void blkwrite_u(const char *arg) {
  char w[4][24];
  unsigned n = split_args(arg, w, 4);
  uint64_t sector, count, seed, dev;
  if (n < 3 || n > 4 || !parse_dec(w[0], ~0ull, &sector) ||
      !parse_dec(w[1], BLK_MAX_SECTORS, &count) || count == 0 || !parse_dec(w[2], ~0ull, &seed) ||
      !dev_index(w, n, 3, &dev)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_BLK, dev);
  if (!d) return;
  while (count) {
    uint64_t chunk = count < BLK_MAX_REQ / SECTOR ? count : BLK_MAX_REQ / SECTOR;
    for (uint64_t i = 0; i < chunk; i++) {
      /* byte j of absolute sector s: (s*131 + j*7 + seed) & 0xff */
      uint8_t v = (uint8_t)((sector + i) * 131 + seed);
      uint8_t *p = blk_data + i * SECTOR;
      for (unsigned j = 0; j < SECTOR; j++, v += 7) p[j] = v;
    }
    uint8_t st;
    int r = blk_request(d, BLK_T_OUT, sector, blk_data, (uint32_t)(chunk * SECTOR), false, &st);
    if (r != VQ_OK) {
      print_vq_error("BLKWRITE", r);
      return;
    }
    if (st != 0) {
      con_puts("BLKWRITE status=");
      con_dec(st);
      con_putc('\n');
      return;
    }
    sector += chunk;
    count -= chunk;
  }
  con_puts("BLKWRITE ok\n");
}

static void blkflush_u(const char *arg) {
  char w[2][24];
  unsigned n = split_args(arg, w, 1);
  uint64_t dev;
  if (n > 1 || !dev_index(w, n, 0, &dev)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_BLK, dev);
  if (!d) return;
  uint8_t st;
  int r = blk_request(d, BLK_T_FLUSH, 0, 0, 0, false, &st);
  if (r != VQ_OK) {
    print_vq_error("BLKFLUSH", r);
    return;
  }
  con_puts("BLKFLUSH status=");
  con_dec(st);
  con_putc('\n');
}

static void blkid_u(const char *arg) {
  char w[2][24];
  unsigned n = split_args(arg, w, 1);
  uint64_t dev;
  if (n > 1 || !dev_index(w, n, 0, &dev)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_BLK, dev);
  if (!d) return;
  memset(blk_data, 0, BLK_ID_BYTES);
  uint8_t st;
  int r = blk_request(d, BLK_T_GET_ID, 0, blk_data, BLK_ID_BYTES, true, &st);
  if (r != VQ_OK) {
    print_vq_error("BLKID", r);
    return;
  }
  if (st != 0) {
    con_puts("BLKID status=");
    con_dec(st);
    con_putc('\n');
    return;
  }
  con_puts("BLKID ");
  for (unsigned i = 0; i < BLK_ID_BYTES && blk_data[i]; i++)
    con_putc(blk_data[i] >= 0x20 && blk_data[i] < 0x7f ? (char)blk_data[i] : '?');
  con_putc('\n');
}

/* --- Entropy (VIRTIO 1.2 section 5.4) --- */
static void rng_u(const char *arg) {
  uint64_t want;
  if (!parse_dec(arg, RNG_MAX, &want) || want == 0) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_RNG, 0);
  if (!d) return;
  uint64_t got = 0;
  for (unsigned tries = 0; got < want; tries++) {
    if (tries == 64) { /* the device keeps returning 0 bytes */
      print_vq_error("RNG", VQ_TIMEOUT);
      return;
    }
    set_desc(&d->q[0].m->desc[0], rng_buf + got, (uint32_t)(want - got), DESC_F_WRITE, 0);
    vq_kick(d, 0, 0);
    uint32_t len;
    int r = vq_wait(d, 0, 0, &len);
    if (r != VQ_OK) {
      print_vq_error("RNG", r);
      return;
    }
    got += len < want - got ? len : want - got;
  }
  con_puts("RNG ");
  con_hexbytes(rng_buf, want);
  con_putc('\n');
}

/* --- Network (VIRTIO 1.2 section 5.1); the first net device only --- */

/* Receive queue: descriptor i is buffer net_rx[i], all posted. */
static void net_fill_rx(struct vdev *d) {
  struct vq *q = &d->q[NET_RXQ];
  for (uint16_t i = 0; i < q->size; i++) {
    set_desc(&q->m->desc[i], net_rx[i], NET_RX_BUF, DESC_F_WRITE, 0);
    vq_publish(q, i);
  }
  mw32(d, VM_QUEUE_NOTIFY, NET_RXQ);
}

/* Sends frame[0..len) after an all-zero virtio_net_hdr_v1. */
static int net_send(struct vdev *d, const uint8_t *frame, uint32_t len) {
  struct vring_desc *desc = d->q[NET_TXQ].m->desc;
  set_desc(&desc[0], net_tx_hdr, NET_HDR, DESC_F_NEXT, 1);
  set_desc(&desc[1], frame, len, 0, 0);
  vq_kick(d, NET_TXQ, 0);
  uint32_t used_len;
  return vq_wait(d, NET_TXQ, 0, &used_len);
}

static void con_mac(const uint8_t *mac) {
  for (unsigned i = 0; i < 6; i++) {
    if (i) con_putc(':');
    con_hexbytes(mac + i, 1);
  }
}

static void netinfo_u(const char *arg) {
  (void)arg;
  struct vdev *d = vdev_get(ID_NET, 0);
  if (!d) return;
  con_puts("NET mac=");
  con_mac(d->mac);
  con_putc('\n');
}

static void netsend_u(const char *arg) {
  char w[2][24];
  unsigned n = split_args(arg, w, 2);
  uint64_t len, seed;
  if (n != 2 || !parse_dec(w[0], ETH_MAX, &len) || len < ETH_MIN ||
      !parse_dec(w[1], ~0ull, &seed)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_NET, 0);
  if (!d) return;
  memset(net_tx, 0xff, 6); /* broadcast */
  memcpy(net_tx + 6, d->mac, 6);
  net_tx[12] = ETH_TYPE_TEST >> 8;
  net_tx[13] = ETH_TYPE_TEST & 0xff;
  uint8_t v = (uint8_t)seed;
  for (uint64_t k = 14; k < len; k++) net_tx[k] = v++; /* payload byte k-14: (k-14 + seed) */
  int r = net_send(d, net_tx, (uint32_t)len);
  if (r != VQ_OK) {
    print_vq_error("NETSEND", r);
    return;
  }
  con_puts("NETSEND ok\n");
}

static void netecho_u(const char *arg) {
  char w[2][24];
  unsigned n = split_args(arg, w, 2);
  uint64_t want, ms;
  if (n != 2 || !parse_dec(w[0], 1000000, &want) || !parse_dec(w[1], 3600000, &ms)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_NET, 0);
  if (!d) return;
  struct vq *rx = &d->q[NET_RXQ];
  uint64_t end = deadline_ms(ms);
  uint64_t got = 0;
  while (got < want) {
    if (!vq_has_used(rx)) {
      if (rdtsc() > end) {
        con_puts("NETECHO timeout n=");
        con_dec(got);
        con_putc('\n');
        return;
      }
      cpu_pause();
      continue;
    }
    uint32_t id, len;
    vq_take_used(d, rx, &id, &len);
    if (id >= rx->size) {
      d->broken = true;
      print_vq_error("NETECHO", VQ_BADUSED);
      return;
    }
    uint8_t *frame = net_rx[id] + NET_HDR;
    uint32_t flen = len < NET_HDR ? 0 : len - NET_HDR;
    if (flen > ETH_MAX) flen = ETH_MAX;
    con_puts("NETRECV len=");
    con_dec(flen);
    con_sha256(" sha256=", frame, flen);
    con_putc('\n');
    got++;
    if (flen >= 14) { /* back to the sender, from us */
      memcpy(frame, frame + 6, 6);
      memcpy(frame + 6, d->mac, 6);
      int r = net_send(d, frame, flen);
      if (r != VQ_OK) {
        print_vq_error("NETECHO", r);
        return;
      }
    }
    vq_kick(d, NET_RXQ, (uint16_t)id); /* the buffer back to the device */
  }
  con_puts("NETECHO done n=");
  con_dec(got);
  con_putc('\n');
}

/* --- Benchmarks: blkbench, netbench, benchirq (README "Benchmark commands") ---
 * Requests back to back, several in flight, no hashing, timed with the TSC.
 * Like an interrupt-driven driver, these honour VRING_USED_F_NO_NOTIFY (no
 * kick while the device says it is still processing) and, in the default
 * "ack" mode, read InterruptStatus once per batch of completions and
 * acknowledge it; "benchirq off" instead sets VRING_AVAIL_F_NO_INTERRUPT and
 * never touches InterruptStatus (pure polling). */
#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY 1
#define BENCH_MAX_DEPTH 5 /* 3 descriptors per request, 16-entry queue */
#define BENCH_MAX_REQ_SECTORS (BENCH_MAX_REQ / SECTOR)
static uint8_t bench_tx[NET_HDR + ETH_MAX] __attribute__((aligned(64))) NOINIT;
static struct {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
} bench_hdr[BENCH_MAX_DEPTH];
static volatile uint8_t bench_status[BENCH_MAX_DEPTH];
static bool bench_noirq; /* benchirq off */

struct bench_stats {
  uint64_t kicks; /* QueueNotify writes */
  uint64_t isr;   /* InterruptStatus reads that were not 0 (each then acknowledged) */
};

static inline void mfence(void) { __asm__ volatile("mfence" : : : "memory"); }

/* After publishing: notify unless the device asked for no notifications. The
 * fence orders our avail->idx store before the load of used->flags (the
 * device re-checks avail after clearing the flag). */
static void bench_kick(struct vdev *d, unsigned qi, struct bench_stats *st) {
  mfence();
  if (*(volatile uint16_t *)&d->q[qi].m->used.flags & USED_F_NO_NOTIFY) return;
  mw32(d, VM_QUEUE_NOTIFY, qi);
  st->kicks++;
}

static void bench_ack(struct vdev *d, struct bench_stats *st) {
  if (bench_noirq) return;
  uint32_t isr = mr32(d, VM_INTERRUPT_STATUS);
  if (isr) {
    mw32(d, VM_INTERRUPT_ACK, isr);
    st->isr++;
  }
}

static void bench_set_irq(struct vq *q, bool noirq) {
  *(volatile uint16_t *)&q->m->avail.flags = noirq ? AVAIL_F_NO_INTERRUPT : 0;
  mfence();
}

/* Waits (bounded) until the device has used something on q. */
static bool bench_wait_used(const struct vq *q) {
  uint64_t end = deadline_ms(REQ_TIMEOUT_MS);
  while (!vq_has_used(q)) {
    if (rdtsc() > end) return false;
    cpu_pause();
  }
  barrier();
  return true;
}

/* "<name> timeout done=.. submitted=.. avail=.. used=.. used_flags=0x.. status=0x..":
 * what the driver and the rings looked like when a benchmark gave up. */
static void bench_timeout(const char *name, const struct vdev *d, const struct vq *q,
                          uint64_t done, uint64_t submitted) {
  con_puts(name);
  con_puts(" timeout done=");
  con_dec(done);
  con_puts(" submitted=");
  con_dec(submitted);
  con_puts(" avail=");
  con_dec(*(volatile uint16_t *)&q->m->avail.idx);
  con_puts(" used=");
  con_dec(*(volatile uint16_t *)&q->m->used.idx);
  con_puts(" used_flags=0x");
  con_hex(*(volatile uint16_t *)&q->m->used.flags);
  con_puts(" status=0x");
  con_hex(mr32(d, VM_STATUS));
  con_putc('\n');
}

static void bench_result(const char *prefix, uint64_t n, const char *unit, uint64_t cycles,
                         const struct bench_stats *st) {
  con_puts(prefix);
  con_puts(unit);
  con_dec(n);
  con_puts(" cycles=");
  con_dec(cycles);
  con_puts(" kicks=");
  con_dec(st->kicks);
  con_puts(" isr=");
  con_dec(st->isr);
  con_putc('\n');
}

static uint64_t blk_capacity(const struct vdev *d) {
  uint32_t gen, lo, hi;
  do { /* a u64: two 32-bit reads, consistent per ConfigGeneration */
    gen = mr32(d, VM_CONFIG_GENERATION);
    lo = mr32(d, VM_CONFIG);
    hi = mr32(d, VM_CONFIG + 4);
  } while (gen != mr32(d, VM_CONFIG_GENERATION));
  return (uint64_t)hi << 32 | lo;
}

/* Request positions, in units of the request size: sequential (wrapping at
 * the end of the disk) or uniformly random (xorshift64 with a fixed seed, so
 * every run and every VMM sees the same offsets). */
struct bench_pos {
  bool rnd;
  uint64_t x;     /* xorshift64 state */
  uint64_t next;  /* sequential: next position */
  uint64_t count; /* request-aligned positions on the disk */
};

static uint64_t bench_next_pos(struct bench_pos *p) {
  if (p->rnd) {
    p->x ^= p->x << 13;
    p->x ^= p->x >> 7;
    p->x ^= p->x << 17;
    return p->x % p->count;
  }
  uint64_t pos = p->next;
  p->next = pos + 1 == p->count ? 0 : pos + 1;
  return pos;
}

/* Slot s (descriptors 3s..3s+2, set up by blkbench_u) at the next position. */
static void blkbench_submit(struct vq *q, unsigned s, struct bench_pos *p, uint64_t req,
                            bool *busy) {
  bench_hdr[s].sector = bench_next_pos(p) * req;
  bench_status[s] = 0xff;
  busy[s] = true;
  vq_publish(q, (uint16_t)(3 * s));
}

/* blkbench <r|w> <total_sectors> <req_sectors> <seq|rand> [depth [dev]] */
static void blkbench_u(const char *arg) {
  char w[6][24];
  unsigned n = split_args(arg, w, 6);
  uint64_t total, req, depth = 1, dev = 0;
  bool write = n >= 1 && streq(w[0], "w"), rnd = n >= 4 && streq(w[3], "rand");
  if (n < 4 || n > 6 || !(write || streq(w[0], "r")) || !(rnd || streq(w[3], "seq")) ||
      !parse_dec(w[1], ~0ull, &total) ||
      !parse_dec(w[2], BENCH_MAX_REQ_SECTORS, &req) || req == 0 || total < req ||
      total % req != 0 || (n >= 5 && (!parse_dec(w[4], BENCH_MAX_DEPTH, &depth) || depth == 0)) ||
      !dev_index(w, n, 5, &dev)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_BLK, dev);
  if (!d) return;
  struct vq *q = &d->q[0];
  uint64_t positions = blk_capacity(d) / req; /* request-aligned slots on the disk */
  if (depth * 3 > q->size || positions == 0) {
    bad_argument();
    return;
  }
  uint64_t nreq = total / req;
  uint32_t bytes = (uint32_t)(req * SECTOR);
  struct vring_desc *desc = q->m->desc;
  /* All requests in flight share one data buffer (blk_data): what a read
   * brings in is not looked at, and a write's data is byte j = (j*7) & 0xff. */
  if (write)
    for (uint32_t j = 0; j < bytes; j++) blk_data[j] = (uint8_t)(j * 7);
  for (unsigned s = 0; s < depth; s++) {
    bench_hdr[s].type = write ? BLK_T_OUT : BLK_T_IN;
    bench_hdr[s].reserved = 0;
    set_desc(&desc[3 * s], &bench_hdr[s], sizeof(bench_hdr[s]), DESC_F_NEXT,
             (uint16_t)(3 * s + 1));
    set_desc(&desc[3 * s + 1], blk_data, bytes, DESC_F_NEXT | (write ? 0 : DESC_F_WRITE),
             (uint16_t)(3 * s + 2));
    set_desc(&desc[3 * s + 2], &bench_status[s], 1, DESC_F_WRITE, 0);
  }
  bench_set_irq(q, bench_noirq);
  struct bench_pos pos = {rnd, 88172645463325252ull, 0, positions};
  uint64_t submitted = 0, done = 0;
  uint8_t bad = 0;
  bool busy[BENCH_MAX_DEPTH] = {false};
  struct bench_stats st = {0, 0};
  uint64_t t0 = rdtsc();
  for (unsigned s = 0; s < depth && submitted < nreq; s++, submitted++)
    blkbench_submit(q, s, &pos, req, busy);
  bench_kick(d, 0, &st);
  while (done < submitted) {
    if (!bench_wait_used(q)) {
      d->broken = true;
      bench_set_irq(q, false);
      bench_timeout("BLKBENCH", d, q, done, submitted);
      return;
    }
    bool more = false;
    while (vq_has_used(q)) {
      barrier();
      uint32_t id = ((volatile struct vring_used_elem *)&q->m->used.ring[q->used_idx % q->size])->id;
      q->used_idx++;
      unsigned s = id / 3;
      if (id % 3 || s >= depth || !busy[s]) {
        d->broken = true;
        bench_set_irq(q, false);
        print_vq_error("BLKBENCH", VQ_BADUSED);
        return;
      }
      busy[s] = false;
      done++;
      if (bench_status[s] != 0 && !bad) bad = bench_status[s];
      if (bad || submitted == nreq) continue;
      blkbench_submit(q, s, &pos, req, busy);
      submitted++;
      more = true;
    }
    if (more) bench_kick(d, 0, &st);
    bench_ack(d, &st);
  }
  uint64_t cycles = rdtsc() - t0;
  bench_set_irq(q, false);
  if (bad) {
    con_puts("BLKBENCH status=");
    con_dec(bad);
    con_putc('\n');
    return;
  }
  bench_result("BLKBENCH ok ", nreq, "reqs=", cycles, &st);
}

/* netbench tx <frames> <len> | netbench rx <frames> <timeout_ms> */
static void netbench_u(const char *arg) {
  char w[3][24];
  unsigned n = split_args(arg, w, 3);
  uint64_t frames, v;
  bool tx = n >= 1 && streq(w[0], "tx");
  if (n != 3 || !(tx || streq(w[0], "rx")) || !parse_dec(w[1], 1000000000, &frames) ||
      frames == 0 || !parse_dec(w[2], tx ? ETH_MAX : 3600000, &v) || (tx && v < ETH_MIN)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_get(ID_NET, 0);
  if (!d) return;
  struct bench_stats st = {0, 0};
  if (tx) {
    struct vq *q = &d->q[NET_TXQ];
    /* One descriptor per frame: the zero header and the frame, contiguous; all
     * descriptors point at the same bytes (the device only reads them). */
    memset(bench_tx, 0, NET_HDR);
    uint8_t *f = bench_tx + NET_HDR;
    memset(f, 0xff, 6);
    memcpy(f + 6, d->mac, 6);
    f[12] = ETH_TYPE_TEST >> 8;
    f[13] = ETH_TYPE_TEST & 0xff;
    for (uint64_t k = 14; k < v; k++) f[k] = (uint8_t)(k - 14); /* as netsend, seed 0 */
    uint16_t free_ids[QSIZE_MAX];
    unsigned nfree = q->size;
    for (unsigned i = 0; i < q->size; i++) {
      set_desc(&q->m->desc[i], bench_tx, (uint32_t)(NET_HDR + v), 0, 0);
      free_ids[i] = (uint16_t)i;
    }
    bench_set_irq(q, bench_noirq);
    uint64_t submitted = 0, done = 0;
    uint64_t t0 = rdtsc();
    for (;;) {
      /* Refill and kick first, then acknowledge: the device works meanwhile. */
      bool more = false;
      while (nfree && submitted < frames) {
        vq_publish(q, free_ids[--nfree]);
        submitted++;
        more = true;
      }
      if (more) bench_kick(d, NET_TXQ, &st);
      if (done) bench_ack(d, &st);
      if (done == frames) break;
      if (!bench_wait_used(q)) {
        d->broken = true;
        bench_set_irq(q, false);
        bench_timeout("NETBENCH", d, q, done, submitted);
        return;
      }
      while (vq_has_used(q)) {
        barrier();
        uint32_t id =
            ((volatile struct vring_used_elem *)&q->m->used.ring[q->used_idx % q->size])->id;
        q->used_idx++;
        if (id >= q->size || nfree == q->size) {
          d->broken = true;
          bench_set_irq(q, false);
          print_vq_error("NETBENCH", VQ_BADUSED);
          return;
        }
        free_ids[nfree++] = (uint16_t)id;
        done++;
      }
    }
    uint64_t cycles = rdtsc() - t0;
    bench_set_irq(q, false);
    bench_result("NETBENCH tx ok ", frames, "frames=", cycles, &st);
    return;
  }
  /* rx: count frames (buffers posted at initialization count too), giving each
   * buffer back at once; cycles from the first frame to the last. */
  struct vq *q = &d->q[NET_RXQ];
  bench_set_irq(q, bench_noirq);
  uint64_t end = deadline_ms(v), got = 0, bytes = 0, first = 0, last = 0;
  while (got < frames) {
    if (!vq_has_used(q)) {
      if (rdtsc() > end) break;
      cpu_pause();
      continue;
    }
    bool more = false;
    while (vq_has_used(q) && got < frames) {
      barrier();
      volatile struct vring_used_elem *e = &q->m->used.ring[q->used_idx % q->size];
      uint32_t id = e->id, len = e->len;
      q->used_idx++;
      if (id >= q->size) {
        d->broken = true;
        bench_set_irq(q, false);
        print_vq_error("NETBENCH", VQ_BADUSED);
        return;
      }
      last = rdtsc();
      if (!got) first = last;
      got++;
      bytes += len < NET_HDR ? 0 : len - NET_HDR;
      vq_publish(q, (uint16_t)id); /* the buffer back to the device */
      more = true;
    }
    if (more) bench_kick(d, NET_RXQ, &st);
    bench_ack(d, &st);
  }
  bench_set_irq(q, false);
  con_puts(got == frames ? "NETBENCH rx ok frames=" : "NETBENCH rx timeout frames=");
  con_dec(got);
  con_puts(" bytes=");
  con_dec(bytes);
  con_puts(" cycles=");
  con_dec(last - first);
  con_puts(" kicks=");
  con_dec(st.kicks);
  con_puts(" isr=");
  con_dec(st.isr);
  con_putc('\n');
}

/* mmiobench <count>: count 32-bit reads of the first device's MagicValue,
 * i.e. count MMIO exits to the VMM (in user space for both VMMs). */
static void mmiobench_u(const char *arg) {
  uint64_t count;
  if (!parse_dec(arg, 100000000, &count) || count == 0) {
    bad_argument();
    return;
  }
  vdev_probe();
  if (!vdev_count) {
    con_puts("ERR no device\n");
    return;
  }
  const struct vdev *d = &vdevs[0];
  uint64_t bad = 0, t0 = rdtsc();
  for (uint64_t i = 0; i < count; i++) bad += mr32(d, VM_MAGIC) != VIRTIO_MAGIC;
  uint64_t cycles = rdtsc() - t0;
  con_puts("MMIOBENCH reads=");
  con_dec(count);
  con_puts(" cycles=");
  con_dec(cycles);
  con_puts(" bad=");
  con_dec(bad);
  con_putc('\n');
}

static void benchirq_u(const char *arg) {
  if (streq(arg, "ack"))
    bench_noirq = false;
  else if (streq(arg, "off"))
    bench_noirq = true;
  else {
    bad_argument();
    return;
  }
  con_puts(bench_noirq ? "BENCHIRQ off\n" : "BENCHIRQ ack\n");
}

/* --- Discovery listing, hostile driver, reset --- */
static void vdevs_u(const char *arg) {
  (void)arg;
  vdev_probe();
  for (unsigned i = 0; i < vdev_count; i++) {
    con_puts("VDEV slot=");
    con_dec(vdevs[i].slot);
    con_puts(" base=0x");
    con_hex(vdevs[i].base);
    con_puts(" id=");
    con_dec(vdevs[i].id);
    con_puts(" version=");
    con_dec(vdevs[i].version);
    con_putc('\n');
  }
  con_puts("VDEVS n=");
  con_dec(vdev_count);
  con_putc('\n');
}

static struct vdev *vdev_by_slot(uint64_t slot) {
  vdev_probe();
  for (unsigned i = 0; i < vdev_count; i++)
    if (vdevs[i].slot == slot) return &vdevs[i];
  return 0;
}

static void vbad_u(const char *arg) {
  char w[2][24];
  unsigned n = split_args(arg, w, 2);
  if (n != 2) {
    bad_argument();
    return;
  }
  int kind;
  if (streq(w[1], "index"))
    kind = 0;
  else if (streq(w[1], "loop"))
    kind = 1;
  else if (streq(w[1], "addr"))
    kind = 2;
  else if (streq(w[1], "availjump"))
    kind = 3;
  else {
    bad_argument();
    return;
  }
  uint64_t slot;
  if (!parse_dec(w[0], OURS_SLOTS + QEMU_SLOTS - 1, &slot)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_by_slot(slot);
  if (!d) {
    con_puts("ERR no device\n");
    return;
  }
  if (d->broken) {
    con_puts("ERR device needs vreset\n");
    return;
  }
  if (!d->ready) {
    const char *why = vdev_init(d);
    if (why) {
      print_init_error(why, d);
      return;
    }
  }
  /* The net receive queue is only read when a frame arrives: use transmit. */
  unsigned qi = d->id == ID_NET ? NET_TXQ : 0;
  struct vq *q = &d->q[qi];
  struct vring_desc *desc = q->m->desc;
  uint16_t wr = d->id == ID_RNG ? DESC_F_WRITE : 0; /* what this queue expects */
  switch (kind) {
    case 0: /* head index >= queue size */
      vq_kick(d, qi, (uint16_t)(q->size + 3));
      break;
    case 1: /* 0 -> 1 -> 0 -> ... */
      set_desc(&desc[0], blk_data, 16, DESC_F_NEXT | wr, 1);
      set_desc(&desc[1], blk_data + 16, 16, DESC_F_NEXT | wr, 0);
      vq_kick(d, qi, 0);
      break;
    case 2: /* buffer outside guest memory */
      if (d->id == ID_BLK) {
        blk_hdr.type = BLK_T_IN;
        blk_hdr.reserved = 0;
        blk_hdr.sector = 0;
        set_desc(&desc[0], &blk_hdr, sizeof(blk_hdr), DESC_F_NEXT, 1);
        set_desc(&desc[1], (void *)0xfffffffff000ull, 4096, DESC_F_NEXT | DESC_F_WRITE, 2);
        set_desc(&desc[2], &blk_status, 1, DESC_F_WRITE, 0);
      } else {
        set_desc(&desc[0], (void *)0xfffffffff000ull, 4096, wr, 0);
      }
      vq_kick(d, qi, 0);
      break;
    default: /* avail->idx moved by more than the queue size */
      q->avail_idx = (uint16_t)(q->avail_idx + q->size + 5);
      *(volatile uint16_t *)&q->m->avail.idx = q->avail_idx;
      barrier();
      mw32(d, VM_QUEUE_NOTIFY, qi);
      break;
  }
  d->ready = false;
  d->broken = true;
  uint64_t end = deadline_ms(VBAD_WAIT_MS);
  uint32_t st = mr32(d, VM_STATUS);
  while (!(st & ST_NEEDS_RESET) && rdtsc() < end) {
    delay_ms(1);
    st = mr32(d, VM_STATUS);
  }
  con_puts("VBAD status=0x");
  con_hex(st);
  con_putc('\n');
}

static void vreset_u(const char *arg) {
  uint64_t slot;
  if (!parse_dec(arg, OURS_SLOTS + QEMU_SLOTS - 1, &slot)) {
    bad_argument();
    return;
  }
  struct vdev *d = vdev_by_slot(slot);
  if (!d) {
    con_puts("ERR no device\n");
    return;
  }
  const char *why = vdev_init(d);
  if (why) {
    print_init_error(why, d);
    return;
  }
  con_puts("VRESET ok\n");
}

/* The commands run in ring 3 (user.c explains why). */
#define USER_COMMAND(name) \
  void cmd_##name(const char *arg) { user_run(name##_u, arg); }
USER_COMMAND(blkinfo)
USER_COMMAND(blkread)
USER_COMMAND(blkwrite)
USER_COMMAND(blkflush)
USER_COMMAND(blkid)
USER_COMMAND(rng)
USER_COMMAND(netinfo)
USER_COMMAND(netsend)
USER_COMMAND(netecho)
USER_COMMAND(vdevs)
USER_COMMAND(vbad)
USER_COMMAND(vreset)
USER_COMMAND(blkbench)
USER_COMMAND(netbench)
USER_COMMAND(benchirq)
USER_COMMAND(mmiobench)
