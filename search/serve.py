"""Serve a model the final evaluation kept over HTTP, with Ray Serve.

    transfer-search serve experiments/NAME --port 8000

Also `python search/serve.py MODEL_DIR|EXP_DIR|URI`; an experiment directory serves its winner
(the rule search/predict.py uses), and a model folder's s3:// or gs:// URI is downloaded by
each replica (on a cluster, the way every node reaches it). Then:

    curl -F file=@photo.jpg http://127.0.0.1:8000/predict
    curl http://127.0.0.1:8000/metadata

The service is search/serving.py. Locally this starts its own Ray and serves until Ctrl-C; with
--address auto it deploys on a running cluster (`ray up`) and exits, leaving the service up
(`serve status`; `serve delete transfer-search` ends it). Bad input (no model, a taken port, GPUs
a local machine lacks) gets one line and exit code 2 before Ray starts; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

from search.checks import LOOPBACK
from search.export import BadModel, load
from search.options import UsageError
from search.predict import NoModel, find_model, local_model
from search.serve_settings import MiB, ServiceSettings
from store.uri import RemoteError

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1
DEFAULTS = ServiceSettings(model="-")  # the flags' defaults are the service's own
APP_NAME = "transfer-search"
REQUEST_TIMEOUT_S = 120  # Serve's bound on a whole request, the upload and the answer


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", metavar="MODEL_DIR|EXP_DIR|URI",
                        help="a folder with model.safetensors and model.json (eval/model/S), "
                        "an experiment directory (its winner's), or the s3:// or gs:// URI of "
                        "a model folder")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the HTTP server listens on; anything but loopback exposes "
                        "the model to the network, and prints a warning (default: 127.0.0.1)")
    parser.add_argument("--replicas", type=int, default=1, help="copies of the model (default 1)")
    parser.add_argument("--gpus-per-replica", type=float, default=0.0, metavar="G",
                        help="GPUs each replica holds; fractions share a GPU (default: 0, CPU)")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size,
                        metavar="N", help="images in one forward pass, across requests "
                        "(default: %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=DEFAULTS.batch_wait_s * 1000,
                        metavar="MS", help="how long a batch waits to fill (default: %(default)g)")
    parser.add_argument("--no-batching", action="store_true",
                        help="one forward pass per request, without @serve.batch")
    parser.add_argument("--max-image-mb", type=float, default=DEFAULTS.max_image_bytes / MiB,
                        metavar="MB", help="largest file accepted, in MiB; larger ones get 413 "
                        "(default: %(default)g)")
    parser.add_argument("--max-images", type=int, default=DEFAULTS.max_images, metavar="N",
                        help="most images in one request; more get 413 (default: %(default)s)")
    parser.add_argument("--max-request-mb", type=float, default=DEFAULTS.max_request_bytes / MiB,
                        metavar="MB", help="largest request body, in MiB, checked before it is "
                        "read; larger ones get 413 (default: %(default)g)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULTS.max_pixels, metavar="N",
                        help="most pixels in one image, checked before it is decoded; more get "
                        "413 (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=DEFAULTS.top_k, metavar="K",
                        help="classes per image in an answer, unless ?top_k= says (default: "
                        "%(default)s)")
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster to deploy on ('auto': this node's); the "
                        "service stays up there after this command exits")
    parser.add_argument("--start-timeout", type=float, default=300.0, metavar="S",
                        help="seconds to wait for the replicas to be up (default: 300)")
    return parser


def checked_model(path: str) -> tuple[dict, str]:
    """(model.json, what the replicas load) once the whole model has loaded here: a kept model
    or an experiment's winner, or the URI of a kept model folder, which the replicas download
    themselves (on a cluster, a path here would be missing on the other nodes)."""
    import tempfile

    from store.uri import is_uri

    if not is_uri(path):
        local = find_model(path).resolve()
        return load(local)[2], str(local)
    with tempfile.TemporaryDirectory(prefix="transfer-search-model-") as tmp:
        try:
            local = local_model(path, into=Path(tmp))
        except FileNotFoundError as error:
            raise NoModel(str(error)) from None
        except OSError as error:  # pyarrow's network and credential errors
            raise RemoteError(f"{path}: cannot reach it ({str(error).splitlines()[0]}); check "
                              "the URI, the credentials and the network") from None
        return load(local)[2], path


def check_args(args: argparse.Namespace) -> None:
    """UsageError naming the flag and the fix; nothing here starts Ray or imports torch."""
    positive = {"--replicas": args.replicas, "--max-batch-size": args.max_batch_size,
                "--max-image-mb": args.max_image_mb, "--max-images": args.max_images,
                "--max-request-mb": args.max_request_mb,
                "--max-pixels": args.max_pixels, "--top-k": args.top_k,
                "--start-timeout": args.start_timeout}
    for flag, value in positive.items():
        if not value > 0:
            raise UsageError(f"{flag} {value}: must be more than 0")
    if args.gpus_per_replica < 0 or args.batch_wait_ms < 0:
        flag = "--gpus-per-replica" if args.gpus_per_replica < 0 else "--batch-wait-ms"
        raise UsageError(f"{flag}: must be 0 or more")
    if args.gpus_per_replica > 1 and args.gpus_per_replica != int(args.gpus_per_replica):
        raise UsageError(f"--gpus-per-replica {args.gpus_per_replica}: above 1, a whole number "
                         "of GPUs (Ray shares only fractions of one)")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: pass a port from 1 to 65535")
    if args.address is None and not os.environ.get("RAY_ADDRESS"):  # this machine's own Ray
        check_port_free(args.host, args.port)


def check_port_free(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as error:
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); "
                         "pass a free --port, or a --host of this machine") from None


def check_local_gpus(gpus_per_replica: float, replicas: int) -> None:
    """A local Ray has this machine's GPUs only: replicas asking for more never start."""
    import torch

    have = torch.cuda.device_count()
    need = gpus_per_replica * replicas
    if need > have:
        raise UsageError(f"--gpus-per-replica {gpus_per_replica} x --replicas {replicas}: "
                         f"{need:g} GPUs, and this machine has {have}; pass fewer, or "
                         "--address of a cluster with GPUs")


