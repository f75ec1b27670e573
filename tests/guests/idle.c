/* Says it is up, then halts with interrupts off forever: only the VMM can end this VM. */
#include "guest.h"

void guest_main(const u8 *boot_params) {
    (void)boot_params;
    puts("veil-test-guest idle\n");
    for (;;) __asm__ volatile("cli; hlt");
}
