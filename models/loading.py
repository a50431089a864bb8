"""Load a BLIP captioner or filter with its tokenizer and image preprocessing settings.

Models come from a folder (as written by ``save_pretrained`` or ``huggingface-cli
download``; local, or on object storage through :mod:`curation.storage`, copied once per
machine) or a Hugging Face hub id, always through ``from_pretrained``:
safetensors only unless pickle is allowed explicitly, never remote code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    PreTrainedTokenizerBase,
)

from curation.config import check_dtype
from curation.errors import UsageError
from curation.storage import Location, is_url
from models.fused_attention import use_fused_attention
from models.host import reuse_freed_memory

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

#: Attention implementations: fused ``scaled_dot_product_attention``, or transformers' eager.
ATTENTION = ("sdpa", "eager")

_SAFE_WEIGHTS = ("*.safetensors",)
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class ModelLoadError(UsageError):
    """A model, tokenizer or processor cannot be loaded as asked."""


@dataclass
class LoadedModel:
    """A BLIP model ready for inference, with what is needed to feed it."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    name: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype

    @contextmanager
    def inference(self) -> Iterator[None]:
        """Context for a forward pass: no autograd. The weights are already in the model
        dtype, so no autocast: every layer runs in that dtype (bf16 end to end), and the
        caption decoder's CUDA graphs never capture autocast's temporary weight casts."""
        with torch.inference_mode():
            yield


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu or cuda") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Map ``fp32|bf16|fp16`` to a torch dtype; fp16 is refused on CPU."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    try:
        check_dtype(dtype, device.type)
    except ValueError as err:
        raise ModelLoadError(str(err)) from None
    return DTYPES[dtype]


def load_captioner(
    name_or_path: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    allow_pickle: bool = False,
    attention: str = "sdpa",
) -> LoadedModel:
    """Load a ``BlipForConditionalGeneration`` captioner (hub id or local folder).

    ``attention``: ``"sdpa"`` (fused, :mod:`models.fused_attention`) or ``"eager"``
    (transformers' own matmul + softmax).
    """
    return _load(
        BlipForConditionalGeneration, name_or_path, revision, device, dtype, allow_pickle, attention
    )


def load_filter(
    name_or_path: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    allow_pickle: bool = False,
    attention: str = "sdpa",
) -> LoadedModel:
    """Load a ``BlipForImageTextRetrieval`` filter (hub id or local folder); ``attention`` as
    for :func:`load_captioner`."""
    return _load(
        BlipForImageTextRetrieval, name_or_path, revision, device, dtype, allow_pickle, attention
    )


def _load(
    model_class: type,
    name: str,
    revision: str | None,
    device: str,
    dtype: str,
    allow_pickle: bool,
    attention: str,
) -> LoadedModel:
    if attention not in ATTENTION:
        raise ModelLoadError(
            f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION)}"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if torch_device.type == "cpu":
        reuse_freed_memory()
    folder = _check_source(name, allow_pickle)
    source, options = _pretrained(name, folder, revision)
    try:
        model = model_class.from_pretrained(
            source,
            dtype=torch_dtype,
            use_safetensors=None if allow_pickle else True,
            **options,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
        processor = BlipImageProcessorPil.from_pretrained(source, **options)
    except OSError as err:
        raise ModelLoadError(_explain(name, folder is not None, allow_pickle, err)) from err
    model.to(torch_device)
    model.eval()
    if attention == "sdpa":
        use_fused_attention(model)
    size = processor.size
    image_size = int(size["height"] if "height" in size else size["shortest_edge"])
    config_image_size = model.config.vision_config.image_size
    if image_size != config_image_size:
        raise ModelLoadError(
            f"{name}: processor image size {image_size} differs from the model's {config_image_size}"
        )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        image_size=image_size,
        image_mean=_triple(processor.image_mean),
        image_std=_triple(processor.image_std),
        name=name,
        revision=revision,
        device=torch_device,
        dtype=torch_dtype,
    )


#: The class each role loads.
ROLE_CLASSES: dict[str, type] = {
    "captioner": BlipForConditionalGeneration,
    "filter": BlipForImageTextRetrieval,
}


def load_tokenizer(name_or_path: str, *, revision: str | None = None) -> Any:
    """A model's tokenizer alone (for checks before the weights are loaded)."""
    source, options = _pretrained(name_or_path, model_folder(name_or_path), revision)
    try:
        return AutoTokenizer.from_pretrained(source, **options)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{name_or_path}: its tokenizer cannot be read ({err})") from err


@dataclass(frozen=True)
class ModelInfo:
    """What the pre-run checks need from a model's config."""

    image_size: int  # square input side of the vision model
    max_positions: int  # longest token sequence the text model takes
    embedding_dim: int  # size of the ITC image embedding (the index's dimension)
    config: Any  # the BlipConfig (sizes the batches before the weights are loaded)
    weight_bytes: int | None  # size of a local folder's weight files, None for hub ids


