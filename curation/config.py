"""Settings of the commands, each declared once: type, default, bounds and help.

:class:`InputSettings` (reading and checking an input, shared by ``inspect`` and ``run``)
and :class:`RunConfig` (the whole job) are pydantic models. The command-line flags, their
help with defaults, the YAML keys (dashes or underscores) and the validation all come from
these declarations (:mod:`app.options` builds the flags). Every value is validated
before any work starts, and errors name the offending key (and file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from curation.caption_settings import CaptionSettings
from curation.decode import DEFAULT_MAX_PIXELS
from curation.errors import ConfigError
from curation.image_formats import WEB_FORMATS, normalise_formats
from curation.storage import Location
from curation.thresholds import Thresholds

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_FILTER = "Salesforce/blip-itm-base-coco"
DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20
_CAPTION = CaptionSettings()


def flag(help: str, short: str | None = None, **kwargs: Any) -> Any:
    """A field's help text (and optional short flag) for the generated command line."""
    extra = {"short": short} if short else {}
    return Field(description=help, json_schema_extra=extra, **kwargs)


class Settings(BaseModel):
    """Frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every setting."""
        return self.model_dump(mode="json")


class InputSettings(Settings):
    """How an input is read and which rows are refused before any model sees them."""

    input: tuple[str, ...] = flag("Parquet files, globs or folders to curate.", default=())
    image_column: str | None = flag(
        "Column with image bytes (or a datasets Image struct).", default=None
    )
    text_column: str | None = flag("Column with the web text.", default=None)
    key_column: str | None = flag(
        "Column with a key per row (text or integer; first occurrence keeps a repeated key).",
        default=None,
    )
    drop_columns: tuple[str, ...] = flag(
        "Input column not to carry to the outputs (repeatable).", default=()
    )
    image_formats: tuple[str, ...] = flag(
        "Accepted image format (repeatable); other formats are refused as unsupported_format.",
        default=WEB_FORMATS,
    )
    image_roots: tuple[str, ...] = flag(
        "Folder that Hugging Face image paths may point into, besides the dataset's own "
        "folder (repeatable).",
        default=(),
    )
    max_image_bytes: int = flag(
        "Largest image file read through an image path.", default=DEFAULT_MAX_IMAGE_BYTES, ge=1
    )
    min_side: int = flag("Smallest accepted image side in pixels.", default=8, ge=1)
    max_pixels: int = flag(
        "Largest accepted image in pixels (decompression-bomb guard).",
        default=DEFAULT_MAX_PIXELS,
        ge=1,
    )

    @field_validator("input", "drop_columns", "image_formats", "image_roots", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("image_formats")
    @classmethod
    def _formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value == WEB_FORMATS:
            return value
        try:
            return normalise_formats(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None


def check_dtype(dtype: str, device: str) -> None:
    """Raise ``ValueError`` for a dtype the device cannot run (fp16 needs CUDA)."""
    if dtype == "fp16" and not device.startswith("cuda"):
        where = "CPU" if device == "cpu" else device
        raise ValueError(f"dtype fp16 is not supported on {where}; use bf16 or fp32 there")


class RunConfig(InputSettings):
    """Everything that determines a run's outputs (and a few knobs that do not)."""

    out: str = flag(
        "Output folder, local or gs:// / s3:// (re-running into it resumes).", default=""
    )
    captioner: str = flag("Captioner: hub id or local folder.", default=DEFAULT_CAPTIONER)
    filter: str = flag("ITM filter: hub id or local folder.", default=DEFAULT_FILTER)
    captioner_revision: str | None = flag(
        "Hub revision (branch, tag or commit) of the captioner.", default=None
    )
    filter_revision: str | None = flag("Hub revision of the filter.", default=None)
    allow_pickle: bool = flag("Allow loading pickle (.bin) weights.", default=False)
    captions_per_image: int = flag(
        "Synthetic captions per image (0: none).",
        short="-k",
        default=_CAPTION.captions_per_image,
        ge=0,
        le=64,
    )
    threshold: float = flag(
        "Keep a text when its ITM probability >= this.", default=0.5, ge=0, le=1
    )
    synthetic_threshold: float | None = flag(
        "Threshold of synthetic captions (none: the same as --threshold).",
        default=None,
        ge=0,
        le=1,
    )
    first_token: Literal["enc", "cls"] = flag("Token at ITM position 0.", default="enc")
    prompt: str = flag("Caption prompt (stripped from the captions).", default=_CAPTION.prompt)
    sample: bool = flag("Nucleus sampling (else beam search).", default=_CAPTION.sample)
    top_p: float = flag("Nucleus sampling top-p.", default=_CAPTION.top_p, gt=0, le=1)
    top_k: int = flag("Top-k filter before sampling (0: off).", default=_CAPTION.top_k, ge=0)
    repetition_penalty: float = flag(
        "Repetition penalty of decoding.", default=_CAPTION.repetition_penalty, gt=0
    )
    max_length: int = flag(
        "Max caption tokens, prompt included.", default=_CAPTION.max_length, ge=1
    )
    min_length: int = flag(
        "Min caption tokens, prompt included.", default=_CAPTION.min_length, ge=0
    )
    num_beams: int = flag("Beams of beam search.", default=_CAPTION.num_beams, ge=1)
    seed: int = flag("Seed of caption sampling.", default=_CAPTION.seed)
    batch_size: int = flag(
        "Images per model batch (0: chosen by device).", default=0, ge=0, le=4096
    )
    device: str = flag(
        "auto, cpu or cuda[:N].", default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$"
    )
    dtype: Literal["fp32", "bf16", "fp16"] = flag("Model dtype (fp16 needs CUDA).", default="fp32")
    workers: int = flag("Local worker processes (1: in-process).", default=1, ge=1, le=256)
    phash_distance: int = flag(
        "Max Hamming distance of perceptual copies (-1: off).", default=4, ge=-1, le=16
    )
    near_threshold: float = flag(
        "Cosine above which images are near duplicates.", default=0.95, gt=0, le=1
    )
    dedup_against: str | None = flag(
        "A previous run's index/ folder to deduplicate against ('' clears).", default=None
    )
    max_error_rate: float = flag(
        "Exit non-zero when more than this share of input rows hit an error.",
        default=0.01,
        ge=0,
        le=1,
    )
    progress: bool = flag("Live progress line on stderr.", default=True)
    detach: bool = flag(
        "Submit the job and return: the job commits its own result and releases --out "
        "(for Dataflow; Flex Templates always detach).",
        default=False,
    )
    beam_args: tuple[str, ...] = flag(
        "Extra Beam pipeline option, e.g. --beam-arg=--runner=DataflowRunner (repeatable).",
        default=(),
    )

    @field_validator("beam_args", mode="before")
    @classmethod
    def _beam_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        if self.captions_per_image > 0:
            try:
                self.caption_settings()
            except ValueError as err:
                raise ValueError(f"invalid caption settings: {err}") from None
        if self.device != "auto":
            check_dtype(self.dtype, self.device)
        return self

    def thresholds(self) -> Thresholds:
        """The ITM thresholds of web texts and synthetic captions."""
        return Thresholds.of(self.threshold, self.synthetic_threshold)

    def caption_settings(self) -> CaptionSettings:
        """The captioner's decoding settings of this run (raises ``ValueError`` if invalid)."""
        names = CaptionSettings.__dataclass_fields__
        return CaptionSettings(**{name: getattr(self, name) for name in names})


def _as_declared_by_run(name: str, keeps: str) -> Any:
    """RunConfig's declaration of ``name`` (help, bounds) with no default: not given, the
    value ``keeps`` (said in the flag's help) holds."""
    field = RunConfig.model_fields[name]
    extra = dict(field.json_schema_extra) if isinstance(field.json_schema_extra, dict) else {}
    return FieldInfo.merge_field_infos(
        field, default=None, json_schema_extra=extra | {"default_text": keeps}
    )


class RepublishSettings(Settings):
    """What ``dedup`` and ``rethreshold`` may change on a finished run, and where they run.

    Each setting is declared by :class:`RunConfig`; one not given keeps the run's value.
    """

    threshold: float | None = _as_declared_by_run("threshold", "the run's")
    synthetic_threshold: float | None = _as_declared_by_run(
        "synthetic_threshold", "the same as --threshold"
    )
    near_threshold: float | None = _as_declared_by_run("near_threshold", "the run's")
    dedup_against: str | None = _as_declared_by_run("dedup_against", "the run's")
    workers: int = RunConfig.model_fields["workers"]
    beam_args: tuple[str, ...] = RunConfig.model_fields["beam_args"]

    @field_validator("beam_args", mode="before")
    @classmethod
    def _beam_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    def applied_to(self, config: dict[str, Any]) -> RepublishSettings:
        """These changes over a run's ``config`` (its manifest's): every setting given."""
        values = {name: config.get(name, RunConfig.model_fields[name].default) for name in _KEPT}
        if self.threshold is not None:
            values["threshold"] = self.threshold
            values["synthetic_threshold"] = self.synthetic_threshold
        elif self.synthetic_threshold is not None:
            values["synthetic_threshold"] = self.synthetic_threshold
        if self.near_threshold is not None:
            values["near_threshold"] = self.near_threshold
        if self.dedup_against is not None:
            values["dedup_against"] = self.dedup_against or None
        return validate(
            RepublishSettings, self.model_dump() | values, "the run's manifest or the command line"
        )


#: The settings of a finished run that ``dedup`` and ``rethreshold`` may change.
_KEPT = ("threshold", "synthetic_threshold", "near_threshold", "dedup_against")


def _explain(error: ValidationError, source: str) -> ConfigError:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "settings"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return ConfigError(f"{source}: unknown key {key!r}")
    if first["type"].startswith("value_error") or not first["loc"]:
        return ConfigError(f"{source}: {message}")
    return ConfigError(f"{source}: invalid value for {key!r}: {first.get('input')!r} ({message})")


SettingsT = TypeVar("SettingsT", bound=Settings)


def load_yaml(path: str | Path, model: type[Settings] = RunConfig) -> dict[str, Any]:
    """Read a YAML config file into a dict of known keys (dashes allowed for underscores)."""
    import yaml

    location = Location(str(path))
    if not location.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(location.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in values:
            raise ConfigError(f"{path}: {name!r} is given twice (with dashes and underscores)")
        values[name] = value
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(model.model_fields))}"
        )
    try:
        model.model_validate(values)
    except ValidationError as err:
        raise _explain(err, str(path)) from None
    return values


