/* main.c: console (polled COM1), number helpers and the command loop.
 * The line protocol is documented in README.md. */
#include "guest.h"

/* --- struct boot_params (Linux zero page) fields we read --- */
#define BP_E820_ENTRIES 0x1e8 /* u8 */
#define BP_CMD_LINE_PTR 0x228 /* u32 */
#define BP_E820_TABLE 0x2d0   /* 20-byte packed entries */
#define BP_E820_MAX 128
#define E820_RAM 1
#define CMDLINE_MAX 0x10000

/* --- struct hvm_start_info (PVH) fields we read --- */
#define PVH_MAGIC 0x00          /* u32, 0x336ec578 */
#define PVH_CMDLINE_PADDR 24    /* u64 */
#define PVH_MEMMAP_PADDR 40     /* u64 (version >= 1) */
#define PVH_MEMMAP_ENTRIES 48   /* u32; entries are struct hvm_memmap_entry */
#define PVH_MEMMAP_MAX 1024     /* sanity bound */

#define SPIN_TICK_EVERY (1u << 16)

struct e820_entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
} __attribute__((packed));

struct hvm_memmap_entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};

/* boot_info: the zero page (BOOT_LINUX64) or hvm_start_info (BOOT_PVH). */
static const uint8_t *boot_info;
static unsigned boot_mode;

static uint32_t rd32(const uint8_t *p, unsigned off) { return *(const uint32_t *)(p + off); }
static uint64_t rd64(const uint8_t *p, unsigned off) { return *(const uint64_t *)(p + off); }

/* --- COM1, polled (no interrupts) --- */
#define UART_DATA 0 /* RBR (read) / THR (write) */
#define UART_IER 1
#define UART_LCR 3
#define UART_LSR 5
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

static void serial_init(void) {
  outb(COM1_PORT + UART_IER, 0x00); /* no UART interrupts: we poll */
  outb(COM1_PORT + UART_LCR, 0x03); /* 8N1, DLAB off; keep the VMM's divisor */
}

void con_putc(char c) {
  if (in_user_mode()) {
    user_putc(c); /* ring 3: no port I/O (see user.c) */
    return;
  }
  while (!(inb(COM1_PORT + UART_LSR) & LSR_THR_EMPTY)) cpu_pause();
  outb(COM1_PORT + UART_DATA, (uint8_t)c);
}

static char con_getc(void) {
  while (!(inb(COM1_PORT + UART_LSR) & LSR_DATA_READY)) cpu_pause();
  return (char)inb(COM1_PORT + UART_DATA);
}

void con_puts(const char *s) {
  while (*s) con_putc(*s++);
}

void con_dec(uint64_t v) {
  char buf[21];
  int i = sizeof(buf);
  buf[--i] = 0;
  do buf[--i] = (char)('0' + v % 10); while (v /= 10);
  con_puts(&buf[i]);
}

void con_hex(uint64_t v) {
  char buf[17];
  int i = sizeof(buf);
  buf[--i] = 0;
  do buf[--i] = "0123456789abcdef"[v & 15]; while (v >>= 4);
  con_puts(&buf[i]);
}

