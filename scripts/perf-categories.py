#!/usr/bin/env python3
"""Reads `perf script` output (recorded with call graphs) and prints the share of samples per
data path category. Each sample goes to the first category found walking its stack from the
leaf towards the root, so a copy inside a TUN read counts as "TUN read" and AES inside the
data path counts as "crypto". Usage: perf script -i a.perf.data | scripts/perf-categories.py
"""
import re
import sys
from collections import Counter

CATEGORIES = [
    ("crypto (AES-GCM seal/open)", r"ring::aead|aes_gcm|ring_core_|hypha_crypto::"),
    ("Vec growth (realloc + copy)", r"finish_grow|_int_realloc|\brealloc\b"),
    ("TUN read (kernel)", r"tun_chr_read_iter|tun_do_read"),
    ("TUN write (kernel, incl. local TCP receive)", r"tun_chr_write_iter|tun_get_user"),
    ("peer socket write (kernel, incl. veth)", r"tcp_sendmsg|__sys_sendto|sock_write_iter"),
    ("peer socket read (kernel)", r"tcp_recvmsg|__sys_recvfrom|sock_read_iter"),
    ("GSO split (segmentation + checksums)", r"hypha_offload::split"),
    ("GRO coalesce (+ checksums)", r"hypha_offload::coalesce|hypha_offload::sink"),
    ("routing lookup", r"hypha_routing::"),
    ("frame decode", r"hypha_wire::frame"),
    ("data path glue (datapath.rs)", r"hypha_node::datapath::"),
    ("link tasks (gather/copy)", r"hypha_node::link::"),
    ("TUN threads other (tunio.rs, tun crate)", r"hypha_node::tunio::|hypha_tun::"),
    ("wait, poll, scheduling", r"futex|epoll|do_sys_poll|schedule|tokio::runtime::park"),
]
COMPILED = [(name, re.compile(pat)) for name, pat in CATEGORIES]


def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line.startswith((" ", "\t")):
            parts = line.strip().split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else parts[0])
        else:
            stack = []
    if stack:
        yield stack


def main():
    counts = Counter()
    total = 0
    for stack in samples(sys.stdin):
        total += 1
        for frame in stack:
            hit = next((n for n, r in COMPILED if r.search(frame)), None)
            if hit:
                counts[hit] += 1
                break
        else:
            counts["other"] += 1
    if total == 0:
        sys.exit("no samples with call stacks in the input")
    print(f"{total} samples")
    for name, _ in CATEGORIES + [("other", None)]:
        print(f"{100.0 * counts[name] / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
