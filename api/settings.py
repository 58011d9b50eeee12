"""Service settings, read from the environment (prefix ``TICKETSOLVER_``) or given to
:func:`ticketsolver_api.main.create_app`.

``TICKETSOLVER_TOKEN=secret`` requires ``Authorization: Bearer secret``; ``TICKETSOLVER_CORS_ORIGINS``
takes a JSON list or comma-separated origins; every other field maps to ``TICKETSOLVER_<NAME>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ticketsolver.config import MAX_N
from ticketsolver.jobs import Limits
from ticketsolver.jobs.spec import default_memory_budget


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TICKETSOLVER_", extra="ignore")

    data_dir: Path = Path("ticketsolver-data")  # store, uploads, tickets, resume files
    database_url: str | None = None  # any SQLAlchemy URL; default: SQLite file in data_dir
    token: SecretStr | None = None  # bearer token required on every route but /healthz and the API docs
    allow_no_token: bool = False  # serve without a token on a non-loopback host (refused otherwise)
    max_upload_bytes: Annotated[int, Field(ge=1)] = 64 * 1024**2  # whole request body (413 beyond)
    max_n: Annotated[int, Field(ge=1, le=MAX_N)] = MAX_N  # largest n per item
    max_weights_per_job: Annotated[int, Field(ge=1)] = 20_000_000  # target weights summed over a job's items
    max_batch_items: Annotated[int, Field(ge=1)] = 32  # checkpoints x n values per job
    max_sweep_rows: Annotated[int, Field(ge=1)] = 256  # settings (tickets) of one sweep job
    # bytes the items running at once may use (estimated peak per worker); default: half of this machine's RAM
    memory_budget_bytes: Annotated[int, Field(ge=1)] = Field(default_factory=default_memory_budget)
    retention_days: Annotated[float | None, Field(gt=0)] = None  # purge finished jobs older than this; None: keep
    time_limit_s: Annotated[float | None, Field(gt=0)] = None  # wall clock of an item without its own; None: none
    executor: Literal["local", "ray"] = "local"  # where solving runs
    ray_address: str | None = None  # e.g. ray://ray-head:10001; None starts a local cluster per worker
    ray_chunk: Annotated[int | None, Field(ge=1)] = None  # problems per Ray task; None: ~2 tasks per cluster CPU
    workers: Annotated[int, Field(ge=1, le=64)] = 1  # worker processes = items solved at the same time
    poll_interval: Annotated[float, Field(gt=0, le=10)] = 0.5  # dispatcher's look at the queue when nothing wakes it
    warm_up: bool = True  # start the worker processes with the service (the first job then starts at once)
    cors_origins: Annotated[list[str], NoDecode] = []  # browser origins allowed; empty: CORS closed
    log_level: str = "info"

    @field_validator("token", "database_url", "ray_address", "retention_days", "time_limit_s", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # compose files pass ${VAR:-}: an empty variable means "not set", never "the empty token"
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @property
    def limits(self) -> Limits:
        return Limits(
            max_n=self.max_n,
            max_batch_items=self.max_batch_items,
            max_sweep_rows=self.max_sweep_rows,
            max_weights_per_job=self.max_weights_per_job,
            max_checkpoint_bytes=self.max_upload_bytes,
            memory_budget_bytes=self.memory_budget_bytes,
            time_limit_s=self.time_limit_s,
        )
