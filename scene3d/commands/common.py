"""What several commands share: slimming a model with ``--rank``."""

from __future__ import annotations

from scene3d.errors import Scene3dError


def apply_rank(model, rank: int | None, source) -> None:
    """Slimming at test time: ``model`` renders with its first ``rank`` components from now on."""
    if rank is None:
        return
    if not model.caps.slimmable:
        raise Scene3dError(f"{source}: --rank slims rank-ordered (slimmable) representations; this is a {model.name} model")
    if not 1 <= rank <= model.rank:
        raise Scene3dError(f"{source}: --rank {rank} is outside 1..{model.rank} (the rank it was trained to)")
    model.use_rank(rank)
