"""Kiln for Python: run ONNX models compiled to native code.

``kiln.InferenceSession`` is shaped like onnxruntime's: a program written for
``onnxruntime.InferenceSession`` runs on Kiln by changing the import and the constructor::

    import kiln
    sess = kiln.InferenceSession("model.onnx")          # or a compiled "model.kiln"
    name = sess.get_inputs()[0].name
    (logits,) = sess.run(None, {name: image})

An ``.onnx`` model is compiled when the session is made (through Kiln's kernel cache, so a
model seen before compiles in a fraction of the time); where the options neither pin nor
bound a symbolic dim, it is compiled at the first run of each new set of input shapes. A
``.kiln`` artifact (``kiln.compile`` or ``kiln compile``) loads without compiling.
``run`` releases the GIL: one session may be run from many threads at once.

Errors raise ``kiln.InvalidArgument`` (a ``ValueError``) for inputs or options the model
cannot take, and ``kiln.KilnError`` for models that cannot be compiled, loaded or run, with
the same one-line messages as the ``kiln`` command.
"""

import os
import time

from . import _kiln
from ._kiln import InvalidArgument, KilnError

__version__ = _kiln.__version__
__all__ = ["InferenceSession", "SessionOptions", "NodeArg", "compile", "KilnError", "InvalidArgument"]


def _shapes_and_dims(input_shapes, dims):
    """The compile options as the extension takes them: dims as lists of ints, a dim bound
    `N` as the range `(N, N)`."""
    if input_shapes is not None:
        input_shapes = {k: [int(d) for d in v] for k, v in input_shapes.items()}
    if dims is not None:
        dims = {k: (v, v) if isinstance(v, int) else tuple(v) for k, v in dims.items()}
    return input_shapes, dims


class NodeArg:
    """An input or output of a session: ``name``, ``type`` (onnxruntime's spelling,
    ``tensor(float)``) and ``shape`` (ints, symbolic dims as their names, unknown ones as
    None)."""

    __slots__ = ("name", "type", "shape")

    def __init__(self, name, type, shape):
        self.name = name
        self.type = type
        self.shape = list(shape)

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


class SessionOptions:
    """Options of a session, named as onnxruntime names them where it has them.

    ``intra_op_num_threads``: threads a run uses (0: one per core). ``enable_profiling``:
    record each run's kernel times; ``end_profiling()`` writes them as a Chrome trace named
    ``<profile_file_prefix>_<date>.json`` and returns its path. Compile options for an
    ``.onnx`` model: ``target`` (``cpu``, a triple or a device list), ``precision``
    (``f32``, ``bf16``, ``int8``), ``input_shapes`` (``{input: [dims]}``) and ``dims``
    (``{dim_name: (lo, hi)}``, one artifact for every size in between)."""

    def __init__(self):
        self.intra_op_num_threads = 0
        self.enable_profiling = False
        self.profile_file_prefix = "kiln_profile"
        self.target = None
        self.precision = None
        self.input_shapes = None
        self.dims = None


class InferenceSession:
    """A model ready to run, from an ``.onnx`` or ``.kiln`` file.

    ``sess_options`` is a :class:`SessionOptions`; the keyword arguments override its
    fields. ``providers`` is accepted for onnxruntime compatibility: Kiln runs on the CPU
    (a model split across devices is compiled with ``target``)."""

    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
        if not isinstance(path_or_bytes, (str, os.PathLike)):
            raise InvalidArgument("kiln.InferenceSession takes the path of an .onnx or .kiln file")
        opts = sess_options if sess_options is not None else SessionOptions()
        fields = {
            "threads": opts.intra_op_num_threads,
            "profile": opts.enable_profiling,
            "target": opts.target,
            "precision": opts.precision,
            "input_shapes": opts.input_shapes,
            "dims": opts.dims,
        }
        aliases = {"intra_op_num_threads": "threads", "enable_profiling": "profile"}
        for key, value in kwargs.items():
            key = aliases.get(key, key)
            if key not in fields:
                raise InvalidArgument(f"InferenceSession: unknown option `{key}` (options: {', '.join(sorted(fields))})")
            fields[key] = value
        fields["input_shapes"], fields["dims"] = _shapes_and_dims(fields["input_shapes"], fields["dims"])
        self._path = os.fspath(path_or_bytes)
        self._prefix = opts.profile_file_prefix
        self._sess = _kiln.Session(self._path, **fields)
        self._inputs = [NodeArg(*io) for io in self._sess.inputs()]
        self._outputs = [NodeArg(*io) for io in self._sess.outputs()]

    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_providers(self):
        return ["KilnCPUExecutionProvider"]

    def run(self, output_names, input_feed, run_options=None):
        """Runs the model: ``output_names`` (None: all, in order), ``input_feed`` a dict of
        numpy arrays by input name. Returns a list of numpy arrays."""
        if not isinstance(input_feed, dict):
            raise InvalidArgument(f"input_feed: expected a dict of numpy arrays by input name, got {type(input_feed).__name__}")
        if output_names is not None:
            output_names = list(output_names)
        return self._sess.run(output_names, input_feed)

    def end_profiling(self):
        """Writes the runs' profile since profiling started (or was last ended) as a Chrome
        trace file and returns its path; None when profiling is off."""
        got = self._sess.end_profiling()
        if got is None:
            return None
        trace, self.last_profile_table = got
        path = f"{self._prefix}_{time.strftime('%Y-%m-%d_%H-%M-%S')}_{time.time_ns() % 1_000_000_000:09d}.json"
        with open(path, "w") as f:
            f.write(trace)
        return path


def compile(model, output, *, target=None, precision=None, input_shapes=None, dims=None, emit="kiln", name=None):
    """Compiles ``model`` (an ``.onnx`` file) to ``output`` as ``kiln compile`` does:
    ``emit`` is ``kiln`` (an artifact), ``object``, ``staticlib`` or ``header``. Returns the
    output's size in bytes; an output already up to date is left as it is."""
    input_shapes, dims = _shapes_and_dims(input_shapes, dims)
    size, _ = _kiln.compile(os.fspath(model), os.fspath(output), target, precision, input_shapes, dims, emit, name)
    return size
