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

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.fused_attention import merge_heads, split_heads
from models.host import ThreadTuner
from models.sampling import TokenSampler
from models.shared_states import RowGroups, grouped_cross_attention, image_keys_values

#: On CPU, threads for the decoding steps: operations on a few dozen rows, where threads
#: that wait for each other can cost more than they bring (``models.host``).
DECODING_STEPS = ThreadTuner()


@dataclass
class _Workspace:
    """Static tensors of one decoding shape (rows x images); one CUDA graph replays them."""

    rows: int  # R: row slots (live rows first, then idle ones)
    ids: torch.Tensor  # R: output row of each row slot (the scratch row when idle)
    live: torch.Tensor  # R bool: row slot holds an unfinished row
    tokens: torch.Tensor  # R: last token of each row
    length: torch.Tensor  # 0-dim: tokens per row so far (prompt included)
    history: torch.Tensor  # R x max_length: each row's tokens
    seen: torch.Tensor  # R x vocab bool: tokens already in each row
    seeds: torch.Tensor  # R x 2: sampling seeds
    self_keys: list[torch.Tensor]  # per layer R x heads x max_length x head_size
    self_values: list[torch.Tensor]
    cross_keys: list[torch.Tensor]  # per layer N image slots x heads x T x head_size
    cross_values: list[torch.Tensor]
    groups: RowGroups  # rows by image for cross-attention
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
        static_shapes: bool | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        """``static_shapes``: workspaces in power-of-two sizes, kept and refilled (default: on
        CUDA); ``cuda_graphs``: with static shapes on CUDA, replay each step as a graph."""
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
        self.static_shapes = static_shapes
        self.cuda_graphs = cuda_graphs
        self._graph_cache: dict[tuple[int, ...], _Workspace] = {}
        self._buffer_cache: dict[tuple[object, ...], dict[str, object]] = {}
        # Workspaces and graphs are reused across calls: one decode at a time (RunInference
        # may share a model between a worker's threads).
        self._lock = threading.Lock()
        self._pool: object | None = None

    # -- model pieces ---------------------------------------------------------------------

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
            key = split_heads(attention.key(hidden), self.heads)
            value = split_heads(attention.value(hidden), self.heads)
            query = split_heads(attention.query(hidden), self.heads)
            context = F.scaled_dot_product_attention(query, key, value, is_causal=True)
            hidden = layer.attention.output(merge_heads(context), hidden)
            query = split_heads(layer.crossattention.self.query(hidden), self.heads)
            context = F.scaled_dot_product_attention(query, keys[i], values[i])
            hidden = layer.crossattention.output(merge_heads(context), hidden)
            hidden = layer.feed_forward_chunk(hidden)
            self_keys.append(key)
            self_values.append(value)
        logits = self.head(hidden[:, -1:, :])[:, 0, :].float()
        return logits, self_keys, self_values

    def _forward(self, ws: _Workspace, length: int | None) -> torch.Tensor:
        """Logits after each row's last token, which sits at position ``length - 1``.

        ``length`` None (static shapes): attention over the whole cache, masked beyond the
        position; else over the first ``length`` cache entries.
        """
        position = (ws.length - 1).view(1, 1)
        hidden = self.embeddings(input_ids=ws.tokens[:, None], position_ids=position)
        valid = None
        if length is None:
            valid = torch.arange(self.max_length, device=position.device) <= position
            valid = valid.view(1, 1, 1, -1)
        for i, layer in enumerate(self.layers):
            attention = layer.attention.self
            ws.self_keys[i].index_copy_(
                2, position[0], split_heads(attention.key(hidden), self.heads)
            )
            ws.self_values[i].index_copy_(
                2, position[0], split_heads(attention.value(hidden), self.heads)
            )
            query = split_heads(attention.query(hidden), self.heads)
            keys, values = ws.self_keys[i], ws.self_values[i]
            if length is not None:
                keys, values = keys[:, :, :length], values[:, :, :length]
            context = F.scaled_dot_product_attention(query, keys, values, attn_mask=valid)
            hidden = layer.attention.output(merge_heads(context), hidden)
            # Cross-attention: the rows of each image attend together to its keys/values.
            query = layer.crossattention.self.query(hidden)
            context = grouped_cross_attention(
                query, ws.cross_keys[i], ws.cross_values[i], ws.groups
            )
            hidden = layer.crossattention.output(context, hidden)
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

    def _step(self, ws: _Workspace, length: int | None = None) -> None:
        self._choose(ws, self._forward(ws, length))

    def _run_step(self, ws: _Workspace, length: int) -> None:
        """One token for every row of ``ws``, whose rows hold ``length`` tokens."""
        if ws.graph is None and self._graphs_on(ws):
            self._capture(ws)
        if ws.graph is not None:
            ws.graph.replay()
        elif ws.length.device.type == "cpu":
            with DECODING_STEPS.run(ws.rows):
                self._step(ws, None if self._static(ws.length.device) else length)
        else:
            self._step(ws, None if self._static(ws.length.device) else length)

    def _graphs_on(self, ws: _Workspace) -> bool:
        device = ws.length.device
        return self.cuda_graphs and device.type == "cuda" and self._static(device)

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

    def _install(
        self, rows: int, images: int, slots: int, state: dict[str, object], scratch: int
    ) -> _Workspace:
        """A workspace of the given sizes holding ``state`` (the live rows and their images).

        Without static shapes the sizes are exact and the workspace takes the tensors as
        they are. With them, the tensors of ``rows`` rows and of ``images`` images are kept
        (one set per size, shared by the workspaces of that size) and ``state`` is copied
        in, idle rows and images padded (idle rows write to output row ``scratch``); a
        workspace is kept per shape, with its CUDA graph.
        """
        cross = state["cross_keys"][0]
        device = cross.device
        if not self._static(device):
            groups = RowGroups.empty(rows, images, slots, device)
            return _Workspace(rows=rows, groups=groups, **state)
        row_part = self._buffers(
            ("rows", rows), {k: v for k, v in state.items() if not k.startswith("cross")}, rows
        )
        image_part = self._buffers(
            ("images", images, cross.shape[2]),
            {k: v for k, v in state.items() if k.startswith("cross")},
            images,
        )
        key = (rows, images, slots, cross.shape[2])
        ws = self._graph_cache.get(key)
        if ws is None:
            groups = RowGroups.empty(rows, images, slots, device)
            ws = self._graph_cache[key] = _Workspace(
                rows=rows, groups=groups, **row_part, **image_part
            )
        padding = {"ids": scratch, "history": self.pad_token_id}
        for name, value in state.items():
            targets = getattr(ws, name)
            pairs = (
                zip(targets, value, strict=True) if isinstance(value, list) else [(targets, value)]
            )
            for into, source in pairs:
                if into is source:
                    continue
                if name == "length":
                    into.copy_(source)
                    continue
                into[: source.shape[0]] = source
                into[source.shape[0] :] = padding.get(name, 0)
        return ws

    def _buffers(
        self, key: tuple[object, ...], like: dict[str, object], n: int
    ) -> dict[str, object]:
        """Zeroed tensors shaped like ``like`` with ``n`` rows, kept under ``key``."""
        if key not in self._buffer_cache:

            def zeros(value: torch.Tensor) -> torch.Tensor:
                return value.new_zeros((n, *value.shape[1:])) if value.dim() else value.clone()

            self._buffer_cache[key] = {
                name: [zeros(v) for v in value] if isinstance(value, list) else zeros(value)
                for name, value in like.items()
            }
        return self._buffer_cache[key]

    def _static(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.static_shapes is None else self.static_shapes

    def _bucket(self, n: int, device: torch.device) -> int:
        """Workspace size for ``n`` rows or images: a power of two with static shapes."""
        return 1 << max(0, (n - 1).bit_length()) if self._static(device) else n

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
        with self._lock:
            return self._decode(states, prompt, rows_per_image, seeds)

    def _decode(
        self, states: torch.Tensor, prompt: torch.Tensor, rows_per_image: int, seeds: torch.Tensor
    ) -> torch.Tensor:
        device = states.device
        images, k, start = states.shape[0], rows_per_image, prompt.shape[0]
        total = images * k
        output = torch.full(
            (total + 1, self.max_length), self.pad_token_id, dtype=torch.long, device=device
        )
        cross_keys, cross_values = image_keys_values(self.layers, states)
        logits, prompt_keys, prompt_values = self._prefill(prompt, cross_keys, cross_values)
        owner = torch.arange(images, device=device).repeat_interleave(k)
        history = output[:total].clone()
        history[:, :start] = prompt
        seen = torch.zeros(total, self.vocab_size, dtype=torch.bool, device=device)
        seen[:, prompt] = True
        self_shape = (total, self.heads, self.max_length, self.head_size)
        self_keys, self_values = [], []
        for key, value in zip(prompt_keys, prompt_values, strict=True):
            self_keys.append(key.new_zeros(self_shape))
            self_keys[-1][:, :, :start] = key[owner]
            self_values.append(value.new_zeros(self_shape))
            self_values[-1][:, :, :start] = value[owner]
        state = {
            "ids": torch.arange(total, device=device),
            "live": torch.ones(total, dtype=torch.bool, device=device),
            "tokens": torch.zeros(total, dtype=torch.long, device=device),
            "length": torch.tensor(start, device=device),
            "history": history,
            "seen": seen,
            "seeds": seeds,
            "self_keys": self_keys,
            "self_values": self_values,
            "cross_keys": cross_keys,
            "cross_values": cross_values,
        }
        ws = self._install(
            self._bucket(total, device), self._bucket(images, device), k, state, total
        )
        del state, cross_keys, cross_values, self_keys, self_values
        ws.groups.assign(owner, torch.arange(k, device=device).repeat(images))
        first = logits.new_zeros(ws.rows, logits.shape[1])
        first[:total] = logits[owner]
        self._choose(ws, first)
        length, live_rows = start + 1, total
        while length < self.max_length:
            remaining = int(ws.live[:live_rows].sum())
            if remaining == 0:
                break
            if self._bucket(remaining, device) < ws.rows:
                ws = self._compact(ws, live_rows, output)
                live_rows = remaining
            self._run_step(ws, length)
            length += 1
        output[ws.ids[:live_rows]] = ws.history[:live_rows]
        return output[:total]

    def _compact(self, ws: _Workspace, live_rows: int, output: torch.Tensor) -> _Workspace:
        """Save every row's tokens, then gather the unfinished rows into a workspace of their
        size. Their images move to a smaller set only when that shrinks the image size;
        rows stay grouped by image, in order."""
        device = ws.ids.device
        output[ws.ids[:live_rows]] = ws.history[:live_rows]
        keep = ws.live[:live_rows].nonzero().view(-1)
        rows = keep.shape[0]
        image_of_row = ws.groups.to_rows[keep] // ws.groups.slots
        live_images, inverse = torch.unique(image_of_row, return_inverse=True)
        images = ws.groups.images
        state: dict[str, object] = {"cross_keys": ws.cross_keys, "cross_values": ws.cross_values}
        if self._bucket(len(live_images), device) < images:
            images, image_of_row = self._bucket(len(live_images), device), inverse
            state = {name: [t[live_images] for t in value] for name, value in state.items()}
        for name in ("ids", "live", "tokens", "history", "seen", "seeds"):
            state[name] = getattr(ws, name)[keep]
        state["self_keys"] = [t[keep] for t in ws.self_keys]
        state["self_values"] = [t[keep] for t in ws.self_values]
        state["length"] = ws.length.clone()
        slot_of_row, slots = RowGroups.ranks(image_of_row, images)
        new = self._install(self._bucket(rows, device), images, slots, state, output.shape[0] - 1)
        new.groups.assign(image_of_row, slot_of_row)
        return new


_STEP_STATE = ("live", "tokens", "length", "history", "seen")
