"""The shipped systemd unit: valid, and hardened to systemd's "OK" exposure level.

Both checks run `systemd-analyze` offline, on the file alone (no running systemd, no root).
A missing `systemd-analyze` is a failure with the install hint, never a skip: a suite that
skipped here would let a regression in the unit's hardening pass unnoticed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.procs import REPO_ROOT

UNIT = REPO_ROOT / "systemd" / "streamd.service"
MAX_EXPOSURE = 3.0
INSTALL_HINT = "run ./scripts/setup.sh (installs systemd, which provides systemd-analyze >= 250)"
SHIPPED_EXEC = "/opt/streamd/.venv/bin/streamd"


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(f"systemd-analyze not found: {INSTALL_HINT}", pytrace=False)
    return path


def analyze(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_unit_exposure_is_ok(systemd_analyze: str) -> None:
    res = analyze(systemd_analyze, "security", "--offline=yes", "--no-pager", str(UNIT))
    found = re.search(r"Overall exposure level for streamd\.service: (\d+\.\d+) (\w+)",
                      res.stdout)
    assert found, (f"no exposure level in the output (rc={res.returncode}; systemd < 250 "
                   f"lacks --offline: {INSTALL_HINT})\n{res.stdout}\n{res.stderr}")
    exposure = float(found.group(1))
    open_items = [line for line in res.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= MAX_EXPOSURE, (
        f"exposure {exposure} {found.group(2)} above {MAX_EXPOSURE}; open items:\n"
        + "\n".join(open_items))


def test_unit_verifies(systemd_analyze: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` also checks that ExecStart= is an executable file, and the
    unit names where setup puts streamd on the target (/opt/streamd). The copy verified here
    differs only in that path: it points at this checkout's installed entry point, so every
    other line is checked exactly as shipped."""
    text = UNIT.read_text()
    assert f"ExecStart={SHIPPED_EXEC} " in text, "the unit's ExecStart= moved; update this test"
    entry = Path(sys.executable).with_name("streamd")
    assert entry.is_file(), f"{entry} missing: install streamd into this venv ({INSTALL_HINT})"
    copy = tmp_path / "streamd.service"
    copy.write_text(text.replace(SHIPPED_EXEC, str(entry)))
    res = analyze(systemd_analyze, "verify", str(copy))
    complaints = [line for line in (res.stdout + res.stderr).splitlines()
                  if "streamd.service" in line]
    assert res.returncode == 0 and not complaints, (
        f"systemd-analyze verify rc={res.returncode}\n{res.stdout}\n{res.stderr}")
