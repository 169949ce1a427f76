"""The tiny offline VLM builders under their first name: everything here is `hf_cagul.testing`'s.

Kept so that existing imports (``from hf_cagul.tiny import tiny_vlm``) and saved tiny processors,
whose ``processor_config.json`` names a ``Tiny*Processor`` class looked up here by
``hf_cagul.cli.load_processor``, keep working. New code imports `hf_cagul.testing`.
"""

# Every public name of hf_cagul.testing, the same objects (a superset of this module's old names).
from hf_cagul.testing import *  # noqa: F403
from hf_cagul.testing import __all__ as __all__
