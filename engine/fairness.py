"""Fair shares of the engine across groups (tenants): virtual token counting.

Each group has a counter: the tokens the engine scheduled for it, divided by its weight. Waiting
requests are admitted from the group with the smallest counter first, so a group that floods the
queue is served in proportion to its weight while a light group's request goes ahead of the flood.
A group that becomes active starts one step's budget below the smallest counter among the active
groups: idle time earns no credit to spend later in a burst (the Virtual Token Counter of Sheng et
al., OSDI'24), except that bounded lead, which lets an interactive tenant's request take the next
step ahead of a flood's backlog instead of sharing it. The lead is at most one step, so a tenant
that returns often cannot hold the engine for longer than that per request. Counting tokens rather
than requests charges a 4,000-token prompt as what it costs.

Running decodes are never held back: fairness acts where the queueing is, on admissions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class FairShare:
    arrival_lead: float = 0.0  # how far below the least-served active group a returning group starts
    counters: dict[str, float] = field(default_factory=dict)
    num_live: dict[str, int] = field(default_factory=dict)  # live requests per active group

    def activate(self, group: str) -> None:
        """A request of `group` arrives; a group coming back from idle starts just ahead of the others."""
        if self.num_live.get(group, 0) == 0:
            active = [self.counters[g] for g in self.num_live if g in self.counters]
            self.counters[group] = min(active, default=0.0) - self.arrival_lead
        self.num_live[group] = self.num_live.get(group, 0) + 1

    def deactivate(self, group: str) -> None:
        """A request of `group` ended; an idle group is forgotten (it starts level when it returns)."""
        left = self.num_live[group] - 1
        if left:
            self.num_live[group] = left
        else:
            del self.num_live[group]
            del self.counters[group]

    def charge(self, group: str, num_tokens: int, weight: float) -> None:
        self.counters[group] += num_tokens / weight

    def counter(self, group: str) -> float:
        return self.counters[group]
