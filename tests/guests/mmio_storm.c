/* An MMIO access storm: reads and writes of every width to addresses where nothing is
 * mapped (the MMIO gap above the devices, guest-physical addresses past RAM) and across
 * the whole register window of every virtio device, including unaligned and out-of-window
 * offsets, `storm.rounds` times (default 2). The VMM must neither die nor hang. Afterwards
 * the guest resets the first virtio-blk disk, sets it up afresh and reads sector 0, to
 * show the device still works: "storm accesses=N", "after storm read status=S byte0=0xB",
 * then "done". */
#include "virtio.h"

#define VIRTIO_BLK_T_IN 0

static struct virtq_page queue_page;
static struct virtq q;
static u8 sector0[512] __attribute__((aligned(512)));
static u64 accesses;

static void touch(u64 addr, u64 value) {
    volatile u8 *p8 = (volatile u8 *)addr;
    volatile u16 *p16 = (volatile u16 *)addr;
    volatile u32 *p32 = (volatile u32 *)addr;
    volatile u64 *p64 = (volatile u64 *)addr;
    (void)*p8; (void)*p16; (void)*p32; (void)*p64;
    *p8 = (u8)value; *p16 = (u16)value; *p32 = (u32)value; *p64 = value;
    accesses += 8;
}

/* Places with nothing behind them: the gap between the devices and the IOAPIC, the top of
 * the gap, and guest-physical addresses past the end of a small guest's RAM. */
static const u64 unmapped[] = {
    0xd0100000UL, 0xd0fff000UL, 0xe0000000UL, 0xfe000000UL, 0xfebffff8UL,
    0x40000000UL, 0x7ffffff0UL, 0xcffffff8UL,
};

void guest_main(const u8 *boot_params) {
    const char *cmdline = boot_cmdline(boot_params);
    puts("veil-test-guest mmio_storm\n");
    struct virtio_dev devs[VIRTIO_MAX_DEVICES];
    int n = virtio_discover(cmdline, devs, VIRTIO_MAX_DEVICES);
    u64 rounds = cmdline_u64(cmdline, "storm.rounds=", 2);
    u64 x = 0x9e3779b97f4a7c15UL;
    for (u64 r = 0; r < rounds; r++) {
        for (u64 i = 0; i < sizeof(unmapped) / sizeof(unmapped[0]); i++) touch(unmapped[i], x ^ i);
        for (int d = 0; d < n; d++) {
            /* Every register and config offset, the window's last bytes, and unaligned. */
            for (u64 off = 0; off < 0x200; off += 4) {
                x = x * 6364136223846793005UL + 1442695040888963407UL;
                touch(devs[d].base + off, x >> 13);
            }
            touch(devs[d].base + 0xff8, x);
            touch(devs[d].base + 0x3, x);
            touch(devs[d].base + 0x71, x);
        }
    }
    puts("storm accesses="); put_dec(accesses); puts("\n");

    struct virtio_dev *blk = 0;
    for (int d = 0; d < n; d++)
        if (devs[d].device_id == VIRTIO_ID_BLOCK) { blk = &devs[d]; break; }
    if (!blk) { puts("no disk to check\ndone\n"); return; }
    vm_write(blk, VIRTIO_MMIO_STATUS, 0);
    if (virtio_negotiate(blk, 0) < 0 || vq_init(&q, blk, 0, &queue_page, 16) < 0 || virtio_driver_ok(blk) < 0) {
        puts("FAIL: disk setup after the storm\nfailed\n");
        return;
    }
    static struct { u32 type, reserved; u64 sector; } hdr = {VIRTIO_BLK_T_IN, 0, 0};
    static volatile u8 status = 0xff;
    struct vbuf chain[3] = {{&hdr, sizeof(hdr), 0}, {sector0, sizeof(sector0), 1}, {(const void *)&status, 1, 1}};
    if (vq_submit_wait(&q, chain, 3, "read after the storm") < 0) { puts("failed\n"); return; }
    puts("after storm read status="); put_dec(status); puts(" byte0="); put_hex(sector0[0]); puts("\n");
    puts("done\n");
}
