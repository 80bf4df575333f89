"""Projects: a name, the hardware its generations run on, a default model and settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import Conflict, NotFound
from stable_diffusion_api.models import Generation, Image, Project, name_key, utcnow
from stable_diffusion_api.schemas import (
    GenerationDefaults,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
)
from stable_diffusion_api.services.assets import AssetService
from stable_diffusion_api.services.hardware import HardwareService
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.registry import ModelRegistry
from stable_diffusion_api.services.samplers import SamplerCatalog
from stable_diffusion_api.services.storage import ImageStorage


class ProjectService:
    def __init__(
        self,
        db: Database,
        hardware: HardwareService,
        models: ModelRegistry,
        samplers: SamplerCatalog,
        storage: ImageStorage,
        hub: ProgressHub,
        assets: AssetService,
    ) -> None:
        self._assets = assets
        self._db = db
        self._hardware = hardware
        self._models = models
        self._samplers = samplers
        self._storage = storage
        self._hub = hub

    def _check_defaults(self, defaults: GenerationDefaults) -> dict[str, Any]:
        checked = defaults.model_copy(
            update={
                "sampler": self._samplers.canonical(defaults.sampler, "defaults.sampler"),
                "vae": self._assets.check_vae(defaults.vae, "defaults.vae"),
            }
        )
        return checked.model_dump()

    @staticmethod
    def _name_taken(name: str) -> Conflict:
        return Conflict(f"a project named {name!r} already exists; choose another name")

    def _check_name_free(self, name: str, except_id: int | None = None) -> None:
        """Conflict if another project has this name in any case (`models.name_key`). Only a
        courtesy check before the other work: `_saving_name` catches a concurrent twin."""
        with self._db.session() as session:
            query = select(Project.id).where(Project.name_key == name_key(name))
            if except_id is not None:
                query = query.where(Project.id != except_id)
            if session.scalar(query) is not None:
                raise self._name_taken(name)

    @contextmanager
    def _saving_name(self, name: str) -> Iterator[Any]:
        """A session writing a project called `name`; the unique index refusing it (a project of
        that name committed since `_check_name_free`) is a Conflict, not a 500."""
        try:
            with self._db.session() as session:
                yield session
        except IntegrityError:
            raise self._name_taken(name) from None

    def create(self, data: ProjectCreate) -> ProjectOut:
        self._check_name_free(data.name)
        device, dtype = self._hardware.check(data.device, data.dtype)
        model = (
            self._models.resolve(data.default_model, "default_model")
            if data.default_model
            else None
        )
        project = Project(
            name=data.name,
            description=data.description,
            device=device.id,
            dtype=dtype,
            low_memory=data.low_memory,
            default_model=model.name if model else None,
            defaults=self._check_defaults(data.defaults),
        )
        with self._saving_name(data.name) as session:
            session.add(project)
        return self.view(project.id)

    def get(self, project_id: int) -> Project:
        with self._db.session() as session:
            project = session.get(Project, project_id)
            if project is None:
                raise NotFound("project", project_id)
            return project

    def get_or_create(self, name: str, device: str | None = None) -> Project:
        """The project called `name`, created on `device` (default: the CPU) if absent.

        For front ends that have no project picker (the A1111 API puts its images in "API").
        """
        for _ in range(3):
            with self._db.session() as session:
                found = session.scalar(select(Project).where(Project.name_key == name_key(name)))
                if found is not None:
                    return found
            try:
                return self.get(self.create(ProjectCreate(name=name, device=device or "cpu")).id)
            except Conflict:  # created by a concurrent request in the meantime: find it
                continue
        raise self._name_taken(name)  # created and deleted again, thrice: give up

    def _views(self, session: Any, projects: list[Project]) -> list[ProjectOut]:
        ids = [p.id for p in projects]
        rows = session.execute(
            select(Image.project_id, func.count(Image.id), func.max(Image.id))
            .where(Image.project_id.in_(ids))
            .group_by(Image.project_id)
        )
        counts = {pid: (count, newest) for pid, count, newest in rows}
        views = []
        for project in projects:
            count, newest = counts.get(project.id, (0, None))
            view = ProjectOut.model_validate(project)
            views.append(view.model_copy(update={"image_count": count, "cover_image_id": newest}))
        return views

    def list(self) -> list[ProjectOut]:
        with self._db.session() as session:
            projects = list(session.scalars(select(Project).order_by(Project.updated_at.desc())))
            return self._views(session, projects)

    def view(self, project_id: int) -> ProjectOut:
        with self._db.session() as session:
            project = session.get(Project, project_id)
            if project is None:
                raise NotFound("project", project_id)
            return self._views(session, [project])[0]

    def update(self, project_id: int, data: ProjectUpdate) -> ProjectOut:
        current = self.get(project_id)
        changes = data.model_dump(exclude_unset=True)
        if changes.get("name") is not None:
            self._check_name_free(changes["name"], except_id=project_id)
        if "device" in changes or "dtype" in changes:
            device, dtype = self._hardware.check(
                changes.get("device") or current.device,
                # A new device without a dtype starts from its own default.
                changes.get("dtype", None if "device" in changes else current.dtype),
            )
            changes["device"], changes["dtype"] = device.id, dtype
        if changes.get("default_model") is not None:
            changes["default_model"] = self._models.resolve(
                changes["default_model"], "default_model"
            ).name
        if data.defaults is not None:
            changes["defaults"] = self._check_defaults(data.defaults)
        for key in ("name", "low_memory", "description", "device", "defaults"):
            if key in changes and changes[key] is None:
                del changes[key]  # null means "unchanged" for fields that cannot be empty
        with self._saving_name(changes.get("name", current.name)) as session:
            project = session.get(Project, project_id)
            if project is None:
                raise NotFound("project", project_id)
            for key, value in changes.items():
                setattr(project, key, value)
            project.updated_at = utcnow()
        return self.view(project_id)

    def delete(self, project_id: int, confirm: bool) -> None:
        """Delete a project with its generations and image files.

        A project holding images is deleted only with `confirm` (Conflict otherwise, saying how
        many images would go). Its queued jobs are canceled and a running one is told to stop;
        the worker throws that job's files away when it finds its row gone.
        """
        with self._db.session() as session:
            if session.get(Project, project_id) is None:
                raise NotFound("project", project_id)
            images = session.scalar(
                select(func.count(Image.id)).where(Image.project_id == project_id)
            )
            if images and not confirm:
                raise Conflict(
                    f"project {project_id} holds {images} images; "
                    "delete again with confirm=true to delete them too"
                )
            running = JobQueue.cancel_project_jobs(session.connection(), project_id)
            generation_ids = list(
                session.scalars(select(Generation.id).where(Generation.project_id == project_id))
            )
            # The database cascades to generations and images (foreign keys ON DELETE CASCADE).
            session.execute(delete(Project).where(Project.id == project_id))
        for generation_id in running:
            self._hub.request_cancel(generation_id)
        for generation_id in generation_ids:
            self._storage.delete_inputs(generation_id)
        self._storage.delete_project(project_id)
