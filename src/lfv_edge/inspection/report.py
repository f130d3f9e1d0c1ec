"""What `lfv-edge inspect` tells about a package, as a dict (for `--json`) and as text.

Reads the package like the service does (all pre-flight checks) but never loads DLR.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lfv_edge.errors import DeviceError
from lfv_edge.inspection.postprocess import DEFAULT_PALETTE
from lfv_edge.model.device import (
    DeviceRequest,
    HostFacts,
    choose_device,
    gpu_libraries,
    missing_libraries,
)
from lfv_edge.model.elf import ElfError, read_symbol_data
from lfv_edge.model.manifest import INTERPOLATION_CODES
from lfv_edge.model.package import ModelPackage, read_model_package
from lfv_edge.model.tvm_blob import BLOB_SYMBOL, BlobError, parse_module_blob

_INTERPOLATION_NAMES = {code: name for name, code in INTERPOLATION_CODES.items()}


def _device_support(package: ModelPackage, facts: HostFacts) -> dict[str, object]:
    support: dict[str, object] = {}
    requests: tuple[DeviceRequest, ...] = ("auto", "cpu", "gpu")
    for request in requests:
        try:
            choice = choose_device(
                request,
                library=package.library,
                library_sha256=package.library_sha256,
                meta_device=package.stage.meta_device,
                device_code=package.stage.device_code,
                facts=facts,
            )
        except DeviceError as exc:
            support[request] = {"possible": False, "reason": str(exc)}
        else:
            support[request] = {"possible": True, "device": choice.device, "reason": choice.reason}
    return support


def _device_code(package: ModelPackage) -> list[str]:
    """The modules packed into the kernel library (`__tvm_dev_mblob`): empty for a CPU build."""
    try:
        data = read_symbol_data(package.stage.files.kernel_lib, BLOB_SYMBOL)
        if data is None:
            return []
        blob = parse_module_blob(data)
    except (BlobError, ElfError, OSError) as exc:
        return [f"unreadable {BLOB_SYMBOL}: {exc}"]
    described = [m.describe() for m in blob.modules if m.kind != "_lib"]
    return described + list(blob.notes)


def describe_package(source: Path, facts: HostFacts | None = None) -> dict[str, object]:
    """Everything a user needs to know about a package, JSON-ready."""
    package = read_model_package(source)
    facts = facts or HostFacts.probe()
    manifest, stage, layout = package.manifest, package.manifest.stage, package.outputs
    names = manifest.image_classes.names
    classes = [
        {
            "Index": i,
            "Name": names[i] if i < len(names) else f"class{i}",
            "Normal": i in stage.class_normal_ids,
        }
        for i in range(layout.num_classes)
    ]
    pixel_classes = [
        {"Index": i, "Name": name, "DefaultColor": DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)]}
        for i, name in enumerate(manifest.pixel_classes.names)
    ]
    files = sorted(p for p in package.stage_dir.iterdir() if p.is_file())
    return {
        "Package": {
            "Name": package.name,
            "Version": package.version,
            "Source": str(package.source),
            "Root": str(package.root),
        },
        "Graph": {"Type": manifest.graph_type, "Stage": stage.type},
        "Input": {
            "Width": stage.image_width,
            "Height": stage.image_height,
            "Shape": list(stage.input_shape),
            "Normalize": stage.normalize,
            "ImageRangeScale": stage.image_range_scale,
            "Interpolation": _INTERPOLATION_NAMES.get(
                stage.interpolation, str(stage.interpolation)
            ),
        },
        "Threshold": stage.threshold,
        "Classification": {
            "Enabled": stage.classification_head,
            "Classes": classes,
            "NormalIds": list(stage.class_normal_ids),
            "Calibrated": stage.calibration is not None,
        },
        "Segmentation": {
            "Enabled": stage.segmentation_head,
            "Classes": pixel_classes,
            "NormalIds": list(stage.seg_normal_ids or ()),
            "MaskShape": list(layout.mask_shape) if layout.mask_shape else None,
            "RawImageShape": list(stage.raw_image_shape) if stage.raw_image_shape else None,
            "RecallBias": stage.seg_recall_bias,
            "ClassificationLogic": stage.classification_logic,
        },
        "Runtime": {
            "Library": str(package.library.path),
            "Origin": package.library_origin,
            "Sha256": package.library_sha256,
            "Machine": package.library.machine_name,
            "GpuLibraries": gpu_libraries(package.library),
            "MissingLibraries": missing_libraries(package.library, facts),
            "MetaDevice": package.stage.meta_device,
            "DeviceCode": _device_code(package),
        },
        "Device": _device_support(package, facts),
        "Files": [
            {"Name": f"{package.stage_dir.name}/{p.name}", "Bytes": p.stat().st_size} for p in files
        ],
        "UnusedManifestKeys": list(manifest.unknown_keys),
        "UnusedWeights": list(package.stage.unused_weights),
    }


def _yes(value: object) -> str:
    return "yes" if value else "no"


def format_description(info: Mapping[str, Any]) -> str:
    """The description as aligned text for people."""
    pkg = info["Package"]
    inp = info["Input"]
    cls = info["Classification"]
    seg = info["Segmentation"]
    rt = info["Runtime"]
    dev = info["Device"]
    threshold = info["Threshold"]
    lines = [
        f"Package     {pkg['Name']} ({pkg['Version']})",
        f"Source      {pkg['Source']}",
        f"Graph       {info['Graph']['Type']}, stage {info['Graph']['Stage']}",
        f"Input       {inp['Width']}×{inp['Height']} RGB, {inp['Interpolation']} resize, "
        f"/255 {_yes(inp['ImageRangeScale'])}, ImageNet normalise {_yes(inp['Normalize'])}",
        f"Threshold   {threshold} (anomalous when round(score, 4) ≥ {round(threshold, 4)})",
    ]
    if cls["Enabled"]:
        classes = ", ".join(
            f"{c['Index']}={c['Name']}{' (normal)' if c['Normal'] else ''}" for c in cls["Classes"]
        )
        lines.append(f"Classes     {classes}{'; calibrated' if cls['Calibrated'] else ''}")
    else:
        lines.append("Classes     no classification head (score = mean of the mask output)")
    if seg["Enabled"]:
        pixel = ", ".join(f"{c['Index']}={c['Name']}" for c in seg["Classes"])
        lines.append(f"Mask        {pixel}; model mask {seg['MaskShape']}")
    else:
        lines.append("Mask        no segmentation head")
    gpu = rt["GpuLibraries"]
    build = f"GPU build ({', '.join(gpu)})" if gpu else "CPU-only build"
    lines.append(f"Runtime     {rt['Library']} ({rt['Origin']}, {rt['Machine']}, {build})")
    if rt.get("DeviceCode"):
        lines.append(f"Device code {'; '.join(rt['DeviceCode'])}")
    if rt["MissingLibraries"]:
        lines.append(f"            missing libraries: {', '.join(rt['MissingLibraries'])}")
    for request in ("auto", "cpu", "gpu"):
        entry = dev[request]
        verdict = f"→ {entry['device']}" if entry["possible"] else "not possible"
        reason = str(entry["reason"]).removeprefix("auto: ")
        lines.append(f"Device {request:<4} {verdict}: {reason}")
    files = info["Files"]
    lines.append("Files       " + ", ".join(f"{f['Name']} ({f['Bytes']:,} B)" for f in files))
    if info["UnusedManifestKeys"]:
        lines.append(f"Not used    {', '.join(info['UnusedManifestKeys'])}")
    return "\n".join(lines)
