/* entry.S: the 64-bit entry point, the 256 interrupt/exception stubs and the
 * APs' 64-bit landing point (reached from trampoline.S). */
#include "guest.h"

        .section .note.GNU-stack, "", @progbits

/* ---------------------------------------------------------------------------
 * _start: entered in long mode, interrupts off, rsi = &boot_params (0x7000),
 * rsp = 0x8ff0 (the VMM's boot stack, inside the page the AP trampoline will
 * reuse, so we leave it before calling any C).
 */
        .section .text.entry, "ax"
        .code64
        .globl _start
_start:
        cli
        cld
        mov     %rsi, %r12              /* keep the zero page pointer */
        /* Zero .bss ourselves (the stack lives there; nothing uses it yet). */
        lea     __bss_start(%rip), %rdi
        lea     __bss_end(%rip), %rcx
        sub     %rdi, %rcx
        xor     %eax, %eax
        rep stosb
        lea     boot_stack_top(%rip), %rsp
        xor     %ebp, %ebp
        mov     %r12, %rdi
        call    guest_main
1:      cli
        hlt
        jmp     1b

/* ---------------------------------------------------------------------------
 * Interrupt stubs: stub v is at isr_stubs + v * ISR_STUB_SIZE. Each pushes its
 * vector with a 2-byte "push imm8" (sign-extended for v >= 128, so the C
 * handler masks it to 8 bits) and jumps to the common code. Vectors for which
 * the CPU pushes an error code go to isr_common directly; the others go via
 * isr_common_noerr, which slides a zero error code under the vector so every
 * frame looks the same (struct isr_frame in idt.c).
 */
        .text
        .balign ISR_STUB_SIZE
        .globl  isr_stubs
isr_stubs:
        .set    .Lvec, 0
        .rept   256
        .balign ISR_STUB_SIZE
        .byte   0x6a, .Lvec             /* push $vec (imm8) */
        .if .Lvec == 8 || (.Lvec >= 10 && .Lvec <= 14) || .Lvec == 17 || .Lvec == 21 || .Lvec == 29 || .Lvec == 30
        jmp     isr_common
        .else
        jmp     isr_common_noerr
        .endif
        .set    .Lvec, .Lvec + 1
        .endr

isr_common_noerr:
        pushq   (%rsp)                  /* duplicate the vector ... */
        movq    $0, 8(%rsp)             /* ... and put a zero error code under it */
isr_common:
        /* Stack: vector, error, rip, cs, rflags, rsp, ss. The CPU aligned rsp to
         * 16 before its 5 pushes; +error +vector +15 registers = 16-aligned. */
        push    %rax
        push    %rbx
        push    %rcx
        push    %rdx
        push    %rsi
        push    %rdi
        push    %rbp
        push    %r8
        push    %r9
        push    %r10
        push    %r11
        push    %r12
        push    %r13
        push    %r14
        push    %r15
        cld
        mov     %rsp, %rdi
        call    isr_handler             /* returns only for #BP */
        pop     %r15
        pop     %r14
        pop     %r13
        pop     %r12
        pop     %r11
        pop     %r10
        pop     %r9
        pop     %r8
        pop     %rbp
        pop     %rdi
        pop     %rsi
        pop     %rdx
        pop     %rcx
        pop     %rbx
        pop     %rax
        add     $16, %rsp               /* vector + error code */
        iretq

/* ---------------------------------------------------------------------------
 * ap_entry64: each AP arrives here from the trampoline in 64-bit mode (using
 * the trampoline's GDT, interrupts off, no stack). Claim a stack slot
 * atomically, call ap_main() (which counts us), then park forever.
 */
        .globl  ap_entry64
ap_entry64:
        mov     $1, %eax
        lock xadd %eax, ap_next_slot(%rip)      /* eax = slot, ap_next_slot++ */
        cmp     $AP_MAX, %eax
        jae     2f                              /* no stack for us: just park */
        inc     %eax
        shl     $AP_STACK_SHIFT, %rax           /* top of slot = (slot + 1) * size */
        lea     ap_stacks(%rip), %rsp
        add     %rax, %rsp
        xor     %ebp, %ebp
        call    ap_main
2:      cli
        hlt
        jmp     2b

        .bss
        .balign 16
boot_stack:
        .skip   BOOT_STACK_SIZE
boot_stack_top:
