"""Caption decoding with static shapes for BLIP's text decoder.

transformers' ``generate`` grows its caches and token tensors every step and pays Python
and kernel-launch costs per layer and step; at BLIP-base size and 26 steps that, not
arithmetic, bounds a GPU. :class:`CaptionDecoder` runs the same decoder weights
(``BlipTextLMHeadModel``) with:

- cross-attention keys and values projected once per image (not per caption row), kept
  for the whole decode and read by every row of that image: rows are grouped by image and
  attend as one ``images x slots`` block, so nothing is repeated per row;
- a self-attention cache preallocated at the maximum length, written in place, and read
  with a mask, so every step has the same shapes;
- the prompt run once per image and its cache shared by the image's K rows;
- finished rows dropped: when rows end, the live ones are gathered into a smaller
  workspace (exact sizes on CPU; power-of-two buckets on GPU, so shapes repeat);
- on CUDA, each workspace's step (forward, token choice, bookkeeping) captured once in a
  CUDA graph and replayed, with one host synchronisation per step.

Token choice is :class:`models.sampling.TokenSampler`, so the tokens are those of
``generate`` with the same rules and seeded noise (``tests/test_decoding.py`` compares
them on CPU fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.sampling import TokenSampler


def _bucket(n: int, device: torch.device) -> int:
    """Workspace size for ``n`` rows or images: exact on CPU, a power of two on GPU."""
    if device.type != "cuda":
        return n
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class _Workspace:
    """Static tensors of one decoding shape (rows x images); one CUDA graph replays them."""

    rows: int  # R: row slots (live rows first, then idle ones)
    images: int  # N: image slots
    slots: int  # S: row slots per image in cross-attention
    ids: torch.Tensor  # R: output row of each row slot (the scratch row when idle)
    live: torch.Tensor  # R bool: row slot holds an unfinished row
    tokens: torch.Tensor  # R: last token of each row
    length: torch.Tensor  # 0-dim: tokens per row so far (prompt included)
    history: torch.Tensor  # R x max_length: each row's tokens
    seen: torch.Tensor  # R x vocab bool: tokens already in each row
    seeds: torch.Tensor  # R x 2: sampling seeds
    self_keys: list[torch.Tensor]  # per layer R x heads x max_length x head_size
    self_values: list[torch.Tensor]
    cross_keys: list[torch.Tensor]  # per layer N x heads x T x head_size
    cross_values: list[torch.Tensor]
    to_slots: torch.Tensor  # N*S: row slot feeding each (image, slot); R for an empty one
    to_rows: torch.Tensor  # R: (image, slot) position of each row slot
    graph: torch.cuda.CUDAGraph | None = None


class CaptionDecoder:
    """Decodes captions for batches of image states with one BLIP text decoder."""

    def __init__(
        self,
        text_decoder: torch.nn.Module,
        sampler: TokenSampler,
        *,
        max_length: int,
        pad_token_id: int,
        cuda_graphs: bool = True,
    ) -> None:
        config = text_decoder.config
        self.embeddings = text_decoder.bert.embeddings
        self.layers = list(text_decoder.bert.encoder.layer)
        self.head = text_decoder.cls
        self.heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.vocab_size = config.vocab_size
        self.sampler = sampler
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.end_token_id = sampler.end_token_id
        self.cuda_graphs = cuda_graphs
        self._graph_cache: dict[tuple[int, int, int, int], _Workspace] = {}
        self._pool: object | None = None

    # -- model pieces ---------------------------------------------------------------------

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``B x L x D`` -> ``B x heads x L x head_size``."""
        return x.view(*x.shape[:-1], self.heads, self.head_size).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """``B x heads x L x head_size`` -> ``B x L x D``."""
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

    def image_keys_values(self, states: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
        """Cross-attention keys and values of every layer, once per image."""
        keys, values = [], []
        for layer in self.layers:
            attention = layer.crossattention.self
            keys.append(self._split(attention.key(states)).contiguous())
            values.append(self._split(attention.value(states)).contiguous())
        return keys, values

    def _prefill(
        self, prompt: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The prompt through the decoder once per image: last logits and self-attention K/V."""
        images = keys[0].shape[0]
        ids = prompt[None, :].expand(images, -1)
        positions = torch.arange(prompt.shape[0], device=prompt.device)[None, :]
        hidden = self.embeddings(input_ids=ids, position_ids=positions)
        self_keys, self_values = [], []
        for i, layer in enumerate(self.layers):
            attention = layer.attention.self
            key = self._split(attention.key(hidden))
            value = self._split(attention.value(hidden))
            query = self._split(attention.query(hidden))
            context = F.scaled_dot_product_attention(query, key, value, is_causal=True)
            hidden = layer.attention.output(self._merge(context), hidden)
            query = self._split(layer.crossattention.self.query(hidden))
            context = F.scaled_dot_product_attention(query, keys[i], values[i])
            hidden = layer.crossattention.output(self._merge(context), hidden)
            hidden = layer.feed_forward_chunk(hidden)
            self_keys.append(key)
            self_values.append(value)
        logits = self.head(hidden[:, -1:, :])[:, 0, :].float()
        return logits, self_keys, self_values

    def _forward(self, ws: _Workspace) -> torch.Tensor:
        """Logits after each row's last token, which sits at position ``length - 1``."""
        position = (ws.length - 1).view(1, 1)
        hidden = self.embeddings(input_ids=ws.tokens[:, None], position_ids=position)
        valid = (torch.arange(self.max_length, device=position.device) <= position).view(
            1, 1, 1, -1
        )
        rows, dim = ws.rows, hidden.shape[-1]
        for i, layer in enumerate(self.layers):
            attention = layer.attention.self
            ws.self_keys[i].index_copy_(2, position[0], self._split(attention.key(hidden)))
            ws.self_values[i].index_copy_(2, position[0], self._split(attention.value(hidden)))
            query = self._split(attention.query(hidden))
            context = F.scaled_dot_product_attention(
                query, ws.self_keys[i], ws.self_values[i], attn_mask=valid
            )
            hidden = layer.attention.output(self._merge(context), hidden)
            # Cross-attention: the rows of each image attend together to its keys/values.
            query = layer.crossattention.self.query(hidden).view(rows, dim)
            query = torch.cat([query, query.new_zeros(1, dim)])[ws.to_slots]
            query = query.view(ws.images, ws.slots, self.heads, self.head_size).transpose(1, 2)
            context = F.scaled_dot_product_attention(query, ws.cross_keys[i], ws.cross_values[i])
            context = context.transpose(1, 2).reshape(ws.images * ws.slots, dim)[ws.to_rows]
            hidden = layer.crossattention.output(context.view(rows, 1, dim), hidden)
            hidden = layer.feed_forward_chunk(hidden)
        return self.head(hidden)[:, 0, :].float()

    # -- one step -------------------------------------------------------------------------

    def _choose(self, ws: _Workspace, logits: torch.Tensor) -> None:
        """Draw each row's next token and record it (idle rows write to the scratch row)."""
        tokens = self.sampler(logits, ws.seen, ws.length, ws.seeds)
        tokens = torch.where(ws.live, tokens, self.pad_token_id)
        ws.tokens.copy_(tokens)
        ws.history.index_put_((torch.arange(ws.rows, device=tokens.device), ws.length), tokens)
        ws.seen.scatter_(1, tokens[:, None], True)
        ws.live.logical_and_(tokens != self.end_token_id)
        ws.length.add_(1)

    def _step(self, ws: _Workspace) -> None:
        self._choose(ws, self._forward(ws))

    def _run_step(self, ws: _Workspace) -> None:
        if ws.graph is None and self._graphs_on(ws):
            self._capture(ws)
        if ws.graph is not None:
            ws.graph.replay()
        else:
            self._step(ws)

    def _graphs_on(self, ws: _Workspace) -> bool:
        return self.cuda_graphs and ws.length.device.type == "cuda"

    def _capture(self, ws: _Workspace) -> None:
        """Record the step in a CUDA graph; warm-up runs on a copy of the state (kernels,
        allocator), so the recorded state is untouched."""
        saved = {name: getattr(ws, name).clone() for name in _STEP_STATE}
        saved_keys = [k.clone() for k in ws.self_keys]
        saved_values = [v.clone() for v in ws.self_values]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(ws)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._step(ws)
        for name, value in saved.items():
            getattr(ws, name).copy_(value)
        for target, value in zip(
            ws.self_keys + ws.self_values, saved_keys + saved_values, strict=True
        ):
            target.copy_(value)
        ws.graph = graph

    # -- workspaces -------------------------------------------------------------------------

    def _workspace(
        self, rows: int, images: int, slots: int, image_tokens: int, like: torch.Tensor
    ) -> _Workspace:
        """A workspace of the given sizes, for keys/values like ``like``; on CUDA one is kept
        per size for its graph."""
        device = like.device
        key = (rows, images, slots, image_tokens)
        if self._graphs_on_device(device) and key in self._graph_cache:
            return self._graph_cache[key]
        layers = len(self.layers)
        self_shape = (rows, self.heads, self.max_length, self.head_size)
        cross_shape = (images, self.heads, image_tokens, self.head_size)
        ws = _Workspace(
            rows=rows,
            images=images,
            slots=slots,
            ids=torch.zeros(rows, dtype=torch.long, device=device),
            live=torch.zeros(rows, dtype=torch.bool, device=device),
            tokens=torch.zeros(rows, dtype=torch.long, device=device),
            length=torch.zeros((), dtype=torch.long, device=device),
            history=torch.zeros(rows, self.max_length, dtype=torch.long, device=device),
            seen=torch.zeros(rows, self.vocab_size, dtype=torch.bool, device=device),
            seeds=torch.zeros(rows, 2, dtype=torch.long, device=device),
            self_keys=[like.new_zeros(self_shape) for _ in range(layers)],
            self_values=[like.new_zeros(self_shape) for _ in range(layers)],
            cross_keys=[like.new_zeros(cross_shape) for _ in range(layers)],
            cross_values=[like.new_zeros(cross_shape) for _ in range(layers)],
            to_slots=torch.zeros(images * slots, dtype=torch.long, device=device),
            to_rows=torch.zeros(rows, dtype=torch.long, device=device),
        )
        if self._graphs_on_device(device):
            self._graph_cache[key] = ws
        return ws

    def _graphs_on_device(self, device: torch.device) -> bool:
        return self.cuda_graphs and device.type == "cuda"

    @staticmethod
    def _layout(ws: _Workspace, image_of_row: torch.Tensor, slot_of_row: torch.Tensor) -> None:
        """Point each live row at its (image, slot) cross-attention position and back."""
        live = image_of_row.shape[0]
        position = image_of_row * ws.slots + slot_of_row
        ws.to_slots.fill_(ws.rows)
        ws.to_slots[position] = torch.arange(live, device=position.device)
        ws.to_rows.zero_()
        ws.to_rows[:live] = position

    # -- decoding ---------------------------------------------------------------------------

    def decode(
        self,
        states: torch.Tensor,
        prompt: torch.Tensor,
        rows_per_image: int,
        seeds: torch.Tensor,
    ) -> torch.Tensor:
        """Token ids ``(images * rows_per_image) x max_length`` (prompt first, padding after
        the end token), rows image-major as ``generate`` with ``num_return_sequences``."""
        device = states.device
        images, k, start = states.shape[0], rows_per_image, prompt.shape[0]
        total = images * k
        output = torch.full(
            (total + 1, self.max_length), self.pad_token_id, dtype=torch.long, device=device
        )
        cross_keys, cross_values = self.image_keys_values(states)
        logits, prompt_keys, prompt_values = self._prefill(prompt, cross_keys, cross_values)
        owner = torch.arange(images, device=device).repeat_interleave(k)
        ws = self._workspace(
            _bucket(total, device), _bucket(images, device), k, states.shape[1], states
        )
        live_ids = torch.arange(total, device=device)
        ws.ids.fill_(total)
        ws.ids[:total] = live_ids
        ws.live.zero_()
        ws.live[:total] = True
        ws.length.fill_(start)
        ws.history.fill_(self.pad_token_id)
        ws.history[:total, :start] = prompt
        ws.seen.zero_()
        ws.seen[:total, prompt] = True
        ws.seeds.zero_()
        ws.seeds[:total] = seeds
        for i in range(len(self.layers)):
            ws.self_keys[i].zero_()
            ws.self_values[i].zero_()
            ws.self_keys[i][:total, :, :start] = prompt_keys[i][owner]
            ws.self_values[i][:total, :, :start] = prompt_values[i][owner]
            ws.cross_keys[i].zero_()
            ws.cross_values[i].zero_()
            ws.cross_keys[i][:images] = cross_keys[i]
            ws.cross_values[i][:images] = cross_values[i]
        del cross_keys, cross_values, prompt_keys, prompt_values
        self._layout(ws, owner, torch.arange(k, device=device).repeat(images))
        first = logits.new_zeros(ws.rows, logits.shape[1])
        first[:total] = logits[owner]
        self._choose(ws, first)
        length, live_rows = start + 1, total
        while length < self.max_length:
            remaining = int(ws.live[:live_rows].sum())
            if remaining == 0:
                break
            if _bucket(remaining, device) < ws.rows:
                ws = self._compact(ws, live_rows, output)
                live_rows = remaining
            self._run_step(ws)
            length += 1
        output[ws.ids[:live_rows]] = ws.history[:live_rows]
        return output[:total]

    def _compact(self, ws: _Workspace, live_rows: int, output: torch.Tensor) -> _Workspace:
        """Save every row's tokens, then gather the unfinished rows (and the images they
        read) into a workspace of their size. Rows stay grouped by image, in order."""
        device = ws.ids.device
        output[ws.ids[:live_rows]] = ws.history[:live_rows]
        keep = ws.live[:live_rows].nonzero().view(-1)
        rows = keep.shape[0]
        kept_images, image_of_row = torch.unique(ws.to_rows[keep] // ws.slots, return_inverse=True)
        images = kept_images.shape[0]
        counts = torch.bincount(image_of_row, minlength=images)
        slot_of_row = torch.arange(rows, device=device) - (counts.cumsum(0) - counts)[image_of_row]
        new = self._workspace(
            _bucket(rows, device),
            _bucket(images, device),
            int(counts.max()),
            ws.cross_keys[0].shape[2],
            ws.self_keys[0],
        )
        new.ids.fill_(output.shape[0] - 1)
        new.ids[:rows] = ws.ids[keep]
        new.live.zero_()
        new.live[:rows] = True
        new.tokens.zero_()
        new.tokens[:rows] = ws.tokens[keep]
        new.length.copy_(ws.length)
        new.history.fill_(self.pad_token_id)
        new.history[:rows] = ws.history[keep]
        new.seen.zero_()
        new.seen[:rows] = ws.seen[keep]
        new.seeds.zero_()
        new.seeds[:rows] = ws.seeds[keep]
        for i in range(len(self.layers)):
            for target, source, index in (
                (new.self_keys[i], ws.self_keys[i], keep),
                (new.self_values[i], ws.self_values[i], keep),
                (new.cross_keys[i], ws.cross_keys[i], kept_images),
                (new.cross_values[i], ws.cross_values[i], kept_images),
            ):
                target[index.shape[0] :].zero_()
                target[: index.shape[0]] = source[index]
        self._layout(new, image_of_row, slot_of_row)
        return new


_STEP_STATE = ("live", "tokens", "length", "history", "seen")
