"""ArtifactRef: how stages pass artifacts to each other (by reference, never by value)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ArtifactRef(BaseModel):
    """A committed, immutable, content-addressed artifact.

    ``key`` is the content key: a hash of the producing stage and its version, the resolved
    stage config, the keys of the input artifacts and the digests of the models used.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="artifact kind, e.g. 'explanations'")
    uri: str = Field(description="folder holding the artifact's parts on the store")
    key: str = Field(description="content key (hex sha256 prefix)")
    schema_version: str = Field(description="contract name/vN")
    producer: str = Field(description="stage@version that made it")
    config_hash: str
    parents: tuple[str, ...] = Field(default=(), description="keys of the input artifacts")
    num_rows: int = 0
    run_id: str = ""
    created_at: str = ""
    label: str = Field(default="", description="which slot of the recipe made it, e.g. evaluate 'base'")
    digest: str = Field(default="", description="sha256 of the stored weight files (checkpoints)")
