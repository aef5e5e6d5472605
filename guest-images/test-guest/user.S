/* user.S: run a C function in ring 3 and come back (see user.c). */
#include "guest.h"

        .section .note.GNU-stack, "", @progbits
        .text

/* Ring 3 -> ring 0. On this project's nested-KVM host a software interrupt
 * (int N) from ring 3 arrives as #UD, while exceptions are delivered
 * correctly. So ring 3 asks ring 0 for something with a ud2 at one of two
 * known addresses; user_ud_isr (the #UD gate) recognizes them by the saved
 * rip with a ring-3 CS, and passes every other #UD to the generic stub. */

/* void user_call(void (*fn)(const char *), const char *arg)
 * Saves the callee-saved registers and rsp, enters ring 3 with iretq at
 * user_trampoline (user stack, IF 0), which calls fn(arg), flushes
 * the console buffer and executes the ud2 at user_return_ud2; ring 0 then
 * drops that frame (on the TSS rsp0 stack), restores the saved state and
 * returns to user_call's caller. */
        .globl  user_call
user_call:
        push    %rbx
        push    %rbp
        push    %r12
        push    %r13
        push    %r14
        push    %r15
        mov     %rsp, user_saved_rsp(%rip)
        mov     %rdi, %r12              /* fn, arg: iretq keeps general registers */
        mov     %rsi, %r13
        pushq   $(SEL_UDATA | 3)        /* ss */
        lea     user_stack_top(%rip), %rax
        pushq   %rax                    /* rsp */
        pushq   $0x2                    /* rflags: IF 0, IOPL 0 */
        pushq   $(SEL_UCODE | 3)        /* cs */
        lea     user_trampoline(%rip), %rax
        pushq   %rax                    /* rip */
        iretq

user_trampoline:                        /* ring 3; rsp 16-aligned */
        cld
        mov     %r13, %rdi
        call    *%r12
        call    user_flush
user_return_ud2:
        ud2                             /* never resumed */

/* void user_sys_puts(const char *buf, uint64_t len): ring 3 console output. */
        .globl  user_sys_puts
user_sys_puts:
user_puts_ud2:
        ud2                             /* ring 0 writes buf, resumes after the ud2 */
        ret

/* The #UD gate. Frame: rip, cs, rflags, rsp, ss (no error code). */
        .globl  user_ud_isr
user_ud_isr:
        testb   $3, 8(%rsp)
        jz      3f
        cmpq    $user_puts_ud2, (%rsp)
        je      1f
        cmpq    $user_return_ud2, (%rsp)
        je      2f
3:      jmp     isr_stubs + 6 * ISR_STUB_SIZE   /* a real #UD: fatal as before */

1:      /* rsp = 8 mod 16 after the CPU's 5 pushes; 9 pushes realign it */
        push    %rax
        push    %rcx
        push    %rdx
        push    %rsi
        push    %rdi
        push    %r8
        push    %r9
        push    %r10
        push    %r11
        cld
        call    user_puts_handler       /* rdi, rsi as ring 3 left them */
        pop     %r11
        pop     %r10
        pop     %r9
        pop     %r8
        pop     %rdi
        pop     %rsi
        pop     %rdx
        pop     %rcx
        pop     %rax
        addq    $2, (%rsp)              /* past the ud2 */
        iretq

2:      mov     $SEL_KDATA, %eax
        mov     %eax, %ss
        mov     %eax, %ds
        mov     %eax, %es
        mov     user_saved_rsp(%rip), %rsp
        pop     %r15
        pop     %r14
        pop     %r13
        pop     %r12
        pop     %rbp
        pop     %rbx
        ret

/* Loads the GDT at gdtr (a 10-byte pseudo-descriptor), then CS = SEL_KCODE,
 * SS/DS/ES/FS/GS = SEL_KDATA and TR = SEL_TSS.
 * void user_load_gdt(const void *gdtr) */
        .globl  user_load_gdt
user_load_gdt:
        lgdt    (%rdi)
        pushq   $SEL_KCODE
        lea     1f(%rip), %rax
        pushq   %rax
        lretq
1:      mov     $SEL_KDATA, %eax
        mov     %eax, %ss
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %fs
        mov     %eax, %gs
        mov     $SEL_TSS, %eax
        ltr     %ax
        ret

        .section .bss.noinit, "aw", @nobits
        .balign 16
user_stack:
        .skip   USER_STACK_SIZE
user_stack_top:
        .globl  trap_stack_top
        .balign 16
trap_stack:
        .skip   TRAP_STACK_SIZE
trap_stack_top:

        .section .bss, "aw", @nobits
        .balign 8
user_saved_rsp:
        .skip   8
