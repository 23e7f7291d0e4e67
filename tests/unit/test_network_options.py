"""Which network fault options combine (`FaultSpec.from_options`), the hang budget, and the
`[[machine]]` tables of campaign files: each mistake one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmfault.campaign import load_campaign
from vmfault.errors import UsageError
from vmfault.faults import Budget, FaultSpec, OptionError
from vmfault.faults.network import Direction, NetworkKind, Where, parse_bandwidth
from vmfault.machine.dialogue import Expect, Send, Sleep


def test_a_network_fault_from_its_options() -> None:
    spec = FaultSpec.from_options(
        target="network:corrupt", bits=2, where="payload", machine="server", direction="in",
        probability=0.5, trigger="time:1s", period="2s",
    )  # fmt: skip
    fault = spec.network
    assert fault is not None and spec.machine == "server"
    assert (fault.kind, fault.nic, fault.direction, fault.bits, fault.where) == (
        NetworkKind.CORRUPT, "server", Direction.IN, 2, Where.PAYLOAD,
    )  # fmt: skip
    assert fault.probability == 0.5 and fault.duration_s == 2.0 and spec.period_s is None
    assert spec.trigger.time_s == 1.0
    assert spec.to_json()["network"]["where"] == "payload"
    assert fault.spelling == "nic server in"


def test_every_kind_takes_its_options() -> None:
    made = [
        FaultSpec.from_options(target="network:loss", probability=0.1, burst=4, link="a-b"),
        FaultSpec.from_options(target="network:delay", delay="50ms", jitter="5ms"),
        FaultSpec.from_options(target="network:duplicate", probability=0.2),
        FaultSpec.from_options(target="network:reorder", delay="20ms"),
        FaultSpec.from_options(target="network:rate", bandwidth="1mbit"),
        FaultSpec.from_options(target="network:partition", groups=[["a"], ["b", "c"]]),
    ]
    assert [s.network.kind.value for s in made if s.network] == [
        "loss", "delay", "duplicate", "reorder", "rate", "partition",
    ]  # fmt: skip
    assert made[0].network is not None and made[0].network.link == ("a", "b")
    assert made[4].network is not None and made[4].network.bandwidth_bps == 1e6
    assert made[5].network is not None and made[5].network.spelling == "a | b,c"


def test_the_command_line_gives_bits_as_text() -> None:
    spec = FaultSpec.from_options(target="network:corrupt", bits="3")
    assert spec.network is not None and spec.network.bits == 3


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({"target": "network:loss", "probability": 1.5}, "probability", "outside [0, 1]"),
        ({"target": "network:loss", "probability": -0.1}, "probability", "outside [0, 1]"),
        ({"target": "network:loss"}, "probability", "needs probability"),
        ({"target": "network:partition", "groups": [["a", "b"], ["b"]]}, "groups",
         "names machine 'b' twice"),
        ({"target": "network:partition", "groups": [["a"]]}, "groups", "two groups"),
        ({"target": "network:partition", "groups": [["a"], ["b"]], "link": "a-b"}, "link",
         "does not apply to network:partition"),
        ({"target": "network:delay", "delay": "1ms", "probability": 0.1}, "probability",
         "does not apply to network:delay"),
        ({"target": "network:delay"}, "delay", "needs delay"),
        ({"target": "network:rate"}, "bandwidth", "needs bandwidth"),
        ({"target": "network:rate", "bandwidth": "fast"}, "bandwidth", "invalid bandwidth"),
        ({"target": "network:loss", "probability": 0.1, "link": "a"}, "link", "invalid link"),
        ({"target": "network:loss", "probability": 0.1, "link": "a-a"}, "link", "invalid link"),
        ({"target": "network:loss", "probability": 0.1, "link": "a-b", "machine": "a"}, "link",
         "not both"),
        ({"target": "network:loss", "probability": 0.1, "direction": "out"}, "direction",
         "needs a link or a machine"),
        ({"target": "network:loss", "probability": 0.1, "direction": "up", "link": "a-b"},
         "direction", "invalid direction"),
        ({"target": "network:loss", "probability": 0.1, "burst": 0.5}, "burst", "burst"),
        ({"target": "network:corrupt", "bits": "3,4"}, "bits", "number of bits"),
        ({"target": "network:corrupt", "where": "trailer"}, "where", "invalid where"),
        ({"target": "network:loss", "probability": 0.1, "flips": 3}, "flips",
         "does not apply to a network fault"),
        ({"target": "network:loss", "probability": 0.1, "context": "user"}, "context",
         "does not apply to a network fault"),
        ({"target": "network:loss", "probability": 0.1, "period": "0s"}, "period",
         "not longer than 0"),
        ({"target": "register:rip", "link": "a-b"}, "link", "applies only to network faults"),
        ({"target": "memory:ram", "groups": [["a"], ["b"]]}, "groups",
         "applies only to network faults"),
        ({"target": "network:jam"}, "target", "unknown network fault"),
    ],
)  # fmt: skip
def test_options_that_do_not_combine(options: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(OptionError) as caught:
        FaultSpec.from_options(**options)
    assert caught.value.key == key
    assert words in caught.value.message
    assert "\n" not in caught.value.one_line()


def test_the_other_targets_take_a_machine() -> None:
    spec = FaultSpec.from_options(target="register:rip", machine="server")
    assert spec.machine == "server" and spec.to_json()["machine"] == "server"
    assert FaultSpec.from_options(target="none", machine="server").machine == "server"


@pytest.mark.parametrize(
    ("text", "bps"),
    [("100kbit", 1e5), ("1mbit", 1e6), ("1.5gbit", 1.5e9), ("500kB/s", 4e6), ("5MB/s", 4e7)],
)
def test_bandwidths(text: str, bps: float) -> None:
    assert parse_bandwidth(text) == bps


def test_budgets() -> None:
    assert Budget.parse("20s") == Budget(guest_s=20.0)
    assert Budget.parse(3) == Budget(factor=3.0) == Budget.parse("3")
    assert Budget.parse("500ms").spelling == "0.5 s"
    for bad in ("soon", "-2s", "0s", "0"):
        with pytest.raises(UsageError):
            Budget.parse(bad)


HEAD = """\
[campaign]
name = "net"
experiments = 4
budget = "20s"
judge = "client"

