"""Candidate op plans for one kernel: what its name and shapes allow, in likelihood order.

A `Plan` says how to compute a kernel with plain ONNX ops: the layout of every argument
(layouts.py) and an `emit` function from plain input values to plain output values. The
kernel's name gives the ops (names.py); the shapes give everything the name leaves open —
stride, padding, dilation and groups of a convolution, NCHWc blocking, which inputs are
weights and which is a conv bias, the softmax axis, pooling windows. Where a name allows
several readings (operand order of a subtraction, an upsampling mode, a pooling window),
every reading becomes a candidate; the real kernel decides (verify.py).

Two kinds of plan read the kernel itself:

* data movement (layout transforms, reshapes, slices, concatenation, nearest upsampling,
  padding, and sums of such): an index ramp ("iota") fed through the kernel comes out as the
  gather map, so one ONNX Gather (or Slice/Reshape when the map allows) reproduces it exactly,
  whatever its parameters were;
* constants compiled into the code (`__sub_scalar__`, `__mul_scalar__`, leaky-ReLU slopes,
  batch-norm epsilons): probe values fed through the kernel are fitted, rounded to float32,
  and the neighbouring float32 values are candidates too; such plans must match exactly.

Pure numpy plus the ONNX graph builder; kernels are reached only through the `Probe` callable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lfv_edge.convert.layouts import (
    Blocked,
    BlockedKernel,
    BlockedOperand,
    ChannelVector,
    DensePacked,
    Layout,
    Plain,
    activation_layout,
)
from lfv_edge.convert.names import (
    AMBIGUOUS_OPS,
    BINARY_OPS,
    ELEMENTWISE_OPS,
    MAIN_OPS,
    MOVEMENT_OPS,
    SCALAR_OPS,
    UNARY_OPS,
    KernelName,
)
from lfv_edge.convert.onnx_graph import OnnxGraph, Value

Array = NDArray[np.generic]
Probe = Callable[[Sequence[Array]], Sequence[Array]]
Emit = Callable[[OnnxGraph, list[Value]], list[Value]]

_EXACT_LIMIT = 1 << 24  # float32 holds every integer below this exactly
_COMMUTATIVE = frozenset({"add", "mul", "maximum", "minimum"})
_ONNX_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "maximum": "Max", "minimum": "Min"}  # fmt: skip
_ONNX_UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "sqrt": "Sqrt", "negative": "Neg", "abs": "Abs"}  # fmt: skip
# Ops whose float32 result is correctly rounded: a chain of only these can match bit for bit.
_EXACT_ELEMENTWISE = frozenset(
    {"add", "sub", "mul", "div", "maximum", "minimum", "prelu", "relu", "negative",
     "abs", "identity", "add_scalar", "sub_scalar", "rsub_scalar", "mul_scalar", "div_scalar",
     "rdiv_scalar", "leaky_relu", "clip"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One kernel argument as the graph declares it."""

    shape: tuple[int, ...]
    dtype: str
    is_param: bool = False  # stored in .params (a weight)


@dataclass(frozen=True, slots=True)
class KernelSpec:
    """One distinct kernel: its symbol, the ops its name spells, its arguments."""

    symbol: str
    name: KernelName
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    flatten: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """One way to compute a kernel with ONNX ops."""

    recipe: str
    summary: str
    exact: bool  # must match the kernel bit for bit
    in_layouts: tuple[Layout, ...]
    out_layouts: tuple[Layout, ...]
    emit: Emit = field(repr=False)
    probed: str = ""  # constants read off the kernel, for the report

    def describe(self) -> str:
        """Summary with layouts, e.g. `conv2d 3×3 s2 p1 g1 + relu [NCHW8c → NCHW8c]`."""
        ins = ", ".join(str(layout) for layout in self.in_layouts)
        outs = ", ".join(str(layout) for layout in self.out_layouts)
        extra = f"; {self.probed}" if self.probed else ""
        return f"{self.summary} [{ins} → {outs}]{extra}"


class Unsupported(Exception):  # noqa: N818 - a verdict, not an error
    """No plan can be offered; the message names the reason (it goes into the report)."""


# ---- logical views of raw arrays (the same layout code, folded with numpy) -------------------


def _folded(value: Value) -> Array:
    if value.const is None:  # layouts only reshape and transpose: constants stay constants
        msg = "a layout step did not fold"
        raise Unsupported(msg)
    return value.const


def to_logical(layout: Layout, raw: Array) -> NDArray[np.float64]:
    """A raw kernel buffer as the plain tensor `layout` says it holds."""
    value = layout.unpack(OnnxGraph(), OnnxGraph.const(raw, dtype=str(raw.dtype)))
    return np.asarray(_folded(value), dtype=np.float64)


def to_raw(layout: Layout, logical: Array, raw_shape: tuple[int, ...], dtype: str) -> Array:
    """A plain tensor packed into a kernel buffer of `raw_shape`."""
    value = layout.pack(OnnxGraph(), OnnxGraph.const(logical, dtype=dtype), raw_shape)
    return np.ascontiguousarray(_folded(value), dtype=dtype)


# ---- elementwise ops in ONNX and in numpy -------------------------------------------------------


def _emit_unary(g: OnnxGraph, op: str, value: Value) -> Value:
    if op == "identity":
        return value
    if op == "rsqrt":
        return g.op("Reciprocal", [g.op("Sqrt", [value], value.shape)], value.shape)
    return g.op(_ONNX_UNARY[op], [value], value.shape)


def _emit_binary(g: OnnxGraph, op: str, a: Value, b: Value, shape: tuple[int, ...]) -> Value:
    if op == "prelu":
        return g.op("PRelu", [a, b], shape)
    return g.op(_ONNX_BINARY[op], [a, b], shape)


