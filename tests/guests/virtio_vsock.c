/* A virtio-vsock driver test (stream sockets, virtio 1.2 5.10), steered by the command line:
 *   vsock.connect=P  connect to host port P, send vsock.bytes of stream 1, receive as many of
 *                    stream 2, then expect the host to close (SHUTDOWN) and answer RST;
 *   vsock.refused=R  connect to host port R where nobody listens: expect RST;
 *   vsock.listen=L   accept the host's connection to port L, receive vsock.bytes of stream
 *                    3, send as many of stream 4, then SHUTDOWN and expect the host's RST;
 *   vsock.buf=N      the receive buffer we advertise (buf_alloc), default 16 KiB;
 *   vsock.bench_mib=N  with vsock.connect: stream N MiB each way and 1000 one-byte round
 *                    trips instead, reporting TSC cycles (the host side echoes);
 *   vsock.flood=1    ignore the host's credit when sending, as a hostile guest would.
 * A stream the host ends while we send is reported as "<who> stream ended by host after N
 * rst=R shutdown=S" (a host test that breaks the stream expects it; others miss the line
 * that would have followed).
 * Byte k of stream s is ((k % 251) * 7 + s * 29 + 3) & 0xff: periodic, so that sending is
 * pointing into a prebuilt buffer and checking is one `repe cmps` (guest code is slow here,
 * see virtio.h), and the prime period still catches lost, repeated or reordered data. Credit is respected both ways: we
 * never send more than the host's buf_alloc allows, and we check the host never sends more
 * than ours. */
#include "virtio.h"

#define HOST_CID 2
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_BOTH 3

#define RX_BUFS 32
#define RX_BUF_SIZE (16 * 1024 + 44)
#define MAX_TX_PAYLOAD (64 * 1024)
#define PERIOD 251

struct vsock_hdr {
    u64 src_cid;
    u64 dst_cid;
    u32 src_port;
    u32 dst_port;
    u32 len;
    u16 type;
    u16 op;
    u32 flags;
    u32 buf_alloc;
    u32 fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct vsock_hdr) == 44, "virtio-vsock header is 44 bytes");

enum conn_state { CLOSED, CONNECTING, LISTENING, ESTABLISHED };

/* One stream at a time is all the scenarios need. */
struct conn {
    enum conn_state state;
    u32 local_port, peer_port;
    u32 peer_buf_alloc, peer_fwd_cnt; /* the host's receive buffer and what it consumed */
    u32 tx_cnt;                       /* bytes we sent */
    u32 rx_cnt;                       /* bytes we received (and consumed at once) */
    u32 last_fwd_sent;                /* the fwd_cnt the host last heard from us */
    u32 fwd_base;                     /* the fwd_cnt the device had seen when it wrote the
                                         rx packet being handled (see credit_seen) */
    int got_rst, got_shutdown, credit_violation;
    u8 rx_stream;                     /* which pattern incoming data must follow */
    u32 rx_bad;                       /* packets that did not match it */
    int count_only;                   /* bench: count incoming data without checking it */
};

static struct virtio_dev dev;
static struct virtq rxq, txq, evq;
static struct virtq_page pages[3];
static u8 rx_bufs[RX_BUFS][RX_BUF_SIZE] __attribute__((aligned(64)));
static u8 ev_bufs[4][8];
static u8 patterns[5][MAX_TX_PAYLOAD + PERIOD] __attribute__((aligned(4096)));
static u8 pattern_ready[5];
static struct vsock_hdr tx_hdr;
static u64 guest_cid;
static u32 buf_alloc = 16 * 1024;
static struct conn conn;
static int failures;

static void fail(const char *what) {
    failures++;
    puts("FAIL: "); puts(what); puts("\n");
}

/* Stream `stream` (1-4) from any offset k: pattern(stream) + k % PERIOD, up to
 * MAX_TX_PAYLOAD bytes long. */
static const u8 *pattern(u8 stream) {
    u8 slot = stream < 5 ? stream : 0;
    u8 *p = patterns[slot];
    if (!pattern_ready[slot]) {
        for (u32 j = 0; j < PERIOD; j++) p[j] = (u8)(j * 7 + stream * 29 + 3);
        copy_bytes(p + PERIOD, p, MAX_TX_PAYLOAD);
        pattern_ready[slot] = 1;
    }
    return p;
}

