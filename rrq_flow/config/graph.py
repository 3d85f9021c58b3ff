"""The pipeline graph: stages with their ``next``, fan-out and join edges, concurrency and executor,
as plain text (``validate`` prints it), Mermaid or Graphviz dot (``rrq-flow graph``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rrq_flow.config.model import PipelineConfig, QueueConfig

FORMATS = ("text", "mermaid", "dot")


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    kind: str  # "next" | "fan-out" | "join" | "fan-out, join"


def edges(config: PipelineConfig) -> list[Edge]:
    """Every ``next`` edge, labelled fan-out when the source fans out and join when the target
    gathers a group."""
    out = []
    for q in config.queues.values():
        for target in q.next:
            kinds = []
            if q.fan_out:
                kinds.append("fan-out")
            if config.queues[target].join:
                kinds.append("join")
            out.append(Edge(q.name, target, ", ".join(kinds) or "next"))
    return out


def _details(q: QueueConfig, *, fan_out: bool = True) -> str:
    parts = [q.executor or "auto", f"concurrency {q.concurrency}"]
    if q.fan_out and fan_out:
        parts.append("fan-out")
    if q.join:
        parts.append(f"join, on failure: {q.join_on_failure}")
    return ", ".join(parts)


def render_text(config: PipelineConfig) -> str:
    """One line per stage: ``name (executor, concurrency N[, fan-out][, join]) -> targets``."""
    width = max(len(n) for n in config.queues)
    by_source: dict[str, list[Edge]] = {}
    for e in edges(config):
        by_source.setdefault(e.source, []).append(e)
    lines = [f"pipeline {config.pipeline!r}: {len(config.queues)} stage(s)"]
    for name, q in config.queues.items():
        out = by_source.get(name, [])
        arrows = ", ".join(e.target if e.kind == "next" else f"{e.target} ({e.kind})" for e in out)
        details = _details(q, fan_out=False)
        lines.append(f"  {name.ljust(width)}  [{details}]  -> {arrows or '(end)'}")
    return "\n".join(lines)


def _node_id(name: str) -> str:
    return "q_" + "".join(c if c.isalnum() else "_" for c in name) + f"_{len(name)}"


def render_mermaid(config: PipelineConfig) -> str:
    lines = ["flowchart LR"]
    for name, q in config.queues.items():
        label = f"{name}<br/>{_details(q)}".replace('"', "'")
        shape = ('(["', '"])') if q.join else ('["', '"]')
        lines.append(f"    {_node_id(name)}{shape[0]}{label}{shape[1]}")
    for e in edges(config):
        arrow = "-->" if e.kind == "next" else f"-- {e.kind} -->"
        if "fan-out" in e.kind:
            arrow = "==>" if e.kind == "fan-out" else f"== {e.kind} ==>"
        lines.append(f"    {_node_id(e.source)} {arrow} {_node_id(e.target)}")
    return "\n".join(lines)


def render_dot(config: PipelineConfig) -> str:
    lines = [f"digraph {json.dumps(config.pipeline)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for name, q in config.queues.items():
        label = json.dumps(f"{name}\n{_details(q)}")
        style = ", shape=invhouse" if q.join else ""
        lines.append(f"  {json.dumps(name)} [label={label}{style}];")
    for e in edges(config):
        attrs = "" if e.kind == "next" else f" [label={json.dumps(e.kind)}"
        if attrs and "fan-out" in e.kind:
            attrs += ", style=bold"
        attrs += "]" if attrs else ""
        lines.append(f"  {json.dumps(e.source)} -> {json.dumps(e.target)}{attrs};")
    lines.append("}")
    return "\n".join(lines)


def render(config: PipelineConfig, fmt: str) -> str:
    if fmt == "mermaid":
        return render_mermaid(config)
    if fmt == "dot":
        return render_dot(config)
    return render_text(config)
