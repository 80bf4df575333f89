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

from collections.abc import Collection

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.services.assets import AssetService
from stable_diffusion_api.services.gallery import GalleryService
from stable_diffusion_api.services.generations import GenerationService
from stable_diffusion_api.services.generator import Generator
from stable_diffusion_api.services.hardware import HardwareService
from stable_diffusion_api.services.identity import Place, bind_store
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.nodes import NodeRegistry
from stable_diffusion_api.services.pg_notify import web_live
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
        devices: Collection[str] | None = None,
        node_command: bool = False,
        hub: ProgressHub | None = None,
    ) -> None:
        """`generator` replaces the engine (tests); an injected generator lives in this process,
        so its workers are threads. `worker_mode` overrides `settings.worker_mode`.
        `devices`: only these local devices (ids or kinds) get workers. `node_command`: this is
        `python -m stable_diffusion_api worker` (services/node_worker.py): a stopping worker
        hands its job back to the queue, and start-up leaves image files alone. `hub`: where
        progress reports go (default: a plain in-process `ProgressHub`)."""
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
        self.storage = ImageStorage.open(settings.storage_url, settings.resolved_data_dir)
        self.jobs = JobQueue(self.db)  # every change of a job's status
        self.hub = hub if hub is not None else ProgressHub()
        self.node_command = node_command
        # On PostgreSQL, worker nodes on other hosts: their progress replayed on `hub`; cancels
        # and new jobs announced to them (services/pg_notify.py). None on SQLite, and in the
        # worker command, whose node end is its own (worker_command.py).
        self.live = None if node_command else web_live(settings.resolved_database_url, self.hub)
        self.nodes = NodeRegistry(self.db, settings.resolved_node_name, settings.stale_after_s)
        self.hardware = HardwareService(generator, self.nodes, settings.run_workers, devices)
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
            self.nodes,
            hand_back=node_command,
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
            wake=self.workers.wake if self.live is None else self.live.waking(self.workers.wake),
            assets=self.assets,
            gallery=self.gallery,
        )
        self.variations = VariationService(self.gallery, self.generations, self.storage)
        self.started = False
        self.studio_id: str | None = None  # set by start(), once the file store is bound

    def start(self) -> RecoveryReport:
        """Create the data directories, migrate the schema, detect hardware, start workers."""
        directories = [self.settings.resolved_data_dir]
        if not self.settings.storage_url:  # the files live in the data folder
            directories += [self.settings.images_dir, self.settings.inputs_dir]
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
        if self.settings.run_migrations:
            self.db.migrate()
        # Before recovery looks for files no row points at: are these rows and files one
        # studio's? (StudioMismatch stops the start with nothing changed.)
        self.studio_id = bind_store(self.db, self.storage.store, self._store_place())
        if self.settings.run_workers:  # a taken name stops it before the engine loads
            self.nodes.check_name_free(explicit=self.settings.node_name is not None)
        self.hardware.refresh()
        if self.live is not None:
            self.live.start()
        # Image rows and files are checked against the store by a single machine only (a web
        # host or a node leaves it to that machine's rules: docs/scale-out.md). NodeNameTaken
        # stops a node whose name is taken.
        report = self.workers.start(
            recover_files=self.settings.run_workers and not self.node_command
        )
        self.started = True
        return report

    def _store_place(self) -> Place:
        """How messages name the file store, and the setting that chooses it."""
        if self.settings.storage_url:
            return Place(f"the file store {self.storage.store.url!r}", "DALI_STORAGE_URL")
        return Place(f"the data folder {str(self.settings.resolved_data_dir)!r}", "DALI_DATA_DIR")

    def stop(self) -> None:
        if self.started:
            self.workers.stop()
            self.started = False
        if self.live is not None:
            self.live.stop()
        self.db.dispose()


__all__ = ["Studio", "freeze_long_lived_objects"]
