"""Adapter files: safe reading, atomic writing, the Hub, and the model card.

An adapter is two files, ``cagul_config.json`` and ``cagul_adapter.safetensors`` (plus a
generated ``README.md`` model card). Nothing here ever unpickles: ``.bin``/``.pt`` adapters
are refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hf_cagul.config import CONFIG_NAME, WEIGHTS_NAME, CagulConfig
from hf_cagul.version import __version__

CARD_NAME = "README.md"
APP_GUIDE_URL = "https://github.com/hf-cagul/hf_cagul/blob/main/docs/app.md"
"""The guide to the adapter inspector that model cards link to."""
ATTACKS_GUIDE_URL = (
    "https://github.com/hf-cagul/hf_cagul/blob/main/docs/evaluation.md#attacks-on-the-gate"
)
"""The guide to the attacks on the gate that model cards link to."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _refuse_pickles(directory: Path) -> None:
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{directory} holds no {WEIGHTS_NAME} but pickle files {pickles}: hf_cagul never "
            "unpickles (a pickle can run arbitrary code). Re-save the adapter with "
            "`save_pretrained`, which writes safetensors."
        )


def resolve_adapter_files(
    model_id: str | os.PathLike[str],
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> tuple[Path, Path]:
    """Paths of the config and weights of an adapter in a local directory or on the Hub.

    ``HF_HUB_OFFLINE=1`` (or ``local_files_only``) restricts Hub ids to the local cache.
    """
    if Path(model_id).suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{model_id} is a pickle file; hf_cagul only loads safetensors adapters "
            f"({CONFIG_NAME} + {WEIGHTS_NAME} in a directory or a Hub repo)."
        )
    local = Path(model_id)
    if local.is_dir():
        config, weights = local / CONFIG_NAME, local / WEIGHTS_NAME
        if not weights.is_file():
            _refuse_pickles(local)
        for path in (config, weights):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{local} is not a CAGUL adapter: {path.name} is missing. An adapter "
                    f"directory holds {CONFIG_NAME} and {WEIGHTS_NAME}."
                )
        return config, weights
    repo_id = os.fspath(model_id)
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(
                Path(
                    hf_hub_download(
                        repo_id,
                        filename,
                        revision=revision,
                        token=token,
                        cache_dir=None if cache_dir is None else Path(cache_dir),
                        local_files_only=local_files_only,
                        library_name="hf_cagul",
                        library_version=__version__,
                    )
                )
            )
        except HFValidationError as err:
            raise ValueError(
                f"{repo_id!r} is neither a local adapter directory nor a valid Hub repo id "
                f"('org/name'): {err}"
            ) from err
        except RepositoryNotFoundError as err:
            raise OSError(
                f"No adapter repo {repo_id!r} on the Hub (or it is private: pass `token=`)."
            ) from err
        except RevisionNotFoundError as err:
            raise OSError(f"Adapter repo {repo_id!r} has no revision {revision!r}.") from err
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
            raise OSError(
                f"Cannot fetch {filename} of {repo_id!r}: offline mode is on (HF_HUB_OFFLINE=1 "
                "or local_files_only=True) and it is not in the local cache. Go online once, or "
                "pass a local adapter directory."
            ) from err
        except EntryNotFoundError as err:
            raise OSError(
                f"Hub repo {repo_id!r} has no {filename}: it is not a CAGUL adapter (pickle "
                f"adapters are refused; a CAGUL adapter holds {CONFIG_NAME} + {WEIGHTS_NAME})."
            ) from err
    return paths[0], paths[1]


