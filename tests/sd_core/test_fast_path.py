"""The fast paths (sd_core/fast_path.py) and the autotune that picks one (sd_core/autotune.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import sd_core
from sd_core.autotune import (
    FAILED,
    OK,
    OUTSIDE,
    AutotuneResult,
    ModeResult,
    Tolerance,
    autotune,
    candidates,
    choose,
    chosen_fast_path,
    clone_pipeline,
    save_autotune,
    saved_autotune,
)
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST, CLIPConfig, ModelConfig, UNetConfig, VAEConfig
from sd_core.fast_path import FastPath, apply_fast_path, fuse_qkv, valid_modes
from sd_core.params import GenerationParams
from sd_core.unet import CrossAttention, UNetModel
from tests.reference import random_checkpoint, random_part, sd_core_part

PARAMS = GenerationParams("a red circle", seed=3, steps=3, sampler="euler", guidance=7.5)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, random_checkpoint(TINY_TEST, seed=11), TINY_TEST)
    return sd_core.load_pipeline(path)


def unet_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, TINY_TEST.unet.context_dim, generator=g)
    return x, torch.tensor([500.0, 20.5]), context


def test_fused_qkv_keeps_every_key_and_value_and_equals_unfused() -> None:
    unet = sd_core_part("unet", random_part("unet", TINY_TEST, seed=2), TINY_TEST)
    assert isinstance(unet, UNetModel)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    x, t, context = unet_inputs()
    with torch.inference_mode():
        expected = unet(x, t, context)
    fused = fuse_qkv(unet)
    attention = [m for m in unet.modules() if isinstance(m, CrossAttention)]
    assert fused == len(attention) > 0
    assert all(m.fused_kv is not None for m in attention)
    assert any(m.fused_qkv is not None for m in attention)
    after = unet.state_dict()
    assert after.keys() == before.keys()  # the checkpoint's keys still load
    assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.inference_mode():
        got = unet(x, t, context)
    assert (got - expected).abs().max() <= 1e-5
    # The parameters are views into the fused matrix: a LoRA's in-place edit reaches it.
    attn1 = next(m for m in attention if m.fused_qkv is not None)
    assert attn1.fused_qkv is not None
    with torch.no_grad():
        attn1.to_q.weight.mul_(2.0)
    assert torch.equal(attn1.fused_qkv[: attn1.to_q.weight.shape[0]], attn1.to_q.weight)
    unet.load_state_dict(before)  # loads into the views, so back to the original values
    with torch.inference_mode():
        assert (unet(x, t, context) - expected).abs().max() <= 1e-5


def test_fast_path_is_checked_and_round_trips_through_json() -> None:
    fast = FastPath("compile", "bfloat16", fused_qkv=True)
    assert FastPath.from_json(json.loads(json.dumps(fast.as_json()))) == fast
    assert fast.label == "compile + fused QKV, bfloat16"
    with pytest.raises(ValueError, match="mode='warp'.*eager"):
        FastPath("warp")
    with pytest.raises(ValueError, match="dtype='float8'"):
        FastPath(dtype="float8")
    with pytest.raises(ValueError, match="fused_qkv"):
        FastPath.from_json({"mode": "eager", "dtype": None, "fused_qkv": "yes"})


def test_valid_modes_on_the_cpu_and_what_is_tried_there() -> None:
    modes = valid_modes(torch.device("cpu"))
    assert modes["eager"] is None
    assert modes["cuda_graphs"] is not None and "CUDA" in modes["cuda_graphs"]
    assert modes["channels_last"] is not None  # the CPU pipeline already is
    tried = candidates(torch.device("cpu"), ["float32"])
    assert FastPath("eager", "float32") in tried
    assert FastPath("eager", "float32", fused_qkv=True) in tried
    assert all(f.mode != "cuda_graphs" for f in tried)


def test_each_cpu_mode_is_within_tolerance_of_float32_eager(pipe) -> None:  # type: ignore[no-untyped-def]
    modes = [
        FastPath("eager", "float32"),
        FastPath("eager", "float32", fused_qkv=True),
        FastPath("eager", "bfloat16", fused_qkv=True),
    ]
    seen: list[ModeResult] = []
    result = autotune(pipe, ["float32", "bfloat16"], PARAMS, modes=modes, repeats=1,
                      on_result=seen.append)  # fmt: skip
    assert [r.fast for r in result.results] == modes == [r.fast for r in seen]
    for r in result.results:
        assert r.status == OK, r
        assert r.error is not None and r.error <= Tolerance().of(r.fast.dtype or "float32")
        assert r.seconds is not None and r.seconds > 0 and r.first_s is not None
    assert result.results[1].error == pytest.approx(0.0, abs=0.05)  # fusion moves nothing
    assert set(result.chosen) == {"float32", "bfloat16"}
    assert result.chosen["bfloat16"] == modes[2]
    assert "cuda_graphs" in result.skipped
    assert pipe.fast_path is None and pipe.dtype == torch.float32  # the original untouched


def test_autotune_refuses_a_mode_outside_tolerance_however_fast(pipe) -> None:  # type: ignore[no-untyped-def]
    broken = FastPath("eager", "float32", fused_qkv=True)

    def apply(trial, fast):  # type: ignore[no-untyped-def]
        apply_fast_path(trial, fast)
        if fast == broken:  # a "fast path" that gets the arithmetic wrong
            with torch.no_grad():
                trial.unet.out[2].weight.mul_(3.0)
        if fast.mode == "compile":
            raise RuntimeError("no compiler today")

    modes = [FastPath("eager", "float32"), broken, FastPath("compile", "float32")]
    result = autotune(pipe, ["float32"], PARAMS, modes=modes, repeats=1, apply=apply)
    by_fast = {r.fast: r for r in result.results}
    assert by_fast[broken].status == OUTSIDE
    assert by_fast[broken].error is not None and by_fast[broken].error > 0.5
    assert "mean pixel difference" in by_fast[broken].note
    assert by_fast[modes[2]].status == FAILED and "no compiler today" in by_fast[modes[2]].note
    assert result.chosen == {"float32": modes[0]}


def test_autotune_refuses_a_mode_that_makes_nan(pipe) -> None:  # type: ignore[no-untyped-def]
    def apply(trial, fast):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            trial.unet.out[2].bias.fill_(float("nan"))

    nan_mode = FastPath("eager", "float32", fused_qkv=True)
    result = autotune(pipe, ["float32"], PARAMS, modes=[nan_mode], repeats=0, apply=apply)
    assert result.results[0].status == OUTSIDE and "NaN" in result.results[0].note
    assert result.chosen == {}


def test_choose_takes_the_fastest_within_tolerance_per_dtype() -> None:
    a, b, c = (
        FastPath("eager", "float32"),
        FastPath("compile", "float32", True),
        FastPath("cuda_graphs", "float32", True),
    )
    h = FastPath("eager", "float16")
    results = [
        ModeResult(a, OK, seconds=0.5),
        ModeResult(b, OK, seconds=0.3),
        ModeResult(c, OUTSIDE, seconds=0.1, error=9.0),
        ModeResult(h, OK, seconds=0.2),
        ModeResult(FastPath("compile", "float16"), FAILED),
    ]
    assert choose(results) == {"float32": b, "float16": h}
    assert choose([ModeResult(c, OUTSIDE, seconds=0.1)]) == {}


def test_the_choice_is_kept_per_device_and_dtype(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "autotune.json"
    fast = FastPath("compile", "float32", fused_qkv=True)
    result = AutotuneResult("cpu", "Some CPU", (ModeResult(fast, OK, seconds=0.3),),
                            {"float32": fast})  # fmt: skip
    assert chosen_fast_path(path, "cpu", "Some CPU", "float32") is None  # no file yet
    save_autotune(path, result)
    save_autotune(path, replace(result, device="cuda:0", device_name="GPU", chosen={}))
    assert chosen_fast_path(path, "cpu", "Some CPU", "float32") == fast
    assert chosen_fast_path(path, "cpu", "Some CPU", "bfloat16") is None
    assert chosen_fast_path(path, "cpu", "Another CPU", "float32") is None  # hardware changed
    assert chosen_fast_path(path, "cuda:0", "GPU", "float32") is None
    saved = saved_autotune(path, "cpu")
    assert saved is not None and saved["results"][0]["label"] == fast.label  # type: ignore[index]
    path.write_text("{not json")
    assert chosen_fast_path(path, "cpu", "Some CPU", "float32") is None


def test_a_fast_path_is_applied_in_place_and_refused_where_invalid(pipe) -> None:  # type: ignore[no-untyped-def]
    trial = clone_pipeline(pipe)
    apply_fast_path(trial, FastPath("eager", "bfloat16", fused_qkv=True))
    assert trial.dtype == torch.bfloat16 and trial.fast_path is not None
    assert next(trial.unet.parameters()).dtype == torch.bfloat16
    assert next(pipe.unet.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="cuda_graphs.*not valid on cpu"):
        apply_fast_path(clone_pipeline(pipe), FastPath("cuda_graphs"))


# Every block kind of the UNet and the decoder (resnets, attention, resampling) at two levels
# instead of four: inductor's compile time, not the model's, is what this test waits for, and
# it grows with the graph (57 s here against 79 s for TINY_TEST on a cold cache, 2 cores).
COMPILE_TEST = ModelConfig(
    name="compile-test",
    clip=CLIPConfig(width=32, layers=1, heads=4, intermediate=64),
    vae=VAEConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8),
    unet=UNetConfig(
        model_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(1,),
        num_heads=2,
        context_dim=32,
        norm_groups=8,
    ),
    native_size=64,
)


@pytest.mark.slow
def test_compile_on_the_cpu_is_within_tolerance(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if valid_modes(torch.device("cpu"))["compile"] is not None:
        pytest.fail("no C compiler here: torch.compile cannot be checked")
    save_checkpoint(tmp_path / "small.safetensors", random_checkpoint(COMPILE_TEST, seed=11),
                    COMPILE_TEST)  # fmt: skip
    pipe = sd_core.load_pipeline(tmp_path / "small.safetensors")
    fast = FastPath("compile", "float32", fused_qkv=True)
    params = replace(PARAMS, steps=2)
    result = autotune(pipe, ["float32"], params, modes=[fast], repeats=1)
    assert result.results[0].status == OK, result.results[0]
    assert result.chosen == {"float32": fast}
