"""The warm start: the classifier fitted on the frozen backbone's pooled features before fine-tuning."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .distributed import Dist, gather_shards_to_main

WARM_START_L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 penalties tried for the warm-start head (sum of squared weights)


def pooled_features(model: torch.nn.Module, loader: DataLoader,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's pooled features (the classifier's input) and the targets, for every image: none, without
    a forward pass, for a process whose share of the films is empty (fewer films than processes), whose rows
    :func:`~.distributed.gather_shards_to_main` leaves out."""
    model.eval()
    feats, ys = [], []
    with torch.inference_mode():
        for x, y in loader:
            x = x.to(device, memory_format=torch.channels_last)
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
            ys.append(y.to(device))
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats).clone(), torch.cat(ys).clone()


def warm_start_head(model: torch.nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                    weights: torch.Tensor | None, device: torch.device, ctx: Dist = Dist()) -> float:
    """Fit the classifier on frozen pooled features (a linear probe) so fine-tuning starts from a sensible head
    instead of pushing random-head gradients into pretrained layers. The L2 strength is the one of
    :data:`WARM_START_L2` with the lowest validation loss: too weak a penalty (measured on the etiology task:
    val loss 0.89 at 1e-4 against 0.54 at 1e-2 to 1e-1) gives an overconfident head that fine-tuning first has to
    undo. Returns the strength chosen.

    Under torchrun (``ctx``) each loader holds this rank's share of the films (:func:`~.distributed.shard`, empty
    where there are fewer films than processes), so the backbone runs once over each film, not once a process: the
    features are joined in the films' order on rank 0, which fits the head on all of them, as one process would,
    and every rank takes rank 0's head."""
    train, val = (gather_shards_to_main(ctx, *(t.cpu().numpy() for t in pooled_features(model, loader, device)))
                  for loader in (train_loader, val_loader))
    head = model.get_classifier()
    fitted = _fit(head, _on(train, device), _on(val, device), weights) if ctx.main else None
    l2, state = ctx.from_main(fitted)
    head.load_state_dict(state)
    return l2


def _on(arrays: tuple[np.ndarray, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Gathered (features, targets) as tensors on ``device``, where the head is fitted."""
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


def _fit(head: torch.nn.Module, train: tuple[torch.Tensor, ...], val: tuple[torch.Tensor, ...],
         weights: torch.Tensor | None) -> tuple[float, dict]:
    """The L2 strength of :data:`WARM_START_L2` whose head has the lowest validation loss, and that head's state (on
    the CPU: sent to the other ranks, whose GPUs are others)."""
    start = {k: v.clone() for k, v in head.state_dict().items()}
    best: tuple[float, float, dict] | None = None
    for l2 in WARM_START_L2:
        head.load_state_dict(start)
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(head(train[0]), train[1], weight=weights) + l2 * head.weight.square().sum()  # noqa: B023
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            val_loss = float(F.cross_entropy(head(val[0]), val[1], weight=weights))
        if best is None or val_loss < best[0]:
            best = (val_loss, l2, {k: v.detach().cpu().clone() for k, v in head.state_dict().items()})
    return best[1], best[2]
