"""AWS event-stream framing (`application/vnd.amazon.eventstream`), the encoder botocore's
EventStream parser reads for ConverseStream and InvokeModelWithResponseStream.

A message: total length (4 bytes), headers length (4), CRC32 of those 8 bytes, headers (name
length, name, type 7 = string, value length, value), payload, CRC32 of everything before.
botocore ships the decoder only.
"""

from __future__ import annotations

import json
import struct
import zlib

CONTENT_TYPE = "application/vnd.amazon.eventstream"


def _headers(h: dict[str, str]) -> bytes:
    out = b""
    for k, v in h.items():
        kb, vb = k.encode(), v.encode()
        out += struct.pack("!B", len(kb)) + kb + b"\x07" + struct.pack("!H", len(vb)) + vb
    return out


def message(headers: dict[str, str], payload: bytes) -> bytes:
    hb = _headers(headers)
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack("!II", total, len(hb))
    prelude += struct.pack("!I", zlib.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + hb + payload
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


def event(event_type: str, data: dict) -> bytes:
    return message({":event-type": event_type, ":content-type": "application/json",
                    ":message-type": "event"}, json.dumps(data).encode())


def exception(code: str, text: str) -> bytes:
    return message({":exception-type": code, ":content-type": "application/json",
                    ":message-type": "exception"}, json.dumps({"message": text}).encode())
