"""Request and response shapes (pydantic). The Sample is the unit every part of vlreward scores."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    """Unknown fields are errors: a typo such as ``respone`` must not silently score an empty text."""

    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """A text part of an OpenAI-style message."""

    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    """The image reference of an ``image_url`` part (data URI, base64, URL or path)."""

    url: str
    detail: str | None = None


class ImagePart(_Strict):
    """An image part of an OpenAI-style message."""

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Strict):
    """One chat message in the OpenAI shape."""

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class Sample(_Strict):
    """One conversation to score: either prompt/response(/images/system) or OpenAI-style messages.

    In the messages form the last message is the assistant response being judged.
    """

    id: str | None = None
    prompt: str | None = None
    response: str | None = None
    images: list[str] | None = None
    image: str | None = Field(default=None, description="Shorthand for a single image; not with `images`.")
    system: str | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Sample:
        prompt_fields = [n for n in ("prompt", "response", "images", "image", "system") if getattr(self, n) is not None]
        if self.messages is not None:
            if prompt_fields:
                raise ValueError(f"give either `messages` or prompt/response fields, not both (got {prompt_fields})")
            if not self.messages:
                raise ValueError("`messages` is empty")
            if self.messages[-1].role != "assistant":
                raise ValueError("the last message must be the assistant response being scored")
            return self
        if self.prompt is None:
            raise ValueError("missing `prompt` (or give `messages`)")
        if self.response is None:
            raise ValueError("missing `response`")
        if self.image is not None and self.images is not None:
            raise ValueError("give `image` or `images`, not both")
        return self

    def image_refs(self) -> list[str]:
        """The sample's image references in the order they appear in the conversation."""
        if self.messages is None:
            if self.image is not None:
                return [self.image]
            return list(self.images or [])
        refs = []
        for message in self.messages:
            if isinstance(message.content, list):
                refs += [p.image_url.url for p in message.content if isinstance(p, ImagePart)]
        return refs

    def image_params(self) -> list[str]:
        """Field paths of the image references, parallel to :meth:`image_refs` (for error messages)."""
        if self.messages is None:
            if self.image is not None:
                return ["image"]
            return [f"images[{i}]" for i in range(len(self.images or []))]
        params = []
        for m, message in enumerate(self.messages):
            if isinstance(message.content, list):
                params += [
                    f"messages[{m}].content[{p}].image_url.url"
                    for p, part in enumerate(message.content)
                    if isinstance(part, ImagePart)
                ]
        return params