/* ---- what the device knows of our credit ----
 * An rx packet the device had already published (below the rx used index we read just before
 * submitting a packet) cannot have been sized with the fwd_cnt in that packet. So each rx
 * packet is checked against the newest fwd_cnt we submitted while its used slot was still
 * unpublished: the most credit the device can have known of. */
#define CREDIT_HISTORY 64
static struct {
    u16 from_used;
    u32 fwd;
} credit_hist[CREDIT_HISTORY];
static u32 credit_head, credit_tail;

static void credit_seen(u16 used, u32 fwd) {
    if (credit_head - credit_tail == CREDIT_HISTORY) {
        /* Full: fold into the newest entry (only makes the check more lenient). */
        credit_hist[(credit_head - 1) % CREDIT_HISTORY].fwd = fwd;
        credit_hist[(credit_head - 1) % CREDIT_HISTORY].from_used = used;
        return;
    }
    credit_hist[credit_head % CREDIT_HISTORY].from_used = used;
    credit_hist[credit_head % CREDIT_HISTORY].fwd = fwd;
    credit_head++;
}

/* Before handling the rx packet at used position `pos`. */
static void credit_advance(u16 pos) {
    while (credit_tail != credit_head && (u16)(pos - credit_hist[credit_tail % CREDIT_HISTORY].from_used) < 0x8000) {
        conn.fwd_base = credit_hist[credit_tail % CREDIT_HISTORY].fwd;
        credit_tail++;
    }
}

/* ---- sending ---- */

static int send_pkt(u16 op, u32 flags, u32 src_port, u32 dst_port, const u8 *payload, u32 len) {
    tx_hdr = (struct vsock_hdr){
        .src_cid = guest_cid, .dst_cid = HOST_CID, .src_port = src_port, .dst_port = dst_port,
        .len = len, .type = TYPE_STREAM, .op = op, .flags = flags,
        .buf_alloc = buf_alloc, .fwd_cnt = conn.rx_cnt,
    };
    int ours = conn.state != CLOSED && src_port == conn.local_port;
    if (ours) conn.last_fwd_sent = conn.rx_cnt;
    barrier();
    u16 published = rxq.used_hdr[1];
    /* Header and payload in separate descriptors, as Linux sends them. */
    struct vbuf chain[2] = {{&tx_hdr, sizeof(tx_hdr), 0}, {payload, len, 0}};
    if (vq_submit_wait(&txq, chain, len ? 2 : 1, "vsock tx") < 0) return -1;
    if (ours) credit_seen(published, conn.rx_cnt);
    return 0;
}

static int send_ctl(u16 op, u32 flags) { return send_pkt(op, flags, conn.local_port, conn.peer_port, 0, 0); }

/* ---- receiving ---- */

static u8 rx_buf_of_head[VQ_MAX_SIZE];

static void post_rx(int i) {
    struct vbuf b = {rx_bufs[i], RX_BUF_SIZE, 1};
    int head = vq_add(&rxq, &b, 1);
    if (head >= 0) rx_buf_of_head[head] = (u8)i;
}

static void handle_rw(const struct vsock_hdr *h, const u8 *payload) {
    if (conn.state != ESTABLISHED) { fail("data on a stream that is not established"); return; }
    /* The host may only have sent what our last advertised buffer space allowed. */
    if (conn.rx_cnt + h->len - conn.fwd_base > buf_alloc && !conn.credit_violation) {
        conn.credit_violation = 1;
        fail("host sent more than our credit allows");
    }
    if (!conn.count_only && !same_bytes(payload, pattern(conn.rx_stream) + conn.rx_cnt % PERIOD, h->len))
        conn.rx_bad++;
    conn.rx_cnt += h->len;
    /* We consume at once; tell the host once half our buffer has been freed unseen. */
    if (conn.rx_cnt - conn.last_fwd_sent >= buf_alloc / 2) send_ctl(OP_CREDIT_UPDATE, 0);
}

