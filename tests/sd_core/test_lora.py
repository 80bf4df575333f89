"""LoRA files (`sd_core.lora`) against diffusers + peft, and by hand.

A random tiny checkpoint is loaded by sd_core and by diffusers (as in
test_pipeline_reference.py). Random LoRA files in the kohya layout are written from *diffusers'
and transformers'* module names (so sd_core's name map does not make them): every Linear and
Conv2d of the UNet (attention and feed-forward linears, 1×1 proj_in/proj_out, 3×3 resnet,
sampler and conv_in/out convs, time embedding, shortcuts) and of the text encoder (q/k/v/out,
fc1/fc2), ranks 1-4 varying per layer, some layers without alpha. diffusers reads them with
`load_lora_weights` (peft adapters, unfused; it reads every layer kind used here, conv ones
included) and sd_core patches them in with `applied_loras`: the decoded images agree within
1e-4, like the plain pipelines (measured: about 1.2e-5, while the LoRAs change the images by
about 0.2 on average).

What this diffusers cannot serve as the reference for is checked against an independent hand
computation instead (a functional application of the factors, or `torch.kron` on 4-D
tensors): alphas that differ between the layers of one file and "no alpha means scale 1" on a
layer whose rank is not the file's alpha (see `write_kohya_lora`), LyCORIS LoCon Tucker cores,
LoHa and LoKr, CompVis-spelled module names, and Linear-shaped factors on a 1×1 conv.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.clip import CLIPTextModel
from sd_core.config import TINY_TEST
from sd_core.lora import (
    Lora,
    LoraError,
    applied_loras,
    load_lora,
    text_encoder_kohya_names,
    unet_kohya_names,
)
from sd_core.params import GenerationParams
from sd_core.pipeline import StableDiffusionPipeline
from sd_core.unet import UNetModel
from tests.clip_reference import hf_tokenizer
from tests.reference import (
    diffusers_models,
    diffusers_pipeline,
    random_checkpoint,
    reference_scheduler,
)

PROMPT = "a red circle in the top left on a blue background"
NEGATIVE = "blurry"
SEED, STEPS, GUIDANCE = 7, 4, 7.5
IMAGE_ATOL = 1e-4  # as test_pipeline_reference.py: images in [0, 1], float32 on the CPU
LORA_GAIN = 0.4  # |ΔW| ≈ LORA_GAIN · |W| per layer at multiplier 1: a clear change

# Single layers of the tiny models for the checks by hand: our path and its kohya name.
CONV_PATH = "input_blocks.1.0.in_layers.2"  # 3×3, (32, 32, 3, 3)
CONV_NAME = "lora_unet_down_blocks_0_resnets_0_conv1"
PROJ_PATH = "input_blocks.1.1.proj_in"  # 1×1, (32, 32, 1, 1)
PROJ_NAME = "lora_unet_down_blocks_0_attentions_0_proj_in"
FC1_PATH = "encoder.layers.3.mlp.fc1"  # Linear (64, 32)
FC1_NAME = "lora_te_text_model_encoder_layers_3_mlp_fc1"


# --- writing LoRA files -----------------------------------------------------------------------


def patchable(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def kohya_layer(
    weight_shape: tuple[int, ...], rank: int, generator: torch.Generator, gain: float
) -> tuple[Tensor, Tensor]:
    """Random (down, up) for a weight: (rank, in[, kh, kw]) and (out, rank[, 1, 1])."""
    out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
    down = torch.randn((rank, *weight_shape[1:]), generator=generator) / math.sqrt(fan_in)
    up = gain * torch.randn((out, rank), generator=generator) / math.sqrt(rank)
    if len(weight_shape) == 4:
        up = up[:, :, None, None]
    return down, up


def write_kohya_lora(
    path: Path,
    unet: nn.Module,
    text_encoder: nn.Module,
    seed: int,
    alpha: float,
    keep: tuple[str, ...] = (),
) -> dict[str, Tensor]:
    """A random LoRA over diffusers' UNet and transformers' CLIP modules, named as kohya
    names them (diffusers' module path, `.` → `_`); `keep` limits it to names containing one of
    the words. Ranks run 1-4 over the layers, all with `alpha` (as kohya writes one alpha for a
    network) except every seventh layer of rank `alpha`, which has none (scale 1).

    diffusers 0.42 only reads alphas that equal its one "most common" alpha for attention
    linears (it names their alphas after the old attention processors) and for the text
    encoder (transformers 5 dropped the `text_model.` level that its alpha names carry), and
    gives a layer without alpha that common alpha, not its rank: so each file has one alpha,
    and the layers without alpha have rank == alpha. Alpha ≠ rank, and no alpha meaning scale
    1, are checked by hand below.
    """
    generator = torch.Generator().manual_seed(seed)
    te_prefix = "lora_te_" if hasattr(text_encoder, "text_model") else "lora_te_text_model_"
    modules = [("lora_unet_", n, m) for n, m in patchable(unet).items()]
    modules += [(te_prefix, n, m) for n, m in patchable(text_encoder).items()]
    tensors: dict[str, Tensor] = {}
    for i, (prefix, path_name, module) in enumerate(modules):
        name = prefix + path_name.replace(".", "_")
        if keep and not any(word in name for word in keep):
            continue
        without_alpha = i % 7 == 0
        rank = int(alpha) if without_alpha else 1 + (i + seed) % 4
        down, up = kohya_layer(tuple(module.weight.shape), rank, generator, LORA_GAIN)
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        if not without_alpha:
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return tensors


def small_lora(path: Path, extra: dict[str, Tensor] | None = None) -> Path:
    g = torch.Generator().manual_seed(8)
    tensors = {
        f"{FC1_NAME}.lora_down.weight": torch.randn(2, 32, generator=g),
        f"{FC1_NAME}.lora_up.weight": torch.randn(64, 2, generator=g),
        f"{FC1_NAME}.alpha": torch.tensor(1.0),
        **(extra or {}),
    }
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata={"ss_output_name": path.stem})
    else:
        torch.save(tensors, path)
    return path


# --- the two pipelines ------------------------------------------------------------------------


@dataclass
class Env:
    tmp: Path
    ours: StableDiffusionPipeline
    reference: Any  # diffusers.StableDiffusionPipeline with adapters "a" and "b" loaded
    loras: dict[str, Lora]
    state: dict[str, Tensor]  # the checkpoint both pipelines hold


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:

    tmp = tmp_path_factory.mktemp("lora")
    state = random_checkpoint(TINY_TEST, seed=3)
    ours = sd_core.load_pipeline(save_checkpoint(tmp / "tiny.safetensors", state, TINY_TEST))
    text_encoder, vae, unet = diffusers_models(state, TINY_TEST)
    tensors = {
        "a": write_kohya_lora(tmp / "a.safetensors", unet, text_encoder, seed=10, alpha=2.0),
        "b": write_kohya_lora(
            tmp / "b.safetensors", unet, text_encoder, 11, alpha=1.0, keep=("attn", "proj", "mlp")
        ),
    }
    reference = diffusers_pipeline(
        text_encoder, vae, unet, hf_tokenizer(tmp / "tokenizer"), reference_scheduler()
    )
    for name in tensors:
        reference.load_lora_weights(str(tmp), weight_name=f"{name}.safetensors", adapter_name=name)
    loras = {name: load_lora(tmp / f"{name}.safetensors") for name in tensors}
    return Env(tmp, ours, reference, loras, state)


def ours_image(env: Env, loras: list[tuple[Lora, float, float]]) -> np.ndarray:
    """sd_core's (H, W, 3) image in [0, 1] with `loras` applied."""
    pipe = env.ours
    params = GenerationParams(
        PROMPT,
        negative_prompt=NEGATIVE,
        seed=SEED,
        steps=STEPS,
        sampler="euler",
        guidance=GUIDANCE,
        width=64,
        height=64,
    )
    with applied_loras(pipe.text_encoder, pipe.unet, loras) as warnings:
        assert warnings == ()
        _, latents = pipe.generate_latents(params)
    images = pipe.decode_latents(latents)
    return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]


