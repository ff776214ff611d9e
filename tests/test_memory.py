"""Peak memory on a CPU, measured in a fresh interpreter so that no other test's threads or garbage
move the figure."""

import subprocess
import sys

import pytest

_PROBE = """
from cachediff.metrics import peak_memory, return_freed_memory
return_freed_memory()
sizes = [16, 64, 16]
print(*(peak_memory(lambda n=n: bytearray(n * 2**20)) for n in sizes))
"""


def test_peak_memory_sees_each_calls_own_peak():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    peaks = out.stdout.split()
    if peaks[0] == "None":
        pytest.skip("this kernel cannot reset the peak resident set")
    mib = [int(p) / 2**20 for p in peaks]
    assert 14 < mib[0] < 24 and 60 < mib[1] < 72 and 14 < mib[2] < 24, mib
