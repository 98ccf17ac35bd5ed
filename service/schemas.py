"""Request and response shapes (pydantic). The Sample is the unit every part of vlreward scores."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from vlreward.service.reference import Normalize


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


PositiveJsonInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
"""An integer >= 1 as JSON Schema counts integers (``2.0`` is one), strict otherwise (no ``"2"``, no
``true``). The bound comes before the validator so that the schema states it as ``minimum``."""
SeedJsonInt = Annotated[int, Field(ge=0, lt=2**31), BeforeValidator(_integral)]
"""A seed: an integer in [0, 2^31) as JSON Schema counts integers."""

MIN_TIMEOUT_S = 1.0
"""The shortest deadline a request may ask for: below it a request would time out on the server's own
overhead (a 504 the client caused); the client can wait less on its side."""
MAX_TIMEOUT_S = 3600.0


def timeout_field() -> Any:
    """The ``timeout_s`` field of every scoring request (one declaration of its bounds)."""
    return Field(
        None,
        ge=MIN_TIMEOUT_S,
        le=MAX_TIMEOUT_S,
        description=f"Deadline for the whole request in seconds ({MIN_TIMEOUT_S:g} to the server's "
        "max_request_timeout_s, which /openapi.json shows as the maximum; 504 after it). Default: the server's "
        "request_timeout_s.",
    )


def model_field() -> Any:
    """The ``model`` field of every scoring request (one declaration of its meaning)."""
    return Field(
        None,
        description="Which served model scores the request (GET /v1/models lists them). Unset: the default model. "
        "With one model served any value is accepted (clients written against other servers send their own).",
    )


Aggregate = Literal["min", "last", "mean", "product"]


def aggregate_field() -> Any:
    """The ``aggregate`` field of every scoring request (process models)."""
    return Field(
        None,
        description="Process models: how an item's step scores become its score (min, last, mean or product; "
        "default: the checkpoint's). Other kinds refuse it.",
    )


def head_field() -> Any:
    """The ``head`` field of /score, /rank and /compare (multi-head models)."""
    return Field(
        None,
        description="Multi-head models: which head `scores` holds (GET /info lists a model's heads; default: the "
        "checkpoint's default head); `details[i].heads` holds every head's. Other models refuse it.",
    )


def normalize_field() -> Any:
    """The ``normalize`` field of /score and /rank."""
    return Field(
        None,
        description="`zscore`: (s - mean) / std with the model's reference statistics (GET /info shows them; "
        "`vlreward calibrate` computes them); `none`: raw scores. Default: the model's `normalize` setting. A "
        "normalised response names the statistics' `reference_version`.",
    )


def details_field() -> Any:
    """The ``details`` field of every scoring response (the model kind's extra outputs)."""
    return Field(
        None,
        description="The model kind's extra outputs per item, aligned with `scores` (absent for scalar models; "
        "each kind documents its keys; GET /v1/models shows a model's kind).",
    )


def _form(required: dict[str, str | list[str]], absent: tuple[str, ...] = ()) -> dict[str, Any]:
    """JSON Schema of one form of a request: these properties present with these JSON types, and
    ``absent`` ones absent or null."""
    properties = {name: {"type": t} for name, t in required.items()} | {name: {"type": "null"} for name in absent}
    return {"required": list(required), "properties": properties}


NOT_IMAGE_AND_IMAGES = {"not": _form({"image": "string", "images": "array"})}
"""JSON Schema of the rule "`image` or `images`, not both" (nulls count as absent)."""

LAST_MESSAGE_RULE = "The last message must be the assistant response being scored (a rule JSON Schema cannot state)."


class _Strict(BaseModel):
    """Unknown fields are errors: a typo such as ``respone`` must not silently score an empty text. Types
    are strict: ``true`` is no number and ``"1"`` no boolean (the schema says so; a lax model would accept
    what its schema refuses)."""

    model_config = ConfigDict(extra="forbid", strict=True)


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
    """One chat message in the OpenAI shape; the assistant response a process model judges may give its
    ``steps`` instead of ``content``."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                _form({"content": ["string", "array"]}, absent=("steps",)),
                {**_form({"steps": "array"}, absent=("content",)), "properties": {
                    "role": {"const": "assistant"}, "steps": {"type": "array"}, "content": {"type": "null"}}},
            ]
        }
    )  # fmt: skip

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    steps: list[str] | None = Field(
        None, min_length=1, description="The response's steps, in order (process models; instead of `content`)."
    )

    @model_validator(mode="after")
    def _content_or_steps(self) -> Message:
        if (self.content is None) == (self.steps is None):
            raise ValueError("give a message either `content` or (an assistant response) `steps`")
        if self.steps is not None and self.role != "assistant":
            raise ValueError("only an assistant message has `steps`")
        return self


class Sample(_Strict):
    """One conversation to score: either prompt/response(/images/system) or OpenAI-style messages.

    In the messages form the last message is the assistant response being judged.
    """

    # The schema states the forms the validator below enforces, so clients and fuzzers see the rules.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                _form({"prompt": "string", "response": "string"}, absent=("messages", "steps")),
                _form({"prompt": "string", "steps": "array"}, absent=("messages", "response")),
                _form({"messages": "array"}, absent=("prompt", "response", "steps", "images", "image", "system")),
            ],
            **NOT_IMAGE_AND_IMAGES,
        }
    )

    id: str | None = None
    prompt: str | None = None
    response: str | None = None
    steps: list[str] | None = Field(
        None, min_length=1, description="The response as its steps, in order (process models; instead of `response`)."
    )
    images: list[str] | None = None
    image: str | None = Field(default=None, description="Shorthand for a single image; not with `images`.")
    system: str | None = None
    messages: list[Message] | None = Field(None, min_length=1, description=LAST_MESSAGE_RULE)

    @model_validator(mode="after")
    def _one_form(self) -> Sample:
        prompt_fields = [
            n for n in ("prompt", "response", "steps", "images", "image", "system") if getattr(self, n) is not None
        ]
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
        if (self.response is None) == (self.steps is None):
            raise ValueError("give `response` or (for a process model) `steps`, one of them")
        if self.image is not None and self.images is not None:
            raise ValueError("give `image` or `images`, not both")
        return self

    def step_list(self) -> list[str] | None:
        """The response's steps (prompt form, or the last message's), None when it has none."""
        return self.steps if self.messages is None else self.messages[-1].steps

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


# ---------------------------------------------------------------------------------------------------
# HTTP requests and responses


class JudgeGenerateFields(_Strict):
    """The fields of a judge's generate mode (/score and /compare); other kinds refuse them."""

    mode: Literal["logits", "generate"] | None = Field(
        None,
        description="Judges: `logits` reads the verdict token in one forward pass; `generate` has the judge write "
        "a critique, then its verdict, parsed by the rule in its declaration. Default: the judge's declaration's.",
    )
    samples: PositiveJsonInt | None = Field(
        None, description="Generate mode: answers per question (pointwise: their mean; pairwise: the share of "
        "votes for A). Default 1; at most the server's judge_max_samples.",
    )  # fmt: skip
    temperature: float | None = Field(
        None, ge=0, le=2, description="Generate mode: sampling temperature (0: greedy). Default: 0 for one sample, "
        "1 for several.",
    )  # fmt: skip
    max_new_tokens: PositiveJsonInt | None = Field(
        None, description="Generate mode: tokens per answer (default: the judge's declaration's; at most the "
        "server's judge_max_new_tokens).",
    )  # fmt: skip
    seed: SeedJsonInt | None = Field(
        None, description="Generate mode: with a seed the same request gives the same answers "
        "(on the same backend and build).",
    )  # fmt: skip
    critique: bool | None = Field(
        None, description="Generate mode: true returns the judge's answers in `details[i].critiques` (422 in logits "
        "mode).",
    )  # fmt: skip


