"""Checks made before a run starts: the models can be found and in which input size."""

from __future__ import annotations

from pathlib import Path

from curation.errors import UsageError


def model_image_size(
    name_or_path: str, revision: str | None = None, allow_pickle: bool = False
) -> int:
    """The input image size of a BLIP model folder or hub id, read from its config only.

    Raises :class:`UsageError` when the model cannot be found (e.g. a hub id while offline)
    or a local folder holds only pickle weights and ``allow_pickle`` is off.
    """
    from transformers import AutoConfig

    folder = Path(name_or_path)
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise UsageError(
                f"model folder {folder} has no config.json (expected a save_pretrained folder)"
            )
        has_safe = any(folder.glob("*.safetensors"))
        has_pickle = any(folder.glob("*.bin"))
        if not has_safe and not (allow_pickle and has_pickle):
            hint = " (pickle weights found: pass --allow-pickle to load them)" if has_pickle else ""
            raise UsageError(f"model folder {folder} has no .safetensors weights{hint}")
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot load model {name_or_path!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}. "
            "Pass a local folder (a save_pretrained or `hf download` folder), or make the hub reachable "
            "(set HF_HOME to a cache that holds it)."
        ) from None
    vision = getattr(config, "vision_config", None)
    if vision is None or not hasattr(vision, "image_size"):
        raise UsageError(
            f"model {name_or_path!r} is not a BLIP model (its config has no vision_config)"
        )
    return int(vision.image_size)