def build_settings(model: type[Settings], file: str | Path | None = None, **overrides: Any) -> Any:
    """Merge a YAML file (optional) with explicit overrides (flags) and validate.

    ``None`` overrides are ignored (the flag was not given); an empty string resets an
    optional setting to none.
    """
    values: dict[str, Any] = load_yaml(file, model) if file else {}
    for key, value in overrides.items():
        if key not in model.model_fields:
            raise ConfigError(f"unknown setting {key!r}")
        if value is None or (isinstance(value, tuple) and not value):
            continue
        if value == "" and model.model_fields[key].default is None:
            value = None
        values[key] = value
    if not values.get("input"):
        raise ConfigError("missing 'input': give it on the command line or in the config file")
    if "out" in model.model_fields and not values.get("out"):
        raise ConfigError("missing 'out': give --out or the 'out' key of the config file")
    return validate(model, values, "command line" if not file else f"{file} or the command line")


def validate(
    model: type[SettingsT], values: dict[str, Any], source: str = "command line"
) -> SettingsT:
    """``model`` built from ``values``, or a :class:`ConfigError` naming the key and ``source``."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise _explain(err, source) from None


def build_config(file: str | Path | None = None, **overrides: Any) -> RunConfig:
    """The run configuration from a YAML file (optional) and flags."""
    config: RunConfig = build_settings(RunConfig, file, **overrides)
    return config
