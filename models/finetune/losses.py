"""CapFilt's finetuning losses (BLIP, Li et al. 2022, section 3 and salesforce/BLIP models/).

- Captioner: language-modelling cross-entropy with label smoothing 0.1; the prompt
  ("a picture of ") and padding carry label -100, and the decoder input starts with [DEC]
  (``models/blip.py`` BLIP_Decoder.forward).
- Filter: image-text contrastive loss (ITC) on normalised projections of [CLS] with a
  learnable temperature (init 0.07), plus image-text matching (ITM) with one hard negative
  text per image and one hard negative image per text, drawn with ``torch.multinomial`` from
  the in-batch ITC softmax with the positives zeroed; cross-entropy over B positives and up
  to 2B negatives, with [ENC] at position 0 (``models/blip_retrieval.py``
  BLIP_Retrieval.forward). Optional extra texts (:mod:`models.finetune.text_negatives`)
  join the ITM pairs with their own labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from models.length_chunks import length_chunks

LABEL_SMOOTHING = 0.1
IGNORE = -100
#: Most ITM pairs encoded at once in finetuning (chunks of similar text length).
ITM_CHUNK_ROWS = 64


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


#: Index of "no negative" in :func:`sample_hard_negatives`.
NO_NEGATIVE = -1


def sample_hard_negatives(
    sim: torch.Tensor, excluded: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each row of ``sim`` draw one column with probability softmax(row), ``excluded``
    columns (the row's matches) zeroed.

    More similar (harder) negatives are drawn more often. A row whose every column is
    excluded has no negative in the batch: it gets :data:`NO_NEGATIVE`, never a match.
    """
    weights = F.softmax(sim.float(), dim=1) + 1e-5
    weights = weights.masked_fill(excluded, 0.0)
    empty = weights.sum(dim=1) == 0
    # multinomial needs a non-zero row; the draw of an empty row is discarded below.
    weights[empty] = 1.0
    picked = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return picked.masked_fill(empty, NO_NEGATIVE)


@dataclass
class ExtraTexts:
    """Texts beyond the batch's own, each paired with the image of one row of the batch.

    ``matches`` says whether the text is true of that image (an ITM positive, such as a
    partial description) or not (an ITM negative, such as a composition-breaking rewrite);
    see :mod:`models.finetune.text_negatives`.
    """

    rows: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    matches: torch.Tensor

    def __len__(self) -> int:
        return int(self.rows.numel())


@dataclass
class ItmPairs:
    """The (image, text, label) triples of one ITM step: indices into the batch's images and
    into its texts followed by the extra texts."""

    images: torch.Tensor
    texts: torch.Tensor
    labels: torch.Tensor


def itm_pairs(
    sim_i2t: torch.Tensor,
    excluded: torch.Tensor,
    generator: torch.Generator | None = None,
    extra: ExtraTexts | None = None,
) -> ItmPairs:
    """BLIP's ITM pairs: every matching pair, one hard negative text per image and one hard
    negative image per text (drawn from the ITC similarities ``sim_i2t``, never where
    ``excluded`` is set), then the extra texts with their own labels.

    A row with no possible negative in the batch (every other pair matches it) contributes
    no negative rather than a matching pair labelled as one.
    """
    batch = sim_i2t.size(0)
    device = sim_i2t.device
    rows = torch.arange(batch, device=device)
    neg_text = sample_hard_negatives(sim_i2t, excluded, generator)
    neg_image = sample_hard_negatives(sim_i2t.t(), excluded.t(), generator)
    has_text, has_image = neg_text != NO_NEGATIVE, neg_image != NO_NEGATIVE
    images = [rows, neg_image[has_image], rows[has_text]]
    texts = [rows, rows[has_image], neg_text[has_text]]
    labels = [
        torch.ones(batch, dtype=torch.long, device=device),
        torch.zeros(int(has_image.sum()) + int(has_text.sum()), dtype=torch.long, device=device),
    ]
    if extra is not None and len(extra):
        images.append(extra.rows.to(device))
        texts.append(batch + torch.arange(len(extra), device=device))
        labels.append(extra.matches.to(device=device, dtype=torch.long))
    return ItmPairs(images=torch.cat(images), texts=torch.cat(texts), labels=torch.cat(labels))


