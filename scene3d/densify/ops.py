"""The one place where the number of Gaussians changes: parameters and optimiser state together.

Every strategy edits the set of Gaussians through :func:`edit_gaussians` (or the helpers built on
it), so Adam's moments always stay aligned row by row with the parameters they belong to.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

ParamFn = Callable[[str, Tensor], Tensor]
StateFn = Callable[[str, Tensor], Tensor]


@torch.no_grad()
def edit_gaussians(params: nn.ParameterDict, optimizers: dict[str, torch.optim.Optimizer], param_fn: ParamFn, state_fn: StateFn) -> None:
    """Replaces every parameter by ``param_fn(name, old)`` and every per-row optimiser tensor by
    ``state_fn(key, old)`` (e.g. Adam's ``exp_avg``); scalar state such as ``step`` is kept."""
    for name in list(params.keys()):
        old = params[name]
        new = nn.Parameter(param_fn(name, old.data), requires_grad=old.requires_grad)
        opt = optimizers.get(name)
        if opt is not None:
            for group in opt.param_groups:
                if not any(p is old for p in group["params"]):
                    continue
                state = opt.state.pop(old, {})
                for key, value in list(state.items()):
                    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == old.shape[0]:
                        state[key] = state_fn(key, value)
                group["params"] = [new if p is old else p for p in group["params"]]
                opt.state[new] = state
        params[name] = new


def duplicate(params: nn.ParameterDict, optimizers: dict, mask: Tensor) -> None:
    """Appends a copy of the Gaussians selected by ``mask`` [N] (new optimiser moments are zero)."""
    idx = mask.nonzero().squeeze(-1)
    edit_gaussians(
        params,
        optimizers,
        lambda _, p: torch.cat([p, p[idx]]),
        lambda _, s: torch.cat([s, torch.zeros_like(s[idx])]),
    )


def remove(params: nn.ParameterDict, optimizers: dict, mask: Tensor) -> None:
    """Deletes the Gaussians selected by ``mask`` [N]."""
    keep = (~mask).nonzero().squeeze(-1)
    edit_gaussians(params, optimizers, lambda _, p: p[keep], lambda _, s: s[keep])


def append(params: nn.ParameterDict, optimizers: dict, new_rows: dict[str, Tensor], replace_idx: Tensor | None = None) -> None:
    """Optionally overwrites rows ``replace_idx`` and appends ``new_rows`` (one tensor per parameter).

    With ``replace_idx`` the first ``len(replace_idx)`` rows of each ``new_rows`` tensor replace those
    Gaussians in place (their moments are reset) and the rest are appended.
    """
    k = 0 if replace_idx is None else len(replace_idx)

    def param_fn(name: str, p: Tensor) -> Tensor:
        rows = new_rows[name].to(p)
        if k:
            p = p.clone()
            p[replace_idx] = rows[:k]
        return torch.cat([p, rows[k:]])

    def state_fn(_: str, s: Tensor) -> Tensor:
        if k:
            s = s.clone()
            s[replace_idx] = 0
        n_new = len(next(iter(new_rows.values()))) - k
        return torch.cat([s, s.new_zeros((n_new, *s.shape[1:]))])

    edit_gaussians(params, optimizers, param_fn, state_fn)


def set_rows(params: nn.ParameterDict, optimizers: dict, name: str, idx: Tensor, values: Tensor, reset_state: bool = True) -> None:
    """Overwrites rows ``idx`` of one parameter (e.g. an opacity reset), resetting their moments."""

    def param_fn(n: str, p: Tensor) -> Tensor:
        if n != name:
            return p
        p = p.clone()
        p[idx] = values.to(p)
        return p

    def state_fn(_: str, s: Tensor) -> Tensor:
        if not reset_state:
            return s
        s = s.clone()
        s[idx] = 0
        return s

    single = nn.ParameterDict({name: params[name]})
    edit_gaussians(single, {name: optimizers[name]} if name in optimizers else {}, param_fn, state_fn)
    params[name] = single[name]
