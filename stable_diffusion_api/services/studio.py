"""`Studio`: every service wired together, for any front end.

The FastAPI app builds one in `create_app()` and keeps it in `app.state.studio`; the Gradio UI
(or a script) can build its own over the same settings — same database, same storage, same
queue — or reuse the app's when mounted inside it:

    studio = Studio(Settings())
    studio.start()            # migrations, hardware detection, recovery, workers
    project = studio.projects.get_or_create("Gradio")
    job = studio.generations.submit(project.id, GenerationCreate(prompt="a red circle"), "gradio")
    done = studio.generations.wait(job.id, timeout=600)
    studio.stop()
"""

from __future__ import annotations

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.services.assets import AssetService
from stable_diffusion_api.services.gallery import GalleryService
from stable_diffusion_api.services.generations import GenerationService
from stable_diffusion_api.services.generator import Generator
from stable_diffusion_api.services.hardware import HardwareService
from stable_diffusion_api.services.identity import bind_data_folder
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.projects import ProjectService
from stable_diffusion_api.services.registry import ModelRegistry
from stable_diffusion_api.services.runtime import freeze_long_lived_objects
from stable_diffusion_api.services.samplers import SamplerCatalog
from stable_diffusion_api.services.speeds import SpeedService
from stable_diffusion_api.services.storage import ImageStorage
from stable_diffusion_api.services.upscales import UpscaleService
from stable_diffusion_api.services.variations import VariationService
from stable_diffusion_api.services.workers import RecoveryReport, WorkerPool


class Studio:
    def __init__(
        self,
        settings: Settings,
        generator: Generator | None = None,
        worker_mode: str | None = None,
    ) -> None:
        """`generator` replaces the engine (tests); an injected generator lives in this process,
        so its workers are threads. `worker_mode` overrides `settings.worker_mode`."""
        if worker_mode is None:
            worker_mode = "thread" if generator is not None else settings.worker_mode
        if generator is None:
            from stable_diffusion_api.services.engine import SdCoreGenerator

            generator = SdCoreGenerator(
                settings.pipeline_cache_bytes,
                settings.torch_threads,
                settings.asset_folders,
                fast_path_file=settings.autotune_file,
            )
        self.settings = settings
        self.generator = generator
        self.db = Database(settings.resolved_database_url)
        self.storage = ImageStorage(settings.resolved_data_dir)
        self.jobs = JobQueue(self.db)  # every change of a job's status
        self.hub = ProgressHub()
        self.hardware = HardwareService(generator)
        self.samplers = SamplerCatalog(generator)
        self.models = ModelRegistry(settings, self.db, generator)
        self.speeds = SpeedService(self.db)
        self.assets = AssetService(settings.asset_folders)
        self.projects = ProjectService(
            self.db, self.hardware, self.models, self.samplers, self.storage, self.hub, self.assets
        )
        self.gallery = GalleryService(self.db, self.storage)
        self.upscales = UpscaleService(
            self.db, self.storage, self.gallery, settings.asset_folders.upscalers
        )
        self.workers = WorkerPool(
            settings,
            self.db,
            generator,
            self.hardware,
            self.models,
            self.storage,
            self.hub,
            self.speeds,
            worker_mode,
            self.jobs,
        )
        self.generations = GenerationService(
            settings,
            self.db,
            self.models,
            self.hardware,
            self.samplers,
            self.storage,
            self.hub,
            self.speeds,
            wake=self.workers.wake,
            assets=self.assets,
            gallery=self.gallery,
        )
        self.variations = VariationService(self.gallery, self.generations, self.storage)
        self.started = False
        self.studio_id: str | None = None  # set by start(), once the data folder is bound

    def start(self) -> RecoveryReport:
        """Create the data directories, migrate the schema, detect hardware, start workers."""
        for directory in (
            self.settings.resolved_data_dir,
            self.settings.images_dir,
            self.settings.inputs_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        if self.settings.run_migrations:
            self.db.migrate()
        # Before recovery looks for files no row points at: are these rows and files one
        # studio's? (StudioMismatch stops the start with nothing changed.)
        self.studio_id = bind_data_folder(self.db, self.settings.resolved_data_dir)
        self.hardware.refresh()
        report = self.workers.start()
        self.started = True
        return report

    def stop(self) -> None:
        if self.started:
            self.workers.stop()
            self.started = False
        self.db.dispose()


__all__ = ["Studio", "freeze_long_lived_objects"]
