"""The model service `transfer-search serve` deploys on Ray Serve: a kept model per replica
behind FastAPI, its requests' images batched across requests with @serve.batch.

    transfer-search serve experiments/NAME --port 8000

Endpoints: POST /predict (images as multipart/form-data files; ?top_k=N), GET /health,
GET /metadata. Every error is JSON, {"error": what and the fix, "status": code}, and the replica
keeps serving. Images get search/predict.py's preprocessing and forward pass exactly (the same
`to_array` and `trainables.loop.predict`), so the service answers what predict.py prints.

`app_builder(args)` builds the application from a dict, for `serve run search.serving:app_builder
model=...` and KubeRay's RayService (k8s/rayservice.yaml); the model may then be an s3:// or
gs:// URI, which each replica downloads.
"""

import asyncio
import io
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from search.predict import local_model
from search.serve_settings import ServiceSettings
from trainables.data.imagefolder import to_array
from trainables.loop import predict as class_probabilities  # the endpoint is named predict

ENDPOINTS = "POST /predict, GET /health and GET /metadata"
EXAMPLE = "curl -F file=@photo.jpg http://HOST:PORT/predict"
logger = logging.getLogger("ray.serve")


class RequestError(Exception):
    """A request the service refuses: its HTTP status and a message naming the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def read_images(request: Request, settings: ServiceSettings, image_size: int
                      ) -> list[tuple[str, np.ndarray]]:
    """(file name, decoded image) of each file in a multipart body, every limit checked before
    the body is read whole; each file's bytes are dropped once decoded."""
    length = request.headers.get("content-length")
    if length is None and "transfer-encoding" in request.headers:
        raise RequestError(411, "no Content-Length: send the body with its length")
    if length is not None and not (length.isascii() and length.isdigit()):
        raise RequestError(400, f"Content-Length {length!r}: not a number of bytes")
    if not int(length or 0):
        raise RequestError(400, f"empty body: send one or more image files, e.g. {EXAMPLE}")
    kind = request.headers.get("content-type", "")
    if not kind.lower().startswith("multipart/form-data"):
        raise RequestError(415, f"content type {kind or '(none)'!r}: send the images as "
                           f"multipart/form-data files, e.g. {EXAMPLE}")
    if int(length) > settings.max_request_bytes:
        raise RequestError(413, f"body of {int(length)} bytes: over {settings.max_request_bytes}"
                           "; send fewer or smaller images per request")
    try:
        form = await asyncio.wait_for(
            request.form(max_files=settings.max_images, max_fields=16),
            settings.upload_timeout_s)
    except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
        raise RequestError(408, f"the body took over {settings.upload_timeout_s:g} s to arrive; "
                           "send it faster, or in smaller requests") from None
    except HTTPException as error:  # starlette's parser: a malformed body, or too many files
        if "Too many files" in str(error.detail):
            raise RequestError(413, f"more than {settings.max_images} images in one request; "
                               "split them over several requests") from None
        raise RequestError(400, f"unreadable multipart body ({error.detail})") from None
    images = []
    try:
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                name = value.filename or field
                data = await value.read(settings.max_image_bytes + 1)
                if len(data) > settings.max_image_bytes:
                    raise RequestError(413, f"{name}: over {settings.max_image_bytes} bytes; "
                                       "send a smaller image")
                images.append((name, decode_upload(name, data, image_size, settings.max_pixels)))
    finally:
        await form.close()
    if not images:
        raise RequestError(400, f"no image file in the body: send each image as a file field, "
                           f"e.g. {EXAMPLE}")
    return images


# formats a camera or a browser produces; PIL's others include EPS, which runs Ghostscript
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")


def decode_upload(name: str, data: bytes, image_size: int, max_pixels: int) -> np.ndarray:
    """predict.py's decoding of one uploaded file, (3, S, S) uint8; RequestError if refused."""
    if not data:
        raise RequestError(400, f"{name}: an empty file; send an image")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height == 0:
                raise RequestError(400, f"{name}: an image of {width}x{height} px; send one "
                                   "with pixels")
            if width * height > max_pixels:
                raise RequestError(413, f"{name}: {width}x{height} px, over {max_pixels} "
                                   "pixels; send a smaller image")
            return to_array(image, image_size)
    except RequestError:
        raise
    except Exception:  # PIL raises many kinds on a truncated, corrupt or foreign file
        raise RequestError(400, f"{name}: not a readable image ({', '.join(FORMATS)})"
                           ) from None


def top_k_of(request: Request, default: int, classes: int) -> int:
    text = request.query_params.get("top_k")
    if text is None:
        return min(default, classes)
    if not (text.isascii() and text.isdigit() and len(text) < 6) or not 1 <= int(text) <= classes:
        raise RequestError(400, f"top_k={text!r}: pass a whole number from 1 to {classes}")
    return int(text)


app = FastAPI(title="transfer-search model service", docs_url=None, redoc_url=None)


