/* Reports the state the VMM booted us in: CPU mode, the command line and e820 map from
 * boot_params, and how many processors the MP table lists. */
#include "guest.h"

/* Offsets into struct boot_params (Documentation/arch/x86/zero-page.rst). */
#define BP_E820_ENTRIES 0x1e8
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0

struct e820 {
    u64 addr;
    u64 size;
    u32 type;
} __attribute__((packed));

void guest_main(const u8 *boot_params) {
    u64 cr0, cr4, cs;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    u64 efer = rdmsr(0xc0000080);
    puts("veil-test-guest boot_info\n");
    puts("efer="); put_hex(efer);
    puts(" cr0="); put_hex(cr0);
    puts(" cr4="); put_hex(cr4);
    puts(" cs="); put_hex(cs);
    puts(" long_mode="); put_dec((efer >> 10) & 1);
    puts("\n");

    puts("boot_params="); put_hex((u64)boot_params); puts("\n");
    const char *cmdline = (const char *)(u64)(*(const u32 *)(boot_params + BP_CMD_LINE_PTR));
    puts("cmdline=[");
    if (cmdline) puts(cmdline);
    puts("]\n");

    u8 entries = boot_params[BP_E820_ENTRIES];
    const struct e820 *map = (const struct e820 *)(boot_params + BP_E820_TABLE);
    for (u8 i = 0; i < entries; i++) {
        puts("e820 "); put_hex(map[i].addr);
        puts(" "); put_hex(map[i].size);
        puts(" "); put_dec(map[i].type);
        puts("\n");
    }

    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    puts("cpuid1 apic_id="); put_dec(b >> 24);
    puts(" logical="); put_dec((b >> 16) & 0xff);
    puts(" hypervisor="); put_dec(c >> 31);
    puts("\n");
    puts("mptable_cpus="); put_dec(mptable_cpus()); puts("\n");
    puts("done\n");
}
