/* Hits the boot timer as a booted guest would (123 written at offset 0 of its page), then
 * reads back the boot time the device recorded and prints it. */
#include "guest.h"

#define BOOT_TIMER 0xd0000000UL
#define BOOT_TIMER_MAGIC 123

void guest_main(const u8 *boot_params) {
    (void)boot_params;
    puts("veil-test-guest boot_timer\n");
    volatile u64 *timer = (volatile u64 *)BOOT_TIMER;
    u64 before = *timer;
    *(volatile u32 *)BOOT_TIMER = BOOT_TIMER_MAGIC;
    u64 first = *timer;
    /* Only the first write counts: a second one must not move the recorded time. */
    *(volatile u32 *)BOOT_TIMER = BOOT_TIMER_MAGIC;
    u64 second = *timer;
    puts("boot_timer before="); put_dec(before);
    puts(" recorded_us="); put_dec(first);
    puts(" after_second_write="); put_dec(second);
    puts("\ndone\n");
}
