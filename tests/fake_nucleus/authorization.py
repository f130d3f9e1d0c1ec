"""`accessControl` policies: may component C call operation O on resource R of service S.

Owns the nucleus's authorization rules for IPC, read straight from the component's own
configuration on every call (the nucleus reloads policies whenever `accessControl` changes):

    accessControl:
      aws.greengrass.ipc.mqttproxy:           # service
        "com.example.Lfv:mqttproxy:1":         # policy id
          operations: ["aws.greengrass#PublishToIoTCore"]   # or "*"
          resources: ["lfv/+/verdicts"]

Resource patterns follow nucleus `authorization/WildcardTrie.java` (2.6+, PR #1173):

- every service: `*` matches any run of characters, `/` included; a lone `*` matches everything;
  `${*}`, `${$}`, `${?}` are the literal characters; an unescaped `?` makes the policy invalid.
- `MQTT_STYLE` (mqttproxy) also honours `+` (one level) and `#` (the rest, parent level included)
  where they are valid MQTT wildcards, and treats them literally elsewhere (`a+b`).
- `STANDARD` (pubsub, everything else) treats `+` and `#` literally: a policy for `a/#`
  allows subscribing to the filter `a/#`, not publishing to `a/b`.

The requested resource is matched as a plain string, so a subscription filter `a/+` passes a
policy `a/*` or `a/+`. Pure functions; no I/O.
"""

from __future__ import annotations

import enum
import functools
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCESS_CONTROL",
    "MQTT_PROXY_SERVICE",
    "PUBSUB_SERVICE",
    "LookupPolicy",
    "Policy",
    "check",
    "iter_policies",
    "resource_matches",
]

logger = logging.getLogger(__name__)

ACCESS_CONTROL = "accessControl"
MQTT_PROXY_SERVICE = "aws.greengrass.ipc.mqttproxy"
PUBSUB_SERVICE = "aws.greengrass.ipc.pubsub"
ANY = "*"

_ESCAPE = re.compile(r"\$\{(.)\}")


class LookupPolicy(enum.Enum):
    """How resource patterns are read (nucleus `AuthorizationHandler.ResourceLookupPolicy`)."""

    STANDARD = "STANDARD"
    MQTT_STYLE = "MQTT_STYLE"


@dataclass(frozen=True, slots=True)
class Policy:
    """One parsed policy of a component for one IPC service."""

    policy_id: str
    operations: tuple[str, ...]
    resources: tuple[str, ...]


class _InvalidResourceError(ValueError):
    pass


def _translate(pattern: str, policy: LookupPolicy) -> str:
    """Regular expression source equivalent to one resource pattern."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        char = pattern[i]
        if char == "$" and pattern.startswith("${", i):
            escaped = _ESCAPE.match(pattern, i)
            if escaped is None or escaped.group(1) not in "*$?":
                msg = f"invalid escape in {pattern!r}: use ${{*}}, ${{$}} or ${{?}}"
                raise _InvalidResourceError(msg)
            out.append(re.escape(escaped.group(1)))
            i = escaped.end()
            continue
        if char == "?":
            msg = f"'?' in {pattern!r} is not a wildcard: write ${{?}}"
            raise _InvalidResourceError(msg)
        if char == "*":
            out.append(".*")
        elif policy is LookupPolicy.MQTT_STYLE and char == "#" and i == n - 1:
            if i == 0:
                out.append(".*")
            elif pattern[i - 1] == "/":
                # "abc/#" matches "abc/…" and the parent "abc" itself (WildcardTrie.isTerminalLevel)
                out[-1] = "(?:/.*)?"
            else:
                out.append(re.escape(char))
        elif (
            policy is LookupPolicy.MQTT_STYLE
            and char == "+"
            and (i == 0 or pattern[i - 1] == "/")
            and (i == n - 1 or pattern[i + 1] == "/")
        ):
            out.append("[^/]*")
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str, policy: LookupPolicy) -> re.Pattern[str]:
    return re.compile(_translate(pattern, policy), re.DOTALL)


def resource_matches(pattern: str, resource: str, policy: LookupPolicy) -> bool:
    """Whether a policy resource pattern allows `resource`.

    Raises:
        ValueError: the pattern is invalid (an unescaped `?` or a bad `${…}` escape).
    """
    if pattern == ANY:
        return True
    return _compile(pattern, policy).fullmatch(resource) is not None


def _as_strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _get_ci(mapping: Mapping[str, Any], key: str) -> Any:
    # Configuration keys are case-insensitive on the device (nucleus CaseInsensitiveString).
    wanted = key.lower()
    for name, value in mapping.items():
        if name.lower() == wanted:
            return value
    return None


def iter_policies(configuration: Mapping[str, Any], service: str) -> Iterator[Policy]:
    """The policies a component's configuration grants itself for `service`."""
    access = _get_ci(configuration, ACCESS_CONTROL)
    if not isinstance(access, Mapping):
        return
    policies = _get_ci(access, service)
    if not isinstance(policies, Mapping):
        return
    for policy_id, body in policies.items():
        if not isinstance(body, Mapping):
            continue
        yield Policy(
            policy_id=policy_id,
            operations=_as_strings(_get_ci(body, "operations")),
            resources=_as_strings(_get_ci(body, "resources")),
        )


def check(
    configuration: Mapping[str, Any],
    service: str,
    operation: str,
    resource: str,
    policy: LookupPolicy,
) -> bool:
    """Whether the component owning `configuration` may perform `operation` on `resource`."""
    for entry in iter_policies(configuration, service):
        if operation not in entry.operations and ANY not in entry.operations:
            continue
        try:
            if any(resource_matches(p, resource, policy) for p in entry.resources):
                return True
        except _InvalidResourceError as exc:
            # The nucleus refuses to load such a policy and logs why; it grants nothing.
            logger.warning("accessControl policy %s ignored: %s", entry.policy_id, exc)
    return False
