"""The files users bring besides checkpoints, in AUTOMATIC1111's folders.

    data/loras/         LoRAs (kohya/A1111 .safetensors), named in prompts as <lora:name:w>
    data/embeddings/    textual-inversion embeddings (.pt, .safetensors), named by file stem
    data/models/VAE/    separate VAEs (*.vae.safetensors, .pt, .ckpt), chosen by file name
    data/upscalers/     ESRGAN-family upscaler models (sd_core.upscalers), for the hires fix

`Assets.under(data_dir)` gives the three libraries over those folders; a pipeline uses them
after `StableDiffusionPipeline.use_assets(assets)`. Listing a folder costs no model loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sd_core.file_library import FileLibrary

if TYPE_CHECKING:
    from sd_core.embeddings import Embedding
    from sd_core.lora import Lora
    from sd_core.vae_files import VaeFile

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
LORAS_DIR, EMBEDDINGS_DIR, VAE_DIR = Path("loras"), Path("embeddings"), Path("models") / "VAE"
UPSCALERS_DIR = Path("upscalers")


@dataclass(frozen=True)
class AssetFolders:
    """Where each kind of file lives (plain paths: picklable, cheap, no torch)."""

    loras: Path
    embeddings: Path
    vaes: Path
    upscalers: Path | None = None

    @classmethod
    def under(cls, data_dir: Path) -> AssetFolders:
        """A1111's layout under a data directory (see the module docstring)."""
        return cls(
            data_dir / LORAS_DIR,
            data_dir / EMBEDDINGS_DIR,
            data_dir / VAE_DIR,
            data_dir / UPSCALERS_DIR,
        )


@dataclass(frozen=True)
class Assets:
    """The libraries of LoRAs, embeddings and VAE files over `folders`."""

    folders: AssetFolders
    loras: FileLibrary[Lora]
    embeddings: FileLibrary[Embedding]
    vaes: FileLibrary[VaeFile]

    @classmethod
    def in_folders(cls, folders: AssetFolders) -> Assets:
        from sd_core.embeddings import embedding_library
        from sd_core.lora import load_lora
        from sd_core.vae_files import vae_library

        return cls(
            folders,
            FileLibrary(folders.loras, LORA_SUFFIXES, load_lora),
            embedding_library(folders.embeddings),
            vae_library(folders.vaes),
        )

    @classmethod
    def under(cls, data_dir: Path) -> Assets:
        return cls.in_folders(AssetFolders.under(data_dir))

    def refresh(self) -> None:
        """Forget every loaded file; the next use reads the folders and files again."""
        for library in (self.loras, self.embeddings, self.vaes):
            library.refresh()
