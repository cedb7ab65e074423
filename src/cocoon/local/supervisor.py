"""Keeps a local network's processes running: a child that dies is started again after a growing pause, with a
line saying so, instead of the whole network stopping (``cocoon up``).

A child that keeps dying backs off (1 s, 2 s, 4 s … 30 s) so a broken config does not spin; one that ran for a
minute before dying starts again at 1 s. Children that cannot be restarted without losing the network's state
(the devnet chain holds every balance in memory) end the network instead, as ``ChildDied``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cocoon.errors import ChildDied
from cocoon.local.processes import Child, now, spawn


@dataclass
class _Restart:
    due: float
    pause: float
    count: int


@dataclass
class Supervisor:
    """Restarts dead children of ``children`` (the list is updated in place), except those named in ``fatal``.

    ``check()`` is called from the network's main loop; ``say`` gets one line per death and restart.
    """

    children: list[Child]
    say: Callable[[str], None]
    fatal: frozenset[str] = frozenset({"devnet"})
    first_pause_s: float = 1.0
    max_pause_s: float = 30.0
    steady_s: float = 60.0  # a child that ran this long before dying is restarted as if for the first time
    _pending: dict[str, _Restart] = field(default_factory=dict)
    _pauses: dict[str, float] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        """Notice children that died, and start those whose pause is over. Raises ``ChildDied`` for a fatal one."""
        at = now()
        for index, child in enumerate(self.children):
            pending = self._pending.get(child.name)
            if pending is not None:
                if at >= pending.due:
                    self.children[index] = self._restart(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            if child.name in self.fatal or not child.command:
                raise ChildDied(
                    f"{child.name} exited with code {code}; last log lines:\n" + "\n".join(child.log_tail(15))
                )
            ran = at - child.started
            previous = self._pauses.get(child.name)
            if previous is None or ran >= self.steady_s:
                pause = self.first_pause_s
            else:
                pause = min(self.max_pause_s, previous * 2)
            self._pauses[child.name] = pause
            count = self.restarts.get(child.name, 0) + 1
            self._pending[child.name] = _Restart(at + pause, pause, count)
            last = " | ".join(line.strip() for line in child.log_tail(2))
            self.say(
                f"{child.name} exited with code {code} after {ran:.0f}s; restarting it in {pause:g}s "
                f"(restart {count}; log {child.log}){': ' + last if last else ''}"
            )

    def _restart(self, child: Child) -> Child:
        pending = self._pending.pop(child.name)
        self.restarts[child.name] = pending.count
        fresh = spawn(child.name, child.command, child.log)
        self.say(f"{child.name} restarted (pid {fresh.process.pid})")
        return fresh
