/* Executes an undefined instruction with no IDT to handle it: the fault cannot be
 * delivered and the vCPU shuts down (or KVM reports a failure). The VMM must report it
 * with the registers and end the VM with an error. */
#include "guest.h"

void guest_main(const u8 *boot_params) {
    (void)boot_params;
    puts("veil-test-guest crash\n");
    __asm__ volatile("ud2");
    puts("survived\n");
}
