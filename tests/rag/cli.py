"""Run the real `appliance` CLI in a subprocess (optionally without root's file-permission bypass)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Root reads mode-000 files anyway; setpriv drops the two capabilities that let it.
DROP_ROOT_FILE_BYPASS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def appliance(*args: str, drop_file_bypass: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "appliance"), *args]
    if drop_file_bypass and os.geteuid() == 0:
        cmd = DROP_ROOT_FILE_BYPASS + cmd
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def can_make_unreadable_files() -> bool:
    return os.geteuid() != 0 or shutil.which("setpriv") is not None
