"""The transformers reward model: Qwen2.5-VL backbone + one linear head on the last real token."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from service.model.encoding import EncodedSample, collate


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position per row; right or left padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.to(torch.long) * positions).argmax(dim=-1)


class Qwen2_5_VLRewardModel(nn.Module):
    """Qwen2.5-VL with a scalar head reading the final hidden state of the last real token.

    ``forward`` returns one raw reward per row (no activation). The head may have a bias (kept when
    converting published checkpoints; it cancels in the pairwise loss).
    """

    def __init__(self, config: Qwen2_5_VLConfig, head_bias: bool = False):
        super().__init__()
        self.config = config
        self.model = Qwen2_5_VLModel(config)
        self.score = nn.Linear(config.text_config.hidden_size, 1, bias=head_bias)

    @property
    def device(self) -> torch.device:
        return self.score.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.score.weight.dtype

    def position_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
    ) -> torch.Tensor:
        """3-D M-RoPE positions that skip padding (so left padding and batching change nothing)."""
        positions, _ = self.model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        return positions

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden state of each row's last real token, shape [batch, hidden]."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self.position_ids(input_ids, attention_mask, mm_token_type_ids, image_grid_thw),
            pixel_values=None if pixel_values is None else pixel_values.to(self.dtype),
            image_grid_thw=image_grid_thw,
            use_cache=False,
        )
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return out.last_hidden_state[rows, last_token_index(attention_mask)]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw rewards, shape [batch]."""
        hidden = self.hidden_states(input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw)
        return self.score(hidden).squeeze(-1)

    @torch.inference_mode()
    def score_batch(
        self, samples: list[EncodedSample], padding_side: Literal["left", "right"] = "right"
    ) -> list[float]:
        """Score encoded samples as one padded batch; rewards in input order."""
        batch = collate(samples, self.config.text_config.pad_token_id, padding_side)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self(**batch).float().cpu().tolist()
