"""Optional stage inputs (infra/engine/stage.py): absent, an input is not in the key (an input added that way keeps
every earlier key); present, its key is; a required one missing, or a wrong annotation, is refused by name."""
from __future__ import annotations

from typing import Optional

import pytest

from data_contracts import teacher_checkpoint
from infra.engine.config import StageConfig
from infra.engine.stage import Artifact, Model, StageRun, declare


class _Cfg(StageConfig):
    n: int = 1


def probe(run: StageRun, cfg: _Cfg, problems: Artifact, helper: Optional[Model]) -> dict:
    return {}


STAGE = declare(probe, version="1", outputs=(teacher_checkpoint.CONTRACT,))


def test_absent_optional_input_is_out_of_the_key_and_a_present_one_is_in_it():
    assert [(i.name, i.optional) for i in STAGE.inputs] == [("problems", False), ("helper", True)]
    absent = STAGE.key_parts(_Cfg(), {"problems": "k1"})
    assert absent.inputs == {"problems": "k1"}
    assert STAGE.key_parts(_Cfg(), {"problems": "k1", "helper": None}).key() == absent.key()
    present = STAGE.key_parts(_Cfg(), {"problems": "k1", "helper": "k2"})
    assert present.inputs == {"problems": "k1", "helper": "k2"} and present.key() != absent.key()
    with pytest.raises(ValueError, match=r"missing input\(s\) \['problems'\]"):
        STAGE.key_parts(_Cfg(), {"helper": "k2"})


def test_an_input_annotated_otherwise_is_refused():
    def bad(run: StageRun, cfg: _Cfg, problems: Optional[int]) -> dict:
        return {}

    with pytest.raises(TypeError, match="'problems' must be annotated Artifact or Model"):
        declare(bad, version="1", outputs=(teacher_checkpoint.CONTRACT,))
