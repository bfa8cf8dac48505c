"""The model service's settings: the model and the request rules, from `transfer-search serve`'s
flags or from a Serve config's args (k8s/rayservice.yaml). Light, so the command's input checks
and --help import neither Ray nor FastAPI."""

from __future__ import annotations

from dataclasses import dataclass, fields

MiB = 2**20


@dataclass(frozen=True)
class ServiceSettings:
    """What a replica needs: the model and the request rules (resources are Ray's options)."""

    model: str  # a kept model's folder, or an s3:// or gs:// URI of one
    batching: bool = True  # @serve.batch across requests; off: one forward pass per request
    max_batch_size: int = 16  # images in one forward pass
    batch_wait_s: float = 0.005  # how long a batch waits to fill
    max_image_bytes: int = 10 * MiB
    max_images: int = 16  # per request
    # a whole request's body: what a replica and Ray's proxy hold of one request at once
    max_request_bytes: int = 32 * MiB
    max_pixels: int = 40_000_000  # per image, before decoding: a decompression bomb is refused
    top_k: int = 5
    upload_timeout_s: float = 30.0  # a body that takes longer to arrive is refused (408)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r}: pass a kept model's folder or URI")
        for name in ("max_batch_size", "max_image_bytes", "max_images", "max_request_bytes",
                     "max_pixels", "top_k", "upload_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be more than 0")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s={self.batch_wait_s!r}: must be 0 or more")

    @classmethod
    def from_args(cls, args: dict) -> ServiceSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown service settings {unknown}; known: {sorted(known)}")
        return cls(**{k: cls.parsed(k, v) for k, v in args.items()})

    @classmethod
    def parsed(cls, name: str, value):
        """A setting from a Serve config's args, where a value may come as a string."""
        default = getattr(cls, name, None)
        if isinstance(default, bool) and isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{name}={value!r}: pass true or false")
            return value.lower() == "true"
        if isinstance(default, int) and not isinstance(value, int):
            if float(value) != int(float(value)):
                raise ValueError(f"{name}={value!r}: pass a whole number")
            return int(float(value))
        return value if default is None else type(default)(value)