@app.exception_handler(HTTPException)
async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    """FastAPI's own refusals (an unknown path, a wrong method) in the service's JSON form."""
    where = f"{request.method} {request.url.path}"
    if error.status_code == 404:
        return error_response(404, f"{where}: no such endpoint; the service answers {ENDPOINTS}")
    if error.status_code == 405:
        response = error_response(405, f"{where}: wrong method; the service answers {ENDPOINTS}")
        response.headers.update(error.headers or {})  # Allow: the methods that path takes
        return response
    return error_response(error.status_code, f"{where}: {error.detail}")


@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(400, f"{request.method} {request.url.path}: {error.errors()}")


@serve.deployment(max_ongoing_requests=32, health_check_period_s=10)
@serve.ingress(app)
class Classifier:
    """One replica: the model on this replica's device (a GPU where Ray gave it one)."""

    def __init__(self, settings: ServiceSettings):
        from trainables.device import pick_device
        from trainables.export import load_model

        self.settings = settings
        self.model_dir = local_model(settings.model)
        self.model, norm, self.meta = load_model(self.model_dir)
        self.device = pick_device()
        self.model, self.norm = self.model.to(self.device), norm.to(self.device)
        self.classes = list(self.meta["classes"])
        self.name = Path(settings.model.rstrip("/")).name
        self.classify.set_max_batch_size(settings.max_batch_size)
        self.classify.set_batch_wait_timeout_s(settings.batch_wait_s)
        size = int(self.meta["image_size"])
        self.forward(np.zeros((1, 3, size, size), np.uint8))  # the first request pays no setup

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) of uint8 images: predict.py's own forward pass."""
        probs, _ = class_probabilities(self.model, torch.from_numpy(images),
                                       normalize=self.norm, device=self.device)
        return probs.numpy()

    # The forward pass runs on the replica's event loop, blocking it: in a thread of its own it
    # contends with the loop for the GIL, which halved the requests/s bench/serve_load.py
    # measured with batching on.
    # the decorator's values stand until __init__ sets the service's own
    @serve.batch(max_batch_size=ServiceSettings.max_batch_size,
                 batch_wait_timeout_s=ServiceSettings.batch_wait_s)
    async def classify(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.forward(np.stack(images)))

    async def probabilities(self, images: list[np.ndarray]) -> list[np.ndarray]:
        if self.settings.batching:  # each image joins a batch of any request's images
            return list(await asyncio.gather(*(self.classify(image) for image in images)))
        return list(self.forward(np.stack(images)))

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        try:
            top_k = top_k_of(request, self.settings.top_k, len(self.classes))
            files = await read_images(request, self.settings, int(self.meta["image_size"]))
            probs = await self.probabilities([image for _, image in files])
        except RequestError as error:
            return error_response(error.status, str(error))
        except Exception as error:  # a fault of the service, not the request: it keeps serving
            logger.exception("POST /predict failed")
            return error_response(500, f"the model failed on this request ({error!r}); the "
                                  "service keeps serving, and its log has the traceback")
        answers = []
        for (name, _), p in zip(files, probs, strict=True):
            best = np.argsort(-p)[:top_k]
            answers.append({"file": name, "top": [
                {"class": self.classes[k], "probability": float(p[k])} for k in best]})
        return JSONResponse({"model": self.name, "backbone": self.meta["backbone"],
                             "predictions": answers})

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "pid": os.getpid(), "device": str(self.device)}

    @app.get("/metadata")
    async def metadata(self) -> dict:
        meta = self.meta
        return {"model": self.name, "classes": self.classes, "image_size": meta["image_size"],
                "backbone": meta["backbone"], "strategy": meta.get("strategy"),
                "test_acc": meta.get("test_acc"), "test_acc_over_seeds": meta.get(
                    "test_acc_over_seeds"),
                "preprocessing": {"resize": "shorter side to image_size, bilinear",
                                  "crop": "center", "normalize": meta["normalize"]},
                "device": str(self.device),
                # not where the model lives: a path or a URI is no client's business
                "settings": {k: v for k, v in asdict(self.settings).items() if k != "model"}}


def build_app(settings: ServiceSettings, replicas: int = 1, gpus_per_replica: float = 0.0):
    """The application: `replicas` copies of the model, each with `gpus_per_replica` GPUs.
    A replica takes twice a batch of requests at once: one batch runs while the next fills."""
    options = {"num_replicas": replicas, "max_ongoing_requests": 2 * settings.max_batch_size,
               "ray_actor_options": {"num_cpus": 1, "num_gpus": gpus_per_replica}}
    return Classifier.options(**options).bind(settings)


def app_builder(args: dict):
    """For `serve run search.serving:app_builder model=DIR` and a RayService's import_path:
    the service settings by name (model is required); replicas and resources come from the
    Serve config's deployment options."""
    if "model" not in args:
        raise ValueError("pass model=: a kept model folder, or an s3:// or gs:// URI of one")
    return Classifier.bind(ServiceSettings.from_args(dict(args)))
