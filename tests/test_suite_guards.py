"""The suite's own guards (pytest.ini): a hung test ends the run with every thread's stack, and a
crashed xdist worker ends the run as a failure instead of leaving it idle. Each guard is shown on a
test that hangs or crashes on purpose, run in a pytest of its own with the suite's configuration
and its `-n 2 --dist loadfile`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO_ROOT

INJECT_ENV = "COSTEER_JAX_FAULT_INJECTION"
injected = pytest.mark.skipif(os.environ.get(INJECT_ENV) != "1",
                              reason=f"hangs or crashes on purpose; runs only with {INJECT_ENV}=1")


@pytest.mark.fault_injection
@injected
def test_blocks_forever():
    threading.Event().wait()  # a futex wait in native code, like the hang seen in the suite


@pytest.mark.fault_injection
@injected
def test_crashes_its_worker():
    os.kill(os.getpid(), signal.SIGSEGV)


def run_pytest(args, cwd, timeout=240):
    env = dict(os.environ, **{INJECT_ENV: "1"})
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist",
                           "loadfile", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return done, done.stdout + done.stderr, time.monotonic() - start


def test_a_hung_test_times_out_with_every_threads_stack():
    done, output, seconds = run_pytest([f"{__file__}::test_blocks_forever", "-m", "fault_injection",
                                        "-o", "faulthandler_timeout=5"], REPO_ROOT)
    assert done.returncode != 0, output
    assert "Timeout (0:00:05)!" in output and "most recent call first" in output, output  # faulthandler's dump
    assert "in test_blocks_forever" in output and "threading.py" in output, output  # the blocked frame
    assert "crashed" in output, output  # the dump ends the worker; the run ends with it
    assert seconds < 120, f"the run took {seconds:.0f} s to fail"


def test_a_crashed_worker_fails_the_run_instead_of_hanging(tmp_path):
    """pytest-xdist's --dist loadfile could idle forever after replacing a crashed worker when
    there are more files than workers (its issues 784 and 1378): four files, two workers."""
    (tmp_path / "test_a_crash.py").write_text(
        "import os, signal\n\ndef test_crash():\n    os.kill(os.getpid(), signal.SIGSEGV)\n\n"
        "def test_after_crash():\n    pass\n")
    for name in "bcd":
        (tmp_path / f"test_{name}_ok.py").write_text("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    done, output, seconds = run_pytest(["-c", str(REPO_ROOT / "pytest.ini"), "--rootdir", str(tmp_path),
                                        str(tmp_path)], tmp_path)
    assert done.returncode != 0, output
    assert "Segmentation fault" in output, output  # faulthandler's report of the dead worker
    assert "crashed" in output and "test_a_crash.py::test_crash" in output, output
    assert seconds < 120, f"the run took {seconds:.0f} s to fail"
