"""A stage's config says which of its fields make the artifact's identity, where the fields are defined.

Every stage config derives from :class:`StageConfig` (typed, ``extra="forbid"``). By default the whole config is
part of the key; a field marks itself out of it, or as a model whose digest joins the key, with an annotation::

    class GenerateConfig(StageConfig):
        batch_size: Annotated[int, NOT_IN_KEY] = 8                    # how fast, not what
        student_model: Annotated[str, KeyModel("student")] = "builtin:..."   # its digest is in the key
        text: Annotated[Optional[TextRules], KEY_IF_SET] = None   # added later: in the key only when set

A field added to a config after keys were recorded is marked ``KEY_IF_SET``: at its default it is left out of
the key, so every artifact made before the field existed keeps its key (users keep their cached nights); set to
anything else, it joins the key like any other field.

A config whose identity is not a field list (ingest: the source's fingerprint; train_teacher: no phase, no
training settings) overrides ``key_config`` / ``key_extra`` / ``key_inputs``. That is the one place: the engine
(infra/engine/stage.py ``Stage.key_parts``) and the plan ask the config, nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class _NotInKey:
    def __repr__(self) -> str:
        return "NOT_IN_KEY"


NOT_IN_KEY = _NotInKey()   # Annotated[...] marker: where or how fast the work runs, not what it produces


class _KeyIfSet:
    def __repr__(self) -> str:
        return "KEY_IF_SET"


KEY_IF_SET = _KeyIfSet()   # Annotated[...] marker: a field added later; at its default it stays out of the key


@dataclass(frozen=True)
class KeyModel:
    """Annotated[str, KeyModel(role)] marker: the field names a model whose digest is part of the key as ``role``."""

    role: str


class StageConfig(BaseModel):
    """Base of every stage config: typed, unknown fields refused, and its own key function."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def _marked(cls, marker_type: type) -> dict[str, Any]:
        return {name: m for name, info in cls.model_fields.items() for m in info.metadata if isinstance(m, marker_type)}

    @classmethod
    def not_in_key(cls) -> frozenset[str]:
        """The fields that change where or how fast a stage runs, not what it produces."""
        return frozenset(cls._marked(_NotInKey))

    @classmethod
    def key_if_set(cls) -> frozenset[str]:
        """The fields added after keys were recorded: part of the key only when not at their default."""
        return frozenset(cls._marked(_KeyIfSet))

    def key_config(self) -> dict[str, Any]:
        """The config's part of the artifact key: every field but those marked ``NOT_IN_KEY``, and those marked
        ``KEY_IF_SET`` that are at their default."""
        at_default = {name for name in self.key_if_set()
                      if getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True)}
        return self.model_dump(mode="json", exclude=set(self.not_in_key()) | at_default)

    def key_models(self) -> dict[str, str]:
        """Key role -> the model reference whose digest is part of the key (fields marked ``KeyModel``)."""
        return {marker.role: getattr(self, name) for name, marker in self._marked(KeyModel).items()}

    def key_extra(self) -> dict[str, str]:
        """More identity that is not a field value (e.g. a source file's digest): role -> digest."""
        return {}

    def key_inputs(self, declared: tuple[str, ...]) -> tuple[str, ...]:
        """The inputs (key names) the output depends on; default: every declared input."""
        return declared
