"""permessage-deflate against the edge's echo, offered every way Python `websockets` can.

usage: deflate_echo.py URL CA_PEM

For each combination of the four RFC 7692 offer parameters, connects with websockets' own
permessage-deflate (an implementation independent of the edge's), which refuses a 101 whose
answer does not fit its offer; sends messages that compress well, badly and not at all (below
the edge's min_bytes), one large, each twice (context takeover), and checks every echo byte for
byte. Prints one JSON line per combination: the offer, the agreed header, how many echoes
matched, or the error.
"""

import asyncio
import itertools
import json
import os
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

MESSAGES = [
    "short",
    json.dumps([{"topic": "trades.BTC-USD", "px": "64123.5", "qty": "0.25", "n": i} for i in range(300)]),
    os.urandom(64 * 1024),
    "é" * (128 * 1024),
    b"\x00" * (256 * 1024),
]


async def one(url, ctx, snct, cnct, smwb, cmwb):
    offer = {"server_no_context_takeover": snct, "client_no_context_takeover": cnct,
             "server_max_window_bits": smwb, "client_max_window_bits": cmwb}
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=snct,
        client_no_context_takeover=cnct,
        server_max_window_bits=smwb,
        client_max_window_bits=cmwb,
    )
    try:
        async with connect(url, ssl=ctx, extensions=[factory], compression=None,
                           max_size=None, open_timeout=10, close_timeout=5) as ws:
            agreed = ws.response.headers.get("Sec-WebSocket-Extensions")
            echoed = 0
            for m in MESSAGES:
                for _ in range(2):
                    await ws.send(m)
                    back = await asyncio.wait_for(ws.recv(), 10)
                    if back != m:
                        return {"offer": offer, "agreed": agreed,
                                "error": f"echo of a {len(m)}-long {type(m).__name__} differs"}
                    echoed += 1
            used = [type(e).__name__ for e in ws.protocol.extensions]
            return {"offer": offer, "agreed": agreed, "echoed": echoed, "extensions": used}
    except Exception as e:  # reported, not raised: the Rust test names the combination
        return {"offer": offer, "error": f"{type(e).__name__}: {e}"}


async def main():
    url, ca = sys.argv[1], sys.argv[2]
    ctx = ssl.create_default_context(cafile=ca)
    for snct, cnct, smwb, cmwb in itertools.product(
        [False, True], [False, True], [None, 8, 9, 12, 15], [None, True, 9, 15]
    ):
        print(json.dumps(await one(url, ctx, snct, cnct, smwb, cmwb)), flush=True)


asyncio.run(main())