def _emit_scalar(g: OnnxGraph, op: str, value: Value, constants: Sequence[float]) -> Value:
    shape = value.shape
    c = OnnxGraph.const(np.float32(constants[0]))
    if op == "add_scalar":
        return g.op("Add", [value, c], shape)
    if op == "sub_scalar":
        return g.op("Sub", [value, c], shape)
    if op == "rsub_scalar":
        return g.op("Sub", [c, value], shape)
    if op == "mul_scalar":
        return g.op("Mul", [value, c], shape)
    if op == "div_scalar":
        return g.op("Div", [value, c], shape)
    if op == "rdiv_scalar":
        return g.op("Div", [c, value], shape)
    if op == "leaky_relu":
        return g.op("LeakyRelu", [value], shape, alpha=float(np.float32(constants[0])))
    if op == "clip":
        low = OnnxGraph.const(np.float32(constants[0]))
        high = OnnxGraph.const(np.float32(constants[1]))
        return g.op("Clip", [value, low, high], shape)
    msg = f"no ONNX form for {op}"
    raise Unsupported(msg)


def _np_unary(op: str, x: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(all="ignore"):
        table: dict[str, Callable[[NDArray[np.float64]], NDArray[np.float64]]] = {
            "relu": lambda v: np.maximum(v, 0.0),
            "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
            "tanh": np.tanh,
            "exp": np.exp,
            "sqrt": np.sqrt,
            "rsqrt": lambda v: 1.0 / np.sqrt(v),
            "negative": np.negative,
            "abs": np.abs,
            "identity": lambda v: v,
        }
        return table[op](x)


def _np_scalar(op: str, x: NDArray[np.float64], c: Sequence[float]) -> NDArray[np.float64]:
    with np.errstate(all="ignore"):
        if op == "add_scalar":
            return x + c[0]
        if op == "sub_scalar":
            return x - c[0]
        if op == "rsub_scalar":
            return c[0] - x
        if op == "mul_scalar":
            return x * c[0]
        if op == "div_scalar":
            return x / c[0]
        if op == "rdiv_scalar":
            return c[0] / x
        if op == "leaky_relu":
            return np.where(x >= 0, x, x * c[0])
        if op == "clip":
            return np.clip(x, c[0], c[1])
    msg = f"no numpy form for {op}"
    raise Unsupported(msg)


def _np_binary(op: str, a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(all="ignore"):
        if op == "prelu":
            return np.where(a >= 0, a, a * b)
        table = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                 "maximum": np.maximum, "minimum": np.minimum}  # fmt: skip
        return np.asarray(table[op](a, b), dtype=np.float64)


_SCALAR_ARITY = {"clip": 2}
_SCALAR_START = {"add_scalar": 0.0, "sub_scalar": 0.0, "rsub_scalar": 0.0, "mul_scalar": 1.0,
                 "div_scalar": 1.0, "rdiv_scalar": 1.0, "leaky_relu": 0.1}  # fmt: skip


# ---- elementwise chains (the epilogue of a main op, or a whole kernel) ------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One elementwise step: `op` on the running value, with operand input `operand` (binary)."""

    op: str
    operand: int | None = None  # kernel input index of a binary op's other argument
    swapped: bool = False  # operand op value, for non-commutative ops
    constants: int = 0  # how many compiled-in constants this step has


@dataclass(frozen=True, slots=True)
class Chain:
    """Elementwise steps and where the running value switches layout (layout_transform)."""

    steps: tuple[Step, ...]

    @property
    def num_constants(self) -> int:
        return sum(step.constants for step in self.steps)

    def describe(self, constants: Sequence[float] = ()) -> str:
        parts: list[str] = []
        position = 0
        for step in self.steps:
            if step.constants:
                values = (
                    ", ".join(
                        str(np.float32(c)) for c in constants[position : position + step.constants]
                    )
                    if constants
                    else "?"
                )
                parts.append(f"{step.op}({values})")
                position += step.constants
            elif step.operand is not None:
                parts.append(
                    f"{step.op}({'in' + str(step.operand)}{', swapped' if step.swapped else ''})"
                )
            else:
                parts.append(step.op)
        return " + ".join(parts)

    def emit(
        self,
        g: OnnxGraph,
        value: Value,
        operands: Mapping[int, Value],
        out_shape: tuple[int, ...],
        constants: Sequence[float],
    ) -> Value:
        position = 0
        for step in self.steps:
            if step.operand is not None:
                other = operands[step.operand]
                shape = tuple(np.broadcast_shapes(value.shape, other.shape))
                a, b = (other, value) if step.swapped else (value, other)
                value = _emit_binary(g, step.op, a, b, shape)
            elif step.constants:
                value = _emit_scalar(
                    g, step.op, value, constants[position : position + step.constants]
                )
                position += step.constants
            else:
                value = _emit_unary(g, step.op, value)
        return g.reshape(value, out_shape) if value.shape != out_shape else value

    def evaluate(
        self,
        value: NDArray[np.float64],
        operands: Mapping[int, NDArray[np.float64]],
        constants: Sequence[float],
    ) -> NDArray[np.float64]:
        position = 0
        for step in self.steps:
            if step.operand is not None:
                other = operands[step.operand]
                a, b = (other, value) if step.swapped else (value, other)
                value = _np_binary(step.op, a, b)
            elif step.constants:
                value = _np_scalar(step.op, value, constants[position : position + step.constants])
                position += step.constants
            else:
                value = _np_unary(step.op, value)
        return value

    @property
    def exact(self) -> bool:
        return all(step.op in _EXACT_ELEMENTWISE for step in self.steps)


def _chains(ops: Sequence[str], first_operand: int) -> Iterator[Chain]:
    """Every operand-order reading of an elementwise op sequence (operands in input order)."""
    base: list[Step] = []
    operand = first_operand
    for op in ops:
        if op in BINARY_OPS:
            base.append(Step(op, operand=operand))
            operand += 1
        elif op in SCALAR_OPS:
            base.append(Step(op, constants=_SCALAR_ARITY.get(op, 1)))
        elif op in UNARY_OPS:
            base.append(Step(op))
        elif op != "layout_transform":
            msg = f"{op} is not elementwise"
            raise Unsupported(msg)
    flexible = [
        i
        for i, s in enumerate(base)
        if s.operand is not None and s.op not in _COMMUTATIVE and s.op != "prelu"
    ]
    for flips in itertools.product((False, True), repeat=len(flexible)):
        steps = list(base)
        for index, flip in zip(flexible, flips, strict=True):
            steps[index] = Step(steps[index].op, steps[index].operand, flip)
        yield Chain(tuple(steps))


def _count_operands(ops: Sequence[str]) -> int:
    return sum(1 for op in ops if op in BINARY_OPS)


def _operand_layout(op: str, raw: tuple[int, ...], act_raw: tuple[int, ...]) -> Layout:
    """How an elementwise operand of raw shape `raw` relates to the activation it meets."""
    act = activation_layout(act_raw)
    if raw == act_raw:
        return act
    if isinstance(act, Blocked):
        return BlockedOperand(act_raw)
    if op == "prelu" and len(raw) == 1:
        return ChannelVector(len(act_raw))
    return Plain()


# ---- constants compiled into the code: fitted from probes ---------------------------------------

_PROBE_POINTS = np.array(
    [0.0, 1.0, 2.0, 0.5, 0.25, 3.0, 4.0, 10.0, 100.0, 127.5, 255.0, -1.0, -2.0, -0.5, 1e-3,
     1e-5, 1e-7, 7.0, 0.1, -10.0, 64.0, 1000.0, -0.125, 0.75]
)  # fmt: skip


def _probe_values(size: int, rng: np.random.Generator) -> NDArray[np.float64]:
    extra = max(size - _PROBE_POINTS.size, 0)
    mixed = np.concatenate(
        [_PROBE_POINTS, rng.normal(0, 3, extra // 2), rng.uniform(0, 300, extra - extra // 2)]
    )
    return (
        mixed[:size]
        if size >= _PROBE_POINTS.size
        else _PROBE_POINTS[np.arange(size) % _PROBE_POINTS.size]
    )


def fit_constants(
    model: Callable[[Sequence[float]], NDArray[np.float64]],
    observed: NDArray[np.float64],
    start: Sequence[float],
    *,
    relative: bool = False,
) -> list[float]:
    """Least-squares constants (Levenberg–Marquardt with finite differences, float64).

    `relative` weighs each point by 1/|observed|: a small constant (an epsilon) shows only
    where the value is small. It needs a start near the answer (an absolute fit first).
    """
    c = np.array(start, dtype=np.float64)
    damping = 1e-3
    finite = np.isfinite(observed)
    if relative:
        magnitude = np.abs(np.where(finite, observed, 0.0))
        floor = max(float(np.max(magnitude)) * 1e-12, 1e-30) if magnitude.size else 1e-30
        scale = np.maximum(magnitude, floor)
    else:
        scale = np.ones_like(observed)

    def residual(values: NDArray[np.float64]) -> NDArray[np.float64]:
        predicted = model(list(values))
        with np.errstate(all="ignore"):
            ok = np.isfinite(predicted) & finite
            out = np.where(ok, (predicted - observed) / scale, 0.0)
        return np.asarray(out.reshape(-1), dtype=np.float64)

    current = residual(c)
    for _ in range(200):
        jac = np.empty((current.size, c.size))
        for k in range(c.size):
            step = 1e-6 * max(1.0, abs(c[k])) if not relative else 1e-7 * max(abs(c[k]), 1e-30)
            shifted = c.copy()
            shifted[k] += step
            jac[:, k] = (residual(shifted) - current) / step
        normal = jac.T @ jac
        gradient = jac.T @ current
        try:
            delta = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -gradient)
        except np.linalg.LinAlgError:
            break
        candidate = c + delta
        trial = residual(candidate)
        if np.sum(trial**2) < np.sum(current**2):
            c, current = candidate, trial
            damping = max(damping / 10, 1e-12)
            if np.max(np.abs(delta)) <= 1e-12 * max(1.0, float(np.max(np.abs(c)))):
                break
        else:
            damping *= 10
            if damping > 1e12:
                break
    return [float(v) for v in c]


def _float32_neighbours(values: Sequence[float], spread: int = 2) -> Iterator[tuple[float, ...]]:
    """float32(values), then the combinations of ±1…±spread float32 steps, nearest first."""
    rounded = [np.float32(v) for v in values]
    offsets = sorted(
        itertools.product(range(-spread, spread + 1), repeat=len(values)),
        key=lambda o: sum(abs(x) for x in o),
    )
    for offset in offsets:
        shifted = []
        for value, steps in zip(rounded, offset, strict=True):
            current = value
            direction = np.float32(np.inf if steps > 0 else -np.inf)
            for _ in range(abs(steps)):
                current = np.nextafter(current, direction, dtype=np.float32)
            shifted.append(float(current))
        yield tuple(shifted)


# ---- the recipes ------------------------------------------------------------------------------


@dataclass
class Context:
    """What a recipe may use: the kernel spec, a probe of the real kernel, real inputs, a RNG."""

    spec: KernelSpec
    probe: Probe
    real_inputs: Sequence[Array]
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))


