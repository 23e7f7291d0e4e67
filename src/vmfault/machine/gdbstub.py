"""A client for QEMU's gdbstub over one persistent, already-connected socket.

Hand-written on purpose: GNU gdb in batch mode or pygdbmi costs 45 ms and more per command,
while one raw remote-protocol exchange on a persistent Unix socket costs about 0.1 ms, and a
fault injection campaign performs millions of them.

Behaviour of QEMU 7.2's system-mode gdbstub that this client depends on (measured):

- On attach QEMU pauses a running VM and sends an unsolicited ``T02thread:01;``. A VM that
  was already paused (``-S``, QMP ``stop``) gets no such packet.
- There is no no-ack mode: every packet is acknowledged with ``+`` in both directions. QEMU
  never waits for an acknowledgement, it only keeps its last packet for a ``-`` resend, and a
  new ``$`` from the client drops it; so this client acknowledges a reply together with its
  next packet (one write instead of two).
- While the VM runs, any byte the client sends pauses it and is consumed (``$`` included),
  except while an unacknowledged QEMU packet is pending, when the byte is taken as a stray
  acknowledgement and the VM keeps running. Hence every command needs the halted state.
- ``\\x03`` while the VM is halted is ignored silently (no reply).
- Whenever the VM stops while the client has continued it, QEMU sends exactly one stop reply:
  ``T05thread:01;`` for a breakpoint or a completed step (no ``swbreak``/``hwbreak``),
  ``T05thread:01;watch:ADDR;`` (or ``rwatch``/``awatch``) for a watchpoint, with ADDR the
  watchpoint's own address, ``T02thread:01;`` for ``\\x03`` and for QMP ``stop``, and
  ``T8fthread:01;`` (143, GDB_SIGNAL_UNKNOWN) for a guest panic under
  ``-action panic=pause``. When QEMU quits (QMP ``quit``, a guest reboot under
  ``-no-reboot``) it sends ``W00`` and closes the connection, with no stop reply first.
- ``?`` answers ``T05thread:01;`` and removes all breakpoints and watchpoints.
- ``p``/``P`` answer empty until ``target.xml`` was read on this connection.
- ``m`` reads at most 0x800 bytes (``E22`` beyond); ``X`` (binary write) is not supported;
  removing a breakpoint that is not set answers ``E22``.
- ``Qqemu.PhyMemMode`` is one global switch of the stub that outlives connections.
- A breakpoint at the current pc fires again at once on ``c``; single-stepping ignores
  breakpoints, so stepping first moves past it (GDB does the same).
- ``c`` in the guest-panicked state resumes the guest, which carries on with its panic
  (with ``panic=-1 -no-reboot``: a reboot, so QEMU exits).
- HMP ``loadvm`` (through QMP) while the VM is halted sends nothing on the gdb socket and
  leaves the VM halted (QMP status stays ``paused``, or ``guest-panicked`` after a panic);
  breakpoints, watchpoints, the physical-memory mode and the target description read on
  this connection all survive it, and ``c`` resumes the restored VM, from guest-panicked too.
- Closing the connection leaves the VM as it is, halted or running.
"""

from __future__ import annotations

import binascii
import contextlib
import enum
import logging
import math
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

from vmfault.errors import GdbError, GdbProtocolError, MachineTimeoutError, StateError
from vmfault.machine.gdbproto import (
    BreakpointKind,
    Frame,
    FrameKind,
    FrameReader,
    RegisterInfo,
    StopReason,
    StopReply,
    WatchKind,
    decode_le_hex,
    decode_registers,
    encode_le_hex,
    encode_packet,
    is_error_reply,
    parse_qxfer_reply,
    parse_stop_reply,
    parse_supported,
    parse_target_xml,
)

__all__ = ["BreakpointKind", "GdbStub", "RegisterInfo", "StopReason", "StopReply", "WatchKind"]

logger = logging.getLogger(__name__)

