"""Settings, read from `DALI_*` environment variables (pydantic-settings).

Every path defaults to a place under the repository's `data/` directory, so a fresh checkout
runs with no configuration at all:

    DALI_DATA_DIR            data directory (images, uploads, database)     <repo>/data
    DALI_DATABASE_URL        SQLAlchemy URL; PostgreSQL works unchanged      sqlite:///<data>/dali.db
    DALI_STORAGE_URL         where images, thumbnails, filmstrips and inputs  (the data folder)
                             live: file:///shared/folder or s3://bucket/prefix
                             (S3 reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
                             AWS_SECRET_ACCESS_KEY, AWS_REGION)
    DALI_MODELS_DIR          where *.safetensors / *.ckpt checkpoints live   <data>/models
    DALI_LORAS_DIR           LoRAs, named in prompts as <lora:name:weight>    <data>/loras
    DALI_EMBEDDINGS_DIR      textual-inversion embeddings                     <data>/embeddings
    DALI_VAE_DIR             separate VAE files (*.vae.safetensors …)         <data>/models/VAE
    DALI_HOST, DALI_PORT     where ./run.sh (python dali_app.py) listens     127.0.0.1:8000
    DALI_API_KEY             an API key; when set (or DALI_API_AUTH), every  (none)
                             route but a few needs credentials (auth/)
    DALI_API_AUTH            users, "user:password[,user2:password2]"        (none)
    DALI_SESSION_HOURS       how long a login (its session cookie) lasts     24
    DALI_QUEUE_LIMIT         queued jobs accepted before 429                  100
    DALI_MAX_BODY_MB         largest request body accepted before 413         64
    DALI_ALLOWED_HOSTS       host names the server answers to, comma-separated loopback names
    DALI_PIPELINE_CACHE_MB   memory budget for loaded pipelines              4096
    DALI_TORCH_THREADS       CPU threads torch may use (None: torch decides)  (none)
    DALI_WORKER_MODE         "process": workers in child processes; "thread"  process
    DALI_FILMSTRIP_FRAMES    reverse-process frames kept per generation; 0 off  8
    DALI_BATCH_MAX           matching queued jobs a worker runs in one       1
                             denoising loop (1: one at a time)
    DALI_SAVE_RETRY_S        how long a finished job's images wait for a database 60
                             that refuses writes before they go to quarantine
    DALI_ORPHAN_GRACE_S      recovery leaves alone files younger than this    120
                             (another node may not have written their rows yet)
    DALI_RUN_WORKERS         run this host's workers (false: a web host only)  true
    DALI_NODE_NAME           this host's name among the nodes (node/device ids) the host name
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from sd_core.assets import AssetFolders
from stable_diffusion_api.middleware import LOOPBACK_HOSTS

REPO_ROOT = Path(__file__).resolve().parent.parent
# A node's name: it starts device ids ("gpu-b/cuda:0"), so no "/" and nothing odd in it, and
# short enough that "name/cuda:15" fits the 32 characters of a device column.
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,23}$")
TEMPLATES_DIR = REPO_ROOT / "templates"
STATIC_DIR = REPO_ROOT / "static"


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="DALI_", frozen=True, extra="ignore")

    data_dir: Path = REPO_ROOT / "data"
    database_url: str | None = None  # None → SQLite file `dali.db` in the data directory
    # "" → the data folder; file:///folder or s3://bucket/prefix (services/object_store.py).
    # Checked when the studio is built: a bad one stops the start (StorageConfigError).
    storage_url: str = ""
    models_dir: Path | None = None  # None → `models/` in the data directory
    # None → A1111's folders in the data directory (sd_core.assets).
    loras_dir: Path | None = None
    embeddings_dir: Path | None = None
    vae_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key: SecretStr | None = None
    # "user:password[,user2:password2]", A1111's --api-auth; checked by `auth.Credentials`.
    api_auth: SecretStr | None = None
    session_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    queue_limit: int = Field(default=100, ge=1)
    # Besides the loopback names and DALI_HOST: names this server answers to (e.g. a LAN name
    # when bound to one interface). Bound to 0.0.0.0 or ::, it answers to any name.
    allowed_hosts: str = ""
    # Two base64 uploads of schemas.MAX_UPLOAD_CHARS (24 MB each) fit with room to spare.
    max_body_mb: int = Field(default=64, ge=1)
    pipeline_cache_mb: int = Field(default=4096, ge=0)
    # On a busy CPU, torch's spinning worker threads can slow sampling down many times over;
    # fewer threads than cores leaves room for the web server. None keeps torch's default.
    torch_threads: int | None = Field(default=None, ge=1)
    # Sampling a small model holds the GIL most of the time: in its own process it cannot
    # slow the web server down. "thread" keeps the workers in the server process.
    worker_mode: Literal["process", "thread"] = "process"
    # How a worker process shares the CPU: "normal" — like any program (a page or an API read
    # still answers within 50 ms at p99 with every core busy: the web server needs little
    # CPU, and gets it first as the one waiting); "low" — niceness 10, which on a machine busy
    # with other work made the user's own job 9x slower than the CLI; "idle" — SCHED_IDLE for
    # the CPU device, which starves it there (102 s for a 17 s image). Worker processes also
    # keep OpenMP's threads from spinning long (worker_process.wait_without_spinning).
    worker_priority: Literal["idle", "low", "normal"] = "normal"
    # Live progress goes out at most this often (the first and last step always): a small
    # model takes 40 steps a second, and every report costs the sampler and every event stream.
    progress_interval_s: float = Field(default=0.1, ge=0)
    # A preview costs a copy of the latent, a VAE-free latent→RGB projection and a small PNG
    # (the projection and the PNG in the server when the worker is a process): one is made
    # with a progress report at least `preview_every` steps and `preview_interval_s` seconds
    # after the last (4 a second is plenty to watch).
    preview_every: int = Field(default=3, ge=1)
    preview_interval_s: float = Field(default=0.25, ge=0)
    # A generation keeps its reverse process (image 0's noisy latent and predicted x0) at this
    # many evenly spaced steps, decoded after the images (2 VAE decodes a frame); 0 turns it off.
    filmstrip_frames: int = Field(default=8, ge=0, le=32)
    # Another process's job counts as interrupted when its heartbeat is older than this.
    stale_after_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    # Workers also poll the database, so jobs queued by another process (Gradio) are found.
    poll_s: float = Field(default=1.0, gt=0)
    # A job whose final write (its image rows, `succeeded`) the database refuses (disk full,
    # file read-only) retries it this long before its files go to quarantine and it fails
    # (services/job_outcomes.py).
    save_retry_s: float = Field(default=60.0, ge=0)
    # Recovery quarantines image files no row points at, but only those older than this: with
    # a shared store, another node may have written a file and not yet its row (it writes the
    # row right after; a job whose database is down retries for `save_retry_s`). Kept at least
    # `stale_after_s`: by then a node that wrote the file is alive or known dead.
    orphan_grace_s: float = Field(default=120.0, ge=0)
    # A worker claims up to this many queued jobs that match (model, size, sampler, steps,
    # settings; services/job_queue.py) and runs them in one denoising loop. Each image is the
    # same as alone (bit for bit on the CPU, sd_core/batched.py), so only time changes: on a
    # GPU, where one UNet call on 8 rows costs little more than on 2, throughput grows several
    # times (docs/benchmarks.md, "Batching"); on the CPU, where each job's GEMMs still run on
    # their own, about 1.7× at 8 jobs of the built-in model. The default, 1, keeps one job at a
    # time: a batch ends when its slowest job does, so the first job of a batch waits for the
    # others (its latency grows with the batch), which only pays off with many clients.
    batch_max: int = Field(default=1, ge=1, le=16)
    run_migrations: bool = True
    # False: a web host that runs no workers; the nodes (`python -m stable_diffusion_api
    # worker` on other hosts, same database) run its jobs.
    run_workers: bool = True
    # This host's name among the nodes (services/nodes.py); None → the host name. A name set
    # here must be unique among live processes; the default is shared by one host's processes
    # (the web server and the Gradio UI on one machine are one node).
    node_name: str | None = Field(default=None, pattern=NODE_NAME.pattern)
    # Mount the Gradio UI (dali_gradio, optional extra) at /gradio; only dali_app.py mounts it.
    gradio: bool = False

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_node_name(self) -> str:
        """`node_name`, else this host's name cut to a valid node name."""
        if self.node_name:
            return self.node_name
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]).strip("-._")
        return (host or "localhost")[:24].rstrip("-._")

    @property
    def resolved_models_dir(self) -> Path:
        base = self.models_dir if self.models_dir is not None else self.resolved_data_dir / "models"
        return base.expanduser().resolve()

    @property
    def asset_folders(self) -> AssetFolders:
        """Where the LoRAs, embeddings and VAE files live."""
        default = AssetFolders.under(self.resolved_data_dir)
        chosen = (self.loras_dir, self.embeddings_dir, self.vae_dir)
        loras, embeddings, vaes = (
            given.expanduser().resolve() if given is not None else fallback
            for given, fallback in zip(
                chosen, (default.loras, default.embeddings, default.vaes), strict=True
            )
        )
        return AssetFolders(loras, embeddings, vaes, default.upscalers)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'dali.db'}"

    @property
    def images_dir(self) -> Path:
        return self.resolved_data_dir / "images"

    @property
    def autotune_file(self) -> Path:
        """Each device's autotune results and chosen fast paths (`sd_core.autotune`)."""
        return self.resolved_data_dir / "autotune.json"

    @property
    def inputs_dir(self) -> Path:
        """Uploaded init images and masks, kept until their job is deleted."""
        return self.resolved_data_dir / "inputs"

    def host_names(self) -> tuple[str, ...] | None:
        """The Host header names this server answers to; None: any (bound to every interface)."""
        if self.host in ("0.0.0.0", "::"):
            return None
        extra = tuple(name.strip() for name in self.allowed_hosts.split(",") if name.strip())
        return (*LOOPBACK_HOSTS, self.host, *extra)

    @property
    def auth_configured(self) -> bool:
        """Whether credentials are required (an API key, users, or both)."""
        return self.api_key is not None or self.api_auth is not None

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * 1024 * 1024

    @property
    def pipeline_cache_bytes(self) -> int:
        return self.pipeline_cache_mb * 1024 * 1024
