"""Image-text scores with a BLIP filter: each image encoded once, any number of texts.

``BlipForImageTextRetrieval.forward`` re-runs the vision transformer for every text; here
the vision states of a batch are computed once and the text encoder is run over all texts
of all images, in chunks of similar length (little padding); cross-attention keys and
values are projected once per image and each image's texts attend to them together
(``models.shared_states``). Only position 0 is read from the text encoder, so its last
layer runs for that position alone. Scores per text:

- ITM: ``softmax(itm_head(text_encoder(text, image states)[:, 0]))[:, 1]``, the CapFilt rule's
  probability (salesforce/BLIP issue #46).
- ITC: cosine between normalised ``vision_proj(image [CLS])`` and ``text_proj(text [CLS])``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.fused_attention import merge_heads, split_heads
from models.host import ThreadTuner
from models.length_chunks import length_chunks
from models.loading import LoadedModel
from models.phases import phase
from models.preprocess import pixel_values
from models.shared_states import RowGroups, grouped_cross_attention, image_keys_values

ENC_TOKEN = "[ENC]"
#: On CPU, threads for encoding a chunk of texts (``models.host``).
TEXT_CHUNKS = ThreadTuner()
_PUNCTUATION = re.compile(r"""([.!"()*#:;~])""")


def normalize_text(text: str, max_words: int = 30) -> str:
    """salesforce/BLIP ``pre_caption``: lowercase, punctuation ``.!"()*#:;~`` to spaces,
    whitespace collapsed and stripped, at most ``max_words`` words."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(words[:max_words])


@dataclass
class ImageScores:
    """Scores of one image against its texts, and its embedding."""

    itm: np.ndarray
    itc: np.ndarray
    embedding: np.ndarray


class Scorer:
    """ITM and ITC scores of many texts per image, with one vision pass per image.

    ``first_token="enc"`` puts ``[ENC]`` at position 0 of the ITM input, as BLIP was trained
    (salesforce/BLIP ``blip_itm.py``); ``"cls"`` keeps ``[CLS]``, as transformers' forward
    does (transformers issues #22732, #25629). ITC always uses ``[CLS]``.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        first_token: str = "enc",
        max_tokens: int = 35,
        text_batch_size: int | None = None,
    ) -> None:
        if first_token not in {"enc", "cls"}:
            raise ValueError(f"first_token must be 'enc' or 'cls', not {first_token!r}")
        if text_batch_size is None:
            text_batch_size = 64 if loaded.device.type == "cpu" else 2048
        if text_batch_size < 1 or max_tokens < 2:
            raise ValueError("text_batch_size must be >= 1 and max_tokens >= 2")
        self.loaded = loaded
        self.first_token = first_token
        self.max_tokens = max_tokens
        self.text_batch_size = text_batch_size
        self.enc_token_id: int | None = None
        if first_token == "enc":
            vocab = loaded.tokenizer.get_vocab()
            if ENC_TOKEN not in vocab:
                raise ValueError(
                    f"the tokenizer of {loaded.name} has no {ENC_TOKEN} token; "
                    "use first_token='cls' with this filter"
                )
            self.enc_token_id = vocab[ENC_TOKEN]

    def embed_images(self, pixels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One vision pass: (vision states ``B x T x D``, L2-normalised ITC embeddings ``B x P``)."""
        model = self.loaded.model
        device = self.loaded.device
        with self.loaded.inference():
            with phase("input", device):
                batch = pixel_values(pixels, self.loaded)
            with phase("vision", device):
                states = model.vision_model(pixel_values=batch).last_hidden_state
                embeddings = F.normalize(model.vision_proj(states[:, 0, :]).float(), dim=-1)
        return states, embeddings

    def score(
        self, pixels: np.ndarray | torch.Tensor, texts: Sequence[Sequence[str]]
    ) -> list[ImageScores]:
        """Scores of ``texts[i]`` (any number, zero included) against image ``i``."""
        if len(texts) != len(pixels):
            raise ValueError(f"{len(pixels)} images but {len(texts)} text lists")
        if len(texts) == 0:
            return []
        states, embeddings = self.embed_images(pixels)
        flat = [normalize_text(text) for group in texts for text in group]
        counts = [len(group) for group in texts]
        itm = np.zeros(len(flat), dtype=np.float32)
        itc = np.zeros(len(flat), dtype=np.float32)
        if flat:
            owner = torch.repeat_interleave(torch.arange(len(texts)), torch.tensor(counts)).to(
                self.loaded.device
            )
            with phase("scoring", self.loaded.device):
                itm_t, itc_t = self._score_texts(states, embeddings, owner, flat)
                itm, itc = itm_t.cpu().numpy(), itc_t.cpu().numpy()
        ends = np.cumsum(counts)
        embeddings_np = embeddings.cpu().numpy().astype(np.float32)
        return [
            ImageScores(itm=itm[end - n : end], itc=itc[end - n : end], embedding=embeddings_np[i])
            for i, (n, end) in enumerate(zip(counts, ends, strict=True))
        ]

    def _encode(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        cross: tuple[list[torch.Tensor], list[torch.Tensor], RowGroups] | None = None,
    ) -> torch.Tensor:
        """The text encoder's output at position 0 (``B x D``), with cross-attention to each
        text's image when ``cross`` (per-layer image keys, values, and the texts' groups)."""
        text = self.loaded.model.text_encoder
        layers = text.encoder.layer
        heads = text.config.num_attention_heads
        attend = mask.bool()[:, None, None, :]
        hidden = text.embeddings(input_ids=ids)
        for i, layer in enumerate(layers):
            attention = layer.attention.self
            # After the last layer only position 0 is read: its queries alone go on.
            queries = hidden[:, :1] if i == len(layers) - 1 else hidden
            context = F.scaled_dot_product_attention(
                split_heads(attention.query(queries), heads),
                split_heads(attention.key(hidden), heads),
                split_heads(attention.value(hidden), heads),
                attn_mask=attend,
            )
            hidden = layer.attention.output(merge_heads(context), queries)
            if cross is not None:
                keys, values, groups = cross
                query = layer.crossattention.self.query(hidden)
                context = grouped_cross_attention(query, keys[i], values[i], groups)
                hidden = layer.crossattention.output(context, hidden)
            hidden = layer.feed_forward_chunk(hidden)
        return hidden[:, 0]

    def _score_texts(
        self,
        states: torch.Tensor,
        embeddings: torch.Tensor,
        owner: torch.Tensor,
        texts: list[str],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loaded = self.loaded
        model = loaded.model
        tokens = loaded.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        input_ids = tokens.input_ids.to(loaded.device)
        attention = tokens.attention_mask.to(loaded.device)
        lengths = attention.sum(dim=1)
        with loaded.inference():
            itm = torch.empty(len(texts), dtype=torch.float32, device=loaded.device)
            itc = torch.empty(len(texts), dtype=torch.float32, device=loaded.device)
            image_keys, image_values = image_keys_values(model.text_encoder.encoder.layer, states)
            cpu = loaded.device.type == "cpu"
            for chunk in length_chunks(lengths, self.text_batch_size):
                width = int(lengths[chunk].max())
                with TEXT_CHUNKS.run(len(chunk) * width) if cpu else nullcontext():
                    ids = input_ids[chunk, :width]
                    mask = attention[chunk, :width]
                    images = owner[chunk]
                    cls = self._encode(ids, mask)
                    text_feat = F.normalize(model.text_proj(cls).float(), dim=-1)
                    itc[chunk] = (text_feat * embeddings[images]).sum(dim=-1)
                    if self.enc_token_id is not None:
                        ids = ids.clone()
                        ids[:, 0] = self.enc_token_id
                    # Every image of the batch keeps its keys/values in place (an image
                    # with no text in this chunk only gets empty slots).
                    groups = RowGroups.of(images, states.shape[0])
                    fused = self._encode(ids, mask, (image_keys, image_values, groups))
                    itm[chunk] = model.itm_head(fused).float().softmax(dim=-1)[:, 1]
        return itm, itc
