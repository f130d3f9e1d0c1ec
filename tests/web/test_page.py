"""The live page in a real headless browser, beside `lfv-edge serve` on a real mosquitto.

Twenty demo-line parts are published over MQTT; the page (already open, on its event stream)
shows twenty entries with their thumbnails; a click opens one with its overlay and reply.
Screenshots go to $LFV_EDGE_SCREENSHOTS when set (to look at them), else the test's folder.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lfv_edge.demo.embedded import embedded_package
from tests.mqtt.conftest import Broker, Peer, free_port
from tests.web.conftest import (
    WAIT_S,
    Live,
    Process,
    body_request,
    http_get,
    jpeg,
    part_rgb,
    screenshot_dir,
    wait_http,
)

pytestmark = pytest.mark.browser


def _serve(broker: Broker, topic: str, port: int) -> list[str]:
    return [
        "serve", "--model", str(embedded_package()), "--broker", broker.url,
        "--requests-topic", f"{topic}/requests", "--results-topic", f"{topic}/results",
        "--client-id", f"web-{uuid.uuid4().hex[:8]}", "--queue-size", "32",
        "--stats-interval", "0", "--http", f"127.0.0.1:{port}",
    ]  # fmt: skip


def _wait(driver: Any, condition: Callable[[Any], object], what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message=what)


def _loaded_thumbnails(driver: Any) -> int:
    count: int = driver.execute_script(
        "return [...document.querySelectorAll('#grid img.thumb')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )
    return count


def _mean(png: Path) -> float:
    image = cv2.imread(str(png))
    assert image is not None, f"{png} is a readable PNG"
    return float(image.mean())


def _colour_share(png: Path, bgr: tuple[int, int, int], tolerance: int = 40) -> float:
    image = cv2.imread(str(png))
    assert image is not None, f"{png} is a readable PNG"
    distance = np.abs(image.astype(np.int16) - np.array(bgr, dtype=np.int16)).max(axis=2)
    return float((distance <= tolerance).mean())


def test_twenty_parts_appear_live_with_thumbnails_and_one_opens_with_its_overlay(
    broker: Broker,
    launch: Callable[[list[str]], Process],
    browser: Any,
    part_requests: list[bytes],
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    # given serve with the web view, and the page open on its live stream
    topic = f"lfvtest/web/{uuid.uuid4().hex[:8]}"
    port = free_port()
    serve = launch(_serve(broker, topic, port))
    wait_http(port, serve, "/readyz")
    browser.get(f"http://127.0.0.1:{port}/")
    _wait(browser, lambda d: d.find_element(By.ID, "live").text == "live", "the page is live")
    peer = Peer(broker.port).connect(f"{topic}/results")
    try:
        # when twenty parts are published
        for payload in part_requests:
            peer.publish(f"{topic}/requests", payload)
        replies = [m.json() for m in peer.wait_for(20, f"{topic}/results")]
    finally:
        peer.close()
    # then twenty entries appear without a reload, each with its thumbnail loaded
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 20,
          "20 cards")  # fmt: skip
    _wait(browser, lambda d: _loaded_thumbnails(d) == 20, "20 thumbnails loaded")
    cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card")
    texts = " ".join(card.text for card in cards)
    assert all(f"part-{i:02d}" in texts for i in range(20)), f"every part is listed: {texts}"
    anomalous = sum(r["DetectAnomalyResult"]["IsAnomalous"] for r in replies)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card.anomalous")) == anomalous, (
        "the page marks exactly the anomalous replies"
    )
    _wait(browser, lambda d: d.find_element(By.ID, "c-answered").text == "20", "counter at 20")
    folder = screenshot_dir(tmp_path)
    page_png = folder / "web-page.png"
    browser.save_screenshot(str(page_png))
    # the screenshot shows the page: mostly light background, dark header, red ANOMALY marks
    assert _colour_share(page_png, (246, 244, 243), 12) > 0.2, "the page's background"
    assert _colour_share(page_png, (55, 41, 31), 12) > 0.02, "the dark header bar"
    assert _colour_share(page_png, (38, 38, 220), 30) > 0.001, "red anomaly marks"

    # when one anomalous entry is clicked
    first = browser.find_element(By.CSS_SELECTOR, "#grid .card.anomalous")
    first.click()
    _wait(browser, lambda d: d.find_element(By.ID, "detail").is_displayed(), "the detail view")
    _wait(browser,
          lambda d: d.execute_script("const i = document.getElementById('detail-overlay');"
                                     "return i.complete && i.naturalWidth > 0;"),
          "the overlay loaded")  # fmt: skip
    # then it shows its overlay, original and the reply as published
    reply = json.loads(browser.find_element(By.ID, "detail-reply").text)
    assert reply["RequestId"] in first.text, "the detail is the clicked entry's"
    assert reply["DetectAnomalyResult"]["IsAnomalous"] is True, reply
    original_ok = browser.execute_script(
        "const i = document.getElementById('detail-original'); return i.naturalWidth > 0;"
    )
    assert original_ok, "the original picture loaded"
    detail_png = folder / "web-detail.png"
    browser.save_screenshot(str(detail_png))
    page_mean, detail_mean = (_mean(png) for png in (page_png, detail_png))
    assert detail_mean < page_mean - 15, "the page is dimmed behind the detail sheet"

    # and /metrics, parsed by prometheus_client, agrees with the twenty replies
    families = {
        f.name: f for f in text_string_to_metric_families(http_get(port, "/metrics").body.decode())
    }
    results = {s.labels["result"]: s.value for s in families["lfv_edge_replies"].samples
               if s.name == "lfv_edge_replies_total"}  # fmt: skip
    assert results == {"anomalous": anomalous, "normal": 20 - anomalous, "error": 0}, results
    received = families["lfv_edge_requests_received"].samples[0].value
    assert received == 20, f"20 requests received, got {received}"
    assert serve.terminate() == 0, f"serve stops cleanly:\n{serve.text()}"


def test_hostile_request_ids_and_metadata_are_shown_as_text(
    live: Live,
    browser: Any,
) -> None:
    from selenium.webdriver.common.by import By

    # given the page open on a service's view
    browser.get(f"http://127.0.0.1:{live.port}/")
    _wait(browser, lambda d: d.find_element(By.ID, "live").text == "live", "the page is live")
    title = browser.title
    # when a request's id and metadata carry markup and script
    hostile = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="x"</script>'
    payload = json.loads(body_request(hostile, jpeg(part_rgb(3))))
    payload["Metadata"] = {"Note": "</pre><svg onload=\"document.title='svg'\">"}
    live.transport.deliver(json.dumps(payload).encode())
    live.wait_listed(1)
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 1, "a card")
    card = browser.find_element(By.CSS_SELECTOR, "#grid .card")
    card.click()
    _wait(browser, lambda d: d.find_element(By.ID, "detail").is_displayed(), "the detail view")
    # then they are shown as text, and nothing of them ran or became an element
    assert "<img src=x" in card.text, card.text
    assert "</pre><svg" in browser.find_element(By.ID, "detail-reply").text
    assert browser.title == title, "no injected script ran"
    injected = browser.execute_script(
        "return document.querySelectorAll('img[src=\"x\"], svg, #grid script, #detail script')"
        ".length"
    )
    assert injected == 0, "no element was made from the data"
