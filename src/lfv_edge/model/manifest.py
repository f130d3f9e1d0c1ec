"""`manifest.json` of a Lookout for Vision edge package → a typed, checked `Manifest`.

The manifest is the single source of truth for pre- and post-processing (docs/model-packages.md
§5). Every error names the JSON path and what was expected, e.g.
`manifest.json: model_graph.stages[0].threshold: expected a number, got "0.5"`.

Keys we do not know are kept (LFV's schema is not fully public) and reported by `inspect`;
features we know but do not implement (other graph/stage types, polar transform, other
runtimes) are refused with `UnsupportedModelError` naming the type. Pure: no dlr, no cv2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from lfv_edge.errors import ModelPackageError, UnsupportedModelError

SUPPORTED_GRAPH_TYPE = "single_stage_model_graph"
KNOWN_GRAPH_TYPES = (
    "single_stage_model_graph",
    "two_stage_model_graph",
    "two_stage_model_graph_bbox",
)
SUPPORTED_STAGE_TYPE = "mochi"
# Stage codenames from AWS's open-source LFV processing code (docs/model-packages.md §5).
KNOWN_STAGE_TYPES = {
    "mochi": "supervised multi-head model",
    "dango": "supervised multi-head bbox model",
    "mooncake": "unsupervised contextual SPADE model",
    "cheesecake": "distance-based classifier",
    "tiramisu": "hypercolumn FID model",
    "chocolatemousse": "image statistics model",
    "jalebi": "pretrained-feature Gaussian model",
    "baklava": "SVDD model",
    "torrone": "kNN feedback model",
}
# OpenCV interpolation flags by name; a manifest may carry the flag or its name.
INTERPOLATION_CODES = {
    "INTER_NEAREST": 0,
    "INTER_LINEAR": 1,
    "INTER_CUBIC": 2,
    "INTER_AREA": 3,
    "INTER_LANCZOS4": 4,
    "INTER_LINEAR_EXACT": 5,
    "INTER_NEAREST_EXACT": 6,
}
INTER_AREA = INTERPOLATION_CODES["INTER_AREA"]
ClassificationLogic = Literal["cls_head", "seg_head", "cls_and_seg", "cls_or_seg"]
_CLASSIFICATION_LOGICS = ("cls_head", "seg_head", "cls_and_seg", "cls_or_seg")
_KNOWN_STAGE_KEYS = frozenset(
    {
        "type", "threshold", "image_width", "image_height", "input_shape", "normalize",
        "image_range_scale", "class_normal_ids", "seg_normal_ids", "classification_head_enabled",
        "segmentation_head_enabled", "interpolation", "raw_image_shape", "classification_logic",
        "seg_recall_bias", "calibrated", "max_val_score", "calibrator_scaling", "calibrator_shift",
        "transform_preprocessing", "OOD_by_transform_preprocessor", "image_level_classes",
        "pixel_level_classes", "bbox_level_classes",
    }
)  # fmt: skip
_KNOWN_TOP_KEYS = frozenset({"model_graph", "dataset", "compilable_models", "runtime"})
_KNOWN_GRAPH_KEYS = frozenset(
    {
        "model_graph_type",
        "stages",
        "image_level_classes",
        "pixel_level_classes",
        "bbox_level_classes",
    }
)


@dataclass(frozen=True, slots=True)
class ClassList:
    """Class names and which indices are normal (`image_level_classes`, `pixel_level_classes`)."""

    names: tuple[str, ...] = ()
    normal_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Calibration:
    """Sigmoid score calibration: p = 1 / (1 + exp(scaling · s' + shift)), s' = s / max if max > 1."""

    max_val_score: float
    scaling: float
    shift: float


@dataclass(frozen=True, slots=True)
class StageConfig:
    """The `mochi` stage: everything pre- and post-processing need."""

    type: str
    threshold: float
    image_width: int
    image_height: int
    normalize: bool
    image_range_scale: bool
    classification_head: bool
    segmentation_head: bool
    class_normal_ids: tuple[int, ...]
    # None when the manifest has no seg_normal_ids: LFV then skips classification_logic.
    seg_normal_ids: tuple[int, ...] | None
    interpolation: int = INTER_AREA
    raw_image_shape: tuple[int, int] | None = None  # (height, width) the mask is resized to
    classification_logic: ClassificationLogic | None = None
    seg_recall_bias: float | None = None
    calibration: Calibration | None = None

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The model's data input, NCHW."""
        return (1, 3, self.image_height, self.image_width)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A checked `manifest.json`."""

    graph_type: str
    stage: StageConfig
    image_classes: ClassList
    pixel_classes: ClassList
    runtime: str = "dlr"
    unknown_keys: tuple[str, ...] = field(default=())
    raw: Mapping[str, object] = field(default_factory=dict, repr=False, compare=False)


class _Path:
    """A JSON path for error messages: `model_graph.stages[0].threshold`."""

    def __init__(self, text: str = "") -> None:
        self.text = text

    def key(self, name: str) -> _Path:
        return _Path(f"{self.text}.{name}" if self.text else name)

    def index(self, position: int) -> _Path:
        return _Path(f"{self.text}[{position}]")

    def fail(self, expected: str, value: object) -> ModelPackageError:
        shown = json.dumps(value)[:80] if _jsonable(value) else repr(value)[:80]
        return ModelPackageError(f"manifest.json: {self.text}: expected {expected}, got {shown}")


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _object(value: object, path: _Path) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise path.fail("an object", value)
    return value


def _bool(value: object, path: _Path) -> bool:
    if not isinstance(value, bool):
        raise path.fail("true or false", value)
    return value


def _number(value: object, path: _Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise path.fail("a finite number", value)
    return float(value)


def _positive_int(value: object, path: _Path, *, maximum: int = 1 << 16) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise path.fail(f"an integer between 1 and {maximum}", value)
    return value


def _int_list(value: object, path: _Path) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise path.fail("a list of integers", value)
    for position, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise path.index(position).fail("a non-negative integer", item)
    return tuple(value)


def _class_list(value: object, path: _Path) -> ClassList:
    body = _object(value, path)
    names_raw = body.get("names", [])
    if not isinstance(names_raw, list):
        raise path.key("names").fail("a list of strings", names_raw)
    for position, name in enumerate(names_raw):
        if not isinstance(name, str) or not name:
            raise path.key("names").index(position).fail("a non-empty string", name)
    normal_ids = _int_list(body.get("normal_ids", []), path.key("normal_ids"))
    if names_raw:
        for position, class_id in enumerate(normal_ids):
            if class_id >= len(names_raw):
                raise (
                    path.key("normal_ids")
                    .index(position)
                    .fail(f"an index into names (0..{len(names_raw) - 1})", class_id)
                )
    return ClassList(names=tuple(names_raw), normal_ids=normal_ids)


def parse_manifest(raw: object) -> Manifest:
    """Check a decoded `manifest.json` and return the typed `Manifest`.

    Raises:
        ModelPackageError: a key is missing or of the wrong type (names the JSON path).
        UnsupportedModelError: a graph type, stage type, runtime or feature we do not run.
    """
    top = _object(raw, _Path("(top level)"))
    root = _Path()
    unknown = [key for key in top if key not in _KNOWN_TOP_KEYS]
    runtime = top.get("runtime", "dlr")
    if runtime != "dlr":
        msg = f"manifest.json: runtime {runtime!r} is not supported (lfv-edge runs 'dlr' packages)"
        raise UnsupportedModelError(msg)
    if "model_graph" not in top:
        msg = "manifest.json: model_graph: required key is missing"
        raise ModelPackageError(msg)
    graph_path = root.key("model_graph")
    graph = _object(top["model_graph"], graph_path)
    unknown += [f"model_graph.{key}" for key in graph if key not in _KNOWN_GRAPH_KEYS]
    graph_type = graph.get("model_graph_type")
    if not isinstance(graph_type, str):
        raise graph_path.key("model_graph_type").fail("a string", graph_type)
    if graph_type != SUPPORTED_GRAPH_TYPE:
        known = "a known LFV graph type" if graph_type in KNOWN_GRAPH_TYPES else "an unknown type"
        msg = (
            f"manifest.json: model_graph.model_graph_type {graph_type!r} ({known}) is not "
            f"supported; lfv-edge runs {SUPPORTED_GRAPH_TYPE!r}"
        )
        raise UnsupportedModelError(msg)
    stages = graph.get("stages")
    stages_path = graph_path.key("stages")
    if not isinstance(stages, list) or not stages:
        raise stages_path.fail("a non-empty list of stages", stages)
    if len(stages) != 1:
        raise stages_path.fail("exactly one stage for a single_stage_model_graph", stages)
    image_classes = (
        _class_list(graph["image_level_classes"], graph_path.key("image_level_classes"))
        if "image_level_classes" in graph
        else ClassList()
    )
    pixel_classes = (
        _class_list(graph["pixel_level_classes"], graph_path.key("pixel_level_classes"))
        if "pixel_level_classes" in graph
        else ClassList()
    )
    dataset = top.get("dataset", {})
    dataset_body = _object(dataset, root.key("dataset"))
    stage_path = stages_path.index(0)
    stage_body = _object(stages[0], stage_path)
    unknown += [
        f"model_graph.stages[0].{key}" for key in stage_body if key not in _KNOWN_STAGE_KEYS
    ]
    stage = _parse_stage(stage_body, stage_path, dataset_body, pixel_classes)
    return Manifest(
        graph_type=graph_type,
        stage=stage,
        image_classes=image_classes,
        pixel_classes=pixel_classes,
        runtime="dlr",
        unknown_keys=tuple(unknown),
        raw=top,
    )


def _required(body: Mapping[str, object], key: str, path: _Path) -> object:
    if key not in body:
        msg = f"manifest.json: {path.key(key).text}: required key is missing"
        raise ModelPackageError(msg)
    return body[key]


def _parse_stage(
    body: Mapping[str, object],
    path: _Path,
    dataset: Mapping[str, object],
    pixel_classes: ClassList,
) -> StageConfig:
    stage_type = _required(body, "type", path)
    if not isinstance(stage_type, str):
        raise path.key("type").fail("a string", stage_type)
    if stage_type != SUPPORTED_STAGE_TYPE:
        what = KNOWN_STAGE_TYPES.get(stage_type, "an unknown stage type")
        msg = (
            f"manifest.json: {path.key('type').text} {stage_type!r} ({what}) is not supported; "
            f"lfv-edge runs {SUPPORTED_STAGE_TYPE!r} stages"
        )
        raise UnsupportedModelError(msg)
    if body.get("transform_preprocessing"):
        msg = (
            f"manifest.json: {path.key('transform_preprocessing').text}: the polar-transform "
            "pre-processing is not supported"
        )
        raise UnsupportedModelError(msg)
    threshold = _number(_required(body, "threshold", path), path.key("threshold"))
    sizes: dict[str, int] = {}
    for key in ("image_width", "image_height"):
        if key in body:
            sizes[key] = _positive_int(body[key], path.key(key))
        elif key in dataset:
            sizes[key] = _positive_int(dataset[key], _Path("dataset").key(key))
        else:
            msg = f"manifest.json: {path.key(key).text}: required key is missing (and no dataset.{key})"
            raise ModelPackageError(msg)
    if "input_shape" in body:
        expected = [1, 3, sizes["image_height"], sizes["image_width"]]
        if body["input_shape"] != expected:
            raise path.key("input_shape").fail(
                f"{expected} (1, 3, image_height, image_width)", body["input_shape"]
            )
    normalize = _bool(_required(body, "normalize", path), path.key("normalize"))
    range_scale = _bool(_required(body, "image_range_scale", path), path.key("image_range_scale"))
    cls_head = _bool(
        _required(body, "classification_head_enabled", path),
        path.key("classification_head_enabled"),
    )
    seg_head = _bool(
        _required(body, "segmentation_head_enabled", path), path.key("segmentation_head_enabled")
    )
    if not cls_head and not seg_head:
        raise path.key("classification_head_enabled").fail(
            "at least one of classification_head_enabled / segmentation_head_enabled true", False
        )
    class_normal_ids = (
        _int_list(_required(body, "class_normal_ids", path), path.key("class_normal_ids"))
        if cls_head
        else _int_list(body.get("class_normal_ids", []), path.key("class_normal_ids"))
    )
    seg_normal_ids = (
        _int_list(body["seg_normal_ids"], path.key("seg_normal_ids"))
        if body.get("seg_normal_ids") is not None
        else None
    )
    if seg_head and not pixel_classes.names:
        msg = (
            "manifest.json: model_graph.pixel_level_classes.names: required when "
            "segmentation_head_enabled is true (one name per mask channel, background first)"
        )
        raise ModelPackageError(msg)
    return StageConfig(
        type=stage_type,
        threshold=threshold,
        image_width=sizes["image_width"],
        image_height=sizes["image_height"],
        normalize=normalize,
        image_range_scale=range_scale,
        classification_head=cls_head,
        segmentation_head=seg_head,
        class_normal_ids=class_normal_ids,
        seg_normal_ids=seg_normal_ids,
        interpolation=_interpolation(body.get("interpolation"), path.key("interpolation")),
        raw_image_shape=_raw_image_shape(body.get("raw_image_shape"), path.key("raw_image_shape")),
        classification_logic=_classification_logic(body, path),
        seg_recall_bias=(
            _number(body["seg_recall_bias"], path.key("seg_recall_bias"))
            if body.get("seg_recall_bias") is not None
            else None
        ),
        calibration=_calibration(body, path),
    )


def _interpolation(value: object, path: _Path) -> int:
    if value is None:
        return INTER_AREA
    if isinstance(value, str):
        code = INTERPOLATION_CODES.get(
            value.upper() if value.upper().startswith("INTER_") else f"INTER_{value.upper()}"
        )
        if code is None:
            raise path.fail(f"one of {sorted(INTERPOLATION_CODES)}", value)
        return code
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value not in INTERPOLATION_CODES.values()
    ):
        raise path.fail("an OpenCV interpolation flag (0–6) or its name", value)
    return value


def _raw_image_shape(value: object, path: _Path) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) not in {2, 3}:
        raise path.fail("[height, width] or [height, width, channels]", value)
    height = _positive_int(value[0], path.index(0), maximum=1 << 15)
    width = _positive_int(value[1], path.index(1), maximum=1 << 15)
    return (height, width)


def _classification_logic(body: Mapping[str, object], path: _Path) -> ClassificationLogic | None:
    value = body.get("classification_logic")
    if value is None:
        return None
    if value not in _CLASSIFICATION_LOGICS:
        raise path.key("classification_logic").fail(f"one of {list(_CLASSIFICATION_LOGICS)}", value)
    logic: ClassificationLogic = value  # type: ignore[assignment]
    return logic


def _calibration(body: Mapping[str, object], path: _Path) -> Calibration | None:
    if not body.get("calibrated", False):
        return None
    _bool(body["calibrated"], path.key("calibrated"))
    return Calibration(
        max_val_score=_number(_required(body, "max_val_score", path), path.key("max_val_score")),
        scaling=_number(
            _required(body, "calibrator_scaling", path), path.key("calibrator_scaling")
        ),
        shift=_number(_required(body, "calibrator_shift", path), path.key("calibrator_shift")),
    )


def decode_manifest(data: bytes) -> Manifest:
    """Parse `manifest.json` bytes.

    Raises:
        ModelPackageError: not JSON (with line and column) or invalid content.
    """
    try:
        raw = json.loads(data)
    except UnicodeDecodeError as exc:
        msg = "manifest.json is not UTF-8 text"
        raise ModelPackageError(msg) from exc
    except json.JSONDecodeError as exc:
        msg = f"manifest.json is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ModelPackageError(msg) from exc
    except RecursionError as exc:  # json.loads gives up on deep nesting with RecursionError
        msg = "manifest.json is nested too deeply"
        raise ModelPackageError(msg) from exc
    return parse_manifest(raw)
