"""The exception tree of lfv-edge. Every error we raise is one of these.

    LfvEdgeError
    ├── ConfigError          a configuration value is wrong; names the key path
    ├── ModelPackageError    a model package cannot be used; names the file and the problem
    │   ├── UnsupportedModelError   a graph or stage type we do not run; names the type
    │   └── DeviceError             the requested device cannot work; says exactly why
    ├── RuntimeProvisionError       the CPU libdlr.so could not be fetched or verified
    ├── InputError           a request or image is unusable; carries a stable error code
    ├── InferenceError       the model failed while running
    ├── TransportError       publish/subscribe failed
    ├── CaptureError         a camera or video cannot be opened or read (the source reconnects)
    └── BuildError           a test model, package or the component cannot be built; says why

`InputError.code` values are part of the wire contract (see messages.py and the README).
"""

from __future__ import annotations


class LfvEdgeError(Exception):
    """Base of every error lfv-edge raises on purpose."""


class ConfigError(LfvEdgeError):
    """A configuration value is missing, unknown or of the wrong type.

    `key` is the key path the error is about (`queue.size`, `mqtt.qos`), when there is one:
    tools and the Greengrass validation answer can point at it without parsing the text.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ModelPackageError(LfvEdgeError):
    """A model package is missing, malformed, or would make DLR misbehave."""


class UnsupportedModelError(ModelPackageError):
    """The package uses a graph or stage type that lfv-edge does not run."""


class DeviceError(ModelPackageError):
    """The requested inference device cannot be used with this package on this machine."""


class RuntimeProvisionError(LfvEdgeError):
    """The CPU DLR runtime could not be fetched, verified or found."""


class InputError(LfvEdgeError):
    """A request or an image cannot be processed; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InferenceError(LfvEdgeError):
    """The runtime failed while running a loaded model."""


class TransportError(LfvEdgeError):
    """A message could not be published or a subscription could not be made."""


class CaptureError(LfvEdgeError):
    """A capture source cannot open or read its camera, stream or video file."""


class BuildError(LfvEdgeError):
    """A model, package or the Greengrass component could not be built; the message says why."""
