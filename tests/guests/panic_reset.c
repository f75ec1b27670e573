/* Resets the machine the way Linux does after a panic when booted with reboot=panic_warm:
 * the BIOS warm-reset flag (0x1234 at 0x472) first, then the i8042 reset. The VMM must
 * report a guest panic, not an ordinary restart. */
#include "guest.h"

void guest_main(const u8 *boot_params) {
    (void)boot_params;
    puts("veil-test-guest panic_reset\n");
    /* Through a register: gcc takes a constant address for an empty array otherwise. */
    volatile u16 *flag;
    __asm__("mov $0x472, %0" : "=r"(flag));
    *flag = 0x1234;
    reset();
}