def check_model(
    name_or_path: str,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    role: str | None = None,
) -> ModelInfo:
    """Check that a BLIP model can be found, reading its config only.

    For runs to fail before any work starts: raises :class:`ModelLoadError` with the same
    messages as loading (missing folder, unreachable hub id, pickle-only or empty folder,
    not BLIP), and, with ``role`` (``captioner`` or ``filter``), when the config names
    another class than the role loads (a filter given as the captioner).
    """
    from transformers import AutoConfig

    folder = _check_source(name_or_path, allow_pickle)
    source, options = _pretrained(name_or_path, folder, revision)
    try:
        config = AutoConfig.from_pretrained(source, **options)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            _explain(name_or_path, folder is not None, allow_pickle, OSError(str(err)))
        ) from err
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None)
    if vision is None or text is None or not hasattr(vision, "image_size"):
        raise ModelLoadError(
            f"{name_or_path} is not a BLIP model (its config has no vision_config)"
        )
    expected = ROLE_CLASSES.get(role or "")
    saved = getattr(config, "architectures", None) or []
    if expected is not None and saved and expected.__name__ not in saved:
        raise ModelLoadError(
            f"{name_or_path} is a {', '.join(saved)}, but the {role} loads a "
            f"{expected.__name__}: its heads would start from random weights"
        )
    return ModelInfo(
        image_size=int(vision.image_size),
        max_positions=int(text.max_position_embeddings),
        embedding_dim=int(getattr(config, "image_text_hidden_size", config.projection_dim)),
        config=config,
        weight_bytes=_weight_bytes(folder) if folder is not None else None,
    )


def _weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))


def model_folder(name: str) -> Path | None:
    """The local folder of a model given as a folder, None for a hub id.

    A folder on object storage (``gs://``, ``s3://``) is copied once per machine through
    the storage layer; a name meant as a folder that does not exist is refused as such, not
    looked up on the hub.
    """
    if is_url(name):
        location = Location(name)
        if not location.is_dir():
            raise ModelLoadError(f"model folder {name!r} does not exist")
        return Path(location.local_folder())
    if Path(name).is_dir():
        return Path(name)
    if _looks_like_folder(name):
        raise ModelLoadError(f"model folder {name!r} does not exist")
    return None


def _pretrained(name: str, folder: Path | None, revision: str | None) -> tuple[str, dict[str, Any]]:
    """What ``from_pretrained`` reads from (the local folder, or the hub id) and its options:
    no remote code, and the hub cache only when offline."""
    options = {
        "revision": revision,
        "trust_remote_code": False,
        "local_files_only": folder is None and _offline(),
    }
    return (name if folder is None else str(folder)), options


def _check_source(name: str, allow_pickle: bool) -> Path | None:
    """:func:`model_folder`, with the folder's weights checked."""
    folder = model_folder(name)
    if folder is not None:
        _check_local_weights(folder, allow_pickle)
    return folder


def _looks_like_folder(name: str) -> bool:
    """A name that is a path rather than a hub id (``org/name``): it starts like a path, has
    more than one ``/``, or its parent folder exists here."""
    if (
        name.startswith(("/", "./", "../", "~"))
        or name.count("/") > 1
        or os.sep in name.replace("/", "")
    ):
        return True
    parent = Path(name).parent
    return str(parent) not in ("", ".") and parent.is_dir()


def _offline() -> bool:
    return any(
        os.environ.get(var, "").upper() in {"1", "ON", "YES", "TRUE"} for var in _OFFLINE_VARS
    )


def _check_local_weights(folder: Path, allow_pickle: bool) -> None:
    safe = [p for pattern in _SAFE_WEIGHTS for p in folder.glob(pattern)]
    pickled = [p for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern)]
    if not safe and pickled and not allow_pickle:
        raise ModelLoadError(
            f"{folder} holds only pickle weights ({', '.join(p.name for p in pickled)}), which can run "
            "arbitrary code when loaded. Convert the checkpoint to safetensors, or pass "
            "--allow-pickle if you trust its source."
        )
    if not safe and not pickled:
        raise ModelLoadError(
            f"{folder} holds no model weights (*.safetensors or pytorch_model.bin)"
        )


def _explain(name: str, local: bool, allow_pickle: bool, err: OSError) -> str:
    if local:
        return f"cannot load the model in {name}: {err}"
    text = str(err)
    if not allow_pickle and "safetensors" in text.lower() and "no file" in text.lower():
        return (
            f"{name} has no safetensors weights; pass --allow-pickle to load pickle weights "
            f"if you trust its source ({text})"
        )
    return (
        f"cannot fetch model {name!r} from the Hugging Face hub (offline, HF_HUB_OFFLINE set, or no "
        "network). Pass a local folder instead (one made by save_pretrained or "
        "`huggingface-cli download`), or set HF_HOME to a cache that already holds it. "
        f"Cause: {text.splitlines()[0] if text else type(err).__name__}"
    )


def _triple(values: Any) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = [values] * 3
    first, second, third = (float(v) for v in values)
    return first, second, third


def model_identity(name_or_path: str, revision: str | None = None) -> dict[str, str | None]:
    """The exact identity of a model, computed once before a run (it keys the output cache).

    A local folder: the SHA-256 of every file's name and content. A hub id: the commit of
    the snapshot that loading would use (the cached snapshot's folder is named after it).
    """
    folder = model_folder(name_or_path)
    if folder is not None:
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
            digest.update(b"\0")
        return {"name": name_or_path, "revision": revision, "sha256": digest.hexdigest()}
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(
            snapshot_download(name_or_path, revision=revision, local_files_only=_offline())
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(_explain(name_or_path, False, False, OSError(str(err)))) from err
    return {"name": name_or_path, "revision": revision, "commit": snapshot.name}