def settings_of(args: argparse.Namespace, served: str) -> ServiceSettings:
    return ServiceSettings(model=served, batching=not args.no_batching,
                           max_batch_size=args.max_batch_size,
                           batch_wait_s=args.batch_wait_ms / 1000,
                           max_image_bytes=int(args.max_image_mb * MiB),
                           max_images=args.max_images,
                           max_request_bytes=int(args.max_request_mb * MiB),
                           max_pixels=args.max_pixels, top_k=args.top_k)


def wait_until_running(timeout: float) -> str | None:
    """None once the application runs, else why not (its deployment's message, or the time)."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            return None
        if status is not None and status.status == "DEPLOY_FAILED":
            return status.message.strip().splitlines()[-1] if status.message else "failed"
        time.sleep(0.5)
    return (f"the replicas were not up after {timeout:g} s; is there room for them in the "
            "cluster (`ray status`)? --start-timeout waits longer")


def deploy(args: argparse.Namespace, settings: ServiceSettings, meta: dict) -> int:
    """Deploy on this machine's own Ray and serve until stopped; or, on a running cluster
    (--address, or RAY_ADDRESS as `ray job submit` sets it), deploy and exit."""
    import ray
    from ray import serve

    from search.resources import init_ray
    from search.serving import build_app

    on_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    init_ray(args.address, log_to_driver=False)
    # on a cluster whose Serve already runs, Serve keeps its own host and port
    serve.start(http_options={"host": args.host, "port": args.port,
                              "request_timeout_s": REQUEST_TIMEOUT_S})
    app = build_app(settings, replicas=args.replicas, gpus_per_replica=args.gpus_per_replica)
    serve._run(app, name=APP_NAME, _blocking=False)  # waits below, with a bound
    problem = wait_until_running(args.start_timeout)
    if problem:
        print(f"serve: error: {problem}", file=sys.stderr)
        if on_cluster:  # what ran there before stays: a delete would take it down too
            print(f"`serve status` shows it; `serve delete {APP_NAME}` removes it",
                  file=sys.stderr)
        else:
            serve.shutdown()
        ray.shutdown()
        return EXIT_FAILED
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {settings.model} ({meta['backbone']}, {len(meta['classes'])} classes, "
          f"{args.replicas} replica(s)) on http://{host}:{args.port}: POST /predict, GET "
          "/health, GET /metadata", flush=True)
    if on_cluster:
        print(f"it stays up on the cluster: `serve status`; `serve delete {APP_NAME}` ends it")
        ray.shutdown()
        return 0
    print("Ctrl-C stops it", flush=True)
    return serve_until_stopped()


def serve_until_stopped() -> int:
    """Until Ctrl-C or SIGTERM, then Serve and this process's own Ray stop."""
    import ray
    from ray import serve

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the service", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def main(argv: list[str] | None = None, prog: str = "serve.py") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        check_args(args)
        meta, served = checked_model(args.model_dir)  # loads, or the replicas never would
        if args.address is None and not os.environ.get("RAY_ADDRESS") \
                and args.gpus_per_replica > 0:
            check_local_gpus(args.gpus_per_replica, args.replicas)
    except (UsageError, NoModel, BadModel, RemoteError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.host not in LOOPBACK:
        print(f"warning: --host {args.host}: the model service will accept connections from "
              "the network, with no authentication; put it behind a proxy that has some",
              flush=True)
    return deploy(args, settings_of(args, served), meta)


if __name__ == "__main__":
    sys.exit(main())