def reference_image(env: Env, weights: dict[str, dict[str, float]]) -> np.ndarray:
    """diffusers' image with adapter → {"text_encoder": w, "unet": w}; {} for no LoRA."""
    pipe = env.reference
    if weights:
        pipe.enable_lora()
        pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
    else:
        pipe.disable_lora()
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images[0]


CASES = {
    "one": {"a": (0.8, 0.8)},
    "te_and_unet_apart": {"a": (1.2, -0.5)},
    "two_at_once": {"a": (0.7, 0.6), "b": (-0.9, 1.1)},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_images_equal_diffusers_and_differ_without_lora(env: Env, case: str) -> None:
    chosen = CASES[case]
    ours = ours_image(env, [(env.loras[n], te, un) for n, (te, un) in chosen.items()])
    reference = reference_image(
        env, {n: {"text_encoder": te, "unet": un} for n, (te, un) in chosen.items()}
    )
    np.testing.assert_allclose(ours, reference, atol=IMAGE_ATOL, rtol=0)

    # The LoRA really acts in both: without it the images differ clearly.
    plain_ours, plain_reference = ours_image(env, []), reference_image(env, {})
    np.testing.assert_allclose(plain_ours, plain_reference, atol=IMAGE_ATOL, rtol=0)
    assert np.abs(ours - plain_ours).mean() > 0.02
    assert np.abs(reference - plain_reference).mean() > 0.02


def test_name_map_pairs_modules_holding_the_same_weights(env: Env) -> None:
    """Both libraries load the same random checkpoint, so each of our modules' kohya name must
    lead to the diffusers/transformers module holding the very same weight."""
    from tests.reference import diffusers_text_encoder, diffusers_unet

    unet, text_encoder = (
        diffusers_unet(env.state, TINY_TEST),
        diffusers_text_encoder(env.state, TINY_TEST),
    )
    te_prefix = "lora_te_" if hasattr(text_encoder, "text_model") else "lora_te_text_model_"
    theirs = {"lora_unet_" + n.replace(".", "_"): m for n, m in patchable(unet).items()}
    theirs.update({te_prefix + n.replace(".", "_"): m for n, m in patchable(text_encoder).items()})
    ours = {}
    for model, names in (
        (env.ours.unet, unet_kohya_names(env.ours.unet)),
        (env.ours.text_encoder, text_encoder_kohya_names(env.ours.text_encoder)),
    ):
        assert len(names) == len(patchable(model))
        ours.update({kohya: model.get_submodule(path) for path, kohya in names.items()})
    assert ours.keys() == theirs.keys()
    for kohya, module in ours.items():
        assert torch.equal(module.weight, theirs[kohya].weight), kohya
    assert len(ours) == 282 + 72  # every Linear/Conv2d of the tiny UNet and text encoder


# --- patching and restoring -------------------------------------------------------------------


def snapshot(*models: nn.Module) -> list[dict[str, Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]


def assert_same(models: tuple[nn.Module, ...], before: list[dict[str, Tensor]]) -> None:
    for model, saved in zip(models, before, strict=True):
        state = model.state_dict()
        assert state.keys() == saved.keys()
        for key, value in saved.items():
            assert torch.equal(state[key], value), key
            assert state[key].dtype == value.dtype and state[key].stride() == value.stride()


def changed(model: nn.Module, before: dict[str, Tensor]) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("inference", [False, True])
def test_weights_restored_bit_for_bit_also_after_an_exception(env: Env, inference: bool) -> None:
    models = (env.ours.text_encoder, env.ours.unet)
    before = snapshot(*models)
    loras = [(env.loras["a"], 1.0, 1.0), (env.loras["b"], 0.3, -0.7)]
    with torch.inference_mode(inference):
        with applied_loras(*models, loras):
            te_changed, unet_changed = (changed(m, b) for m, b in zip(models, before, strict=True))
        assert_same(models, before)
        with pytest.raises(RuntimeError, match="inside"), applied_loras(*models, loras):
            assert changed(env.ours.unet, before[1])
            raise RuntimeError("inside the block")
    assert_same(models, before)
    # Every weight of both models was patched (LoRA "a" covers all), no bias or norm.
    assert te_changed == {f"{p}.weight" for p in text_encoder_kohya_names(models[0])}
    assert unet_changed == {f"{p}.weight" for p in unet_kohya_names(models[1])}


def applied_weights(env: Env, loras: list[tuple[Lora, float, float]]) -> list[dict[str, Tensor]]:
    with applied_loras(env.ours.text_encoder, env.ours.unet, loras):
        return snapshot(env.ours.text_encoder, env.ours.unet)


def test_two_loras_equal_their_sum_and_multipliers_scale(env: Env) -> None:
    base = snapshot(env.ours.text_encoder, env.ours.unet)
    a, b = env.loras["a"], env.loras["b"]
    only_a = applied_weights(env, [(a, 0.5, 1.5)])
    only_b = applied_weights(env, [(b, -1.0, 0.25)])
    both = applied_weights(env, [(a, 0.5, 1.5), (b, -1.0, 0.25)])
    double_a = applied_weights(env, [(a, 1.0, 3.0)])
    for part in range(2):
        for key, w in base[part].items():
            delta_a, delta_b = only_a[part][key] - w, only_b[part][key] - w
            torch.testing.assert_close(both[part][key] - w, delta_a + delta_b, atol=1e-6, rtol=0)
            torch.testing.assert_close(double_a[part][key] - w, 2 * delta_a, atol=1e-6, rtol=0)


def test_te_and_unet_multipliers_are_separate(env: Env) -> None:
    te, unet = env.ours.text_encoder, env.ours.unet
    before = snapshot(te, unet)
    lora = env.loras["a"]
    with applied_loras(te, unet, [(lora, 1.0, 0.0)]):
        assert_same((unet,), before[1:])
        assert changed(te, before[0])
    with applied_loras(te, unet, [(lora, 0.0, 1.0)]):
        assert_same((te,), before[:1])
        assert changed(unet, before[1])
    assert_same((te, unet), before)


def test_weights_made_under_inference_mode_patch_and_restore_outside_it(tmp_path: Path) -> None:
    """Models loaded inside `torch.inference_mode` hold inference tensors, which may only be
    changed in place inside inference mode; `applied_loras` is used outside it here."""
    from tests.reference import sd_core_models

    with torch.inference_mode():
        text_encoder, _, unet = sd_core_models(random_checkpoint(TINY_TEST, seed=6), TINY_TEST)
    weight = text_encoder.get_submodule(FC1_PATH).weight
    assert weight.is_inference()
    before = snapshot(text_encoder, unet)
    lora = load_lora(small_lora(tmp_path / "small.safetensors"))
    with (
        pytest.raises(RuntimeError, match="inside"),
        applied_loras(text_encoder, unet, [(lora, 1.0, 1.0)]),
    ):
        assert not torch.equal(weight, before[0][f"{FC1_PATH}.weight"])
        raise RuntimeError("inside the block")
    assert_same((text_encoder, unet), before)


# --- single layers by hand --------------------------------------------------------------------


@dataclass
class Hand:
    """Fresh tiny sd_core models, and a folder for one-layer LoRA files."""

    text_encoder: CLIPTextModel
    unet: UNetModel
    tmp: Path

    @property
    def models(self) -> tuple[CLIPTextModel, UNetModel]:
        return self.text_encoder, self.unet

    def delta(self, path: str, tensors: dict[str, Tensor], multiplier: float) -> Tensor:
        """The change `applied_loras` makes to the weight at `path` (the text encoder's for an
        `encoder.` path, else the UNet's) for a LoRA file of `tensors`; checks it is undone."""
        file = self.tmp / "hand.safetensors"
        save_file(tensors, str(file))
        model = self.text_encoder if path.startswith("encoder.") else self.unet
        weight = model.get_submodule(path).weight
        before = weight.detach().clone()
        with applied_loras(*self.models, [(load_lora(file), multiplier, multiplier)]) as warnings:
            assert warnings == ()
            after = weight.detach().clone()
        assert torch.equal(weight, before)
        return after - before


@pytest.fixture
def hand(tmp_path: Path) -> Hand:
    from tests.reference import sd_core_models

    text_encoder, _, unet = sd_core_models(random_checkpoint(TINY_TEST, seed=5), TINY_TEST)
    return Hand(text_encoder, unet, tmp_path)


def test_conv_lora_acts_like_its_two_convolutions(hand: Hand) -> None:
    """3×3 kohya LoCon on a resnet conv: the patched conv's change of output equals running
    x through the down conv (3×3) and the up conv (1×1), times multiplier · alpha / rank."""
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(3, 32, 3, 3, generator=g), torch.randn(32, 3, 1, 1, generator=g)
    delta = hand.delta(
        CONV_PATH,
        {
            f"{CONV_NAME}.lora_down.weight": down,
            f"{CONV_NAME}.lora_up.weight": up,
            f"{CONV_NAME}.alpha": torch.tensor(1.5),
        },
        0.7,
    )
    x = torch.randn(1, 32, 9, 9, generator=g)
    expected = 0.7 * 1.5 / 3 * F.conv2d(F.conv2d(x, down, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), expected, atol=1e-4, rtol=1e-4)


def test_locon_tucker_core_acts_like_three_convolutions(hand: Hand) -> None:
    g = torch.Generator().manual_seed(2)
    down = torch.randn(4, 32, 1, 1, generator=g)
    mid = torch.randn(4, 4, 3, 3, generator=g)
    up = torch.randn(32, 4, 1, 1, generator=g)
    delta = hand.delta(
        CONV_PATH,
        {
            f"{CONV_NAME}.lora_down.weight": down,
            f"{CONV_NAME}.lora_mid.weight": mid,
            f"{CONV_NAME}.lora_up.weight": up,
            f"{CONV_NAME}.alpha": torch.tensor(2.0),
        },
        1.0,
    )
    x = torch.randn(1, 32, 7, 7, generator=g)
    expected = 0.5 * F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), expected, atol=1e-4, rtol=1e-4)


