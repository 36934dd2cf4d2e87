"""Where the copy is: a hit the same-picture check confirmed carries the matched region of the
stored picture and of the query, in pixels of the original pictures (the ``region`` extension
field, docs/api.md)."""

from __future__ import annotations

import asyncio
import io

import pytest
from conftest import b64
from images import encode, picture
from PIL import Image, ImageOps
from test_same_picture import add, search

from same_search.client_values import search_result
from same_search.verify.local_features import LocalFeatures, extract

R = "/RTSAsService"
#: Larger than the working resolution (320 px), so boxes must be scaled back to be right.
SIZE = (960, 720)
#: A crop of the stored picture, in its pixels.
CROP = (270, 180, 750, 600)
#: Boxes are found at working resolution: 3 px there is 9 px of this original.
SLACK = 12


def original(seed: int) -> Image.Image:
    return picture(seed, SIZE)


@pytest.fixture
async def library(api) -> dict[int, str]:
    """Three synthetic pictures; seed -> contsign."""
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    return {seed: await add(api, original(seed), f"item-{seed}") for seed in range(1, 4)}


def near(box: list[int], expected: tuple[int, int, int, int], slack: int = SLACK) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(box, expected, strict=True))


def inside(box: list[int], size: tuple[int, int]) -> bool:
    left, top, right, bottom = box
    return 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]


async def test_a_crop_is_found_where_it_was_cut_from(api, library):
    query = original(2).crop(CROP).resize((240, 210))  # cut out, then shrunk to half
    [hit] = await search(api, query, same_picture=1)
    assert hit["contsign"] == library[2]
    region = hit["region"]
    assert inside(region["stored"], SIZE) and inside(region["query"], query.size)
    assert near(region["stored"], CROP)
    assert near(region["query"], (0, 0, *query.size), slack=6)


async def test_a_copy_inside_a_larger_picture_is_found_in_the_query(api, library):
    """The stored picture pasted into a larger one (a screenshot, a page): all of the stored
    picture matches, and the query's box is where it was pasted."""
    canvas = Image.new("RGB", (1400, 1000), (240, 240, 240))
    canvas.paste(original(3).resize((600, 450)), (500, 300))
    [hit] = await search(api, canvas, same_picture=1)
    assert hit["contsign"] == library[3]
    assert near(hit["region"]["stored"], (0, 0, *SIZE), slack=20)
    assert near(hit["region"]["query"], (500, 300, 1100, 750), slack=20)


async def test_a_mirrored_crop_is_boxed_in_the_stored_pictures_own_orientation(api, library):
    query = ImageOps.mirror(original(1).crop(CROP))
    [hit] = await search(api, query, same_picture=1)
    assert near(hit["region"]["stored"], CROP)
    assert near(hit["region"]["query"], (0, 0, *query.size), slack=6)


async def test_the_query_box_is_in_the_pixels_of_the_image_sent_with_a_region(api, library):
    """A search with ``region`` looks for that part of the image; the box says where in the whole
    image the match is."""
    canvas = Image.new("RGB", (1200, 900), (30, 30, 30))
    canvas.paste(original(2).crop(CROP), (600, 400))
    canvas.paste(original(3).crop(CROP), (0, 0))  # another picture beside it, outside the region
    region = {"x": 600, "y": 400, "w": 480, "h": 420}
    [hit] = await search(api, canvas, same_picture=1, region=region)
    assert near(hit["region"]["stored"], CROP)
    assert near(hit["region"]["query"], (600, 400, 1080, 820))


async def test_promoted_copies_carry_their_region_and_the_others_none(api, library):
    body = await api(
        f"{R}/search",
        appid="lib",
        image=b64(encode(original(2).crop(CROP))),
        promote_same_picture=1,
        rn=3,
    )
    assert body["err_no"] == 0 and body["ranking"] == "reranked", body
    first, *others = body["data_items"]
    assert first["contsign"] == library[2] and first["same_picture"] == 1
    assert near(first["region"]["stored"], CROP)
    assert all("region" not in hit and "same_picture" not in hit for hit in others)


async def test_a_plain_search_has_no_region(api, library):
    hits = await search(api, original(2).crop(CROP))
    assert hits and all("region" not in hit for hit in hits)


async def test_a_client_that_ignores_unknown_fields_reads_the_same_hits(client, api, library):
    """The field is an extension: the project's own spec client parses the answer as before."""
    body = await api(f"{R}/search", appid="lib", image=b64(encode(original(2).crop(CROP))), same_picture=1)
    [hit] = search_result(body)
    assert hit.contsign.to_json() == library[2] and hit.brief == b"item-2"
    assert hit.region is not None and near(list(hit.region.stored), CROP)  # the project's client reads it
    [shown] = body["data_items"]
    assert set(shown) == {"contsign", "features", "score", "region"}
    assert shown["region"]["stored_size"] == list(SIZE) and shown["region"]["query_size"] == [480, 420]


def test_features_keep_the_originals_size_and_old_rows_still_parse():
    features = extract(original(1))
    sized = LocalFeatures(features.width, features.height, features.points, features.descriptors, SIZE)
    again = LocalFeatures.from_bytes(sized.to_bytes())
    assert again.original == SIZE and (again.descriptors == features.descriptors).all()
    old = LocalFeatures.from_bytes(features.to_bytes())  # version 1, as rows stored before
    assert old.original is None and len(old) == len(features)
    assert len(sized.to_bytes()) == len(features.to_bytes()) + 8


async def test_the_duplicates_view_boxes_each_extra_in_its_kept_item(client, api, library):
    await add(api, original(2).crop(CROP), "crop-of-2")
    started = await (await client.post("/api/libraries/lib/duplicates", json={"min_score": 0})).json()
    scan = started["scan"]
    while scan["status"] == "running":
        await asyncio.sleep(0.1)
        scan = (await (await client.get(f"/api/libraries/lib/duplicates/{scan['id']}")).json())["scan"]
    [group] = scan["groups"]
    [extra] = group["extras"]
    assert (group["keep"]["brief_text"], extra["brief_text"]) == ("item-2", "crop-of-2")
    width, height = CROP[2] - CROP[0], CROP[3] - CROP[1]
    assert near(extra["region"]["kept"], CROP)
    assert near(extra["region"]["extra"], (0, 0, width, height), slack=6)
    assert "region" not in group["keep"]


async def test_boxes_are_in_the_pixels_a_viewer_sees_after_exif_rotation(api, library):
    """A phone photo stores its pixels sideways with an EXIF orientation: the boxes are in the
    picture as shown (the daemon turns it upright, as viewers do), not in the stored pixels."""
    upright = original(2).crop(CROP)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=90, exif=exif)
    body = await api(f"{R}/search", appid="lib", image=b64(buffer.getvalue()), same_picture=1)
    [hit] = body["data_items"]
    assert hit["region"]["query_size"] == list(upright.size)
    assert near(hit["region"]["stored"], CROP)
    assert near(hit["region"]["query"], (0, 0, *upright.size), slack=6)
