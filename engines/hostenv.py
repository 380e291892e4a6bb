"""The environment the system binaries an engine runs (rsync, restic) are given."""

from __future__ import annotations

import os
import sys


def host_environ() -> dict[str, str]:
    """This process's environment as a system binary (rsync, restic) should see it."""
    env = dict(os.environ)
    # The single-file build's loader points LD_LIBRARY_PATH at its bundled libraries and
    # keeps the user's value in LD_LIBRARY_PATH_ORIG; a system rsync loading a bundled
    # libz or libcrypto instead of its own can crash, so children get the original back.
    if getattr(sys, "frozen", False):
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if original:
            env["LD_LIBRARY_PATH"] = original
        else:
            env.pop("LD_LIBRARY_PATH", None)
    return env
