"""Kiln on Ray Serve: one compiled model (a ``.kiln`` artifact) served over HTTP by several
replicas, each holding its own ``kiln.InferenceSession``.

    python serve_kiln.py model.kiln [--port 8000] [--replicas 2] [--num-cpus 0.5] [--threads 1]

or, with Ray Serve's own command (an application builder; arguments as key=value)::

    serve run serve_kiln:build artifact=/abs/path/model.kiln num_replicas=2

The HTTP interface (route prefix ``/`` unless told otherwise):

* ``POST /`` with a JSON body ``{"inputs": {NAME: nested list, ...}}``: the inputs by name,
  each converted to the dtype the model declares for it (``tensor(float)``: float32, ...).
  The answer is ``{"outputs": {NAME: nested list}, "shapes": {NAME: [dims]},
  "dtypes": {NAME: "float32"}, "replica": REPLICA_TAG, "pid": PID}``: every output of the
  model, in its order, and which replica ran it. An input the model cannot take answers 400
  with ``{"error": MESSAGE}``; a model that fails to run, 500.
* ``GET /``: the model's inputs and outputs (name, type, shape; symbolic dims by name).

Floats travel as JSON numbers written in Python's shortest round-trip form, so a float32
tensor arrives exactly as it was sent and the outputs exactly as Kiln computed them.

Every replica loads the artifact from the same path: on a cluster of several machines, the
path must exist on each of them (a shared file system, or the file copied to each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

import kiln

# onnxruntime's type names (kiln.NodeArg.type) as numpy dtypes.
DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

ARTIFACT_ENV = "KILN_ARTIFACT"


def _describe(arg: kiln.NodeArg) -> dict:
    return {"name": arg.name, "type": arg.type, "shape": arg.shape}


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=4)
class KilnModel:
    """A replica: one session on the artifact (``artifact``, or the environment variable
    ``KILN_ARTIFACT``), running with ``threads`` intra-op threads (1: a replica per core)."""

    def __init__(self, artifact: str | None = None, threads: int = 1):
        artifact = artifact or os.environ.get(ARTIFACT_ENV)
        if not artifact:
            raise ValueError(f"KilnModel: no artifact given (constructor argument or ${ARTIFACT_ENV})")
        self.artifact = artifact
        self.session = kiln.InferenceSession(artifact, intra_op_num_threads=threads)
        self.inputs = self.session.get_inputs()
        self.outputs = self.session.get_outputs()
        self.replica = serve.get_replica_context().replica_tag
        self.pid = os.getpid()


    def _feed(self, body) -> dict[str, np.ndarray]:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
            raise kiln.InvalidArgument('expected a JSON object {"inputs": {name: nested list}}')
        given = body["inputs"]
        names = {i.name for i in self.inputs}
        unknown = sorted(set(given) - names)
        if unknown:
            raise kiln.InvalidArgument(f"unknown input(s) {unknown}; the model takes {sorted(names)}")
        feed = {}
        for i in self.inputs:
            if i.name not in given:
                raise kiln.InvalidArgument(f"missing input {i.name!r}")
            dtype = DTYPES.get(i.type)
            if dtype is None:
                raise kiln.InvalidArgument(f"input {i.name!r}: type {i.type} cannot be sent as JSON")
            feed[i.name] = np.asarray(given[i.name], dtype=dtype)
        return feed

    async def __call__(self, request: Request):
        if request.method == "GET":
            return {"inputs": [_describe(a) for a in self.inputs], "outputs": [_describe(a) for a in self.outputs],
                    "replica": self.replica, "pid": self.pid}
        try:
            feed = self._feed(await request.json())
            # Session.run releases the GIL: run it off the event loop, so that the replica
            # keeps answering Serve's health checks and takes the next request meanwhile.
            results = await asyncio.to_thread(self.session.run, None, feed)
        except (ValueError, TypeError) as e:  # kiln.InvalidArgument, bad JSON, values of the wrong kind
            return JSONResponse({"error": str(e), "replica": self.replica}, status_code=400)
        except kiln.KilnError as e:  # the model failed to run
            return JSONResponse({"error": str(e), "replica": self.replica}, status_code=500)
        names = [o.name for o in self.outputs]
        return {
            "outputs": {n: r.tolist() for n, r in zip(names, results)},
            "shapes": {n: list(r.shape) for n, r in zip(names, results)},
            "dtypes": {n: str(r.dtype) for n, r in zip(names, results)},
            "replica": self.replica,
            "pid": self.pid,
        }


def app(artifact: str, num_replicas: int = 2, num_cpus: float = 0.5, threads: int = 1):
    """The Serve application: ``num_replicas`` replicas of :class:`KilnModel`, each reserving
    ``num_cpus`` of Ray's CPUs."""
    return KilnModel.options(num_replicas=num_replicas, ray_actor_options={"num_cpus": num_cpus}).bind(
        os.path.abspath(artifact), threads
    )


def build(args: dict):
    """Application builder for ``serve run serve_kiln:build artifact=PATH [num_replicas=N]
    [num_cpus=C] [threads=T]`` (the artifact may instead come from $KILN_ARTIFACT)."""
    artifact = args.get("artifact") or os.environ.get(ARTIFACT_ENV)
    if not artifact:
        raise ValueError(f"serve_kiln:build needs artifact=PATH (or ${ARTIFACT_ENV})")
    return app(artifact, int(args.get("num_replicas", 2)), float(args.get("num_cpus", 0.5)),
               int(args.get("threads", 1)))


def main(argv=None):
    p = argparse.ArgumentParser(description="Serve a .kiln artifact with Ray Serve over HTTP.")
    p.add_argument("artifact", nargs="?", default=os.environ.get(ARTIFACT_ENV),
                   help=f"the .kiln file (default: ${ARTIFACT_ENV})")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--route-prefix", default="/")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--num-cpus", type=float, default=0.5, help="Ray CPUs each replica reserves")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each replica's session")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, else a running local one, else a new one)")
    args = p.parse_args(argv)
    if not args.artifact:
        p.error(f"no artifact given (argument or ${ARTIFACT_ENV})")

    import ray

    ray.init(address=args.address)  # and, in the main thread, makes SIGTERM raise SystemExit
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app(args.artifact, args.replicas, args.num_cpus, args.threads), route_prefix=args.route_prefix)
        print(f"serving {args.artifact} with {args.replicas} replica(s) at "
              f"http://{args.host}:{args.port}{args.route_prefix} (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # Stops the replicas gracefully, then this driver's Ray.
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
