/* Asks for a reset through the i8042 and then carries on, as Linux does when the reset has
 * not taken effect a millisecond later: it prints a line and falls back to a triple fault.
 * The VMM must stop the vCPU at the request: the line never appears and the VM ends as the
 * reset it was asked for, not as a crash. */
#include "guest.h"

void guest_main(const u8 *boot_params) {
    (void)boot_params;
    puts("veil-test-guest reset_fallback\n");
    outb(0x64, 0xfe);
    puts("ran past the reset\n");
    __asm__ volatile("ud2");
}