def test_linear_shaped_factors_fit_a_1x1_conv_and_no_alpha_means_scale_1(
    hand: Hand,
) -> None:
    g = torch.Generator().manual_seed(3)
    down, up = torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g)
    delta = hand.delta(
        PROJ_PATH, {f"{PROJ_NAME}.lora_down.weight": down, f"{PROJ_NAME}.lora_up.weight": up}, -0.5
    )
    torch.testing.assert_close(delta[:, :, 0, 0], -0.5 * up @ down, atol=1e-5, rtol=1e-5)


def test_compvis_spelled_names_patch_the_same_module(hand: Hand) -> None:
    g = torch.Generator().manual_seed(4)
    down, up = torch.randn(2, 32, 1, 1, generator=g), torch.randn(32, 2, 1, 1, generator=g)
    kohya = hand.delta(
        PROJ_PATH, {f"{PROJ_NAME}.lora_down.weight": down, f"{PROJ_NAME}.lora_up.weight": up}, 1.0
    )
    compvis = "lora_unet_input_blocks_1_1_proj_in"
    assert torch.equal(
        kohya,
        hand.delta(
            PROJ_PATH, {f"{compvis}.lora_down.weight": down, f"{compvis}.lora_up.weight": up}, 1.0
        ),
    )


def tucker_by_loops(core: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """LyCORIS' Tucker form by plain sums: core (r, r, kh, kw), a (r, out), b (r, in) →
    Σᵢⱼ outer(a[i], b[j]) · core[i, j], (out, in, kh, kw)."""
    out = torch.zeros(a.shape[1], b.shape[1], *core.shape[2:])
    for i in range(core.shape[0]):
        for j in range(core.shape[1]):
            out += torch.outer(a[i], b[j])[:, :, None, None] * core[i, j][None, None]
    return out


def test_loha_plain_and_tucker(hand: Hand) -> None:
    g = torch.Generator().manual_seed(5)
    r = 3
    w = {
        k: torch.randn(s, generator=g)
        for k, s in {"w1_a": (64, r), "w1_b": (r, 32), "w2_a": (64, r), "w2_b": (r, 32)}.items()
    }
    tensors = {f"{FC1_NAME}.hada_{k}": v for k, v in w.items()}
    tensors[f"{FC1_NAME}.alpha"] = torch.tensor(6.0)
    delta = hand.delta(FC1_PATH, tensors, 0.5)
    expected = 0.5 * 6.0 / r * (w["w1_a"] @ w["w1_b"]) * (w["w2_a"] @ w["w2_b"])
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-5)

    # Tucker form on the 3×3 conv: w_a (r, out), w_b (r, in), t (r, r, 3, 3).
    shapes = {
        "w1_a": (r, 32),
        "w1_b": (r, 32),
        "w2_a": (r, 32),
        "w2_b": (r, 32),
        "t1": (r, r, 3, 3),
        "t2": (r, r, 3, 3),
    }
    w = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    delta = hand.delta(CONV_PATH, {f"{CONV_NAME}.hada_{k}": v for k, v in w.items()}, 1.0)

    expected = tucker_by_loops(w["t1"], w["w1_a"], w["w1_b"]) * tucker_by_loops(
        w["t2"], w["w2_a"], w["w2_b"]
    )
    torch.testing.assert_close(delta, expected, atol=1e-4, rtol=1e-4)


