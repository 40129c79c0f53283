"""A reference model of the Gearman binary codec, written from PROTOCOL.md rather than
from fastgear/protocol.pyx, so the fuzzers can compare the compiled parser against an
independent reading of the spec (differential testing). It is deliberately slow and
plain: one function that parses one packet or text line the way PROTOCOL.md §1.2-§1.4
and fastgear's bounded-NUL-scan fix describe, plus the table of §2. The compiled
parser's deliberate choices that the spec leaves open (a wrong magic reported after 3
visible bytes, text lines capped at gearmand's 8192-byte buffer) are mirrored here and
named as such.
"""
import struct

HEADER_SIZE = 12
MAX_TEXT_LINE = 8192
CMD_MAX = 43

# type -> (name, argc, has_data, request) per PROTOCOL.md §2 and libgearman's command.cc.
# argc counts arguments as libgearman does: for no-data types the last one is `rest`.
SPEC = {
    1: ("CAN_DO", 1, 0, 1), 2: ("CANT_DO", 1, 0, 1), 3: ("RESET_ABILITIES", 0, 0, 1),
    4: ("PRE_SLEEP", 0, 0, 1), 5: ("UNUSED", 0, 0, 0), 6: ("NOOP", 0, 0, 0),
    7: ("SUBMIT_JOB", 2, 1, 1), 8: ("JOB_CREATED", 1, 0, 0), 9: ("GRAB_JOB", 0, 0, 1),
    10: ("NO_JOB", 0, 0, 0), 11: ("JOB_ASSIGN", 2, 1, 0), 12: ("WORK_STATUS", 3, 0, 1),
    13: ("WORK_COMPLETE", 1, 1, 1), 14: ("WORK_FAIL", 1, 0, 1), 15: ("GET_STATUS", 1, 0, 1),
    16: ("ECHO_REQ", 0, 1, 1), 17: ("ECHO_RES", 0, 1, 0), 18: ("SUBMIT_JOB_BG", 2, 1, 1),
    19: ("ERROR", 2, 0, 0), 20: ("STATUS_RES", 5, 0, 0), 21: ("SUBMIT_JOB_HIGH", 2, 1, 1),
    22: ("SET_CLIENT_ID", 1, 0, 1), 23: ("CAN_DO_TIMEOUT", 2, 0, 1),
    24: ("ALL_YOURS", 0, 0, 1), 25: ("WORK_EXCEPTION", 1, 1, 1), 26: ("OPTION_REQ", 1, 0, 1),
    27: ("OPTION_RES", 1, 0, 0), 28: ("WORK_DATA", 1, 1, 1), 29: ("WORK_WARNING", 1, 1, 1),
    30: ("GRAB_JOB_UNIQ", 0, 0, 1), 31: ("JOB_ASSIGN_UNIQ", 3, 1, 0),
    32: ("SUBMIT_JOB_HIGH_BG", 2, 1, 1), 33: ("SUBMIT_JOB_LOW", 2, 1, 1),
    34: ("SUBMIT_JOB_LOW_BG", 2, 1, 1), 35: ("SUBMIT_JOB_SCHED", 7, 1, 1),
    36: ("SUBMIT_JOB_EPOCH", 3, 1, 1), 37: ("SUBMIT_REDUCE_JOB", 4, 1, 1),
    38: ("SUBMIT_REDUCE_JOB_BACKGROUND", 4, 1, 1), 39: ("GRAB_JOB_ALL", 0, 0, 1),
    40: ("JOB_ASSIGN_ALL", 4, 1, 0), 41: ("GET_STATUS_UNIQUE", 1, 0, 1),
    42: ("STATUS_RES_UNIQUE", 6, 0, 0),
}

# Parse statuses, numbered as fastgear/protocol.pxd's ParseStatus.
NEED_MORE, PACKET, TEXT = 0, 1, 2
BAD_MAGIC, BAD_TYPE, BAD_ARGS, TOO_LARGE, LINE_TOO_LONG = -1, -2, -3, -4, -5
STATUS_NAMES = {NEED_MORE: "need_more", PACKET: "packet", TEXT: "text",
                BAD_MAGIC: "bad_magic", BAD_TYPE: "bad_type", BAD_ARGS: "bad_args",
                TOO_LARGE: "too_large", LINE_TOO_LONG: "line_too_long"}