static void handle_packet(const struct vsock_hdr *h, const u8 *payload, u32 used_len) {
    if (used_len < sizeof(*h) || used_len > RX_BUF_SIZE || h->len > used_len - sizeof(*h)) { fail("rx packet shorter than its header says"); return; }
    if (h->dst_cid != guest_cid || h->src_cid != HOST_CID) { fail("rx packet with wrong addresses"); return; }
    if (h->type != TYPE_STREAM) { fail("rx packet of unknown type"); return; }
    int ours = conn.state != CLOSED && h->dst_port == conn.local_port &&
               (conn.state == LISTENING || h->src_port == conn.peer_port);
    if (!ours) {
        /* A connection attempt (or stray packet) for a port we do not serve: refuse it. */
        if (h->op != OP_RST) send_pkt(OP_RST, 0, h->dst_port, h->src_port, 0, 0);
        puts("vsock refused op="); put_dec(h->op); puts(" to port "); put_dec(h->dst_port); puts("\n");
        return;
    }
    conn.peer_buf_alloc = h->buf_alloc;
    conn.peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_REQUEST:
        if (conn.state != LISTENING) { send_pkt(OP_RST, 0, h->dst_port, h->src_port, 0, 0); break; }
        conn.peer_port = h->src_port;
        conn.state = ESTABLISHED;
        send_ctl(OP_RESPONSE, 0);
        break;
    case OP_RESPONSE:
        if (conn.state == CONNECTING) conn.state = ESTABLISHED;
        else fail("RESPONSE outside a connect");
        break;
    case OP_RST:
        conn.got_rst = 1;
        conn.state = CLOSED;
        break;
    case OP_SHUTDOWN:
        conn.got_shutdown |= (int)h->flags | 0x100;
        break;
    case OP_RW:
        handle_rw(h, payload);
        break;
    case OP_CREDIT_UPDATE:
        break;
    case OP_CREDIT_REQUEST:
        send_ctl(OP_CREDIT_UPDATE, 0);
        break;
    default:
        fail("rx packet with unknown op");
    }
}

/* Handles every packet the device has returned; returns how many. */
static int poll_rx(void) {
    int handled = 0;
    u32 len;
    int head;
    for (;;) {
        credit_advance(rxq.last_used);
        if ((head = vq_take_used(&rxq, &len)) < 0) break;
        int buf = rx_buf_of_head[head];
        struct vsock_hdr h;
        memcpy(&h, rx_bufs[buf], sizeof(h));
        handle_packet(&h, rx_bufs[buf] + sizeof(h), len);
        post_rx(buf);
        handled++;
    }
    if (head == -2) failures++;
    if (handled) {
        virtio_ack_interrupt(&dev);
        vq_kick(&rxq);
    }
    return handled;
}

/* Polls rx until `done` holds or the bounded wait runs out (then reports `what`). */
#define WAIT_FOR(cond, what)                                                    \
    ({                                                                          \
        u64 start__ = rdtsc();                                                  \
        int ok__ = 1;                                                           \
        while (!(cond)) {                                                       \
            if (!poll_rx()) {                                                   \
                if (rdtsc() - start__ > VIRTIO_TIMEOUT_CYCLES) {                \
                    puts("FAIL: timeout waiting for "); puts(what); puts("\n"); \
                    failures++;                                                 \
                    ok__ = 0;                                                   \
                    break;                                                      \
                }                                                               \
                __asm__ volatile("pause");                                      \
            } else {                                                            \
                start__ = rdtsc();                                              \
            }                                                                   \
        }                                                                       \
        ok__;                                                                   \
    })

/* Stops consuming for a while once something arrives, so that the device fills our rx
 * buffers as far as it will: a device that ignores our buf_alloc then delivers more than it
 * may, which handle_rw reports. A correct device is never failed by this, however slow. */
#define HOLD_CYCLES 1000000000UL
static void hold_rx(void) {
    u64 start = rdtsc();
    while (rxq.used_hdr[1] == rxq.last_used && rdtsc() - start < VIRTIO_TIMEOUT_CYCLES) __asm__ volatile("pause");
    start = rdtsc();
    while (rdtsc() - start < HOLD_CYCLES) __asm__ volatile("pause");
}

/* Sends `total` bytes of `stream` within the host's credit, asking for more when it runs out
 * (and saying so the first time, prefixed with `who`, so a host test can hold off reading
 * until the guest is stalled). */
static int flood;

