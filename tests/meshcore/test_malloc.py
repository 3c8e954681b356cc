"""meshcore.malloc: relay-sized buffers stay on the heap instead of being mmapped and
unmapped (page faults) on every read."""
import subprocess
import sys

PROBE = """
import sys
from meshcore import malloc
if sys.argv[1] == "tuned":
    assert malloc.tune()
import ctypes
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
def anon_maps():
    return libc.mallinfo2().hblks   # chunks glibc serves with mmap
before = anon_maps()
bufs = [bytearray(300 * 1024) for _ in range(4)]   # between glibc's default 128 KiB and ours
print(anon_maps() - before)
"""


def new_mappings(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_default_glibc_maps_each_large_buffer():
    assert new_mappings("default") >= 4   # the control: the probe sees mmap when it happens


def test_tuned_keeps_large_buffers_on_the_heap():
    assert new_mappings("tuned") == 0

