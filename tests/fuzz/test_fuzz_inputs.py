"""Property-based fuzzing of everything that parses outside input.

Property: each parser returns a value or raises ITS documented error type (with a stable code
for requests); nothing else ever escapes. The service-level property: every request carrying a
RequestId gets exactly one reply with that RequestId.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lfv_edge.errors import ConfigError, InputError, ModelPackageError
from lfv_edge.inspection.imaging import SizeLimits, check_size, decode_image, sniff_size
from lfv_edge.inspection.pipeline import EncodedImage, RawFrame
from lfv_edge.model.elf import ElfError, read_shared_object
from lfv_edge.model.tvm_graph import GraphFormatError, parse_graph
from lfv_edge.model.tvm_params import ParamsFormatError, decode_params, encode_params
from lfv_edge.service.config import parse_config, read_config_file
from lfv_edge.service.messages import ERROR_CODES, parse_request, request_id_of
from tests.fuzz.conftest import CASES
from tests.model.test_manifest import REAL_MANIFEST

ROOTS = (Path("/tmp/lfv-fuzz-root-that-does-not-exist"),)


def _png(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def _jpeg(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


VALID_IMAGES = [_png(64, 80, 1), _jpeg(70, 90, 2), _png(100, 64, 3)]
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


# JSON nested deeper than json.loads goes (it raises RecursionError near depth 1,000).
deep_json = st.builds(
    lambda depth, kind: (kind[0] * depth + kind[1] * depth).encode(),
    st.integers(900, 20_000),
    st.sampled_from([("[", "]"), ('{"a":', "}"), ("[{}, ", "]")]),
).map(lambda raw: raw if not raw.startswith(b'{"a":') else raw.replace(b"}", b"1}", 1))


def with_deep_value(encoded: bytes, deep: bytes) -> bytes:
    """`encoded` (a JSON object) with one more key whose value is `deep`."""
    if not encoded.startswith(b"{") or encoded == b"{}":
        return b'{"Metadata": ' + deep + b"}"
    return b'{"Metadata": ' + deep + b", " + encoded[1:]


DEEP_REQUEST = b'{"RequestId": "deep", "Metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}"
NAN_REQUEST = b'{"RequestId": "nan", "Body": "AAAA", "Metadata": {"a": NaN}}'
HUGE_FLOAT_REQUEST = b'{"RequestId": "inf", "Body": "AAAA", "Metadata": {"a": 1e400}}'


def strict_json(payload: bytes) -> Any:
    """Parse as strict JSON (no NaN or Infinity), as JavaScript or Go would."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON: {payload[:200]!r}")

    return json.loads(payload, parse_constant=refuse)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Bit flips, truncations, insertions and splices of valid bytes."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
        if not buffer:
            break
        position = draw(st.integers(0, len(buffer) - 1))
        if op == "flip":
            buffer[position] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buffer[position:]
        elif op == "insert":
            buffer[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            buffer[position : position + len(chunk)] = chunk
    return bytes(buffer)


@st.composite
def frames(draw: st.DrawFn) -> dict[str, Any]:
    width = draw(st.integers(-2, 130) | st.sampled_from([64, 100]))
    height = draw(st.integers(-2, 130) | st.sampled_from([64, 70]))
    encoding = draw(st.sampled_from(["rgb8", "bgr8", "mono8", "rgba8", "", 7]))
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(str(encoding), 3)
    exact = max(width, 0) * max(height, 0) * channels
    size = draw(st.sampled_from([exact, exact - 1, exact + 3, 0]) if exact < 60_000 else st.just(0))
    data = base64.b64encode(bytes(max(size, 0))).decode()
    frame: dict[str, Any] = {"Width": width, "Height": height, "Encoding": encoding, "Data": data}
    if draw(st.booleans()):
        frame[draw(st.sampled_from(["Width", "Height", "Encoding", "Data"]))] = draw(json_scalars)
    return frame


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Near-valid requests: right keys, wrong or right values, sometimes extra keys."""
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["RequestId"] = draw(st.text(min_size=0, max_size=300) | json_scalars)
    source = draw(st.sampled_from(["Body", "Frame", "ImagePath", "none", "two"]))
    if source in {"Body", "two"}:
        image = draw(st.sampled_from(VALID_IMAGES))
        raw = draw(st.just(image) | mutated(image) | st.binary(max_size=64))
        body["Body"] = draw(st.just(base64.b64encode(raw).decode()) | json_scalars)
        if draw(st.booleans()):
            body["ContentType"] = draw(
                st.sampled_from(["image/png", "image/jpeg", "text/plain", "", 3])
            )
    if source in {"Frame", "two"}:
        body["Frame"] = draw(frames() | json_values)
    if source == "ImagePath":
        body["ImagePath"] = draw(
            st.text(max_size=60) | st.just("/etc/passwd") | st.just("../../x.png") | json_scalars
        )
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=10))] = draw(json_values)
    if draw(st.integers(0, 5)) == 0:
        body["IncludeMask"] = draw(json_scalars)
    if draw(st.integers(0, 4)) == 0:
        body["Metadata"] = draw(json_values | st.dictionaries(st.text(max_size=5), json_values))
    encoded = json.dumps(body).encode()  # NaN and ±Infinity appear as Python's json writes them
    if draw(st.integers(0, 9)) == 0:
        encoded = with_deep_value(encoded, draw(deep_json))
    return draw(st.just(encoded) | mutated(encoded))


LIMITS = SizeLimits(max_encoded_bytes=1 << 20)


@given(
    payload=requests() | st.binary(max_size=200) | st.sampled_from(VALID_IMAGES).flatmap(mutated)
)
# Found by fuzzing: json.loads raises RecursionError (not ValueError) on deep nesting; it
# escaped parse_request and request_id_of, so the request got no reply at all.
@example(payload=DEEP_REQUEST)
# Found by fuzzing: NaN / 1e400 in Metadata were echoed as NaN / Infinity: not JSON.
@example(payload=NAN_REQUEST)
@example(payload=HUGE_FLOAT_REQUEST)
def test_request_parsing_returns_a_request_or_a_coded_error(payload: bytes) -> None:
    CASES["request parsing"] += 1
    try:
        request = parse_request(payload, image_roots=ROOTS, max_payload_bytes=1 << 20)
    except InputError as exc:
        assert exc.code in ERROR_CODES, f"undocumented code {exc.code}"
        assert exc.message, "every error has a message"
        recovered = request_id_of(payload)
        assert recovered is None or isinstance(recovered, str), "a typed request id, or none"
        return
    assert request.request_id is None or isinstance(request.request_id, str), "typed request id"
    strict_json(json.dumps(request.metadata).encode())  # what is echoed back is strict JSON


def test_the_request_id_of_a_too_deep_request_is_still_found() -> None:
    # given requests too deep for json.loads, with the id before, after and inside the depth
    after = b'{"Metadata": ' + b'[{"x": "]["}, ' * 3000 + b"]" * 3000 + b', "RequestId": "late"}'
    # then the error reply can still carry the id (a top-level key), never a nested one
    assert request_id_of(DEEP_REQUEST) == "deep", "RequestId before the deep value"
    assert request_id_of(after) == "late", "RequestId after the deep value (strings skipped)"
    inner = b'{"Metadata": ' + b'[{"RequestId": "no"}, ' + b"[" * 3000 + b"]" * 3001 + b"}"
    assert request_id_of(inner) is None, "a nested RequestId is not the request's"
    with pytest.raises(InputError, match="nested too deeply") as refused:
        parse_request(DEEP_REQUEST, image_roots=ROOTS, max_payload_bytes=1 << 20)
    assert refused.value.code == "BadRequest", "a coded error, not an internal one"


@given(
    body=st.text(max_size=400) | st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
)
def test_base64_bodies_decode_to_an_image_or_a_coded_error(body: str) -> None:
    CASES["base64 bodies"] += 1
    payload = json.dumps({"RequestId": "b64", "Body": body}).encode()
    try:
        request = parse_request(payload, image_roots=ROOTS, max_payload_bytes=1 << 20)
        assert isinstance(request.source, EncodedImage), "a Body is an encoded image"
        decode_image(request.source.data, LIMITS)
    except InputError as exc:
        assert exc.code in ERROR_CODES, f"undocumented code {exc.code}"


@given(frame=frames())
def test_raw_frames_become_pixels_of_the_stated_size_or_a_coded_error(
    frame: dict[str, Any],
) -> None:
    CASES["raw frames"] += 1
    payload = json.dumps({"RequestId": "frame", "Frame": frame}).encode()
    try:
        request = parse_request(payload, image_roots=ROOTS, max_payload_bytes=1 << 20)
    except InputError as exc:
        assert exc.code in ERROR_CODES, f"undocumented code {exc.code}"
        return
    assert isinstance(request.source, RawFrame), "a Frame is a raw frame"
    pixels = request.source.pixels
    assert pixels.shape[:2] == (frame["Height"], frame["Width"]), "the stated size"
    assert pixels.dtype == np.uint8, "bytes"
    try:
        check_size(frame["Width"], frame["Height"], SizeLimits())
    except InputError as exc:
        assert exc.code in {"ImageTooSmall", "ImageTooLarge"}, "size bounds are coded"


@given(data=st.sampled_from(VALID_IMAGES).flatmap(mutated) | st.binary(max_size=300))
def test_image_decoding_returns_pixels_or_a_coded_error(data: bytes) -> None:
    CASES["image decoding"] += 1
    try:
        pixels = decode_image(data, LIMITS)
    except InputError as exc:
        assert exc.code in ERROR_CODES, f"undocumented code {exc.code}"
        return
    assert pixels.dtype == np.uint8, "uint8 pixels"
    assert pixels.ndim == 3, "three channels"
    assert pixels.shape[2] == 3, "BGR"
    assert min(pixels.shape[:2]) >= 64, "size bounds held"
    assert max(pixels.shape[:2]) <= 4096, "size bounds held"


@given(
    width=st.integers(0, 70_000),
    height=st.integers(0, 70_000),
    kind=st.sampled_from(
        ["png", "jpeg", "bmp", "gif", "webp-vp8x", "webp-vp8", "webp-vp8l", "tiff"]
    ),
)
def test_decompression_bombs_are_refused_from_the_header(
    width: int, height: int, kind: str
) -> None:
    # a tiny file that claims a huge size must be refused before any pixel is allocated
    CASES["decompression bombs"] += 1
    if kind == "png":
        data = (
            b"\x89PNG\r\n\x1a\n"
            + struct.pack(">I", 13)
            + b"IHDR"
            + struct.pack(">II", width, height)
            + b"\x08\x02\x00\x00\x00"
            + b"\0" * 40
        )
    elif kind == "jpeg":
        data = (
            b"\xff\xd8\xff\xc0"
            + struct.pack(">HBHH", 17, 8, height & 0xFFFF, width & 0xFFFF)
            + b"\x03"
            + b"\0" * 40
        )
    elif kind == "bmp":
        data = b"BM" + b"\0" * 16 + struct.pack("<ii", width, height) + b"\0" * 40
    elif kind == "gif":
        data = b"GIF89a" + struct.pack("<HH", width & 0xFFFF, height & 0xFFFF) + b"\0" * 40
    elif kind == "webp-vp8x":  # extended: 24-bit canvas width − 1 and height − 1
        w, h = max(width, 1) - 1, max(height, 1) - 1
        chunk = b"\x08\0\0\0" + w.to_bytes(3, "little") + h.to_bytes(3, "little")
        data = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + chunk
        data += b"\0" * 40
    elif kind == "webp-vp8":  # lossy key frame: 14-bit width and height
        frame = b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
        data = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8 " + struct.pack("<I", 10) + frame
        data += b"\0" * 40
    elif kind == "webp-vp8l":  # lossless: 14-bit width − 1 and height − 1
        bits = ((max(width, 1) - 1) & 0x3FFF) | (((max(height, 1) - 1) & 0x3FFF) << 14)
        data = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8L" + struct.pack("<I", 5)
        data += b"\x2f" + struct.pack("<I", bits) + b"\0" * 40
    else:  # TIFF: one IFD with ImageWidth and ImageLength as LONGs
        entries = struct.pack("<HHII", 256, 4, 1, width) + struct.pack("<HHII", 257, 4, 1, height)
        data = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + b"\0" * 40
    size = sniff_size(data)
    assert size is not None, "the header is read"
    try:
        decode_image(data, LIMITS)
    except InputError as exc:
        if max(size) > 4096:
            assert exc.code == "ImageTooLarge", f"{size}: refused as too large"
        return
    raise AssertionError("a header-only file cannot decode")


@given(
    raw=json_values
    | st.fixed_dictionaries(
        {
            "model": st.fixed_dictionaries(
                {"path": st.text(max_size=5)},
                optional={"device": json_scalars, "threads": json_scalars},
            ),
            "queue": json_values,
            "mqtt": json_values,
            "ipc": json_values,
            "agent": json_values,
        }
    )
)
@example(raw={"model": {"path": "~user-that-does-not-exist/pkg.zip"}})  # found by fuzzing
@example(raw={"model": {"path": "0", "threads": "²"}})  # found by fuzzing: isdigit() but not int()
@example(raw={"model": {"path": "0", "threads": "--5"}})
@example(raw={"model": {"path": "0", "threads": "9" * 5000}})  # past int()'s 4,300 digits
def test_config_parsing_returns_a_config_or_a_config_error(raw: Any) -> None:
    CASES["config parsing"] += 1
    try:
        parse_config(raw if isinstance(raw, dict) else {"model": raw}, {"AWS_IOT_THING_NAME": "t"})
    except ConfigError as exc:
        assert str(exc), "the error says what is wrong"


CONFIG_BYTES = json.dumps(
    {
        "model": {"path": "/models/a.zip", "device": "cpu", "threads": 1},
        "imageRoots": ["/data"],
        "queue": {"size": 8, "overflow": "reject"},
        "mqtt": {"broker": "mqtt://127.0.0.1", "requestsTopic": "a", "resultsTopic": "b"},
    }
).encode()


@given(
    data=mutated(CONFIG_BYTES)
    | st.binary(max_size=100)
    | deep_json.map(lambda deep: with_deep_value(CONFIG_BYTES, deep))
)
@example(data=b"\xff\xfe{")  # found by fuzzing: UnicodeDecodeError escaped as an internal error
@example(data=b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b"}")  # found: RecursionError escaped
def test_config_files_give_a_config_or_a_config_error(data: bytes, tmp_path_factory: Any) -> None:
    CASES["config files"] += 1
    path = tmp_path_factory.getbasetemp() / "fuzz-config.json"
    path.write_bytes(data)
    try:
        read_config_file(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)) or ":" in str(exc), "the error names where"


MANIFEST_BYTES = json.dumps(REAL_MANIFEST).encode()


@given(
    data=mutated(MANIFEST_BYTES)
    | st.builds(lambda v: json.dumps({"model_graph": v}).encode(), json_values)
    | deep_json.map(lambda deep: with_deep_value(MANIFEST_BYTES, deep))
)
@example(data=b'{"model_graph": ' + b"[" * 5000 + b"]" * 5000 + b"}")  # found: RecursionError
def test_manifest_parsing_returns_a_manifest_or_a_package_error(data: bytes) -> None:
    CASES["manifest parsing"] += 1
    from lfv_edge.model.manifest import decode_manifest

    try:
        decode_manifest(data)
    except ModelPackageError as exc:
        assert "manifest.json" in str(exc), "the error names the file"


PARAMS = encode_params(
    {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(3, np.float32)}
)


@given(data=mutated(PARAMS) | st.binary(max_size=100))
def test_params_decoding_returns_arrays_or_a_format_error(data: bytes) -> None:
    CASES["params decoding"] += 1
    try:
        decode_params(data)
    except ParamsFormatError as exc:
        assert str(exc), "says what is wrong"


GRAPH = json.dumps(
    {
        "nodes": [
            {"op": "null", "name": "data", "inputs": []},
            {
                "op": "tvm_op",
                "name": "r",
                "inputs": [[0, 0, 0]],
                "attrs": {
                    "func_name": "f",
                    "num_inputs": "1",
                    "num_outputs": "1",
                    "flatten_data": "0",
                },
            },
        ],
        "arg_nodes": [0],
        "node_row_ptr": [0, 1, 2],
        "heads": [[1, 0, 0]],
        "attrs": {
            "dltype": ["list_str", ["float32", "float32"]],
            "storage_id": ["list_int", [0, 1]],
            "shape": ["list_shape", [[1, 3, 8, 8], [1, 3, 8, 8]]],
        },
    }
).encode()


@given(
    data=mutated(GRAPH)
    | st.builds(lambda v: json.dumps(v).encode(), json_values)
    | deep_json.map(lambda deep: with_deep_value(GRAPH, deep))
)
@example(data=b'{"nodes": ' + b"[" * 5000 + b"]" * 5000 + b"}")  # found by fuzzing: RecursionError
def test_graph_parsing_returns_a_graph_or_a_format_error(data: bytes) -> None:
    CASES["graph parsing"] += 1
    try:
        parse_graph(data)
    except GraphFormatError as exc:
        assert str(exc), "says what is wrong"


@given(data=st.data())
def test_elf_reading_of_mutated_shared_objects_raises_only_elf_error(
    data: st.DataObject, kernels_so: Path, tmp_path_factory: Any
) -> None:
    CASES["elf reading"] += 1
    mutant = data.draw(mutated(kernels_so.read_bytes()) | st.binary(max_size=200))
    path = tmp_path_factory.getbasetemp() / "fuzz.so"
    path.write_bytes(mutant)
    try:
        library = read_shared_object(path)
    except ElfError as exc:
        assert str(exc), "says what is wrong"
        return
    assert isinstance(library.defined_symbols, frozenset), "a typed result"
