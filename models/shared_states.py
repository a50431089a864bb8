"""Cross-attention over repeated image states, with keys and values projected once per image.

When several texts attend to the same image (K captions of one image, or the web text and
the captions scored against it), the BLIP text model's cross-attention projects that
image's ~577 vision states to keys and values once per text: at ViT-B size about 16 GFLOP
per text, a seventh of a vision pass. Inside a :class:`SharedCrossAttention` context, the
key and value projections of a tensor made by :meth:`SharedCrossAttention.repeat` run once
on the distinct images, are kept for the context's lifetime, and are gathered per text.
The model's weights and modules stay as they are (temporary hooks); any other input goes
through the projections unchanged, so results never depend on the shortcut being taken.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch

_PROJECTIONS = ("crossattention.self.key", "crossattention.self.value")


class SharedCrossAttention:
    """Context over one batch of image states ``images x tokens x dim``."""

    def __init__(self, text_model: torch.nn.Module, states: torch.Tensor) -> None:
        self.states = states
        self._modules = [
            module for name, module in text_model.named_modules() if name.endswith(_PROJECTIONS)
        ]
        self._handles: list[Any] = []
        self._projected: dict[torch.nn.Module, torch.Tensor] = {}
        self._pending: set[torch.nn.Module] = set()
        self._repeated: torch.Tensor | None = None
        self._owner: torch.Tensor | None = None

    def repeat(self, owner: torch.Tensor) -> torch.Tensor:
        """``states[owner]``, to pass as ``encoder_hidden_states``; ``owner[i]`` is row i's image."""
        self._owner = owner
        self._repeated = self.states[owner]
        return self._repeated

    def __enter__(self) -> SharedCrossAttention:
        for module in self._modules:
            self._handles.append(module.register_forward_pre_hook(self._before))
            self._handles.append(module.register_forward_hook(self._after))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        _trace: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._projected.clear()
        self._repeated = self._owner = None

    def _before(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self._repeated is None or not args or args[0] is not self._repeated:
            return None
        self._pending.add(module)
        if module in self._projected:
            return (args[0][:0], *args[1:])  # already projected: skip the work
        return (self.states, *args[1:])

    def _after(self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
        if module not in self._pending:
            return None
        self._pending.discard(module)
        projected = self._projected.setdefault(module, output)
        return projected[self._owner]
