"""CapFilt's finetuning losses (BLIP, Li et al. 2022, section 3 and salesforce/BLIP models/).

- Captioner: language-modelling cross-entropy with label smoothing 0.1; the prompt
  ("a picture of ") and padding carry label -100, and the decoder input starts with [DEC]
  (``models/blip.py`` BLIP_Decoder.forward).
- Filter: image-text contrastive loss (ITC) on normalised projections of [CLS] with a
  learnable temperature (init 0.07), plus image-text matching (ITM) with one hard negative
  text per image and one hard negative image per text, drawn with ``torch.multinomial`` from
  the in-batch ITC softmax with the positives zeroed; cross-entropy over B positives and 2B
  negatives, with [ENC] at position 0 (``models/blip_retrieval.py`` BLIP_Retrieval.forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

LABEL_SMOOTHING = 0.1
IGNORE = -100


def caption_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
) -> torch.Tensor:
    """Labels for the LM loss: the token ids, with -100 on the prompt and on padding."""
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    labels[:, :prompt_length] = IGNORE
    return labels


def captioner_loss(
    model: BlipForConditionalGeneration,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
) -> torch.Tensor:
    """LM loss of ``[DEC] prompt caption [SEP]`` given the image (label smoothing 0.1).

    ``input_ids`` are tokenizer output (``[CLS] prompt caption [SEP] [PAD]...``);
    ``prompt_length`` counts [CLS] and the prompt tokens, which are not predicted.
    """
    bos = model.config.text_config.bos_token_id
    input_ids = input_ids.clone()
    input_ids[:, 0] = bos
    labels = caption_labels(input_ids, attention_mask, prompt_length)
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    logits = model.text_decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
    ).logits
    shifted = logits[:, :-1, :].contiguous()
    targets = labels[:, 1:].contiguous()
    return F.cross_entropy(
        shifted.view(-1, shifted.size(-1)),
        targets.view(-1),
        ignore_index=IGNORE,
        label_smoothing=LABEL_SMOOTHING,
    )


class Temperature(nn.Module):
    """BLIP's learnable ITC temperature, initialised at 0.07 and clamped to [0.001, 0.5]."""

    def __init__(self, init: float = 0.07) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.value.clamp(0.001, 0.5)


@dataclass
class FilterLosses:
    """The two filter losses of one batch; ``total`` is what is optimised."""

    itc: torch.Tensor
    itm: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.itc + self.itm


def same_group(groups: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """``B x B`` boolean matrix of pairs that match each other (the diagonal, and equal groups)."""
    if groups is None:
        return torch.eye(batch, dtype=torch.bool, device=device)
    return groups.view(-1, 1) == groups.view(1, -1)


def sample_hard_negatives(
    sim: torch.Tensor, positives: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each row of ``sim`` draw one column with probability softmax(row), positives zeroed.

    More similar (harder) negatives are drawn more often. A row whose only candidates are
    positives falls back to a uniform draw over the other columns.
    """
    weights = F.softmax(sim.float(), dim=1) + 1e-5
    weights = weights.masked_fill(positives, 0.0)
    empty = weights.sum(dim=1) == 0
    if empty.any():
        fallback = (
            ~torch.eye(sim.size(0), sim.size(1), dtype=torch.bool, device=sim.device)
        ).float()
        weights[empty] = fallback[empty]
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def _pad_to(tokens: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad ``tokens`` (ids or mask; pad id 0 as BERT's) to ``width`` columns."""
    return F.pad(tokens, (0, width - tokens.size(1)), value=0)


def filter_losses(
    model: BlipForImageTextRetrieval,
    temperature: Temperature,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    enc_token_id: int,
    groups: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    extra_negatives: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> FilterLosses:
    """ITC and ITM (hard negatives) losses of a batch of matching (image, text) pairs.

    ``groups`` (optional, one integer per pair) marks pairs that describe the same content:
    they are positives of each other for ITC and never drawn as ITM negatives.
    ``extra_negatives`` (rows, input ids, attention mask) are further texts that do not
    match the images of those rows (:mod:`models.finetune.text_negatives`); they join the
    ITM negatives only.
    """
    batch = pixel_values.size(0)
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    image_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
    text_embeds = model.text_encoder(
        input_ids=input_ids, attention_mask=attention_mask
    ).last_hidden_state
    text_feat = F.normalize(model.text_proj(text_embeds[:, 0, :]), dim=-1)

    temp = temperature()
    sim_i2t = image_feat @ text_feat.t() / temp
    sim_t2i = sim_i2t.t()
    positives = same_group(groups, batch, sim_i2t.device)
    targets = positives.float() / positives.float().sum(dim=1, keepdim=True)
    itc = (
        -(F.log_softmax(sim_i2t, dim=1) * targets).sum(dim=1).mean()
        - (F.log_softmax(sim_t2i, dim=1) * targets).sum(dim=1).mean()
    ) / 2

    enc_ids = input_ids.clone()
    enc_ids[:, 0] = enc_token_id
    with torch.no_grad():
        neg_text = sample_hard_negatives(sim_i2t.detach(), positives, generator)
        neg_image = sample_hard_negatives(sim_t2i.detach(), positives, generator)
    all_ids = torch.cat([enc_ids, enc_ids, enc_ids[neg_text]], dim=0)
    all_mask = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]], dim=0)
    all_images = torch.cat([image_embeds, image_embeds[neg_image], image_embeds], dim=0)
    negatives = 2 * batch
    if extra_negatives is not None and extra_negatives[0].numel():
        rows, extra_ids, extra_mask = extra_negatives
        extra_ids = extra_ids.clone()
        extra_ids[:, 0] = enc_token_id
        width = max(all_ids.size(1), extra_ids.size(1))
        all_ids = torch.cat([_pad_to(all_ids, width), _pad_to(extra_ids, width)], dim=0)
        all_mask = torch.cat([_pad_to(all_mask, width), _pad_to(extra_mask, width)], dim=0)
        all_images = torch.cat([all_images, image_embeds[rows]], dim=0)
        negatives += rows.numel()
    all_atts = torch.ones(all_images.shape[:2], dtype=torch.long, device=all_images.device)
    hidden = model.text_encoder(
        input_ids=all_ids,
        attention_mask=all_mask,
        encoder_hidden_states=all_images,
        encoder_attention_mask=all_atts,
    ).last_hidden_state
    logits = model.itm_head(hidden[:, 0, :])
    labels = torch.cat(
        [torch.ones(batch, dtype=torch.long), torch.zeros(negatives, dtype=torch.long)]
    ).to(logits.device)
    itm = F.cross_entropy(logits, labels)
    return FilterLosses(itc=itc, itm=itm)