def _float_only(spec: KernelSpec) -> None:
    bad = [t.dtype for t in (*spec.inputs, *spec.outputs) if t.dtype != "float32"]
    if bad:
        msg = f"non-float32 tensors ({', '.join(sorted(set(bad)))})"
        raise Unsupported(msg)


def candidates(ctx: Context) -> Iterator[Plan]:
    """Every plan worth checking for this kernel, most likely first.

    Raises:
        Unsupported: the name spells ops without a converter, or shapes no recipe fits.
    """
    spec = ctx.spec
    name = spec.name
    if name.unknown:
        msg = f"ops without a converter: {', '.join(name.unknown)}"
        raise Unsupported(msg)
    _float_only(spec)
    ops = [op for op in name.ops if op != "identity"] or ["identity"]
    mains = [op for op in ops if op in MAIN_OPS]
    if len(mains) > 1:
        msg = f"more than one main op fused ({', '.join(mains)})"
        raise Unsupported(msg)
    if mains:
        main = mains[0]
        position = ops.index(main)
        if any(op != "layout_transform" for op in ops[:position]):
            msg = f"ops before {main} ({', '.join(ops[:position])})"
            raise Unsupported(msg)
        epilogue = ops[position + 1 :]
        bad = [op for op in epilogue if op not in ELEMENTWISE_OPS]
        if bad:
            msg = f"{', '.join(bad)} after {main}"
            raise Unsupported(msg)
        constants = [op for op in epilogue if op in SCALAR_OPS]
        if constants:
            msg = f"constants compiled into the epilogue of {main} ({', '.join(constants)}) are not read yet"
            raise Unsupported(msg)
        yield from _main_op(ctx, main, epilogue)
        return
    movement = MOVEMENT_OPS | AMBIGUOUS_OPS
    if any(op in movement and op != "layout_transform" for op in ops) or all(
        op in movement for op in ops
    ):
        allowed = movement | {"add", "relu"}
        bad = [op for op in ops if op not in allowed]
        if bad:
            msg = f"{', '.join(bad)} mixed with data movement"
            raise Unsupported(msg)
        resizable = "upsampling" in ops and len(spec.inputs) == 1
        try:
            yield from _gather(ctx, ops)
        except Unsupported:
            if not resizable:  # "upsampling" may be bilinear: not data movement, a resize
                raise
        if resizable:
            yield from _resize(ctx, epilogue=())
        return
    if all(op in ELEMENTWISE_OPS or op == "layout_transform" for op in ops):
        yield from _elementwise(ctx, ops)
        return
    msg = f"unsupported op mix ({' → '.join(ops)})"
    raise Unsupported(msg)


