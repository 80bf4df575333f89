"""The LoRA & embedding picker of each generation tab, and the VAE choices beside it.

Prompts use LoRAs and textual-inversion embeddings as AUTOMATIC1111's do: `<lora:name:1>`
and the embedding's name as a word. Picking one from a list appends it to the tab's prompt
(Gradio's textbox does not tell the server where the cursor is, so it goes at the end, as
A1111's extra-networks cards put it) and clears the list for the next pick. "↻" reads the
folders again, for files dropped in while the page is open. Listing reads names only: no
file is loaded until a generation uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from dali_gradio.inputs import dropdown, private
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.assets import MODEL_OWN_VAE

PROJECT_DEFAULT_VAE = ""  # the request leaves `vae` out: the project's default applies


def lora_tag(name: str) -> str:
    return f"<lora:{name}:1>"


def with_tag(prompt: str | None, tag: str) -> str:
    """`prompt` with `tag` at its end, a space between them where a word would run on."""
    prompt = prompt or ""
    if not prompt or prompt[-1].isspace() or prompt[-1] in "([":
        return prompt + tag
    return f"{prompt} {tag}"


@dataclass
class NetworkPicker:
    """One tab's picker: the two lists, their refresh button and the note on empty folders."""

    loras: gr.Dropdown
    embeddings: gr.Dropdown
    refresh: gr.Button
    note: gr.Markdown


class Networks:
    """What the picker and the VAE dropdown offer, read from the studio's asset folders."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def lora_names(self) -> list[str]:
        return [f.name for f in self.studio.assets.loras()]

    def embedding_names(self) -> list[str]:
        return [f.name for f in self.studio.assets.embeddings()]

    def vae_choices(self) -> list[tuple[str, str]]:
        installed = [(f.name, f.name) for f in self.studio.assets.vaes()]
        return [
            ("Project default", PROJECT_DEFAULT_VAE),
            ("Model's own", MODEL_OWN_VAE),
            *installed,
        ]

    def note(self) -> str:
        """Where to put files, for each kind of which none is installed ("" when all have)."""
        folders = self.studio.assets.folders
        kinds = (
            ("LoRAs", "(.safetensors)", folders.loras, self.studio.assets.loras()),
            ("embeddings", "(.pt, .bin, .safetensors)", folders.embeddings,
             self.studio.assets.embeddings()),
            ("VAE files", "(.safetensors, .pt, .ckpt)", folders.vaes, self.studio.assets.vaes()),
        )  # fmt: skip
        lines = [
            f"No {kind} yet: put them {suffixes} in `{folder}`, then ↻."
            for kind, suffixes, folder, installed in kinds
            if not installed
        ]
        return "  \n".join(lines)

    # -- handlers ---------------------------------------------------------------------------

    def insert_lora(self, name: str | None, prompt: str | None) -> tuple[Any, Any]:
        """The prompt with `<lora:name:1>` appended; the list cleared for the next pick."""
        if not name:
            return gr.update(), gr.update()
        return with_tag(prompt, lora_tag(name)), gr.update(value=None)

    def insert_embedding(self, name: str | None, prompt: str | None) -> tuple[Any, Any]:
        """The prompt with the embedding's name appended; the list cleared."""
        if not name:
            return gr.update(), gr.update()
        return with_tag(prompt, name), gr.update(value=None)

    def refresh(self) -> tuple[Any, Any, Any, Any]:
        """The LoRA, embedding and VAE lists read again, and the note on empty folders."""
        note = self.note()
        return (
            gr.update(choices=self.lora_names(), value=None),
            gr.update(choices=self.embedding_names(), value=None),
            gr.update(choices=self.vae_choices()),
            gr.update(value=note, visible=bool(note)),
        )

    # -- layout -----------------------------------------------------------------------------

    def vae_dropdown(self) -> gr.Dropdown:
        # Any name may be typed (or sent over the API): the service checks it and answers with
        # the installed files.
        return dropdown(
            self.vae_choices(), value=PROJECT_DEFAULT_VAE, label="VAE", allow_custom_value=True
        )

    def layout(self, tab: str) -> NetworkPicker:
        """The picker (under a tab's prompt)."""
        note = self.note()
        with gr.Accordion("LoRAs & embeddings", open=False, elem_id=f"{tab}-networks"):
            with gr.Row(equal_height=True):
                loras = gr.Dropdown(
                    self.lora_names(), value=None, label="LoRA → prompt",
                    info="adds <lora:name:1>", elem_id=f"{tab}-loras", scale=3,
                )  # fmt: skip
                embeddings = gr.Dropdown(
                    self.embedding_names(), value=None, label="Embedding → prompt",
                    info="adds its name", elem_id=f"{tab}-embeddings", scale=3,
                )  # fmt: skip
                refresh = gr.Button("↻", scale=0, min_width=50, elem_id=f"{tab}-networks-refresh")
            hint = gr.Markdown(note, visible=bool(note))
        return NetworkPicker(loras, embeddings, refresh, hint)

    def wire(self, picker: NetworkPicker, prompt: gr.Textbox, vae: gr.Dropdown) -> None:
        picker.loras.input(
            self.insert_lora, [picker.loras, prompt], [prompt, picker.loras], **private()
        )
        picker.embeddings.input(
            self.insert_embedding, [picker.embeddings, prompt], [prompt, picker.embeddings],
            **private(),
        )  # fmt: skip
        picker.refresh.click(
            self.refresh, None, [picker.loras, picker.embeddings, vae, picker.note], **private()
        )
