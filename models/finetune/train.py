"""Finetuning loops for the captioner and the filter, with held-out evaluation and saving.

A base is a hub id or checkpoint folder (loaded with :mod:`models.loading`, the production
use) or a preset name from :mod:`models.presets` (random weights, tokenizer built from the
training texts' words). Either way the result is a ``save_pretrained`` folder with
safetensors weights, tokenizer, image processor and a model card.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import (
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    BlipProcessor,
    get_cosine_schedule_with_warmup,
)

from curation.caption_settings import CaptionSettings
from curation.reasons import Reason
from curation.storage import Location
from models.finetune.data import TrainingPairs, describe_skipped, read_pairs
from models.finetune.losses import (
    ExtraTexts,
    Temperature,
    captioner_loss,
    filter_losses,
    itm_logits,
)
from models.finetune.model_card import write_model_card
from models.finetune.settings import FinetuneSettings, ModelKind
from models.finetune.text_negatives import (
    TextDomain,
    extra_texts,
    rephrase,
    reword,
    text_domain,
    unreadable,
)
from models.finetune.warm_start import filter_from_captioner, is_captioner_folder
from models.loading import LoadedModel, load_captioner, load_filter, resolve_device
from models.preprocess import pixel_values
from models.presets import (
    ENC_TOKEN,
    PRESETS,
    blip_config,
    build_tokenizer,
    image_processor,
    words_of,
)

PROMPT = CaptionSettings.prompt
MAX_TOKENS = 35
#: Optimiser steps between progress lines (and between the running means of the losses).
LOG_EVERY = 20

Progress = Callable[[str], None]


@dataclass
class TrainResult:
    """What a finetuning run did and how the model scores on the held-out pairs."""

    kind: ModelKind
    steps: int
    seconds: float
    train_pairs: int
    heldout_pairs: int
    lr: float
    final_losses: dict[str, float]
    evaluation: dict[str, float]
    examples: list[tuple[str, str]] = field(default_factory=list)
    skipped: Counter[Reason] = field(default_factory=Counter)


def is_preset(base: str) -> bool:
    """True when ``base`` names a preset of :mod:`models.presets` rather than a checkpoint."""
    return base in PRESETS and not Path(base).exists()


def prepare_base(kind: ModelKind, base: str, texts: list[str], device: str = "auto") -> LoadedModel:
    """Load the starting model: a checkpoint through :mod:`models.loading`, or a fresh preset.

    A filter may also start from a captioner folder (:mod:`models.finetune.warm_start`).
    """
    kind = ModelKind(kind)
    if not is_preset(base):
        if kind == ModelKind.FILTER and is_captioner_folder(base):
            return filter_from_captioner(load_captioner(base, device=device))
        loader = load_captioner if kind == ModelKind.CAPTIONER else load_filter
        return loader(base, device=device)
    tokenizer = build_tokenizer(words_of([PROMPT, *texts]))
    config = blip_config(base, tokenizer)
    # BLIP's vision default (1e-10) leaves fresh class and position embeddings at zero, which
    # a model trained from scratch cannot recover from quickly; use BERT's 0.02 instead.
    config.vision_config.initializer_range = 0.02
    model_class = (
        BlipForConditionalGeneration if kind == ModelKind.CAPTIONER else BlipForImageTextRetrieval
    )
    model = model_class(config)
    processor = image_processor(config.vision_config.image_size)
    torch_device = resolve_device(device)
    return LoadedModel(
        model=model.to(torch_device),
        tokenizer=tokenizer,
        image_size=config.vision_config.image_size,
        image_mean=tuple(processor.image_mean),
        image_std=tuple(processor.image_std),
        name=f"preset:{base}",
        revision=None,
        device=torch_device,
        dtype=torch.float32,
    )


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


def _tokenize(loaded: LoadedModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = loaded.tokenizer(
        texts, padding="longest", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    )
    return tokens.input_ids.to(loaded.device), tokens.attention_mask.to(loaded.device)


def _prompt_length(loaded: LoadedModel) -> int:
    """Tokens of ``[CLS] a picture of`` (the part of the decoder input that is not predicted)."""
    return len(loaded.tokenizer(PROMPT.strip()).input_ids) - 1


class _Meter:
    """Running means of the losses and a progress line every ``every`` steps."""

    def __init__(self, total: int, batch_size: int, every: int, progress: Progress | None) -> None:
        self.total, self.batch_size, self.every, self.progress = total, batch_size, every, progress
        self.start = time.perf_counter()
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last: dict[str, float] = {}

    def update(self, step: int, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            self.last = {name: total / self.count for name, total in self.sums.items()}
            self.sums, self.count = {}, 0
            if self.progress is not None:
                elapsed = time.perf_counter() - self.start
                parts = "  ".join(f"{name} {value:.4f}" for name, value in self.last.items())
                meter = tqdm.format_meter(
                    (step + 1) * self.batch_size,
                    self.total * self.batch_size,
                    elapsed,
                    unit=" pairs",
                    bar_format="{rate_fmt}, {elapsed}<{remaining}",
                )
                self.progress(f"step {step + 1}/{self.total}  {parts}  {meter}")


def train(
    kind: ModelKind,
    loaded: LoadedModel,
    pairs: TrainingPairs,
    settings: FinetuneSettings,
    lr: float,
    progress: Progress | None = None,
) -> tuple[int, float, dict[str, float]]:
    """Optimise ``loaded.model`` in place; returns (steps, seconds, final running losses)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    text_rng = random.Random(settings.seed)
    generator = torch.Generator(device=loaded.device).manual_seed(settings.seed)
    model = loaded.model
    model.train()
    domain = text_domain(settings.text_domain)
    is_filter = kind == ModelKind.FILTER
    known = domain.prepare(pairs.texts) if is_filter else []
    temperature = Temperature().to(loaded.device)
    params = list(model.parameters()) + (list(temperature.parameters()) if is_filter else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    per_epoch = len(pairs) // settings.batch_size
    if per_epoch == 0:
        raise ValueError(
            f"{len(pairs)} training pairs are fewer than one batch of {settings.batch_size}"
        )
    total = per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    warmup = max(1, int(total * settings.warmup))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    prompt_length = _prompt_length(loaded)
    enc_id = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    meter = _Meter(total, settings.batch_size, LOG_EVERY, progress)
    step = 0
    while step < total:
        for index in _batches(len(pairs), settings.batch_size, rng):
            if step >= total:
                break
            batch = pairs.subset(index)
            pixels = pixel_values(batch.pixels, loaded)
            ids, mask = _tokenize(
                loaded, batch.texts if is_filter else [PROMPT + t for t in batch.texts]
            )
            if not is_filter:
                loss = captioner_loss(model, pixels, ids, mask, prompt_length)
                values = {"loss": loss.item()}
            else:
                groups = (
                    None
                    if batch.groups is None
                    else torch.from_numpy(batch.groups).to(loaded.device)
                )
                batch_known = [known[i] for i in index]
                extra = _extra_texts(loaded, batch.texts, batch_known, settings, domain, text_rng)
                true_of = domain.true_of(batch.texts, batch_known)
                losses = filter_losses(
                    model,
                    temperature,
                    pixels,
                    ids,
                    mask,
                    enc_id,
                    groups,
                    generator,
                    extra,
                    None if true_of is None else torch.tensor(true_of, device=loaded.device),
                )
                loss = losses.total
                values = {"loss": loss.item(), "itc": losses.itc.item(), "itm": losses.itm.item()}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            meter.update(step, values)
            step += 1
    model.eval()
    return total, time.perf_counter() - meter.start, meter.last


def _extra_texts(
    loaded: LoadedModel,
    texts: list[str],
    known: list[object],
    settings: FinetuneSettings,
    domain: TextDomain,
    rng: random.Random,
) -> ExtraTexts | None:
    """The batch's extra ITM texts (:mod:`models.finetune.text_negatives`), tokenized."""
    shares = settings.extra_text_shares()
    made = extra_texts(texts, known, shares, domain, rng, loaded.tokenizer.unk_token)
    if not made.rows:
        return None
    ids, mask = _tokenize(loaded, made.texts)
    return ExtraTexts(
        rows=torch.tensor(made.rows, device=loaded.device),
        input_ids=ids,
        attention_mask=mask,
        matches=torch.tensor(made.matches, device=loaded.device),
    )


@torch.no_grad()
def evaluate_captioner(
    loaded: LoadedModel, pairs: TrainingPairs, batch_size: int = 64
) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """Held-out LM loss, teacher-forced token accuracy, exact-match rate of beam-search captions."""
    model = loaded.model
    prompt_length = _prompt_length(loaded)
    losses, correct, counted, exact = [], 0, 0, 0
    examples: list[tuple[str, str]] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs.subset(np.arange(start, min(start + batch_size, len(pairs))))
        pixels = pixel_values(batch.pixels, loaded)
        ids, mask = _tokenize(loaded, [PROMPT + t for t in batch.texts])
        losses.append(captioner_loss(model, pixels, ids, mask, prompt_length).item() * len(batch))
        dec_ids = ids.clone()
        dec_ids[:, 0] = model.config.text_config.bos_token_id
        image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
        logits = model.text_decoder(
            input_ids=dec_ids, attention_mask=mask, encoder_hidden_states=image_embeds
        ).logits
        predicted = logits[:, prompt_length - 1 : -1].argmax(-1)
        target = ids[:, prompt_length:]
        valid = mask[:, prompt_length:].bool()
        correct += int(((predicted == target) & valid).sum())
        counted += int(valid.sum())
        prompt = loaded.tokenizer([PROMPT.strip()] * len(batch), return_tensors="pt").input_ids.to(
            loaded.device
        )
        generated = model.generate(
            pixel_values=pixels, input_ids=prompt, num_beams=3, max_length=MAX_TOKENS
        )
        for text, out in zip(batch.texts, generated, strict=True):
            caption = loaded.tokenizer.decode(out, skip_special_tokens=True).strip()
            caption = (
                caption[len(PROMPT.strip()) :].strip()
                if caption.startswith(PROMPT.strip())
                else caption
            )
            exact += int(caption == text)
            if len(examples) < 5:
                examples.append((text, caption))
    n = len(pairs)
    metrics = {
        "heldout_loss": sum(losses) / n,
        "token_accuracy": correct / max(1, counted),
        "beam_exact_match": exact / n,
    }
    return metrics, examples


@torch.no_grad()
def evaluate_filter(
    loaded: LoadedModel,
    pairs: TrainingPairs,
    batch_size: int = 64,
    domain: TextDomain | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Held-out ITC recall@1 (image to text), and ITM accuracy at 0.5 on the matching pairs
    and on each image paired with its most ITC-similar non-matching text (a hard negative).

    With a ``domain``, also on one text of each extra kind per held-out pair (composition,
    truncated and unreadable negatives, partial, reworded and rephrased positives), where the domain
    makes them (seeded).
    """
    model = loaded.model
    enc_id = loaded.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    image_embeds, image_feats, text_feats = [], [], []
    ids, mask = _tokenize(loaded, pairs.texts)
    for start in range(0, len(pairs), batch_size):
        stop = min(start + batch_size, len(pairs))
        pixels = pixel_values(pairs.pixels[start:stop], loaded)
        embeds = model.vision_model(pixel_values=pixels).last_hidden_state
        image_embeds.append(embeds)
        image_feats.append(torch.nn.functional.normalize(model.vision_proj(embeds[:, 0]), dim=-1))
        hidden = model.text_encoder(
            input_ids=ids[start:stop], attention_mask=mask[start:stop]
        ).last_hidden_state
        text_feats.append(torch.nn.functional.normalize(model.text_proj(hidden[:, 0]), dim=-1))
    embeds_all = torch.cat(image_embeds)
    sim = torch.cat(image_feats) @ torch.cat(text_feats).t()
    n = len(pairs)
    groups = torch.arange(n) if pairs.groups is None else torch.from_numpy(pairs.groups)
    matches = (groups.view(-1, 1) == groups.view(1, -1)).to(sim.device)
    recall = matches[torch.arange(n), sim.argmax(dim=1)].float().mean().item()
    hardest = sim.masked_fill(matches, -2.0).argmax(dim=1)

    def itm(rows: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """ITM probability of text ``k`` against image ``rows[k]``."""
        text_ids = text_ids.clone()
        text_ids[:, 0] = enc_id
        logits, order = itm_logits(model, embeds_all, rows, text_ids, text_mask)
        probs = torch.empty(len(rows), device=logits.device)
        probs[order] = logits.softmax(-1)[:, 1]
        return probs

    rows = torch.arange(n, device=sim.device)
    metrics = {
        "itc_recall_at_1": recall,
        "itm_accept_matching": (itm(rows, ids, mask) >= 0.5).float().mean().item(),
        "itm_reject_hard_negative": (itm(rows, ids[hardest], mask[hardest]) < 0.5)
        .float()
        .mean()
        .item(),
    }
    if domain is None:
        return metrics
    known = domain.prepare(pairs.texts)
    rng = random.Random(seed)
    unknown = loaded.tokenizer.unk_token
    makers = {
        "itm_reject_composition": (domain.negative, False),
        "itm_reject_truncated": (domain.truncated, False),
        "itm_accept_partial": (domain.partial, True),
        "itm_accept_reworded": (lambda text, _, r: reword(text, r, unknown), True),
        "itm_reject_unreadable": (lambda text, _, r: unreadable(text, unknown, r), False),
        "itm_accept_rephrased": (lambda text, _, r: rephrase(text, r), True),
    }
    for name, (make, true) in makers.items():
        made_rows, texts = [], []
        for row, (text, fact) in enumerate(zip(pairs.texts, known, strict=True)):
            if made := make(text, fact, rng):
                made_rows.append(row)
                texts.append(made)
        if texts:
            made_ids, made_mask = _tokenize(loaded, texts)
            probs = itm(torch.tensor(made_rows, device=sim.device), made_ids, made_mask)
            metrics[name] = ((probs >= 0.5) == true).float().mean().item()
    return metrics


def save(loaded: LoadedModel, out: str | Path, dtype: str = "fp32") -> Path:
    """Write weights (safetensors), tokenizer and image processor to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    if dtype == "fp16":
        model = model.half()
    model.save_pretrained(out, safe_serialization=True)
    if dtype == "fp16":
        model.float()
    processor = BlipImageProcessorPil(
        size={"height": loaded.image_size, "width": loaded.image_size},
        image_mean=list(loaded.image_mean),
        image_std=list(loaded.image_std),
    )
    BlipProcessor(image_processor=processor, tokenizer=loaded.tokenizer).save_pretrained(out)
    return out


def finetune(
    kind: ModelKind,
    settings: FinetuneSettings,
    command: str = "",
    progress: Progress | None = None,
) -> TrainResult:
    """Read pairs, train ``kind`` from ``settings.base``, evaluate on a held-out slice, save
    to ``settings.out`` with a model card."""
    kind = ModelKind(kind)
    base, device = settings.base, settings.device
    torch.manual_seed(settings.seed)
    loaded = None if is_preset(base) else prepare_base(kind, base, [], device)
    image_size = PRESETS[base][0] if loaded is None else loaded.image_size
    pairs = read_pairs(
        settings.train,
        image_size,
        settings.image_column,
        settings.text_column,
        settings.group_column,
    )
    if loaded is None:
        loaded = prepare_base(kind, base, pairs.texts, device)
    train_pairs, heldout = pairs.split(settings.holdout, settings.seed)
    lr = settings.learning_rate(from_preset=is_preset(base))
    if progress is not None:
        if pairs.skipped:
            progress(f"{settings.train}: {describe_skipped(pairs.skipped)}")
        progress(
            f"finetuning {kind} from {base} on {len(train_pairs)} pairs "
            f"({len(heldout)} held out), image size {loaded.image_size}, device {loaded.device}"
        )
    steps, seconds, final = train(kind, loaded, train_pairs, settings, lr, progress)
    examples: list[tuple[str, str]] = []
    if len(heldout) == 0:
        evaluation: dict[str, float] = {}
    elif kind == ModelKind.CAPTIONER:
        evaluation, examples = evaluate_captioner(loaded, heldout)
    else:
        evaluation = evaluate_filter(
            loaded, heldout, domain=text_domain(settings.text_domain), seed=settings.seed
        )
    result = TrainResult(
        kind=kind,
        steps=steps,
        seconds=seconds,
        train_pairs=len(train_pairs),
        heldout_pairs=len(heldout),
        lr=lr,
        final_losses=final,
        evaluation=evaluation,
        examples=examples,
        skipped=pairs.skipped,
    )
    with Location(settings.out).writing_folder() as folder:
        save(loaded, folder, settings.save_dtype)
        write_model_card(Path(folder) / "README.md", result, settings, command)
    return result
