"""Run configuration: one dataclass, loaded from flags and an optional YAML file.

Flags override the file; every key and value is validated before any work starts, and
errors name the offending key (and file).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from curation.caption_settings import CaptionSettings
from curation.errors import ConfigError

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_FILTER = "Salesforce/blip-itm-base-coco"


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's outputs (and a few knobs that do not)."""

    input: str
    out: str
    captioner: str = DEFAULT_CAPTIONER
    filter: str = DEFAULT_FILTER
    captioner_revision: str | None = None
    filter_revision: str | None = None
    allow_pickle: bool = False
    captions_per_image: int = CaptionSettings.captions_per_image
    threshold: float = 0.5
    first_token: str = "enc"
    prompt: str = CaptionSettings.prompt
    sample: bool = CaptionSettings.sample
    top_p: float = CaptionSettings.top_p
    top_k: int = CaptionSettings.top_k
    repetition_penalty: float = CaptionSettings.repetition_penalty
    max_length: int = CaptionSettings.max_length
    min_length: int = CaptionSettings.min_length
    num_beams: int = CaptionSettings.num_beams
    seed: int = CaptionSettings.seed
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "fp32"
    workers: int = 1
    image_column: str | None = None
    text_column: str | None = None
    key_column: str | None = None
    min_side: int = 8
    max_pixels: int = 89_478_485
    phash_distance: int = 4
    near_threshold: float = 0.95
    dedup_against: str | None = None
    progress: bool = True
    beam_args: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every setting."""
        data = dataclasses.asdict(self)
        data["beam_args"] = list(self.beam_args)
        return data

    def caption_settings(self) -> CaptionSettings:
        """The captioner's decoding settings of this run (raises ``ValueError`` if invalid)."""
        return CaptionSettings(**{f.name: getattr(self, f.name) for f in fields(CaptionSettings)})

    def validate(self) -> RunConfig:
        """Raise :class:`ConfigError` naming the first invalid key; return self."""
        checks: list[tuple[str, bool, str]] = [
            ("captions_per_image", 0 <= self.captions_per_image <= 64, "an integer from 0 to 64"),
            ("threshold", 0.0 <= self.threshold <= 1.0, "a number from 0 to 1"),
            ("first_token", self.first_token in ("enc", "cls"), "'enc' or 'cls'"),
            ("batch_size", 1 <= self.batch_size <= 4096, "an integer from 1 to 4096"),
            (
                "device",
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                "auto, cpu or cuda[:N]",
            ),
            ("dtype", self.dtype in ("fp32", "bf16", "fp16"), "fp32, bf16 or fp16"),
            ("workers", 1 <= self.workers <= 256, "an integer from 1 to 256"),
            ("min_side", self.min_side >= 1, "a positive integer"),
            ("max_pixels", self.max_pixels >= 1, "a positive integer"),
            ("phash_distance", -1 <= self.phash_distance <= 16, "an integer from -1 (off) to 16"),
            ("near_threshold", 0.0 < self.near_threshold <= 1.0, "a number in (0, 1]"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"invalid value for {key!r}: {getattr(self, key)!r} (expected {expected})"
                )
        if self.captions_per_image > 0:
            try:
                self.caption_settings()
            except ValueError as err:
                raise ConfigError(f"invalid caption settings: {err}") from None
        if not self.input:
            raise ConfigError("missing 'input': the Parquet file, glob or folder to curate")
        if not self.out:
            raise ConfigError("missing 'out': the output folder")
        return self


_FIELDS = {f.name: f for f in fields(RunConfig)}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Convert a YAML/flag value to the field's type, or raise naming key and source."""
    kind = str(_FIELDS[key].type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{source}: {key!r} must not be empty")
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            raise TypeError
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind.startswith("tuple"):
            if isinstance(value, str):
                return (value,)
            return tuple(str(v) for v in value)
        if not isinstance(value, str | int | float):
            raise TypeError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: {key!r} has the wrong type: {value!r} (expected {kind})"
        ) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict of known keys (dashes allowed for underscores)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            raise ConfigError(
                f"{path}: unknown key {raw_key!r}; known keys: {', '.join(sorted(_FIELDS))}"
            )
        out[key] = _coerce(key, value, str(path))
    return out


def build_config(file: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Merge a YAML file (optional) with explicit overrides (flags); ``None`` overrides are ignored."""
    values: dict[str, Any] = load_yaml(file) if file else {}
    for key, value in overrides.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = _coerce(key, value, "command line")
    for required in ("input", "out"):
        if not values.get(required):
            raise ConfigError(
                f"missing {required!r}: give it on the command line or in the config file"
            )
    return RunConfig(**values).validate()
