"""LFV post-processing, exactly: model outputs → `Verdict` → LFV's `DetectAnomalyResult` JSON.

The rules (docs/model-packages.md §7–§8, from AWS's own LFV processing code):

* score — classification head: sum of the probabilities of the classes not in
  `class_normal_ids` (float32, as LFV sums); optional sigmoid calibration. Segmentation head
  only: the mean of the whole mask output.
* verdict — normal iff `round(score, 4) < round(threshold, 4)` (equality is anomalous);
  confidence = clip(score) if anomalous else 1 − clip(score), clip to [0, 1].
* mask — optional `seg_recall_bias` added to the non-normal channels, argmax over channels,
  nearest-neighbour resize to `raw_image_shape` (else to the input image's size).
* `classification_logic` (when the manifest has it and `seg_normal_ids`, and score ≤ 1) lets
  the mask override the label: `seg_head`, `cls_and_seg`, `cls_or_seg`; `cls_head` changes nothing.
* anomalies — `background` first, then every class present in the mask in index order, with
  its area as a 0–1 fraction and its colour: the user's label → colour map, else the palette
  of AWS's LFV code (index 0 `#FFFFFF`, 1 `#23A436`, …). LFV's own colours came from the
  training data set and are not in the package, hence the map.

Pure numpy, plus imaging.py for the mask resize and PNG.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import ConfigError, InferenceError
from lfv_edge.inspection.imaging import encode_png, resize_nearest
from lfv_edge.model.manifest import Manifest
from lfv_edge.model.package import OutputLayout

# The fixed 104-entry mask palette of AWS's LFV processing code (DDA lyra_anomalies_mask_utils).
DEFAULT_PALETTE = [
    "#FFFFFF",
    "#23A436",
    "#14A3B3",
    "#F76902",
    "#9380FF",
    "#BD10E0",
    "#467CE6",
    "#A09308",
    "#0094BD",
    "#CC7700",
    "#5856D6",
    "#D61CB0",
    "#007AFF",
    "#8A6E00",
    "#2CA02C",
    "#3182BD",
    "#E6550D",
    "#8269FF",
    "#FF2EDC",
    "#2532EA",
    "#7C9F1E",
    "#54A611",
    "#18A599",
    "#F6673C",
    "#A358FF",
    "#FF4367",
    "#6D80FC",
    "#98981B",
    "#417505",
    "#0098C2",
    "#AD494A",
    "#6C73FF",
    "#FC3BDC",
    "#433BF7",
    "#9F961E",
    "#2CAA2C",
    "#18A0AF",
    "#E67300",
    "#8474D4",
    "#DE737A",
    "#9467BD",
    "#637939",
    "#959509",
    "#2C93A5",
    "#843C39",
    "#3230C5",
    "#DE5EB8",
    "#5254A3",
    "#758844",
    "#31A354",
    "#1495F3",
    "#E76F71",
    "#262494",
    "#EA629D",
    "#6B6ECF",
    "#7B9631",
    "#3E9C2B",
    "#479CCD",
    "#BE4E16",
    "#5D5BD7",
    "#7B4173",
    "#888BD7",
    "#7A8D34",
    "#46A448",
    "#409AC4",
    "#AC764F",
    "#7E40CB",
    "#A55194",
    "#3396FF",
    "#8C6D31",
    "#3F9537",
    "#1F77B4",
    "#D62728",
    "#FB46CE",
    "#CE6DBD",
    "#756BB1",
    "#AD9134",
    "#4CA63A",
    "#00A0CC",
    "#EB6D00",
    "#CF6390",
    "#CF72C1",
    "#847FB8",
    "#B48518",
    "#859B3B",
    "#00708F",
    "#B8847F",
    "#FF4F4D",
    "#393B79",
    "#B68A2B",
    "#7C7E02",
    "#0090B8",
    "#A65708",
    "#5A8ED6",
    "#D6616B",
    "#8E2C9D",
    "#787826",
    "#548D16",
    "#006D8B",
    "#EB7005",
    "#3096D1",
    "#8C564B",
    "#721877",
    "#858802",
]
_HEX_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")


def is_hex_color(value: object) -> bool:
    """True for a `#RRGGBB` string (either case), the only colour form LFV writes."""
    return isinstance(value, str) and _HEX_COLOR.match(value) is not None


@dataclass(frozen=True, slots=True)
class PixelAnomaly:
    """Area (0–1 fraction of the image) and display colour of one mask class."""

    total_percentage_area: float
    color: str


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One entry of LFV's `Anomalies` list."""

    name: str
    pixel_anomaly: PixelAnomaly


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result for one image, in LFV's terms."""

    is_anomalous: bool  # a JSON boolean on the wire, never the string "True"
    confidence: float
    score: float  # the raw anomaly score the threshold was applied to
    threshold: float
    anomalies: tuple[Anomaly, ...] = ()
    mask: NDArray[np.uint8] | None = None  # label image, H×W, index into pixel class names
    mask_colors: tuple[str, ...] = ()  # colour of each label index, "#RRGGBB"

    def mask_rgb(self) -> NDArray[np.uint8] | None:
        """The mask as an H×W×3 RGB image in the verdict's colours."""
        if self.mask is None:
            return None
        lut = np.array([hex_to_rgb(color) for color in self.mask_colors], dtype=np.uint8)
        # np.take is ~2.5× faster than fancy indexing (lut[mask]) for a 1000×1000 mask.
        rgb: NDArray[np.uint8] = np.take(lut, self.mask, axis=0)
        return rgb

    def to_lfv(self, *, include_mask: bool = True) -> dict[str, object]:
        """LFV's cloud `DetectAnomalyResult` (masks as base64 PNG, as LFV returns them)."""
        result: dict[str, object] = {
            "Source": {"Type": "direct"},
            "IsAnomalous": self.is_anomalous,
            "Confidence": self.confidence,
        }
        if self.mask is not None:
            result["Anomalies"] = [
                {
                    "Name": anomaly.name,
                    "PixelAnomaly": {
                        "TotalPercentageArea": anomaly.pixel_anomaly.total_percentage_area,
                        "Color": anomaly.pixel_anomaly.color,
                    },
                }
                for anomaly in self.anomalies
            ]
            if include_mask:
                rgb = self.mask_rgb()
                assert rgb is not None  # noqa: S101 - mask is not None above
                result["AnomalyMask"] = base64.b64encode(encode_png(rgb)).decode("ascii")
        return result


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """`#RRGGBB` → (r, g, b); the colour must have passed `is_hex_color`."""
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def parse_color_map(raw: Mapping[str, str]) -> dict[str, str]:
    """Check a label → `#RRGGBB` map; colours are returned upper-case, as LFV writes them.

    Raises:
        ConfigError: a colour is not `#RRGGBB`.
    """
    colors: dict[str, str] = {}
    for label, color in raw.items():
        if not is_hex_color(color):
            msg = f"colors.{label}: expected a colour like #23A436, got {color!r}"
            raise ConfigError(msg)
        colors[label] = color.upper()
    return colors


