"""Lineage: where a version came from, as the graph of run cards, as text and as a picture.

    graph = lineage(registry, "champion")
    print(graph.text())                      # an indented tree, the version at the top
    graph.draw("lineage.png")                # boxes and arrows (matplotlib); .svg and .pdf too
    print(graph.dot())                       # Graphviz, for those who have it

A version's card names its parents by run id (the model it started from, its reference, its reward model);
a parent that is itself registered appears as that version, one that is not as its run (read from its folder
when the folder is still there, so the walk continues through unregistered runs). Data files appear with
their hashes, the labels a version was trained on with their counts by source, and its evaluations with the
gate's verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.registry.store import Registry, Version
from rlhfkit.runs import RunCard

COLOURS = {"version": "#d7e8fb", "run": "#eeeeee", "data": "#fdf2d0", "labels": "#fde0d0", "evaluation": "#dff3df"}


@dataclass
class Node:
    key: str
    kind: str  # version | run | spec | data | labels | evaluation
    title: str
    detail: str = ""


@dataclass
class Graph:
    root: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (child, parent, role): parent fed child

    def add(self, node: Node) -> bool:
        """True when the node is new (so its own parents still need walking)."""
        if node.key in self.nodes:
            return False
        self.nodes[node.key] = node
        return True

    def parents(self, key: str) -> list[tuple[str, str]]:
        return [(parent, role) for child, parent, role in self.edges if child == key]

    def text(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()

        def walk(key: str, prefix: str, role: str | None, last: bool) -> None:
            node = self.nodes[key]
            branch = "" if role is None else ("└─ " if last else "├─ ")
            label = f"{role}: " if role else ""
            detail = f"  ({node.detail})" if node.detail else ""
            again = key in seen and self.parents(key)
            lines.append(f"{prefix}{branch}{label}{node.title}{detail}{'  (above)' if again else ''}")
            if again:
                return
            seen.add(key)
            children = self.parents(key)
            inner = prefix + ("" if role is None else ("   " if last else "│  "))
            for i, (parent, parent_role) in enumerate(children):
                walk(parent, inner, parent_role, i == len(children) - 1)

        walk(self.root, "", None, True)
        return "\n".join(lines)

    def dot(self) -> str:
        out = ["digraph lineage {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname=Helvetica];']
        for node in self.nodes.values():
            label = (node.title + ("\\n" + node.detail if node.detail else "")).replace('"', "'")
            out.append(f'  "{node.key}" [label="{label}", fillcolor="{COLOURS.get(node.kind, "#ffffff")}"];')
        for child, parent, role in self.edges:
            out.append(f'  "{parent}" -> "{child}" [label="{role}"];')
        out.append("}")
        return "\n".join(out)

    def layers(self) -> list[list[str]]:
        """Nodes by their longest distance from the root (the root alone in layer 0)."""
        depth = {self.root: 0}
        changed = True
        while changed:  # the graph is a DAG of at most a few hundred nodes: relax until stable
            changed = False
            for child, parent, _ in self.edges:
                if child in depth and depth.get(parent, -1) < depth[child] + 1:
                    depth[parent] = depth[child] + 1
                    changed = True
        layers: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
        for key in self.nodes:
            layers[depth.get(key, 0)].append(key)
        return layers

    def draw(self, path: str | Path) -> Path:
        """The graph as a picture: inputs on the left, the version on the right, arrows along the data flow."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = self.layers()
        width, height = max(6.0, 3.2 * len(layers)), max(3.0, 1.1 * max(len(layer) for layer in layers))
        fig, ax = plt.subplots(figsize=(width, height))
        position = {}
        for d, layer in enumerate(layers):
            for i, key in enumerate(layer):
                position[key] = (len(layers) - 1 - d, (len(layer) - 1) / 2 - i)
        for child, parent, role in self.edges:
            (x0, y0), (x1, y1) = position[parent], position[child]
            ax.annotate("", xy=(x1 - 0.33, y1), xytext=(x0 + 0.33, y0), arrowprops=dict(arrowstyle="->", color="#555"))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.08, role, fontsize=7, color="#555", ha="center")
        for key, (x, y) in position.items():
            node = self.nodes[key]
            text = node.title + ("\n" + _wrap(node.detail) if node.detail else "")
            box = dict(boxstyle="round,pad=0.4", facecolor=COLOURS.get(node.kind, "#fff"), edgecolor="#888")
            ax.text(x, y, text, ha="center", va="center", fontsize=7.5, bbox=box)
        ax.set_xlim(-0.6, len(layers) - 0.4)
        ax.set_ylim(-height / 2.2, height / 2.2)
        ax.axis("off")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=130)
        plt.close(fig)
        return path