# -- data movement: the gather map read off an iota


def _movement_layouts(spec: KernelSpec) -> tuple[tuple[Layout, ...], tuple[Layout, ...]]:
    return (
        tuple(activation_layout(t.shape) for t in spec.inputs),
        tuple(activation_layout(t.shape) for t in spec.outputs),
    )


def _run_logical(
    ctx: Context, ins: tuple[Layout, ...], outs: tuple[Layout, ...], logical: Sequence[Array]
) -> list[NDArray[np.float64]]:
    spec = ctx.spec
    raw = [
        to_raw(layout, value, t.shape, t.dtype)
        for layout, value, t in zip(ins, logical, spec.inputs, strict=True)
    ]
    results = ctx.probe(raw)
    return [to_logical(layout, r) for layout, r in zip(outs, results, strict=True)]


def _read_map(
    ctx: Context,
    ins: tuple[Layout, ...],
    outs: tuple[Layout, ...],
    zeros: Sequence[Array],
    i: int,
    size: int,
    fill_mask: Sequence[NDArray[np.bool_]],
) -> list[NDArray[np.int64]]:
    """Per output, the index into input `i` each position copies (−1: none)."""
    index = np.arange(size, dtype=np.int64)
    if size + 1 < _EXACT_LIMIT:
        ramps = [index + 1]
    elif size < _EXACT_LIMIT * 4096:
        ramps = [index % 4096 + 1, index // 4096 + 1]
    else:
        msg = f"input {i} has {size} elements, too many to read as a gather map"
        raise Unsupported(msg)
    reads: list[list[NDArray[np.int64]]] = []
    for ramp in ramps:
        feeds = [np.array(z, copy=True) for z in zeros]
        feeds[i] = ramp.astype(np.float32).reshape(feeds[i].shape)
        per_output = []
        for k, result in enumerate(_run_logical(ctx, ins, outs, feeds)):
            values = np.where(fill_mask[k], 0.0, result)
            if not (np.all(values == np.round(values)) and np.all(values >= 0)):
                msg = "the kernel's output is not a copy of its inputs (not data movement)"
                raise Unsupported(msg)
            per_output.append(np.round(values).astype(np.int64))
        reads.append(per_output)
    maps = []
    for k in range(len(fill_mask)):
        if len(ramps) == 1:
            found = reads[0][k] - 1
        else:
            low, high = reads[0][k], reads[1][k]
            if np.any((low == 0) != (high == 0)):
                msg = "the kernel's output is not a copy of its inputs (not data movement)"
                raise Unsupported(msg)
            found = np.where(low > 0, (high - 1) * 4096 + low - 1, -1)
        if np.any(found >= size):
            msg = "the kernel's output is not a copy of its inputs (not data movement)"
            raise Unsupported(msg)
        maps.append(found)
    return maps


def _gather(ctx: Context, ops: Sequence[str]) -> Iterator[Plan]:
    spec = ctx.spec
    ins, outs = _movement_layouts(spec)
    in_shapes = [ins[i].logical_shape(t.shape) for i, t in enumerate(spec.inputs)]
    out_shapes = [outs[k].logical_shape(t.shape) for k, t in enumerate(spec.outputs)]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in in_shapes]
    zeros = [np.zeros(s, dtype=np.float32) for s in in_shapes]
    ones = [np.ones(s, dtype=np.float32) for s in in_shapes]
    at_zero = _run_logical(ctx, ins, outs, zeros)
    fill_mask = [z != 0 for z in at_zero]
    # Each input in turn carries an index ramp (split into two exact float32 halves when
    # large), the others zeros: the output says where each of its values came from.
    contributions = [
        _read_map(ctx, ins, outs, zeros, i, size, fill_mask) for i, size in enumerate(sizes)
    ]
    # all-ones check: every non-fill position must receive exactly its contributions
    at_one = _run_logical(ctx, ins, outs, ones)
    offsets = np.cumsum([0, *sizes])
    plans_maps: list[NDArray[np.int64]] = []
    summed = False
    for k, shape in enumerate(out_shapes):
        count = np.zeros(shape, dtype=np.int64)
        for i in range(len(sizes)):
            count += contributions[i][k] >= 0
        if np.any((count > 1) & ~fill_mask[k]):
            summed = True
        expected = np.where(fill_mask[k], at_zero[k], count.astype(np.float64))
        if not np.array_equal(expected, at_one[k]):
            msg = "the kernel's output is not a copy or sum of its inputs"
            raise Unsupported(msg)
        gathered = np.full(shape, -1, dtype=np.int64)
        for i in range(len(sizes)):
            gathered = np.where(
                contributions[i][k] >= 0, contributions[i][k] + offsets[i], gathered
            )
        plans_maps.append(gathered)
    fills = [z.astype(np.float32) for z in at_zero]
    relu = "relu" in ops
    exact = True

    if not summed:

        def emit(g: OnnxGraph, values: list[Value]) -> list[Value]:
            flat = g.concat_flat(values)
            results = []
            for k, shape in enumerate(out_shapes):
                gathered = plans_maps[k]
                filled = gathered < 0  # positions no input reaches: constant (padding) values
                if filled.any():
                    fill_values = fills[k][filled]
                    extended = g.concat_flat([flat, OnnxGraph.const(fill_values)])
                    index = gathered.copy()
                    index[filled] = flat.size + np.arange(fill_values.size)
                    out = g.flat_gather(extended, index, shape)
                else:
                    out = g.flat_gather(flat, gathered, shape)
                results.append(g.op("Relu", [out], shape) if relu else out)
            return results

        kinds = sorted(set(ops) - {"relu"})
        summary = f"gather ({'/'.join(kinds)}), map read with an index ramp" + (
            " + relu" if relu else ""
        )
        yield Plan("gather", summary, exact, ins, outs, emit)
        return

    def emit_sum(g: OnnxGraph, values: list[Value]) -> list[Value]:
        results = []
        for k, shape in enumerate(out_shapes):
            total: Value | None = None
            for i, value in enumerate(values):
                index = contributions[i][k]
                if not (index >= 0).any():
                    continue
                padded = g.concat_flat([OnnxGraph.const(np.zeros(1, np.float32)), value])
                term = g.flat_gather(padded, np.where(index >= 0, index + 1, 0), shape)
                total = term if total is None else g.op("Add", [total, term], shape)
            if total is None:
                total = OnnxGraph.const(np.zeros(shape, np.float32))
            if fill_mask[k].any():
                total = g.op(
                    "Add",
                    [
                        total,
                        OnnxGraph.const(np.where(fill_mask[k], fills[k], 0).astype(np.float32)),
                    ],
                    shape,
                )
            results.append(g.op("Relu", [total], shape) if relu else total)
        return results

    summary = f"sum of gathers ({'/'.join(sorted(set(ops)))}), maps read with index ramps"
    yield Plan("gather-sum", summary, exact, ins, outs, emit_sum)