def test_lokr_whole_factored_and_conv(hand: Hand) -> None:
    g = torch.Generator().manual_seed(6)
    w1, w2 = torch.randn(4, 2, generator=g), torch.randn(16, 16, generator=g)
    delta = hand.delta(
        FC1_PATH,
        {
            f"{FC1_NAME}.lokr_w1": w1,
            f"{FC1_NAME}.lokr_w2": w2,
            f"{FC1_NAME}.alpha": torch.tensor(3.0),
        },
        1.0,
    )
    torch.testing.assert_close(delta, torch.kron(w1, w2), atol=1e-5, rtol=1e-5)  # no rank: scale 1

    w2_a, w2_b = torch.randn(16, 2, generator=g), torch.randn(2, 16, generator=g)
    delta = hand.delta(
        FC1_PATH,
        {
            f"{FC1_NAME}.lokr_w1": w1,
            f"{FC1_NAME}.lokr_w2_a": w2_a,
            f"{FC1_NAME}.lokr_w2_b": w2_b,
            f"{FC1_NAME}.alpha": torch.tensor(1.0),
        },
        2.0,
    )
    torch.testing.assert_close(delta, 2.0 * 0.5 * torch.kron(w1, w2_a @ w2_b), atol=1e-5, rtol=1e-5)

    w1, w2 = torch.randn(2, 4, generator=g), torch.randn(16, 8, 3, 3, generator=g)
    delta = hand.delta(CONV_PATH, {f"{CONV_NAME}.lokr_w1": w1, f"{CONV_NAME}.lokr_w2": w2}, 1.0)
    torch.testing.assert_close(delta, torch.kron(w1[:, :, None, None], w2), atol=1e-5, rtol=1e-5)

    # Tucker w2 on the conv: t2 (r, r, 3, 3), w2_a (r, 16), w2_b (r, 8); alpha / r with r = 2.
    t2, w2_a, w2_b = (torch.randn(s, generator=g) for s in ((2, 2, 3, 3), (2, 16), (2, 8)))
    tensors = {"lokr_w1": w1, "lokr_t2": t2, "lokr_w2_a": w2_a, "lokr_w2_b": w2_b}
    tensors["alpha"] = torch.tensor(3.0)
    delta = hand.delta(CONV_PATH, {f"{CONV_NAME}.{k}": v for k, v in tensors.items()}, 1.0)
    expected = 1.5 * torch.kron(w1[:, :, None, None], tucker_by_loops(t2, w2_a, w2_b))
    torch.testing.assert_close(delta, expected, atol=1e-4, rtol=1e-4)