def lfv_round(value: float) -> float:
    """Round to 4 decimals as LFV does (Python's `round` on the float64 value)."""
    return round(value, 4)


def is_anomalous_score(score: float, threshold: float) -> bool:
    """LFV's rule: normal iff round(score, 4) < round(threshold, 4); equality is anomalous."""
    return not lfv_round(score) < lfv_round(threshold)


def lfv_confidence(score: float, anomalous: bool) -> float:
    """Confidence of the label: clip(score) when anomalous, 1 − clip(score) when normal."""
    clipped = min(max(score, 0.0), 1.0)
    return clipped if anomalous else 1.0 - clipped


class Postprocessor:
    """Turns one inference's outputs into a `Verdict`, following the manifest."""

    def __init__(
        self,
        manifest: Manifest,
        layout: OutputLayout,
        *,
        colors: Mapping[str, str] | None = None,
        threshold: float | None = None,
    ) -> None:
        self._stage = manifest.stage
        self._layout = layout
        self.threshold = self._stage.threshold if threshold is None else threshold
        if not math.isfinite(self.threshold):
            msg = f"threshold must be a finite number, got {self.threshold}"
            raise ConfigError(msg)
        self._pixel_names = manifest.pixel_classes.names
        user = parse_color_map(colors or {})
        self._colors = tuple(
            user.get(name, DEFAULT_PALETTE[index % len(DEFAULT_PALETTE)])
            for index, name in enumerate(self._pixel_names)
        )
        normal = set(self._stage.class_normal_ids)
        self._anomaly_ids = [i for i in range(layout.num_classes) if i not in normal]
        seg_normal = set(self._stage.seg_normal_ids or ())
        self._biased_ids = [i for i in range(layout.num_pixel_classes) if i not in seg_normal]

    def __call__(
        self, outputs: Sequence[NDArray[np.float32]], image_size: tuple[int, int]
    ) -> Verdict:
        """Apply LFV's rules. `image_size` is the (height, width) of the request's image."""
        stage, layout = self._stage, self._layout
        expected = int(layout.mask_index is not None) + int(layout.score_index is not None)
        if len(outputs) != expected:
            msg = f"the model returned {len(outputs)} outputs, {expected} expected"
            raise InferenceError(msg)
        score: float | None = None
        if layout.score_index is not None:
            probabilities = outputs[layout.score_index]
            # float32 sum, then float: the same arithmetic as LFV's numpy code.
            score = float(np.sum(np.take(probabilities, self._anomaly_ids, axis=1), axis=1)[0])
            if stage.calibration is not None:
                calibration = stage.calibration
                scaled = (
                    score / calibration.max_val_score if calibration.max_val_score > 1 else score
                )
                score = 1.0 / (1.0 + math.exp(calibration.scaling * scaled + calibration.shift))
        mask: NDArray[np.uint8] | None = None
        if layout.mask_index is not None:
            raw = outputs[layout.mask_index]
            if score is None:
                score = float(np.mean(raw))  # LFV's score for a segmentation-only model
            if stage.seg_recall_bias is not None and self._biased_ids:
                raw = raw.copy()
                raw[0, self._biased_ids] += np.float32(stage.seg_recall_bias)
            labels = np.argmax(raw[0], axis=0).astype(np.uint8)
            height, width = stage.raw_image_shape or image_size
            mask = resize_nearest(labels, width, height)
        if score is None or not math.isfinite(score):
            msg = f"the model produced a non-finite anomaly score ({score})"
            raise InferenceError(msg)
        anomalous = is_anomalous_score(score, self.threshold)
        if (
            mask is not None
            and score <= 1.0
            and stage.classification_logic not in {None, "cls_head"}
            and stage.seg_normal_ids is not None
        ):
            seg_anomalous = not set(np.unique(mask).tolist()) <= set(stage.seg_normal_ids)
            if stage.classification_logic == "seg_head":
                anomalous = seg_anomalous
            elif stage.classification_logic == "cls_and_seg":
                anomalous = anomalous and seg_anomalous
            else:  # cls_or_seg
                anomalous = anomalous or seg_anomalous
        return Verdict(
            is_anomalous=anomalous,
            confidence=lfv_confidence(score, anomalous),
            score=score,
            threshold=self.threshold,
            anomalies=self._anomalies(mask) if mask is not None else (),
            mask=mask,
            mask_colors=self._colors if mask is not None else (),
        )

    def _anomalies(self, mask: NDArray[np.uint8]) -> tuple[Anomaly, ...]:
        counts = np.bincount(mask.ravel(), minlength=len(self._pixel_names))
        area = mask.size
        anomalies = []
        for index, count in enumerate(counts.tolist()):
            if index != 0 and count == 0:
                continue  # LFV lists background always, other classes only when present
            anomalies.append(
                Anomaly(
                    name=self._pixel_names[index],
                    pixel_anomaly=PixelAnomaly(count / area, self._colors[index]),
                )
            )
        return tuple(anomalies)
