"""Conversion of user data (dicts of columns, NumPy arrays, pandas frames)
into driftd's columnar shape.

Everything here runs in the caller's thread, so it stays linear and cheap:
one pass per column to decide its kind and copy its values. The copy is
deliberate: a caller may reuse or mutate its buffers after ``log()``
returns, while the rows wait in the queue.

NumPy and pandas are optional: they are used when the caller passes their
objects (which implies they are installed) and never imported otherwise.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

NUMERIC = "numeric"
CATEGORICAL = "categorical"

# Mirrors the daemon's rule for model, version and feature names: they
# become metric labels and store keys. Checking here turns a rejection of a
# whole batch (other callers' rows included) into a ValueError at the call.
_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}\Z")


def check_name(what: str, name: str) -> None:
    """Raises ValueError unless name is 1-128 characters of [A-Za-z0-9_.:-]."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{what} {name!r}: must be 1-128 characters of [A-Za-z0-9_.:-]")


class Column(NamedTuple):
    """One converted column: values are floats (NaN = missing) for numeric
    columns and strings ("" = missing) for categorical ones; a list, or a
    float64 ndarray when NumPy produced them."""

    name: str
    role: int
    kind: str
    values: Any


def _np():
    # Only an already-imported NumPy can have produced the caller's objects.
    return sys.modules.get("numpy")


def _is_pandas(obj: Any, cls: str) -> bool:
    t = type(obj)
    return t.__name__ == cls and t.__module__.startswith("pandas")


def _is_missing_marker(x: Any) -> bool:
    # None, pandas.NA and pandas.NaT, recognised without importing pandas.
    return x is None or type(x).__name__ in ("NAType", "NaTType")


def _is_scalar(v: Any) -> bool:
    if v is None or isinstance(v, (str, bytes, numbers.Number)) or _is_missing_marker(v):
        return True
    np = _np()
    return np is not None and (isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0))


def _to_str(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    return str(x)


def _categorical(values: Sequence[Any]) -> List[str]:
    out = []
    for x in values:
        if _is_missing_marker(x) or (isinstance(x, float) and math.isnan(x)):
            out.append("")  # the daemon counts empty categories as missing
        else:
            out.append(_to_str(x))
    return out


def _numeric(values: Sequence[Any]) -> List[float]:
    return [math.nan if _is_missing_marker(x) else float(x) for x in values]


def _is_number(x: Any) -> bool:
    if isinstance(x, numbers.Real):  # int, float, bool, NumPy ints/floats
        return True
    np = _np()
    return np is not None and isinstance(x, np.bool_)


def _convert_generic(name: str, values: Sequence[Any], known: Optional[str]) -> Tuple[str, Any]:
    """A list (or object array) of Python values: numeric when every
    non-missing value is a real number or bool, else categorical."""
    seen_value = False
    numeric = True
    for x in values:
        if _is_missing_marker(x):
            continue
        seen_value = True
        if not _is_number(x):
            numeric = False
            break
    if not seen_value:
        # All missing: nothing tells the kind, so keep the one already used.
        kind = known or NUMERIC
    else:
        kind = NUMERIC if numeric else CATEGORICAL
    return kind, (_numeric(values) if kind == NUMERIC else _categorical(values))


def _convert_ndarray(name: str, arr: Any, known: Optional[str]) -> Tuple[str, Any]:
    np = _np()
    if arr.ndim != 1:
        raise ValueError(f"column {name!r}: expected one value per row (1-D), got shape {arr.shape}")
    k = arr.dtype.kind
    if k in "biuf":
        return NUMERIC, arr.astype(np.float64)  # astype copies: a snapshot
    if k in "US":
        return CATEGORICAL, _categorical(arr.tolist())
    if k == "O":
        return _convert_generic(name, arr.tolist(), known)
    raise ValueError(
        f"column {name!r}: unsupported dtype {arr.dtype}; convert it to numbers or strings first"
    )


def _convert_series(name: str, s: Any, known: Optional[str]) -> Tuple[str, Any]:
    import pandas as pd  # a Series was passed, so pandas is installed

    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    ):
        # Nullable dtypes (Int64, Float64, boolean) carry pd.NA: make it NaN.
        np = _np()
        return NUMERIC, s.to_numpy(dtype=np.float64, na_value=np.nan)
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        return CATEGORICAL, _categorical(s.astype(object).tolist())
    if dtype == object:
        return _convert_generic(name, s.tolist(), known)
    raise ValueError(
        f"column {name!r}: unsupported dtype {dtype}; convert it to numbers or strings first"
    )


def _convert_column(name: str, v: Any, known: Optional[str]) -> Tuple[str, Any]:
    if _is_pandas(v, "Series"):
        return _convert_series(name, v, known)
    np = _np()
    if np is not None and isinstance(v, np.ndarray):
        return _convert_ndarray(name, v, known)
    if isinstance(v, (str, bytes, Mapping)) or not hasattr(v, "__len__"):
        raise TypeError(
            f"column {name!r}: expected a list, tuple, NumPy array or pandas Series of "
            f"values, got {type(v).__name__}"
        )
    if np is not None and hasattr(v, "__array__") and not isinstance(v, (list, tuple)):
        return _convert_ndarray(name, np.asarray(v), known)
    return _convert_generic(name, list(v), known)


def _items(arg: str, data: Any) -> List[Tuple[str, Any]]:
    if _is_pandas(data, "DataFrame"):
        names = [str(c) for c in data.columns]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"{arg}: duplicate column {dup!r}")
        return [(str(c), data[c]) for c in data.columns]
    if isinstance(data, Mapping):
        items = list(data.items())
        for k, _ in items:
            if not isinstance(k, str):
                raise TypeError(f"{arg}: column names must be strings, got {k!r}")
        return items
    raise TypeError(
        f"{arg}: expected a dict of columns or a pandas DataFrame, got {type(data).__name__}"
    )


def convert(
    features: Any,
    predictions: Any,
    input_role: int,
    output_role: int,
    kinds: Dict[str, str],
) -> Tuple[int, List[Column]]:
    """Converts log()/set_reference() arguments into (rows, columns).

    kinds maps column names to the kind they were first sent with; a
    column changing kind raises ValueError, because the daemon would reject
    the whole batch it ends up in. kinds is not modified: the caller records
    the kinds once the call has succeeded.

    A dict whose values are all scalars is one row.
    """
    if features is None and predictions is None:
        raise ValueError("nothing to log: pass features and/or predictions")
    named: List[Tuple[str, int, Any]] = []
    for arg, data, role in (("features", features, input_role), ("predictions", predictions, output_role)):
        if data is not None:
            named.extend((name, role, v) for name, v in _items(arg, data))
    if not named:
        raise ValueError("nothing to log: no columns given")

    scalars = [_is_scalar(v) for _, _, v in named]
    if all(scalars):
        named = [(name, role, [v]) for name, role, v in named]
    elif any(scalars):
        name = named[scalars.index(True)][0]
        raise ValueError(
            f"column {name!r}: a single value, while other columns hold one value per row; "
            "pass a list for every column (or scalars for every column to log one row)"
        )

    columns: List[Column] = []
    seen: Dict[str, int] = {}
    rows: Optional[int] = None
    first = ""
    for name, role, v in named:
        check_name("column", name)
        if name in seen:
            raise ValueError(f"column {name!r}: given twice (a column is a feature or a prediction, not both)")
        seen[name] = role
        known = kinds.get(name)
        kind, values = _convert_column(name, v, known)
        if known is not None and kind != known:
            raise ValueError(
                f"column {name!r}: was sent as {known} before, got {kind} values "
                "(driftd keeps the kind a feature first arrived with)"
            )
        if rows is None:
            rows, first = len(values), name
        elif len(values) != rows:
            raise ValueError(f"column {name!r} has {len(values)} rows, column {first!r} has {rows}")
        columns.append(Column(name, role, kind, values))
    return rows or 0, columns


def to_proto_values(values: Any) -> Union[list, Any]:
    """A list protobuf's repeated fields extend from quickly."""
    return values.tolist() if hasattr(values, "tolist") else values
