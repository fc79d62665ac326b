"""The file-system seam: what its callers rely on beyond what the storage contract tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from backup import fsio


def test_write_releases_its_view_of_the_buffer_even_when_its_frame_is_kept(tmp_path: Path) -> None:
    """Restore refills one buffer after each write; a profiler or a traceback keeping
    the frame of ``write`` alive must not keep the buffer locked against resizing."""
    kept = []

    def keep_frames_of_write(frame, event, argument):
        if event == "return" and frame.f_code is fsio.write.__code__:
            kept.append(frame)
        return keep_frames_of_write

    buffer = bytearray(b"restored bytes " * 1000)
    descriptor = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        sys.settrace(keep_frames_of_write)
        try:
            fsio.write(descriptor, buffer)
        finally:
            sys.settrace(None)
    finally:
        os.close(descriptor)
    assert kept, "the frame of write must have been kept for this test to mean anything"
    buffer.clear()  # BufferError if the kept frame still exported the buffer
    assert (tmp_path / "out").read_bytes() == b"restored bytes " * 1000
