"""``overlong``: DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13).

With L_max = ``max_completion_length`` and L_cache = ``overlong_buffer``, a completion of L tokens gets

- 0 when L <= L_max - L_cache,
- ((L_max - L_cache) - L) / L_cache when L_max - L_cache < L <= L_max (a linear ramp from 0 down to -1),
- -1 when L > L_max.

It reads the ``completion_lengths`` column (tokens, EOS included) that the trainer passes to every reward.
DAPO pairs it with a +1/-1 accuracy reward: ``rewards: {accuracy: 1.0, overlong: {weight: 1.0, kwargs:
{max_completion_length: 20480, overlong_buffer: 4096}}}``.
"""

from __future__ import annotations

from rewards.registry import register


def overlong_penalty(length: int, max_completion_length: int, overlong_buffer: int) -> float:
    """DAPO Eq. 13 for one completion of ``length`` tokens.

    Example:
        >>> overlong_penalty(90, max_completion_length=100, overlong_buffer=20)
        -0.5
    """
    soft_limit = max_completion_length - overlong_buffer
    if length <= soft_limit:
        return 0.0
    if length <= max_completion_length:
        return (soft_limit - length) / overlong_buffer
    return -1.0


@register("overlong")
def overlong_reward(completions: list[str], completion_lengths: list[int] | None = None,
                    max_completion_length: int | None = None, overlong_buffer: int | None = None,
                    **columns) -> list[float | None]:
    """Soft overlong punishment per completion (0 down to -1), from its length in tokens.

    Args:
        completions: N completion texts (only their count is used).
        completion_lengths: N lengths in tokens; the trainer passes them.
        max_completion_length: L_max, normally the run's ``max_completion_length`` (required kwarg).
        overlong_buffer: L_cache, the ramp width in tokens, 0 < L_cache <= L_max (required kwarg).
        **columns: dataset columns (ignored).

    Raises:
        ValueError: a kwarg is missing or out of range, or no ``completion_lengths`` were passed.

    Example:
        >>> overlong_reward(["a", "b"], completion_lengths=[50, 100], max_completion_length=100, overlong_buffer=20)
        [0.0, -1.0]
    """
    if max_completion_length is None or overlong_buffer is None:
        raise ValueError("overlong needs kwargs max_completion_length and overlong_buffer, e.g. "
                         "{weight: 1.0, kwargs: {max_completion_length: 4096, overlong_buffer: 512}}")
    if not 0 < overlong_buffer <= max_completion_length:
        raise ValueError(f"overlong: need 0 < overlong_buffer <= max_completion_length, got {overlong_buffer} "
                         f"and {max_completion_length}")
    if completion_lengths is None or len(completion_lengths) != len(completions):
        raise ValueError("overlong needs the completion_lengths column (token counts); the grpo-zero trainer "
                         "passes it, other callers must pass completion_lengths=[...]")
    return [overlong_penalty(int(n), max_completion_length, overlong_buffer) for n in completion_lengths]