def test_half_precision_weights_are_patched_in_float32_and_restored(
    hand: Hand, tmp_path: Path
) -> None:
    text_encoder, unet = (m.half() for m in hand.models)
    g = torch.Generator().manual_seed(7)
    down, up = torch.randn(4, 32, generator=g), torch.randn(64, 4, generator=g)
    save_file(
        {f"{FC1_NAME}.lora_down.weight": down.half(), f"{FC1_NAME}.lora_up.weight": up.half()},
        str(tmp_path / "half.safetensors"),
    )
    weight = text_encoder.get_submodule(FC1_PATH).weight
    before = snapshot(text_encoder, unet)
    with applied_loras(text_encoder, unet, [(load_lora(tmp_path / "half.safetensors"), 0.3, 0.3)]):
        expected = (
            before[0][f"{FC1_PATH}.weight"].float() + 0.3 * up.half().float() @ down.half().float()
        ).half()
        assert weight.dtype == torch.float16
        torch.testing.assert_close(weight, expected, atol=0, rtol=0)
    assert_same((text_encoder, unet), before)


# --- files ------------------------------------------------------------------------------------


def independent_addnet_hash(path: Path) -> str:
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + header_len :]).hexdigest()[:12]


def test_load_lora_and_its_short_hash(tmp_path: Path) -> None:
    proj = {  # a second layer, of another rank and without alpha
        f"{PROJ_NAME}.lora_down.weight": torch.zeros(3, 32, 1, 1),
        f"{PROJ_NAME}.lora_up.weight": torch.zeros(32, 3, 1, 1),
    }
    lora = load_lora(small_lora(tmp_path / "detail_tweaker.safetensors", proj))
    assert lora.name == "detail_tweaker" and lora.path == tmp_path / "detail_tweaker.safetensors"
    assert sorted(lora.layers) == sorted([FC1_NAME, PROJ_NAME]) and lora.ignored == ()
    fc1, proj_in = lora.layers[FC1_NAME], lora.layers[PROJ_NAME]
    assert (fc1.shape, fc1.rank, fc1.alpha, fc1.scale) == ((64, 32), 2, 1.0, 0.5)
    assert (proj_in.shape, proj_in.rank, proj_in.alpha, proj_in.scale) == (
        (32, 32, 1, 1),
        3,
        None,
        1.0,
    )
    assert lora.short_hash == independent_addnet_hash(lora.path)
    assert lora.metadata == {"ss_output_name": "detail_tweaker"}
    # The addnet hash covers the tensors only: other metadata, same hash; the file's differs.
    other = small_lora(tmp_path / "renamed.safetensors", proj)
    assert load_lora(other).short_hash == lora.short_hash
    assert (
        hashlib.sha256(other.read_bytes()).hexdigest()
        != hashlib.sha256(lora.path.read_bytes()).hexdigest()
    )

    pt = load_lora(small_lora(tmp_path / "old.pt"))
    assert pt.short_hash == hashlib.sha256(pt.path.read_bytes()).hexdigest()[:12]
    assert list(pt.layers) == [FC1_NAME]


