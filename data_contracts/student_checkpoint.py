"""student_checkpoint contract (see checkpoints.py for the shared row model)."""
from data_contracts.checkpoints import STUDENT_CONTRACT as CONTRACT
from data_contracts.checkpoints import STUDENT_EXAMPLE as EXAMPLE
from data_contracts.checkpoints import Checkpoint

SCHEMA_VERSION = CONTRACT.version
SCHEMA = CONTRACT.schema
validate = CONTRACT.validate
__all__ = ["CONTRACT", "EXAMPLE", "Checkpoint", "SCHEMA", "SCHEMA_VERSION", "validate"]
