/* idt.c: the guest's own IDT. All 256 vectors get 64-bit interrupt gates to
 * the stubs in entry.S. #BP prints "bp handled" and returns (iretq resumes
 * after the int3); anything else is fatal: print "EXC <vector> rip <hex>" and
 * ask the VMM to exit with code 3. */
#include "guest.h"

struct idt_gate {
  uint16_t offset_lo;
  uint16_t selector;
  uint8_t ist;
  uint8_t type_attr; /* 0x8e: present, DPL 0, 64-bit interrupt gate (IF cleared) */
  uint16_t offset_mid;
  uint32_t offset_hi;
  uint32_t reserved;
} __attribute__((packed));

/* Layout pushed by isr_common (entry.S), lowest address first. */
struct isr_frame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector; /* sign-extended imm8: use the low 8 bits */
  uint64_t error;  /* 0 for vectors without an error code */
  uint64_t rip, cs, rflags, rsp, ss;
};

extern const uint8_t isr_stubs[];
void isr_handler(struct isr_frame *f);

/* Every byte is written by idt_init(): no need to zero it at entry. */
static struct idt_gate idt[256] __attribute__((aligned(16), section(".bss.noinit")));

void idt_init(void) {
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs)); /* 0x10 (VMM GDT) or 0x18 (PVH entry GDT) */
  for (unsigned v = 0; v < 256; v++) {
    uint64_t a = (uint64_t)(uintptr_t)(isr_stubs + v * ISR_STUB_SIZE);
    idt[v].offset_lo = (uint16_t)a;
    idt[v].selector = cs;
    idt[v].ist = 0;
    idt[v].type_attr = 0x8e;
    idt[v].offset_mid = (uint16_t)(a >> 16);
    idt[v].offset_hi = (uint32_t)(a >> 32);
    idt[v].reserved = 0;
  }
  struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) idtr = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
  __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* Points one gate at handler (same CS as the others), with the given DPL. */
void idt_set_gate(unsigned vector, const void *handler, unsigned dpl) {
  uint64_t a = (uint64_t)(uintptr_t)handler;
  idt[vector].offset_lo = (uint16_t)a;
  idt[vector].offset_mid = (uint16_t)(a >> 16);
  idt[vector].offset_hi = (uint32_t)(a >> 32);
  idt[vector].type_attr = (uint8_t)(0x8e | (dpl & 3) << 5);
}

void isr_handler(struct isr_frame *f) {
  unsigned vector = f->vector & 0xff;
  if (vector == 3) {
    con_puts("bp handled\n");
    return; /* #BP is a trap: the saved rip is already past the int3 */
  }
  con_puts("EXC ");
  con_dec(vector);
  con_puts(" rip ");
  con_hex(f->rip);
  con_putc('\n');
  outl(PROBE_EXIT_PORT, 3);
  halt_forever(); /* in case the VMM ignores the exit request */
}
