"""Kernel by kernel: which candidate plan computes what the package's own kernel computes.

For one distinct kernel (a symbol; every graph node calling it has the same shapes):

1. the real kernel runs on the inputs it gets in a run of the whole model (weights as
   stored), and again on randomised inputs: every input's values shuffled and scaled by
   U(0.5, 1.5) (a constant input gets normal noise), so weights and data both change;
2. each candidate plan (plans.py), in likelihood order, becomes a one-kernel ONNX model whose
   inputs and outputs are the kernel's raw buffers, and runs in ONNX Runtime on both input
   sets;
3. the first plan that matches both times is the kernel's plan. "Matches" is bit for bit for
   plans that must be exact (data movement, elementwise chains, probed constants), else a
   maximum absolute difference of at most `TOLERANCE` × the largest magnitude in the output.
   NaNs and infinities must sit in the same places.

A kernel no plan matches is *unverified*; its report entry gives the reason or the closest
candidate and by how much it missed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from lfv_edge.convert.abi import KernelCallError, KernelLibrary, aligned_copy, aligned_empty
from lfv_edge.convert.onnx_graph import OnnxGraph
from lfv_edge.convert.plans import Context, KernelSpec, Plan, Unsupported, candidates
from lfv_edge.errors import LfvEdgeError
from lfv_edge.model.onnx_runner import OnnxSession

Array = NDArray[np.generic]
TOLERANCE = 1e-4
MAX_CANDIDATES = 400


@dataclass(frozen=True, slots=True)
class Difference:
    """How far one set of outputs is from another."""

    max_abs: float
    max_rel: float  # max_abs / the largest finite magnitude of the reference
    identical: bool  # bit for bit (NaN = NaN)
    same_specials: bool  # NaN and ±inf in the same places

    def passes(self, exact: bool, tolerance: float = TOLERANCE) -> bool:
        """Whether this difference is acceptable for a plan that must (not) be exact."""
        if exact:
            return self.identical
        return self.same_specials and self.max_rel <= tolerance

    @staticmethod
    def worst(items: Sequence[Difference]) -> Difference:
        """The combined difference of several outputs."""
        return Difference(
            max((d.max_abs for d in items), default=0.0),
            max((d.max_rel for d in items), default=0.0),
            all(d.identical for d in items),
            all(d.same_specials for d in items),
        )


def difference(got: Array, want: Array) -> Difference:
    """Compare two arrays of the same shape."""
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(want, dtype=np.float64)
    if a.shape != b.shape:
        a = a.reshape(b.shape) if a.size == b.size else a
        if a.shape != b.shape:
            return Difference(float("inf"), float("inf"), False, False)
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    same_specials = bool(
        np.array_equal(finite_a, finite_b)
        and np.array_equal(np.isnan(a), np.isnan(b))
        and np.array_equal(a[~finite_a & ~np.isnan(a)], b[~finite_b & ~np.isnan(b)])
    )
    both = finite_a & finite_b
    max_abs = float(np.max(np.abs(a[both] - b[both]))) if both.any() else 0.0
    scale = float(np.max(np.abs(b[both]))) if both.any() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    identical = same_specials and bool(np.array_equal(a[both], b[both]))
    return Difference(max_abs, max_rel, identical, same_specials)


@dataclass(frozen=True, slots=True)
class KernelCheck:
    """The report entry of one distinct kernel."""

    symbol: str
    ops: str
    nodes: int
    status: str  # verified | unverified | crashed
    plan: str = ""
    recipe: str = ""
    exact_required: bool = False
    identical: bool = False  # matched bit for bit on both checks
    max_abs: float = 0.0
    max_rel: float = 0.0
    candidates: int = 0
    reason: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict."""
        return asdict(self)


def single_kernel_model(spec: KernelSpec, plan: Plan) -> bytes:
    """A model whose inputs and outputs are the kernel's raw buffers, computed by `plan`."""
    g = OnnxGraph(f"kernel_{spec.symbol}"[:120])
    raw = [g.input(f"in{i}", t.shape, t.dtype) for i, t in enumerate(spec.inputs)]
    logical = [layout.unpack(g, value) for layout, value in zip(plan.in_layouts, raw, strict=True)]
    outputs = plan.emit(g, logical)
    if len(outputs) != len(spec.outputs):
        msg = f"the plan gives {len(outputs)} outputs, the kernel has {len(spec.outputs)}"
        raise Unsupported(msg)
    for k, (layout, value, tensor) in enumerate(
        zip(plan.out_layouts, outputs, spec.outputs, strict=True)
    ):
        g.output(layout.pack(g, value, tensor.shape), f"out{k}", tensor.dtype)
    return g.to_model()


