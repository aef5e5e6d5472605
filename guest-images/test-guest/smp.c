/* smp.c: MP table parsing (`cpus`) and AP bring-up with INIT-SIPI-SIPI (`smp`). */
#include "guest.h"

/* --- Intel MP spec 1.4 structures --- */
struct mp_floating {    /* "_MP_", 16-byte aligned, length in 16-byte units */
  char signature[4];
  uint32_t config_table; /* physical address of the "PCMP" table, 0 = default config */
  uint8_t length;
  uint8_t spec_rev;
  uint8_t checksum;
  uint8_t features[5];
} __attribute__((packed));

struct mp_config {      /* "PCMP" header, followed by entry_count entries */
  char signature[4];
  uint16_t base_length;  /* header + entries, bytes; checksummed */
  uint8_t spec_rev;
  uint8_t checksum;
  char oem_id[8];
  char product_id[12];
  uint32_t oem_table;
  uint16_t oem_table_size;
  uint16_t entry_count;
  uint32_t lapic_addr;
  uint16_t ext_length;
  uint8_t ext_checksum;
  uint8_t reserved;
} __attribute__((packed));

struct mp_processor {   /* entry type 0, 20 bytes; types 1..4 are 8 bytes */
  uint8_t type;
  uint8_t lapic_id;
  uint8_t lapic_version;
  uint8_t flags;
  uint32_t cpu_signature;
  uint32_t feature_flags;
  uint32_t reserved[2];
} __attribute__((packed));

#define MP_CPU_ENABLED 0x01
#define MP_CPU_BSP 0x02

static bool sum_is_zero(const uint8_t *p, size_t n) {
  uint8_t sum = 0;
  while (n--) sum += *p++;
  return sum == 0;
}

static const struct mp_floating *mp_scan(uintptr_t start, uintptr_t end) {
  for (uintptr_t a = start; a + sizeof(struct mp_floating) <= end; a += 16) {
    const struct mp_floating *f = (const struct mp_floating *)a;
    if (memcmp(f->signature, "_MP_", 4) == 0 && f->length >= 1 &&
        a + f->length * 16u <= end && sum_is_zero((const uint8_t *)a, f->length * 16u))
      return f;
  }
  return NULL;
}

static const struct mp_config *mp_find_config(void) {
  const struct mp_floating *f = mp_scan(MP_EBDA_START, MP_EBDA_END);
  if (!f) f = mp_scan(MP_BIOS_START, MP_BIOS_END);
  if (!f || f->config_table == 0) return NULL;
  const struct mp_config *c = (const struct mp_config *)(uintptr_t)f->config_table;
  if (memcmp(c->signature, "PCMP", 4) != 0 || c->base_length < sizeof(*c) ||
      !sum_is_zero((const uint8_t *)c, c->base_length))
    return NULL;
  return c;
}

/* Walks the entries; stores up to `max` processor entries (if `out`), returns the count. */
static unsigned mp_processors(const struct mp_config *c, const struct mp_processor **out, unsigned max) {
  const uint8_t *p = (const uint8_t *)(c + 1);
  const uint8_t *end = (const uint8_t *)c + c->base_length;
  unsigned n = 0;
  for (unsigned i = 0; i < c->entry_count; i++) {
    size_t len = p[0] == 0 ? sizeof(struct mp_processor) : p[0] <= 4 ? 8 : 0;
    if (len == 0 || p + len > end) break; /* unknown entry type or truncated table */
    if (p[0] == 0) {
      if (out && n < max) out[n] = (const struct mp_processor *)p;
      n++;
    }
    p += len;
  }
  return n;
}

unsigned mp_count_cpus(void) {
  const struct mp_config *c = mp_find_config();
  return c ? mp_processors(c, NULL, 0) : 0;
}

/* --- Local APIC (xAPIC MMIO) --- */
#define LAPIC_ID 0x020
#define LAPIC_SVR 0x0f0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define SVR_ENABLE 0x100
#define ICR_INIT 0x00000500
#define ICR_STARTUP 0x00000600
#define ICR_ASSERT 0x00004000
#define ICR_BUSY 0x00001000 /* delivery status: send pending */

