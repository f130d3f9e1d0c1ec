"""The component with its web view: /readyz answers 503 while a deployment's new model loads.

The real component process under the fake nucleus; `model.probe` makes the new model's load
take a second or more (it runs the model once in a child process first), long enough to see
the not-ready window from outside, as an orchestrator polling /readyz would.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory
from tests.greengrass.conftest import StartComponent
from tests.mqtt.conftest import free_port

OTHER = PackageSpec(image_width=96, image_height=64, threshold=0.5, seed=77)


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_readyz_is_503_while_a_deployment_loads_a_new_model(
    start_component: StartComponent, make_package: PackageFactory, tmp_path: Path
) -> None:
    # given the component with its web view, ready
    other = make_package.copy(OTHER, dest=tmp_path / "plant-models" / "parts")
    port = free_port()
    with start_component({"http": {"listen": f"127.0.0.1:{port}"}}) as component:
        assert _get(port, "/readyz") == (200, b"ready\n"), component.logs()
        seen: list[tuple[int, bytes]] = []
        done = threading.Event()

        def poll() -> None:  # an orchestrator's probe, every 20 ms
            while not done.is_set():
                seen.append(_get(port, "/readyz"))
                time.sleep(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        # when a deployment points model.path at another package (probed before it is used)
        component.nucleus.update_configuration({"model": {"path": str(other), "probe": "true"}})
        component.output.wait_for(r"inspector replaced: model parts", timeout_s=60)
        done.set()
        poller.join(10)
        # then /readyz said 503 while it loaded, 200 before and after, and serves the new one
        statuses = [status for status, _ in seen]
        assert 503 in statuses, f"not ready during the load: {statuses}\n{component.logs()}"
        reasons = {body for status, body in seen if status == 503}
        assert reasons == {b"not ready: a new model is loading\n"}, reasons
        assert statuses[0] == 200, "ready before the deployment's update was applied"
        assert _get(port, "/readyz") == (200, b"ready\n"), "ready with the new model"
        status, body = _get(port, "/api/model")
        assert status == 200, body[:300]
        assert b'"Name":"parts"' in body, body[:300]
