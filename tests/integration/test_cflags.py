"""Users' compiler flags on real guests: a small function that -O2 inlines into its caller
fails in one line naming the cause; `--cflags -O0` (or `cflags` in a campaign) makes it a
function of its own that profiles and takes faults; flags gcc rejects fail in one line
before anything boots."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vmfault.store import SQLiteStore

pytestmark = pytest.mark.vm

# Horner's rule, called from main. Not static, so an out-of-line copy keeps its symbol at
# -O2, while the call in main is inlined: the copy never runs (a static one would have
# no symbol at all, and `--function horner` fails as an unknown function).
POLY_C = """
#include <stdio.h>
#include <stdlib.h>

double horner(const double *c, int n, double x)
{
    double y = 0.0;
    for (int i = n - 1; i >= 0; i--)
        y = y * x + c[i];
    return y;
}

int main(int argc, char **argv)
{
    static const double coefficients[] = {1.0, -2.5, 0.75, 3.0, -0.125};
    int points = argc > 1 ? atoi(argv[1]) : 50;
    double sum = 0.0;
    for (int k = 0; k < points; k++)
        sum += horner(coefficients, 5, k * 0.01);
    printf("%.6f\\n", sum);
    return 0;
}
"""
INLINED = (
    "vmfault: error: function horner never executed in the golden run: probably inlined into "
    "its caller or never called; compile with --cflags -O0, or mark it __attribute__((noinline))"
)
CAMPAIGN = """
[campaign]
name = "{name}"
seed = 3
experiments = 2
workers = 1

[guest]
workload = "poly.c"
{cflags}

[[faults]]
target = "instruction"
op = "fadd"
function = "horner"
"""


def vmfault(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a run that failed with exit status 2 (progress lines, such as
    an image being built, may come before it; a traceback may not)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("vmfault:")] == lines[-1:], lines
    return lines[-1]


@pytest.fixture(scope="module")
def poly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding poly.c."""
    directory = tmp_path_factory.mktemp("cflags")
    (directory / "poly.c").write_text(POLY_C)
    return directory


@pytest.mark.parametrize(
    "command",
    [
        ["profile", "-w", "poly.c", "--function", "horner"],
        ["inject", "-w", "poly.c", "--op", "fadd", "--function", "horner"],
    ],
    ids=["profile", "inject"],
)
def test_an_inlined_function_is_one_line_exit_2(poly: Path, command: list[str]) -> None:
    assert error_line(vmfault(*command, cwd=poly)) == INLINED


def test_a_static_function_inlined_away_says_so_before_any_boot(poly: Path) -> None:
    (poly / "spoly.c").write_text(POLY_C.replace("double horner", "static double horner"))
    line = error_line(vmfault("profile", "-w", "spoly.c", "--function", "horner", cwd=poly))
    assert line.startswith(
        "vmfault: error: spoly has no function 'horner': misspelt, or inlined into every caller"
    )
    assert "--cflags -O0" in line


def test_at_O0_it_profiles_and_takes_a_fault(poly: Path) -> None:
    result = vmfault(
        "profile", "-w", "poly.c", "--function", "horner", "--cflags", "-O0", "--json", cwd=poly
    )
    assert result.returncode == 0, result.stderr
    classes = json.loads(result.stdout)["classes"]
    assert classes["fadd"] == classes["fmul"] == 250  # 50 points x 5 coefficients
    assert classes["all"] > classes["fadd"]

    result = vmfault(
        "inject", "-w", "poly.c", "--op", "fadd", "--function", "horner",
        "--cflags", "-O0", "--seed", "2", "--json", cwd=poly,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["fault"]["injected"] is True, record
    assert record["instruction"]["function"] == "horner"
    assert record["outcome"] != "not-injected"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["profile", "-w", "poly.c", "--cflags", "-Onope"], "argument to"),
        (
            ["inject", "-w", "poly.c", "--op", "fadd", "--cflags=-O0 -fnope"],
            "unrecognized command-line option",
        ),
    ],
    ids=["level", "option"],
)
def test_flags_gcc_rejects_are_one_line_before_any_boot(
    poly: Path, command: list[str], message: str
) -> None:
    result = vmfault(*command, cwd=poly)
    line = error_line(result)
    assert result.stderr.strip() == line  # nothing built, nothing booted: no progress lines
    assert line.startswith("vmfault: error: gcc rejects the cflags of poly (")
    assert message in line


def test_a_campaign_with_cflags_runs_and_records_them(poly: Path) -> None:
    (poly / "o0.toml").write_text(CAMPAIGN.format(name="poly-o0", cflags='cflags = "-O0"'))
    result = vmfault("campaign", "run", "o0.toml", "--json", cwd=poly)
    assert result.returncode == 0, result.stderr
    db = poly / "poly-o0.db"
    with sqlite3.connect(db) as conn:
        injected = [row[0] for row in conn.execute("SELECT injected FROM injection")]
        outcomes = [row[0] for row in conn.execute("SELECT class FROM outcome")]
    assert len(outcomes) == 2 and "not-injected" not in outcomes, outcomes
    assert len(injected) == 2 and all(injected)
    with SQLiteStore.open_readonly(db) as store:
        info = store.campaign_info()
    assert json.loads(info.spec_json)["guest"]["cflags"] == ["-O0"]

    # Without the flags the function is inlined: the worker's one line ends the campaign.
    (poly / "o2.toml").write_text(CAMPAIGN.format(name="poly-o2", cflags=""))
    result = vmfault("campaign", "run", "o2.toml", "--json", cwd=poly)
    assert error_line(result) == INLINED
    with SQLiteStore.open_readonly(poly / "poly-o2.db") as store:
        assert store.campaign_info().provenance["image_hash"] != info.provenance["image_hash"]