def randomised(
    inputs: Sequence[Array], rng: np.random.Generator, params: Sequence[bool] | None = None
) -> list[Array]:
    """Fresh inputs for the second check.

    Data inputs become zero-mean normal noise at the real input's scale (so signs mix even
    where the model's own data never goes negative: a kernel computing |x| must not pass
    for a ReLU). Weights (`params`) keep their values, shuffled and scaled by U(0.5, 1.5),
    so variances stay positive and scales stay plausible.
    """
    flags = list(params) if params is not None else [False] * len(inputs)
    out: list[Array] = []
    for array, is_param in zip(inputs, flags, strict=True):
        values = np.asarray(array)
        if values.dtype.kind != "f":
            out.append(values.copy())
            continue
        finite = values[np.isfinite(values)].astype(np.float64)
        spread = float(np.std(finite)) if finite.size > 1 else 0.0
        if not is_param or spread == 0.0:
            scale = spread or (float(np.max(np.abs(finite))) if finite.size else 0.0) or 1.0
            out.append((rng.standard_normal(values.shape) * scale).astype(values.dtype))
            continue
        shuffled = rng.permutation(values.reshape(-1)).reshape(values.shape)
        out.append((shuffled * rng.uniform(0.5, 1.5, values.shape)).astype(values.dtype))
    return out


class KernelVerifier:
    """Finds and checks the plan of each distinct kernel of one library."""

    def __init__(
        self, library: KernelLibrary, *, seed: int = 0, tolerance: float = TOLERANCE
    ) -> None:
        self.library = library
        self.rng = np.random.default_rng(seed)
        self.tolerance = tolerance

    def probe(self, spec: KernelSpec, inputs: Sequence[Array]) -> list[Array]:
        """Run the real kernel on copies of `inputs`; fresh outputs."""
        arguments = [
            aligned_copy(np.ascontiguousarray(a, dtype=t.dtype))
            for a, t in zip(inputs, spec.inputs, strict=True)
        ]
        outputs = [aligned_empty(t.shape, t.dtype) for t in spec.outputs]
        self.library.call(spec.symbol, [*arguments, *outputs], flatten=spec.flatten)
        return [np.array(o) for o in outputs]

    def verify(
        self, spec: KernelSpec, real_inputs: Sequence[Array], nodes: int
    ) -> tuple[KernelCheck, Plan | None]:
        """The first candidate plan that matches the kernel twice, with its report entry."""
        start = time.perf_counter()
        real = [np.array(a) for a in real_inputs]
        random_inputs = randomised(real, self.rng, [t.is_param for t in spec.inputs])
        try:
            want_real = self.probe(spec, real)
            want_random = self.probe(spec, random_inputs)
        except KernelCallError as exc:
            failed = KernelCheck(
                spec.symbol,
                str(spec.name),
                nodes,
                status="unverified",
                reason=f"the kernel itself fails: {exc}",
                seconds=time.perf_counter() - start,
            )
            return failed, None
        ctx = Context(spec, lambda arrays: self.probe(spec, arrays), real, self.rng)
        tried = 0
        closest: tuple[float, str] | None = None
        try:
            for plan in candidates(ctx):
                tried += 1
                if tried > MAX_CANDIDATES:
                    break
                try:
                    session = OnnxSession(single_kernel_model(spec, plan))
                    first = self._difference(session, real, want_real)
                except (Unsupported, LfvEdgeError, ValueError) as exc:
                    closest = closest or (float("inf"), f"{plan.describe()}: {exc}")
                    continue
                if not first.passes(plan.exact, self.tolerance):
                    if closest is None or first.max_rel < closest[0]:
                        closest = (first.max_rel, plan.describe())
                    continue
                second = self._difference(session, random_inputs, want_random)
                if not second.passes(plan.exact, self.tolerance):
                    if closest is None or second.max_rel < closest[0]:
                        closest = (second.max_rel, plan.describe() + " (on randomised inputs)")
                    continue
                both = Difference.worst([first, second])
                check = KernelCheck(
                    spec.symbol,
                    str(spec.name),
                    nodes,
                    status="verified",
                    plan=plan.describe(),
                    recipe=plan.recipe,
                    exact_required=plan.exact,
                    identical=both.identical,
                    max_abs=both.max_abs,
                    max_rel=both.max_rel,
                    candidates=tried,
                    seconds=time.perf_counter() - start,
                )
                return check, plan
        except (Unsupported, KernelCallError) as exc:
            reason = str(exc)
        else:
            if closest is None:
                reason = "no candidate plan fits the shapes"
            elif closest[0] == float("inf"):
                reason = f"no candidate matched; {closest[1]}"
            else:
                reason = f"no candidate matched; closest: {closest[1]} (off by {closest[0]:.3g} relative)"
        check = KernelCheck(
            spec.symbol,
            str(spec.name),
            nodes,
            status="unverified",
            candidates=tried,
            reason=reason,
            seconds=time.perf_counter() - start,
        )
        return check, None

    @staticmethod
    def _difference(
        session: OnnxSession, inputs: Sequence[Array], want: Sequence[Array]
    ) -> Difference:
        got = session.run({f"in{i}": np.asarray(a) for i, a in enumerate(inputs)})
        return Difference.worst([difference(g, w) for g, w in zip(got, want, strict=True)])
