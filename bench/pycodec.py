"""A plain-Python Gearman codec: the reference the compiled codec is measured against.

It does what `fastgear.protocol` does (header check, length-bounded body, NUL-separated
arguments per the command table, text lines) in idiomatic Python with `struct` and
`bytes.split`, so the micro benchmarks show what compiling the codec buys. It is not
used by the server.
"""
import struct

HEADER = struct.Struct(">4sII")
# type -> (arguments, has trailing data blob); the subset the benchmarks exercise plus
# the common worker/client packets.
ARGS = {
    1: (1, False), 4: (0, False), 6: (0, False), 7: (2, True), 8: (1, False),
    9: (0, False), 10: (0, False), 11: (2, True), 13: (1, True), 18: (2, True),
    30: (0, False), 31: (3, True), 32: (2, True), 34: (2, True),
}


def parse_all(data: bytes):
    """Every complete packet in data -> (list of (type, fields), rest)."""
    out = []
    off = 0
    n = len(data)
    while off < n:
        if data[off] != 0:
            nl = data.find(b"\n", off)
            if nl < 0:
                break
            out.append((0, [data[off:nl].rstrip(b"\r")]))
            off = nl + 1
            continue
        if n - off < 12:
            break
        magic, ptype, size = HEADER.unpack_from(data, off)
        if magic not in (b"\0REQ", b"\0RES"):
            raise ValueError("bad magic")
        end = off + 12 + size
        if end > n:
            break
        argc, has_data = ARGS.get(ptype, (0, False))
        nfields = argc + (1 if has_data else 0)
        body = data[off + 12:end]
        fields = body.split(b"\0", nfields - 1) if nfields else []
        if len(fields) != nfields:
            raise ValueError("missing arguments")
        out.append((ptype, fields))
        off = end
    return out, data[off:]


def encode(ptype: int, fields=(), request: bool = False) -> bytes:
    body = b"\0".join(fields)
    return HEADER.pack(b"\0REQ" if request else b"\0RES", ptype, len(body)) + body
