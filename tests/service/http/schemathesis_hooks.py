"""schemathesis hooks for the fuzz test (loaded through SCHEMATHESIS_HOOKS).

Two request rules cannot be stated in JSON Schema, so the published schema states them in words:
the last message of a conversation to score is the assistant's (and, in /rank and /compare's pairs, is
not), and
/get_reward's ``images`` has one list per query. Positive cases that break them are dropped here, so
the positive-data check only expects acceptance of what the schema *and* its words allow; negative
cases are kept as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _last_role(messages: Any) -> str | None:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("role")
    return None


def follows_unstated_rules(path: str, body: Any) -> bool:
    """Whether a body keeps the rules the schema can only state in words."""
    if not isinstance(body, dict):
        return True
    if path == "/score":
        items = body.get("items")
        samples = items if isinstance(items, list) else []
    elif path == "/classify":
        samples = [body]
    elif path == "/rank":
        return body.get("messages") is None or _last_role(body["messages"]) != "assistant"
    elif path == "/compare":
        pairs = body.get("pairs") if isinstance(body.get("pairs"), list) else []
        return all(not isinstance(p, dict) or p.get("messages") is None or _last_role(p["messages"]) != "assistant"
                   for p in pairs)  # fmt: skip
    elif path == "/get_reward":
        images, query = body.get("images"), body.get("query")
        return images is None or not isinstance(query, list) or len(images) == len(query)
    else:
        return True
    return all(
        not isinstance(s, dict) or s.get("messages") is None or _last_role(s["messages"]) == "assistant"
        for s in samples
    )


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    meta = case._meta
    if meta is not None and meta.generation.mode.is_negative:
        return True
    return follows_unstated_rules(case.operation.path, case.body)
