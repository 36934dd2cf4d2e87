"""Search's ``same_picture`` extension on the real app: edited copies are the same picture,
look-alikes are not, old items without local features fall back to a strict score."""

from __future__ import annotations

import asyncio
import io
import random
import sqlite3

import numpy as np
import pytest
from conftest import b64, brief
from images import encode, photo_like, picture, stripes
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from same_search.contsign import ContSign
from same_search.store.database import SCHEMA_VERSION
from same_search.store.db import Store
from same_search.verify import decision
from same_search.verify.local_features import LocalFeatures, extract, extract_query, extract_stored
from same_search.verify.matching import Evidence

R = "/RTSAsService"
SIZE = (480, 360)


def original(seed: int) -> Image.Image:
    return picture(seed, SIZE)


def overlay(image: Image.Image) -> Image.Image:
    out = image.copy()
    ImageDraw.Draw(out).rectangle((0, 0, image.width // 2, image.height // 3), fill=(250, 20, 20))
    return out


def jpeg_q(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


#: The edits users make; every one must still be judged the same picture.
EDITS = {
    "crop": lambda im: im.crop((90, 60, 410, 300)),
    "resize": lambda im: im.resize((im.width // 3, im.height // 3), Image.Resampling.BILINEAR),
    "jpeg30": lambda im: jpeg_q(im, 30),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "rotation": lambda im: im.rotate(15, Image.Resampling.BILINEAR),
    "overlay": overlay,
    "mirror": ImageOps.mirror,
}


def scene(palette: int, layout: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """A synthetic 'photo': colours and shapes from ``palette``, their positions from ``layout``.

    Two layouts of one palette are two photos of a similar scene: alike to a global descriptor,
    never the same picture.
    """
    colours, places = random.Random(palette), random.Random(layout * 7919 + 1)
    width, height = size
    top, bottom = (tuple(colours.randrange(256) for _ in range(3)) for _ in range(2))
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / (height - 1)
        draw.line(
            [(0, y), (width, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        )
    for _ in range(12):
        colour = tuple(colours.randrange(256) for _ in range(3))
        shape = colours.choice(("rect", "ellipse", "poly"))
        x0, y0 = places.randrange(width - 40), places.randrange(height - 40)
        x1, y1 = x0 + places.randrange(30, width // 3), y0 + places.randrange(30, height // 3)
        if shape == "rect":
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif shape == "ellipse":
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.polygon([(x0, y0), (x1, y0 + 10), ((x0 + x1) // 2, y1)], fill=colour)
    return image.filter(ImageFilter.SMOOTH)


async def add(api, image: Image.Image, text: str) -> str:
    data = encode(image)
    body = await api(f"{R}/add", appid="lib", image=b64(data), features=[brief(text)])
    assert body["err_no"] == 0, body
    return ContSign.of_image(data).to_json()


async def search(api, image: Image.Image, **extra) -> list[dict]:
    body = await api(f"{R}/search", appid="lib", image=b64(encode(image)), **extra)
    assert body["err_no"] == 0, body
    return body["data_items"]


@pytest.fixture
async def library(api) -> dict[int, str]:
    """A library of five synthetic pictures; seed -> contsign."""
    assert (await api(f"{R}/signup", appid="lib"))["err_no"] == 0
    return {seed: await add(api, original(seed), f"item-{seed}") for seed in range(1, 6)}


@pytest.mark.parametrize("edit", list(EDITS))
async def test_an_edited_copy_is_the_same_picture(api, library, edit):
    hits = await search(api, EDITS[edit](original(3)), same_picture=1)
    assert [hit["contsign"] for hit in hits] == [library[3]]


async def test_a_look_alike_is_not_the_same_picture(api, library):
    stored = await add(api, scene(50, 1), "scene")
    query = scene(50, 2)
    ranked = await search(api, query)
    assert ranked[0]["contsign"] == stored  # the descriptor finds it alike ...
    assert await search(api, query, same_picture=1) == []  # ... but it is another picture


def dim_photo(seed: int) -> Image.Image:
    """A dull, hazy photo: detail at every scale, at 40% of the contrast. Its blurred or shrunk
    copies keep few keypoints above SIFT's usual contrast threshold."""
    return ImageEnhance.Contrast(photo_like(seed)).enhance(0.4)


def small_jpeg_crop(image: Image.Image, seed: int) -> Image.Image:
    """A random 40% crop shrunk to a quarter of its side (its short side kept at 64 px), at JPEG 50."""
    rng = random.Random(seed)
    side = 0.4**0.5
    width, height = round(image.width * side), round(image.height * side)
    left, top = rng.randrange(image.width - width), rng.randrange(image.height - height)
    crop = image.crop((left, top, left + width, top + height))
    shrink = max(0.25, 64 / min(crop.size))
    small = crop.resize((round(crop.width * shrink), round(crop.height * shrink)), Image.Resampling.BILINEAR)
    return jpeg_q(small, 50)


@pytest.mark.parametrize("seed", [3, 5, 8])
async def test_a_blurred_copy_is_the_same_picture(api, library, seed):
    """Blur radius 4 leaves a dim photo few strong keypoints: the query side admits fainter ones."""
    photo = dim_photo(seed)
    stored = await add(api, photo, "dim photo")
    hits = await search(api, photo.filter(ImageFilter.GaussianBlur(4)), same_picture=1)
    assert [hit["contsign"] for hit in hits] == [stored]


@pytest.mark.parametrize("seed", [5, 6, 11])
async def test_a_small_jpeg_crop_is_the_same_picture(api, library, seed):
    photo = dim_photo(seed)
    stored = await add(api, photo, "dim photo")
    query = small_jpeg_crop(photo, seed)
    assert min(query.size) == 64
    hits = await search(api, query, same_picture=1)
    assert [hit["contsign"] for hit in hits] == [stored]


async def test_two_striped_pictures_are_not_the_same_picture(api, library):
    """Two photos of one striped fabric: alike to the descriptor, stripes matching stripes
    anywhere along them, yet another picture."""
    stored = await add(api, stripes(7, shot=0), "stripes")
    query = stripes(7, shot=1)
    ranked = await search(api, query)
    assert ranked[0]["contsign"] == stored
    assert await search(api, query, same_picture=1) == []
    other = await add(api, stripes(8, shot=0), "other stripes")
    assert other != stored and await search(api, stripes(8, shot=1), same_picture=1) == []


def test_few_matches_that_nearly_all_agree_are_the_same_picture():
    """The inlier-ratio tier: 9 keypoints agreeing out of 10 matches is a clean geometry (a
    blurred copy), 9 out of 30 is chance among many matches (a look-alike); neither needs the
    descriptor score, and a cluster in one patch never suffices."""
    assert decision.is_same_picture(0.5, Evidence(matches=10, inliers=9, coverage=0.2, scale=1.0))
    assert not decision.is_same_picture(0.5, Evidence(matches=30, inliers=9, coverage=0.2, scale=1.0))
    assert not decision.is_same_picture(0.5, Evidence(matches=10, inliers=9, coverage=0.03, scale=1.0))
    assert not decision.is_same_picture(0.5, Evidence(matches=7, inliers=7, coverage=0.3, scale=1.0))
    assert decision.is_same_picture(0.85, Evidence(matches=30, inliers=9, coverage=0.2, scale=1.0))


async def test_same_picture_filters_hits_and_keeps_their_score(api, library):
    query = EDITS["crop"](original(2))
    plain = await search(api, query, rn=10)
    assert len(plain) == 5
    judged = await search(api, query, same_picture=1, rn=10)
    assert [hit["contsign"] for hit in judged] == [library[2]]
    assert judged[0]["score"] == next(hit["score"] for hit in plain if hit["contsign"] == library[2])
    assert judged[0]["features"][0]["fea_data"] == b64(b"item-2")
    assert await search(api, query, same_picture=0, rn=10) == plain


async def test_same_picture_by_contsign_and_paging(api, library):
    copy = await add(api, EDITS["jpeg30"](original(4)), "copy-of-4")
    by_contsign = await api(f"{R}/search", appid="lib", contsign=library[4], same_picture=1)
    assert by_contsign["err_no"] == 0, by_contsign
    assert [hit["contsign"] for hit in by_contsign["data_items"]] == [library[4], copy]
    first = await api(f"{R}/search", appid="lib", image=b64(encode(original(4))), same_picture=1, rn=1)
    assert [hit["contsign"] for hit in first["data_items"]] == [library[4]] and first["has_more"] == 1
    second = await api(f"{R}/search", appid="lib", image=b64(encode(original(4))), same_picture=1, pn=1, rn=1)
    assert [hit["contsign"] for hit in second["data_items"]] == [copy] and second["has_more"] == 0


@pytest.mark.parametrize("bad", [2, -1, "1", True, 0.5])
async def test_same_picture_must_be_0_or_1(api, library, bad):
    body = await api(f"{R}/search", appid="lib", image=b64(encode(original(1))), same_picture=bad)
    assert body["err_no"] == 1 and "same_picture" in body["err_msg"]


async def test_items_without_local_features_fall_back_to_a_strict_score(api, library, config):
    """Items stored before local features existed (schema 1) have none: only a score of at
    least the fallback threshold says 'same picture' for them."""
    with sqlite3.connect(config.data_path / "same_search.sqlite3") as db:
        db.execute("DELETE FROM local_features")
    edited = EDITS["crop"](original(2))
    plain = await search(api, edited)
    assert plain[0]["contsign"] == library[2] and plain[0]["score"] < decision.FALLBACK_SCORE
    assert await search(api, edited, same_picture=1) == []
    identical = await search(api, original(2), same_picture=1)
    assert [hit["contsign"] for hit in identical] == [library[2]]
    # New adds get local features again and are verified as usual.
    again = await add(api, original(12), "new")
    assert [hit["contsign"] for hit in await search(api, EDITS["crop"](original(12)), same_picture=1)] == [
        again
    ]


async def test_a_database_without_local_features_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    store = Store(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:  # what a database written before version 3 looks like
        db.execute("DROP TABLE local_features")
        for statement in (  # nor what versions 4 (projections), 5 (originals, re-embeds), 6-10 added
            "DROP TABLE projections",
            "DROP INDEX items_by_original",
            "ALTER TABLE items DROP COLUMN original",
            "DROP TABLE originals",
            "DROP TABLE reembed_jobs",
            "DROP TABLE reembed_vectors",
            "ALTER TABLE libraries DROP COLUMN query_expansion",
            "ALTER TABLE libraries DROP COLUMN promote_same_picture",
            "ALTER TABLE jobs DROP COLUMN updated",
            "ALTER TABLE jobs DROP COLUMN removed",
            "ALTER TABLE jobs DROP COLUMN remove_missing",
            "DROP TABLE index_tuning",
            "DROP TABLE sync_schedules",
            "DROP TABLE learned_spaces",
        ):
            db.execute(statement)
        db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    store = Store(path)
    await store.open()
    try:
        assert await store.local_features(1, [1, 2]) == {}
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )


def test_local_features_round_trip_and_refuse_garbage():
    features = extract(original(1))
    assert 20 <= len(features) <= 300
    again = LocalFeatures.from_bytes(features.to_bytes())
    assert (again.descriptors == features.descriptors).all()
    assert abs(again.points - features.points).max() < 0.25  # float16 positions
    for garbage in (b"", b"\x07" + features.to_bytes()[1:], features.to_bytes()[:-1]):
        with pytest.raises(ValueError):
            LocalFeatures.from_bytes(garbage)


def test_mirrored_features_equal_a_fresh_extraction_of_the_mirror_image():
    """The mirror check permutes stored descriptors instead of extracting again: the result is
    what extracting from the mirror image gives (a few keypoints differ where orientation
    assignment is a near tie)."""
    image = original(2)
    permuted, fresh = extract(image).mirrored(), extract(ImageOps.mirror(image))
    differences = []
    for point, descriptor in zip(permuted.points, permuted.descriptors, strict=True):
        # SIFT may put several keypoints (orientations) on one spot: compare with the closest.
        here = np.hypot(*(fresh.points - point).T) < 0.2
        if here.any():
            others = fresh.descriptors[here].astype(float)
            distance = np.linalg.norm(others - descriptor.astype(float), axis=1) / np.linalg.norm(
                others, axis=1
            )
            differences.append(distance.min())
    assert len(differences) >= 0.6 * len(fresh)  # the same keypoints, found at mirrored places
    # Nearly all descriptors agree to a few percent (a ratio-test match needs far less).
    assert np.mean(np.array(differences) < 0.1) >= 0.9


async def test_the_near_duplicate_policy_uses_the_same_decision(api, library):
    """Under ``reject`` with no score floor, an edited copy is refused and a look-alike stored."""
    stored = await add(api, scene(60, 1), "scene")
    look_alike = encode(scene(60, 2))
    body = await api(
        f"{R}/add",
        appid="lib",
        image=b64(look_alike),
        features=[brief("alike")],
        dup_policy="reject",
        dup_min_score=0,
    )
    assert body["err_no"] == 0, body
    copy = encode(EDITS["crop"](scene(60, 1)))
    body = await api(
        f"{R}/add",
        appid="lib",
        image=b64(copy),
        features=[brief("copy")],
        dup_policy="reject",
        dup_min_score=0,
    )
    assert body["err_no"] == 101 and [hit["contsign"] for hit in body["data_items"]] == [stored]


async def test_the_duplicates_view_uses_the_same_decision(client, api, library):
    """A scan with no score floor groups the edited copy with its original, never the look-alike."""
    await add(api, scene(70, 1), "scene")
    await add(api, scene(70, 2), "look-alike")
    await add(api, EDITS["crop"](scene(70, 1)), "copy")
    started = await (await client.post("/api/libraries/lib/duplicates", json={"min_score": 0})).json()
    assert started["err_no"] == 0, started
    scan = started["scan"]
    while scan["status"] == "running":
        await asyncio.sleep(0.1)
        scan = (await (await client.get(f"/api/libraries/lib/duplicates/{scan['id']}")).json())["scan"]
    groups = [(g["keep"]["brief_text"], [e["brief_text"] for e in g["extras"]]) for g in scan["groups"]]
    assert groups == [("scene", ["copy"])]


async def test_unreadable_stored_features_are_judged_by_score_alone(api, library, config):
    with sqlite3.connect(config.data_path / "same_search.sqlite3") as db:
        db.execute("UPDATE local_features SET data = x'07'")
    assert await search(api, EDITS["crop"](original(2)), same_picture=1) == []
    assert [hit["contsign"] for hit in await search(api, original(2), same_picture=1)] == [library[2]]


async def test_a_bad_image_is_still_err_100_under_same_picture(api, library):
    body = await api(f"{R}/search", appid="lib", image=b64(b"not an image"), same_picture=1)
    assert body["err_no"] == 100


def test_unreadable_stored_features_as_a_query_fall_back_to_the_score():
    """Search by contsign with same_picture: a stored row whose features do not parse (corrupt, or
    an older format) is treated like an item without features, never an internal error."""
    from same_search.verify.service import SamePictureService

    assert SamePictureService.stored_query(b"not local features") is None
    assert SamePictureService.stored_query(None) is None


def test_queries_admit_fainter_keypoints_and_the_stored_form_is_unchanged():
    """Only the query side looks harder: a picture with 300 strong keypoints is described alike
    both ways, a blurred dim one gets many more keypoints as a query; stored bytes keep format 1."""
    sharp = photo_like(1)
    stored, query = extract(sharp), extract_query(sharp)
    assert len(stored) == len(query) == 300
    assert {tuple(p) for p in stored.points.round(1)} == {tuple(p) for p in query.points.round(1)}
    blurred = dim_photo(3).filter(ImageFilter.GaussianBlur(4))
    assert len(extract_query(blurred)) >= 3 * max(1, len(extract(blurred)))
    assert stored.to_bytes()[0] == 1


async def test_a_strongly_blurred_copy_is_found_by_its_coarse_keypoints(api, library):
    """Blur radius 8 leaves a copy none of its original's working keypoints (no check of them
    could confirm it), but at 64 pixels the blur is gone: the coarse keypoints confirm it, and
    the region is told in the pictures' own pixels."""
    from same_search.verify import matching

    blurred = original(3).filter(ImageFilter.GaussianBlur(8))
    working = matching.best_evidence(extract_query(blurred), extract_stored(original(3)))
    assert working.inliers < decision.WEAK_INLIERS
    hits = await search(api, blurred, same_picture=1)
    assert [hit["contsign"] for hit in hits] == [library[3]]
    for box in (hits[0]["region"]["query"], hits[0]["region"]["stored"]):
        assert box == pytest.approx([0, 0, *SIZE], abs=24)


async def test_blurred_look_alikes_are_not_the_same_picture_by_their_coarse_keypoints(api, library):
    """Two photos of one scene, both blurred: alike at 64 pixels too, yet another picture."""
    await add(api, scene(50, 1), "scene")
    query = scene(50, 2).filter(ImageFilter.GaussianBlur(8))
    assert await search(api, query, same_picture=1) == []


def test_coarse_keypoints_round_trip_and_older_rows_keep_parsing():
    """Version 3 carries the coarse keypoints after the working ones (with the original's size,
    or 0 x 0 for unknown); versions 1 and 2 parse as before, without coarse keypoints."""
    import dataclasses

    features = extract_stored(original(1))
    assert features.coarse is not None and len(features.coarse) >= 8
    assert max(features.coarse.width, features.coarse.height) == 64
    for original_size in (None, (640, 480)):
        stored = dataclasses.replace(features, original=original_size).to_bytes()
        assert stored[0] == 3
        again = LocalFeatures.from_bytes(stored)
        assert again.original == original_size and again.coarse is not None
        assert (again.coarse.descriptors == features.coarse.descriptors).all()
        assert (again.descriptors == features.descriptors).all()
        with pytest.raises(ValueError):
            LocalFeatures.from_bytes(stored[:-1])
    older = LocalFeatures(features.width, features.height, features.points, features.descriptors)
    assert older.to_bytes()[0] == 1 and LocalFeatures.from_bytes(older.to_bytes()).coarse is None
    sized = dataclasses.replace(older, original=(640, 480)).to_bytes()
    assert sized[0] == 2 and LocalFeatures.from_bytes(sized).coarse is None


def test_the_largest_stored_form_fits_a_milvus_field():
    """Milvus keeps local features in a VARCHAR, base64-encoded: the largest stored form (every
    working and coarse keypoint) fits, so no item loses its features on that backend."""
    from same_search.backends.milvus.schema import MAX_VARCHAR
    from same_search.verify import local_features

    assert 4 * -(-local_features.MAX_STORED_BYTES // 3) <= MAX_VARCHAR