static int send_stream(const char *who, u8 stream, u32 total) {
    u32 sent = 0;
    int stalled = 0;
    while (sent < total) {
        if (conn.state != ESTABLISHED || conn.got_shutdown) {
            puts(who); puts(" stream ended by host after "); put_dec(sent);
            puts(" rst="); put_dec((u64)conn.got_rst); puts(" shutdown="); put_dec((u64)(conn.got_shutdown & 3)); puts("\n");
            return -1;
        }
        u32 credit = flood ? MAX_TX_PAYLOAD : conn.peer_buf_alloc - (conn.tx_cnt - conn.peer_fwd_cnt);
        if (credit == 0) {
            if (!stalled++) { puts(who); puts(" waiting for credit after "); put_dec(sent); puts("\n"); }
            send_ctl(OP_CREDIT_REQUEST, 0);
            if (!WAIT_FOR(conn.state != ESTABLISHED || conn.got_shutdown ||
                              conn.peer_buf_alloc - (conn.tx_cnt - conn.peer_fwd_cnt) > 0, "host credit"))
                return -1;
            continue;
        }
        u32 n = total - sent;
        if (n > credit) n = credit;
        if (n > MAX_TX_PAYLOAD) n = MAX_TX_PAYLOAD;
        if (send_pkt(OP_RW, 0, conn.local_port, conn.peer_port, pattern(stream) + sent % PERIOD, n) < 0) return -1;
        conn.tx_cnt += n;
        sent += n;
        poll_rx();
    }
    return 0;
}

static void start_conn(enum conn_state state, u32 local_port, u32 peer_port, u8 rx_stream) {
    conn = (struct conn){.state = state, .local_port = local_port, .peer_port = peer_port, .rx_stream = rx_stream};
    credit_tail = credit_head;
}

static void report_rx(const char *who, u32 want) {
    puts(who); puts(" received "); put_dec(conn.rx_cnt);
    puts(conn.rx_bad == 0 && conn.rx_cnt == want ? " ok\n" : " CORRUPT\n");
    if (conn.rx_bad || conn.rx_cnt != want) fail("received data differs from the pattern");
}

static void guest_connect(u32 port, u32 bytes) {
    start_conn(CONNECTING, 0x4000 + port, port, 2);
    send_ctl(OP_REQUEST, 0);
    if (!WAIT_FOR(conn.state != CONNECTING, "RESPONSE to connect")) return;
    if (conn.state != ESTABLISHED) { fail("connect to host port was refused"); return; }
    puts("connect "); put_dec(port); puts(" established peer_buf_alloc="); put_dec(conn.peer_buf_alloc); puts("\n");
    if (send_stream("connect", 1, bytes) < 0) return;
    puts("connect sent "); put_dec(bytes); puts("\n");
    hold_rx();
    if (!WAIT_FOR(conn.rx_cnt >= bytes || conn.state != ESTABLISHED, "host data")) return;
    report_rx("connect", bytes);
    /* The host program closes its socket: the device tells us with SHUTDOWN; we answer RST. */
    if (!WAIT_FOR(conn.got_shutdown || conn.got_rst, "host close")) return;
    if (conn.got_shutdown) {
        puts("connect shutdown by host flags="); put_dec((u64)(conn.got_shutdown & 3)); puts("\n");
        send_ctl(OP_RST, 0);
    } else {
        puts("connect reset by host\n");
    }
    conn.state = CLOSED;
    puts("connect closed\n");
}

static void refused_connect(u32 port) {
    start_conn(CONNECTING, 0x5000 + port, port, 0);
    send_ctl(OP_REQUEST, 0);
    if (!WAIT_FOR(conn.state != CONNECTING, "answer to a connect nobody listens for")) return;
    if (conn.state == ESTABLISHED) { fail("connect without a listener was accepted"); return; }
    puts("refused "); put_dec(port); puts(conn.got_rst ? " rst\n" : " ???\n");
}

static void listen_accept(u32 port, u32 bytes) {
    start_conn(LISTENING, port, 0, 3);
    puts("listening "); put_dec(port); puts("\n");
    if (!WAIT_FOR(conn.state != LISTENING, "host CONNECT")) return;
    puts("accepted host_port="); put_dec(conn.peer_port); puts("\n");
    hold_rx();
    if (!WAIT_FOR(conn.rx_cnt >= bytes || conn.state != ESTABLISHED, "host data")) return;
    report_rx("listen", bytes);
    if (send_stream("listen", 4, bytes) < 0) return;
    puts("listen sent "); put_dec(bytes); puts("\n");
    send_ctl(OP_SHUTDOWN, SHUTDOWN_BOTH);
    /* The device hands our data to the host socket, then resets the stream. */
    if (!WAIT_FOR(conn.got_rst, "RST after SHUTDOWN")) return;
    puts("listen closed rst\n");
}

/* Streams `mib` MiB to the host and back (the host echoes), then times 1000 one-byte
 * round trips. The host side for this lives with the benchmark harness. */
