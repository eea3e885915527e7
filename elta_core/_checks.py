"""Input checks shared by every public function.

Each check raises ``ValueError`` naming the argument and what was expected. Checks that
need the values (finiteness, sums) read them on the host; pass ``validate=False`` to
the public functions to skip those in a hot loop or under ``torch.compile``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from elta_core.backends import Backend, get_backend

DISTRIBUTION_TOLERANCE = 1e-3
# bf16 keeps 8 bits of mantissa: rounding 10 probabilities can move a row sum by ~1e-2.
HALF_DISTRIBUTION_TOLERANCE = 2e-2


def finite_number(value: Any, name: str, what: str = "a finite number") -> float:
    """``value`` as a finite float (a bool is refused: ``tau1=True`` is a mistake, not 1.0)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {what}, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return number


def positive_number(value: Any, name: str) -> float:
    """``value`` as a float, which must be finite and > 0."""
    number = finite_number(value, name, "a finite number > 0")
    if number <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return number


def non_negative_number(value: Any, name: str) -> float:
    """``value`` as a float, which must be finite and >= 0."""
    number = finite_number(value, name, "a finite number >= 0")
    if number < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return number


def _each(values: Sequence[Any] | float, name: str, check) -> list[float]:
    """``check(value, "name[k]")`` of each value (a single number counts as one); none is refused."""
    values = list(values) if not isinstance(values, (int, float)) else [values]
    if not values:
        raise ValueError(f"{name}: expected at least one value, got an empty sequence")
    return [check(v, f"{name}[{k}]") for k, v in enumerate(values)]


def non_negative_numbers(values: Sequence[Any], name: str) -> list[float]:
    return _each(values, name, non_negative_number)


def positive_numbers(values: Sequence[Any], name: str) -> list[float]:
    return _each(values, name, positive_number)


def probability_thresholds(values: Sequence[Any], name: str) -> list[float]:
    thresholds = positive_numbers(values, name)
    for k, t in enumerate(thresholds):
        if t > 1.0:
            raise ValueError(f"{name}[{k}]: expected a threshold in (0, 1], got {t!r}")
    return thresholds


def tensor(x: Any, name: str) -> tuple[Backend, Any]:
    """The backend of ``x`` and ``x`` itself (lists become NumPy arrays)."""
    try:
        backend = get_backend(x)
    except TypeError as error:
        raise ValueError(f"{name}: {error}") from None
    if backend.name == "numpy":
        import numpy as np

        x = np.asarray(x)
    return backend, x


def finite(backend: Backend, x: Any, name: str, validate: bool = True) -> None:
    if validate and backend.has_values(x) and not backend.all_finite_host(x):
        raise ValueError(f"{name}: expected finite values, found NaN or Inf")


def has_values(backend: Backend, x: Any, name: str, result: str) -> None:
    """``ValueError`` for a tensor without values (torch's ``meta`` device) given to a
    function whose ``result`` depends on the values, not only on the shapes."""
    if not backend.has_values(x):
        raise ValueError(f"{name}: a tensor on the meta device has shapes but no values, and {result} depends on "
                         "the values; pass a tensor on a real device (the meta device works for shape inference of "
                         "the losses, FLSA, TFA, sharpen, temperatures and predicted_scores)")


def float_tensor(backend: Backend, x: Any, name: str, validate: bool = True) -> Any:
    """``x`` as a floating tensor of at least 32 bits, checked finite."""
    try:
        x = backend.compute_dtype_of(x)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    finite(backend, x, name, validate)
    return x


# -- labels: one rule each, one message (the step and the public functions share them) ---

SCALE_SLACK = 0.05  # scores may sit this fraction of the rating range outside the levels' values
Tensor = Any


