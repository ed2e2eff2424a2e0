"""Named random streams that give the same numbers on NumPy and CuPy.

Every random number scratchvae draws comes from a :class:`Stream`: Philox4x32-10 (see
``philox.py``) under a key fixed by ``(seed, stream_id)``, with a 64-bit *draw counter* ``d``.

Counter layout (fixed; changing it changes every stream)
--------------------------------------------------------
* key: ``k0 = seed & 0xFFFFFFFF``, ``k1 = ((seed >> 32) ^ (stream_id * 0x9E3779B9)) & 0xFFFFFFFF``.
  For seeds below 2**32 the keys of different ``(seed, stream_id)`` are all distinct (0x9E3779B9
  is odd, so ``stream_id -> k1`` is one-to-one mod 2**32).
* a draw of ``n`` values is the Philox blocks ``j = 0 .. B-1`` with counter words
  ``(j & 0xFFFFFFFF, j >> 32, d & 0xFFFFFFFF, d >> 32)``, then ``d += 1`` (mod 2**64): every
  draw, empty ones too. Blocks are read in order, words within a block in order:

  ============  ===========  ====================================================
  draw          per block    value i comes from
  ============  ===========  ====================================================
  ``uint32``    4            word ``i % 4`` of block ``i // 4``
  uniform f32   4            ``uniform24(word i % 4 of block i // 4)``
  uniform f64   2            ``uniform53`` of words (0, 1) or (2, 3) of block ``i // 2``
  normal        2            Box-Muller ``n1`` (i even) or ``n2`` (i odd) of block ``i // 2``
  ============  ===========  ====================================================

  A draw's result so depends only on (seed, stream id, d, n, kind), never on how a GPU launch
  is gridded, and the same seed gives the same stream on every backend (see ``philox.py`` for
  the transforms, and for why normals too are bit-identical).

A draw's **rows**: ``stream.rows(start, stop, total)`` is a view of the stream whose draws fill
only rows [start, stop) of what the whole draw would be. An ``out`` of shape (G·m, …, w), m =
stop − start, w its last axis, receives for each of its G blocks of m rows the rows [start,
stop) of the corresponding block of ``total`` rows of the draw (G·total, …, w): value for value
the numbers the whole draw puts there, whatever the alignment (a row may start inside a block:
a Box–Muller pair's sine, a float32 uniform's third word). It is still one draw (d += 1). So a
rank holding rows [start, stop) of a batch draws its rows' binarisation, corruption noise and
ε, and the importance-weighted bound's (K, B, L) ε as K row ranges, exactly as one process
drawing the whole batch does.

Arrays fill in C order. The CuPy stream keeps ``d`` on the device as ``uint32[2] = (d_lo, d_hi)``;
each draw is one generating kernel that reads ``d`` from device memory and one one-thread kernel
that increments it, so a captured-and-replayed CUDA graph advances the stream with no host
involvement. Use ``draw_*_into(out)`` inside a capture: with ``out`` given nothing is allocated
and nothing synchronises. (The first draw of each kind compiles a kernel: warm up eagerly.)
"""

import inspect

import numpy

from scratchvae.errors import BackendError, InputError

from . import backend_of
from .philox import (PHILOX_W0, box_muller, cuda_kernel, key_schedule, philox_rows, uniform24,
                     uniform53)

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_THREADS = 256
_MAX_GRID = 4096  # grid-stride loops cover the rest; results do not depend on this
_WORKSPACE_BLOCKS = 1 << 16  # NumPy streams keep scratch for draws up to this many blocks (7 MiB)
_WORKSPACE_SIZES = 4         # ... for this many draw sizes (a step draws ε and corruption noise)


def derive_key(seed, stream_id):
    """The Philox key ``(k0, k1)`` of stream ``stream_id`` under ``seed`` (Python ints)."""
    seed = _check_int("seed", seed, 2**63)
    stream_id = _check_int("stream_id", stream_id, 2**32)
    return seed & _MASK32, ((seed >> 32) ^ (stream_id * PHILOX_W0)) & _MASK32


