"""LayerBuilder for the local runtime: images pulled and built (images/ does the work), a sandbox's
writable layer committed as an image layer."""

from __future__ import annotations

import asyncio
from typing import Any

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.base import ImageAuth, Progress
from sandboxd.runtimes.local.images.registry import Credentials, looks_like_reference
from sandboxd.runtimes.local.oci import mounts, rootfs
from sandboxd.runtimes.local.parts import RuntimeParts


class LayerSupport(RuntimeParts):
    # -- LayerBuilder ----------------------------------------------------------------------------

    async def ensure_image(
        self, name: str, progress: Progress | None = None, image_auth: ImageAuth | None = None
    ) -> list[str]:
        """Pulls a registry reference that is not here yet; returns the image's layer ids."""
        await self._pull_if_missing(name, progress, image_auth)
        return list(self.images.get(name).layer_ids)

    async def _pull_if_missing(self, name: str, progress: Progress | None, image_auth: ImageAuth | None) -> None:
        if looks_like_reference(name) and not self.images.exists(name):

            def pulled(ref: str, done: int, total: int) -> None:
                if progress:
                    progress("pulling", f"{ref}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")

            credentials = Credentials(*image_auth) if image_auth else None
            await asyncio.to_thread(self.images.pull, name, pulled, credentials)

    def image_config(self, name: str) -> dict[str, Any]:
        return self.images.get(name).config

    def cached_layer(self, key: str) -> str | None:
        return self.images.cached_layer(key)

    def cache_layer(self, key: str, layer_id: str) -> None:
        self.images.cache_layer(key, layer_id)

    def save_image(self, name: str, base: str, layers: list[str], config: dict[str, Any], meta: dict[str, Any]) -> None:
        base_image = self.images.get(base)
        self.images.create_image(name, [*base_image.layer_ids, *layers], config, {**meta, "base": base})

    def delete_image(self, name: str) -> None:
        in_use, _ = rootfs.images_in_use(self.root.parent)
        self.images.delete(name, lambda n: n in in_use)

    async def commit(self, sandbox_id: str, record: dict[str, Any]) -> str:
        """Stops the sandbox and keeps its writable layer as a new image layer; returns its id.
        The sandbox must still be destroyed afterwards (it has no root any more)."""
        # With its init gone the kernel has killed the rest of its pid namespace: nothing writes
        # to the upper dir any more. Otherwise the layer is not taken.
        if not await self._stop_container(sandbox_id, record):
            raise RuntimeFailure(f"sandbox {sandbox_id} did not stop; its layer is not kept")
        home = self.root / sandbox_id
        await asyncio.to_thread(mounts.unmount, home / "rootfs", lazy=False)
        await asyncio.to_thread(rootfs.remove_mounts, home)
        upper = self.scratch.path / sandbox_id / "upper"
        if not upper.exists():  # a sandbox from before disk limits
            upper = home / "upper"
        return await asyncio.to_thread(self.images.add_layer, upper)
