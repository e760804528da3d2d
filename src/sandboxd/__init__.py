"""sandboxd: isolated Linux sandboxes for untrusted code. ``from sandboxd import Sandbox``."""

from typing import Any

__all__ = ["AsyncSandbox", "AsyncTemplates", "CommandExitError", "Sandbox", "SandboxError", "Templates"]


def __getattr__(name: str) -> Any:
    # The SDK is loaded on first use, so the server and CLI do not import it unless they need it.
    if name in __all__:
        from sandboxd import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
