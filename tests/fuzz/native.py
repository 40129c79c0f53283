"""ctypes access to fastgear.protocol's C entry points, and input buffers fenced by
inaccessible pages. The fuzzers call `parse_packet`/`encode_packet` directly (through
the `__pyx_capi__` capsules Cython exports for cimporting modules) instead of only the
Python wrappers, because the wrappers take `bytes`, whose storage sits inside larger
CPython allocations: a read past the end of the input would go unnoticed. Here each
input is copied so that its last byte touches a PROT_NONE page (and its first byte
follows one), so any read outside [p, p + avail) faults at once, with or without
AddressSanitizer. `load_protocol` imports either the installed module or an
instrumented copy built by build_instrumented.py under the same module name.
"""
import ctypes
import importlib.machinery
import importlib.util
import mmap
import sys

MAX_FIELDS = 8


class Packet(ctypes.Structure):
    # Mirrors `cdef struct Packet` in fastgear/protocol.pxd, member for member.
    _fields_ = [("type", ctypes.c_uint32), ("res_magic", ctypes.c_uint8),
                ("nfields", ctypes.c_uint8),
                ("f", ctypes.c_void_p * MAX_FIELDS), ("flen", ctypes.c_size_t * MAX_FIELDS),
                ("size", ctypes.c_size_t), ("need", ctypes.c_size_t)]


class Buf(ctypes.Structure):
    # Mirrors `cdef struct Buf` in fastgear/buffer.pxd.
    _fields_ = [("data", ctypes.c_void_p), ("start", ctypes.c_size_t),
                ("end", ctypes.c_size_t), ("cap", ctypes.c_size_t)]


class CmdInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("argc", ctypes.c_uint8),
                ("has_data", ctypes.c_uint8), ("request", ctypes.c_uint8)]


PARSE_T = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                           ctypes.POINTER(Packet))
ENCODE_T = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Buf), ctypes.c_uint32,
                            ctypes.c_uint32, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                            ctypes.POINTER(ctypes.c_size_t))

_api = ctypes.pythonapi
_api.PyCapsule_GetName.restype = ctypes.c_char_p
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.free.argtypes = [ctypes.c_void_p]
PROT_NONE, PROT_RW = 0, mmap.PROT_READ | mmap.PROT_WRITE


def load_protocol(path=None):
    """fastgear.protocol: the installed one, or the extension file at `path` registered
    under the same name (so its capsules and type names match the real module's)."""
    if path is None:
        import fastgear.protocol as mod
        return mod
    name = "fastgear.protocol"
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _capsule(mod, name, must_contain):
    cap = mod.__pyx_capi__[name]
    sig = _api.PyCapsule_GetName(cap)
    # A changed C signature must stop the fuzzer, not make it call garbage.
    if must_contain not in sig:
        raise RuntimeError(f"{name} has signature {sig!r}; update tests/fuzz/native.py")
    return _api.PyCapsule_GetPointer(cap, sig)


class Codec:
    """The C codec of one loaded protocol module."""

    def __init__(self, mod):
        self.mod = mod
        self.parse_packet = PARSE_T(_capsule(
            mod, "parse_packet", b"int (char const *, size_t, size_t, struct "))
        # The encoder is inline in protocol.pxd; the module exports it as
        # encode_packet_api.
        self.encode_packet = ENCODE_T(_capsule(
            mod, "encode_packet_api", b"int (struct __pyx_t_8fastgear_6buffer_Buf *, uint32_t, "
                                  b"uint32_t, int, char const **, size_t const *)"))
        n = len(mod.NAMES) + 1
        table = ctypes.cast(_capsule(mod, "COMMANDS", b"CmdInfo"), ctypes.POINTER(CmdInfo))
        self.commands = {t: (table[t].name.decode(), table[t].argc, table[t].has_data,
                             table[t].request) for t in range(1, n)}

    def encode(self, magic_res, ptype, fields):
        """encode_packet into a fresh Buf -> bytes (None when it reports failure)."""
        n = len(fields)
        keep = [ctypes.create_string_buffer(f, len(f)) for f in fields]
        ptrs = (ctypes.c_void_p * max(n, 1))(*[ctypes.addressof(k) for k in keep])
        lens = (ctypes.c_size_t * max(n, 1))(*[len(f) for f in fields])
        buf = Buf()
        try:
            if self.encode_packet(ctypes.byref(buf), magic_res, ptype, n, ptrs, lens) != 0:
                return None
            return ctypes.string_at(buf.data + buf.start, buf.end - buf.start)
        finally:
            _libc.free(buf.data)


class Fenced:
    """A reusable input area of `capacity` bytes between two PROT_NONE pages. `place`
    copies data so that it ends exactly at the upper fence and returns its address."""

    def __init__(self, capacity):
        page = mmap.PAGESIZE
        self.pages = (capacity + page - 1) // page
        total = (self.pages + 2) * page
        base = _libc.mmap(None, total, PROT_RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        self.low = base + page
        self.high = base + (self.pages + 1) * page
        for fence in (base, self.high):
            if _libc.mprotect(fence, page, PROT_NONE) != 0:
                raise OSError(ctypes.get_errno(), "mprotect failed")
        self.capacity = self.pages * page

    def place(self, data):
        if len(data) > self.capacity:
            raise ValueError("input larger than the fenced area")
        start = self.high - len(data)
        ctypes.memmove(start, data, len(data))
        return start

