"""Domain errors. Services and runtimes raise these; only the API layer turns them into HTTP."""

from __future__ import annotations


class SandboxdError(Exception):
    code = "INTERNAL"
    status = 500

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(SandboxdError):
    code = "INVALID_REQUEST"
    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field)


class Unauthorized(SandboxdError):
    code = "UNAUTHORIZED"
    status = 401


class SandboxNotFound(SandboxdError):
    code = "SANDBOX_NOT_FOUND"
    status = 404

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id} not found")


class ImageNotFound(SandboxdError):
    code = "IMAGE_NOT_FOUND"
    status = 400

    def __init__(self, image: str, hint: str = "") -> None:
        super().__init__(f"image {image!r} is not available; see `sandboxd image ls`{hint}", "image")


class NoSuchImage(ImageNotFound):
    """The images API's answer for a name the caller's project does not see: the same 404 whether
    the image does not exist or is another project's."""

    status = 404

    def __init__(self, image: str) -> None:
        SandboxdError.__init__(self, f"image {image!r} not found")


class VolumeNotFound(SandboxdError):
    """A named volume the caller's project does not hold (another project's reads the same)."""

    code = "VOLUME_NOT_FOUND"
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"volume {name!r} not found", "name")


class SnapshotNotFound(SandboxdError):
    """A snapshot the caller's project does not hold (another project's reads the same)."""

    code = "SNAPSHOT_NOT_FOUND"
    status = 404

    def __init__(self, snapshot_id: str) -> None:
        super().__init__(f"snapshot {snapshot_id} not found")


class PoolNotFound(SandboxdError):
    """A warm pool the caller's project does not hold (another project's reads the same)."""

    code = "POOL_NOT_FOUND"
    status = 404

    def __init__(self, pool_id: str) -> None:
        super().__init__(f"warm pool {pool_id!r} not found", "id")


class PoolEmpty(SandboxdError):
    """A create with warm_pool mode require found no ready sandbox that fits."""

    code = "WARM_POOL_EMPTY"
    status = 503


class NotFoundInSandbox(SandboxdError):
    """A process or file that does not exist inside a sandbox."""

    code = "NOT_FOUND"
    status = 404


class Conflict(SandboxdError):
    code = "CONFLICT"
    status = 409


class CheckpointFailed(Conflict):
    """A hibernate that was to keep the sandbox's memory could not: the sandbox runs on as before."""

    code = "CHECKPOINT_FAILED"


class SandboxNotRunning(SandboxdError):
    code = "SANDBOX_NOT_RUNNING"
    status = 409

    def __init__(self, sandbox_id: str, state: str, why: str = "") -> None:
        # why: what ended it, when the record says (its timeout passed, it failed, ...).
        super().__init__(f"sandbox {sandbox_id} is {state}: {why or 'not running'}")


class Forbidden(SandboxdError):
    code = "FORBIDDEN"
    status = 403


class RuntimeFailure(SandboxdError):
    code = "RUNTIME_ERROR"
    status = 500


class NotReady(SandboxdError):
    code = "NOT_READY"
    status = 503


class SandboxExhausted(SandboxdError):
    """The sandbox is at a limit (pids) that stops it from starting anything more right now."""

    code = "SANDBOX_EXHAUSTED"
    status = 503


class NoSpace(SandboxdError):
    code = "NO_SPACE"
    status = 507


class UpstreamFailure(SandboxdError):
    """Something the server fetches from on a caller's behalf (a registry, a source URL) failed."""

    code = "UPSTREAM_ERROR"
    status = 502


class Unsupported(SandboxdError):
    """The server's runtime backend cannot do this (a capability it does not have)."""

    code = "UNSUPPORTED"
    status = 501

    def __init__(self, feature: str, runtime: str) -> None:
        super().__init__(f"{feature} is not supported by the {runtime!r} runtime of this server")


class IdempotencyKeyReused(SandboxdError):
    """The key was first used on another request (method, path, query or body)."""

    code = "IDEMPOTENCY_KEY_REUSED"
    status = 422

    def __init__(self, key: str, method: str, path: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was used with a different request (first: {method} {path}); "
            "use a new key for a new request",
            "Idempotency-Key",
        )


class IdempotencyInProgress(SandboxdError):
    code = "IDEMPOTENCY_IN_PROGRESS"
    status = 409

    def __init__(self, key: str) -> None:
        super().__init__(f"a request with Idempotency-Key {key!r} is still running; retry later", "Idempotency-Key")


class QuotaExceeded(SandboxdError):
    """A project's limit (named in the message, as its setting) would be passed."""

    code = "QUOTA_EXCEEDED"
    status = 429


class IdempotencyKeysExhausted(SandboxdError):
    code = "IDEMPOTENCY_KEYS_EXHAUSTED"
    status = 429

    def __init__(self, limit: int, retention: int) -> None:
        super().__init__(
            f"this project holds {limit} Idempotency-Keys, the most it may (idempotency_max_keys); "
            f"retry without the header, or once older keys expire (kept {retention} s)",
            "Idempotency-Key",
        )


class IdempotentResponseNotKept(SandboxdError):
    code = "IDEMPOTENT_RESPONSE_NOT_KEPT"
    status = 409

    def __init__(self, key: str, status: int) -> None:
        super().__init__(
            f"the request with Idempotency-Key {key!r} was done (status {status}), but its answer was too "
            "large to keep (idempotency_max_response_kb, or the project's idempotency_max_stored_mb); "
            "it is not run again",
            "Idempotency-Key",
        )
