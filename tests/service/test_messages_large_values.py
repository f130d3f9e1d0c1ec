"""Large base64 values (`Body`, `Frame.Data`) are cut out before JSON parsing: same results.

messages.py decodes a large value straight from the payload instead of through json.loads
and a str copy. Whatever the payload, the request (or the error code) must be exactly what
parsing the whole payload gives.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from lfv_edge.errors import InputError
from lfv_edge.inspection.pipeline import EncodedImage, RawFrame
from lfv_edge.service import messages

BIG = bytes(range(256)) * 600  # 150 KB: above the cut threshold once base64-encoded
BIG_B64 = base64.b64encode(BIG).decode()
OTHER_B64 = base64.b64encode(b"\x89PNG" + BIG[:100_000]).decode()
FRAME = np.arange(300 * 200 * 3, dtype=np.uint32).astype(np.uint8).reshape(200, 300, 3)
FRAME_B64 = base64.b64encode(FRAME.tobytes()).decode()


def _parse(payload: bytes) -> messages.Request | str:
    try:
        return messages.parse_request(payload, image_roots=(), max_payload_bytes=64 << 20)
    except InputError as exc:
        return exc.code


def _frame(data: str) -> dict[str, object]:
    return {"Width": 300, "Height": 200, "Encoding": "rgb8", "Data": data}


def test_a_plain_large_body_is_cut_out_and_decoded_exactly() -> None:
    # given
    payload = json.dumps({"RequestId": "r1", "Body": BIG_B64}).encode()
    # when
    _, cut = messages._load_request_json(payload)
    request = _parse(payload)
    # then
    assert cut is not None, "a plain large Body takes the cut path"
    assert isinstance(request, messages.Request), f"parsed: {request}"
    assert request.source == EncodedImage(BIG), "the bytes are the base64-decoded Body"
    assert request.request_id == "r1", "the rest of the request is parsed as usual"


def test_a_large_frame_is_cut_out_and_decoded_exactly() -> None:
    # given
    payload = json.dumps({"RequestId": "f", "Frame": _frame(FRAME_B64)}).encode()
    # when
    request = _parse(payload)
    # then
    assert isinstance(request, messages.Request), f"parsed: {request}"
    assert isinstance(request.source, RawFrame), "a raw frame"
    assert np.array_equal(request.source.pixels, FRAME), "the pixels are the decoded Data"


CASES = {
    "compact separators": {"RequestId": "a", "Body": BIG_B64},
    "key after the body": {"Body": BIG_B64, "RequestId": "b", "Metadata": {"k": 1}},
    "RequestId is the word Body": {"RequestId": "Body", "Body": BIG_B64},
    "Metadata has a large Body first": {"Metadata": {"Body": OTHER_B64}, "Body": BIG_B64},
    "Metadata has a large Data": {"Metadata": {"Data": OTHER_B64}, "Frame": _frame(FRAME_B64)},
    "Metadata key quoting Body": {"Metadata": {'x"Body': OTHER_B64}, "Body": BIG_B64},
    "the cut placeholder's prefix in Metadata": {"Metadata": {"m": "\0lfv-cut-"}, "Body": BIG_B64},
    "invalid base64 in a large body": {"Body": BIG_B64[:-5] + "!!!!="},
    "large body and a frame": {"Body": BIG_B64, "Frame": _frame(FRAME_B64)},
    "frame of the wrong size": {"Frame": {**_frame(FRAME_B64), "Width": 301}},
    "large body of the wrong type elsewhere": {"Body": 3, "Metadata": {"Body": BIG_B64}},
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": "), (" ,", " : ")])
def test_cut_and_full_parsing_agree(
    name: str, separators: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a payload, and what parsing it in full gives
    payload = json.dumps(CASES[name], separators=separators).encode()
    expected = _parse_in_full(payload, monkeypatch)
    # when
    got = _parse(payload)
    # then
    assert _summary(got) == _summary(expected), f"{name}: {_summary(got)} != {_summary(expected)}"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"Body":"' + BIG_B64[:1000].encode() + b"\\/" + BIG_B64[1000:].encode() + b'"}',
        b'{"Body":"' + BIG_B64.encode() + b'", "Body":"' + OTHER_B64.encode() + b'"}',
        b'{"Body":"' + BIG_B64.encode() + b'"',
        b'{"Body":"' + BIG_B64.encode() + b'\xff"}',
        b'{"Body":"' + BIG_B64.encode() + b'\n"}',
        b'{"Body":"' + BIG_B64.encode() + b'", "Metadata": {"x": NaN}}',
    ],
    ids=["escaped slash", "duplicate Body", "unterminated", "invalid UTF-8", "raw newline", "NaN"],
)
def test_awkward_large_payloads_are_parsed_or_refused_with_the_same_code(
    payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    expected = _parse_in_full(payload, monkeypatch)
    # when
    got = _parse(payload)
    # then
    assert _code(got) == _code(expected), f"{_summary(got)} != {_summary(expected)}"
    if isinstance(expected, messages.Request):
        assert _summary(got) == _summary(expected), "the same request"


def _parse_in_full(payload: bytes, monkeypatch: pytest.MonkeyPatch) -> messages.Request | str:
    """What parse_request gives without the cut: the whole payload through json.loads."""
    with monkeypatch.context() as patch:
        patch.setattr(messages, "_CUT_MIN_BYTES", 1 << 62)  # no value is large enough to cut
        return _parse(payload)


def _code(result: messages.Request | str) -> str:
    return result if isinstance(result, str) else "ok"


def _summary(result: messages.Request | str) -> object:
    if isinstance(result, str):
        return result
    source = result.source
    data = source.data if isinstance(source, EncodedImage) else None
    pixels = source.pixels.tobytes() if isinstance(source, RawFrame) else None
    return (result.request_id, data, pixels, result.metadata)
