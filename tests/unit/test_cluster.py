"""Choosing an executor, the [dask] and [slurm] tables, the image shipped by hash, and
QEMU's end as a VMM error's evidence: pure logic, no cluster, no QEMU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vmfault.campaign.artifacts import (
    BundleFile,
    blob_key,
    image_bundle,
    materialize,
    materialize_file,
    read_blobs,
)
from vmfault.campaign.cluster import cluster_options
from vmfault.campaign.spec import CampaignSpec, ExecutorName, load_campaign
from vmfault.classify import Observation, Outcome, classify, qemu_evidence
from vmfault.errors import ImageError, UsageError
from vmfault.experiment.records import GoldenRun

BASE = """\
[campaign]
name = "scale"
experiments = 4
{campaign}

[guest]
workload = "checksum"

[[faults]]
target = "register:rip"
{tables}
"""
SLURM = """
[slurm]
queue = "debug"
account = "fi"
walltime = "01:00:00"
cores = 4
memory = "8GB"
jobs = 2
job_extra_directives = ["--qos=long"]
"""


def spec_of(tmp_path: Path, campaign: str = "", tables: str = "") -> CampaignSpec:
    path = tmp_path / "c.toml"
    path.write_text(BASE.format(campaign=campaign, tables=tables))
    return load_campaign(path)


def error_of(tmp_path: Path, campaign: str = "", tables: str = "") -> str:
    with pytest.raises(UsageError) as caught:
        spec_of(tmp_path, campaign, tables)
    line = caught.value.one_line()
    assert "\n" not in line
    return line


# --------------------------------------------------------------------- executor choice


def test_local_is_the_default(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    assert spec.campaign.executor is ExecutorName.LOCAL
    assert cluster_options(spec) is None


def test_a_dask_campaign_takes_its_scheduler_from_the_file_or_the_command_line(
    tmp_path: Path,
) -> None:
    spec = spec_of(tmp_path, 'executor = "dask"', '[dask]\nscheduler = "tcp://10.0.0.1:8786"')
    options = cluster_options(spec)
    assert options is not None and options.scheduler == "tcp://10.0.0.1:8786"
    override = cluster_options(spec, scheduler="tcp://127.0.0.1:9000")
    assert override is not None and override.scheduler == "tcp://127.0.0.1:9000"
    implied = cluster_options(spec_of(tmp_path), scheduler="tcp://127.0.0.1:9000")
    assert implied is not None and implied.executor is ExecutorName.DASK


def test_the_slurm_table_is_read_whole(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, 'executor = "slurm"', SLURM)
    options = cluster_options(spec)
    assert options is not None and options.slurm is not None
    slurm = options.slurm
    assert (slurm.queue, slurm.account, slurm.walltime, slurm.cores, slurm.memory, slurm.jobs) == (
        "debug", "fi", "01:00:00", 4, "8GB", 2,
    )  # fmt: skip
    assert slurm.job_extra_directives == ("--qos=long",)
    assert CampaignSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("executor", "scheduler", "campaign", "message"),
    [
        ("cloud", None, "", "unknown executor 'cloud' (allowed: local, dask, slurm)"),
        ("dask", None, "", "the dask executor needs a scheduler address"),
        ("dask", "localhost:8786", "", "'localhost:8786' is not a Dask scheduler address"),
        ("slurm", None, "", "the slurm executor needs a [slurm] table"),
        ("local", "tcp://127.0.0.1:1", "", "--scheduler needs the dask executor"),
    ],
)
def test_bad_executor_choices_are_one_line(
    tmp_path: Path, executor: str, scheduler: str | None, campaign: str, message: str
) -> None:
    spec = spec_of(tmp_path, campaign)
    with pytest.raises(UsageError) as caught:
        cluster_options(spec, executor=executor, scheduler=scheduler)
    assert message in caught.value.one_line()


@pytest.mark.parametrize(
    ("campaign", "tables", "message"),
    [
        ('executor = "cloud"', "", "campaign.executor: not an allowed value"),
        ('executor = "slurm"', "", "executor = slurm needs a [slurm] table"),
        ("", SLURM.replace('memory = "8GB"\n', ""), "slurm.memory: missing required key"),
        ("", SLURM.replace('walltime = "01:00:00"', 'walltime = "1h"'), "slurm.walltime"),
        ("", SLURM + "partition = 'x'\n", "slurm.partition: unknown key"),
        ("", '[dask]\nscheduler = "10.0.0.1"\n', "dask.scheduler"),
    ],
)
def test_bad_tables_are_one_line(tmp_path: Path, campaign: str, tables: str, message: str) -> None:
    assert message in error_of(tmp_path, campaign, tables)


# --------------------------------------------------------------------- the image by hash


def image(tmp_path: Path) -> Path:
    root = tmp_path / "made" / "abc123"
    (root / "workloads").mkdir(parents=True)
    (root / "vmlinux").write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    (root / "image.json").write_text('{"image_hash": "abc123"}\n')
    (root / "workloads" / "solver").write_bytes(b"binary")
    (root / "workloads" / "solver").chmod(0o755)
    (root / ".vmlinux.123.partial").write_bytes(b"half")
    return root


def test_a_worker_without_the_image_gets_it_whole_and_checked(tmp_path: Path) -> None:
    root = image(tmp_path)
    bundle = image_bundle(root, "abc123")
    assert [item.path for item in bundle.files] == ["image.json", "vmlinux", "workloads/solver"]
    blobs = read_blobs(root, bundle)
    assert set(blobs) == set(bundle.blob_keys())
    cache = tmp_path / "worker-cache"
    made = materialize(bundle, blobs, cache)
    assert made == cache / "images" / "abc123"
    for item in bundle.files:
        assert (made / item.path).read_bytes() == (root / item.path).read_bytes()
    assert (made / "workloads" / "solver").stat().st_mode & 0o777 == 0o755


def test_a_worker_with_the_image_needs_no_blob_and_a_changed_file_is_replaced(
    tmp_path: Path,
) -> None:
    root = image(tmp_path)
    bundle = image_bundle(root, "abc123")
    cache = tmp_path / "worker-cache"
    made = materialize(bundle, read_blobs(root, bundle), cache)
    assert materialize(bundle, None, cache) == made  # all present: nothing shipped
    (made / "vmlinux").write_bytes(b"another kernel")
    with pytest.raises(ImageError, match="differs from the coordinator's"):
        materialize(bundle, None, cache)
    materialize(bundle, read_blobs(root, bundle), cache)
    assert (made / "vmlinux").read_bytes() == (root / "vmlinux").read_bytes()


def test_a_blob_whose_hash_differs_is_refused(tmp_path: Path) -> None:
    data = b"[[pattern]]\n"
    item = BundleFile("crash-patterns/x.toml", hashlib.sha256(data).hexdigest(), len(data), 0o644)
    target = tmp_path / item.path
    with pytest.raises(ImageError, match="does not have its sha256"):
        materialize_file(target, item, {blob_key(item.sha256): b"[[other]]\n"})
    assert not target.exists()
    assert materialize_file(target, item, {blob_key(item.sha256): data})
    assert not materialize_file(target, item, None)


# --------------------------------------------------------------------- VMM errors


def test_qemu_dying_by_itself_is_a_vmm_error_with_its_end_as_evidence() -> None:
    reference = GoldenRun(machine="guest", argv=("checksum",), stdout=b"ok\n", stderr=b"",
                          exit_code=0, signal=None, guest_s=0.5, host_s=1.0)  # fmt: skip
    output = "qemu: warming up\n\nqemu: fatal: Trying to execute code outside RAM\nRAX=00\n"
    observed = Observation(injected=True, finished=False, qemu_alive=False,
                           qemu_exit_code=-6, qemu_output=output)  # fmt: skip
    verdict = classify(reference, observed)
    assert verdict.outcome is Outcome.VMM_ERROR
    assert verdict.evidence == (
        "QEMU: killed by SIGABRT; stderr: qemu: warming up | qemu: fatal: Trying to execute "
        "code outside RAM | RAX=00"
    )
    assert qemu_evidence(1, "") == "QEMU: exit status 1; no stderr"
