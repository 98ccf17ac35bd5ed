"""The same /classify requests to our server and to `vllm serve` (vLLM's own server, started with
--pooler-config '{"use_activation": false}') on the same tiny checkpoint: the same scores (<= 1e-4, our
transformers backend against vLLM's engine) and the same response keys, with use_activation false and true,
for templated `input` (one string and a list) and for the chat form with images."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import LiveServer, shape_image, uri

pytestmark = pytest.mark.slow  # starts vLLM's server (a minute on this CPU)

TOLERANCE = 1e-4
TEMPLATED = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\nIt is 4.<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
    "<|im_start|>assistant\nBlue, the colour of the sky on a clear day.<|im_end|>\n",
]
MESSAGES = [
    {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": uri(shape_image("green"))}},
            {"type": "text", "text": "What colour is the circle?"},
        ],
    },
    {"role": "assistant", "content": "Green."},
]

REQUESTS = {
    "one string": {"input": TEMPLATED[0]},
    "a list of strings": {"input": TEMPLATED},
    "messages with an image": {"messages": MESSAGES},
}


def _keys(body: dict) -> tuple:
    return sorted(body), sorted(body["data"][0]), sorted(body["usage"])


@pytest.mark.parametrize("use_activation", [False, True])
@pytest.mark.parametrize("name", list(REQUESTS))
def test_our_classify_answers_like_vllm_serve(name, use_activation, vllm_serve, hf_backend):
    body = {"model": str(vllm_serve.model), **REQUESTS[name], "use_activation": use_activation}
    theirs = httpx.post(vllm_serve.url + "/classify", json=body, timeout=120)
    assert theirs.status_code == 200, theirs.text
    with LiveServer(hf_backend) as live:
        ours = httpx.post(live.url + "/classify", json=body, timeout=120)
    assert ours.status_code == 200, ours.text
    theirs, ours = theirs.json(), ours.json()
    assert _keys(ours) == _keys(theirs)
    assert [d["index"] for d in ours["data"]] == [d["index"] for d in theirs["data"]]
    assert [d["num_classes"] for d in ours["data"]] == [d["num_classes"] for d in theirs["data"]]
    our_probs = [p for d in ours["data"] for p in d["probs"]]
    their_probs = [p for d in theirs["data"] for p in d["probs"]]
    assert our_probs == pytest.approx(their_probs, abs=TOLERANCE)
    if use_activation:
        assert all(0 < p < 1 for p in our_probs)
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