class ScoreRequest(JudgeGenerateFields):
    """POST /score."""

    model: str | None = model_field()
    items: list[Sample] = Field(description="Samples to score; scores come back in this order.")
    timeout_s: float | None = timeout_field()
    on_error: Literal["fail", "null"] = Field(
        "fail", description="`null`: a bad item gets a null score and an `errors` entry instead of failing the request."
    )
    truncate: Literal["none", "prompt_left"] = Field(
        "none", description="`prompt_left`: cut the prompt from the left to fit the token limit (never the response)."
    )
    aggregate: Aggregate | None = aggregate_field()
    response_as_step: bool | None = Field(
        None, description="Process models: score an item's `response` as its one step. Other kinds refuse it."
    )
    normalize: Normalize | None = normalize_field()
    head: str | None = head_field()


class ItemError(BaseModel):
    """Why one item got a null score (with ``on_error: "null"``)."""

    index: int
    type: str
    message: str
    param: str | None = None


class Usage(BaseModel):
    input_tokens: int = Field(description="Tokens scored, image tokens included.")
    images: int
    output_tokens: int | None = Field(None, description="Tokens a judge wrote in generate mode (absent otherwise).")


class ScoreResponse(BaseModel):
    model: str
    scores: list[float | None]
    details: list[dict[str, Any] | None] | None = details_field()
    reference_version: str | None = Field(None, description="The reference statistics `normalize` used.")
    usage: Usage
    errors: list[ItemError] | None = None