static void bench(u32 port, u64 mib) {
    start_conn(CONNECTING, 0x6000, port, 1);
    conn.count_only = 1; /* the host checks the echoed stream */
    send_ctl(OP_REQUEST, 0);
    if (!WAIT_FOR(conn.state != CONNECTING, "bench connect") || conn.state != ESTABLISHED) { fail("bench connect"); return; }
    u32 total = (u32)(mib << 20);
    u64 t0 = rdtsc();
    if (send_stream("bench", 1, total) < 0) return;
    if (!WAIT_FOR(conn.rx_cnt >= total || conn.state != ESTABLISHED, "bench echo")) return;
    u64 t1 = rdtsc();
    /* Round trips: one byte out, wait for its echo. */
    u64 t2 = rdtsc();
    for (int i = 0; i < 1000; i++) {
        u32 want = conn.rx_cnt + 1;
        u32 credit = conn.peer_buf_alloc - (conn.tx_cnt - conn.peer_fwd_cnt);
        if (credit == 0 && !WAIT_FOR(conn.peer_buf_alloc - (conn.tx_cnt - conn.peer_fwd_cnt) > 0, "bench credit")) return;
        conn.tx_cnt += 1;
        send_pkt(OP_RW, 0, conn.local_port, conn.peer_port, pattern(1) + (total + (u32)i) % PERIOD, 1);
        if (!WAIT_FOR(conn.rx_cnt >= want, "bench round trip")) return;
    }
    u64 t3 = rdtsc();
    puts("bench vsock mib="); put_dec(mib);
    puts(" stream_echo_cycles="); put_dec(t1 - t0);
    puts(" rtt_1000_cycles="); put_dec(t3 - t2);
    puts("\n");
    send_ctl(OP_SHUTDOWN, SHUTDOWN_BOTH);
    WAIT_FOR(conn.got_rst, "bench RST");
}

void guest_main(const u8 *boot_params) {
    const char *cmdline = boot_cmdline(boot_params);
    puts("veil-test-guest virtio_vsock\n");
    struct virtio_dev found[VIRTIO_MAX_DEVICES];
    int n = virtio_discover(cmdline, found, VIRTIO_MAX_DEVICES);
    int i;
    for (i = 0; i < n && found[i].device_id != VIRTIO_ID_VSOCK; i++) {}
    if (i == n) { fail("no virtio-vsock device on the command line"); puts("failed\n"); return; }
    dev = found[i];
    buf_alloc = (u32)cmdline_u64(cmdline, "vsock.buf=", buf_alloc);
    flood = cmdline_u64(cmdline, "vsock.flood=", 0) != 0;
    if (virtio_negotiate(&dev, 0) < 0 || vq_init(&rxq, &dev, 0, &pages[0], RX_BUFS) < 0 ||
        vq_init(&txq, &dev, 1, &pages[1], 16) < 0 || vq_init(&evq, &dev, 2, &pages[2], 4) < 0 ||
        virtio_driver_ok(&dev) < 0) {
        fail("device setup");
        puts("failed\n");
        return;
    }
    guest_cid = vm_config64(&dev, 0);
    puts("vsock addr="); put_hex(dev.base); puts(" irq="); put_dec(dev.irq);
    puts(" cid="); put_dec(guest_cid); puts(" features="); put_hex(dev.features); puts("\n");
    for (int k = 0; k < RX_BUFS && k < rxq.size; k++) post_rx(k);
    for (int k = 0; k < 4 && k < evq.size; k++) {
        struct vbuf b = {ev_bufs[k], sizeof(ev_bufs[k]), 1};
        vq_add(&evq, &b, 1);
    }
    vq_kick(&rxq);
    vq_kick(&evq);

    u32 bytes = (u32)cmdline_u64(cmdline, "vsock.bytes=", 4096);
    u64 port;
    u64 bench_mib = cmdline_u64(cmdline, "vsock.bench_mib=", 0);
    if ((port = cmdline_u64(cmdline, "vsock.connect=", 0)) != 0) {
        if (bench_mib) bench((u32)port, bench_mib);
        else guest_connect((u32)port, bytes);
    }
    if ((port = cmdline_u64(cmdline, "vsock.refused=", 0)) != 0) refused_connect((u32)port);
    if ((port = cmdline_u64(cmdline, "vsock.listen=", 0)) != 0) listen_accept((u32)port, bytes);
    puts(failures ? "failed\n" : "done\n");
}
