"""Turns the conversations RLHF frameworks hold into the service's OpenAI-style ``messages``.

Frameworks keep images as PIL images, bytes or ``{"bytes", "path"}`` dicts (Hugging Face datasets'
image feature; the client's ``encode_image`` takes them all), inside content blocks (``{"type": "image",
"image": ...}``, TRL) or as ``<image>`` placeholders in the text (verl). The service takes ``image_url``
parts; this module is the one place that converts, so every adapter sends the same wire shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vlreward.client import encode_image

IMAGE_PLACEHOLDER = "<image>"


def image_part(image: Any) -> dict:
    return {"type": "image_url", "image_url": {"url": encode_image(image)}}


def content_parts(content: str | list[dict], images: Iterator[Any]) -> str | list[dict]:
    """One message's content for the wire. Image blocks without a payload (``{"type": "image"}``) take
    the next image from ``images``; text keeps its order around the images."""
    if isinstance(content, str):
        return content
    parts: list[dict] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            payload = block.get("image")
            if payload is None:
                payload = next(images, None)
                if payload is None:
                    raise ValueError("an image block has no image and no image is left in the images column")
            parts.append(image_part(payload))
        elif kind == "image_url":
            url = block["image_url"]["url"] if isinstance(block["image_url"], dict) else block["image_url"]
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise ValueError(f"unsupported content block type {kind!r}")
    return parts


def split_placeholders(text: str, images: Iterator[Any], placeholder: str = IMAGE_PLACEHOLDER) -> str | list[dict]:
    """Text with ``<image>`` placeholders as content parts, each placeholder replaced by the next image."""
    if placeholder not in text:
        return text
    pieces = text.split(placeholder)
    parts: list[dict] = []
    for index, piece in enumerate(pieces):
        if index:
            image = next(images, None)
            if image is None:
                raise ValueError(f"more {placeholder} placeholders than images")
            parts.append(image_part(image))
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def to_messages(conversation: list[dict], images: list[Any] | None = None) -> list[dict]:
    """OpenAI-style messages from a framework conversation. ``images`` fill image blocks that carry no
    payload and ``<image>`` placeholders, in order; images left over go before the first user message's
    text (TRL's rule for string prompts)."""
    pending = iter(images or [])
    messages = []
    for message in conversation:
        content = message.get("content") or ""
        if isinstance(content, str):
            content = split_placeholders(content, pending)
        else:
            content = content_parts(content, pending)
        messages.append({"role": message["role"], "content": content})
    leftover = list(pending)
    if leftover:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise ValueError("images were given but the conversation has no user message to put them in")
        text = first_user["content"]
        text_parts = [{"type": "text", "text": text}] if isinstance(text, str) else text
        first_user["content"] = [image_part(i) for i in leftover] + text_parts
    return messages


def with_steps(item: dict, separator: str | None) -> dict:
    """A /score item whose response (or last message's text) is split into ``steps`` at ``separator``
    (for a process model; empty pieces dropped, a text without one is one step). None: unchanged."""
    if separator is None:
        return item

    def split(text: str) -> list[str]:
        return [piece for piece in text.split(separator) if piece.strip()] or [text]

    if "messages" not in item:
        return {**{k: v for k, v in item.items() if k != "response"}, "steps": split(item["response"])}
    *earlier, last = item["messages"]
    if not isinstance(last.get("content"), str):
        return item
    return {**item, "messages": [*earlier, {"role": last["role"], "steps": split(last["content"])}]}


def against_reference(item: dict, reference: str) -> dict:
    """A ``/compare`` pair from a ``/score`` item: its response as A, ``reference`` (a reference answer) as
    B, the same prompt and images (``prompt`` form or ``messages`` ending with the assistant's turn)."""
    if "messages" in item:
        *prompt, last = item["messages"]
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise ValueError("the last message must be the assistant's text to compare it with a reference")
        return {"messages": prompt, "a": last["content"], "b": reference}
    if "response" not in item:
        raise ValueError("only a response (not steps) is compared with a reference")
    shared = {key: value for key, value in item.items() if key != "response"}
    return {**shared, "a": item["response"], "b": reference}
