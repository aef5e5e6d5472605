/* guest.h: constants and tiny helpers shared by the test guest's C and .S files.
 * Addresses and ports must match boot/x86_64/layout.h on the VMM side. */
#pragma once

/* --- Fixed guest-physical addresses --- */
#define TRAMPOLINE_ADDR   0x8000       /* AP real-mode trampoline (SIPI vector 0x08) */
#define SPIN_COUNTER_ADDR 0x60000      /* `spin` increments a u64 here */
#define DIRTY_BASE 0x2000000ull         /* `dirty` walks pages from 32 MiB */
#define MP_EBDA_START     0x9fc00      /* MP floating pointer search windows */
#define MP_EBDA_END       0xa0000
#define MP_BIOS_START     0xf0000
#define MP_BIOS_END       0x100000
#define LAPIC_BASE        0xfee00000
#define PROBE_MMIO_BASE   0xd0000000   /* boot probe, MMIO window (8 bytes) */

/* --- Ports --- */
#define COM1_PORT         0x3f8
#define PROBE_PORT        0x4f0        /* +0: progress mark (u8), +4: exit code */
#define PROBE_EXIT_PORT   (PROBE_PORT + 4)
#define PROBE_SIGNATURE   0x504d4d56   /* "VMMP" */
#define QEMU_DEBUG_EXIT_PORT 0xf4    /* QEMU isa-debug-exit (ignored by our VMM) */
#define I8042_CMD_PORT    0x64
#define I8042_CMD_RESET   0xfe

/* --- Stacks --- */
#define BOOT_STACK_SIZE   16384
#define AP_MAX            64           /* APs `smp` will start (and stacks we have) */
#define AP_STACK_SHIFT    10           /* 1 KiB per AP: it only calls ap_main() */

/* How the guest was entered (second argument of guest_main). */
#define BOOT_LINUX64      0            /* 64-bit entry, first argument = zero page */
#define BOOT_PVH          1            /* PVH entry, first argument = hvm_start_info */

/* Ring 3 (user.c, user.S): the GDT user_init() installs. */
#define SEL_KCODE         0x08
#define SEL_KDATA         0x10
#define SEL_UDATA         0x18         /* used with RPL 3 */
#define SEL_UCODE         0x20         /* used with RPL 3 */
#define SEL_TSS           0x28
#define USER_STACK_SIZE   16384
#define TRAP_STACK_SIZE   8192         /* TSS.rsp0: ring 3 -> 0 transitions */

/* Exception stubs in entry.S are ISR_STUB_SIZE bytes apart. */
#define ISR_STUB_SIZE     8

#ifndef __ASSEMBLER__
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline void cpu_pause(void) { __asm__ volatile("pause"); }
static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static inline uint64_t rdmsr(uint32_t msr) {
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v) {
  __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}
static inline void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
}
static inline void barrier(void) { __asm__ volatile("" : : : "memory"); }
__attribute__((noreturn)) static inline void halt_forever(void) {
  for (;;) __asm__ volatile("cli; hlt");
}

/* console (main.c): polled COM1 */
void con_putc(char c);
void con_puts(const char *s);
void con_dec(uint64_t v);
void con_hex(uint64_t v); /* lowercase, no "0x", no leading zeros */
/* Decimal, digits only, no sign; false on empty input, junk or > max. */
bool parse_dec(const char *s, uint64_t max, uint64_t *out);
bool streq(const char *a, const char *b);

/* idt.c */
void idt_init(void);
void idt_set_gate(unsigned vector, const void *handler, unsigned dpl);

/* user.c / user.S: run fn(arg) in ring 3 (same memory, made user-accessible
 * by user_init()). On this project's nested-KVM
 * host guest *supervisor* code is interpreted (~1 us per instruction) while
 * user code runs natively, so compute-heavy commands run there. */
void user_run(void (*fn)(const char *arg), const char *arg);
void user_call(void (*fn)(const char *arg), const char *arg); /* user.S; needs user_init() */
void user_allow(uint64_t start, uint64_t end); /* make [start, end) user-accessible too */
/* No port I/O in ring 3 (IOPL 0; on that host it faults even with IOPL 3),
 * so con_putc() in ring 3 buffers a line and hands it to ring 0 (user.S). */
static inline bool in_user_mode(void) {
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  return (cs & 3) != 0;
}
void user_putc(char c);
void user_flush(void);

/* smp.c */
unsigned mp_count_cpus(void); /* processor entries in the MP table, 0 if none */
unsigned smp_boot_aps(void);  /* CPUs that ran (BSP included) */

/* virtio.c: polling virtio-mmio drivers and their console commands
 * (each takes the argument text of the line, see README.md). */
void cmd_vdevs(const char *arg);
void cmd_blkinfo(const char *arg);
void cmd_blkread(const char *arg);
void cmd_blkwrite(const char *arg);
void cmd_blkflush(const char *arg);
void cmd_blkid(const char *arg);
void cmd_rng(const char *arg);
void cmd_netinfo(const char *arg);
void cmd_netsend(const char *arg);
void cmd_netecho(const char *arg);
void cmd_vbad(const char *arg);
void cmd_vreset(const char *arg);
void cmd_blkbench(const char *arg);
void cmd_netbench(const char *arg);
void cmd_benchirq(const char *arg);
void cmd_mmiobench(const char *arg);

/* sha256.c */
struct sha256 {
  uint32_t h[8];
  uint64_t len; /* bytes hashed so far */
  unsigned fill; /* bytes in buf */
  uint8_t buf[64];
};
void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t n);
void sha256_final(struct sha256 *s, uint8_t out[32]);

/* lib.c: the compiler may emit calls to these even when freestanding. */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
#endif
