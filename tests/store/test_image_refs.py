"""Image references in the store contract (both backends, as test_contract.py)."""

from __future__ import annotations

import pytest

from sandboxd.domain import DEFAULT_PROJECT, ImageRef
from sandboxd.store.base import DuplicateKey, Store
from tests.store.test_contract import OTHER, T0

pytestmark = pytest.mark.anyio


def ref(project: str, name: str, image: str) -> ImageRef:
    return ImageRef(project_id=project, name=name, image=image, created_at=T0)


async def test_add_get_list_remove(store: Store) -> None:
    mine = await store.add_image_ref(ref(DEFAULT_PROJECT, "app", "img-a"))
    theirs = await store.add_image_ref(ref(OTHER, "app", "img-b"))  # a name is per project
    shared = await store.add_image_ref(ref(OTHER, "alpine", "img-a"))  # one image, two references
    assert await store.get_image_ref(DEFAULT_PROJECT, "app") == mine
    assert await store.get_image_ref(OTHER, "app") == theirs
    assert await store.get_image_ref(DEFAULT_PROJECT, "alpine") is None  # another project's name
    assert await store.find_image_refs(DEFAULT_PROJECT) == [mine]
    assert await store.find_image_refs(OTHER) == [shared, theirs]
    assert await store.find_image_refs(image="img-a") == sorted([mine, shared], key=lambda r: r.project_id)
    assert len(await store.find_image_refs()) == 3

    assert await store.remove_image_ref(OTHER, "app") is True
    assert await store.remove_image_ref(OTHER, "app") is False
    assert await store.remove_image_ref(OTHER, "nothing") is False
    assert await store.get_image_ref(OTHER, "app") is None
    assert await store.get_image_ref(DEFAULT_PROJECT, "app") == mine  # the other project's is untouched
    assert await store.find_image_refs(image="img-b") == []


async def test_a_name_is_held_once_per_project(store: Store) -> None:
    await store.add_image_ref(ref(DEFAULT_PROJECT, "app", "img-a"))
    with pytest.raises(DuplicateKey) as raised:
        await store.add_image_ref(ref(DEFAULT_PROJECT, "app", "img-c"))
    assert raised.value.field == "name"
    assert (await store.get_image_ref(DEFAULT_PROJECT, "app")) == ref(DEFAULT_PROJECT, "app", "img-a")
