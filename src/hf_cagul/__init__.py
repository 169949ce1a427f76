"""hf_cagul: make a frozen vision-language model forget, with CAGUL adapters.

CAGUL (Cross-Modal Attention Guided Unlearning, arXiv 2510.07567) leaves the VLM untouched: a
small discriminator flags images of subjects to forget and a small encoder rewrites their
least-attended visual tokens.
"""

from hf_cagul.config import CagulConfig
from hf_cagul.families import supported_families
from hf_cagul.gates import Gate, GateInputs, register_gate
from hf_cagul.model import CagulModel, get_cagul_model
from hf_cagul.modules import ForgetDiscriminator, TokenEncoder
from hf_cagul.outputs import FrozenPass, GateScores, ImageTrace
from hf_cagul.trainer import CagulTrainer, CagulTrainingConfig
from hf_cagul.version import __version__

__all__ = [
    "CagulConfig",
    "CagulModel",
    "CagulTrainer",
    "CagulTrainingConfig",
    "ForgetDiscriminator",
    "FrozenPass",
    "Gate",
    "GateInputs",
    "GateScores",
    "ImageTrace",
    "TokenEncoder",
    "__version__",
    "get_cagul_model",
    "register_gate",
    "supported_families",
]
