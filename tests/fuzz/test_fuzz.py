"""Fuzz the page extractor and the image loader a fixed number of runs each (tests/fuzz/run.py): zero crashes.

The kept corpus (tests/fuzz/corpus/TARGET) seeds each run; new inputs go to a scratch folder, crashes to another,
whose files are shown when a run fails. FUZZ_RUNS_SCALE multiplies the run counts (e.g. 10 for a longer look).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import weaker_setup
from tests.fuzz.report import record

ROOT = Path(__file__).resolve().parents[2]
# About 20-30 s each on a busy 2-core machine.
RUNS = {"extract": 30_000, "image": 30_000}


@pytest.mark.parametrize("target", sorted(RUNS))
def test_fuzz_target_runs_without_a_crash(target, tmp_path):
    runs = int(RUNS[target] * float(os.environ.get("FUZZ_RUNS_SCALE", "1")))
    artifacts = tmp_path / "artifacts"
    result = subprocess.run([sys.executable, "-m", "tests.fuzz.run", target, "--runs", str(runs), "--out",
                             str(tmp_path / "corpus"), "--artifacts", str(artifacts)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    output = result.stdout + result.stderr
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    engine = "atheris" if "INFO: Seed:" in output else "random mutations"
    crashes = sorted(p.name for p in artifacts.iterdir()) if artifacts.exists() else []
    record(target, engine, int(done.group(1)) if done else 0, int(done.group(2)) if done else 0, len(crashes),
           len(list((ROOT / "tests/fuzz/corpus" / target).iterdir())))
    assert result.returncode == 0 and not crashes, f"{crashes}\n{output[-6000:]}"
    if engine != "atheris":  # requirements.lock has it for CI's platform: random mutations find far less
        weaker_setup("atheris is not installed: the harness ran on random mutations only")
    assert done and int(done.group(1)) >= runs, output[-3000:]