class Stream:
    """One counter-based stream: Philox4x32-10 under the key of ``(seed, stream_id)``.

    ``seed``: int, 0 <= seed < 2**63; ``stream_id``: int, 0 <= stream_id < 2**32; ``xp``: the
    ``numpy`` or ``cupy`` module, where the arrays it returns live (``permutation`` and
    ``state`` always return NumPy arrays).
    """

    def __init__(self, seed, stream_id, xp=numpy):
        self.key = derive_key(seed, stream_id)
        self._round_keys = key_schedule(numpy.array(self.key, dtype=numpy.uint64).reshape(2, 1))
        self.seed = int(seed)
        self.stream_id = int(stream_id)
        self.xp = xp
        if not inspect.ismodule(xp):
            raise BackendError(f"xp must be the numpy or cupy module, got {xp!r}")
        self._backend = backend_of(xp)
        self._cupy = self._backend.name == "cupy"
        if self._cupy:
            self._d = xp.zeros(2, dtype=xp.uint32)  # (d_lo, d_hi), on the current device
        else:
            self._d = 0
            self._ws = {}

    def __repr__(self):
        return (f"Stream(seed={self.seed}, stream_id={self.stream_id}, "
                f"xp={self.xp.__name__})")

    # -- draws -------------------------------------------------------------------------------
    def uint32(self, n):
        """The next draw's ``n`` raw uint32 words, an ``xp`` array of shape (n,)."""
        n = _check_int("n", n, 2**62)
        if self._cupy:
            out = self.xp.empty(n, dtype=self.xp.uint32)
            self._launch("philox_uint32", out, n, 4)
            cuda_kernel("philox_advance")((1,), (1,), (self._d,))
            return out
        return _words(*self._host_blocks(-(-n // 4), self._advance())).reshape(-1)[:n]

    def uniform(self, shape, dtype, out=None):
        """Uniforms strictly inside (0, 1), an ``xp`` array of ``shape`` and ``dtype``.

        dtype: float32 (23 random bits, ``uniform24``) or float64 (52 bits, ``uniform53``).
        With ``out`` (C-contiguous, same shape and dtype) the values are written there.
        """
        return self.draw_uniform_into(self._out_for(shape, dtype, out))

    def normal(self, shape, dtype, out=None):
        """Standard normals (Box-Muller in float64, then rounded to ``dtype``); see ``uniform``."""
        return self.draw_normal_into(self._out_for(shape, dtype, out))

    def draw_uniform_into(self, out, rows=None):
        """Fill ``out`` (float32/float64, C-contiguous, on this stream's backend) with uniforms.

        ``rows``: (start, stop, total), only those rows of the draw (see :meth:`rows`).
        On CuPy: kernel launches, no allocation, no host sync; safe in stream capture.
        """
        f32 = self._check_out(out).dtype == _FLOATS[0]
        return self._draw(out, rows, "philox_uniform_f32" if f32 else "philox_uniform_f64", 4 if f32 else 2,
                          "philox_uniform", self._host_uniform)

    def draw_normal_into(self, out, rows=None):
        """Fill ``out`` (float32/float64, C-contiguous, on this stream's backend) with normals.

        ``rows``: (start, stop, total), only those rows of the draw (see :meth:`rows`).
        On CuPy: kernel launches, no allocation, no host sync; safe in stream capture.
        """
        f32 = self._check_out(out).dtype == _FLOATS[0]
        return self._draw(out, rows, "philox_normal_f32" if f32 else "philox_normal_f64", 2,
                          "philox_normal", self._host_normal)

    def rows(self, start, stop, total):
        """A view of this stream whose draws give rows [start, stop) of ``total`` (module docstring)."""
        return StreamRows(self, start, stop, total)

    def permutation(self, n):
        """A random permutation of ``range(n)``: a NumPy int64 array, always on the host.

        Value i gets the 64-bit sort key ``(w[2i] << 32) | w[2i+1]`` from one ``uint32(2n)``
        draw; the permutation is ``argsort(keys, kind="stable")`` (ties, of probability
        about n**2 / 2**65, keep index order). On CuPy the words are drawn on the device and
        copied to the host: one sync, once per call (once an epoch for shuffling).
        """
        n = _check_int("n", n, 2**61)
        w = self.uint32(2 * n)
        if self._cupy:
            w = w.get()
        keys = (w[0::2].astype(numpy.uint64) << numpy.uint64(32)) | w[1::2]
        return numpy.argsort(keys, kind="stable").astype(numpy.int64, copy=False)

    def skip(self, draws):
        """Move on by ``draws`` draws without making them (as if each had been made): a rank
        skips the draws of the others' share of a split evaluation. On CuPy a sync (its state)."""
        draws = _check_int("draws", draws, 2**63)
        if self._cupy:
            k0, k1, d_lo, d_hi = (int(w) for w in self.state())
            d = ((d_lo | d_hi << 32) + draws) & _MASK64
            self.set_state(numpy.array([k0, k1, d & _MASK32, d >> 32], dtype=numpy.uint32))
        else:
            self._d = (self._d + draws) & _MASK64

    # -- state -------------------------------------------------------------------------------
    def state(self):
        """``[k0, k1, d_lo, d_hi]`` as a NumPy uint32 array of shape (4,).

        On CuPy this copies ``d`` from the device, a sync: call it at checkpoint boundaries only.
        """
        if self._cupy:
            d_lo, d_hi = (int(v) for v in self._d.get())
        else:
            d_lo, d_hi = self._d & _MASK32, self._d >> 32
        return numpy.array([self.key[0], self.key[1], d_lo, d_hi], dtype=numpy.uint32)

    def set_state(self, state):
        """Continue from ``state`` (as returned by ``state()``) of a stream with the same key.

        The key must match this stream's ``(seed, stream_id)``: a stream's key is its identity,
        and replacing it silently would make ``seed`` and ``stream_id`` lie. To resume another
        seed's run, build the streams with that seed. Only ``d`` is taken from ``state``.
        """
        state = _check_state(state, f"state of stream {self.stream_id}")
        if (int(state[0]), int(state[1])) != self.key:
            raise InputError(
                f"state of stream {self.stream_id} must have key {self.key[0]:#010x} "
                f"{self.key[1]:#010x} (seed {self.seed}), got {int(state[0]):#010x} "
                f"{int(state[1]):#010x}: it belongs to another seed or stream")
        d_lo, d_hi = int(state[2]), int(state[3])
        if self._cupy:
            self._d.set(numpy.array([d_lo, d_hi], dtype=numpy.uint32))
        else:
            self._d = d_lo | (d_hi << 32)

    # -- internals ---------------------------------------------------------------------------
    def _host_blocks(self, n_blocks, d, first=0):
        """NumPy: Philox blocks first .. first + n_blocks − 1 of draw d.

        Returns uint64 arrays ``x = (w0, w2)`` and ``y = (w1, w3)``, each (2, n_blocks):
        column j holds block (first + j)'s words (see ``philox.philox_rows``). They live in the
        stream's workspace: valid until the next draw.
        """
        ws = self._workspace(n_blocks)
        x, y = ws["x"], ws["y"]
        if first:                          # c0, c1 = the block's index, split: no new array
            numpy.add(ws["j_lo"], numpy.uint64(first), out=x[0])
            numpy.right_shift(x[0], numpy.uint64(32), out=y[0])
            x[0] &= numpy.uint64(_MASK32)
        else:
            x[0] = ws["j_lo"]              # c0 = j & 0xFFFFFFFF
            y[0] = ws["j_hi"]              # c1 = j >> 32
        x[1] = d & _MASK32                 # c2 = d_lo
        y[1] = d >> 32                     # c3 = d_hi
        return philox_rows(x, y, self._round_keys, work=ws["p"])

    def _draw(self, out, rows, kernel, per_block, twin, host):
        """One draw into ``out``: each of its segments (:func:`_segments`) gets its values of the
        draw's counter d, by the CUDA ``kernel``, the Numba ``twin`` or the NumPy fill ``host``
        (``per_block`` values come from each Philox block); then d += 1."""
        segments = _segments(out, rows)
        if self._cupy:
            for first, flat in segments:
                self._launch(kernel, flat, flat.size, per_block, first)
            cuda_kernel("philox_advance")((1,), (1,), (self._d,))
            return out
        d = self._advance()
        twin = self._backend.twins().get(twin)
        for first, flat in segments:
            if twin is not None:
                twin(self.key[0], self.key[1], d, flat, first)
            else:
                _from_value(host, flat, d, first, per_block)
        return out

    def _host_uniform(self, flat, d, block):
        """NumPy: flat = the uniforms of draw d from block ``block`` on (float32: four a block)."""
        n = flat.size
        if flat.dtype == _FLOATS[0]:
            x, y = self._host_blocks(-(-n // 4), d, block)
            for t, words in enumerate((x[0], y[0], x[1], y[1])):  # word t of each block
                m = len(range(t, n, 4))
                uniform24(words[:m], out=flat[t::4], work=words[:m])   # the words are spent
        else:
            x, y = self._host_blocks(-(-n // 2), d, block)
            u = uniform53(x, y, out=self._ws_or_none("u", x), work=y)  # rows: (w0, w1), (w2, w3)
            flat[0::2] = u[0]
            flat[1::2] = u[1, :n // 2]

    def _host_normal(self, flat, d, block):
        """NumPy: flat = the normals of draw d from block ``block`` on (two a block)."""
        x, y = self._host_blocks(-(-flat.size // 2), d, block)
        u = uniform53(x, y, out=self._ws_or_none("u", x), work=y)
        box_muller(u[0], u[1], out=flat,  # float64 products, rounded once to dtype
                   work=self._ws_or_none("f", x))

    def _advance(self):
        """NumPy: this draw's counter d; the stream moves on to d + 1 (mod 2**64)."""
        d = self._d
        self._d = (d + 1) & _MASK64
        return d

    def _ws_or_none(self, name, x):
        """The workspace array ``name`` if ``x`` came from a kept workspace, else None."""
        ws = self._ws.get(x.shape[1])
        return ws[name] if ws is not None and ws["x"] is x else None

    def _workspace(self, n_blocks):
        """Scratch arrays for draws of n_blocks blocks; the last few sizes are kept (up to a cap).

        Reusing them matters: fresh arrays of a few hundred kB cost page faults on every draw,
        about a third of the time of a 1024 x 20 normal draw; and a training step draws two
        sizes from one stream (ε, and the corruption noise), each step.
        """
        ws = self._ws.get(n_blocks)
        if ws is None:
            j = numpy.arange(n_blocks, dtype=numpy.uint64)
            ws = {"n": n_blocks, "j_lo": j & numpy.uint64(_MASK32), "j_hi": j >> numpy.uint64(32)}
            for name in ("x", "y", "p"):
                ws[name] = numpy.empty((2, n_blocks), dtype=numpy.uint64)
            ws["u"] = numpy.empty((2, n_blocks), dtype=numpy.float64)
            ws["f"] = numpy.empty((6, n_blocks), dtype=numpy.float64)  # box_muller scratch
            if n_blocks <= _WORKSPACE_BLOCKS:
                if len(self._ws) >= _WORKSPACE_SIZES:
                    self._ws.pop(next(iter(self._ws)))          # the oldest size
                self._ws[n_blocks] = ws
        return ws

    def _launch(self, name, out, n, per_block, first=0):
        """CuPy: the generating kernel over the blocks that hold values first .. first + n − 1
        of the draw (d is read on the device; the caller advances it)."""
        if n:
            n_blocks = (first + n + per_block - 1) // per_block - first // per_block
            grid = min(-(-n_blocks // _THREADS), _MAX_GRID)
            cuda_kernel(name)((grid,), (_THREADS,),
                              (numpy.uint32(self.key[0]), numpy.uint32(self.key[1]),
                               self._d, out, numpy.uint64(n), numpy.uint64(first)))

    def _out_for(self, shape, dtype, out):
        shape = _check_shape(shape)
        dtype = _check_dtype(dtype)
        if out is None:
            return self.xp.empty(shape, dtype=dtype)
        self._check_out(out)
        if tuple(out.shape) != shape or out.dtype != dtype:
            raise InputError(f"out must have shape {shape} and dtype {dtype}, got shape "
                             f"{tuple(out.shape)} and dtype {out.dtype}")
        return out

    def _check_out(self, out):
        """``out`` itself, once it is a writeable C-contiguous float array of this backend."""
        if not self._backend.owns(out):
            raise BackendError(f"out must be a {self.xp.__name__} array for this "
                               f"{self.xp.__name__} stream, got {type(out).__module__}."
                               f"{type(out).__name__}")
        if out.dtype not in _FLOATS:
            raise InputError(f"out must have dtype float32 or float64, got {out.dtype}")
        if not (out.flags.c_contiguous and getattr(out.flags, "writeable", True)):  # cupy: no flag
            raise InputError("out must be a writeable C-contiguous array, got one that is not")
        return out


class StreamRows:
    """Rows [start, stop) of every draw of ``total`` rows from ``stream`` (see the module
    docstring): what a rank holding those rows of a batch draws. It has the draws a training
    step makes (``draw_*_into``, ``uniform``, ``normal``); each is one draw of the stream."""

    def __init__(self, stream, start, stop, total):
        total = _check_int("total", total, 2**62)
        stop = _check_int("stop", stop, total + 1)
        start = _check_int("start", start, stop + 1)
        self.stream, self.part = stream, (start, stop, total)

    def __repr__(self):
        return f"{self.stream!r}.rows{self.part}"

    def draw_uniform_into(self, out):
        return self.stream.draw_uniform_into(out, self.part)

    def draw_normal_into(self, out):
        return self.stream.draw_normal_into(out, self.part)

    def uniform(self, shape, dtype, out=None):
        return self.draw_uniform_into(self.stream._out_for(shape, dtype, out))

    def normal(self, shape, dtype, out=None):
        return self.draw_normal_into(self.stream._out_for(shape, dtype, out))


def _segments(out, rows):
    """[(first, flat)]: the draw's value index of each contiguous piece of ``out`` and the piece
    (a flat view). rows None: all of ``out`` from value 0; else (start, stop, total), see
    :meth:`Stream.rows`: G pieces of m·w values, the g-th starting at value (g·total + start)·w."""
    flat = out.reshape(-1)                   # a view: out is C-contiguous
    if rows is None:
        return [(0, flat)]
    start, stop, total = rows
    m = stop - start
    if out.size == 0:
        return []
    w = out.shape[-1] if out.ndim else 1
    if m == 0 or out.size % (m * w):
        raise InputError(f"out must hold whole blocks of {m} rows of {w} values (rows {start}..{stop} of "
                         f"{total}), got shape {tuple(out.shape)}")
    if m == total:                           # every row: the blocks are contiguous in the draw too
        return [(0, flat)]
    piece = m * w
    return [(g * total * w + start * w, flat[g * piece:(g + 1) * piece]) for g in range(out.size // piece)]


def _from_value(fill, flat, d, first, per_block):
    """NumPy: flat = values first .. of draw d, with ``fill(flat, d, block)``, which fills from
    the start of a Philox block of ``per_block`` values. A start inside a block (a Box–Muller
    pair's sine, a uniform's later word) takes the rest of that block from a small scratch."""
    r = first % per_block
    if r:
        head = min(per_block - r, flat.size)
        one = numpy.empty(per_block, dtype=flat.dtype)
        fill(one, d, first // per_block)
        flat[:head] = one[r:r + head]
        flat, first = flat[head:], first + head
    if flat.size:
        fill(flat, d, first // per_block)


class Streams:
    """Named :class:`Stream` s of one seed: ``names`` maps each name to its stream id.

    The names and ids belong to the code that draws from them (the model's, the training
    loop's); a stream's id, not its name, fixes its numbers.
    """

    def __init__(self, seed, names, xp=numpy):
        _check_int("seed", seed, 2**63)
        self.seed = int(seed)
        self.xp = xp
        self._streams = {name: Stream(seed, i, xp) for name, i in dict(names).items()}

    def __getitem__(self, name):
        try:
            return self._streams[name]
        except (KeyError, TypeError):
            raise InputError(f"stream name must be one of {tuple(self._streams)}, got {name!r}") from None

    def __iter__(self):
        return iter(self._streams)

    def __repr__(self):
        return f"Streams(seed={self.seed}, names={tuple(self._streams)}, xp={self.xp.__name__})"

    def state(self):
        """``{name: Stream.state()}`` for every name (a sync per stream on CuPy)."""
        return {name: s.state() for name, s in self._streams.items()}

    def set_state(self, state):
        """Continue every stream from ``state`` (as returned by ``state()``); all or nothing."""
        names = tuple(self._streams)
        if not hasattr(state, "keys"):
            raise InputError(f"state must be a dict with keys {names}, got {type(state).__name__}")
        if set(state.keys()) != set(names):
            raise InputError(f"state must have keys {names}, got {tuple(sorted(state.keys()))}")
        for name, s in self._streams.items():  # validate all before changing any
            _check_state(state[name], f"state[{name!r}]")
            if (int(state[name][0]), int(state[name][1])) != s.key:
                raise InputError(f"state[{name!r}] must have the key of stream {name!r} under "
                                 f"seed {self.seed}, got another: it belongs to another seed")
        for name, s in self._streams.items():
            s.set_state(state[name])


def _words(x, y):
    """uint32 (B, 4), row j = block j's words, from ``philox_rows``' (w0, w2) and (w1, w3)."""
    words = numpy.empty((x.shape[1], 4), dtype=numpy.uint32)
    words.T[0::2] = x  # through the transpose, so the long axis is the inner loop
    words.T[1::2] = y
    return words


def _check_int(name, value, stop):
    bound = f"2**{stop.bit_length() - 1}"  # every stop here is a power of two
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)):
        raise InputError(f"{name} must be an int in [0, {bound}), got {type(value).__name__} "
                         f"{value!r}")
    if not 0 <= int(value) < stop:
        raise InputError(f"{name} must be an int in [0, {bound}), got {int(value)}")
    return int(value)


def _check_shape(shape):
    dims = (shape,) if isinstance(shape, (int, numpy.integer)) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise InputError(f"shape must be an int or a tuple of ints >= 0, got {shape!r}") from None
    if not all(isinstance(s, (int, numpy.integer)) and not isinstance(s, bool) and s >= 0
               for s in dims):
        raise InputError(f"shape must be an int or a tuple of ints >= 0, got {shape!r}")
    return tuple(int(s) for s in dims)


def _check_dtype(dtype):
    try:
        dt = None if dtype is None else numpy.dtype(dtype)  # dtype(None) would be float64
    except TypeError:
        dt = None
    if dt is None or dt.name not in ("float32", "float64"):  # not `in _FLOATS`: dtype == None
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _check_state(state, what):
    if not isinstance(state, numpy.ndarray) or state.dtype != numpy.uint32 or state.shape != (4,):
        got = (f"{state.dtype} array of shape {state.shape}" if hasattr(state, "shape")
               else type(state).__name__)
        raise InputError(f"{what} must be a numpy uint32 array of shape (4,), got {got}")
    return state
