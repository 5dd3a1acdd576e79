#!/usr/bin/env python3
"""A fixed-delay line for benches/shaped.py, in place of `tc netem delay`.

This machine's kernel has no netem (CONFIG_NET_SCH_NETEM is not set; neither fq nor etf,
the other qdiscs that can hold a packet back, are built). The rate is shaped by `tc tbf`
on both ends of the veth; the delay comes from here: iptables sends every packet that
crosses the veth (both directions) to an NFQUEUE, and this process accepts each packet
DELAY milliseconds after it arrived, in arrival order (the verdict for a queue is a batch
verdict "accept every packet up to id N", so a burst of packets costs one message).

    python3 delayline.py --queue 7101 --queue 7102 --delay-ms 2.5

It asks the kernel for whole GSO packets (NFQA_CFG_F_GSO: up to 64 KiB each, not one per
MSS) and only their metadata (NFQNL_COPY_META), so a gigabit of traffic is a few thousand
packets a second. Python 3 standard library only (raw netlink). Prints "ready" once bound.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NFQA_CFG_F_GSO = 4
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


class Queues:
    def __init__(self, queues: list[int], delay: float):
        self.delay = delay
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:  # root: past rmem_max, so a burst never overflows the socket
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self.pending = {q: collections.deque() for q in queues}
        self.queues = queues
        for q in queues:
            self.config(q, attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, 0)), ack=False)
            self.config(q, attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)))
            self.config(q, attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
            self.config(q, attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536)))
            flags = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN
            self.config(q, attr(NFQA_CFG_MASK, struct.pack("!I", flags)) + attr(NFQA_CFG_FLAGS, struct.pack("!I", flags)))
        self.sock.setblocking(False)

    def send(self, msg_type: int, queue: int, payload: bytes, flags: int) -> int:
        self.seq += 1
        body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + payload
        hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, self.seq, 0)
        self.sock.send(hdr + body)
        return self.seq

    def config(self, queue: int, payload: bytes, ack: bool = True):
        seq = self.send(NFQNL_MSG_CONFIG, queue, payload, NLM_F_REQUEST | (NLM_F_ACK if ack else 0))
        if not ack:
            return
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, typ, _flags, s, _pid = struct.unpack_from("=IHHII", data, off)
                if typ == NLMSG_ERROR and s == seq:
                    err = struct.unpack_from("=i", data, off + 16)[0]
                    if err != 0:
                        raise OSError(-err, f"nfqueue config of queue {queue}: {os.strerror(-err)}")
                    return
                off += (ln + 3) & ~3

    def receive(self, now: float):
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # fail-open covers a full queue; keep going
                    continue
                raise
            off = 0
            while off + 20 <= len(data):
                ln, typ, _flags, _s, _pid = struct.unpack_from("=IHHII", data, off)
                if ln < 20:
                    break
                if typ == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    queue = struct.unpack_from("!H", data, off + 18)[0]
                    a = off + 20
                    end = off + ln
                    while a + 4 <= end:
                        alen, atype = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        if atype & 0x3FFF == NFQA_PACKET_HDR:
                            pid = struct.unpack_from("!I", data, a + 4)[0]
                            if queue in self.pending:
                                self.pending[queue].append((now + self.delay, pid))
                            break
                        a += (alen + 3) & ~3
                off += (ln + 3) & ~3

    def release(self, now: float) -> float | None:
        """Accept what is due; return the time of the next due packet (or None)."""
        nxt = None
        for q, dq in self.pending.items():
            last = None
            while dq and dq[0][0] <= now:
                last = dq.popleft()[1]
            if last is not None:
                self.send(NFQNL_MSG_VERDICT_BATCH, q, attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last)), NLM_F_REQUEST)
            if dq and (nxt is None or dq[0][0] < nxt):
                nxt = dq[0][0]
        return nxt

    def flush(self):
        for q, dq in self.pending.items():
            if dq:
                self.send(NFQNL_MSG_VERDICT_BATCH, q, attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, dq[-1][1])), NLM_F_REQUEST)
                dq.clear()

    def loop(self, stop):
        nxt = None
        while not stop["now"]:
            now = time.monotonic()
            # select: microsecond timeouts (poll/epoll round up to milliseconds)
            timeout = 0.2 if nxt is None else max(0.0, nxt - now)
            if select.select([self.sock], [], [], timeout)[0]:
                self.receive(time.monotonic())
            nxt = self.release(time.monotonic())
        self.flush()
        for q in self.queues:
            try:
                self.config(q, attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, 0)), ack=False)
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue", type=int, action="append", required=True, help="NFQUEUE number (repeat)")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay added to every packet")
    args = ap.parse_args()
    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    q = Queues(args.queue, args.delay_ms / 1000.0)
    print("ready", flush=True)
    q.loop(stop)


if __name__ == "__main__":
    sys.exit(main())
