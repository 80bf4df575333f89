"""The `<lora:…>` tags of a prompt → the LoRAs to apply, as AUTOMATIC1111 reads them.

    <lora:name>                 text encoder and UNet at 1.0
    <lora:name:0.8>             both at 0.8
    <lora:name:0.8:0.5>         text encoder 0.8, UNet 0.5
    <lora:name:te=0.8:unet=0.5> the same, by name (`lyco:` is read like `lora:`)

Tags are taken out of the prompt and the negative prompt before encoding; nothing of a tag is
ever tokenized. What cannot be used is left out with a warning that says why, and the image is
made without it (A1111's behaviour): a LoRA that is not installed, a multiplier that is not a
number, a tag in the negative prompt (A1111 applies LoRAs from the prompt only), a kind other
than LoRA (hypernetworks are not supported). A LoRA file that is installed but corrupt, or
pickled code, is refused (`LoraError`): the user must know their file is broken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sd_core.prompt_parser import ExtraNetwork, extract_extra_networks

if TYPE_CHECKING:
    from sd_core.clip import CLIPTextModel
    from sd_core.file_library import FileLibrary
    from sd_core.lora import Lora
    from sd_core.unet import UNetModel

LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraUse:
    """One LoRA as a prompt asks for it: the file and its two multipliers."""

    lora: Lora
    text_encoder: float
    unet: float


@dataclass(frozen=True)
class PromptNetworks:
    """The prompts without their tags, the LoRAs they ask for and the warnings on the way."""

    prompt: str
    negative_prompt: str
    loras: tuple[LoraUse, ...]
    warnings: tuple[str, ...]

    def applied(
        self, text_encoder: CLIPTextModel, unet: UNetModel
    ) -> AbstractContextManager[tuple[str, ...]]:
        """The models with these LoRAs patched in for the block, restored bit-identically
        after (`sd_core.lora.applied_loras`); it yields the warnings of applying them."""
        if not self.loras:
            return nullcontext(())
        from sd_core.lora import applied_loras

        return applied_loras(
            text_encoder, unet, [(u.lora, u.text_encoder, u.unet) for u in self.loras]
        )


def tag_text(network: ExtraNetwork) -> str:
    """The tag as written: `<lora:name:0.8>`."""
    return f"<{network.kind}:{network.name}{''.join(':' + a for a in network.args)}>"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def listed(names: Sequence[str], most: int = 10) -> str:
    """`a, b, c` — at most `most` names, then how many more; "none" for none."""
    if not names:
        return "none"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def lora_multipliers(args: Sequence[str]) -> tuple[float, float] | str:
    """(text encoder, UNet) multipliers of a tag's arguments, or the reason they can't be read.

    Positional: [te [, unet]] (unet defaults to te); named: `te=`, `unet=`; extra positional
    arguments (A1111's "dyn" dimension) are ignored."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep:
            named[key.strip().lower()] = value.strip()
        else:
            positional.append(arg.strip())
    unknown = sorted(set(named) - {"te", "unet", "dyn"})
    if unknown:
        return f"unknown argument {unknown[0]!r} (allowed: te=, unet=)"
    te_text = named.get("te", positional[0] if positional else "1")
    te = _number(te_text)
    if te is None:
        return f"multiplier {te_text!r} is not a number"
    unet_text = named.get("unet", positional[1] if len(positional) > 1 else te_text)
    unet = _number(unet_text)
    if unet is None:
        return f"multiplier {unet_text!r} is not a number"
    return te, unet


def prompt_networks(
    prompt: str, negative_prompt: str, loras: FileLibrary[Lora] | None
) -> PromptNetworks:
    """The tags of both prompts read (see the module docstring). Raises LoraError for an
    installed LoRA file that cannot be loaded."""
    text, networks = extract_extra_networks(prompt)
    negative, negative_networks = extract_extra_networks(negative_prompt)
    warnings = [
        f"{tag_text(n)} was removed from the negative prompt: LoRAs apply from the prompt only"
        for n in negative_networks
    ]
    uses: list[LoraUse] = []
    for network in networks:
        tag = tag_text(network)
        if network.kind not in LORA_KINDS:
            warnings.append(
                f"{tag} was removed from the prompt: {network.kind} networks are not supported"
            )
            continue
        multipliers = lora_multipliers(network.args)
        if isinstance(multipliers, str):
            warnings.append(f"{tag} was left out: {multipliers}")
            continue
        lora = loras.get(network.name) if loras is not None else None
        if lora is None:
            installed = loras.names() if loras is not None else []
            warnings.append(
                f"{tag} was left out: no LoRA named {network.name!r} is installed "
                f"(installed: {listed(installed)})"
            )
            continue
        uses.append(LoraUse(lora, *multipliers))
    return PromptNetworks(text, negative, tuple(uses), tuple(warnings))
