"""CLIP text tower of Stable Diffusion v1.x (OpenAI ViT-L/14 text transformer).

The module tree mirrors the checkpoint: `model.state_dict()` keys are the checkpoint keys with
`CHECKPOINT_PREFIX` removed (`embeddings.token_embedding.weight`,
`encoder.layers.0.self_attn.q_proj.weight`, ..., `final_layer_norm.bias`), so a checkpoint loads
with a plain `load_state_dict` and no rename table.

SD v1.x conditions the UNet on the last hidden state after `final_layer_norm` for all 77
positions, computed with a causal mask and no padding mask (padding is the end token, 49407).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd_core.config import CLIPConfig

CHECKPOINT_PREFIX = "cond_stage_model.transformer.text_model."


def quick_gelu(x: Tensor) -> Tensor:
    """The sigmoid approximation of GELU that OpenAI's CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


# Activation names as spelled in CLIP configs; CLIPConfig.activation picks one.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class CLIPEmbeddings(nn.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.max_positions, config.width)
        # Persistent because the original checkpoint stores it (key parity). The forward pass
        # does not read it: some fine-tuned checkpoints carry a damaged copy (float, off by a
        # fraction), and positions are always 0..L-1 anyway.
        self.register_buffer(
            "position_ids", torch.arange(config.max_positions).unsqueeze(0), persistent=True
        )

    def forward(self, input_ids: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        """(B, L) int64 ids → (B, L, width); `inputs_embeds` (B, L, width), when given, stands
        in for the token embeddings of `input_ids` (textual-inversion vectors)."""
        length = input_ids.shape[1]
        tokens = self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds
        return tokens + self.position_embedding.weight[:length]


class CLIPAttention(nn.Module):
    """Multi-head self-attention with a causal mask."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        if config.width % config.heads != 0:
            raise ValueError(
                f"CLIPConfig.width={config.width} must be divisible by heads={config.heads}"
            )
        self.heads = config.heads
        self.q_proj = nn.Linear(config.width, config.width)
        self.k_proj = nn.Linear(config.width, config.width)
        self.v_proj = nn.Linear(config.width, config.width)
        self.out_proj = nn.Linear(config.width, config.width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, width) → (B, L, width)."""
        batch, length, width = x.shape
        # (B, L, width) → (B, heads, L, head_dim): a view plus a transpose, no copy.
        q, k, v = (
            proj(x).view(batch, length, self.heads, -1).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        if config.activation not in ACTIVATIONS:
            raise ValueError(
                f"CLIPConfig.activation={config.activation!r} is not supported; "
                f"allowed: {sorted(ACTIVATIONS)}"
            )
        self.activation = ACTIVATIONS[config.activation]
        self.fc1 = nn.Linear(config.width, config.intermediate)
        self.fc2 = nn.Linear(config.intermediate, config.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.layers))

    def forward(self, x: Tensor, layers: int | None = None) -> Tensor:
        """Run the first `layers` layers (None: all)."""
        for layer in self.layers[:layers]:
            x = layer(x)
        return x


class CLIPTextModel(nn.Module):
    """Token ids → per-token hidden states that condition the UNet (SD v1.x `context`)."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(
        self, input_ids: Tensor, clip_skip: int = 1, inputs_embeds: Tensor | None = None
    ) -> Tensor:
        """(B, 77) int64 token ids → (B, 77, width) hidden state after final_layer_norm.

        clip_skip: AUTOMATIC1111's "Clip skip": 1 takes the last layer's output, N the output
        N − 1 layers before the last (then the final layer norm, as A1111 applies it).
        Any length from 1 to `max_positions` is accepted; SD always passes 77.
        inputs_embeds: (B, L, width) token embeddings used instead of looking up `input_ids`
        (which then only give the shape); the position embeddings are added to them as usual.
        `sd_core.conditioning` passes them to put textual-inversion vectors in a prompt.
        """
        if not 1 <= clip_skip <= self.config.layers:
            raise ValueError(
                f"clip_skip must be from 1 to {self.config.layers} (the text encoder's layers), "
                f"got {clip_skip}"
            )
        if input_ids.ndim != 2:
            raise ValueError(
                f"input_ids must have shape (batch, length); got {tuple(input_ids.shape)}"
            )
        if not 1 <= input_ids.shape[1] <= self.config.max_positions:
            raise ValueError(
                f"input_ids length {input_ids.shape[1]} is out of range; "
                f"allowed: 1..{self.config.max_positions}"
            )
        if inputs_embeds is not None and tuple(inputs_embeds.shape) != (
            *input_ids.shape,
            self.config.width,
        ):
            raise ValueError(
                f"inputs_embeds must have shape {(*input_ids.shape, self.config.width)} "
                f"(input_ids' shape, then the width); got {tuple(inputs_embeds.shape)}"
            )
        x = self.embeddings(input_ids, inputs_embeds)
        x = self.encoder(x, self.config.layers - (clip_skip - 1))
        return self.final_layer_norm(x)
