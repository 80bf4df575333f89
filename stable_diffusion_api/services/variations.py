"""`VariationService`: variations of a gallery image (the image page's "Variations").

A variation is the image made again with everything it was made with — its generation's
settings (prompt, sampler, steps, size, hires fix, …, the init image and mask of an img2img or
inpainting) and the image's own seed — but with its starting noise blended towards the noise of
a variation seed by `variation_strength` (AUTOMATIC1111's "Variation seed"): 0 is the image
itself, 1 a new image from the variation seed alone.

Why one job per variation, not one job of `VARIATIONS` images: the engine gives image i of a
job the seed `seed + i`, so in a batch only the first image would start from this image's
seed; the others would be variations of other pictures. Each variation is a job of one image
with the image's seed and the variation seed `first + i` — what A1111 gives a batch with a
variation strength above 0 (every image the same seed, consecutive variation seeds) — and each
can be made again alone from its PNG's infotext.

An image that is itself a variation is varied from its seed's noise: its own variation seed is
not kept (two blends do not make one).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sd_core.params import MAX_SEED, random_seed
from stable_diffusion_api.errors import InvalidField, QueueFull
from stable_diffusion_api.models import Generation, Image
from stable_diffusion_api.schemas import VARIATIONS, GenerationAccepted, GenerationCreate
from stable_diffusion_api.services.gallery import GalleryService
from stable_diffusion_api.services.generations import GenerationService, Inputs
from stable_diffusion_api.services.job_params import params_from_row
from stable_diffusion_api.services.storage import ImageStorage


class VariationService:
    def __init__(
        self, gallery: GalleryService, generations: GenerationService, storage: ImageStorage
    ) -> None:
        self._gallery = gallery
        self._generations = generations
        self._storage = storage

    def queue(
        self,
        image_id: int,
        variation_seed: int | None,
        strength: float,
        source: str = "page",
        count: int = VARIATIONS,
    ) -> list[GenerationAccepted]:
        """Queue `count` variations of image `image_id` in its project, variation seeds
        `variation_seed` … `variation_seed + count - 1` (None or -1: a random first one).

        NotFound when the image is gone; InvalidField naming `variation_seed` (the last one
        past the seeds' limit) or a setting the project can no longer run (its model removed,
        …); QueueFull when not even the first fits in the queue. When the queue fills up after
        the first, the variations queued so far are returned."""
        if variation_seed is None or variation_seed == -1:
            variation_seed = random_seed(count)
        if variation_seed + count - 1 > MAX_SEED:
            raise InvalidField(
                "variation_seed",
                variation_seed,
                f"the {count} variations take seeds up to it + {count - 1}, which must stay "
                f"≤ {MAX_SEED}",
            )
        image, row = self._gallery.with_generation(image_id)
        settings = self._settings(image, row)
        inputs = self._inputs(image, row)
        accepted: list[GenerationAccepted] = []
        for offset in range(count):
            fields = settings | {
                "variation_seed": variation_seed + offset,
                "variation_strength": strength,
            }
            request = self._request(image, fields)
            try:
                job = self._generations.submit(image.project_id, request, source, inputs)
            except QueueFull:
                if not accepted:
                    raise
                break
            accepted.append(job)
        return accepted

    def _settings(self, image: Image, row: Generation) -> dict[str, Any]:
        """The request fields that make `image` again: its generation's params, the model
        by name and the image's own seed, one image per job."""
        params = params_from_row(row)
        fields: dict[str, Any] = {
            name: value
            for name, value in params.to_dict().items()
            if name in GenerationCreate.model_fields and value is not None
        }
        if (params.width is None or params.height is None) and not params.hires:
            # Left to the model's native size: the size the image was made at. (A hires
            # image's size is its second pass's, so that one stays the model's.)
            made = self._gallery.settings_of(image.id)
            fields |= {"width": made["width"], "height": made["height"]}
        return fields | {
            "model": row.model,
            "vae": params.vae or "None",  # None in a request would mean the project's default
            "seed": image.seed,
            "batch": 1,
        }

    def _inputs(self, image: Image, row: Generation) -> Inputs:
        """The init image and mask the generation was made from (None, None for txt2img)."""
        try:
            init = self._storage.load_input(row.init_image) if row.init_image else None
            mask = self._storage.load_input(row.mask) if row.mask else None
        except (OSError, ValueError):  # the file is gone, or a tampered row points elsewhere
            raise InvalidField(
                "init_image", image.id, f"image {image.id}'s init image is no longer stored"
            ) from None
        return init, mask

    @staticmethod
    def _request(image: Image, fields: dict[str, Any]) -> GenerationCreate:
        try:
            return GenerationCreate.model_validate(fields)
        except ValidationError as exc:  # e.g. a prompt that styles made longer than a request
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "image"
            raise InvalidField(field, image.id, f"image {image.id}'s {error['msg']}") from None
