/* Starts every application processor the MP table lists with INIT-SIPI-SIPI, lets each one
 * climb from real mode to long mode and check in, and reports who ran. */
#include "guest.h"

#define LAPIC 0xfee00000UL
#define LAPIC_ID 0x20
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define TRAMPOLINE 0x10000UL /* SIPI vector 0x10 */
#define MAX_CPUS 16

extern const u8 trampoline_start[], trampoline_end[], trampoline_stack[];

/* Each AP writes its APIC id + 1 here; the BSP only reads. */
volatile u32 checked_in[MAX_CPUS];
static u8 ap_stacks[MAX_CPUS][4096] __attribute__((aligned(16)));
volatile u32 next_stack;

static void lapic_write(u32 reg, u32 value) { *(volatile u32 *)(LAPIC + reg) = value; }
static u32 lapic_read(u32 reg) { return *(volatile u32 *)(LAPIC + reg); }

/* Called by each AP once in long mode, on its own stack. */
void ap_main(void) {
    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    u32 apic_id = b >> 24;
    if (apic_id < MAX_CPUS) checked_in[apic_id] = apic_id + 1;
    for (;;) __asm__ volatile("cli; hlt");
}

__asm__(
    ".section .text\n"
    ".code16\n"
    ".global trampoline_start\n"
    "trampoline_start:\n"
    "    cli\n"
    "    mov %cs, %ax\n"
    "    mov %ax, %ds\n"
    "    lgdtl (gdtr - trampoline_start)\n"
    "    mov %cr0, %eax\n"
    "    or $1, %eax\n"
    "    mov %eax, %cr0\n"
    "    ljmpl $0x08, $(0x10000 + pm32 - trampoline_start)\n"
    ".code32\n"
    "pm32:\n"
    "    mov $0x18, %ax\n"
    "    mov %ax, %ds\n"
    "    mov %ax, %ss\n"
    "    mov %cr4, %eax\n"
    "    or $0x20, %eax\n"              /* PAE */
    "    mov %eax, %cr4\n"
    "    mov $0x9000, %eax\n"           /* the VMM's identity page tables */
    "    mov %eax, %cr3\n"
    "    mov $0xc0000080, %ecx\n"
    "    rdmsr\n"
    "    or $0x100, %eax\n"             /* EFER.LME */
    "    wrmsr\n"
    "    mov %cr0, %eax\n"
    "    or $0x80000000, %eax\n"        /* PG */
    "    mov %eax, %cr0\n"
    "    ljmpl $0x10, $(0x10000 + lm64 - trampoline_start)\n"
    ".code64\n"
    "lm64:\n"
    "    mov (0x10000 + trampoline_stack - trampoline_start), %rsp\n"
    "    movabs $ap_main, %rax\n"
    "    jmp *%rax\n"
    "gdtr:\n"
    "    .word 39\n"                    /* the VMM's boot GDT: 5 entries at 0x500 */
    "    .long 0x500\n"
    ".balign 8\n"
    ".global trampoline_stack\n"
    "trampoline_stack:\n"
    "    .quad 0\n"
    ".global trampoline_end\n"
    "trampoline_end:\n"
    ".code64\n");

void guest_main(const u8 *boot_params) {
    (void)boot_params;
    u32 cpus = mptable_cpus();
    if (cpus > MAX_CPUS) cpus = MAX_CPUS;
    puts("veil-test-guest smp cpus="); put_dec(cpus); puts("\n");

    u8 *dst = (u8 *)TRAMPOLINE;
    for (const u8 *src = trampoline_start; src < trampoline_end; src++) *dst++ = *src;
    volatile u64 *stack_slot = (volatile u64 *)(TRAMPOLINE + (trampoline_stack - trampoline_start));

    lapic_write(LAPIC_SVR, 0x1ff); /* software-enable the local APIC */
    u32 bsp = lapic_read(LAPIC_ID) >> 24;
    checked_in[bsp] = bsp + 1;

    for (u32 apic = 0; apic < cpus; apic++) {
        if (apic == bsp) continue;
        *stack_slot = (u64)&ap_stacks[apic][4096];
        lapic_write(LAPIC_ICR_HIGH, apic << 24);
        lapic_write(LAPIC_ICR_LOW, 0x4500); /* INIT */
        lapic_write(LAPIC_ICR_HIGH, apic << 24);
        lapic_write(LAPIC_ICR_LOW, 0x4600 | (TRAMPOLINE >> 12)); /* STARTUP */
        /* Wait for this AP before reusing the stack slot; bounded so a dead AP is reported. */
        for (u64 spin = 0; spin < 2000000000UL && !checked_in[apic]; spin++) __asm__ volatile("pause");
    }
    for (u32 apic = 0; apic < cpus; apic++) {
        puts("cpu "); put_dec(apic);
        puts(checked_in[apic] == apic + 1 ? " running\n" : " silent\n");
    }
    puts("done\n");
}
