"""The accuracy guard: which variants may be chosen for the loss their test images allow, and
what that means in words. Plain numbers only (objective.py scores, reasons.py and report.py speak).

A variant's loss against the baseline has a paired 95% interval [low, high] (stats.paired_interval);
the tolerance is the user's --max-accuracy-drop. In words, a variant is
- shown within the tolerance: high <= tolerance;
- shown worse: low > tolerance;
- else it cannot be told from the tolerance with this many test images: it could lose up to `high`.
Which of them may be chosen is the guard's mode (docs/choice.md gives the simulation behind it):
- "bounded" (the default): shown within, or within the tolerance at its point estimate and shown
  within twice the tolerance. A variant truly losing twice the tolerance stays eligible in ~1-2% of
  478-image test sets (under the rule before, 45-61%), and one that loses nothing in ~70%;
- "non-inferiority": shown within only. On 478 images it takes no discordant image at all to show
  1 pp, so at the default tolerance only a variant answering as float32 does on every test image is
  eligible;
- "benefit-of-doubt" (the rule before issue 29): excluded only when shown worse, or beyond the
  tolerance at its point estimate with an interval wholly above 0.
"""

from __future__ import annotations

from typing import Literal

GuardMode = Literal["bounded", "non-inferiority", "benefit-of-doubt"]
GUARD_MODES: tuple[GuardMode, ...] = ("bounded", "non-inferiority", "benefit-of-doubt")
# The guard's word on a variant. Every mode: the baseline; no guard set; shown within the tolerance;
# shown worse (its whole interval above the tolerance). "bounded": within the tolerance at its point
# estimate and shown within twice it (eligible). "bounded", "non-inferiority": not shown within what
# the mode needs (excluded). "benefit-of-doubt": within the tolerance at its point estimate; above it
# but not provably above 0 (eligible); above it and provably above 0 (excluded).
GuardWord = Literal[
    "baseline", "no guard", "shown within", "within twice the tolerance", "not shown within",
    "within tolerance", "loss unproven", "worse than allowed", "clearly worse",
]
EXCLUDED_BY_GUARD: tuple[GuardWord, ...] = ("clearly worse", "worse than allowed", "not shown within")
_EPS = 1e-12


def judge(loss: float, low: float, high: float, limit: float, mode: GuardMode, unit: str, metric: str,
          exact: bool = False) -> tuple[GuardWord, str]:
    """The guard's word on a loss (display units) with its interval, and why it excludes ("" when it
    does not). `exact`: the loss has no interval (low == high == loss), so the point decides."""
    sure = "" if exact else f" [{low:.2f}, {high:.2f}]"
    if low > limit + _EPS:
        return "clearly worse", f"loses {loss:.2f}{sure} {unit} of {metric}, clearly more than the allowed {limit:g} {unit}"
    if high <= limit + _EPS:
        return ("shown within" if mode != "benefit-of-doubt" else "within tolerance"), ""
    if mode == "benefit-of-doubt":
        if loss > limit + _EPS and low > _EPS and not exact:
            return "worse than allowed", (f"loses {loss:.2f}{sure} {unit} of {metric}: more than the allowed {limit:g} "
                                          f"{unit}, and measurably more than nothing")
        return ("loss unproven" if loss > limit + _EPS else "within tolerance"), ""
    if mode == "non-inferiority":
        return "not shown within", (f"loses {loss:.2f}{sure} {unit} of {metric}: not shown within the allowed {limit:g} "
                                    f"{unit} (it could lose up to {high:.2f} {unit}; the guard is non-inferiority)")
    if loss > limit + _EPS:
        return "not shown within", (f"loses {loss:.2f}{sure} {unit} of {metric}: more than the allowed {limit:g} {unit} "
                                    "at its point estimate")
    if high > 2 * limit + _EPS:
        return "not shown within", (f"loses {loss:.2f}{sure} {unit} of {metric}: it could lose up to {high:.2f} {unit}, "
                                    f"more than twice the allowed {limit:g} {unit}")
    return "within twice the tolerance", ""


def in_words(low: float, high: float, limit: float, unit: str, images: int | None = None,
             to_settle: int | None = None, settles: bool = True) -> str:
    """A variant's loss against the tolerance, in the words of the report: "shown within 1 pp",
    "shown worse than 1 pp ...", or "cannot be told from 1 pp with 478 photos: it could lose up to
    X pp; about N test photos would settle it". `to_settle`: stats.photos_to_settle (None with
    `settles`: the loss measured is the tolerance itself; None without: more than a million)."""
    if high <= limit + _EPS:
        return f"shown within {limit:g} {unit}"
    if low > limit + _EPS:
        return f"shown worse than {limit:g} {unit}: it loses at least {low:.2f} {unit}"
    told = f"cannot be told from {limit:g} {unit}" + (f" with {images:,} photos" if images else "")
    words = f"{told}: it could lose up to {high:.2f} {unit}"
    if to_settle is not None:
        return f"{words}; about {to_settle:,} test photos would settle it (at the discordance seen here)"
    if images:
        return words + ("; its loss measured is the tolerance itself, which no number of photos settles" if not settles
                        else "; more than a million test photos would settle it")
    return words


def rule_in_words(mode: GuardMode, limit: float, unit: str, metric: str, confidence: float) -> str:
    """The guard's rule in one paragraph, with its numbers."""
    interval = f"its {confidence:.0%} interval of {metric} loss against the baseline (paired, Tango's score interval)"
    worse = f"A variant whose whole interval lies above {limit:g} {unit} is shown worse and excluded."
    if mode == "non-inferiority":
        return (f"Accuracy guard (non-inferiority): a variant is eligible only when {interval} lies wholly at or below the "
                f"allowed {limit:g} {unit} (shown within). " + worse)
    if mode == "bounded":
        return (f"Accuracy guard (bounded): a variant is eligible when {interval} lies wholly at or below the allowed "
                f"{limit:g} {unit} (shown within), or when its point estimate is within {limit:g} {unit} and its interval "
                f"lies wholly at or below {2 * limit:g} {unit}, twice the tolerance (it cannot be told from {limit:g} {unit} "
                f"with these images, but could not lose more than {2 * limit:g}). " + worse)
    return (f"Accuracy guard (benefit-of-doubt): a variant is excluded when its whole {confidence:.0%} interval of {metric} "
            f"loss against the baseline (paired, Tango's score interval) lies above the allowed "
            f"{limit:g} {unit} (clearly worse), or when its point estimate is above {limit:g} {unit} and its interval lies "
            "wholly above 0 (worse than allowed: its loss is real, and more than allowed as far as the test set can tell). "
            f"A variant whose point estimate is above {limit:g} {unit} but whose interval reaches 0 stays eligible (loss "
            "unproven): the test set cannot tell its loss from none.")
