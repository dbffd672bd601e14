"""A/B experiments: named splits of traffic between arms, each arm a registry alias or version.

    experiments = Experiments(registry)
    experiments.create("greeting", [Arm("control", "champion", 0.5), Arm("treatment", "challenger", 0.5)])
    arm = assign(experiment, user_id)                 # sticky: the same user always gets the same arm
    experiments.set_weights("greeting", {"control": 0.8, "treatment": 0.2})
    experiments.stop("greeting")

Assignment hashes (salt, user id) to a point in [0, 1) and gives the arm whose share of [0, 1) holds it, arms
in their listed order. A user keeps their arm for the whole experiment; changing the weights moves only the users
near a boundary (raising the last arm's share from 10% to 20% keeps every user it had). A new experiment draws a
new salt, so its users are split afresh, independently of other experiments.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from rlhfkit.feedback.models import utcnow
from rlhfkit.registry.store import Registry, RegistryError, check_name
from rlhfkit.registry.tables import aliases, experiments

# the metrics an experiment's report can test (computed in rlhfkit.serve.monitor)
METRICS = ("thumbs_up", "rating", "regenerated", "refusal", "harmful_flag")


@dataclass(frozen=True)
class Arm:
    name: str
    target: str  # an alias, or a version NAME:NUMBER
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    control: str
    metric: str
    salt: str
    status: str
    created_at: datetime
    updated_at: datetime

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise RegistryError(f"experiment {self.name!r} has no arm {name!r}")


def assign(experiment: Experiment, user_id: str | None, fallback: str | None = None) -> Arm:
    """The arm ``user_id`` belongs to. A request without a user id is assigned by ``fallback`` (any string unique
    to the request, such as its response id): it is then its own unit, not sticky."""
    key = user_id if user_id is not None else fallback or secrets.token_hex(8)
    point = int.from_bytes(hashlib.sha256(f"{experiment.salt}:{key}".encode()).digest()[:8], "big") / 2**64
    total = sum(a.weight for a in experiment.arms)
    edge = 0.0
    for arm in experiment.arms:
        edge += arm.weight / total
        if point < edge:
            return arm
    return experiment.arms[-1]  # float rounding at the top edge


def _row(row) -> Experiment:
    m = row._mapping
    arms = tuple(Arm(a["name"], a["target"], float(a["weight"])) for a in m["arms"])
    return Experiment(
        m["name"], arms, m["control"], m["metric"], m["salt"], m["status"], m["created_at"], m["updated_at"]
    )


def parse_arm(text: str) -> tuple[str, str]:
    """``NAME=TARGET`` as given on the command line (TARGET an alias or a version NAME:NUMBER)."""
    name, eq, target = text.partition("=")
    if not eq or not name or not target:
        raise RegistryError(f"arm {text!r}: write NAME=TARGET, e.g. treatment=challenger or control=policy:3")
    return name, target


def parse_split(text: str, n: int) -> list[float]:
    """``50/50``, ``90/10``, ``1/1/2``: one share per arm, in the arms' order (any positive numbers)."""
    try:
        shares = [float(x) for x in text.split("/")]
    except ValueError:
        shares = []
    if len(shares) != n or any(s < 0 for s in shares) or sum(shares) <= 0:
        raise RegistryError(
            f"split {text!r}: give {n} non-negative shares separated by '/', e.g. {'/'.join(['1'] * n)}"
        )
    return shares


class Experiments:
    def __init__(self, registry: Registry):
        self.registry, self.store = registry, registry.store

    def create(self, name: str, arms: list[Arm], control: str | None = None, metric: str = "thumbs_up") -> Experiment:
        """``metric``: the one its report tests (thumbs_up, rating, regenerated, refusal, harmful_flag), fixed before
        any data comes in, as a pre-registered primary metric should be."""
        check_name(name, "experiment name")
        if metric not in METRICS:
            raise RegistryError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
        if len(arms) < 2:
            raise RegistryError(f"experiment {name!r}: give at least two arms")
        names = [check_name(a.name, "arm name") for a in arms]
        if len(set(names)) != len(names):
            raise RegistryError(f"experiment {name!r}: arm names must differ, got {names}")
        if any(a.weight <= 0 for a in arms):
            raise RegistryError(f"experiment {name!r}: every arm needs a weight > 0")
        for arm in arms:
            self.registry.resolve(arm.target)  # refuses an unknown alias or version now, not at the first request
        control = control or names[0]
        if control not in names:
            raise RegistryError(f"control {control!r}: not one of the arms {names}")
        now = utcnow()
        row = dict(
            name=name,
            arms=[asdict(a) for a in arms],
            control=control,
            metric=metric,
            salt=secrets.token_hex(8),
            status="running",
            created_at=now,
            updated_at=now,
        )
        with self.store.write_conn() as conn:
            if conn.execute(select(aliases.c.name).where(aliases.c.name == name)).first():
                raise RegistryError(
                    f"{name!r} is an alias; an experiment needs a name of its own (requests name either)"
                )
            try:
                conn.execute(insert(experiments).values(**row))
                conn.commit()
            except IntegrityError:
                raise RegistryError(f"experiment {name!r} exists already (stop it, or pick another name)") from None
        return self.get(name)

    def get(self, name: str) -> Experiment:
        found = self.find(name)
        if found is None:
            raise RegistryError(f"{name!r}: no such experiment")
        return found

    def find(self, name: str) -> Experiment | None:
        with self.store.read_conn() as conn:
            row = conn.execute(select(experiments).where(experiments.c.name == name)).first()
        return _row(row) if row else None

    def list(self) -> list[Experiment]:
        with self.store.read_conn() as conn:
            return [_row(r) for r in conn.execute(select(experiments).order_by(experiments.c.created_at))]

    def set_weights(self, name: str, weights: dict[str, float]) -> Experiment:
        current = self.get(name)
        unknown = set(weights) - {a.name for a in current.arms}
        if unknown:
            raise RegistryError(f"experiment {name!r} has no arm {sorted(unknown)[0]!r}")
        arms = [Arm(a.name, a.target, float(weights.get(a.name, a.weight))) for a in current.arms]
        if any(a.weight < 0 for a in arms) or sum(a.weight for a in arms) <= 0:
            raise RegistryError(f"experiment {name!r}: weights must be >= 0 and not all 0")
        self._update(name, arms=[asdict(a) for a in arms])
        return self.get(name)

    def stop(self, name: str) -> Experiment:
        self.get(name)
        self._update(name, status="stopped")
        return self.get(name)

    def _update(self, name: str, **values) -> None:
        with self.store.write_conn() as conn:
            conn.execute(update(experiments).where(experiments.c.name == name).values(**values, updated_at=utcnow()))
            conn.commit()
