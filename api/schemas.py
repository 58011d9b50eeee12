"""Request and response schemas of the service (pydantic): the Job* families."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ticketsolver import BuildConfig
from ticketsolver.construction.rounds import MAX_RESAMPLE
from ticketsolver.jobs import JobSpec
from ticketsolver.solvers import available_solvers

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Box = tuple[float, float]


class JobCreate(BaseModel):
    """The ``params`` field of ``POST /approximate`` (a JSON string)."""

    model_config = ConfigDict(extra="forbid")

    n: int | list[int] = Field(BuildConfig.n, description="random hidden units per block; a list makes a sweep")
    seed: int = Field(BuildConfig.seed, ge=0, lt=2**63)
    solver: str = Field(BuildConfig.solver, description="subset-sum backend: " + ", ".join(available_solvers()))
    input_domain: Box | None = Field(None, description="box [lo, hi] of the inputs; lo >= 0 allows construction O")
    resample: int = Field(
        BuildConfig.resample,
        ge=0,
        le=MAX_RESAMPLE,
        description="opt-in re-randomisation rounds (IteRand); 0 = pure source",
    )
    tolerance: float | None = Field(
        BuildConfig.tolerance,
        ge=0,
        allow_inf_nan=False,
        description="pure builds: accept a subset sum within it (default 1e-8); resample > 0: redraw above it (1e-7)",
    )
    arch: Literal["lenet5", "mlp", "export"] | None = None
    verify: bool = True
    verify_box: Box | None = Field(None, description="verification box; default input_domain, else [-1, 1]")
    n_random: int = Field(256, ge=0, le=100_000)
    worst_case_starts: int = Field(2, ge=0, le=64)
    worst_case_steps: int = Field(10, ge=0, le=1_000)
    dtypes: list[Literal["float32", "float64"]] = Field(["float32", "float64"], min_length=1)
    certify: bool = True

    @field_validator("n")
    @classmethod
    def _n_values(cls, value: int | list[int]) -> int | list[int]:
        values = value if isinstance(value, list) else [value]
        if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError("n must be a positive integer or a non-empty list of distinct positive integers")
        return value

    @field_validator("solver")
    @classmethod
    def _known_solver(cls, value: str) -> str:
        if value not in available_solvers():
            raise ValueError(f"unknown solver {value!r}; choose one of {', '.join(available_solvers())}")
        return value

    def to_spec(self) -> JobSpec:
        data = self.model_dump()
        data["n"] = data["n"] if isinstance(data["n"], list) else [data["n"]]
        return JobSpec.from_dict(data)


class JobCreated(BaseModel):
    job_id: str


class LayerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    pair: int
    fraction: float
    message: str


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    position: int
    name: str
    size: int
    sha256: str
    arch: str
    target_params: int


class ItemPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    position: int
    checkpoint: str
    checkpoint_position: int
    n: int
    state: JobState
    progress: Annotated[float, Field(ge=0, le=1)]
    message: str
    error: str | None
    eta_seconds: float | None
    started_at: datetime | None
    finished_at: datetime | None
    has_ticket: bool
    problems_solved: int
    layers: list[LayerPublic]


class JobSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    state: JobState
    progress: Annotated[float, Field(ge=0, le=1)]
    eta_seconds: float | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPublic(JobSummary):
    executor: str
    params: dict[str, Any]
    checkpoints: list[CheckpointPublic]
    items: list[ItemPublic]


class JobsPublic(BaseModel):
    data: list[JobSummary]
    count: int


class TicketPublic(BaseModel):
    k: int
    checkpoint: str
    n: int
    state: JobState
    url: str | None


class TicketsPublic(BaseModel):
    data: list[TicketPublic]
    count: int


class TicketSizesPublic(BaseModel):
    """A ticket's counts as ``Ticket.sizes()`` states them: kept + pruned = source."""

    model_config = ConfigDict(extra="allow")

    target_params: int = Field(description="weights and biases of the target's linear/conv layers")
    source_params: int = Field(description="every entry of the random tensors (U, beta, V)")
    kept_params: int = Field(description="source entries whose mask is True")
    pruned_params: int = Field(description="source entries whose mask is False (zero in the network)")
    source_kind: Literal["iid", "rerandomized"] | None = Field(
        None,
        description=(
            "iid: one i.i.d. random network, every random tensor its law at draw 0; rerandomized: some units' "
            "values chosen among examined_values random draws with knowledge of the target (IteRand-style); "
            "null in reports made before the field existed"
        ),
    )
    examined_values: int | None = Field(
        None,
        description=(
            "random values the build drew and compared, discarded draws included (= source_params when iid); "
            "null where the build did not record it"
        ),
    )


class TicketReportPublic(BaseModel):
    """The ticket part of an item's report (``ticketsolver inspect --json``): sizes, per-layer facts, solver."""

    model_config = ConfigDict(extra="allow")

    sizes: TicketSizesPublic


class ItemReport(BaseModel):
    model_config = ConfigDict(extra="allow")

    item: dict[str, Any]
    ticket: TicketReportPublic
    kept_values_sha256: str
    verification: dict[str, Any] | None = None


class JobReport(BaseModel):
    job: JobSummary
    items: list[ItemReport | None]
