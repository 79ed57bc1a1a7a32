"""The short `make faults` inside `make test`: one run of each fault kind, on SQLite (faults/run.py).

Real Mosquitto, the collector and three terminals as subprocesses; kill -9 of terminal, broker
and collector, broker down, a blackholed link, a full disk (tmpfs, as root), clock jumps, SIGTERM,
an offline backlog, hostile batches, two collectors with one killed. It fails on any loss,
duplicate, phantom, content mismatch, seq hole, pass without a record, or a fault the system does
not recover from within the smoke's deadline; the table is printed either way.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_faults_smoke():
    r = subprocess.run([sys.executable, "-m", "faults.run", "--smoke", "--backend", "sqlite", "--seed", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=400)
    print(r.stdout)
    assert r.returncode != 2, f"the fault harness could not run:\n{r.stdout}\n{r.stderr[-4000:]}"
    assert r.returncode == 0, f"faults found (see the table):\n{r.stdout}"
