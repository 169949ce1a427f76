"""Trainers that fit forgetting, each paired with its config (``*_config.py`` + ``*_trainer.py``).

* `ForgetRetainTrainingConfig` / `ForgetRetainTrainer`: what every forget/retain trainer
  shares (data contract, balanced sampling, loss normalisation and logging);
* `CagulTrainingConfig` / `CagulTrainer`: fit a CAGUL adapter on a frozen VLM.

The fine-tuning baselines (`hf_cagul.baselines`) build on the same base.
"""

from hf_cagul.trainer.cagul_config import TRAINING_CONFIG_NAME, CagulTrainingConfig
from hf_cagul.trainer.cagul_trainer import CagulTrainer
from hf_cagul.trainer.forget_retain_config import ForgetRetainTrainingConfig
from hf_cagul.trainer.forget_retain_trainer import ForgetRetainTrainer

__all__ = [
    "TRAINING_CONFIG_NAME",
    "CagulTrainer",
    "CagulTrainingConfig",
    "ForgetRetainTrainer",
    "ForgetRetainTrainingConfig",
]
