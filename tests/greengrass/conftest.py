"""Start `com.lfvedge.Inspector` as the nucleus would: the recipe's Run line, in a subprocess,
against a `FakeNucleus` speaking the real IPC protocol (the component uses the real awsiotsdk).

    with start_component(configuration_overrides) as component:
        component.nucleus.publish_local("lfv/requests", payload)
        component.nucleus.wait_for_local_publish("lfv/results")

The recipe's variables are interpolated with test folders: `{work:path}` holds a `.venv` link
to the project venv (the Install step's product), and the demo model's unarchive folder holds
a controllable classifier package built by our model builder.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from lfv_edge.inspection.imaging import encode_png
from lfv_edge.modelbuild.networks import red_mean_for_probability
from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.service.config import merge_config
from tests.conftest import PackageFactory
from tests.fake_nucleus import FakeNucleus
from tests.greengrass.recipes import (
    MODEL_COMPONENT,
    REPO,
    default_configuration,
    inspector_recipe_path,
    interpolate,
    load_recipe,
    manifest_for,
    script_of,
)
from tests.imagefiles import solid_rgb

COMPONENT = "com.lfvedge.Inspector"
THING = "line3-camera"
STARTUP_S = 60.0  # imports, model load and IPC set-up; usually ~2 s
WAIT_S = 10.0
MODEL_SPEC = PackageSpec(image_width=64, image_height=64, threshold=0.5)
OTHER_MODEL_SPEC = PackageSpec(image_width=96, image_height=64, threshold=0.5, seed=99)
DEMO_FOLDER = "lfv_demo_greengrass_model_component"


def request(request_id: str, probability: float, *, side: int = 64) -> bytes:
    """A JSON request whose image the controllable classifier scores at `probability`."""
    red = round(red_mean_for_probability(probability) * 255)
    png = encode_png(solid_rgb(side, side, (red, 90, 60)))
    body = {"RequestId": request_id, "Body": base64.b64encode(png).decode()}
    return json.dumps(body).encode()


def image_bytes(probability: float) -> bytes:
    """A bare PNG (no JSON) scored at `probability`."""
    red = round(red_mean_for_probability(probability) * 255)
    return encode_png(solid_rgb(64, 64, (red, 90, 60)))


def reply(payload: bytes | None) -> dict[str, Any]:
    """A reply payload as JSON."""
    assert payload is not None, "a binary reply"
    decoded = json.loads(payload)
    assert isinstance(decoded, dict), "a reply is a JSON object"
    return decoded


class OutputLines:
    """A process's stdout and stderr lines, read by two threads; waits use a Condition."""

    def __init__(self) -> None:
        self._lines: list[tuple[str, str]] = []  # (stream, line)
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []

    def follow(self, stream: str, pipe: IO[bytes]) -> None:
        def read() -> None:
            for raw in pipe:
                with self._changed:
                    self._lines.append((stream, raw.decode(errors="replace").rstrip("\n")))
                    self._changed.notify_all()
            pipe.close()

        thread = threading.Thread(target=read, name=f"component-{stream}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def text(self) -> str:
        with self._changed:
            return "\n".join(f"[{stream}] {line}" for stream, line in self._lines)

    def lines(self, stream: str | None = None) -> list[str]:
        with self._changed:
            return [line for name, line in self._lines if stream is None or name == stream]

    def wait_for(self, pattern: str, timeout_s: float = WAIT_S) -> str:
        """The first line matching the regular expression `pattern` (waiting for it)."""
        regex = re.compile(pattern)
        found: list[str] = []

        def ready() -> bool:
            found.extend(line for _, line in self._lines if regex.search(line))
            return bool(found)

        with self._changed:
            if not self._changed.wait_for(ready, timeout_s):
                pytest.fail(f"no output line matched {pattern!r} in {timeout_s} s:\n{self.text()}")
        return found[0]

    def join(self, timeout_s: float = WAIT_S) -> None:
        for thread in self._threads:
            thread.join(timeout_s)


@dataclass
class Component:
    """The component process and the fake nucleus it talks to."""

    process: subprocess.Popen[bytes]
    nucleus: FakeNucleus
    command: str
    env: dict[str, str]
    output: OutputLines = field(default_factory=OutputLines)

    def logs(self) -> str:
        """Everything the component wrote so far (for assertion messages)."""
        return self.output.text()

    def exit_code(self, timeout_s: float = WAIT_S) -> int:
        """Wait for the process to end."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the component did not exit within {timeout_s} s:\n{self.logs()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


def recipe_environment(work: Path, demo_artifacts: Path, root: Path) -> dict[str, str]:
    """Values for the recipe variables our lifecycle uses."""
    return {
        "work:path": str(work),
        "kernel:rootPath": str(root),
        "artifacts:path": str(root / "packages" / "artifacts" / COMPONENT / "0"),
        f"{MODEL_COMPONENT}:artifacts:decompressedPath": str(demo_artifacts),
    }


@pytest.fixture
def model_artifacts(make_package: PackageFactory, tmp_path: Path) -> Path:
    """The DemoModel's unarchive folder, holding a controllable classifier package."""
    folder = tmp_path / "artifacts-unarchived" / MODEL_COMPONENT / "1.0.0"
    folder.mkdir(parents=True)
    make_package.copy(MODEL_SPEC, dest=folder / DEMO_FOLDER)
    return folder


StartComponent = Callable[..., contextlib.AbstractContextManager[Component]]


@pytest.fixture
def start_component(tmp_path: Path, model_artifacts: Path) -> StartComponent:
    """`start_component(overrides={...}, wait_running=True)`: the recipe's Run under a fake nucleus."""
    recipe = load_recipe(inspector_recipe_path())
    defaults = default_configuration(recipe)
    lifecycle = manifest_for(recipe, "amd64")["Lifecycle"]
    work = tmp_path / "work" / COMPONENT
    work.mkdir(parents=True)
    (work / ".venv").symlink_to(REPO / ".venv")  # what the Install step builds
    variables = recipe_environment(work, model_artifacts, tmp_path / "greengrass")

    @contextlib.contextmanager
    def start(
        overrides: Mapping[str, Any] | None = None, *, wait_running: bool = True
    ) -> Iterator[Component]:
        configuration = merge_config(copy.deepcopy(defaults), overrides or {})
        command = interpolate(script_of(lifecycle["Run"]), variables)
        setenv = {
            name: interpolate(value, variables) for name, value in lifecycle["Setenv"].items()
        }
        with FakeNucleus(
            COMPONENT,
            configuration=configuration,
            default_configuration=defaults,
            thing_name=THING,
        ) as nucleus:
            env = {**os.environ, **setenv, **nucleus.environ()}
            # The nucleus runs each lifecycle script with `sh -c`, cwd = {work:path}.
            process = subprocess.Popen(
                ["sh", "-c", command],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            component = Component(process, nucleus, command, env)
            assert process.stdout is not None, "piped"
            assert process.stderr is not None, "piped"
            component.output.follow("stdout", process.stdout)
            component.output.follow("stderr", process.stderr)
            try:
                if wait_running:
                    try:
                        nucleus.wait_for_state("RUNNING", STARTUP_S)
                    except TimeoutError:
                        pytest.fail(f"the component never reported RUNNING:\n{component.logs()}")
                yield component
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(WAIT_S)
                component.output.join()

    return start
