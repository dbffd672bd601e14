"""From the model a request names to the version that answers it.

A request's ``model`` is an experiment (its arm chosen by the user's id, sticky), an alias (``champion``) or a
version (``policy:3``). What a name resolves to is read from the database and kept for ``refresh`` seconds, so a
promotion, a rollback or a new split reaches every server process within that time, without a restart. A
stopped experiment sends everyone to its control arm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlhfkit.registry.experiments import Experiment, Experiments, assign
from rlhfkit.registry.store import Registry, RegistryError, Version


@dataclass(frozen=True)
class Route:
    version: Version
    experiment: str | None = None
    arm: str | None = None


class Router:
    def __init__(self, registry: Registry, refresh: float = 1.0):
        self.registry, self.experiments, self.refresh = registry, Experiments(registry), refresh
        self._experiments: dict[str, tuple[float, Experiment | None]] = {}
        self._targets: dict[str, tuple[float, Version]] = {}

    def _cached(self, cache: dict, key: str, load):
        hit = cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load(key)
        cache[key] = (now + self.refresh, value)
        return value

    def version(self, target: str) -> Version:
        return self._cached(self._targets, target, self.registry.resolve)

    def route(self, name: str, user: str | None, fallback: str) -> Route:
        """The version for a request naming ``name`` from ``user`` (``fallback`` keys a request without a user)."""
        experiment = self._cached(self._experiments, name, self.experiments.find)
        if experiment is not None:
            if experiment.status != "running":
                return Route(self.version(experiment.arm(experiment.control).target))
            arm = assign(experiment, user, fallback)
            return Route(self.version(arm.target), experiment.name, arm.name)
        try:
            return Route(self.version(name))
        except RegistryError:
            # The name is not repeated back: a client's own text never comes back in an error.
            raise RegistryError("model: no such experiment, alias or version (GET /v1/models lists them)") from None