# -- elementwise kernels


def _elementwise(ctx: Context, ops: Sequence[str]) -> Iterator[Plan]:
    spec = ctx.spec
    if len(spec.outputs) != 1:
        msg = "an elementwise kernel with several outputs"
        raise Unsupported(msg)
    if _count_operands(ops) + 1 != len(spec.inputs):
        msg = f"{len(spec.inputs)} inputs for {_count_operands(ops)} binary ops"
        raise Unsupported(msg)
    out_raw = spec.outputs[0].shape
    first_raw = spec.inputs[0].shape
    # The running value is in the first input's raw form until a layout_transform, then in
    # the output's; operands are read against the form they meet.
    in_layouts: list[Layout] = [activation_layout(first_raw)]
    switched = False
    operand = 1
    act_raw = first_raw
    for op in ops:
        if op == "layout_transform":
            switched = True
            act_raw = out_raw
        elif op in BINARY_OPS:
            raw = spec.inputs[operand].shape
            if not switched:
                act_raw = (
                    tuple(np.broadcast_shapes(act_raw, raw))
                    if len(raw) <= len(act_raw)
                    else act_raw
                )
            in_layouts.append(_operand_layout(op, raw, act_raw))
            operand += 1
    ins = tuple(in_layouts)
    outs = (activation_layout(out_raw),)
    out_shape = outs[0].logical_shape(out_raw)
    in_shapes = [layout.logical_shape(t.shape) for layout, t in zip(ins, spec.inputs, strict=True)]
    try:
        np.broadcast_shapes(*in_shapes)
    except ValueError as exc:
        msg = f"operand shapes {in_shapes} do not broadcast"
        raise Unsupported(msg) from exc
    for chain in _chains(ops, first_operand=1):
        if chain.num_constants == 0:
            yield _chain_plan(chain, ins, outs, out_shape, (), "")
            continue
        yield from _probed_chain(ctx, chain, ins, outs, out_shape)


def _chain_plan(
    chain: Chain,
    ins: tuple[Layout, ...],
    outs: tuple[Layout, ...],
    out_shape: tuple[int, ...],
    constants: Sequence[float],
    probed: str,
) -> Plan:
    def emit(g: OnnxGraph, values: list[Value]) -> list[Value]:
        return [chain.emit(g, values[0], dict(enumerate(values)), out_shape, constants)]

    return Plan("elementwise", chain.describe(constants), chain.exact, ins, outs, emit, probed)


