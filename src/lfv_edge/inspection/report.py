"""What `lfv-edge inspect` tells about a model, as a dict (for `--json`) and as text.

Two kinds of model: an LFV package (classes, threshold, input, heads, runtime, device) and a
bare DLR model folder (inputs, outputs, kernels, imported device modules, runtime, device).
Reads either like the service does (all pre-flight checks) and never loads DLR into this
process; with `probe`, a child process loads the model, runs it once on zeros and reports
each output's shape, sum and L2 norm (probe.py).
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
from lfv_edge.model.manifest import INTERPOLATION_CODES
from lfv_edge.model.package import ModelFolder, ModelPackage, open_model, read_model_package
from lfv_edge.model.probe import probe_package

_INTERPOLATION_NAMES = {code: name for name, code in INTERPOLATION_CODES.items()}


def _device_support(model: ModelPackage | ModelFolder, facts: HostFacts) -> dict[str, object]:
    support: dict[str, object] = {}
    requests: tuple[DeviceRequest, ...] = ("auto", "cpu", "gpu")
    for request in requests:
        try:
            choice = choose_device(
                request,
                library=model.library,
                library_sha256=model.library_sha256,
                meta_device=model.stage.target_device,
                facts=facts,
            )
        except DeviceError as exc:
            support[request] = {"possible": False, "reason": str(exc)}
        else:
            support[request] = {"possible": True, "device": choice.device, "reason": choice.reason}
    return support


def _runtime(model: ModelPackage | ModelFolder, facts: HostFacts) -> dict[str, object]:
    return {
        "Library": str(model.library.path),
        "Origin": model.library_origin,
        "Sha256": model.library_sha256,
        "Machine": model.library.machine_name,
        "GpuLibraries": gpu_libraries(model.library),
        "MissingLibraries": missing_libraries(model.library, facts),
        "MetaDevice": model.stage.meta_device,
        "TargetDevice": model.stage.target_device,
    }


def _files(stage_dir: Path, prefix: str) -> list[dict[str, object]]:
    files = sorted(p for p in stage_dir.iterdir() if p.is_file())
    return [{"Name": f"{prefix}{p.name}", "Bytes": p.stat().st_size} for p in files]


def _probe(model: ModelPackage | ModelFolder, facts: HostFacts) -> list[dict[str, object]]:
    choice = choose_device(
        "auto",
        library=model.library,
        library_sha256=model.library_sha256,
        meta_device=model.stage.target_device,
        facts=facts,
    )
    return [summary.as_dict() for summary in probe_package(model.source, choice.device)]


def describe(
    source: Path, *, facts: HostFacts | None = None, probe: bool = False
) -> dict[str, object]:
    """Describe a package or a bare DLR model folder; with `probe`, run it once in a child.

    Raises:
        ModelPackageError: pre-flight refused the model, or the probe failed (names why).
    """
    model = open_model(source)
    facts = facts or HostFacts.probe()
    if isinstance(model, ModelFolder):
        description = _describe_folder(model, facts)
    else:
        description = _describe_package(model, facts)
    if probe:
        description["Probe"] = _probe(model, facts)
    return description


def describe_package(source: Path, facts: HostFacts | None = None) -> dict[str, object]:
    """Everything a user needs to know about a package, JSON-ready."""
    return _describe_package(read_model_package(source), facts or HostFacts.probe())


def describe_loaded(package: ModelPackage, facts: HostFacts | None = None) -> dict[str, object]:
    """`describe_package` of a package already read (a running service's model): no re-read."""
    return _describe_package(package, facts or HostFacts.probe())


def _describe_folder(model: ModelFolder, facts: HostFacts) -> dict[str, object]:
    check = model.stage
    graph = check.graph
    names = check.output_names if len(check.output_names) == len(graph.heads) else ()
    modules = check.modules
    return {
        "Folder": {"Name": model.name, "Version": model.version, "Source": str(model.source)},
        "Graph": {
            "File": check.files.graph_json.name,
            "Nodes": len(graph.nodes),
            "KernelCalls": graph.kernel_calls(),
            "Functions": len(graph.kernel_names()),
        },
        "Inputs": [
            {"Name": spec.name, "Shape": list(spec.shape), "Dtype": spec.dtype}
            for spec in check.inputs
        ],
        "Weights": {
            "File": check.files.params.name,
            "Count": len(check.weight_names),
            "Bytes": check.weight_bytes,
            "Unused": list(check.unused_weights),
        },
        "Outputs": [
            {"Index": i, "Name": names[i] if names else None, "Shape": list(shape), "Dtype": dtype}
            for i, (shape, dtype) in enumerate(
                zip(graph.output_shapes(), graph.output_dtypes(), strict=True)
            )
        ],
        "KernelLibrary": {
            "File": check.kernel.path.name,
            "Machine": check.kernel.machine_name,
            "Links": [lib.path.name for lib in check.kernel_linked.libraries[1:]],
            "Modules": modules.describe() if modules is not None else [],
            "ModuleNotes": list(modules.notes) if modules is not None else [],
        },
        "Runtime": _runtime(model, facts),
        "Device": _device_support(model, facts),
        "Files": _files(model.stage_dir, ""),
    }


def _describe_package(package: ModelPackage, facts: HostFacts) -> dict[str, object]:
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
    modules = package.stage.modules
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
        "Runtime": _runtime(package, facts),
        "Modules": modules.describe() if modules is not None else [],
        "Device": _device_support(package, facts),
        "Files": _files(package.stage_dir, f"{package.stage_dir.name}/"),
        "UnusedManifestKeys": list(manifest.unknown_keys),
        "UnusedWeights": list(package.stage.unused_weights),
    }