/* Decimal, digits only, no sign; fails on empty input, junk or > max. */
bool parse_dec(const char *s, uint64_t max, uint64_t *out) {
  uint64_t v = 0;
  if (!*s) return false;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    unsigned d = (unsigned)(*s - '0');
    if (v > (max - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

/* Hex with optional 0x prefix; fails on empty input, junk or > max. */
static bool parse_hex(const char *s, uint64_t max, uint64_t *out) {
  uint64_t v = 0;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s += 2;
  if (!*s) return false;
  for (; *s; s++) {
    unsigned d;
    if (*s >= '0' && *s <= '9') d = (unsigned)(*s - '0');
    else if (*s >= 'a' && *s <= 'f') d = (unsigned)(*s - 'a' + 10);
    else if (*s >= 'A' && *s <= 'F') d = (unsigned)(*s - 'A' + 10);
    else return false;
    if (v > (max >> 4)) return false;
    v = v << 4 | d;
  }
  *out = v;
  return true;
}

bool streq(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

/* --- Commands: each prints exactly one reply line (except count/spin) --- */
static void bad_argument(void) { con_puts("ERR bad argument\n"); }

static void cmd_echo(const char *arg) {
  con_puts(arg);
  con_putc('\n');
}

static void cmd_cmdline(const char *arg) {
  (void)arg;
  uint64_t ptr = boot_mode == BOOT_PVH ? rd64(boot_info, PVH_CMDLINE_PADDR)
                                       : rd32(boot_info, BP_CMD_LINE_PTR);
  con_puts("cmdline ");
  if (ptr && ptr < 0x100000000ull) { /* only the first 4 GiB are mapped */
    const char *s = (const char *)(uintptr_t)ptr;
    for (unsigned i = 0; i < CMDLINE_MAX && s[i]; i++) con_putc(s[i]);
  }
  con_putc('\n');
}

static void cmd_mem(const char *arg) {
  (void)arg;
  unsigned n;
  uint64_t total = 0;
  if (boot_mode == BOOT_PVH) {
    n = rd32(boot_info, PVH_MEMMAP_ENTRIES);
    uint64_t paddr = rd64(boot_info, PVH_MEMMAP_PADDR);
    const struct hvm_memmap_entry *e = (const struct hvm_memmap_entry *)(uintptr_t)paddr;
    if (paddr && paddr < 0x100000000ull)
      for (unsigned i = 0; i < n && i < PVH_MEMMAP_MAX; i++)
        if (e[i].type == E820_RAM) total += e[i].size;
  } else {
    n = boot_info[BP_E820_ENTRIES];
    const struct e820_entry *e = (const struct e820_entry *)(boot_info + BP_E820_TABLE);
    for (unsigned i = 0; i < n && i < BP_E820_MAX; i++)
      if (e[i].type == E820_RAM) total += e[i].size;
  }
  con_puts("mem ");
  con_dec(total);
  con_puts(" e820 ");
  con_dec(n);
  con_putc('\n');
}

static void cmd_cpus(const char *arg) {
  (void)arg;
  con_puts("cpus ");
  con_dec(mp_count_cpus());
  con_putc('\n');
}

static void cmd_smp(const char *arg) {
  (void)arg;
  unsigned ran = smp_boot_aps();
  con_puts("smp ");
  con_dec(ran);
  con_putc('\n');
}

static void cmd_probe(const char *arg) {
  uint64_t v;
  if (!parse_dec(arg, 255, &v)) {
    bad_argument();
    return;
  }
  outb(PROBE_PORT, (uint8_t)v);
  con_puts("probe ");
  con_dec(inb(PROBE_PORT));
  con_putc('\n');
}

static void cmd_mmio(const char *arg) {
  uint64_t v;
  if (!parse_dec(arg, 255, &v)) {
    bad_argument();
    return;
  }
  volatile uint8_t *mark = (volatile uint8_t *)(uintptr_t)PROBE_MMIO_BASE;
  volatile uint32_t *sig = (volatile uint32_t *)(uintptr_t)(PROBE_MMIO_BASE + 4);
  *mark = (uint8_t)v;   /* 1-byte write, offset 0 */
  uint8_t back = *mark; /* 1-byte read, offset 0 */
  uint32_t s = *sig;    /* 4-byte read, offset 4 */
  con_puts("mmio ");
  con_dec(back);
  con_puts(" sig ");
  con_hex(s);
  con_putc('\n');
}

static void cmd_exit(const char *arg) {
  uint64_t v;
  if (!parse_dec(arg, 0xffffffffu, &v)) {
    bad_argument();
    return;
  }
  /* Our VMM's exit port first: it ignores 0xf4. QEMU's isa-debug-exit
   * (iobase=0xf4, iosize=4) exits at once with status (v << 1) | 1. */
  outl(PROBE_EXIT_PORT, (uint32_t)v);
  outl(QEMU_DEBUG_EXIT_PORT, (uint32_t)v);
  con_puts("exit ignored\n");
}

static void cmd_entry(const char *arg) {
  (void)arg;
  if (boot_mode == BOOT_PVH) {
    con_puts("entry pvh magic ");
    con_hex(rd32(boot_info, PVH_MAGIC));
  } else {
    con_puts("entry linux64");
  }
  con_putc('\n');
}

static void cmd_reset(const char *arg) {
  (void)arg;
  outb(I8042_CMD_PORT, I8042_CMD_RESET);
  con_puts("reset ignored\n");
}

static void cmd_cpuid(const char *arg) {
  uint64_t leaf;
  uint32_t r[4];
  if (!parse_hex(arg, 0xffffffffu, &leaf)) {
    bad_argument();
    return;
  }
  cpuid((uint32_t)leaf, 0, r);
  con_puts("cpuid");
  for (int i = 0; i < 4; i++) {
    con_putc(' ');
    con_hex(r[i]);
  }
  con_putc('\n');
}

static void cmd_int3(const char *arg) {
  (void)arg;
  __asm__ volatile("int3" : : : "memory"); /* #BP handler prints "bp handled" */
  con_puts("int3 ok\n");
}

static void cmd_fwait(const char *arg) {
  (void)arg;
  __asm__ volatile("fwait");
  con_puts("fwait ok\n");
}

static void cmd_triple(const char *arg) {
  (void)arg;
  /* With a zero-limit IDT, int3 -> #GP -> #DF -> triple fault (shutdown). */
  struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) idtr = {0, 0};
  __asm__ volatile("lidt %0; int3" : : "m"(idtr) : "memory");
  con_puts("triple survived\n"); /* not reached */
}

static void cmd_count(const char *arg) {
  uint64_t n;
  if (!parse_dec(arg, 1000000, &n)) {
    bad_argument();
    return;
  }
  for (uint64_t i = 1; i <= n; i++) {
    con_puts("count ");
    con_dec(i);
    con_putc('\n');
  }
  con_puts("count done\n");
}

static void cmd_spin(const char *arg) {
  (void)arg;
  /* The state lives in guest RAM (not a register) so snapshot/migration
   * tests can read it and see it keep growing after a restore. */
  volatile uint64_t *counter = (volatile uint64_t *)(uintptr_t)SPIN_COUNTER_ADDR;
  *counter = 0;
  for (;;) {
    uint64_t v = *counter + 1;
    *counter = v;
    if ((v & (SPIN_TICK_EVERY - 1)) == 0) {
      con_puts("tick ");
      con_dec(v);
      con_putc('\n');
    }
  }
}

/* `dirty MIB [EVERY]`: the migration test workload (like QEMU's A/B
 * migration test guest). Forever: one pass increments the first byte of
 * every page in [DIRTY_BASE, +MIB MiB), after checking that it holds the
 * pass number (mod 256): a page a migration lost or sent stale shows up as
 * "DIRTY MISMATCH". Prints "dirty pass N" every EVERY passes (default 1).
 * Runs in ring 3 (natively fast on the project's host). */
static uint64_t dirty_pages, dirty_every;

static void dirty_u(const char *arg) {
  (void)arg;
  volatile uint8_t *base = (volatile uint8_t *)(uintptr_t)DIRTY_BASE;
  for (uint64_t pass = 0;; pass++) {
    uint8_t want = (uint8_t)pass;
    for (uint64_t p = 0; p < dirty_pages; p++) {
      volatile uint8_t *b = base + p * 4096;
      uint8_t v = *b;
      if (v != want) {
        con_puts("DIRTY MISMATCH page ");
        con_dec(p);
        con_puts(" has ");
        con_dec(v);
        con_puts(" want ");
        con_dec(want);
        con_putc('\n');
        for (;;) cpu_pause();
      }
      *b = (uint8_t)(v + 1);
    }
    if ((pass + 1) % dirty_every == 0) {
      con_puts("dirty pass ");
      con_dec(pass + 1);
      con_putc('\n');
    }
  }
}

/* `fill MIB`: one store to every page of [DIRTY_BASE, +MIB MiB), never a
 * load first, then "FILL done". A page's first access is then a write, so
 * the host backs it with fresh memory (a huge page under THP) instead of
 * mapping its shared zero page for a read and copying it on the write after:
 * what the THP test needs whatever the host's use_zero_page says. */
static void fill_u(const char *arg) {
  (void)arg;
  volatile uint8_t *base = (volatile uint8_t *)(uintptr_t)DIRTY_BASE;
  for (uint64_t p = 0; p < dirty_pages; p++) base[p * 4096] = 1;
  con_puts("FILL done\n");
  for (;;) cpu_pause();
}

static void cmd_fill(const char *arg) {
  uint64_t mib;
  if (!parse_dec(arg, 3000, &mib) || mib == 0) {
    bad_argument();
    return;
  }
  dirty_pages = mib * 256;
  user_allow(DIRTY_BASE, DIRTY_BASE + (mib << 20));
  user_run(fill_u, arg);
}

static void cmd_dirty(const char *arg) {
  uint64_t mib, every = 1;
  char *sp = (char *)arg;
  while (*sp && *sp != ' ') sp++;
  if (*sp) {
    *sp++ = 0;
    if (!parse_dec(sp, 1000000, &every) || every == 0) {
      bad_argument();
      return;
    }
  }
  if (!parse_dec(arg, 3000, &mib) || mib == 0) {
    bad_argument();
    return;
  }
  dirty_pages = mib * 256;
  dirty_every = every;
  user_allow(DIRTY_BASE, DIRTY_BASE + (mib << 20));
  con_puts("DIRTY start\n");
  user_run(dirty_u, arg);
}

static void cmd_tsc(const char *arg) {
  (void)arg;
  uint64_t t = rdtsc(); /* first, so the printing does not count */
  con_puts("TSC ");
  con_dec(t);
  con_putc('\n');
}

/* The guest's view of kvmclock (what Linux's kvm-clock clocksource reads):
 * MSR_KVM_SYSTEM_TIME_NEW points KVM at a pvclock record, and the time is
 * system_time + scaled (TSC - tsc_timestamp). Prints "KVMCLOCK <ns>". */
struct pvclock {
  volatile uint32_t version, pad0;
  volatile uint64_t tsc_timestamp, system_time;
  volatile uint32_t mul;
  volatile int8_t shift;
  volatile uint8_t flags, pad[2];
};
static struct pvclock kvmclock_rec __attribute__((aligned(64)));
static bool kvmclock_on;

static void cmd_kvmclock(const char *arg) {
  (void)arg;
  uint32_t r[4];
  cpuid(0x40000001, 0, r); /* KVM features: bit 3 = KVM_FEATURE_CLOCKSOURCE2 */
  if (!(r[0] & (1u << 3))) {
    con_puts("KVMCLOCK unsupported\n");
    return;
  }
  if (!kvmclock_on) {
    wrmsr(0x4b564d01, (uint64_t)(uintptr_t)&kvmclock_rec | 1);
    kvmclock_on = true;
  }
  uint64_t ns;
  uint32_t v;
  do {
    v = kvmclock_rec.version;
    barrier();
    uint64_t delta = rdtsc() - kvmclock_rec.tsc_timestamp;
    int8_t shift = kvmclock_rec.shift;
    delta = shift < 0 ? delta >> -shift : delta << shift;
    ns = kvmclock_rec.system_time +
         (uint64_t)(((unsigned __int128)delta * kvmclock_rec.mul) >> 32);
    barrier();
  } while ((v & 1) || v != kvmclock_rec.version);
  con_puts("KVMCLOCK ");
  con_dec(ns);
  con_putc('\n');
}

static const struct {
  const char *name;
  void (*fn)(const char *arg);
} commands[] = {
    {"echo", cmd_echo},   {"cmdline", cmd_cmdline}, {"mem", cmd_mem},     {"cpus", cmd_cpus},
    {"smp", cmd_smp},     {"probe", cmd_probe},     {"mmio", cmd_mmio},   {"exit", cmd_exit},
    {"reset", cmd_reset}, {"cpuid", cmd_cpuid},     {"int3", cmd_int3},   {"fwait", cmd_fwait},
    {"triple", cmd_triple}, {"count", cmd_count},   {"spin", cmd_spin},   {"entry", cmd_entry},
    /* virtio.c */
    {"vdevs", cmd_vdevs},     {"blkinfo", cmd_blkinfo}, {"blkread", cmd_blkread},
    {"blkwrite", cmd_blkwrite}, {"blkflush", cmd_blkflush}, {"blkid", cmd_blkid},
    {"rng", cmd_rng},         {"netinfo", cmd_netinfo}, {"netsend", cmd_netsend},
    {"netecho", cmd_netecho}, {"vbad", cmd_vbad},       {"vreset", cmd_vreset},
    {"blkbench", cmd_blkbench}, {"netbench", cmd_netbench}, {"benchirq", cmd_benchirq},
    {"mmiobench", cmd_mmiobench}, {"tsc", cmd_tsc},
    {"kvmclock", cmd_kvmclock}, {"dirty", cmd_dirty}, {"fill", cmd_fill},
};

#define LINE_MAX 128

/* Reads one line: '\r' is ignored, '\n' ends it, characters beyond LINE_MAX are dropped. */
static void read_line(char *buf) {
  unsigned n = 0;
  for (;;) {
    char c = con_getc();
    if (c == '\r') continue;
    if (c == '\n') break;
    if (n < LINE_MAX) buf[n++] = c;
  }
  buf[n] = 0;
}

static void run_command(char *line) {
  /* "<name>" or "<name> <argument>": split at the first space. */
  char *arg = line;
  while (*arg && *arg != ' ') arg++;
  if (*arg) *arg++ = 0;
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
    if (streq(line, commands[i].name)) {
      commands[i].fn(arg);
      return;
    }
  }
  con_puts("ERR unknown command\n");
}

/* Called from _start (mode BOOT_LINUX64, info = zero page) or from the PVH
 * entry (mode BOOT_PVH, info = hvm_start_info), see entry.S. */
void guest_main(const uint8_t *info, unsigned mode);

void guest_main(const uint8_t *info, unsigned mode) {
  boot_info = info;
  boot_mode = mode;
  serial_init();
  idt_init();
  con_puts("TESTGUEST READY\n");
  static char line[LINE_MAX + 1];
  for (;;) {
    read_line(line);
    run_command(line);
  }
}