def _probed_chain(
    ctx: Context,
    chain: Chain,
    ins: tuple[Layout, ...],
    outs: tuple[Layout, ...],
    out_shape: tuple[int, ...],
) -> Iterator[Plan]:
    logical = [
        to_logical(layout, np.asarray(real))
        for layout, real in zip(ins, ctx.real_inputs, strict=True)
    ]
    probe_in = _probe_values(logical[0].size, ctx.rng).reshape(logical[0].shape)
    feeds = [probe_in.astype(np.float32), *[v.astype(np.float32) for v in logical[1:]]]
    observed = _run_logical(ctx, ins, outs, feeds)[0]
    probe64 = feeds[0].astype(np.float64)
    operands = {i: feeds[i].astype(np.float64) for i in range(1, len(feeds))}

    def model(constants: Sequence[float]) -> NDArray[np.float64]:
        return np.broadcast_to(chain.evaluate(probe64, operands, constants), observed.shape)

    start = [_SCALAR_START.get(step.op, 0.0) for step in chain.steps for _ in range(step.constants)]
    if any(step.op == "clip" for step in chain.steps):
        start = [
            float(np.nanmin(observed)) if i % 2 == 0 else float(np.nanmax(observed))
            for i in range(len(start))
        ]
    absolute = fit_constants(model, observed, start)
    refined = fit_constants(model, observed, absolute, relative=True)
    tried: set[tuple[float, ...]] = set()
    for fitted in (refined, absolute):
        for constants in _float32_neighbours(fitted):
            if constants in tried:
                continue
            tried.add(constants)
            probed = (
                "constants "
                + ", ".join(str(np.float32(c)) for c in constants)
                + " read off the kernel"
            )
            plan = _chain_plan(chain, ins, outs, out_shape, constants, probed)
            yield Plan(
                plan.recipe,
                plan.summary,
                True,
                plan.in_layouts,
                plan.out_layouts,
                plan.emit,
                plan.probed,
            )


# -- main ops with an elementwise epilogue


def _epilogue_layouts(spec: KernelSpec, first: int, ops: Sequence[str]) -> list[Layout]:
    act_raw = spec.outputs[0].shape
    layouts: list[Layout] = []
    operand = first
    for op in ops:
        if op in BINARY_OPS:
            layouts.append(_operand_layout(op, spec.inputs[operand].shape, act_raw))
            operand += 1
    return layouts


def _main_op(ctx: Context, main: str, epilogue: Sequence[str]) -> Iterator[Plan]:
    recipes: dict[str, Callable[[Context, Sequence[str]], Iterator[Plan]]] = {
        "conv2d": _conv,
        "dense": _dense,
        "max_pool2d": _pool,
        "avg_pool2d": _pool,
        "global_avg_pool2d": _global_pool,
        "global_max_pool2d": _global_pool,
        "mean": _global_pool,
        "softmax": _softmax,
        "log_softmax": _softmax,
        "upsample_bilinear": _resize,
    }
    yield from recipes[main](ctx, epilogue)


def _epilogue_chains(epilogue: Sequence[str], first: int) -> list[Chain]:
    return list(_chains(epilogue, first_operand=first)) if epilogue else [Chain(())]


# -- convolution


def _geometries(size: int, out: int, k: int) -> list[tuple[int, int, int, int]]:
    """(stride, dilation, pad_before, pad_after) giving `out` from `size`, likeliest first."""
    found = []
    for dilation in (1, 2, 3):
        span = dilation * (k - 1) + 1
        for stride in (1, 2, 3, 4):
            for before in range(span):
                for after in range(span):
                    padded = size + before + after
                    if padded >= span and (padded - span) // stride + 1 == out:
                        found.append((stride, dilation, before, after))

    def rank(geometry: tuple[int, int, int, int]) -> tuple[int, ...]:
        # Likeliest first: no dilation, symmetric, "same" or "valid" padding, stride 1 or 2.
        stride, dilation, before, after = geometry
        same = (k - 1) * dilation // 2
        return (
            dilation != 1,
            before != after,
            before not in (same, 0),
            stride not in (1, 2),
            stride,
            abs(before - same),
        )

    return sorted(found, key=rank)


def _conv(ctx: Context, epilogue: Sequence[str]) -> Iterator[Plan]:
    spec = ctx.spec
    if len(spec.outputs) != 1 or len(spec.inputs) < 2:
        msg = "a convolution needs data and weight inputs and one output"
        raise Unsupported(msg)
    x_raw, w_raw, y_raw = spec.inputs[0].shape, spec.inputs[1].shape, spec.outputs[0].shape
    x_layout = activation_layout(x_raw)
    y_layout = activation_layout(y_raw)
    w_layout: Layout = BlockedKernel() if len(w_raw) == 6 else Plain()
    if len(w_raw) not in (4, 6) or len(x_layout.logical_shape(x_raw)) != 4:
        msg = f"convolution shapes data {list(x_raw)}, weight {list(w_raw)} are not 2-D NCHW(c)"
        raise Unsupported(msg)
    _, c_in, h, w = x_layout.logical_shape(x_raw)
    c_out, c_per_group, kh, kw = w_layout.logical_shape(w_raw)
    y_shape = y_layout.logical_shape(y_raw)
    if len(y_shape) != 4 or y_shape[1] != c_out or c_in % c_per_group:
        msg = f"convolution shapes do not fit: data {list(x_raw)}, weight {list(w_raw)}, output {list(y_raw)}"
        raise Unsupported(msg)
    groups = c_in // c_per_group
    operands = _count_operands(epilogue)
    extra = len(spec.inputs) - 2 - operands
    if extra not in (0, 1):
        msg = f"{len(spec.inputs)} inputs for a convolution with {operands} epilogue operands"
        raise Unsupported(msg)
    has_bias = extra == 1
    if has_bias and int(np.prod(spec.inputs[2].shape)) != c_out:
        msg = f"bias {list(spec.inputs[2].shape)} does not hold {c_out} values"
        raise Unsupported(msg)
    first_operand = 2 + extra
    ins: tuple[Layout, ...] = (x_layout, w_layout)
    if has_bias:
        ins += (ChannelVector(1),)
    ins += tuple(_epilogue_layouts(spec, first_operand, epilogue))
    rows = _geometries(h, y_shape[2], kh)
    cols = _geometries(w, y_shape[3], kw)
    pairs = sorted(
        itertools.product(rows, cols),
        key=lambda p: (
            p[0][0] != p[1][0] or p[0][1] != p[1][1],
            p[0][2] != p[1][2] or p[0][3] != p[1][3],
        ),
    )
    for chain in _epilogue_chains(epilogue, first_operand):
        for (sh, dh, pt, pb), (sw, dw, pl, pr) in pairs:

            def emit(
                g: OnnxGraph,
                values: list[Value],
                sh: int = sh, sw: int = sw, dh: int = dh, dw: int = dw,
                pads: tuple[int, ...] = (pt, pl, pb, pr), chain: Chain = chain,
            ) -> list[Value]:  # fmt: skip
                inputs = [values[0], values[1]] + ([values[2]] if has_bias else [])
                conv = g.op(
                    "Conv", inputs, y_shape, kernel_shape=[kh, kw], strides=[sh, sw],
                    dilations=[dh, dw], pads=list(pads), group=groups,
                )  # fmt: skip
                operands = {i: values[i] for i in range(first_operand, len(values))}
                return [chain.emit(g, conv, operands, y_shape, ()) if chain.steps else conv]

            pads = f"p{pt}" if len({pt, pb, pl, pr}) == 1 else f"p{pt},{pl},{pb},{pr}"
            stride = f"s{sh}" if sh == sw else f"s{sh}×{sw}"
            dil = "" if dh == dw == 1 else f" d{dh}×{dw}"
            summary = f"conv2d {kh}×{kw} {stride} {pads}{dil} g{groups}" + (
                " +bias" if has_bias else ""
            )
            if chain.steps:
                summary += " + " + chain.describe()
            yield Plan("conv2d", summary, False, ins, (y_layout,), emit)


