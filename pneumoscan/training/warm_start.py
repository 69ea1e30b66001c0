"""The warm start: the classifier fitted on the frozen backbone's pooled features before fine-tuning."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .distributed import Dist, gather_shards_to_main

log = logging.getLogger(__name__)
WARM_START_L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 penalties tried for the warm-start head (sum of squared weights)


def pooled_features(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                    done: Callable[[int], object] = lambda films: None) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's pooled features (the classifier's input) and the targets, for every image: none, without
    a forward pass, for a process whose share of the films is empty (fewer films than processes), whose rows
    :func:`~.distributed.gather_shards_to_main` leaves out. ``done`` is told each batch's films (a progress bar)."""
    model.eval()
    feats, ys = [], []
    with torch.inference_mode():
        for x, y in loader:
            x = x.to(device, memory_format=torch.channels_last)
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
            ys.append(y.to(device))
            done(len(x))
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats).clone(), torch.cat(ys).clone()


def warm_start_head(model: torch.nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                    weights: torch.Tensor | None, device: torch.device, ctx: Dist = Dist(),
                    done: Callable[[int], object] = lambda films: None) -> float:
    """Fit the classifier on frozen pooled features (a linear probe) so fine-tuning starts from a sensible head
    instead of pushing random-head gradients into pretrained layers. The L2 strength is the one of
    :data:`WARM_START_L2` with the lowest validation loss: too weak a penalty (measured on the etiology task:
    val loss 0.89 at 1e-4 against 0.54 at 1e-2 to 1e-1) gives an overconfident head that fine-tuning first has to
    undo. Returns the strength chosen.

    Under torchrun (``ctx``) each loader holds this rank's share of the films (:func:`~.distributed.shard`, empty
    where there are fewer films than processes), so the backbone runs once over each film, not once a process: the
    features are joined in the films' order on rank 0, which fits the head on all of them, as one process would,
    and every rank takes rank 0's head. ``done`` is told each batch's films as their features are computed.

    A penalty whose head has weights or a validation loss that are not finite (LBFGS diverged) is skipped; with
    none left the run is refused, naming the features (fine-tuning would stop at its first step on a non-finite
    loss, blaming the learning rate). So is a run whose best head scores the validation films no better than the
    training films' class frequencies (:func:`_frequencies_loss`): on features of magnitude 1e12 to 1e19 (a diverged
    or badly scaled backbone) every head's validation loss was finite, 1e4 to 1e11 against 0.69, and the least was
    taken, said to be fitted."""
    train, val = (gather_shards_to_main(ctx, *(t.cpu().numpy() for t in pooled_features(model, loader, device, done)))
                  for loader in (train_loader, val_loader))
    head = model.get_classifier()
    fitted = _fit(head, _on(train, device), _on(val, device), weights) if ctx.main else None
    # rank 0's verdict on every rank: one rank refusing alone would leave the others waiting for its head
    l2_state_or_refusal = ctx.from_main(fitted)
    if isinstance(l2_state_or_refusal, str):
        raise ValueError(l2_state_or_refusal)
    l2, state = l2_state_or_refusal
    head.load_state_dict(state)
    return l2


def _on(arrays: tuple[np.ndarray, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Gathered (features, targets) as tensors on ``device``, where the head is fitted."""
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


class _Diverged(Exception):
    """A training loss that is not finite: LBFGS does not come back from one (NaN compares below nothing, so its
    line search only goes on), so that penalty's fit stops there rather than running out its iterations."""


def _frequencies_loss(train_targets: torch.Tensor, val_targets: torch.Tensor, classes: int,
                     weights: torch.Tensor | None) -> float:
    """The validation loss of the head that ignores the features: every film given the training films' class
    frequencies, each class's count times its weight in the loss (balanced class weights: every class alike), the
    constant that minimises the training loss. A head no better has learnt nothing from the features that holds on
    films it was not fitted on; one score for every film is never better."""
    w = torch.ones(classes, device=train_targets.device) if weights is None else weights.to(train_targets.device)
    mass = w * torch.bincount(train_targets, minlength=classes).to(w.dtype)
    logits = torch.log(mass / mass.sum()).expand(len(val_targets), classes)
    return float(F.cross_entropy(logits, val_targets, weight=w))


def _fit(head: torch.nn.Module, train: tuple[torch.Tensor, ...], val: tuple[torch.Tensor, ...],
         weights: torch.Tensor | None) -> tuple[float, dict] | str:
    """The L2 strength of :data:`WARM_START_L2` whose head has the lowest validation loss, and that head's state (on
    the CPU: sent to the other ranks, whose GPUs are others); those whose head or loss is not finite are skipped
    (NaN compares below nothing, so a first NaN loss would be kept). The refusal's reason when none is left, or when
    the best is no better than the training films' class frequencies (:func:`_frequencies_loss`)."""
    start = {k: v.clone() for k, v in head.state_dict().items()}
    best: tuple[float, float, dict] | None = None
    for l2 in WARM_START_L2:
        head.load_state_dict(start)
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(head(train[0]), train[1], weight=weights) + l2 * head.weight.square().sum()  # noqa: B023
            if not torch.isfinite(loss):
                raise _Diverged
            loss.backward()
            return loss

        try:
            opt.step(closure)
            with torch.no_grad():
                val_loss = float(F.cross_entropy(head(val[0]), val[1], weight=weights))
        except _Diverged:
            val_loss = math.nan
        state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        if not (math.isfinite(val_loss) and all(bool(torch.isfinite(v).all()) for v in state.values())):
            log.warning("warm start: the classifier fitted with L2 %g diverged (a loss or weight not finite); "
                        "skipped", l2)
            continue
        if best is None or val_loss < best[0]:
            best = (val_loss, l2, state)
    chance = _frequencies_loss(train[1], val[1], head.weight.shape[0], weights)
    if best is not None and best[0] < chance:
        return best[1], best[2]
    head.load_state_dict(start)
    penalties = ", ".join(f"{l2:g}" for l2 in WARM_START_L2)
    found = (f"fitted no classifier with finite weights and validation loss at any L2 penalty ({penalties})"
             if best is None else
             f"fitted no classifier at any L2 penalty ({penalties}) that scores the validation films better than the "
             f"training films' class frequencies (validation loss {best[0]:.4g} at best, L2 {best[1]:g}, against "
             f"{chance:.4g})")
    return (f"the warm start {found}: the frozen backbone's pooled features are unfit to train on "
            f"({_describe(train[0], val[0])}); check the starting weights that gave them (the model's pretrained "
            "weights, or the bundle of init (--init)), or warm_start false (--set warm_start=false) to fine-tune "
            "from an untrained classifier")


def _describe(*features: torch.Tensor) -> str:
    """What is wrong with the features as a refusal names it: how many are not finite, and the largest magnitude."""
    joined = torch.cat([f.flatten() for f in features])
    finite = torch.isfinite(joined)
    bad = int((~finite).sum())
    largest = float(joined[finite].abs().max()) if bool(finite.any()) else math.nan
    return ", ".join([*([f"{bad} of {joined.numel()} not finite"] if bad else []), f"largest magnitude {largest:.1e}"])
