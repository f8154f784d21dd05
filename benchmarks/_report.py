"""The last two tables of ``benchmarks/api.py``: the three paths side by side with their
ratios, and the targets, with where the time went for each one missed."""

from __future__ import annotations

import os
from typing import Any

from benchmarks._measure import PathResult, ms, pct, table

FIRST_NODE_P95_S = 1.5
ACCEPT_P95_S = 0.3
MIN_RUNS_PER_S = 10.0
MIN_VS_RAW = 0.8


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def comparison(paths: list[PathResult], count: int, workers: int, limit: int) -> str:
    if not paths:
        return ""
    headers = [
        "path",
        "runs",
        "completed",
        "errors",
        "lost",
        "accept p50",
        "accept p95",
        "1st step p50",
        "1st step p95",
        "done p50",
        "done p95",
        "wall s",
        "runs/s",
        "runs/s (Prefect Completed)",
    ]
    rows = [
        [
            p.path,
            p.count,
            p.completed,
            p.errors,
            p.lost,
            ms(pct(p.accept, 50)),
            ms(pct(p.accept, 95)),
            ms(pct(p.first_step, 50)),
            ms(pct(p.first_step, 95)),
            ms(pct(p.done, 50)),
            ms(pct(p.done, 95)),
            f"{p.wall_s:.1f}",
            f"{p.runs_per_s:.2f}",
            "-" if p.runs_per_s_prefect is None else f"{p.runs_per_s_prefect:.2f}",
        ]
        for p in paths
    ]
    by_name = {p.path: p for p in paths}
    fm = by_name.get("FlowMaestro")
    for other in ("raw Prefect", "in-process"):
        base = by_name.get(other)
        if fm is None or base is None:
            continue
        rows.append(
            [
                f"FlowMaestro / {other}",
                "",
                "",
                "",
                "",
                _ratio(pct(fm.accept, 50), pct(base.accept, 50)),
                _ratio(pct(fm.accept, 95), pct(base.accept, 95)),
                _ratio(pct(fm.first_step, 50), pct(base.first_step, 50)),
                _ratio(pct(fm.first_step, 95), pct(base.first_step, 95)),
                _ratio(pct(fm.done, 50), pct(base.done, 50)),
                _ratio(pct(fm.done, 95), pct(base.done, 95)),
                _ratio(fm.wall_s, base.wall_s),
                _ratio(fm.runs_per_s, base.runs_per_s),
                _ratio(fm.runs_per_s_prefect, base.runs_per_s_prefect),
            ]
        )
    title = (
        f"Side by side: {count} runs of the 5-step chain started at once, ms from each request "
        f"(FlowMaestro: POST execute -> 202 / 1st node:started received / execution:completed received, "
        f"API + {workers} workers x {limit}; raw Prefect: create_flow_run_from_deployment -> answer / 1st "
        f"task started / Completed, {workers} workers x {limit}; in-process: flow run created / 1st "
        f"node:started / final state, this process)"
    )
    out = table(headers, rows, title=title)
    names = [n for n in ("api", "workers", "prefect", "postgres", "client") if any(n in p.cpu_per_run for p in paths)]
    cpu_rows = []
    for p in paths:
        total = p.cpu_total_per_run
        cpu_rows.append(
            [
                p.path,
                *(f"{p.cpu_per_run[n] * 1000:.0f}" if n in p.cpu_per_run else "-" for n in names),
                "-" if total is None else f"{total * 1000:.0f}",
                "-" if not total else f"{(os.cpu_count() or 1) / total:.1f}",
                "-" if p.others_share is None else f"{p.others_share * 100:.0f}%",
            ]
        )
    fm_total = fm.cpu_total_per_run if fm else None
    for other in ("raw Prefect", "in-process"):
        base = by_name.get(other)
        if fm_total and base is not None and base.cpu_total_per_run:
            cpu_rows.append(
                [f"FlowMaestro / {other}", *([""] * len(names)), _ratio(fm_total, base.cpu_total_per_run), "", ""]
            )
    out += "\n\n" + table(
        [
            "path",
            *(f"{n} ms" for n in names),
            "total ms",
            f"runs/s {os.cpu_count()} CPUs allow",
            "machine CPU used by others",
        ],
        cpu_rows,
        title="CPU per completed run, ms, by process (client: the benchmark itself; in the "
        "total only for in-process, where it ran the runs), over the whole part",
    )
    return out


