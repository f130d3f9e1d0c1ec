"""The conversion report: every distinct kernel's plan and error, then the whole-model checks.

`ConversionReport.to_text()` is what `lfv-edge convert` prints; `to_json()` is written beside
the model (`OUT.report.json`). Kernel statuses:

    verified    a plan matched the kernel on real and on randomised inputs
    unverified  no plan matched (the reason, or the closest candidate and its miss)
    crashed     calling the kernel killed the converter's child process, or hung
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lfv_edge.convert.verify import Difference, KernelCheck


@dataclass(frozen=True, slots=True)
class OutputDifference:
    """One output of the converted model against a reference, worst over the runs."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    identical: bool


@dataclass(frozen=True, slots=True)
class EndToEnd:
    """The converted model against a reference (the package's own kernels, or DLR)."""

    reference: str
    runs: int
    outputs: tuple[OutputDifference, ...]

    @staticmethod
    def per_output(
        names: Sequence[str], shapes: Sequence[Sequence[int]], runs: Sequence[Sequence[Difference]]
    ) -> tuple[OutputDifference, ...]:
        """Each output's worst difference over the runs (`runs[k]`: output k's, run by run)."""
        return tuple(
            OutputDifference(name, tuple(shape), d.max_abs, d.max_rel, d.identical)
            for name, shape, d in (
                (n, s, Difference.worst(w)) for n, s, w in zip(names, shapes, runs, strict=True)
            )
        )

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)


@dataclass(frozen=True, slots=True)
class VerdictCheck:
    """One image through the LFV pipeline with DLR and with the converted model."""

    image: str
    dlr_anomalous: bool
    onnx_anomalous: bool
    dlr_confidence: float
    onnx_confidence: float
    mask_pixels_differing: int  # label image pixels that differ (0 without a mask)

    @property
    def agree(self) -> bool:
        return self.dlr_anomalous == self.onnx_anomalous


@dataclass(slots=True)
class ConversionReport:
    """Everything a conversion found; the model is written only if every kernel is verified."""

    source: str
    stage: str
    kernels: list[KernelCheck] = field(default_factory=list)
    model: str | None = None
    refused: str | None = None
    vs_kernels: EndToEnd | None = None
    vs_dlr: EndToEnd | None = None
    dlr_note: str = ""
    verdicts: list[VerdictCheck] = field(default_factory=list)
    verdict_note: str = ""
    restarts: int = 0
    seconds: float = 0.0

    @property
    def verified(self) -> int:
        return sum(1 for k in self.kernels if k.status == "verified")

    @property
    def unverified(self) -> list[KernelCheck]:
        return [k for k in self.kernels if k.status != "verified"]

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict (kernels as their own dicts)."""
        body = asdict(self)
        body["verified"] = self.verified
        body["total"] = len(self.kernels)
        return body

    @classmethod
    def from_json(cls, body: dict[str, object]) -> ConversionReport:
        """The inverse of `to_json` (what the child process hands back)."""
        data = dict(body)
        data.pop("verified", None)
        data.pop("total", None)
        kernels: Any = data.pop("kernels", [])
        verdicts: Any = data.pop("verdicts", [])
        ends: dict[str, Any] = {name: data.pop(name, None) for name in ("vs_kernels", "vs_dlr")}
        report = cls(**data)  # type: ignore[arg-type]
        report.kernels = [KernelCheck(**k) for k in kernels]
        report.verdicts = [VerdictCheck(**v) for v in verdicts]
        for name, raw in ends.items():
            if raw is not None:
                outputs = tuple(
                    OutputDifference(**{**o, "shape": tuple(o["shape"])}) for o in raw["outputs"]
                )
                setattr(report, name, EndToEnd(raw["reference"], raw["runs"], outputs))
        return report

    def dumps(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_json(), indent=1, default=float)

    def to_text(self, *, verbose: bool = False) -> str:
        """Human-readable report: one line per kernel (all with `verbose`, else the problems
        and a summary per recipe), then the end-to-end checks."""
        lines = [f"source: {self.source} (stage {self.stage})"]
        lines.append(f"kernels verified: {self.verified}/{len(self.kernels)}")
        shown = self.kernels if verbose else self.unverified
        for check in shown:
            if check.status == "verified":
                kind = (
                    "exact"
                    if check.identical
                    else f"close, max abs {check.max_abs:.3g}, rel {check.max_rel:.3g}"
                )
                lines.append(
                    f"  ok   {check.symbol} ×{check.nodes}: {check.plan} ({kind}, {check.candidates} candidate(s))"
                )
            else:
                lines.append(
                    f"  {check.status.upper()} {check.symbol} ×{check.nodes} [{check.ops}]: {check.reason}"
                )
        if not verbose and self.verified:
            recipes: dict[str, list[KernelCheck]] = {}
            for check in self.kernels:
                if check.status == "verified":
                    recipes.setdefault(check.recipe, []).append(check)
            for recipe, checks in sorted(recipes.items()):
                exact = sum(1 for c in checks if c.identical)
                worst = max(c.max_rel for c in checks)
                lines.append(
                    f"  {recipe}: {len(checks)} verified ({exact} bit-exact, worst rel {worst:.3g})"
                )
        if self.model:
            lines.append(f"model: {self.model}")
        if self.refused:
            lines.append(f"no model written: {self.refused}")
        for end in (self.vs_kernels, self.vs_dlr):
            if end is None:
                continue
            lines.append(
                f"vs {end.reference} ({end.runs} input(s)): max abs {end.max_abs:.3g}, max rel {end.max_rel:.3g}"
            )
            lines.extend(
                f"  {o.name} {list(o.shape)}: max abs {o.max_abs:.3g}, rel {o.max_rel:.3g}{' (identical)' if o.identical else ''}"
                for o in end.outputs
            )
        if self.dlr_note:
            lines.append(f"vs DLR: {self.dlr_note}")
        if self.verdicts:
            agree = sum(1 for v in self.verdicts if v.agree)
            conf = max(abs(v.dlr_confidence - v.onnx_confidence) for v in self.verdicts)
            masks = sum(v.mask_pixels_differing for v in self.verdicts)
            lines.append(
                f"LFV verdicts, DLR vs ONNX: {agree}/{len(self.verdicts)} agree; max confidence difference {conf:.3g}; mask pixels differing {masks}"
            )
        if self.verdict_note:
            lines.append(f"verdicts: {self.verdict_note}")
        lines.append(
            f"took {self.seconds:.1f} s"
            + (f" ({self.restarts} child restart(s))" if self.restarts else "")
        )
        return "\n".join(lines)
