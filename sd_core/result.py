"""`GenerationResult`: what one `generate` call made, and the metadata written from it.

The pipeline returns the images together with the settings it actually used (seed drawn,
sampler named, size filled in), the mode, the model and where the time went. The PNG metadata
(AUTOMATIC1111's infotext in `parameters`, Dali's JSON in `dali`, and `seed`) is written onto
each image from this object, once, in `annotate`; nothing downstream parses it back to learn
what ran.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from PIL import Image

from sd_core.params import GenerationParams, infotext_extras
from sd_core.schedule_types import SCHEDULE_TYPES

TXT2IMG, IMG2IMG, INPAINT = "txt2img", "img2img", "inpaint"
# Params fields the `dali` JSON writes per image (or only where they apply) itself.
_PER_IMAGE = frozenset(
    (
        "prompt",
        "negative_prompt",
        "steps",
        "sampler",
        "guidance",
        "seed",
        "width",
        "height",
        "strength",
        "variation_seed",
    )
)


@dataclass(frozen=True)
class GenerationTimings:
    """Seconds spent in each stage of one run (wall clock, the device synchronised only where
    the stage's result is read back)."""

    text_encoding: float = 0.0
    sampling: float = 0.0
    decoding: float = 0.0


@dataclass(frozen=True)
class UsedAsset:
    """A file the run used besides the checkpoint: kind "lora", "embedding" or "vae", its name
    and the short hash A1111 writes for it (`Lora hashes`, `TI hashes`, `VAE hash`)."""

    kind: str
    name: str
    short_hash: str


_HASH_KEYS = {"lora": "Lora hashes", "embedding": "TI hashes"}


def eta_infotext(p: GenerationParams) -> dict[str, str]:
    """A1111's key for an eta other than the sampler's own: `Eta DDIM` for DDIM, else `Eta`."""
    from sd_core.samplers import get_sampler

    assert p.sampler is not None
    spec = get_sampler(p.sampler)
    if p.eta is None or p.eta == spec.eta:
        return {}
    value = str(int(p.eta)) if p.eta.is_integer() else str(p.eta)
    return {"Eta DDIM" if spec.name == "ddim" else "Eta": value}


def asset_infotext(assets: tuple[UsedAsset, ...]) -> dict[str, str]:
    """A1111's keys for the files used: `Lora hashes: "a: 1234abcd5678, b: …"`, `TI hashes`,
    `VAE hash` (the `VAE` name itself comes from the params)."""
    out: dict[str, str] = {}
    for kind, key in _HASH_KEYS.items():
        listed = [f"{a.name}: {a.short_hash}" for a in assets if a.kind == kind]
        if listed:
            out[key] = ", ".join(listed)
    vae = next((a for a in assets if a.kind == "vae"), None)
    if vae is not None:
        out["VAE hash"] = vae.short_hash
    return out


@dataclass(frozen=True)
class GenerationResult:
    """The images of one run and how they were made.

    images: `params.batch` PIL images, image i made with seed `params.seed + i`, each carrying
        `info["parameters"]`, `info["dali"]` and `info["seed"]` once `annotate` ran.
    params: the resolved settings (no None left but the variation seed when unused).
    mode: "txt2img", "img2img" or "inpaint".
    """

    images: list[Image.Image]
    params: GenerationParams
    mode: str
    model_name: str
    model_hash: str
    device: str
    dtype: str
    timings: GenerationTimings = field(default_factory=GenerationTimings)
    # What the user should know about how their input was read (e.g. a removed LoRA tag).
    warnings: tuple[str, ...] = ()
    # The LoRAs, embeddings and VAE file the run used, in the order met.
    assets: tuple[UsedAsset, ...] = ()
    # The step after which an interrupt ended the run (`GenerationHooks.interrupt`; steps
    # counted as progress counts them, both passes of the hires fix as one run): the images
    # are that step's predicted x0, only partly denoised. None: the run went to the end.
    interrupted_at: int | None = None

    @property
    def seeds(self) -> list[int]:
        return self.params.seeds()

    def variation_seed(self, index: int) -> int | None:
        """Image `index`'s variation seed (variation seed + index, as A1111's subseeds), or
        None when its noise was not blended."""
        seed = self.params.variation_seed
        return None if seed is None else seed + index

    def infotext(self, index: int) -> str:
        """AUTOMATIC1111's infotext of image `index`."""
        from sd_core.hires import hires_infotext
        from sd_core.infotext import GenerationParameters, format_infotext
        from sd_core.samplers import get_sampler

        p = self.params
        assert p.sampler is not None and p.width is not None and p.height is not None
        return format_infotext(
            GenerationParameters(
                prompt=p.prompt,
                negative_prompt=p.negative_prompt,
                steps=p.steps,
                sampler=get_sampler(p.sampler).display_name,
                schedule_type=None if p.scheduler is None else SCHEDULE_TYPES[p.scheduler],
                cfg_scale=p.guidance,
                seed=self.seeds[index],
                width=p.width,
                height=p.height,
                model_hash=self.model_hash,
                model=self.model_name,
                denoising_strength=(
                    p.strength if self.mode != TXT2IMG else p.hires_strength if p.hires else None
                ),
                extra={
                    **infotext_extras(replace(p, variation_seed=self.variation_seed(index))),
                    **eta_infotext(p),
                    **asset_infotext(self.assets),
                    **hires_infotext(p),
                },
            )
        )

    def metadata(self, index: int) -> dict[str, Any]:
        """Dali's JSON metadata of image `index` (the `dali` PNG chunk)."""
        from sd_core.samplers import get_sampler

        p = self.params
        assert p.sampler is not None
        spec = get_sampler(p.sampler)
        return {
            "prompt": p.prompt,
            "negative_prompt": p.negative_prompt,
            "steps": p.steps,
            "sampler": spec.name,
            "sampler_display_name": spec.display_name,
            "guidance": p.guidance,
            "seed": self.seeds[index],
            "width": p.width,
            "height": p.height,
            "mode": self.mode,
            "strength": p.strength if self.mode != TXT2IMG else None,
            "model": self.model_name,
            "model_hash": self.model_hash,
            "device": self.device,
            "dtype": self.dtype,
            "assets": [asdict(a) for a in self.assets],
            "variation_seed": self.variation_seed(index),
            **{k: v for k, v in p.to_dict().items() if k not in _PER_IMAGE},
            **({} if self.interrupted_at is None else {"interrupted_at": self.interrupted_at}),
        }

    def annotate(self) -> None:
        """Write each image's metadata chunks (`parameters`, `dali`, `seed`) into its info."""
        for index, image in enumerate(self.images):
            image.info["parameters"] = self.infotext(index)
            image.info["seed"] = self.seeds[index]
            image.info["dali"] = json.dumps(self.metadata(index))
