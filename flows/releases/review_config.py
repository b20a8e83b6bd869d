"""The recipe sections of human spot-checks (flows/releases/review.py): ``review:`` (what each night logs to the
MLflow review queue) and ``audits.human_review`` (whether a release waits for the verdicts). Neither is stage
config: no artifact key depends on them."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class ReviewConfig(BaseModel):
    """Each factory night logs a stratified sample of its kept examples as MLflow traces into one review queue.
    Strata: the kept teacher rows by reward quartile, reference fallbacks, rows near the length limit, and
    uniformly at random; the draw is seeded by the distill set's key (the same set always gives the same sample,
    and a night whose distill set was already sampled logs nothing new)."""

    model_config = ConfigDict(extra="forbid")
    sample: int = Field(default=24, ge=1, le=500, description="examples per night (fewer when the set is smaller)")
    near_length_limit: float = Field(default=0.9, gt=0, le=1, description="an explanation is near the length "
                                     "limit at this fraction of generate's max_new_tokens (or truncated)")
    queue_prefix: str = Field(default="rlt", pattern=r"^[A-Za-z0-9][A-Za-z0-9_. -]{0,40}$",
                              description="queue name: '<prefix> <recipe> <run id>'")


class HumanReviewAudit(BaseModel):
    """``audits.human_review``: the night's reviewed sample must reject at most ``max_reject_rate`` of its
    verdicts. ``wait`` says what an unreviewed sample does: ``hold`` commits the night but leaves the alias until
    ``rlt review pull`` finds the sample reviewed (then audits again and publishes), ``fail`` fails the audit,
    ``skip`` does not gate on it (the figure is recorded when there is one)."""

    model_config = ConfigDict(extra="forbid")
    sample: Optional[int] = Field(default=None, ge=1, description="verdicts needed (default: the whole logged "
                                  "sample, less the items reviewers declined)")
    max_reject_rate: float = Field(default=0.1, ge=0, le=1, description="failed verdicts / verdicts")
    wait: Literal["hold", "fail", "skip"] = "hold"