def distribution_ok(backend, labels: Tensor, sums: Tensor, tolerance: float = DISTRIBUTION_TOLERANCE) -> Tensor:
    """Finite, non-negative rows summing to 1, as one boolean tensor: NaN fails every
    comparison, so two reductions cover all three."""
    return (backend.min(labels) >= 0) & (backend.max(backend.abs(sums - 1)) <= tolerance)


def scale_slack(values: tuple[float, ...]) -> float:
    return SCALE_SLACK * (values[-1] - values[0])


def scale_ok(backend, scores: Tensor, values: tuple[float, ...]) -> Tensor:
    """Scores within the rating values' range (plus the slack), as one boolean tensor."""
    slack = scale_slack(values)
    return (backend.min(scores) >= values[0] - slack) & (backend.max(scores) <= values[-1] + slack)


def require(backend, x: Tensor, condition: Callable[[], Tensor], passes: Callable[[], bool], message: str,
             explain: Callable[[], str | None]) -> None:
    """``ValueError`` unless the labels or outputs ``x`` pass a check. On an accelerator
    ``condition()`` (a boolean scalar tensor) is scheduled without a host synchronisation
    and fails at the next one with ``message``. On the host ``passes()`` reads the fewest
    values it can and, only if it fails, ``explain()`` finds the precise message (or
    None: nothing is wrong)."""
    if backend.defers(x):
        backend.check_async(condition(), message)
        return
    if passes():
        return
    reason = explain()
    if reason is not None:
        raise ValueError(reason)


def first_failure(*checks: tuple[Callable[[], bool], Callable[[], str]]) -> str | None:
    """The message of the first check that fails (each is ``(passes, message)``)."""
    for passes, message in checks:
        if not passes():
            return message()
    return None


def check_finite_labels(backend, labels: Tensor, name: str) -> None:
    message = f"{name}: expected finite labels, found NaN or Inf"
    require(backend, labels, lambda: backend.all(backend.isfinite(labels)), lambda: backend.all_finite_host(labels),
             message, lambda: message)


def check_distribution(backend, labels: Tensor, name: str, tolerance: float = DISTRIBUTION_TOLERANCE) -> None:
    """The one rule for score distributions (labels, predicted probabilities): finite,
    non-negative rows that sum to 1 within ``tolerance``; deferred on an accelerator."""
    sums = backend.sum(labels, axis=1)

    def sums_found() -> str:
        low, high = backend.min_host(sums), backend.max_host(sums)
        hint = (" They look like raw vote counts: normalise them with "
                "elta_core.losses.distribution_from_counts.") if high > 1.5 else ""
        return (f"{name}: expected score distributions whose rows sum to 1 (tolerance {tolerance:g}), found row "
                f"sums in [{low:.4g}, {high:.4g}].{hint}")

    require(backend, labels, lambda: distribution_ok(backend, labels, sums),
             lambda: (abs(backend.min_host(sums) - 1) <= tolerance and abs(backend.max_host(sums) - 1) <= tolerance
                      and backend.min_host(labels) >= 0),
             f"{name}: expected finite score distributions (non-negative, rows summing to 1)",
             lambda: first_failure(
                 (lambda: backend.all_finite_host(labels), lambda: f"{name}: expected finite labels, found NaN or Inf"),
                 (lambda: backend.min_host(labels) >= 0, lambda: f"{name}: expected non-negative score distributions "
                                                                 "(rows summing to 1), found a negative value"),
                 (lambda: False, sums_found)))


def check_scale(backend, scores: Tensor, values: tuple[float, ...], name: str) -> None:
    low, high = values[0], values[-1]
    slack = scale_slack(values)
    scale = (f"{name}: expected scores on the rating scale of bin_values ({low:g}..{high:g}); rescale the labels, or "
             "give bin_values (and score_scale, label units per point of a 1..10 scale) that match them")
    require(backend, scores, lambda: scale_ok(backend, scores, values),
             lambda: backend.min_host(scores) >= low - slack and backend.max_host(scores) <= high + slack, scale,
             lambda: first_failure(
                 (lambda: backend.all_finite_host(scores), lambda: f"{name}: expected finite labels, found NaN or Inf"),
                 (lambda: False, lambda: f"{scale}; found {backend.min_host(scores):.4g}..{backend.max_host(scores):.4g}")))



