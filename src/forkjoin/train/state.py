"""The whole model's parameters as plain CPU tensors, whatever the wrapping (DDP, FSDP2,
torch.compile): for evaluation, export, and comparing runs."""

from __future__ import annotations

from typing import Any

import torch

from .wrapping import fsdp_api, unwrap

__all__ = ["full_state_dict"]


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU. With FSDP every rank must call it (it gathers); every
    rank gets the full dict."""
    inner = unwrap(model)
    _, FSDPModule = fsdp_api()

    if isinstance(inner, FSDPModule):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        sd: dict[str, Any] = get_model_state_dict(
            inner, options=StateDictOptions(full_state_dict=True)
        )
        return {k: v.detach().to("cpu").clone() for k, v in sd.items()}
    return {k: v.detach().to("cpu").clone() for k, v in inner.state_dict().items()}