[[machine]]
name = "server"
workload = "netecho"
args = ["--serve"]
daemon = true

[[machine]]
name = "client"
script = [
  { send = "until wget -q -O - http://server/; do sleep 0.2; done\\n" },
  { expect = ["hello", "bye"], timeout = "10s" },
  { sleep = "100ms" },
]
"""
FAULT = """
[[faults]]
target = "network:loss"
probability = 0.1
link = "client-server"
"""


PARTITION_TWICE = """
[[faults]]
target = "network:partition"
groups = [["client", "server"], ["client"]]
"""


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "net.toml"
    path.write_text(text)
    return load_campaign(path)


def test_a_campaign_of_machines(tmp_path: Path) -> None:
    spec = load(tmp_path, HEAD + FAULT)
    assert spec.machine_names == ("server", "client") and spec.networked
    assert spec.campaign.judge == "client" and spec.campaign.hang_budget == Budget(guest_s=20.0)
    server, client = spec.machine
    assert server.daemon and client.script_steps() == (
        Send("until wget -q -O - http://server/; do sleep 0.2; done\n"),
        Expect(("hello", "bye"), 10.0),
        Sleep(0.1),
    )
    fault = spec.faults[0].fault_spec()
    assert fault.network is not None and fault.network.link == ("client", "server")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (FAULT.replace("client-server", "client-db"),
         "faults[0].link: no machine 'db' for network:loss"),
        (FAULT.replace('link = "client-server"', 'machine = "db"'),
         "faults[0].machine: no machine 'db'"),
        (FAULT.replace("0.1", "1.5"), "faults[0].probability: out of range"),
        (PARTITION_TWICE, "faults[0].groups: the partition names machine 'client' twice"),
        ('\n[[faults]]\ntarget = "register:rip"\nmachine = "db"\n',
         "faults[0].machine: no machine 'db'"),
    ],
)  # fmt: skip
def test_bad_faults_of_machines(tmp_path: Path, change: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        load(tmp_path, HEAD + change)
    assert message in caught.value.message
    assert "\n" not in caught.value.one_line()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('{ expect = ["hello", "bye"], timeout = "10s" }', '{ expect = "hello" }',
         "machine[1].script[1].timeout: an expect step needs a timeout"),
        ('{ sleep = "100ms" }', '{ sleep = "100ms", send = "x" }',
         "a script step is exactly one of send, expect and sleep"),
        ('{ expect = ["hello", "bye"], timeout = "10s" }', '{ expect = "(", timeout = "1s" }',
         "invalid regular expression"),
        ('judge = "client"', 'judge = "db"', "campaign.judge: no machine 'db' to judge by"),
        ('budget = "20s"', 'budget = "soon"', "campaign.budget: invalid hang budget"),
        ('budget = "20s"', "budget = 0.5",
         "campaign.budget: out of range (got 0.5; allowed: budget > 1 (golden runs)"),
        ('name = "client"', 'name = "server"', "machine[1].name: duplicate machine name"),
        ('name = "client"', 'name = "Client!"', "machine[1].name: invalid name"),
        ("daemon = true", 'daemon = true\nscript = [{ sleep = "1s" }]',
         "give one of workload, idle, script and command"),
    ],
)  # fmt: skip
def test_bad_machine_tables(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        load(tmp_path, HEAD.replace(old, new, 1) + FAULT)
    assert message in caught.value.message, caught.value.message
    assert "\n" not in caught.value.one_line()


def test_network_faults_need_a_network(tmp_path: Path) -> None:
    single = '[campaign]\nname = "x"\nexperiments = 2\n[guest]\nworkload = "checksum"\n'
    with pytest.raises(UsageError) as caught:
        load(tmp_path, single + FAULT)
    assert "faults[0].target: network:loss needs machines joined by a network" in (
        caught.value.message
    )
    with pytest.raises(UsageError) as caught:
        load(tmp_path, HEAD.replace("[campaign]", "[campaign]\nnetwork = false") + FAULT)
    assert "needs machines joined by a network" in caught.value.message


def test_guest_beside_machines_gives_defaults_only(tmp_path: Path) -> None:
    spec = load(tmp_path, HEAD + "\n[guest]\ndeterministic = true\n" + FAULT)
    assert spec.deterministic
    with pytest.raises(UsageError) as caught:
        load(tmp_path, HEAD + '\n[guest]\nworkload = "checksum"\n' + FAULT)
    assert "guest.workload: [guest] gives no workload beside [[machine]] tables" in (
        caught.value.message
    )


def test_a_machine_may_run_a_guest_command(tmp_path: Path) -> None:
    command = HEAD.replace(
        'workload = "netecho"\nargs = ["--serve"]',
        'command = ["/bin/sh", "-c", "httpd -p 80 && exec netecho --serve"]',
    )
    spec = load(tmp_path, command + FAULT)
    assert spec.machine[0].command == ("/bin/sh", "-c", "httpd -p 80 && exec netecho --serve")
    assert spec.user_workloads() == ()
    for bad in ('command = ["sh", "-c", "x"]', "command = []"):
        with pytest.raises(UsageError) as caught:
            load(tmp_path, HEAD.replace('workload = "netecho"\nargs = ["--serve"]', bad) + FAULT)
        assert "machine[0].command: a command is a guest program's absolute path" in (
            caught.value.message
        )
    with pytest.raises(UsageError) as caught:
        load(tmp_path, HEAD.replace('args = ["--serve"]', 'command = ["/bin/true"]') + FAULT)
    assert "give one of workload, idle, script and command (got workload, command)" in (
        caught.value.message
    )