def rank(backend: Backend, x: Any, name: str, ranks: Sequence[int], what: str) -> tuple[int, ...]:
    shape = backend.shape(x)
    if len(shape) not in ranks:
        raise ValueError(f"{name}: expected {what}, got shape {shape}")
    return shape


def bin_values_tuple(bin_values: Any, name: str = "bin_values") -> tuple[float, ...]:
    """``bin_values`` (a sequence, array or tensor of rating values) as a tuple of finite
    floats: the one normaliser of the rating values, for the config and the functions."""
    import numpy as np

    try:
        try:
            array = get_backend(bin_values).to_numpy(bin_values)
        except TypeError:  # a range, a generator, ...
            array = np.asarray(list(bin_values), dtype=float)
        values = tuple(float(v) for v in np.asarray(array).reshape(-1))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a sequence of numbers, got {bin_values!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: expected finite values, found NaN or Inf")
    return values


def bin_values_for(
    backend: Backend, bin_values: Any, num_bins: int, like: Any, name: str = "bin_values"
) -> Any:
    """``bin_values`` (default 1..C) as a tensor of the dtype and device of ``like``."""
    if bin_values is None:
        return backend.constant([float(k) for k in range(1, num_bins + 1)], like)
    values = bin_values_tuple(bin_values, name)
    if len(values) != num_bins:
        raise ValueError(
            f"{name}: expected {num_bins} values (one per level of the distribution), got {len(values)}"
        )
    return backend.constant(list(values), like)


def distribution(
    backend: Backend, x: Any, name: str, validate: bool = True, tolerance: float | None = None
) -> Any:
    """Check a (N, C) matrix of PMFs: finite, non-negative, rows summing to 1."""
    rank(backend, x, name, (2,), "a 2-D array (N, C) of score distributions")
    if tolerance is None:
        half = any(kind in str(getattr(x, "dtype", "")) for kind in ("float16", "bfloat16"))
        tolerance = HALF_DISTRIBUTION_TOLERANCE if half else DISTRIBUTION_TOLERANCE
    x = float_tensor(backend, x, name, validate)
    if validate and backend.shape(x)[0] > 0:
        check_distribution(backend, x, name, tolerance)
    return x


def scores(
    backend: Backend,
    labels: Any,
    name: str,
    bin_values: Any = None,
    validate: bool = True,
) -> Any:
    """Scores (N,) from scores (N,), (N, 1) or distributions (N, C) with C > 1."""
    shape = rank(backend, labels, name, (1, 2), "scores (N,) or (N, 1), or distributions (N, C)")
    if len(shape) == 2 and shape[1] > 1:
        dist = distribution(backend, labels, name, validate)
        values = bin_values_for(backend, bin_values, shape[1], dist)
        return backend.matmul(dist, values)
    labels = float_tensor(backend, labels, name, validate)
    return backend.reshape(labels, (shape[0],))


def scalar_scores(backend: Backend, x: Any, name: str, validate: bool = True) -> Any:
    """Scalar scores of shape (N,) or (N, 1), returned as (N,)."""
    shape = rank(backend, x, name, (1, 2), "scalar scores of shape (N,) or (N, 1)")
    if len(shape) == 2 and shape[1] != 1:
        raise ValueError(f"{name}: expected scalar scores of shape (N,) or (N, 1), got shape {shape}")
    x = float_tensor(backend, x, name, validate)
    return backend.reshape(x, (shape[0],))


def same_length(name_a: str, length_a: int, name_b: str, length_b: int) -> None:
    if length_a != length_b:
        raise ValueError(
            f"{name_b}: expected {length_a} rows to match {name_a}, got {length_b}"
        )
