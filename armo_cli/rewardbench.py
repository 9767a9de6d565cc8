"""RewardBench facts and section arithmetic, in one place.

Source: allenai/reward-bench, rewardbench/constants.py (EXAMPLE_COUNTS, SUBSET_MAPPING) and the
leaderboard's weighting, after the September 2024 update that swapped the xstest counts
(should-refuse 154, should-respond 250). Prior Sets count at weight 0.5 in the overall score.
"""
from __future__ import annotations

EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,  # 447 pairs, weighted to equal the six hep code subsets together
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}

SECTIONS: dict[str, list[str]] = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond", "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}

PRIOR_SETS: list[str] = ["anthropic_helpful", "anthropic_harmless", "anthropic_hhh", "mtbench_gpt4",
                         "mtbench_human", "shp", "summarize"]
PRIOR_SETS_WEIGHT = 0.5


def section_scores(subset_acc: dict[str, float]) -> tuple[dict[str, float], float | None, dict]:
    """Per-section scores (example-count weighted), and the overall score.

    Returns (sections, score, info). The overall score is the mean of the four sections, with
    Prior Sets (the unweighted mean of its subsets) added at weight 0.5 when present. Subsets that
    are not RewardBench's are left to the caller (reported per subset and as a macro average)."""
    sections: dict[str, float] = {}
    for name, subsets in SECTIONS.items():
        present = [s for s in subsets if s in subset_acc]
        if present:
            tot = sum(EXAMPLE_COUNTS[s] for s in present)
            sections[name] = sum(subset_acc[s] * EXAMPLE_COUNTS[s] for s in present) / tot
    prior = [s for s in PRIOR_SETS if s in subset_acc]
    if prior:
        sections["Prior Sets"] = sum(subset_acc[s] for s in prior) / len(prior)
    core = [sections[s] for s in SECTIONS if s in sections]
    # a section from some of its subsets is not the leaderboard's section: say which are missing
    missing = {name: [s for s in subsets if s not in subset_acc] for name, subsets in SECTIONS.items()}
    missing = {name: m for name, m in missing.items() if m}
    complete = not missing
    if not core and not prior:
        return sections, None, {"complete": False, "missing_subsets": missing}
    num = sum(core) + (PRIOR_SETS_WEIGHT * sections["Prior Sets"] if prior else 0.0)
    den = len(core) + (PRIOR_SETS_WEIGHT if prior else 0.0)
    return sections, num / den, {"complete": complete, "missing_subsets": missing,
                                 "four_section_mean": sum(core) / len(core) if core else None}


def coverage_note(info: dict) -> str | None:
    """One line when a RewardBench score rests on part of the benchmark (None when every subset is there)."""
    missing = info.get("missing_subsets") or {}
    if not missing:
        return None
    total = sum(len(v) for v in SECTIONS.values())
    have = total - sum(len(v) for v in missing.values())
    return (f"the RewardBench score uses {have} of its {total} section subsets (missing: "
            + "; ".join(f"{name}: {', '.join(m)}" for name, m in missing.items())
            + "); it is not comparable with the leaderboard")