static uint32_t lapic_read(uint32_t reg) { return *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg); }
static void lapic_write(uint32_t reg, uint32_t v) {
  barrier(); /* earlier plain stores (trampoline, tramp_*) go out first */
  *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg) = v;
}

static void lapic_ipi(uint8_t apic_id, uint32_t icr) {
  lapic_write(LAPIC_ICR_HI, (uint32_t)apic_id << 24);
  lapic_write(LAPIC_ICR_LO, icr); /* writing the low half sends it */
  for (unsigned i = 0; i < 1000000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++) cpu_pause();
}

/* The TSC frequency is unknown; assume <= 3 GHz so delays are roughly the
 * requested length on fast hosts and longer (harmless) on slower ones. */
#define TSC_PER_US 3000ull
static void delay_us(uint64_t us) {
  uint64_t end = rdtsc() + us * TSC_PER_US;
  while (rdtsc() < end) cpu_pause();
}

/* Shared with trampoline.S / entry.S. */
uint32_t tramp_cr3, tramp_efer;  /* loaded by the trampoline in 32-bit mode */
uint32_t ap_next_slot;           /* stack slot allocator (lock xadd in entry.S) */
uint32_t smp_cpus_ran;           /* CPUs that reached 64-bit C code */
/* Stacks need no zeroing: .bss.noinit is left out of the entry code's bss clear. */
uint8_t ap_stacks[AP_MAX][1u << AP_STACK_SHIFT] __attribute__((aligned(16), section(".bss.noinit")));
extern const uint8_t trampoline_start[], trampoline_end[];
void ap_main(void);

void ap_main(void) { __atomic_fetch_add(&smp_cpus_ran, 1, __ATOMIC_SEQ_CST); }

unsigned smp_boot_aps(void) {
  const struct mp_processor *cpus[AP_MAX + 1];
  const struct mp_config *c = mp_find_config();
  unsigned n = c ? mp_processors(c, cpus, AP_MAX + 1) : 0;
  if (n > AP_MAX + 1) n = AP_MAX + 1; /* at most AP_MAX APs plus the BSP */

  memcpy((void *)(uintptr_t)TRAMPOLINE_ADDR, trampoline_start, (size_t)(trampoline_end - trampoline_start));
  uint64_t cr3;
  __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
  tramp_cr3 = (uint32_t)cr3;                      /* the VMM's PML4 (0x9000) */
  tramp_efer = (uint32_t)rdmsr(0xc0000080) & ~0x400u; /* EFER minus LMA (read-only) */
  __atomic_store_n(&ap_next_slot, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&smp_cpus_ran, 1, __ATOMIC_SEQ_CST); /* the BSP */

  lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | SVR_ENABLE); /* software-enable the LAPIC */
  uint8_t self = (uint8_t)(lapic_read(LAPIC_ID) >> 24);

  unsigned expected = 1;
  for (unsigned i = 0; i < n; i++) {
    if (!(cpus[i]->flags & MP_CPU_ENABLED) || (cpus[i]->flags & MP_CPU_BSP) || cpus[i]->lapic_id == self)
      continue;
    expected++;
    /* Universal start-up algorithm (MP spec B.4): INIT puts the AP into
     * wait-for-SIPI; wait 10 ms; then two STARTUP IPIs 200 us apart. The
     * vector is the trampoline's page number (0x8000 >> 12 = 0x08). An AP that
     * already started ignores the second SIPI, so it cannot run twice. */
    lapic_ipi(cpus[i]->lapic_id, ICR_INIT | ICR_ASSERT);
    delay_us(10000);
    for (int k = 0; k < 2; k++) {
      lapic_ipi(cpus[i]->lapic_id, ICR_STARTUP | ICR_ASSERT | (TRAMPOLINE_ADDR >> 12));
      delay_us(200);
    }
  }

  /* Bounded wait (~0.5 s at 3 GHz TSC) for the APs to check in. */
  uint64_t deadline = rdtsc() + 500000 * TSC_PER_US;
  while (__atomic_load_n(&smp_cpus_ran, __ATOMIC_SEQ_CST) < expected && rdtsc() < deadline) cpu_pause();
  return __atomic_load_n(&smp_cpus_ran, __ATOMIC_SEQ_CST);
}
