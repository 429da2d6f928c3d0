"""loadtest/cpu_profile.py: grouping perf's per-library report, and one real recording where the
machine lets perf run (skipped elsewhere)."""

import subprocess
import sys

import pytest

from loadtest import cpu_cost, cpu_profile

REPORT = """# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 4K of event 'cpu-clock:ppp'
#
# Overhead  Shared Object
# ........  ......................
#
    51.91%  libpython3.11.so.1.0
    12.09%  [kernel.kallsyms]
    10.28%  libtorch_cpu.so
     5.77%  cy4rczejqdcdnqcudjhszqydiv56y47wos6mxs4ltcsi7s6j4egh.wrapper.so
     4.04%  libc.so.6
     2.65%  libc10.so
     2.06%  loop.cpython-311-x86_64-linux-gnu.so
     1.49%  _multiarray_umath.cpython-311-x86_64-linux-gnu.so
     0.45%  hiredis.cpython-311-x86_64-linux-gnu.so
     0.31%  some_unknown_extension.so
"""


def test_libraries_are_grouped_into_named_parts_that_sum_to_the_report():
    parts = cpu_profile.breakdown(REPORT)
    assert parts["Python interpreter"] == pytest.approx(51.91)
    assert parts["kernel"] == pytest.approx(12.09)
    assert parts["compiled engine graphs"] == pytest.approx(5.77)
    assert parts["torch around the model (ops, dispatch, tensors)"] == pytest.approx(12.93)
    assert parts["event loop, HTTP, JSON, validation, Redis client"] == pytest.approx(2.51)
    assert parts["numpy"] == pytest.approx(1.49)
    assert parts["other"] == pytest.approx(0.31)
    assert sum(parts.values()) == pytest.approx(91.05)  # the rows above: nothing lost
    assert cpu_profile.part_of("/app/artifacts/compiled/x/append1.wrapper.so") == (
        "compiled engine graphs")


def test_the_breakdown_renders_as_percent_and_microseconds_per_request():
    result = {"rows": [{"target": "plr", "route": "/events", "server_us": 600.0}],
              "profile": {"plr /events": cpu_profile.breakdown(REPORT)}}
    lines = cpu_cost._profile_lines(result)
    assert "| Python interpreter | 51.9 (311) |" in lines
    assert not any(line.startswith("| other |") for line in lines)  # under 0.5 %: left out


def test_no_perf_means_no_breakdown_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_profile.shutil, "which", lambda name: None)
    assert cpu_profile.record(1, 0.1, tmp_path / "x.data") is None


def test_a_real_recording_of_a_busy_process_names_the_interpreter(tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        text = cpu_profile.record(busy.pid, 0.5, tmp_path / "busy.data")
    finally:
        busy.kill()
        busy.wait()
    if text is None:
        pytest.skip("perf is not installed or not permitted here")
    assert cpu_profile.breakdown(text)["Python interpreter"] > 50
