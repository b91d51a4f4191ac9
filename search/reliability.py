"""Label reliability: how often the gold and a wrong gold are fixed at each margin; do two seeds agree?"""

from __future__ import annotations

from .records import SearchRecord

FIX_MARGINS = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0)


def _edits(path) -> set[tuple[int, int]]:
    """(layer, decision) of every layer not executed exactly once; ``path`` as decisions or a string."""
    return {(i, int(d)) for i, d in enumerate(path) if int(d) != 1}


def reliability(records: list[SearchRecord]) -> dict:
    """Label reliability over records that carry supervision (empty when none do).

    Keys: ``wrong_gold_fix_rate`` (share of control searches that made a wrong answer win, among those
    where the base did not already pick it), ``trusted_fix_rate`` (share of base-wrong examples with a
    fix whose margin gain beats the control's), ``seed_agreement`` (mean Jaccard overlap of the two seeds'
    edits), ``best_margin_agreement`` (the same for each seed's evaluated path with the largest margin),
    ``safe_paths`` (mean safe paths per base-correct example), ``fixes_by_margin`` (on examples that the
    model and the control both get wrong, paired: at each of ``FIX_MARGINS``, the share whose best correct
    path wins by more than that margin, for the gold and for the wrong gold).
    """
    sup = [r.supervision for r in records if r.supervision]
    out: dict = {}
    controls = [s["control"] for s in sup if "control" in s and s["control"]["base_reward"] < 1.0]
    if controls:
        out["wrong_gold_fix_rate"] = sum(c["fixed"] for c in controls) / len(controls)
        out["control_examples"] = len(controls)
    wrong = [
        r for r in records if r.supervision and "control" in r.supervision and (r.base_reward or 0) < 1.0
    ]
    if wrong:
        out["trusted_fix_rate"] = sum(bool(r.supervision.get("trusted_fix")) for r in wrong) / len(wrong)
    agree = [s["seeds"]["agreement"] for s in sup if "seeds" in s and s["seeds"]["agreement"] is not None]
    if agree:
        out["seed_agreement"] = sum(agree) / len(agree)
    best = [
        _jaccard(_best_path(s["evaluated"]), _best_path(s["seeds"]["evaluated"]))
        for s in sup
        if s.get("evaluated") and s.get("seeds", {}).get("evaluated")
    ]
    if best:
        out["best_margin_agreement"] = sum(best) / len(best)
    safe = [s["safe_paths"] for s in sup if "safe_paths" in s]
    if safe:
        out["safe_paths"] = sum(safe) / len(safe)
    paired = [
        (_best_correct_margin(s["evaluated"]), s["control"]["best_margin"])
        for r, s in ((r, r.supervision) for r in records if r.supervision)
        if (r.base_reward or 0) < 1.0
        and "control" in s
        and s["control"]["base_reward"] < 1.0
        and s["control"].get("best_margin") is not None
        and s.get("evaluated")
    ]
    if paired:
        out["fixes_by_margin"] = [
            {
                "margin": m,
                "fixed": sum(a is not None and a > m for a, _ in paired) / len(paired),
                "control": sum(c > m for _, c in paired) / len(paired),
                "examples": len(paired),
            }
            for m in FIX_MARGINS
        ]
    return out


def _best_path(evaluated: list[dict]) -> str:
    """The evaluated path with the largest gold margin."""
    return max((e for e in evaluated if e.get("margin") is not None), key=lambda e: e["margin"])["path"]


def _jaccard(a: str, b: str) -> float:
    """Jaccard overlap of two paths' edits (1.0 when neither edits anything)."""
    x, y = _edits(a), _edits(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def _best_correct_margin(evaluated: list[dict]) -> float | None:
    margins = [e["margin"] for e in evaluated if e.get("reward", 0.0) >= 1.0 and e.get("margin") is not None]
    return max(margins) if margins else None


def format_reliability(r: dict) -> str:
    """The reliability numbers as readable lines ('' when there are none)."""
    lines = []
    if "wrong_gold_fix_rate" in r:
        lines.append(
            f"  wrong-gold fix rate    {r['wrong_gold_fix_rate']:.1%} of {r['control_examples']} control "
            "searches (what the search finds by luck)"
        )
    if "trusted_fix_rate" in r:
        lines.append(f"  trusted fixes          {r['trusted_fix_rate']:.1%} of base-wrong examples")
    if "seed_agreement" in r:
        lines.append(f"  two-seed agreement     {r['seed_agreement']:.2f} (Jaccard overlap of chosen edits)")
    if "best_margin_agreement" in r:
        lines.append(
            f"  best-margin agreement  {r['best_margin_agreement']:.2f} (the same for each seed's path with "
            "the largest gold margin)"
        )
    if "safe_paths" in r:
        lines.append(f"  safe paths             {r['safe_paths']:.1f} per base-correct example")
    if "fixes_by_margin" in r:
        rows = r["fixes_by_margin"]
        lines.append(
            f"  fixed by more than m nats, on {rows[0]['examples']} examples both the model and the control "
            "get wrong (gold | wrong gold):"
        )
        lines.append(
            "    " + "  ".join(f"m={x['margin']:g}: {x['fixed']:.0%} | {x['control']:.0%}" for x in rows)
        )
    return "\n".join(lines)