def load_config(path: Path) -> CagulConfig:
    """Read ``cagul_config.json``."""
    return CagulConfig.from_json_file(path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read ``cagul_adapter.safetensors`` on the CPU, with a clear error if it is damaged."""
    try:
        return load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is corrupt or truncated ({err}). Re-download it or re-save the adapter."
        ) from err


def model_card(
    config: CagulConfig, repo_id: str | None, evaluation: Mapping[str, float] | None
) -> str:
    """A Hub model card (``README.md``) for an adapter."""
    data = ModelCardData(
        library_name="hf_cagul",
        base_model=config.base_model_name_or_path,
        tags=["unlearning", "cagul", "vision-language", config.family or "vlm"],
        license=None,
    )
    name = repo_id or "path/to/this-adapter"
    base = config.base_model_name_or_path or "<base model id>"
    table = ""
    if evaluation:
        rows = "\n".join(f"| {metric} | {value:.4g} |" for metric, value in evaluation.items())
        table = f"\n## Evaluation\n\n| metric | value |\n|---|---|\n{rows}\n"
    content = f"""---
{data.to_yaml()}
---

# CAGUL unlearning adapter for `{base}`

A [CAGUL](https://arxiv.org/abs/2510.07567) adapter made with `hf_cagul` {__version__}: the
base VLM stays frozen; a discriminator flags images of subjects to forget and a small encoder
rewrites their least-attended visual tokens. Every other input reaches the model untouched.

## How to load it

```python
from transformers import AutoModelForImageTextToText, AutoProcessor
from hf_cagul import CagulModel

vlm = AutoModelForImageTextToText.from_pretrained("{base}")
processor = AutoProcessor.from_pretrained("{base}")
model = CagulModel.from_pretrained(vlm, "{name}")
```

## Try it in your browser

See it at work on a photo, the base model's answer next to the adapted one's, with the
`hf_cagul` inspector ([how to, and how to make it a Space]({APP_GUIDE_URL})):

```bash
pip install "hf_cagul[app]"
hf-cagul app --model {base} --adapter {name}
```

## Configuration

- family: `{config.family}`, attention layer: {config.resolved_attention_layer}
- tokens rewritten per flagged image: {config.num_tokens or f"{config.token_ratio:.0%}"}
- gate: `{config.gate}`{f", an ensemble of {config.gate_members}" * (config.gate_members > 1)}
- gate threshold: {config.gate_threshold}{_calibration_line(config.gate_calibration)}

## Limits

The gate is this adapter's only protection: a photo it does not flag reaches the base model
untouched and gets its answer, and an attacker can search for such photos. Measure what one
gets past this gate, on held-out photos of the forget subjects ([how]({ATTACKS_GUIDE_URL})):

```bash
hf-cagul evaluate --model {base} --adapter {name} --dataset path/to/benchmark --attacks
```
{table}"""
    return str(ModelCard(content))


def _calibration_line(calibration: Mapping[str, Any] | None) -> str:
    """The model card's line on how the gate threshold was calibrated ("" when it was not)."""
    if not calibration:
        return ""
    return (
        f"\n- gate threshold calibrated for a false-positive rate of at most "
        f"{calibration['target_fpr']:.2%}: FPR {calibration['fpr']:.2%} on "
        f"{calibration['heldout_negative_photos']} held-out negative photos"
        f"{_held_out_people(calibration)}, TPR "
        f"{calibration['tpr']:.2%} on {calibration['heldout_forget_images']} fresh augmented "
        "variants of the forget photos"
    )


def _held_out_people(calibration: Mapping[str, Any]) -> str:
    """The card's words on the held-out people, when the calibration held out whole subjects
    (older adapters' calibrations do not say)."""
    people = calibration.get("heldout_negative_subjects")  # 0 when held out photo by photo
    if not people:
        return ""
    return f" (among them every photo of {people} people never fitted on)"


def save_adapter(
    save_directory: str | os.PathLike[str],
    config: CagulConfig,
    state_dict: Mapping[str, torch.Tensor],
    card: str,
) -> Path:
    """Write an adapter atomically: all files go to a temporary directory first.

    The temporary directory sits inside the target's parent, so the final moves are renames on
    one filesystem. A failure while writing (disk full, crash, bad tensor) leaves an existing
    adapter in ``save_directory`` exactly as it was. The weights are moved before the config,
    so a reader never sees a new config next to old weights.
    """
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state_dict.items()}
        save_file(tensors, os.fspath(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        config.save(staging)
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        for path in (staging / WEIGHTS_NAME, staging / CONFIG_NAME):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if not target.exists():
            staging.rename(target)
            return target
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
            os.replace(staging / name, target / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def push_adapter(
    local_directory: Path,
    repo_id: str,
    private: bool | None,
    token: str | None,
    commit_message: str,
    revision: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload the adapter directory; returns the commit URL."""
    api = HfApi(token=token, library_name="hf_cagul", library_version=__version__)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=local_directory,
        commit_message=commit_message,
        revision=revision,
        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
    )
    return str(info.commit_url)
