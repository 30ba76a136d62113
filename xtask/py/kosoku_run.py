"""kosoku 0.1.0, with its permessage-deflate echo check made type-blind.

Run as `python kosoku_run.py ARGS…`: the same arguments and exit code as `kosoku ARGS…`.

kosoku's core hands a case's `onMessage` a message as `bytes` when it arrived compressed and
as `str` when it arrived plain (RSV1 clear): text decoded from UTF-8, binary one character per
byte (latin-1). RFC 7692 lets a server send any message plain (the edge does below
`min_bytes`, and whenever deflate would not shrink it), and the check of groups 12-13 then dies
hashing the `str` ("Strings must be encoded before hashing") instead of comparing the echo.
This turns a `str` back into the bytes that arrived before the original check runs; the check
itself is untouched: message type, length and SHA-1 of the echo are still compared.
"""

import sys

import kosoku.cases
from kosoku._cli import main

COMPRESSION_GROUPS = ("12.", "13.")


def bytes_for_hashing(on_message):
    def on_message_with_bytes(self, msg, binary):
        if isinstance(msg, str):
            msg = msg.encode("latin-1" if binary else "utf-8")
        return on_message(self, msg, binary)

    return on_message_with_bytes


patched = 0
for case_id, case in kosoku.cases.CASES.items():
    if case_id.startswith(COMPRESSION_GROUPS) and "onMessage" in vars(case):
        case.onMessage = bytes_for_hashing(vars(case)["onMessage"])
        patched += 1
if patched != 216:
    sys.exit(f"kosoku_run.py: expected 216 permessage-deflate cases to patch, found {patched}")

sys.argv[0] = "kosoku"
sys.exit(main())