def nfields(ptype):
    _, argc, has_data, _ = SPEC[ptype]
    return argc + has_data


class Result:
    """What parsing the bytes at one packet boundary gives. `size` is meaningful for
    PACKET, TEXT and TOO_LARGE; `need` (0 = unknown) for NEED_MORE; `ptype` for
    PACKET and BAD_TYPE; `fields` for PACKET and TEXT."""

    __slots__ = ("fields", "need", "ptype", "res_magic", "size", "status")

    def __init__(self, status, ptype=0, res_magic=0, fields=(), size=0, need=0):
        self.status = status
        self.ptype = ptype
        self.res_magic = res_magic
        self.fields = list(fields)
        self.size = size
        self.need = need

    def key(self):
        """The parts every implementation must agree on for this status."""
        s = self.status
        if s == PACKET:
            return (s, self.ptype, self.res_magic, tuple(self.fields), self.size)
        if s == TEXT:
            return (s, tuple(self.fields), self.size)
        if s == NEED_MORE:
            return (s, self.need)
        if s == BAD_TYPE:
            return (s, self.ptype)
        if s == TOO_LARGE:
            return (s, self.size)
        return (s,)

    def __repr__(self):
        return f"Result{self.key()!r}"


def parse_one(buf, max_size=0xFFFFFFFF, start=0):
    """Parse the packet or text line at offset `start` of `buf` (bytes)."""
    avail = len(buf) - start
    if avail <= 0:
        return Result(NEED_MORE)
    if buf[start] != 0:
        nl = buf.find(b"\n", start, start + min(avail, MAX_TEXT_LINE))
        if nl < 0:
            return Result(LINE_TOO_LONG if avail >= MAX_TEXT_LINE else NEED_MORE)
        line = buf[start:nl]
        if line.endswith(b"\r"):
            line = line[:-1]
        return Result(TEXT, fields=[line], size=nl - start + 1)
    if avail < HEADER_SIZE:
        # fastgear's choice: a wrong magic is refused once its first 3 bytes are visible.
        k = min(avail, 3)
        return Result(BAD_MAGIC if buf[start:start + k] != b"\0RE"[:k] else NEED_MORE)
    magic, ptype, blen = struct.unpack_from(">4sII", buf, start)
    if magic not in (b"\0REQ", b"\0RES"):
        return Result(BAD_MAGIC)
    if ptype == 0 or ptype >= CMD_MAX:
        return Result(BAD_TYPE, ptype=ptype)
    if blen > max_size:
        return Result(TOO_LARGE, size=HEADER_SIZE + blen)
    size = HEADER_SIZE + blen
    if avail < size:
        return Result(NEED_MORE, need=size)
    res = 1 if magic == b"\0RES" else 0
    body = buf[start + HEADER_SIZE:start + size]
    n = nfields(ptype)
    if n == 0:
        return Result(PACKET, ptype, res, [], size)
    # Every field but the last is NUL-terminated, searched within the body only.
    parts = body.split(b"\0", n - 1)
    if len(parts) < n:
        return Result(BAD_ARGS)
    return Result(PACKET, ptype, res, parts, size)


def parse_stream(data, max_size=0xFFFFFFFF):
    """Every complete item in `data` -> (list of Result, bytes consumed). Stops at the
    first error (included) or at an incomplete item (not included)."""
    out = []
    off = 0
    while True:
        r = parse_one(data, max_size, off)
        if r.status == NEED_MORE:
            return out, off
        out.append(r)
        if r.status < 0:
            return out, off
        off += r.size


def encode(ptype, fields, request=True):
    """The canonical bytes of a packet: fields joined by NULs (PROTOCOL.md §1.4)."""
    body = b"\0".join(fields)
    return struct.pack(">4sII", b"\0REQ" if request else b"\0RES", ptype, len(body)) + body
