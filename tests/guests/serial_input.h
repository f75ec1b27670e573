/* Reading the serial console, so that a host test can hold a guest at a point: the guest
 * prints that it is ready, the host does what it wants to do to the VM, then writes a byte
 * to the VMM's standard input, which the VMM feeds to COM1. */
#ifndef VEIL_SERIAL_INPUT_H
#define VEIL_SERIAL_INPUT_H

#include "virtio.h"

/* Waits (bounded: about 20 times the virtio timeout) for a byte on COM1; returns it, or -1. */
static inline int serial_wait_byte(void) {
    u64 start = rdtsc();
    while (rdtsc() - start < 20 * VIRTIO_TIMEOUT_CYCLES) {
        if (inb(COM1 + 5) & 1) return inb(COM1);
        __asm__ volatile("pause");
    }
    return -1;
}

#endif
