"""The layering holds where it costs: pure parts and the store load none of QEMU's machinery."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("vmfault.machine", "vmfault.guest", "vmfault.session", "vmfault.profile", "qemu")


def loaded_after(module: str) -> list[str]:
    """The modules a fresh interpreter holds after importing `module` (and nothing else)."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.split()


@pytest.mark.parametrize("module", ["vmfault.faults", "vmfault.classify", "vmfault.stats"])
def test_pure_parts_load_no_machinery(module: str) -> None:
    loaded = loaded_after(module)
    assert module in loaded
    assert not [m for m in loaded if m.startswith(HEAVY)], module


@pytest.mark.parametrize("module", ["vmfault.store", "vmfault.experiment.records"])
def test_records_and_store_load_no_engine(module: str) -> None:
    loaded = loaded_after(module)
    assert module in loaded
    engine = [
        m for m in loaded if m.startswith((*HEAVY, "capstone", "vmfault.experiment.pipeline"))
    ]
    assert not engine, engine


def test_the_package_names_its_api_without_loading_it() -> None:
    loaded = loaded_after("vmfault")
    assert not [m for m in loaded if m.startswith(HEAVY)]
    import vmfault

    assert vmfault.Machine.__name__ == "Machine"  # resolved on first use
    assert "Machine" in dir(vmfault)
    with pytest.raises(AttributeError):
        vmfault.nothing_here  # noqa: B018
