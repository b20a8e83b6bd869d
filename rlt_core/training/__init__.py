"""Training with TRL used as-is: teacher SFT warm-up, teacher GRPO with the RLT reward, student distillation.

Import the submodules directly (``from rlt_core.training.grpo import train_teacher_grpo``); this package
imports nothing heavy at import time.
"""
