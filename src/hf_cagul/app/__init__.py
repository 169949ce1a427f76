"""The adapter inspector: a web page that shows a CAGUL adapter at work on a photo.

Install it with ``pip install 'hf_cagul[app]'`` (Gradio). Importing this package does not
import Gradio; building a page (`build_app`) does.

```python
from hf_cagul.app import build_app, launch_app

launch_app(build_app(model, processor))   # http://127.0.0.1:7860
```
"""

from hf_cagul.app.arguments import AppArguments, build_from_arguments, run_app
from hf_cagul.app.demo_dir import DemoDirectory
from hf_cagul.app.inspection import GateRow, Inspection, inspect_photo
from hf_cagul.app.ui import DEFAULT_HOST, build_app, launch_app

__all__ = [
    "DEFAULT_HOST",
    "AppArguments",
    "DemoDirectory",
    "GateRow",
    "Inspection",
    "build_app",
    "build_from_arguments",
    "inspect_photo",
    "launch_app",
    "run_app",
]