_RECV_BUFFER_BYTES = 1 << 16
_DEFAULT_PACKET_SIZE = 0x1000
# Leading bytes of stop replies; no reply to any other request starts with them.
_STOP_LEADS = frozenset(b"TSWX")
_PC_NAMES = ("rip", "eip", "pc")
_SSTEP_WANTED = ("ENABLE", "NOIRQ", "NOTIMER")
_STEP_OFF_TRIES = 8
"""Steps `GdbStub.cont` takes at most to leave a breakpoint's address."""


class _State(enum.Enum):
    NEW = "new"
    HALTED = "halted"
    RUNNING = "running"
    EXITED = "exited"
    CLOSED = "closed"


class GdbStub:
    """A gdb remote-protocol client for one QEMU gdbstub connection (first vCPU).

    Call `handshake` first. Every command except `halt`, `cont`, `wait_stop`, `poll_stop`
    and `close` needs the VM halted and raises StateError otherwise. Replies are awaited
    with a blocking receive bounded by `reply_timeout_s` (MachineTimeoutError when exceeded).
    """

    registers: Mapping[str, RegisterInfo]
    """Registers of the target description by name, filled in by `handshake`."""

    def __init__(self, sock: socket.socket, *, reply_timeout_s: float = 5.0) -> None:
        """Take over a connected socket; it is switched to blocking mode."""
        sock.settimeout(None)
        # A kernel receive timeout bounds every blocking recv without a poll() per call.
        seconds = int(reply_timeout_s)
        micros = int((reply_timeout_s - seconds) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros))
        self._sock = sock
        self._reply_timeout_s = reply_timeout_s
        self._rx = bytearray(_RECV_BUFFER_BYTES)
        self._rx_view = memoryview(self._rx)
        self._reader = FrameReader()
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        self._state = _State.NEW
        self._ack_pending = False
        self._last_packet = b""
        self._last_stop: StopReply | None = None
        self._phys_mode: bool | None = None
        self._sstep_configured = False
        self._packet_size = _DEFAULT_PACKET_SIZE
        self._read_chunk = _DEFAULT_PACKET_SIZE // 2
        self._write_chunk = (_DEFAULT_PACKET_SIZE - 64) // 2
        self._regs: dict[str, RegisterInfo] = {}
        self.registers = MappingProxyType(self._regs)
        self._p_packets: dict[str, bytes] = {}
        self._g_layout: tuple[RegisterInfo, ...] = ()
        self._pc_name: str | None = None
        self._sw_breakpoints: Counter[int] = Counter()
        self._hw_breakpoints: Counter[int] = Counter()
        self._watchpoints: set[tuple[int, int, WatchKind]] = set()
        self.architecture: str | None = None
        """The target description's architecture (``i386:x86-64``), set by `handshake`."""

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the VM runs on this client's behalf (after `cont`, before a stop)."""
        return self._state is _State.RUNNING

    @property
    def pc_name(self) -> str:
        """The name of the program counter register (``rip``), known after `handshake`."""
        if self._pc_name is None:
            raise StateError(
                "the gdbstub has no program counter before its handshake",
                state=self._state.value,
                required="halted",
            )
        return self._pc_name

    @property
    def last_stop(self) -> StopReply | None:
        """The most recent stop reply, or None before the handshake."""
        return self._last_stop

    def fileno(self) -> int:
        """The socket's descriptor, for select()/selectors while the VM runs.

        Readable means `poll_stop` may have a stop to return.
        """
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket. The VM stays as it is (QEMU neither resumes nor pauses it)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._poller.unregister(self._sock.fileno())
        self._sock.close()

    # -- attach --------------------------------------------------------------------------

    def handshake(self, *, timeout_s: float = 5.0) -> StopReply:
        """Attach: take the stop reply, negotiate, read the target description.

        Returns the stop that halted the VM: QEMU's unsolicited attach stop (``T02``) when
        the VM was running, otherwise the answer to ``?``. Also removes every breakpoint
        and watchpoint left in the stub. The VM is halted afterwards.
        Raises MachineTimeoutError if the stub does not answer within `timeout_s` seconds.
        """
        self._require(_State.NEW)
        deadline = time.monotonic() + timeout_s
        self._state = _State.HALTED
        try:
            # `?` pauses nothing and always answers; an attach stop, if any, comes first.
            self._send(b"?")
            first = self._read_stop(deadline)
            if first is None:
                raise MachineTimeoutError("no stop reply from the gdbstub", timeout_s=timeout_s)
            self._send(_QSUPPORTED)
            reply = self._reply(_QSUPPORTED, deadline=deadline)
            while reply[:1] == b"T":  # the answer to `?` after an attach stop
                reply = self._reply(_QSUPPORTED, deadline=deadline)
            supported = parse_supported(reply)
            size_text = supported.get("PacketSize")
            if isinstance(size_text, str):
                self._packet_size = int(size_text, 16)
            self._read_chunk = self._packet_size // 2
            self._write_chunk = (self._packet_size - 64) // 2
            if supported.get("qXfer:features:read") is not True:
                raise GdbError(
                    "the gdbstub does not offer its target description (qXfer:features:read)",
                    request=_s(_QSUPPORTED),
                    reply=_s(reply),
                )
            self._load_target_description(deadline)
        except MachineTimeoutError as exc:
            self._state = _State.NEW
            raise MachineTimeoutError(
                f"the gdbstub handshake did not complete: {exc.message}", timeout_s=timeout_s
            ) from exc
        except BaseException:
            self._state = _State.NEW
            raise
        self._last_stop = first
        logger.debug(
            "gdbstub attached: %s, %d registers, packet size %#x",
            self.architecture,
            len(self._regs),
            self._packet_size,
        )
        return first

    def _load_target_description(self, deadline: float) -> None:
        def fetch(annex: str) -> str:
            parts: list[bytes] = []
            offset = 0
            length = max(256, (self._packet_size - 8) // 2)
            while True:
                request = b"qXfer:features:read:%s:%x,%x" % (annex.encode(), offset, length)
                data, more = parse_qxfer_reply(
                    self._request(request, deadline=deadline), request=request.decode()
                )
                parts.append(data)
                offset += len(data)
                if not more or not data:
                    return b"".join(parts).decode("utf-8")

        description = parse_target_xml(fetch)
        self.architecture = description.architecture
        self._regs.clear()
        for reg in description.registers:
            self._regs[reg.name] = reg
        self._p_packets = {
            reg.name: encode_packet(b"p%x" % reg.regnum) for reg in description.registers
        }
        # The `g` reply holds registers 0, 1, 2, ... in order: the contiguous prefix.
        by_number = sorted(description.registers, key=lambda reg: reg.regnum)
        layout: list[RegisterInfo] = []
        for index, reg in enumerate(by_number):
            if reg.regnum != index:
                break
            layout.append(reg)
        self._g_layout = tuple(layout)
        self._pc_name = next((name for name in _PC_NAMES if name in self._regs), None)
        if self._pc_name is None:
            self._pc_name = next(
                (reg.name for reg in description.registers if reg.type == "code_ptr"), None
            )

    # -- run control ---------------------------------------------------------------------

    def halt(self, *, timeout_s: float = 2.0) -> StopReply:
        """Pause the VM and return its stop reply; if already halted, the last stop reply.

        If the VM stopped on its own before the interrupt arrived (a breakpoint, QMP
        ``stop``), that stop is returned. Raises MachineTimeoutError if no stop reply arrives
        within `timeout_s` seconds.
        """
        if self._state is _State.HALTED and self._last_stop is not None:
            return self._last_stop
        self._require(_State.RUNNING)
        self._sock.sendall(b"\x03")
        stop = self._read_stop(time.monotonic() + timeout_s)
        if stop is None:
            raise MachineTimeoutError("the VM did not halt", timeout_s=timeout_s)
        return self._finish_stop(stop, stepping=False)

    def cont(self) -> None:
        """Resume the VM and return at once; collect the next stop with `wait_stop`.

        If the pc is at one of this client's breakpoints, the VM first single-steps past it
        (as GDB does), so that the breakpoint does not fire again at once; that costs one
        register read per call while breakpoints are set, and one more per step taken. If
        that step stops for another reason (a watchpoint), the VM stays halted.

        QEMU 7.2 under TCG sometimes reports a step with nothing run (seen on a loaded
        host, a few in a hundred steps off a breakpoint): continuing then would fire the
        same breakpoint again at once. A step that leaves the pc where it was is therefore
        taken again, up to _STEP_OFF_TRIES times (an instruction that repeats in place, a
        ``rep`` string one, runs that many more iterations; one that jumps to itself
        fires its breakpoint again, as it should).
        """
        self._require(_State.HALTED)
        if (self._sw_breakpoints or self._hw_breakpoints) and self._pc_name is not None:
            pc = self.read_register(self._pc_name)
            if pc in self._sw_breakpoints or pc in self._hw_breakpoints:
                for _ in range(_STEP_OFF_TRIES):
                    if self._step_once().reason is not StopReason.STEP:
                        return
                    if self.read_register(self._pc_name) != pc:
                        break
        # QEMU acknowledges `c` with `+` and sends nothing more until the VM stops; that
        # acknowledgement is consumed while waiting for the stop reply.
        self._send(b"c")
        self._state = _State.RUNNING

    def wait_stop(self, *, timeout_s: float | None) -> StopReply | None:
        """Wait up to `timeout_s` seconds (None: forever) for the VM to stop.

        Returns the stop reply, the last one if the VM is already halted, or None on timeout
        with the VM still running.
        """
        if self._state is _State.HALTED or self._state is _State.EXITED:
            return self._last_stop
        self._require(_State.RUNNING)
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        stop = self._read_stop(deadline)
        return None if stop is None else self._finish_stop(stop, stepping=False)

    def poll_stop(self) -> StopReply | None:
        """Like `wait_stop` without waiting: None if the VM is still running."""
        if self._state is _State.HALTED or self._state is _State.EXITED:
            return self._last_stop
        self._require(_State.RUNNING)
        stop = self._read_stop(0.0)
        return None if stop is None else self._finish_stop(stop, stepping=False)

    def step(self, *, count: int = 1) -> StopReply:
        """Execute `count` instructions one at a time with interrupts and timers held off.

        Returns the last step's stop reply (reason STEP), or the first that stopped for
        another reason (e.g. a watchpoint). A step that does not complete within the reply
        timeout (a ``hlt`` waits for an interrupt that stepping holds off) halts the VM and
        raises MachineTimeoutError.
        """
        self._require(_State.HALTED)
        if count < 1:
            raise ValueError(f"step count must be at least 1, not {count}")
        stop = self._last_stop
        for _ in range(count):
            stop = self._step_once()
            if stop.reason is not StopReason.STEP:
                break
        assert stop is not None
        return stop

    def _step_once(self) -> StopReply:
        if not self._sstep_configured:
            self._configure_sstep()
        self._send(b"s")
        self._state = _State.RUNNING
        stop = self._read_stop(time.monotonic() + self._reply_timeout_s)
        if stop is None:
            self.halt(timeout_s=self._reply_timeout_s)
            raise MachineTimeoutError(
                "a single step did not complete (the CPU may wait in hlt for an interrupt)",
                timeout_s=self._reply_timeout_s,
            )
        return self._finish_stop(stop, stepping=True)

    def _configure_sstep(self) -> None:
        # QEMU's step flags: ENABLE, NOIRQ (no interrupt delivery), NOTIMER (no timers).
        bits_reply = self._request(b"qqemu.sstepbits")
        if not bits_reply:
            self._sstep_configured = True  # not QEMU: plain steps
            return
        bits: dict[str, int] = {}
        for item in bits_reply.decode("ascii").split(","):
            name, _, value = item.partition("=")
            bits[name] = int(value, 0)
        flags = 0
        for name in _SSTEP_WANTED:
            flags |= bits.get(name, 0)
        request = b"Qqemu.sstep=%x" % flags
        reply = self._request(request)
        if reply != b"OK":
            raise GdbError(
                "cannot set the single-step flags", request=request.decode(), reply=_s(reply)
            )
        self._sstep_configured = True

    # -- registers -----------------------------------------------------------------------

    def read_register(self, name: str) -> int:
        """One register as an unsigned int (xmm: 128 bits, st0-7: 80 bits).

        Raises KeyError for a name the target description lacks, GdbError if refused.
        """
        packet = self._p_packets.get(name)
        if packet is None:
            raise KeyError(f"no register named {name!r}")
        self._require(_State.HALTED)
        reply = self._exchange(packet)
        if not reply or is_error_reply(reply):
            raise GdbError(f"cannot read register {name}", request=_s(packet), reply=_s(reply))
        try:
            return decode_le_hex(reply)
        except ValueError as exc:
            raise GdbProtocolError(
                f"bad value for register {name}", request=_s(packet), reply=_s(reply)
            ) from exc

    def write_register(self, name: str, value: int, *, verify: bool = False) -> None:
        """Set one register to an unsigned int that fits its size.

        With `verify`, reads it back and raises GdbError if it differs (QEMU may mask bits,
        e.g. of eflags or control registers). Raises KeyError for an unknown name,
        ValueError if the value does not fit, GdbError if refused.
        """
        info = self._regs.get(name)
        if info is None:
            raise KeyError(f"no register named {name!r}")
        self._require(_State.HALTED)
        request = b"P%x=%s" % (info.regnum, encode_le_hex(value, info.bitsize))
        reply = self._exchange(encode_packet(request))
        if reply != b"OK":
            raise GdbError(f"cannot write register {name}", request=_s(request), reply=_s(reply))
        if verify:
            actual = self.read_register(name)
            if actual != value:
                raise GdbError(
                    f"register {name} reads back {actual:#x} after writing {value:#x}",
                    request=_s(request),
                    reply=f"{actual:#x}",
                )

    def read_registers(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Several registers (default: all) by name, with one ``g`` exchange where possible.

        Registers the ``g`` reply does not hold are read one by one. Raises KeyError for an
        unknown name, GdbError if refused.
        """
        wanted = list(self._regs) if names is None else list(names)
        for name in wanted:
            if name not in self._regs:
                raise KeyError(f"no register named {name!r}")
        self._require(_State.HALTED)
        reply = self._exchange(_G_PACKET)
        if not reply or is_error_reply(reply):
            raise GdbError("cannot read the registers", request="g", reply=_s(reply))
        try:
            values = decode_registers(reply, self._g_layout)
        except ValueError as exc:
            raise GdbProtocolError("bad register block", request="g", reply=_s(reply)) from exc
        result: dict[str, int] = {}
        for name in wanted:
            value = values.get(name)
            result[name] = self.read_register(name) if value is None else value
        return result

    # -- memory --------------------------------------------------------------------------

    def read_memory(self, address: int, size: int, *, physical: bool = False) -> bytes:
        """`size` bytes at a guest virtual (through the current page tables) or physical address.

        Split into requests of at most half the packet size. Raises GdbError naming the
        failing chunk if any part is unreadable (nothing partial is returned).
        """
        if address < 0 or size < 0:
            raise ValueError(f"negative address or size: {address:#x}, {size}")
        self._require(_State.HALTED)
        self._set_phys_mode(physical)
        chunk = self._read_chunk
        if size <= chunk:
            return self._read_chunk_at(address, size)
        out = bytearray()
        for offset in range(0, size, chunk):
            out += self._read_chunk_at(address + offset, min(chunk, size - offset))
        return bytes(out)

    def _read_chunk_at(self, address: int, size: int) -> bytes:
        if size == 0:
            return b""
        request = b"m%x,%x" % (address, size)
        reply = self._exchange(encode_packet(request))
        if len(reply) != 2 * size:
            raise GdbError(
                f"cannot read {size} bytes at {address:#x}", request=_s(request), reply=_s(reply)
            )
        try:
            return binascii.unhexlify(reply)
        except binascii.Error as exc:
            raise GdbProtocolError(
                "memory reply is not hex", request=_s(request), reply=_s(reply)
            ) from exc

    def write_memory(self, address: int, data: bytes, *, physical: bool = False) -> None:
        """Write bytes at a guest virtual or physical address, in ``M`` packets.

        QEMU invalidates translated code covering the bytes, so code changes take effect.
        Raises GdbError naming the failing chunk; earlier chunks stay written.
        """
        if address < 0:
            raise ValueError(f"negative address {address:#x}")
        self._require(_State.HALTED)
        self._set_phys_mode(physical)
        chunk = self._write_chunk
        view = memoryview(data)
        for offset in range(0, len(data), chunk):
            part = view[offset : offset + chunk]
            request = b"M%x,%x:%s" % (address + offset, len(part), binascii.hexlify(part))
            reply = self._exchange(encode_packet(request))
            if reply != b"OK":
                raise GdbError(
                    f"cannot write {len(part)} bytes at {address + offset:#x}",
                    request=_s(request[:64]),
                    reply=_s(reply),
                )

    def _set_phys_mode(self, physical: bool) -> None:
        if self._phys_mode == physical:
            return
        request = b"Qqemu.PhyMemMode:1" if physical else b"Qqemu.PhyMemMode:0"
        reply = self._exchange(encode_packet(request))
        if reply != b"OK":
            raise GdbError(
                "the gdbstub cannot switch between physical and virtual addresses",
                request=_s(request),
                reply=_s(reply),
            )
        self._phys_mode = physical

    # -- breakpoints and watchpoints -----------------------------------------------------

    def set_breakpoint(self, address: int, *, hardware: bool = False) -> None:
        """Insert a software (``Z0``) or hardware (``Z1``) breakpoint at a virtual address.

        Under TCG both kinds behave alike and live inside QEMU, not in guest memory. A
        breakpoint is counted: setting one that is set already only counts it (no packet),
        and it stays until removed as many times. Each insertion or removal under TCG
        flushes all translated code, so users of the same address share one.
        """
        points = self._hw_breakpoints if hardware else self._sw_breakpoints
        if not points[address]:
            kind = BreakpointKind.HARDWARE if hardware else BreakpointKind.SOFTWARE
            self._point(b"Z", kind.z_type, address, 1)
        points[address] += 1

    def remove_breakpoint(self, address: int, *, hardware: bool = False) -> None:
        """Remove one count of a breakpoint set with the same address and kind; the
        breakpoint goes when its last count does."""
        points = self._hw_breakpoints if hardware else self._sw_breakpoints
        if points[address] > 1:
            points[address] -= 1
            return
        kind = BreakpointKind.HARDWARE if hardware else BreakpointKind.SOFTWARE
        self._point(b"z", kind.z_type, address, 1)
        points.pop(address, None)

    def has_breakpoint(self, address: int) -> bool:
        """Whether a breakpoint of this client is set at `address`."""
        return bool(self._sw_breakpoints[address] or self._hw_breakpoints[address])

    def set_watchpoint(self, address: int, length: int, *, kind: WatchKind) -> None:
        """Insert a watchpoint on `length` bytes at a virtual address.

        It stops the VM after the accessing instruction; the stop reply names the address
        given here.
        """
        self._point(b"Z", kind.z_type, address, length)
        self._watchpoints.add((address, length, kind))

    def remove_watchpoint(self, address: int, length: int, *, kind: WatchKind) -> None:
        """Remove a watchpoint set with the same address, length and kind."""
        self._point(b"z", kind.z_type, address, length)
        self._watchpoints.discard((address, length, kind))

    def _point(self, verb: bytes, z_type: int, address: int, length: int) -> None:
        self._require(_State.HALTED)
        request = b"%s%d,%x,%x" % (verb, z_type, address, length)
        reply = self._exchange(encode_packet(request))
        if reply != b"OK":
            what = "unsupported" if not reply else "refused"
            raise GdbError(
                f"{_s(request)} {what} by the gdbstub", request=_s(request), reply=_s(reply)
            )

    # -- monitor -------------------------------------------------------------------------

    def monitor(self, command: str) -> str:
        """Run a QEMU monitor (HMP) command through ``qRcmd`` and return its output.

        Commands that change the run state (``cont``, ``stop``) are not tracked by this
        client: use `cont`/`halt` instead. Raises GdbError if the stub refuses.
        """
        self._require(_State.HALTED)
        request = b"qRcmd," + binascii.hexlify(command.encode("utf-8"))
        self._send(request)
        output: list[bytes] = []
        while True:
            reply = self._reply(request)
            if reply == b"OK":
                break
            if reply[:1] == b"O":
                try:
                    output.append(binascii.unhexlify(reply[1:]))
                except binascii.Error as exc:
                    raise GdbProtocolError(
                        "monitor output is not hex", request=_s(request), reply=_s(reply)
                    ) from exc
                continue
            what = "unsupported" if not reply else "refused"
            raise GdbError(
                f"monitor command {command!r} {what}", request=_s(request), reply=_s(reply)
            )
        return b"".join(output).decode("utf-8", "replace")

    # -- transport -----------------------------------------------------------------------

    def _require(self, state: _State) -> None:
        if self._state is not state:
            raise StateError(
                f"the gdbstub client is {self._state.value}, this needs it {state.value}",
                state=self._state.value,
                required=state.value,
            )

    def _send(self, payload: bytes) -> None:
        self._send_packet(encode_packet(payload))

    def _send_packet(self, packet: bytes) -> None:
        self._last_packet = packet
        try:
            if self._ack_pending:
                self._ack_pending = False
                self._sock.sendall(b"+" + packet)
            else:
                self._sock.sendall(packet)
        except OSError as exc:
            self._state = _State.CLOSED
            raise GdbProtocolError(
                f"cannot send to the gdbstub: {exc}", request=_s(packet)
            ) from exc

    def _request(self, payload: bytes, *, deadline: float | None = None) -> bytes:
        """Send a payload and return the reply payload."""
        return self._exchange(encode_packet(payload), deadline=deadline)

    def _exchange(self, packet: bytes, *, deadline: float | None = None) -> bytes:
        """Send a framed packet and return the reply payload (VM halted)."""
        self._send_packet(packet)
        reply = self._reply(packet, deadline=deadline)
        if reply and reply[0] in _STOP_LEADS:
            self._unexpected_stop(reply, packet)
            reply = self._reply(packet, deadline=deadline)
            if reply and reply[0] in _STOP_LEADS:
                raise GdbProtocolError(
                    "the gdbstub answered with a stop reply twice",
                    request=_s(packet),
                    reply=_s(reply),
                )
        return reply

    def _unexpected_stop(self, reply: bytes, packet: bytes) -> None:
        # A stop reply instead of an answer: the VM was resumed behind this client's back
        # (QMP `cont`), the packet's `$` paused it and was consumed, the rest of the packet
        # was dropped as noise. The VM is halted now: record the stop and send again.
        stop = parse_stop_reply(reply)
        self._last_stop = stop
        if stop.reason.is_final:
            self._state = _State.EXITED
            raise StateError(
                f"the VM is gone ({stop.raw})", state=_State.EXITED.value, required="halted"
            )
        logger.warning(
            "the VM was running although this gdb client had halted it; it is halted again (%s)",
            stop.raw,
        )
        self._send_packet(packet)

    def _reply(self, request: bytes, *, deadline: float | None = None) -> bytes:
        """The next packet's payload, marking it for acknowledgement."""
        while True:
            frame = self._next_frame(deadline, request)
            if frame is None:
                assert deadline is not None
                raise MachineTimeoutError(
                    f"no reply from the gdbstub to {_s(request[:40])}",
                    timeout_s=max(0.0, deadline - time.monotonic()),
                )
            kind = frame.kind
            if kind is FrameKind.PACKET:
                self._ack_pending = True
                return frame.payload
            if kind is FrameKind.NACK:
                self._sock.sendall(self._last_packet)
            elif kind is FrameKind.CORRUPT:
                self._sock.sendall(b"-")

    def _read_stop(self, deadline: float) -> StopReply | None:
        """The next stop reply before `deadline` (monotonic seconds, inf: none), or None."""
        while True:
            frame = self._next_frame(deadline, b"")
            if frame is None:
                return None
            kind = frame.kind
            if kind is FrameKind.PACKET:
                payload = frame.payload
                if payload[:1] == b"O" and payload != b"OK":
                    # Console output while running: acknowledging cannot pause the VM,
                    # since QEMU takes the byte as the acknowledgement it awaits.
                    self._sock.sendall(b"+")
                    logger.info("gdbstub output: %s", _hex_text(payload[1:]))
                    continue
                stop = parse_stop_reply(payload)
                self._ack_pending = True
                self._state = _State.EXITED if stop.reason.is_final else _State.HALTED
                return stop
            if kind is FrameKind.NACK:
                if self._state is _State.RUNNING:
                    # Resending would pause the VM and lose the packet's first byte.
                    raise GdbProtocolError(
                        "the gdbstub rejected a packet while the VM runs",
                        request=_s(self._last_packet),
                    )
                self._sock.sendall(self._last_packet)
            elif kind is FrameKind.CORRUPT:
                self._sock.sendall(b"-")

    def _next_frame(self, deadline: float | None, request: bytes) -> Frame | None:
        """The next frame; None when `deadline` passes.

        `deadline` None means a reply to a command: a plain blocking receive, bounded by the
        socket's kernel timeout.
        """
        reader = self._reader
        while True:
            frame = reader.next_frame()
            if frame is not None:
                return frame
            if deadline is not None:
                if deadline == math.inf:
                    timeout_ms = -1
                else:
                    timeout_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
                if not self._poller.poll(timeout_ms):
                    return None
            self._receive(request)

    def _receive(self, request: bytes) -> None:
        try:
            count = self._sock.recv_into(self._rx)
        except BlockingIOError as exc:
            raise MachineTimeoutError(
                f"no reply from the gdbstub to {_s(request[:40])}",
                timeout_s=self._reply_timeout_s,
            ) from exc
        except OSError as exc:
            self._state = _State.CLOSED
            raise GdbProtocolError(f"cannot receive from the gdbstub: {exc}") from exc
        if count == 0:
            self._state = _State.CLOSED
            raise GdbProtocolError(
                "the gdbstub closed the connection (QEMU exited?)", request=_s(request[:40])
            )
        self._reader.feed(self._rx_view[:count])

    def _finish_stop(self, stop: StopReply, *, stepping: bool) -> StopReply:
        """Name a bare SIGTRAP: a step, or one of this client's breakpoints at the pc."""
        if stop.reason is StopReason.TRAP:
            if stepping:
                stop = replace(stop, reason=StopReason.STEP)
            elif (self._sw_breakpoints or self._hw_breakpoints) and self._pc_name is not None:
                pc = self.read_register(self._pc_name)
                kind: BreakpointKind | None = None
                if pc in self._sw_breakpoints:
                    kind = BreakpointKind.SOFTWARE
                elif pc in self._hw_breakpoints:
                    kind = BreakpointKind.HARDWARE
                stop = replace(
                    stop,
                    reason=StopReason.BREAKPOINT if kind is not None else StopReason.TRAP,
                    breakpoint_kind=kind,
                    pc=pc,
                )
        self._last_stop = stop
        return stop


_G_PACKET = encode_packet(b"g")
_QSUPPORTED = b"qSupported:xmlRegisters=i386"


def _s(data: bytes) -> str:
    return data.decode("latin-1")


def _hex_text(data: bytes) -> str:
    try:
        return binascii.unhexlify(data).decode("utf-8", "replace")
    except binascii.Error:
        return _s(data)