def _pad_to(tokens: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad ``tokens`` (ids or mask; pad id 0 as BERT's) to ``width`` columns."""
    return F.pad(tokens, (0, width - tokens.size(1)), value=0)


def itm_logits(
    model: BlipForImageTextRetrieval,
    image_embeds: torch.Tensor,
    images: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM logits of text ``k`` (``input_ids[k]``, [ENC] first) against image ``images[k]``
    (a row of ``image_embeds``), and the ``k`` of each logits row.

    The pairs are encoded in chunks of similar text length (:mod:`models.length_chunks`), so
    a long tail of texts does not pad every pair; the logits come in chunk order.
    """
    lengths = attention_mask.sum(dim=1)
    logits, order = [], []
    for chunk in length_chunks(lengths, ITM_CHUNK_ROWS):
        width = int(lengths[chunk].max())
        states = image_embeds[images[chunk]]
        hidden = model.text_encoder(
            input_ids=input_ids[chunk, :width],
            attention_mask=attention_mask[chunk, :width],
            encoder_hidden_states=states,
            encoder_attention_mask=torch.ones(
                states.shape[:2], dtype=torch.long, device=states.device
            ),
        ).last_hidden_state
        logits.append(model.itm_head(hidden[:, 0, :]))
        order.append(chunk)
    return torch.cat(logits), torch.cat(order)


def filter_losses(
    model: BlipForImageTextRetrieval,
    temperature: Temperature,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    enc_token_id: int,
    groups: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    extra: ExtraTexts | None = None,
    true_of: torch.Tensor | None = None,
) -> FilterLosses:
    """ITC and ITM (hard negatives) losses of a batch of matching (image, text) pairs.

    ``groups`` (optional, one integer per pair) marks pairs that describe the same content:
    they are positives of each other for ITC and never drawn as ITM negatives.
    ``true_of`` (optional ``B x B`` boolean, image by text) marks further texts of the batch
    that are true of an image without being its caption (a partial description, say): they
    are not drawn as its ITM negatives either. ``extra`` texts join the ITM pairs only.
    """
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    image_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
    text_embeds = model.text_encoder(
        input_ids=input_ids, attention_mask=attention_mask
    ).last_hidden_state
    text_feat = F.normalize(model.text_proj(text_embeds[:, 0, :]), dim=-1)

    temp = temperature()
    sim_i2t = image_feat @ text_feat.t() / temp
    sim_t2i = sim_i2t.t()
    positives = same_group(groups, pixel_values.size(0), sim_i2t.device)
    targets = positives.float() / positives.float().sum(dim=1, keepdim=True)
    itc = (
        -(F.log_softmax(sim_i2t, dim=1) * targets).sum(dim=1).mean()
        - (F.log_softmax(sim_t2i, dim=1) * targets).sum(dim=1).mean()
    ) / 2

    excluded = positives if true_of is None else positives | true_of.to(positives.device)
    with torch.no_grad():
        pairs = itm_pairs(sim_i2t.detach(), excluded, generator, extra)
    ids, mask = input_ids, attention_mask
    if extra is not None and len(extra):
        width = max(ids.size(1), extra.input_ids.size(1))
        ids = torch.cat([_pad_to(ids, width), _pad_to(extra.input_ids, width)])
        mask = torch.cat([_pad_to(mask, width), _pad_to(extra.attention_mask, width)])
    enc_ids = ids[pairs.texts].clone()
    enc_ids[:, 0] = enc_token_id
    logits, order = itm_logits(model, image_embeds, pairs.images, enc_ids, mask[pairs.texts])
    itm = F.cross_entropy(logits, pairs.labels.to(logits.device)[order])
    return FilterLosses(itc=itc, itm=itm)
