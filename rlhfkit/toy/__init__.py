"""The built-in toy world: see ``world.py``. ``toy_records`` gives each stage its default data."""
from rlhfkit.toy.world import demonstrations


def toy_records(kind: str, seed: int = 0) -> list[dict]:
    if kind == "demonstration":
        return demonstrations(2000, seed=seed)
    raise ValueError(f"the toy world has no built-in '{kind}' data yet; give a data file")