def test_corrupt_or_truncated_files_are_refused(tmp_path: Path) -> None:
    good = small_lora(tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[:-40])
    with pytest.raises(LoraError, match=r"LoRA '.*cut\.safetensors'.*(truncated|corrupt)"):
        load_lora(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(LoraError, match="junk"):
        load_lora(tmp_path / "junk.safetensors")
    pt = small_lora(tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(pt[: len(pt) // 2])
    with pytest.raises(LoraError, match=r"cut\.pt.*(corrupt|truncated)"):
        load_lora(tmp_path / "cut.pt")


class RunsCode:
    """Unpickling this calls os.system — what a malicious .pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save(
        {f"{FC1_NAME}.lora_down.weight": torch.zeros(2, 32), "payload": RunsCode(marker)},
        tmp_path / "evil.pt",
    )
    with pytest.raises(LoraError, match=r"evil\.pt.*refused"):
        load_lora(tmp_path / "evil.pt")
    assert not marker.exists()


def test_files_without_lora_layers_or_with_unfitting_factors(tmp_path: Path) -> None:
    save_file(
        {"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)},
        str(tmp_path / "checkpoint.safetensors"),
    )
    with pytest.raises(LoraError, match=r"checkpoint\.safetensors.*no LoRA layers"):
        load_lora(tmp_path / "checkpoint.safetensors")
    save_file({f"{FC1_NAME}.alpha": torch.tensor(1.0)}, str(tmp_path / "alpha_only.safetensors"))
    with pytest.raises(LoraError, match="no LoRA layers"):
        load_lora(tmp_path / "alpha_only.safetensors")

    save_file(
        {
            f"{FC1_NAME}.lora_down.weight": torch.zeros(4, 32),
            f"{FC1_NAME}.lora_up.weight": torch.zeros(64, 3),
        },
        str(tmp_path / "ranks.safetensors"),
    )
    with pytest.raises(LoraError, match=rf"ranks\.safetensors.*{FC1_NAME}.*rank 3 vs 4"):
        load_lora(tmp_path / "ranks.safetensors")
    save_file(
        {f"{FC1_NAME}.lora_down.weight": torch.zeros(4, 32)}, str(tmp_path / "half.safetensors")
    )
    with pytest.raises(LoraError, match="lora_up.weight missing"):
        load_lora(tmp_path / "half.safetensors")

    # LyCORIS factors are checked by multiplying them out on the meta device.
    save_file(
        {
            f"{FC1_NAME}.hada_w1_a": torch.zeros(64, 2),
            f"{FC1_NAME}.hada_w1_b": torch.zeros(2, 32),
            f"{FC1_NAME}.hada_w2_a": torch.zeros(64, 3),
            f"{FC1_NAME}.hada_w2_b": torch.zeros(2, 32),
        },
        str(tmp_path / "loha.safetensors"),
    )
    with pytest.raises(LoraError, match=r"do not fit together: .*hada_w2_a \(64, 3\)"):
        load_lora(tmp_path / "loha.safetensors")
    save_file(
        {f"{FC1_NAME}.lokr_w1": torch.zeros(4, 2), f"{FC1_NAME}.lokr_w2_a": torch.zeros(16, 2)},
        str(tmp_path / "lokr.safetensors"),
    )
    with pytest.raises(LoraError, match="both lokr_w2_a and lokr_w2_b"):
        load_lora(tmp_path / "lokr.safetensors")


def test_layer_that_does_not_fit_the_model_is_an_error_and_nothing_changes(
    hand: Hand, tmp_path: Path
) -> None:
    """A layer of a full-width SD v1 LoRA (320 channels) against the tiny model (32): LoraError
    naming the LoRA, the layer and both shapes, raised before any weight is touched (the
    fitting text-encoder layer listed first is not applied either)."""
    to_q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {
        f"{FC1_NAME}.lora_down.weight": torch.zeros(4, 32),
        f"{FC1_NAME}.lora_up.weight": torch.ones(64, 4),
        f"{to_q}.lora_down.weight": torch.zeros(4, 320),
        f"{to_q}.lora_up.weight": torch.zeros(320, 4),
    }
    save_file(tensors, str(tmp_path / "sd15.safetensors"))
    lora = load_lora(tmp_path / "sd15.safetensors")
    before = snapshot(*hand.models)
    message = (
        rf"LoRA 'sd15' .*layer '{to_q}' has shape \(320, 320\), the UNet weight "
        r"'input_blocks\.1\.1\.transformer_blocks\.0\.attn1\.to_q' has shape \(32, 32\)"
    )
    with (
        pytest.raises(LoraError, match=message),
        applied_loras(*hand.models, [(lora, 1.0, 1.0)]),
    ):
        pytest.fail("the block must not run")
    assert_same(hand.models, before)


def test_unknown_names_and_keys_are_warnings(hand: Hand, tmp_path: Path) -> None:
    extra = {
        f"lora_unet_foo_{i}.lora_{part}.weight": torch.zeros(2, 2)
        for i in range(3)
        for part in ("down", "up")
    }
    extra[f"{FC1_NAME}.dora_scale"] = torch.ones(64, 1)
    lora = load_lora(small_lora(tmp_path / "mixed.safetensors", extra))
    assert lora.ignored == (f"{FC1_NAME}.dora_scale",)
    with applied_loras(*hand.models, [(lora, 1.0, 1.0)]) as warnings:
        assert warnings == (
            "LoRA 'mixed': 3 layers match nothing in this model (first: lora_unet_foo_0)",
            f"LoRA 'mixed': 1 key not understood, ignored (first: {FC1_NAME}.dora_scale)",
        )
