/* trampoline.S: the AP start-up code. smp.c copies [trampoline_start,
 * trampoline_end) to TRAMPOLINE_ADDR (0x8000) and sends SIPI vector 0x08.
 *
 * A SIPI with vector VV starts the AP in real mode at CS:IP = VV00:0000, i.e.
 * CS base VV000 = 0x8000. The code is therefore position dependent: every
 * absolute address it uses is written as TRAMP(label) = where the label lands
 * after the copy. It is never executed at its link address, so it lives in
 * .rodata.
 *
 * Steps: real mode -> load our own GDT -> 32-bit protected mode -> PAE, CR3
 * (the BSP's page tables: the VMM's identity map at 0x9000, or the guest's
 * own one after the PVH entry), EFER.LME ->
 * paging on (long mode, compatibility mode) -> far jump to a 64-bit code
 * segment -> ap_entry64 in entry.S (identity-mapped, so a plain jump).
 */
#include "guest.h"

#define TRAMP(label) ((label) - trampoline_start + TRAMPOLINE_ADDR)

#define SEL_CODE32 0x08
#define SEL_DATA   0x10
#define SEL_CODE64 0x18

#define CR0_PE     0x00000001
#define CR0_NW_CD  0x60000000
#define CR0_PG     0x80000000
#define CR4_PAE    0x00000020
#define MSR_EFER   0xc0000080

        .section .note.GNU-stack, "", @progbits

        .section .rodata.trampoline, "a"
        .balign 16                      /* keeps the GDT 8-byte aligned after the copy */
        .globl  trampoline_start, trampoline_end

        .code16
trampoline_start:
        cli
        cld
        mov     %cs, %ax                /* CS = 0x0800: DS-relative offsets = label - start */
        mov     %ax, %ds
        lgdtl   tr_gdt_desc - trampoline_start
        mov     %cr0, %eax
        and     $~CR0_NW_CD, %eax       /* INIT leaves caches disabled; turn them on */
        or      $CR0_PE, %eax
        mov     %eax, %cr0
        ljmpl   $SEL_CODE32, $TRAMP(tr_pm32)

        .code32
tr_pm32:
        mov     $SEL_DATA, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     %ax, %fs
        mov     %ax, %gs
        mov     %cr4, %eax
        or      $CR4_PAE, %eax
        mov     %eax, %cr4
        mov     tramp_cr3, %eax         /* flat 4 GiB segments: plain physical load */
        mov     %eax, %cr3
        mov     $MSR_EFER, %ecx
        mov     tramp_efer, %eax        /* the BSP's EFER (LME, NXE, ...), LMA cleared */
        xor     %edx, %edx
        wrmsr
        mov     %cr0, %eax
        or      $CR0_PG, %eax           /* paging + LME => long mode (compat mode) */
        mov     %eax, %cr0
        ljmpl   $SEL_CODE64, $TRAMP(tr_lm64)

        .code64
tr_lm64:
        mov     $ap_entry64, %eax       /* below 4 GiB, identity mapped */
        jmp     *%rax

        .balign 8
tr_gdt:
        .quad   0                       /* null */
        .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code, flat */
        .quad   0x00cf92000000ffff      /* 0x10: data, flat */
        .quad   0x00af9a000000ffff      /* 0x18: 64-bit code (L=1) */
tr_gdt_end:
tr_gdt_desc:
        .word   tr_gdt_end - tr_gdt - 1
        .long   TRAMP(tr_gdt)
trampoline_end:
