"""Robust gradient aggregators (DESIGN §4): median of 3 and the winsorized mean, with their
compiled fast paths. The gradient transforms built on them (SGD / winsorized / M3 / RM3 / RA3,
filling ``p.grad`` for any torch optimizer) are in cglib.transforms.

Winsorized mean without sorting. Per coordinate only the (c+1)-th smallest and (c+1)-th
largest of the B values matter, so we stream through the rows keeping a running sorted
top-(c+1) and bottom-(c+1) list per coordinate (insertion by an elementwise max/min cascade),
then clip and average. Linear weights never materialize their (B, out, in) per-example
gradients: rows are formed on the fly as outer products ``delta_b^T a_b`` (see cglib.pergrad).

Compilation (``torch.compile``, CPU by default). The streaming loop is many small elementwise
ops; eagerly each op allocates and re-reads the running lists, compiled the rows of one chunk
(``_ROWS`` = 10) fuse into one C++/OpenMP loop over the coordinates that updates the lists in
place (an order of magnitude faster than eager; the README has the figures). RM3/M3 compile
their median into one fused pass per tensor, one call for all parameters, on models of at least
``MEDIANS_COMPILE_MIN`` elements; on smaller ones three eager passes are as fast and start at
once (results are bit-identical either way).
One compiled call per chunk serves every parameter of the model (``winsorized_means``), and
one more call finishes every clipped sum: a call's own cost (dynamo guards, dispatch) is paid
per chunk, not per chunk and parameter. Compilation is lazy (at the first call), per model
structure (the list of sources) x clip level x dtype, and dynamic in the sizes.

How the compile cost is paid once: inductor keeps its FX-graph cache and compiled kernels on
disk in ``TORCHINDUCTOR_CACHE_DIR`` (default ``/tmp/torchinductor_$USER``), so a cold compile
is paid by the first process and later ones re-trace and hit the cache. Point
``TORCHINDUCTOR_CACHE_DIR`` at a persistent directory shared by all runs of a study, e.g.
``export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor`` (concurrent jobs may share it), so only
the first job of a study pays the cold compile. ``CGLIB_COMPILE=auto`` (default: compile for
CPU tensors only, medians only above the size floor), ``1`` (also CUDA, every size) or ``0`` (always eager), or call ``set_compile``. If
compilation fails (no C++ compiler, unsupported platform) we warn once and continue eagerly;
the winsorized results of the two paths agree up to float rounding of the final sum.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor


def median_of_3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Elementwise median: clamp c into [min(a, b), max(a, b)]. Branch-free and exact (returns
    one of the inputs, unlike a + b + c - min - max, which rounds)."""
    return torch.clamp(c, torch.minimum(a, b), torch.maximum(a, b))


def _medians_(a: list[Tensor], b: list[Tensor], c: list[Tensor],
              scratch: list[Tensor] | None = None) -> list[Tensor]:
    """median_of_3(a[i], b[i], c[i]) written into b[i] (destroyed) for every i; returns b.

    The transforms' hot path, over all parameters of a model at once. Its cost is memory
    traffic: compiled it is one call holding one fused loop per tensor (read a, b, c, write b).
    One call for the whole list, not one per parameter, because a compiled call's own cost
    (guards, dispatch) is that of a pass over a megabyte or so, so per-parameter calls would
    cost a bias-sized model more than its traffic. Eagerly: three passes per tensor
    (max into scratch, min into b, clamp into b). Both are exact, so they agree bit for bit."""
    with torch.no_grad():
        if _compile_medians(b):
            _run(_medians_into, True, a, b, c)
            return b
        for i, (x, y, z) in enumerate(zip(a, b, c)):
            hi = torch.maximum(x, y) if scratch is None else torch.maximum(x, y, out=scratch[i])
            torch.minimum(x, y, out=y)
            torch.clamp(z, y, hi, out=y)
        return b


# Below this many elements (a 784-512-10 MLP is 0.4M) the three eager passes stay in cache and
# are as fast as the fused one, so "auto" does not pay the compiled call's start-up (loading
# the cached kernel) or its per-call guards; `make bench` measures the wide case.
MEDIANS_COMPILE_MIN = 500_000


def _compile_medians(tensors: list[Tensor]) -> bool:
    if not tensors or not _want_compile(tensors[0].device):
        return False
    return str(_compile_mode).lower() == "1" or sum(t.numel() for t in tensors) >= MEDIANS_COMPILE_MIN


def _medians_into(a: list[Tensor], b: list[Tensor], c: list[Tensor]) -> None:
    for x, y, z in zip(a, b, c):
        y.copy_(median_of_3(x, y, z))


# ---------------------------------------------------------------- winsorized mean ------------
_ROWS = 10  # rows fused per compiled call: more = fewer calls but a longer first compile


def winsorized_mean(g: Tensor, c) -> Tensor:
    """Winsorized mean over dim 0 of ``g`` (B, ...): per coordinate, clip every value to
    [(c+1)-th smallest, (c+1)-th largest] across the batch, then average. c = 0 is the mean;
    c = (lo, hi) clips lo values from below and hi from above (see ``percentile_counts``)."""
    B, counts = _check_clip(c, g.shape[0] if g.dim() else 0)
    if not g.is_floating_point():
        raise ValueError(f"winsorized_mean needs a floating-point tensor, got {g.dtype}")
    if counts == (0, 0):
        return g.mean(0)
    return winsorized_means([("dense", (g.reshape(B, -1),))], c)[0].reshape(g.shape[1:])


def winsorized_outer_mean(delta: Tensor, act: Tensor, c) -> Tensor:
    """``winsorized_mean(delta[:, :, None] * act[:, None, :], c)`` without forming the
    (B, out, in) tensor: the per-example gradients of a Linear weight in factored form."""
    B, counts = _check_clip(c, delta.shape[0])
    if counts == (0, 0):
        return delta.t() @ act / B
    return winsorized_means([("outer", (delta, act))], c)[0]


def winsorized_means(sources: list[tuple[str, tuple[Tensor, ...]]], c) -> list[Tensor]:
    """Winsorized means of several sources of B rows each, in one stream: ("dense", (g,)) with
    g of shape (B, n), or ("outer", (delta, act)) for the rows delta_b^T act_b. All sources
    share B, dtype and device. One compiled call per chunk of rows serves them all: a call's
    own cost (guards, dispatch) is paid per chunk, not per chunk and parameter."""
    B, counts = _check_clip(c, sources[0][1][0].shape[0])
    kinds, srcs, shapes = _layout(sources)
    if any(s[0].shape[0] != B for s in srcs):
        raise ValueError("winsorized_means: every source needs the same number of rows")
    if counts == (0, 0):
        return [s[0].mean(0) if k == "dense" else s[0].t() @ s[1] / B for k, s in zip(kinds, srcs)]
    with torch.no_grad():
        return _stream(kinds, srcs, shapes, counts)


def _layout(sources):
    """(kinds, sources' tensors, the shape of one row's values) of ``winsorized_means``' sources."""
    kinds = tuple(kind for kind, _ in sources)
    srcs = [tuple(src) for _, src in sources]
    shapes = [(s[0].shape[1],) if k == "dense" else (s[0].shape[1], s[1].shape[1])
              for k, s in zip(kinds, srcs)]
    return kinds, srcs, shapes


READINGS = ("order_statistic", "percentile")


def percentile_counts(c: int, B: int) -> tuple[int, int]:
    """How many of B values the CG reference code clips below and above at level c percent:
    it clips at ``np.percentile(t, [c, 100 - c], interpolation="nearest")``
    (google-research coherent_gradients/iclr_2020_paper/utils.py, np_winsorize), i.e. at the
    sorted values of index round((B-1) c/100) and round((B-1) (100-c)/100), ties to the even
    index as numpy does. At B = 100 this is (c, c), the order-statistic reading; at B = 20,
    c = 2 it is (0, 0): no clipping."""
    if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 50:
        raise ValueError(f"percentile winsorization level must be an integer 0 <= c <= 50, got {c!r}")
    if B < 1:
        raise ValueError(f"percentile winsorization needs a batch, got B={B}")

    def nearest(q: float) -> int:  # numpy's "nearest": round half to even
        virtual = (B - 1) * (q / 100)
        return int(round(virtual))
    return nearest(c), (B - 1) - nearest(100 - c)


def clip_counts(c: int, B: int, reading: str = "order_statistic") -> tuple[int, int]:
    """(values clipped below, values clipped above) for winsorization level c at batch B."""
    if reading == "percentile":
        return percentile_counts(c, B)
    if reading != "order_statistic":
        raise ValueError(f"winsorization reading must be one of {READINGS}, got {reading!r}")
    _check_clip(c, B)
    return c, c


def _check_clip(c, B: int) -> tuple[int, tuple[int, int]]:
    """B and (lo, hi) from c = an integer (lo = hi = c) or a pair; lo + hi < B."""
    pair = tuple(c) if isinstance(c, (tuple, list)) else (c, c)
    if (len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in pair)
            or sum(pair) >= B):
        raise ValueError(f"winsorization level c must be an integer with 0 <= c < B/2 (or a pair "
                         f"lo, hi with lo + hi < B); got c={c!r} for batch size B={B}")
    return B, pair


def _rows(kind: str, src: tuple[Tensor, ...]) -> list[Tensor]:
    if kind == "dense":
        return [src[0][b] for b in range(src[0].shape[0])]
    delta, act = src
    return [delta[b].unsqueeze(1) * act[b].unsqueeze(0) for b in range(delta.shape[0])]


def _update(kinds, tops, bots, srcs):
    """Insert a chunk of rows of every source into its running lists top (descending) and bot
    (ascending), in place; the two may differ in length (percentile reading). In place, so a
    call allocates nothing: fresh lists per call meant fresh pages to fault in every chunk."""
    for kind, top, bot, src in zip(kinds, tops, bots, srcs):
        new_top, new_bot = list(top), list(bot)
        for x in _rows(kind, src):
            y = x
            for j in range(len(new_top) - 1):  # bubble x down the top list
                new_top[j], x = torch.maximum(new_top[j], x), torch.minimum(new_top[j], x)
            new_top[-1] = torch.maximum(new_top[-1], x)
            for j in range(len(new_bot) - 1):  # and y down the bottom list
                new_bot[j], y = torch.minimum(new_bot[j], y), torch.maximum(new_bot[j], y)
            new_bot[-1] = torch.minimum(new_bot[-1], y)
        for t, new in zip(top + bot, new_top + new_bot):
            t.copy_(new)


def _clipped_sums(kinds, tops, bots, srcs, compiled: bool):
    """Sum over the B rows of clamp(x, bot[-1], top[-1]) without a second pass over the rows:
    clamping replaces exactly the hi values above the (hi+1)-th largest (top[:-1]) by it and the
    lo values below the (lo+1)-th smallest by that, whatever the ties, as lo + hi < B. So the
    clipped sum is the plain sum (one matmul for an outer source), minus those values, plus
    their replacements. In float64: the plain sum holds the outliers that clipping removes, and
    in float32 their rounding error (eps x the largest value) would outweigh a small result.
    One compiled call for every source (a call's own cost is paid once, not per source)."""
    totals = []
    for kind, src in zip(kinds, srcs):
        wide = [t.double() for t in src]
        totals.append(wide[0].sum(0) if kind == "dense" else wide[0].t() @ wide[1])
    return [t.to(src[0].dtype) for t, src in
            zip(_run(_replace_clipped, compiled, totals, tops, bots), srcs)]


def _replace_clipped(totals, tops, bots):
    out = []
    for total, top, bot in zip(totals, tops, bots):
        for t in top[:-1]:
            total = total - t.double()
        for b in bot[:-1]:
            total = total - b.double()
        out.append(total + (len(top) - 1) * top[-1].double() + (len(bot) - 1) * bot[-1].double())
    return out


def _stream(kinds, srcs, shapes, counts):
    compiled = _want_compile(srcs[0][0].device)
    tops, bots = _order_statistics(kinds, srcs, shapes, counts, compiled)
    B = srcs[0][0].shape[0]
    return [acc.div_(B) for acc in _clipped_sums(kinds, tops, bots, srcs, compiled)]


def _order_statistics(kinds, srcs, shapes, counts, compiled: bool):
    """Per source and coordinate, the hi+1 largest values of the B rows (descending) and the
    lo+1 smallest (ascending), streamed in chunks of ``_ROWS`` rows."""
    B, ref = srcs[0][0].shape[0], srcs[0][0]
    lo, hi = counts
    # Finite sentinels rather than +-inf: safe under fast-math compiler flags.
    fin = torch.finfo(ref.dtype)
    tops = [tuple(ref.new_full(shape, fin.min) for _ in range(hi + 1)) for shape in shapes]
    bots = [tuple(ref.new_full(shape, fin.max) for _ in range(lo + 1)) for shape in shapes]
    # One compiled call per chunk of rows of every source. A short last chunk (B=99: 9 rows) is
    # compiled too, a second graph paid once per cache: eagerly it cost a third of the step.
    for i in range(0, B, _ROWS):
        chunk = [tuple(t[i:i + _ROWS] for t in src) for src in srcs]
        _run(_update, compiled, kinds, tops, bots, chunk)
    return tops, bots


_compile_mode = os.environ.get("CGLIB_COMPILE", "auto")
_compiled: dict = {}
_compile_failed = False


def set_compile(mode: str | bool) -> None:
    """"auto" (compile for CPU tensors), True/"1" (any device), False/"0" (always eager)."""
    global _compile_mode, _compile_failed
    _compile_mode, _compile_failed = {True: "1", False: "0"}.get(mode, mode), False


def _want_compile(device: torch.device) -> bool:
    mode = str(_compile_mode).lower()
    if mode not in ("auto", "1", "0"):
        raise ValueError(f"CGLIB_COMPILE must be auto, 1 or 0, got {_compile_mode!r}")
    return not _compile_failed and (mode == "1" or (mode == "auto" and device.type == "cpu"))


def _run(fn, compiled: bool, *args):
    global _compile_failed
    if compiled and not _compile_failed:
        try:
            if fn not in _compiled:
                _compiled[fn] = torch.compile(fn, dynamic=True)
            return _compiled[fn](*args)
        except Exception as e:  # noqa: BLE001 - any compiler trouble: eager is always correct
            _compile_failed = True
            warnings.warn(f"cglib.robust: torch.compile failed ({type(e).__name__}: {e}); "
                          "using the eager path from now on", RuntimeWarning, stacklevel=2)
    return fn(*args)