# -- dense


def _dense(ctx: Context, epilogue: Sequence[str]) -> Iterator[Plan]:
    spec = ctx.spec
    x_raw, w_raw, y_raw = spec.inputs[0].shape, spec.inputs[1].shape, spec.outputs[0].shape
    w_layout: Layout = DensePacked() if len(w_raw) == 3 else Plain()
    m, k = w_layout.logical_shape(w_raw)
    if len(x_raw) != 2 or x_raw[1] != k or tuple(y_raw) != (x_raw[0], m):
        msg = f"dense shapes do not fit: data {list(x_raw)}, weight {list(w_raw)}, output {list(y_raw)}"
        raise Unsupported(msg)
    operands = _count_operands(epilogue)
    extra = len(spec.inputs) - 2 - operands
    if extra not in (0, 1):
        msg = f"{len(spec.inputs)} inputs for a dense layer with {operands} epilogue operands"
        raise Unsupported(msg)
    has_bias = extra == 1
    first_operand = 2 + extra
    ins: tuple[Layout, ...] = (Plain(), w_layout) + ((ChannelVector(1),) if has_bias else ())
    ins += tuple(_epilogue_layouts(spec, first_operand, epilogue))
    for chain in _epilogue_chains(epilogue, first_operand):

        def emit(g: OnnxGraph, values: list[Value], chain: Chain = chain) -> list[Value]:
            inputs = [values[0], values[1]] + ([values[2]] if has_bias else [])
            out = g.op("Gemm", inputs, y_raw, transB=1)
            operands = {i: values[i] for i in range(first_operand, len(values))}
            return [chain.emit(g, out, operands, y_raw, ()) if chain.steps else out]

        summary = (
            f"dense {k}→{m}"
            + (" +bias" if has_bias else "")
            + (f" + {chain.describe()}" if chain.steps else "")
        )
        yield Plan("dense", summary, False, ins, (Plain(),), emit)


# -- pooling