def _yes(value: object) -> str:
    return "yes" if value else "no"


def format_description(info: Mapping[str, Any]) -> str:
    """The description (of a package or a model folder) as aligned text for people."""
    if "Folder" in info:
        return _format_folder(info)
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
    if info["Modules"]:
        lines.append(f"Modules     {'; '.join(info['Modules'])}")
    lines += _runtime_lines(rt, dev)
    files = info["Files"]
    lines.append("Files       " + ", ".join(f"{f['Name']} ({f['Bytes']:,} B)" for f in files))
    if info["UnusedManifestKeys"]:
        lines.append(f"Not used    {', '.join(info['UnusedManifestKeys'])}")
    lines += _probe_lines(info.get("Probe"))
    return "\n".join(lines)


def _runtime_lines(rt: Mapping[str, Any], dev: Mapping[str, Any]) -> list[str]:
    gpu = rt["GpuLibraries"]
    build = f"GPU build ({', '.join(gpu)})" if gpu else "CPU-only build"
    lines = [f"Runtime     {rt['Library']} ({rt['Origin']}, {rt['Machine']}, {build})"]
    if rt["MissingLibraries"]:
        lines.append(f"            missing libraries: {', '.join(rt['MissingLibraries'])}")
    for request in ("auto", "cpu", "gpu"):
        entry = dev[request]
        verdict = f"→ {entry['device']}" if entry["possible"] else "not possible"
        reason = str(entry["reason"]).removeprefix("auto: ")
        lines.append(f"Device {request:<4} {verdict}: {reason}")
    return lines


def _probe_lines(probe: Any) -> list[str]:  # noqa: ANN401 - the JSON list, or None
    if probe is None:
        return []
    return [
        f"Probe {i:<5} {item['Shape']} sum {item['Sum']:.6g}, L2 {item['L2']:.6g}"
        for i, item in enumerate(probe)
    ] or ["Probe       no outputs"]


def _format_folder(info: Mapping[str, Any]) -> str:
    folder, graph, weights, kernel = (
        info["Folder"],
        info["Graph"],
        info["Weights"],
        info["KernelLibrary"],
    )
    lines = [
        f"Folder      {folder['Name']} ({folder['Version']}), a DLR model folder",
        f"Source      {folder['Source']}",
        f"Graph       {graph['File']}: {graph['Nodes']} nodes, {graph['KernelCalls']} kernel "
        f"calls to {graph['Functions']} functions",
    ]
    inputs = info["Inputs"]
    if not inputs:
        lines.append(
            "Inputs      none: every graph argument has a value stored in the .params file"
        )
    for i, item in enumerate(inputs):
        label = "Inputs" if i == 0 else ""
        lines.append(f"{label:<11} {item['Name']} {item['Dtype']}{item['Shape']}")
    unused = f"; {len(weights['Unused'])} unused" if weights["Unused"] else ""
    lines.append(
        f"Weights     {weights['Count']} arrays, {weights['Bytes']:,} B in {weights['File']}{unused}"
    )
    for item in info["Outputs"]:
        name = f" {item['Name']}" if item["Name"] else ""
        lines.append(f"Output {item['Index']:<4}{name} {item['Dtype']}{item['Shape']}")
    links = ", ".join(kernel["Links"]) or "nothing"
    lines.append(f"Kernels     {kernel['File']} ({kernel['Machine']}; links {links})")
    modules = "; ".join(kernel["Modules"]) or "none"
    lines.append(f"Modules     {modules}")
    lines += [f"            {note}" for note in kernel["ModuleNotes"]]
    lines += _runtime_lines(info["Runtime"], info["Device"])
    files = info["Files"]
    lines.append("Files       " + ", ".join(f"{f['Name']} ({f['Bytes']:,} B)" for f in files))
    lines += _probe_lines(info.get("Probe"))
    return "\n".join(lines)
