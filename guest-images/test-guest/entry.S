/* entry.S: the 64-bit entry point, the PVH (32-bit) entry point and its Xen
 * ELF note, the 256 interrupt/exception stubs and the APs' 64-bit landing
 * point (reached from trampoline.S). */
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
        /* Zero .bss ourselves ([__bss_start, __bss_end), 16-byte aligned; the
         * stacks and the IDT live in .bss.noinit and are not cleared: guest
         * supervisor code may be interpreted, ~1 us per rep iteration). */
        lea     __bss_start(%rip), %rdi
        lea     __bss_end(%rip), %rcx
        sub     %rdi, %rcx
        shr     $3, %rcx
        xor     %eax, %eax
        rep stosq
        lea     boot_stack_top(%rip), %rsp
        xor     %ebp, %ebp
        mov     %r12, %rdi
        mov     $BOOT_LINUX64, %esi
        call    guest_main
1:      cli
        hlt
        jmp     1b

/* ---------------------------------------------------------------------------
 * PVH entry (Xen HVM start ABI, as used by QEMU -kernel and by our VMM with
 * --boot-protocol pvh). The loader finds pvh_start32 through the ELF note
 * below (name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY, 4-byte physical address)
 * in a PT_NOTE program header, and enters it with:
 *   32-bit protected mode, paging off, flat 4 GiB CS/DS/ES/SS (selectors
 *   unspecified: we load our own GDT at once), interrupts off,
 *   ebx = physical address of struct hvm_start_info.
 * Nothing else is promised: no stack, no page tables (QEMU does not build any),
 * no zero page. So we zero .bss, build our own identity map of the first
 * 4 GiB with 2 MiB pages (in .bss.noinit), enable PAE + EFER.LME + paging and far-jump
 * to 64-bit code, which joins the 64-bit entry's path at guest_main().
 */
#define PVH_SEL_CODE32  0x08
#define PVH_SEL_DATA    0x10
#define PVH_SEL_CODE64  0x18
#define CR0_PE          0x00000001
#define CR0_PG          0x80000000
#define CR4_PAE         0x00000020
#define MSR_EFER        0xc0000080
#define EFER_LME        0x00000100
#define PTE_P_RW        0x003
#define PDE_P_RW_PS     0x083           /* present, writable, 2 MiB page */

        .section .note.Xen, "a"
        .balign 4
        .long   4                       /* n_namesz: "Xen\0" */
        .long   4                       /* n_descsz */
        .long   18                      /* n_type: XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .balign 4
        .long   pvh_start32             /* physical (= link) address, < 4 GiB */
        .balign 4

        .text
        .code32
        .globl  pvh_start32
pvh_start32:
        cli
        cld
        mov     %ebx, %esi              /* hvm_start_info; esi survives to 64-bit code */
        lgdtl   pvh_gdt_desc            /* paging off, flat segments: absolute address */
        ljmpl   $PVH_SEL_CODE32, $1f
1:      mov     $PVH_SEL_DATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        /* Zero .bss (the loader should have; do not count on it). */
        mov     $__bss_start, %edi
        mov     $__bss_end, %ecx
        sub     %edi, %ecx
        shr     $2, %ecx
        xor     %eax, %eax
        rep stosl
        /* The tables live in .bss.noinit: zero all six pages (PML4, PDPT, 4 PDs,
         * contiguous) with one string op, then fill in the low dwords.
         * PML4[0] -> PDPT; PDPT[0..3] -> the 4 page directories (1 GiB each). */
        mov     $pvh_pml4, %edi
        mov     $(6 * 4096 / 4), %ecx
        rep stosl                       /* eax is still 0 */
        movl    $(pvh_pdpt + PTE_P_RW), pvh_pml4
        movl    $(pvh_pd + 0 * 4096 + PTE_P_RW), pvh_pdpt + 0 * 8
        movl    $(pvh_pd + 1 * 4096 + PTE_P_RW), pvh_pdpt + 1 * 8
        movl    $(pvh_pd + 2 * 4096 + PTE_P_RW), pvh_pdpt + 2 * 8
        movl    $(pvh_pd + 3 * 4096 + PTE_P_RW), pvh_pdpt + 3 * 8
        /* PD entry i maps [i * 2 MiB, +2 MiB). Unrolled 8 times: guest
         * supervisor code may run interpreted (~1-4 us per instruction on a
         * nested host), and this loop is most of the stub's time. */
        mov     $pvh_pd, %edi
        mov     $PDE_P_RW_PS, %eax
        mov     $(2048 / 8), %ecx
3:
        .irp    i, 0, 1, 2, 3, 4, 5, 6, 7
        mov     %eax, \i * 8(%edi)
        add     $0x200000, %eax
        .endr
        add     $64, %edi
        dec     %ecx
        jnz     3b
        /* Long mode: PAE, CR3, EFER.LME, then paging (=> compatibility mode). */
        mov     %cr4, %eax
        or      $CR4_PAE, %eax
        mov     %eax, %cr4
        mov     $pvh_pml4, %eax
        mov     %eax, %cr3
        mov     $MSR_EFER, %ecx
        rdmsr
        or      $EFER_LME, %eax
        wrmsr
        mov     %cr0, %eax
        or      $(CR0_PG | CR0_PE), %eax
        mov     %eax, %cr0
        ljmpl   $PVH_SEL_CODE64, $pvh_start64

        .code64
pvh_start64:
        lea     boot_stack_top(%rip), %rsp
        xor     %ebp, %ebp
        mov     %esi, %edi              /* hvm_start_info (zero-extended) */
        mov     $BOOT_PVH, %esi
        call    guest_main
4:      cli
        hlt
        jmp     4b

        .section .rodata
        .balign 8
pvh_gdt:                                /* accessed bits preset: never written */
        .quad   0                       /* null */
        .quad   0x00cf9b000000ffff      /* 0x08: 32-bit code, flat */
        .quad   0x00cf93000000ffff      /* 0x10: data, flat */
        .quad   0x00af9b000000ffff      /* 0x18: 64-bit code (L=1) */
pvh_gdt_end:
        .balign 2
pvh_gdt_desc:
        .word   pvh_gdt_end - pvh_gdt - 1
        .long   pvh_gdt

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

        .section .bss.noinit, "aw", @nobits     /* not zeroed at entry */
        .balign 4096
pvh_pml4:                               /* PVH entry's own identity map (see above) */
        .skip   4096
pvh_pdpt:
        .skip   4096
pvh_pd:                                 /* 4 page directories, contiguous */
        .skip   4 * 4096
        .balign 16
boot_stack:
        .skip   BOOT_STACK_SIZE
boot_stack_top:
