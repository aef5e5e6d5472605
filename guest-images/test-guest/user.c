/* user.c: ring-3 support. user_init() (once, lazily) installs a GDT with
 * kernel and user segments and a 64-bit TSS (rsp0 = a trap stack), moves the
 * guest onto those selectors, rebuilds the IDT for the new CS with the #UD
 * gate pointing at user_ud_isr (user.S) and sets the U/S bit along the page-table walk
 * of the guest image and the virtio/boot-probe MMIO windows.
 *
 * Why: on this project's nested-KVM build host guest supervisor code is
 * interpreted (~1-4 us per instruction) but user code runs natively, so
 * SHA-256 over 512 KiB takes minutes in ring 0 and milliseconds in ring 3.
 * Nothing else changes for the guest; no SMEP/SMAP is on (CR4 = PAE), so
 * ring 0 keeps using the same pages. */
#include "guest.h"

extern uint8_t __bss_end[];
extern uint8_t trap_stack_top[];
void user_ud_isr(void);
void user_sys_puts(const char *buf, uint64_t len);
void user_puts_handler(const char *buf, uint64_t len);
void user_load_gdt(const void *gdtr);

#define PTE_P 0x1ull
#define PTE_U 0x4ull
#define PTE_PS 0x80ull
#define PTE_ADDR 0x000ffffffffff000ull
#define IMAGE_START 0x100000ull

struct tss64 {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3;
  uint16_t iomap_base;
} __attribute__((packed));

static uint64_t gdt[7] __attribute__((aligned(16))); /* written by user_init (ltr sets busy) */
static struct tss64 tss __attribute__((aligned(16)));
static bool user_ready;
static char out_buf[256] __attribute__((section(".bss.noinit"))); /* ring 3 console line */
static unsigned out_len;

/* Sets U/S on every level of the walk for addr (4-level paging, 2 MiB/1 GiB
 * pages allowed). */
static void set_user(uint64_t addr) {
  uint64_t cr3;
  __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
  uint64_t *table = (uint64_t *)(uintptr_t)(cr3 & PTE_ADDR);
  for (int shift = 39; shift >= 12; shift -= 9) {
    uint64_t *e = &table[(addr >> shift) & 511];
    if (!(*e & PTE_P)) return;
    *e |= PTE_U;
    if (shift == 12 || (shift <= 30 && (*e & PTE_PS))) return;
    table = (uint64_t *)(uintptr_t)(*e & PTE_ADDR);
  }
}

static void set_user_range(uint64_t start, uint64_t end) {
  for (uint64_t a = start & ~0xfffull; a < end; a += 0x1000) set_user(a);
}

static void user_init(void) {
  uint64_t t = (uint64_t)(uintptr_t)&tss;
  tss.rsp[0] = (uint64_t)(uintptr_t)trap_stack_top;
  tss.iomap_base = sizeof(tss); /* no I/O bitmap: ring 3 port I/O via IOPL 3 */
  gdt[0] = 0;
  gdt[SEL_KCODE / 8] = 0x00af9b000000ffffull; /* 64-bit code, DPL 0 */
  gdt[SEL_KDATA / 8] = 0x00cf93000000ffffull; /* data, DPL 0 */
  gdt[SEL_UDATA / 8] = 0x00cff3000000ffffull; /* data, DPL 3 */
  gdt[SEL_UCODE / 8] = 0x00affb000000ffffull; /* 64-bit code, DPL 3 */
  gdt[SEL_TSS / 8] = (sizeof(tss) - 1) | (t & 0xffffff) << 16 | 0x89ull << 40 |
                     (t >> 24 & 0xff) << 56; /* available 64-bit TSS, present */
  gdt[SEL_TSS / 8 + 1] = t >> 32;
  struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) gdtr = {sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt};
  user_load_gdt(&gdtr);
  idt_init();                                    /* gates for the new CS */
  idt_set_gate(6, (const void *)user_ud_isr, 0); /* #UD: ring 3's way back (user.S) */

  set_user_range(IMAGE_START, (uint64_t)(uintptr_t)__bss_end);
  set_user_range(PROBE_MMIO_BASE, PROBE_MMIO_BASE + 0x11000); /* probe + our virtio slots */
  set_user_range(0xfeb00000, 0xfeb04000);                     /* QEMU microvm virtio-mmio */
  uint64_t cr3;
  __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3) : : "memory"); /* flush TLB */
  user_ready = true;
}

void user_allow(uint64_t start, uint64_t end) {
  set_user_range(start, end);
  uint64_t cr3;
  __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3) : : "memory"); /* flush TLB */
}

void user_run(void (*fn)(const char *arg), const char *arg) {
  if (!user_ready) user_init();
  user_call(fn, arg);
}

/* Ring 0, from user_ud_isr. */
void user_puts_handler(const char *buf, uint64_t len) {
  for (uint64_t i = 0; i < len && i < sizeof(out_buf); i++) con_putc(buf[i]);
}

/* Ring 3: buffered until a newline or a full buffer. */
void user_flush(void) {
  if (!out_len) return;
  user_sys_puts(out_buf, out_len);
  out_len = 0;
}

void user_putc(char c) {
  out_buf[out_len++] = c;
  if (c == '\n' || out_len == sizeof(out_buf)) user_flush();
}