class _SharedPrompt(_Strict):
    """Responses to one prompt: ``prompt`` (+ images, system) or ``messages`` without the final assistant
    turn (the responses are), one of them."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                _form({"prompt": "string"}, absent=("messages",)),
                _form({"messages": "array"}, absent=("prompt", "images", "image", "system")),
            ],
            **NOT_IMAGE_AND_IMAGES,
        }
    )

    prompt: str | None = None
    messages: list[Message] | None = Field(
        None,
        min_length=1,
        description="The conversation without the final assistant turn (its last message must not be the "
        "assistant's: the responses are; a rule JSON Schema cannot state).",
    )
    images: list[str] | None = None
    image: str | None = None
    system: str | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> _SharedPrompt:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.messages is not None:
            if any(v is not None for v in (self.images, self.image, self.system)):
                raise ValueError("with `messages`, put images and the system prompt inside the messages")
            if not self.messages or self.messages[-1].role == "assistant":
                raise ValueError("`messages` must not end with an assistant turn: the responses are the candidates")
        if self.image is not None and self.images is not None:
            raise ValueError("give `image` or `images`, not both")
        return self

    def _candidates(self, responses: list[str | list[str]]) -> list[Sample]:
        """One Sample per response (a text, or a process model's steps) to the shared prompt and images."""
        if self.messages is not None:
            turns = self.messages
            return [Sample(messages=[*turns, Message(role="assistant", **_answer("content", r))]) for r in responses]
        shared = {"prompt": self.prompt, "images": self.images, "image": self.image, "system": self.system}
        return [Sample(**shared, **_answer("response", r)) for r in responses]


def _answer(text_field: str, response: str | list[str]) -> dict[str, Any]:
    """A candidate as the fields of its sample or message: its text, or its steps."""
    return {"steps": response} if isinstance(response, list) else {text_field: response}


class RankRequest(_SharedPrompt):
    """POST /rank: one prompt (+ images), several responses."""

    model: str | None = model_field()
    responses: list[str | Annotated[list[str], Field(min_length=1)]] = Field(
        min_length=1,
        description="The candidates: texts, or (process models) each candidate's list of steps.",
    )
    top_k: PositiveJsonInt | None = None
    aggregate: Aggregate | None = aggregate_field()
    timeout_s: float | None = timeout_field()
    normalize: Normalize | None = normalize_field()
    head: str | None = head_field()

    def candidates(self) -> list[Sample]:
        """One Sample per response."""
        return self._candidates(self.responses)


class RankResponse(BaseModel):
    model: str
    scores: list[float]
    details: list[dict[str, Any] | None] | None = details_field()
    ranking: list[int] = Field(description="Response indices best to worst (cut to top_k); ties keep input order.")
    best: int
    usage: Usage
    reference_version: str | None = Field(None, description="The reference statistics `normalize` used.")


class ComparePair(_SharedPrompt):
    """One /compare pair: a prompt (+ images), or messages without the final assistant turn, and two
    responses (texts, or for process models each response's steps)."""

    a: str | Annotated[list[str], Field(min_length=1)] = Field(description="Response A (or its steps).")
    b: str | Annotated[list[str], Field(min_length=1)] = Field(description="Response B (or its steps).")

    def samples(self) -> list[Sample]:
        """Response A and response B as Samples sharing the pair's prompt and images."""
        return self._candidates([self.a, self.b])


class CompareRequest(JudgeGenerateFields):
    """POST /compare: pairs of responses to one prompt each; which is better, as a probability."""

    model: str | None = model_field()
    pairs: list[ComparePair] = Field(min_length=1, description="Pairs to compare; results come back in this order.")
    debias: bool = Field(
        True,
        description="Judges: ask in both orders and average. A scalar or process model's P(A > B) = "
        "sigmoid(s_a - s_b) is exactly antisymmetric already.",
    )
    aggregate: Aggregate | None = aggregate_field()
    timeout_s: float | None = timeout_field()
    head: str | None = head_field()


class CompareResult(BaseModel):
    prob_a: float = Field(description="P(A is better than B).")
    verdict: Literal["a", "b", "tie"] = Field(description="a when prob_a > 0.5, b when < 0.5, else tie.")


class CompareResponse(BaseModel):
    model: str
    results: list[CompareResult]
    details: list[dict[str, Any] | None] | None = details_field()
    usage: Usage


class GetRewardRequest(BaseModel):
    """POST /get_reward: OpenRLHF's remote reward protocol (+ optional images per query)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = model_field()
    query: list[str] = Field(description="Chat-templated texts (prompt + response), special tokens included.")
    prompts: list[str] | None = None
    labels: list[Any] | None = None
    images: list[list[str]] | None = Field(
        None, description="Image references per query (extension); as many lists as queries."
    )
    aggregate: Aggregate | None = aggregate_field()
    timeout_s: float | None = timeout_field()

    @model_validator(mode="after")
    def _images_per_query(self) -> GetRewardRequest:
        if self.images is not None and len(self.images) != len(self.query):
            raise ValueError(f"`images` has {len(self.images)} entries for {len(self.query)} queries")
        return self


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, Any] = Field(default_factory=dict)


class ClassifyRequest(BaseModel):
    """POST /classify: vLLM's classification request (``vllm serve``'s /classify), for clients written
    against a vLLM reward server (verl's reward router among them). ``input``: already chat-templated
    text(s); or ``messages``: one conversation whose last message is the assistant response (images as
    ``image_url`` parts). Rewards are raw unless ``use_activation`` is true (then a sigmoid)."""

    model_config = ConfigDict(
        extra="ignore",  # vLLM's other options (padding, truncation, ...) are ignored
        strict=True,
        json_schema_extra={
            "oneOf": [
                _form({"input": ["string", "array"]}, absent=("messages",)),
                _form({"messages": "array"}, ("input",)),
            ]
        },
    )

    model: str | None = model_field()
    input: str | list[str] | None = Field(None, description="Chat-templated text, or a list of them.")
    messages: list[Message] | None = Field(None, min_length=1, description=LAST_MESSAGE_RULE)
    use_activation: bool | None = Field(None, description="true: sigmoid of the reward; default raw.")
    aggregate: Aggregate | None = aggregate_field()
    timeout_s: float | None = timeout_field()

    @model_validator(mode="after")
    def _one_form(self) -> ClassifyRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of `input` (templated text) and `messages`")
        if self.messages is not None:
            try:
                self.sample()
            except ValidationError as exc:
                raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return self

    def sample(self) -> Sample:
        """The conversation of the messages form, as the Sample it scores."""
        return Sample(messages=self.messages)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input or [])


class ClassifyData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = 0
    prompt_tokens_details: dict | None = None
    completion_tokens_details: dict | None = None


class ClassifyResponse(BaseModel):
    """vLLM's classification response: ``data[i].probs[0]`` is the reward."""

    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassifyData]
    usage: ClassifyUsage


class ModelCard(BaseModel):
    """One served model in the OpenAI models list (with vlreward's kind and backend)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlreward"
    kind: str = Field(description="The model kind (scalar, ...): what `scores` means and which `details` it returns.")
    backend: str
    default: bool = Field(description="Requests without `model` go to this one.")
    ready: bool


class ModelList(BaseModel):
    """GET /v1/models, in OpenAI's shape."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
