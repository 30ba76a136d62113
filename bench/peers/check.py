#!/usr/bin/env python3
"""Smoke check for the peer servers (stdlib only).

  check.py ws  HOST:PORT [--ca CA.pem]   # WebSocket echo: upgrade, text, binary,
                                         # fragmented text, ping->pong, close->close
  check.py raw HOST:PORT [--ca CA.pem]   # byte echo (floor-tcp / floor-tls)

With --ca the connection is TLS (certificate verified against CA.pem, SNI localhost,
ALPN http/1.1); without it, plain TCP. Exits non-zero on the first mismatch.
"""
import argparse
import base64
import hashlib
import os
import socket
import ssl
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def connect(addr, ca):
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        print(f"tls {sock.version()} {sock.cipher()[0]} alpn={sock.selected_alpn_protocol()}")
    return sock


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit(f"connection closed after {len(buf)}/{n} bytes")
        buf += chunk
    return buf


def frame(opcode, payload, fin=True):
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    assert not b1 & 0x80, "server frame is masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    return b0 & 0x80 != 0, b0 & 0x0F, read_exact(sock, n)


def read_message(sock):
    fin, opcode, payload = read_frame(sock)
    while not fin:
        fin, cont, more = read_frame(sock)
        assert cont == 0, f"expected continuation, got opcode {cont}"
        payload += more
    return opcode, payload


def expect(sock, opcode, payload, what):
    got_op, got = read_message(sock)
    if (got_op, got) != (opcode, payload):
        raise SystemExit(f"{what}: expected opcode {opcode} {payload[:40]!r}, got {got_op} {got[:40]!r}")
    print(f"ok  {what} ({len(got)} bytes)")


def check_ws(sock):
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += read_exact(sock, 1)
    status = head.split(b"\r\n", 1)[0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if b" 101 " not in status or accept not in head:
        raise SystemExit(f"bad upgrade response: {head!r}")
    print(f"ok  upgrade: {status.decode()}")
    sock.sendall(frame(0x1, b"hello wss"))
    expect(sock, 0x1, b"hello wss", "text echo")
    big = os.urandom(70000)
    sock.sendall(frame(0x2, big))
    expect(sock, 0x2, big, "binary echo")
    sock.sendall(frame(0x1, b"frag", fin=False) + frame(0x0, "mented \u00e9".encode()))
    expect(sock, 0x1, "fragmented \u00e9".encode(), "fragmented text echo")
    sock.sendall(frame(0x9, b"ping!"))
    expect(sock, 0xA, b"ping!", "ping -> pong")
    close = struct.pack("!H", 1000) + b"bye"
    sock.sendall(frame(0x8, close))
    op, payload = read_message(sock)
    if op != 0x8 or payload[:2] != struct.pack("!H", 1000):
        raise SystemExit(f"close: expected close 1000, got opcode {op} {payload!r}")
    print(f"ok  close -> close {struct.unpack('!H', payload[:2])[0]}")


def check_raw(sock):
    for size in (1, 5000, 200000):
        data = os.urandom(size)
        sock.sendall(data)
        got = read_exact(sock, size)
        if got != data:
            raise SystemExit(f"{size} bytes: echo differs")
        print(f"ok  {size} bytes echoed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["ws", "raw"])
    ap.add_argument("addr")
    ap.add_argument("--ca")
    args = ap.parse_args()
    sock = connect(args.addr, args.ca)
    (check_ws if args.mode == "ws" else check_raw)(sock)
    sock.close()
    print("PASS")


if __name__ == "__main__":
    sys.exit(main())