def _breakdown(result: PathResult, top: int = 4) -> list[str]:
    """The largest phases by median, then the CPU by process."""
    return (
        _ranked(result.phases, top)
        + [f"    CPU {line}" for line in result.cpu[:2]]
        + [f"    {line}" for line in result.notes if line.startswith("Prefect requests")]
    )


def _ranked(phases: list[tuple[str, list[float]]], top: int = 4) -> list[str]:
    ranked = sorted(
        ((pct(v, 50) or 0.0, pct(v, 95) or 0.0, name) for name, v in phases if v and "all events" not in name),
        reverse=True,
    )
    return [f"    {name}: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms" for p50, p95, name in ranked[:top]]


def targets(latency: Any, fm: PathResult | None, raw: PathResult | None) -> str:
    """``latency``: the (a) result of ``benchmarks/api.py`` (``first(q)``, ``warm_phases``,
    ``cpu``), or None. For the targets missed, where the time went: one breakdown per part
    that explains them (the warm sequential runs, the concurrent runs, the raw Prefect runs)."""
    rows: list[list[Any]] = []
    missed: dict[str, list[str]] = {}  # breakdown -> the targets it explains
    breakdowns: dict[str, list[str]] = {}

    def check(name: str, measured: str, ok: bool | None, *explained_by: tuple[str, list[str]]) -> None:
        rows.append([name, measured, "-" if ok is None else "yes" if ok else "MISSED"])
        if ok is False:
            for title, lines in explained_by:
                missed.setdefault(title, []).append(f"{name} ({measured})")
                breakdowns[title] = lines

    if latency is not None:
        p95 = latency.first(95)
        check(
            f"execute -> 1st node started p95 (warm) <= {FIRST_NODE_P95_S:.1f} s",
            ms(p95, 0) + " ms",
            None if p95 is None else p95 <= FIRST_NODE_P95_S,
            (
                "FlowMaestro, warm sequential runs (a)",
                _ranked(latency.warm_phases, 5) + [f"    CPU during (a): {latency.cpu}"],
            ),
        )
    if fm is not None:
        n = fm.count
        concurrent = (f"FlowMaestro, {n} concurrent runs (b)", _breakdown(fm))
        check(f"{n} concurrent executes: 0 errors", str(fm.errors), fm.errors == 0, concurrent)
        check(f"{n} concurrent executes: 0 lost", str(fm.lost), fm.lost == 0, concurrent)
        accept95 = pct(fm.accept, 95)
        check(
            f"{n} concurrent executes: POST -> 202 p95 <= {ACCEPT_P95_S * 1000:.0f} ms",
            ms(accept95, 0) + " ms",
            None if accept95 is None else accept95 <= ACCEPT_P95_S,
            concurrent,
        )
        check(
            f"{n} concurrent executes: >= {MIN_RUNS_PER_S:.0f} runs/s",
            f"{fm.runs_per_s:.2f}",
            fm.runs_per_s >= MIN_RUNS_PER_S,
            concurrent,
        )
        if raw is not None:
            ratio = fm.runs_per_s / raw.runs_per_s if raw.runs_per_s else None
            check(
                f"{n} concurrent executes: >= {MIN_VS_RAW}x raw Prefect runs/s",
                "-" if ratio is None else f"{ratio:.2f}x ({fm.runs_per_s:.2f} vs {raw.runs_per_s:.2f})",
                None if ratio is None else ratio >= MIN_VS_RAW,
                concurrent,
                (f"raw Prefect, {raw.count} concurrent runs (c), to compare", _breakdown(raw)),
            )
    out = table(["target", "measured", "met"], rows, title="Targets")
    if missed:
        out += "\n\nWhere the time goes (largest phases by median; CPU by process; Prefect requests):"
        for title, names in missed.items():
            out += f"\n  {title}: explains " + "; ".join(names) + "\n" + "\n".join(breakdowns[title])
    return out
