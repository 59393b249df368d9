#!/usr/bin/env python3
"""Writes the fuzzer's seed corpus: test/corpus/*.bin.

One small file per frame type (a few hold a short exchange of frames), plus
broken frames, one per decoder error. The encoder here is written from
docs/PROTOCOL.md, independently of src/proto/protocol.cpp, so the seeds also
check the spec against the code: every valid seed must decode.

Usage: scripts/make-corpus.py [output-dir]   (default: test/corpus)
"""

import struct
import sys
from pathlib import Path

VERSION = 1
TYPES = {
    "HELLO": 0x01, "WELCOME": 0x02, "JOIN": 0x03, "JOINED": 0x04, "LEAVE": 0x05,
    "SAY": 0x06, "DELIVER": 0x07, "WHISPER": 0x08, "PRESENCE": 0x09, "NICK": 0x0A,
    "LIST": 0x0B, "ROOMS": 0x0C, "WHO": 0x0D, "MEMBERS": 0x0E, "HEARTBEAT": 0x0F,
    "PING": 0x10, "PONG": 0x11, "ERROR": 0x12, "BYE": 0x13,
}


def u8(v): return struct.pack(">B", v)
def u16(v): return struct.pack(">H", v)
def u32(v): return struct.pack(">I", v)
def u64(v): return struct.pack(">Q", v)


def short(s):
    b = s.encode() if isinstance(s, str) else s
    return u16(len(b)) + b


def text(s):
    b = s.encode() if isinstance(s, str) else s
    return u32(len(b)) + b


def frame(kind, payload=b"", flags=0, length=None, version=VERSION):
    type_code = TYPES[kind] if isinstance(kind, str) else kind
    return u8(version) + u8(type_code) + u16(flags) + u32(len(payload) if length is None else length) + payload


def strings(items):
    return u16(len(items)) + b"".join(short(i) for i in items)


hello = frame("HELLO", short("ada") + short("token") + short(""))
join_fresh = frame("JOIN", short("#general") + u8(0))
say = frame("SAY", short("#general") + text("hello, w\u00f6rld \u2713"))
bye = frame("BYE", short("quit"))

SEEDS = {
    "hello": hello,
    "welcome": frame("WELCOME", u64(42) + u32(15000) + u32(45000) + u32(65536) + short("ada")
                     + short("resume-\U0001F511") + short("pulsechat") + short("0.1.0")),
    "join_fresh": join_fresh,
    "join_resume": frame("JOIN", short("#general") + u8(1) + u64(3) + u64(41)),
    "joined": frame("JOINED", short("#general") + u64(3) + u64(57) + u64(2) + u32(14) + u8(1)
                    + strings(["ada", "bob", "zo\u00eb"])),
    "leave": frame("LEAVE", short("#general")),
    "say": say,
    "deliver": frame("DELIVER", short("lobby") + short("ada") + u64(1700000000000) + u64(3) + u64(42)
                     + text("h\u00e9llo"))
               + frame("DELIVER", short("lobby") + short("bob") + u64(1700000000001) + u64(3) + u64(43)
                       + text("replayed \U0001F44B"), flags=0x0001),
    "whisper": frame("WHISPER", short("bob") + u64(0) + text("psst"))
               + frame("WHISPER", short("bob") + u64(1700000000002) + text("psst"), flags=0x0001),
    "presence": frame("PRESENCE", short("#general") + short("ada") + u8(5) + short("ada2"))
                + frame("PRESENCE", short("#general") + short("bob") + u8(3) + short("")),
    "nick": frame("NICK", short("") + short("ada2")) + frame("NICK", short("ada") + short("ada2")),
    "list_rooms": frame("LIST") + frame("ROOMS", u16(2) + short("#general") + u32(3) + short("lobby") + u32(0)),
    "who_members": frame("WHO", short("#general")) + frame("MEMBERS", short("#general") + strings(["ada", "bob"])),
    "heartbeat_ping_pong": frame("HEARTBEAT") + frame("PING", u64(0xDEADBEEF)) + frame("PONG", u64(0xDEADBEEF)),
    "error_fatal": frame("ERROR", u16(10) + short("nick \"ada\" is taken"), flags=0x0001),
    "bye": bye,
    "session": hello + join_fresh + say + bye,
    # Broken: one per decoder error.
    "bad_version": frame("PING", u64(1), version=2),
    "bad_frame_too_large": frame("SAY", b"", length=0x00100000),
    "bad_unknown_type": frame(0x14, b"\x00"),
    "bad_truncated_field": frame("SAY", u16(10) + b"abc"),
    "bad_overlong_utf8": frame("SAY", short("#general") + text(b"\xc0\xaf")),
    "bad_surrogate_utf8": frame("BYE", short(b"\xed\xa0\x80")),
    "bad_trailing_bytes": frame("PING", u64(1) + b"\x00"),
    "bad_presence_event": frame("PRESENCE", short("r") + short("n") + u8(9) + short("")),
    "bad_join_resume_flag": frame("JOIN", short("r") + u8(2)),
}


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "test" / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in SEEDS.items():
        (out / f"{name}.bin").write_bytes(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
