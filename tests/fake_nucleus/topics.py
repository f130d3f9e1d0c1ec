"""MQTT topic filters: which subscriptions a published topic reaches.

Owns two matchers, because the nucleus has two:

- `iot_core_filter_matches`: MQTT 3.1.1 §4.7 as AWS IoT Core applies it to cloud messages
  (`a/#` also matches `a`).
- `local_filter_matches`: the nucleus's local pub/sub `SubscriptionTrie` (nucleus
  `builtin/services/pubsub/SubscriptionTrie.java`): levels come from Java's `String.split("/")`,
  which drops trailing empty levels, and `#` needs at least one level (`a/#` does not match `a`).

Plus the publish-side checks both services apply. Pure functions; no I/O.
"""

from __future__ import annotations

__all__ = [
    "has_mqtt_wildcard",
    "iot_core_filter_matches",
    "is_wildcard_filter",
    "local_filter_matches",
]


def has_mqtt_wildcard(topic: str) -> bool:
    """True if `topic` contains `+` or `#` anywhere (the nucleus MqttClient's publish check)."""
    return "+" in topic or "#" in topic


def _java_split(topic: str) -> list[str]:
    # Java's split drops trailing empty strings ("a/b/" -> [a, b]); the trie is built on that.
    levels = topic.split("/")
    while len(levels) > 1 and levels[-1] == "":
        levels.pop()
    return levels


def is_wildcard_filter(topic: str) -> bool:
    """`SubscriptionTrie.isWildcard`: a whole `+` level, or `#` as the last level.

    Decides the default receive mode of a local subscription without one.
    """
    levels = _java_split(topic)
    return any(
        level == "+" or (level == "#" and index == len(levels) - 1)
        for index, level in enumerate(levels)
    )


def local_filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether a local pub/sub subscription to `topic_filter` receives a publish on `topic`."""
    filter_levels = _java_split(topic_filter)
    topic_levels = _java_split(topic)
    for index, level in enumerate(filter_levels):
        if level == "#":
            # The trie hands a '#' node the rest of the topic only when a level is left for it.
            return index < len(topic_levels)
        if index >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def iot_core_filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether an MQTT subscription to `topic_filter` receives a message on `topic` (MQTT 3.1.1)."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    # §4.7.2: wildcards at the first level do not match topics starting with '$'.
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return index == len(filter_levels) - 1  # '#' also matches the parent level
        if index >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)
