"""The profile's HTML: a flame graph (inline SVG, no script, nothing fetched) and the tables.

The flame graph merges every worker's stacks: the root is "all workers", each row one level
deeper, each box's width its total time; user code is orange, forkjoin's own work blue. Hover a
box for its name, seconds and share. speedscope opens the JSON export for interactive digging.
"""

from __future__ import annotations

import html
import os
from typing import Any

from .profile import USER, Profile, wrapper_index

WIDTH = 1000
ROW = 17
MAX_DEPTH = 48
MIN_BOX_PIXELS = 0.8  # thinner boxes are not drawn (their time still counts in the parent)
_COLOURS = {USER: ("#f2a65a", "#e8893a"), "forkjoin": ("#7fa7d9", "#5b8fd1")}


class _Node:
    __slots__ = ("name", "kind", "seconds", "children")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.seconds = 0.0
        self.children: dict[str, _Node] = {}


def _tree(profile: Profile) -> _Node:
    root = _Node("all workers", "forkjoin")
    for stack, seconds, _ in profile.stacks:
        frames = [profile.frames[i] for i in stack]
        root.seconds += seconds
        node = root
        wrapper = wrapper_index(frames)
        user_from = wrapper + 1 if wrapper >= 0 else len(frames)
        for depth, (name, _, _) in enumerate(frames):
            kind = USER if depth >= user_from else "forkjoin"
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node(name, kind)
            child.seconds += seconds
            node = child
    return root


def flame_svg(profile: Profile) -> str:
    """The merged flame graph as an SVG element (empty text when nothing was sampled)."""
    root = _tree(profile)
    if root.seconds <= 0:
        return ""
    scale = WIDTH / root.seconds
    boxes: list[str] = []
    depth_seen = 0

    def draw(node: _Node, x: float, depth: int) -> None:
        nonlocal depth_seen
        width = node.seconds * scale
        if width < MIN_BOX_PIXELS or depth >= MAX_DEPTH:
            return
        depth_seen = max(depth_seen, depth)
        fill = _COLOURS[USER if node.kind == USER else "forkjoin"][depth % 2]
        share = 100 * node.seconds / root.seconds
        label = html.escape(node.name)
        text = ""
        if width > 40:
            chars = int(width / 7)
            shown = node.name if len(node.name) <= chars else node.name[: chars - 1] + "…"
            text = f'<text x="{x + 3:.1f}" y="{depth * ROW + 12}">{html.escape(shown)}</text>'
        boxes.append(
            f"<g><title>{label}: {node.seconds:.3f} s ({share:.1f}%)</title>"
            f'<rect x="{x:.1f}" y="{depth * ROW}" width="{width:.1f}" height="{ROW - 1}" '
            f'fill="{fill}"/>{text}</g>'
        )
        child_x = x
        for child in sorted(node.children.values(), key=lambda c: -c.seconds):
            draw(child, child_x, depth + 1)
            child_x += child.seconds * scale

    draw(root, 0.0, 0)
    height = (depth_seen + 1) * ROW
    return (
        f'<svg class="flame" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{height}" font-family="monospace" font-size="11">' + "".join(boxes) + "</svg>"
    ).replace('xmlns="http://www.w3.org/2000/svg" ', "")


def _rows(profile: Profile, by: str) -> list[list[str]]:
    whole = profile.total_seconds or 1.0
    return [
        [row.name, f"{os.path.basename(row.file)}:{row.line}", row.kind,
         f"{row.self_seconds:.3f}", f"{100 * row.self_seconds / whole:.1f}%",
         f"{row.total_seconds:.3f}", f"{100 * row.total_seconds / whole:.1f}%"]
        for row in profile.top(15, by)
    ]  # fmt: skip


def profile_html(profile: Profile, table: Any, speedscope_name: str | None = None) -> list[str]:
    """The report's profile section; ``table(headers, rows)`` is the report's table helper."""
    whole = profile.total_seconds or 1.0
    headers = ["function", "where", "kind", "self s", "self %", "total s", "total %"]
    by_kind = profile.seconds_by_kind().items()
    kinds = [[k, f"{s:.3f}", f"{100 * s / whole:.1f}%"] for k, s in by_kind]
    parts = [
        "<h2>Profile across workers</h2>",
        f"<p>{len(profile.workers)} worker processes sampled, {profile.calls} calls, "
        f"{profile.samples} samples, {profile.total_seconds:.3f} worker-seconds. "
        "Orange: your code (and the libraries it calls); blue: forkjoin's own work "
        "(waiting for tasks, serialisation, transfer).</p>",
        table(["spent in", "worker-seconds", "share"], kinds),
        flame_svg(profile),
    ]
    if speedscope_name:
        parts.append(
            f"<p>Interactive view: open <code>{html.escape(speedscope_name)}</code> "
            "in speedscope.</p>"
        )
    if profile.incomplete:
        parts.append(
            f"<p><b>Note:</b> workers {profile.incomplete} did not send final totals (busy in "
            "a long call, or gone): their last periodic totals are shown.</p>"
        )
    parts += [
        "<h3>Top functions by self time</h3>",
        table(headers, _rows(profile, "self")),
        "<h3>Top functions by total time</h3>",
        table(headers, _rows(profile, "total")),
    ]
    return parts
