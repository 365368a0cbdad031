"""The speed targets (issue 18) and judging a bench record against them, on the medians."""

from __future__ import annotations

STARTUP_EXTRA_S = 0.8  # the bound: a one-image command at most `import torch` + 0.8 s

# The targets: name -> (where in the record, comparison, bound, what it means).
TARGETS = {
    "machinery_overhead": (("flops", "machinery_overhead"), "<=", 1.1,
                           "DetailCLIP/CLIP time ratio over their FLOP ratio"),
    "keep_0.5_speedup": (("keep", "speedup_0.5"), ">=", 1.9,
                         "student encoder fwd+bwd at keep 0.5 vs 1.0"),
    "scores_overhead": (("scores", "overhead"), "<=", 0.05,
                        "teacher forward_with_scores over plain forward, minus 1"),
    "mfu": (("flops", "detailclip_mfu"), ">=", 0.5, "DetailCLIP step FLOP/s over measured matmul FLOP/s"),
    "zero_shot_vs_open_clip": (("inference", "ours_vs_open_clip"), ">=", 0.95,
                               "encode_image images/s, ours over open_clip"),
    "bulk_zero_shot_vs_open_clip": (("bulk", "ours_vs_open_clip"), ">=", 1.0,
                                    "zero-shot images/s over files, ours over open_clip's loop"),
    "help_seconds": (("startup", "help_s"), "<", 0.5, "wall time of `detailclip --help`"),
    **{f"startup_{name}_extra_s": (("startup", f"{name}_extra_s"), "<=", STARTUP_EXTRA_S,
                                   f"one-image `{name.replace('_', '-')}` minus `import torch`, seconds")
       for name in ("zero_shot", "attn_map", "reconstruct")},
}


def check_targets(record: dict) -> dict[str, dict]:
    """Each of :data:`TARGETS` whose figure the record has: value (the median), bound, whether the
    median meets it, and the figure's ``range`` (min, max) over the repeats where it has one."""
    out = {}
    for name, ((section, key), op, bound, meaning) in TARGETS.items():
        value = record.get(section, {}).get(key)
        if value is None:
            continue
        met = {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[name] = {"value": value, "target": f"{op} {bound:g}", "met": bool(met), "meaning": meaning}
        figure_spread = record[section].get("spread", {}).get(key)
        if figure_spread is not None:  # the value is this median; the range shows how far one run strays
            out[name]["range"] = [figure_spread["min"], figure_spread["max"]]
    return out
