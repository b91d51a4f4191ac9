"""The demo's report.md: what was found, in plain words (search, routers, verdicts, where routers skip)."""

from __future__ import annotations

from drllm.evaluation import plots, report


def report_text(
    search: dict,
    metrics: dict,
    rows: list,
    decisions: list[dict],
    num_layers: int,
    task: str,
    model: str,
    style_line: str = "",
    setup: dict | None = None,
    verdicts: list[str] | None = None,
) -> str:
    """The demo's ``report.md``: what search, the routers and the evaluation found, in plain words."""
    parts = [
        f"# Dr.LLM demo: {task} on {model}\n",
        f"The model has {num_layers} layers. Links: [trade-off plot](eval/tradeoff.png), "
        "[per-layer decisions](eval/decisions.png), [results table](eval/results.md), "
        "[per-example outcomes](eval/examples.jsonl).\n",
        *(
            [f"Search and evaluation use one {style_line[0].lower()}{style_line[1:]}.\n"]
            if style_line
            else []
        ),
        "## Search\n",
        *_search_lines(search),
        "## Routers\n",
        *_router_lines(metrics, setup or {}),
        "## Evaluation at matched compute\n",
        "Every method runs at the same mean layers per prompt (the level); intervals are 95% bootstrap "
        "intervals, differences are paired on the same questions with exact McNemar p-values (* p < 0.05).\n",
        report.markdown_table(rows, num_layers),
        "## What it says\n",
        *report.findings(rows),
        "",
        *_verdict_lines(rows, verdicts or []),
        "## Where the routers skip and repeat\n",
        *_where_lines(decisions),
    ]
    return "\n".join(parts)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _search_lines(s: dict) -> list[str]:
    if not s.get("examples"):
        return ["No training example was searched.\n"]
    return [
        f"Search looked at {s['examples']} training questions. With every layer run once the model answered "
        f"{_pct(s['base_accuracy'])} of them correctly.",
        f"- For {_pct(s['shorter_when_right'])} of the questions it got right, search found a correct path "
        "with fewer layers.",
        f"- For {_pct(s['fixed_when_wrong'])} of the questions it got wrong, search found a path "
        "that answers correctly.",
        f"- The chosen paths run {s['mean_layers']:.2f} layers on average (of {s['num_layers']}).",
        *(
            [
                f"- Every question's single-layer skips and repeats were scored too; a question the model "
                f"got right has {s['safe_paths']:.1f} scored paths that keep its answer on average, and "
                "the routers learn the share of skip, execute and repeat over them."
            ]
            if "safe_paths" in s
            else []
        ),
        "",
    ]


def _router_lines(m: dict, setup: dict) -> list[str]:
    lines = []
    if setup.get("router"):
        read = setup.get("read_layer")
        where = (
            f"all reading the input of layer {read} once per prompt"
            if read is not None
            else "router i reading the input of layer i"
        )
        lines.append(
            f"Router head `{setup['router']}`, {where}, trained on {setup.get('targets', 'hard')} targets."
        )
    if "macro_f1" not in m:
        return ["\n".join(lines + ["The routers' validation metrics were not recorded."]) + "\n"]
    if "verdict" in m:
        lines.append(
            "Regret is the gold margin lost, against each held-out question's best single skip or repeat, by "
            "the edit the routers are most sure of; the " + m["verdict"] + "."
        )
    text = f"Macro F1 of the routers' decisions on held-out searched questions: {m['macro_f1']:.3f}"
    if "layers_pred" in m and "layers_target" in m:
        pred, target = m["layers_pred"], m["layers_target"]
        text += f"; they pick {pred:.2f} layers where the targets' argmax has {target:.2f}"
    if setup.get("targets") == "soft":
        text += " (against soft targets, whose argmax is nearly always execute, this says little)"
    lines.append(text + ".")
    return ["\n".join(lines) + "\n"]


def _verdict_lines(rows: list, verdicts: list[str]) -> list[str]:
    """One plain verdict: do the routers beat the base model, the best static path, their own controls?"""
    routed = [r for r in rows if r.method == "routed" and r.level is not None]
    if not routed:
        return ["No routers were evaluated.\n"]
    wins_static = [
        r for r in routed if r.vs_static and r.vs_static.significant and r.vs_static.difference.value > 0
    ]
    loses_static = [
        r for r in routed if r.vs_static and r.vs_static.significant and r.vs_static.difference.value < 0
    ]
    controls = {(r.method, r.level): r for r in rows if r.method in ("routed-random", "routed-majority")}
    beat_controls = [
        r
        for r in routed
        if all(
            r.accuracy.value > c.accuracy.value
            for c in (controls.get(("routed-random", r.level)), controls.get(("routed-majority", r.level)))
            if c is not None
        )
    ]
    lines = ["Verdict:"]
    lines += [f"- The exported routers (`eval/routers-at-<level>`): {v}" for v in verdicts]
    lines.append(
        f"- The routers are significantly above the best static path at {len(wins_static)} of {len(routed)} "
        f"levels and significantly below it at {len(loses_static)}."
    )
    lines.append(
        f"- They score above both of their own controls (random routing at their rates, their majority "
        f"path) at {len(beat_controls)} of {len(routed)} levels"
        + (
            "; where they do not, they have learned no per-input signal."
            if len(beat_controls) < len(routed)
            else "."
        )
    )
    return lines + [""]


def _where_lines(decisions: list[dict]) -> list[str]:
    routed = [d for d in decisions if d["method"] == "routed" and d["decisions"]]
    if not routed:
        return ["No routed decisions were recorded.\n"]
    ref = routed[len(routed) // 2]
    shares = plots.decision_shares(ref["decisions"])  # [3, L]
    where = f"at {ref['level']} layers" if ref.get("level") else f"at budget {ref['budget']:g}"
    counts = [sum(d) for d in ref["decisions"]]
    n, L = len(counts), len(ref["decisions"][0])
    full, few = sum(c >= L for c in counts), sum(c <= L // 2 for c in counts)
    lines = [f"From the routers' decisions {where} on {n} evaluation prompts:"]
    lines.append(
        f"- layers run per prompt: {sum(counts) / n:.2f} on average, from {min(counts)} to {max(counts)}; "
        f"{_pct(full / n)} of prompts run {L} or more, {_pct(few / n)} run {L // 2} or fewer."
    )
    for k, verb in ((0, "skipped"), (2, "repeated")):
        top = [i for i in shares[k].argsort()[::-1][:3] if shares[k][i] > 0]
        if top:
            named = ", ".join(f"layer {i} ({_pct(shares[k][i])} of prompts)" for i in top)
            lines.append(f"- most often {verb}: {named}.")
        else:
            lines.append(f"- no layer is ever {verb}.")
    return lines + [""]