def _wrap(text: str, width: int = 34) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + ([line] if line else []))


def _version_node(version: Version, held_by: dict[int, list[str]]) -> Node:
    figures = (version.card or {}).get("figures") or {}
    shown = ", ".join(f"{k} {v:.3g}" for k, v in figures.items() if isinstance(v, float))[:80]
    aliases = ", ".join(held_by.get(version.id, []))
    detail = " ".join(x for x in (version.stage or version.source_kind, f"[{aliases}]" if aliases else "", shown) if x)
    return Node(f"version:{version.id}", "version", version.ref, detail)


def lineage(registry: Registry, ref: str, max_depth: int = 20) -> Graph:
    """The lineage graph of ``ref`` (a version or an alias)."""
    root = registry.resolve(ref)
    held_by: dict[int, list[str]] = {}
    for alias, version in registry.aliases().items():
        held_by.setdefault(version.id, []).append(alias)
    graph = Graph(root=f"version:{root.id}")

    def add_card(key: str, card: dict | None, depth: int) -> None:
        if not card or depth > max_depth:
            return
        for name, data in (card.get("data") or {}).items():
            if data.get("path"):
                digest = data.get("sha256_16") or "?"
                graph.add(Node(f"data:{digest}:{data['path']}", "data", Path(data["path"]).name, f"sha {digest}"))
                graph.edges.append((key, f"data:{digest}:{data['path']}", name))
        for parent in card.get("parents") or []:
            parent_key = walk_parent(parent, depth + 1)
            graph.edges.append((key, parent_key, parent.get("role", "input")))

    def walk_parent(parent: dict, depth: int) -> str:
        run_id, path = parent.get("id"), parent.get("path", "?")
        path = path.removeprefix("rm:")  # a reward setting names its run folder "rm:FOLDER"
        version = registry.find_run(run_id) if run_id else registry.find_source(path) if Path(path).exists() else None
        if version is not None:
            return add_version(version, depth)
        if run_id:
            key = f"run:{run_id}"
            card = RunCard.read(path) if Path(path).is_dir() else None
            if graph.add(Node(key, "run", run_id, f"not registered; {path}" if card is None else path)):
                add_card(key, card.model_dump(mode="json") if card else None, depth)
            return key
        key = f"spec:{path}"
        graph.add(Node(key, "spec", path))
        return key

    def add_version(version: Version, depth: int) -> str:
        key = f"version:{version.id}"
        if not graph.add(_version_node(version, held_by)):
            return key
        if version.labels:
            summary = ", ".join(f"{source} {info.get('n', '?')}" for source, info in version.labels.items())
            graph.add(Node(f"labels:{version.id}", "labels", "labels", summary))
            graph.edges.append((key, f"labels:{version.id}", "trained on"))
            labeller = version.labels.get("pairs") or {}
            if labeller.get("run_id"):  # the reward model that picked the pairs, and what it learnt from
                parent = walk_parent({"id": labeller["run_id"], "path": labeller.get("path", "?")}, depth + 1)
                graph.edges.append((f"labels:{version.id}", parent, "labelled by"))
        for e in registry.evaluations(version.ref):
            report = e["report"] or {}
            verdict = {True: "passed", False: "rejected", None: "measured"}[e["passed"]]
            against = registry.get_id(e["against_id"]).ref if e["against_id"] else ""
            win = report.get("win_rate")
            detail = f"{verdict} vs {against}" + (f", win {win:.2f}" if isinstance(win, float) else "")
            graph.add(Node(f"evaluation:{e['id']}", "evaluation", "evaluation", detail))
            graph.edges.append((key, f"evaluation:{e['id']}", "gate"))
        add_card(key, version.card, depth)
        return key

    add_version(root, 0)
    return graph