def _pool_geometries(size: int, out: int) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, pad_before, pad_after, ceil) giving `out`, likeliest first."""
    found = []
    for kernel in range(1, min(size, 8) + 1):
        for stride in range(1, kernel + 1):
            for before in range(kernel):
                for after in range(kernel):
                    for ceil in (0, 1):
                        span = size + before + after - kernel
                        if span < 0:
                            continue
                        count = (-(-span // stride) if ceil else span // stride) + 1
                        if ceil and (count - 1) * stride >= size + before:
                            continue  # ONNX drops a window that starts in the padding
                        if count == out:
                            found.append((kernel, stride, before, after, ceil))
    favourite = [(2, 2), (3, 2), (3, 1), (2, 1), (5, 1), (3, 3), (4, 4)]

    def rank(geometry: tuple[int, int, int, int, int]) -> tuple[int, ...]:
        kernel, stride, before, after, ceil = geometry
        pair = (kernel, stride)
        return (
            ceil,
            before != after,
            favourite.index(pair) if pair in favourite else len(favourite),
            abs(before - (kernel - 1) // 2),
            kernel,
        )

    return sorted(found, key=rank)[:24]


def _pool(ctx: Context, epilogue: Sequence[str]) -> Iterator[Plan]:
    spec = ctx.spec
    main = "max_pool2d" if "max_pool2d" in spec.name.ops else "avg_pool2d"
    if len(spec.inputs) != 1 + _count_operands(epilogue) or len(spec.outputs) != 1:
        msg = "pooling with unexpected inputs"
        raise Unsupported(msg)
    x_raw, y_raw = spec.inputs[0].shape, spec.outputs[0].shape
    x_layout, y_layout = activation_layout(x_raw), activation_layout(y_raw)
    n, c, h, w = x_layout.logical_shape(x_raw)
    y_shape = y_layout.logical_shape(y_raw)
    if len(y_shape) != 4 or y_shape[:2] != (n, c):
        msg = f"pooling shapes do not fit: {list(x_raw)} → {list(y_raw)}"
        raise Unsupported(msg)
    ins = (x_layout, *_epilogue_layouts(spec, 1, epilogue))
    rows, cols = _pool_geometries(h, y_shape[2]), _pool_geometries(w, y_shape[3])
    pairs = sorted(
        itertools.product(rows, cols), key=lambda p: (p[0][:2] != p[1][:2], p[0][4] != p[1][4])
    )[:40]
    includes = (1, 0) if main == "avg_pool2d" else (None,)
    for chain in _epilogue_chains(epilogue, 1):
        for ((kh, sh, pt, pb, ch), (kw, sw, pl, pr, cw)), include in itertools.product(
            pairs, includes
        ):
            if ch != cw:
                continue
            padded = bool(pt or pb or pl or pr)
            if include == 0 and not padded:
                continue

            def emit(
                g: OnnxGraph, values: list[Value],
                kernel: tuple[int, int] = (kh, kw), strides: tuple[int, int] = (sh, sw),
                pads: tuple[int, ...] = (pt, pl, pb, pr), ceil: int = ch,
                include: int | None = include, chain: Chain = chain,
            ) -> list[Value]:  # fmt: skip
                attrs: dict[str, Any] = {
                    "kernel_shape": list(kernel),
                    "strides": list(strides),
                    "pads": list(pads),
                    "ceil_mode": ceil,
                }
                if main == "max_pool2d":
                    out = g.op("MaxPool", [values[0]], y_shape, **attrs)
                else:
                    out = g.op(
                        "AveragePool", [values[0]], y_shape, count_include_pad=include or 0, **attrs
                    )
                operands = {i: values[i] for i in range(1, len(values))}
                return [chain.emit(g, out, operands, y_shape, ()) if chain.steps else out]

            summary = f"{main} {kh}×{kw} s{sh}×{sw} p{pt},{pl},{pb},{pr}" + (" ceil" if ch else "")
            if include is not None and padded:
                summary += " count_include_pad" if include else " exclude_pad"
            if chain.steps:
                summary += f" + {chain.describe()}"
            yield Plan(
                "pool", summary, main == "max_pool2d" and not chain.steps, ins, (y_layout,), emit
            )


def _global_pool(ctx: Context, epilogue: Sequence[str]) -> Iterator[Plan]:
    spec = ctx.spec
    ops = spec.name.ops
    if len(spec.inputs) != 1 + _count_operands(epilogue) or len(spec.outputs) != 1:
        msg = "global pooling with unexpected inputs"
        raise Unsupported(msg)
    x_raw, y_raw = spec.inputs[0].shape, spec.outputs[0].shape
    x_layout = activation_layout(x_raw)
    y_layout = activation_layout(y_raw)
    n, c, _, _ = x_layout.logical_shape(x_raw)
    y_shape = y_layout.logical_shape(y_raw)
    if int(np.prod(y_shape)) != n * c:
        msg = f"{list(x_raw)} → {list(y_raw)} is not a pooling to one value per channel"
        raise Unsupported(msg)
    op_type = "GlobalMaxPool" if "global_max_pool2d" in ops else "GlobalAveragePool"
    ins = (x_layout, *_epilogue_layouts(spec, 1, epilogue))
    for chain in _epilogue_chains(epilogue, 1):

        def emit(g: OnnxGraph, values: list[Value], chain: Chain = chain) -> list[Value]:
            pooled = g.reshape(g.op(op_type, [values[0]], (n, c, 1, 1)), y_shape)
            operands = {i: values[i] for i in range(1, len(values))}
            return [chain.emit(g, pooled, operands, y_shape, ()) if chain.steps else pooled]

        yield Plan(
            "global-pool",
            f"{op_type} → {list(y_shape)}" + (f" + {chain.describe()}" if chain.steps else ""),
            op_type == "GlobalMaxPool",
            ins,
            (y_layout,),
            emit,
        )


# -- softmax


def _softmax(ctx: Context, epilogue: Sequence[str]) -> Iterator[Plan]:
    spec = ctx.spec
    if epilogue or len(spec.inputs) != 1 or len(spec.outputs) != 1:
        msg = "softmax fused with other ops"
        raise Unsupported(msg)
    x_raw, y_raw = spec.inputs[0].shape, spec.outputs[0].shape
    x_layout, y_layout = activation_layout(x_raw), activation_layout(y_raw)
    shape = x_layout.logical_shape(x_raw)
    if y_layout.logical_shape(y_raw) != shape:
        msg = "softmax changes the shape"
        raise Unsupported(msg)
    op_type = "LogSoftmax" if "log_softmax" in spec.name.ops else "Softmax"
    axes = [a for a in range(len(shape)) if shape[a] > 1]
    order = sorted(axes, key=lambda a: (a != 1, a != len(shape) - 1, a))
    for axis in order:

        def emit(g: OnnxGraph, values: list[Value], axis: int = axis) -> list[Value]:
            return [g.op(op_type, [values[0]], shape, axis=axis)]

        yield Plan(
            "softmax",
            f"{op_type.lower()} over axis {axis} of {list(shape)}",
            False,
            (x_layout,),
            (y_layout,),
            emit,
        )


# -- resizing


def _resize(ctx: Context, epilogue: Sequence[str]) -> Iterator[Plan]:
    spec = ctx.spec
    if epilogue or len(spec.inputs) != 1 or len(spec.outputs) != 1:
        msg = "resize fused with other ops"
        raise Unsupported(msg)
    x_raw, y_raw = spec.inputs[0].shape, spec.outputs[0].shape
    x_layout, y_layout = activation_layout(x_raw), activation_layout(y_raw)
    x_shape, y_shape = x_layout.logical_shape(x_raw), y_layout.logical_shape(y_raw)
    if len(x_shape) != 4 or len(y_shape) != 4 or x_shape[:2] != y_shape[:2]:
        msg = f"resize shapes do not fit: {list(x_raw)} → {list(y_raw)}"
        raise Unsupported(msg)
    modes = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
    for mode in modes:

        def emit(g: OnnxGraph, values: list[Value], mode: str = mode) -> list[Value]:
            sizes = g.shape_const(y_shape)
            return [
                g.op(
                    "Resize",
                    [values[0], None, None, sizes],
                    y_shape,
                    mode="linear",
                    coordinate_transformation_mode=mode,
                )
            ]

        yield Plan(
            "resize",
            f"bilinear resize {x_shape[2]}×{x_shape[3]} → {y_shape[2]}×{y_shape[3]} ({mode})",
            False,
            (x_layout,),
            (y_layout,),
            emit,
        )
