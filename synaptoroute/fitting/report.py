"""What a fit changed and how the figures moved: :class:`FitReport`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..evaluation import Figures


@dataclass
class FitReport:
    """What a fit changed and how the figures moved.

    ``before`` holds the figures of the previous policy on the labelled rows;
    ``after`` the held-out estimate of the new one (each row judged by a policy
    fitted without its fold), so the two are honest to compare. Both score every
    text that is a route's utterance as if it were not (leave-one-out).
    """

    objective: str
    target_oos_recall: float | None
    decision: Literal["head", "thresholds"]
    rows: int
    in_scope: int
    out_of_scope: int
    reused_vectors: int
    encoded: int
    before: Figures
    after: Figures
    candidates: dict[str, dict[str, Any]]
    threshold: tuple[float, float]
    min_margin: tuple[float, float]
    thresholds_changed: dict[str, tuple[float, float]]
    head: dict[str, Any] | None
    calibration: str | None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; headline figures also appear flat as ``<figure>_before/_after``."""
        flat: dict[str, Any] = {
            "objective": self.objective,
            "target_oos_recall": self.target_oos_recall,
            "decision": self.decision,
            "rows": self.rows,
            "in_scope": self.in_scope,
            "out_of_scope": self.out_of_scope,
            "reused_vectors": self.reused_vectors,
            "encoded": self.encoded,
        }
        for key in ("accuracy", "in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1"):
            flat[f"{key}_before"] = getattr(self.before, key)
            flat[f"{key}_after"] = getattr(self.after, key)
        flat["threshold_before"], flat["threshold_after"] = self.threshold
        flat["min_margin_before"], flat["min_margin_after"] = self.min_margin
        flat["routes_with_new_threshold"] = len(self.thresholds_changed)
        flat["seconds_total"] = self.seconds.get("total")
        return {
            **flat,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "candidates": self.candidates,
            "thresholds_changed": {k: list(v) for k, v in self.thresholds_changed.items()},
            "head": self.head,
            "calibration": self.calibration,
            "notes": self.notes,
            "seconds": self.seconds,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    def __str__(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        lines = [
            f"fit on {self.rows} rows ({self.in_scope} in scope, {self.out_of_scope} out of "
            f"scope; {self.reused_vectors} vectors reused, {self.encoded} encoded), "
            f"objective {self.objective}"
            + (f" (target OOS recall {self.target_oos_recall})" if self.target_oos_recall else ""),
            f"decision now by: {self.decision}",
            f"{'':20}{'before':>10}{'after':>10}  (after: held-out estimate)",
        ]
        for key in ("accuracy", "in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1"):
            lines.append(
                f"{key:20}{fmt(getattr(self.before, key)):>10}{fmt(getattr(self.after, key)):>10}"
            )
        # A route without a threshold of its own moves with the default: counted apart,
        # so a new default does not read as that many per-route cuts.
        with_default = sum(
            1
            for before, after in self.thresholds_changed.values()
            if before == self.threshold[0] and after == self.threshold[1]
        )
        lines.append(
            f"default threshold {self.threshold[0]:.4f} -> {self.threshold[1]:.4f}; "
            f"margin {self.min_margin[0]:.4f} -> {self.min_margin[1]:.4f}; "
            f"{len(self.thresholds_changed)} routes' thresholds changed ({with_default} of "
            "them with the default)"
        )
        for name, values in self.candidates.items():
            lines.append(f"  candidate {name}: held-out objective {fmt(values.get('objective'))}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(f"took {self.seconds.get('total', 0.0):.1f} s")
        return "\n".join(lines)
