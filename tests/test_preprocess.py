"""tutorial_lib.preprocess on synthetic images with known answers and on real photos."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from skimage import data as skdata

import tutorial_lib.preprocess as tlp

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "HSV", "I", "F", "I;16", "I;16B", "LA", "La", "PA", "RGBa"]


def drawn_disc(size=(320, 240), centre=(170.0, 118.0), radius=100.0, seed=0) -> Image.Image:
    """A textured orange disc on a noisy black surround, like a fundus photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2
    image = rng.integers(0, 12, (h, w, 3)).astype(np.float64)  # sensor noise on black
    shade = 0.7 + 0.3 * np.cos((xx - centre[0]) / radius * 2)  # vignetting-like illumination
    disc = np.stack([200 * shade, 90 * shade, 40 * shade], axis=-1) + rng.normal(0, 8, (h, w, 3))
    image[inside] = disc[inside]
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def retina() -> Image.Image:
    return Image.fromarray(skdata.retina())


# --------------------------------------------------------------------------- disc finding


@pytest.mark.parametrize("size, centre, radius", [
    ((320, 240), (170.0, 118.0), 100.0),
    ((1200, 900), (610.0, 455.0), 400.0),  # larger than the working size: found on a shrunk copy
    ((96, 96), (47.5, 47.5), 44.0),
])
def test_drawn_disc_is_found_within_a_few_pixels(size, centre, radius):
    disc = tlp.find_disc(drawn_disc(size, centre, radius))
    assert disc is not None
    tolerance = max(2.0, 0.006 * max(size))  # about one working-resolution pixel
    assert abs(disc.x - centre[0]) <= tolerance and abs(disc.y - centre[1]) <= tolerance
    assert abs(disc.radius - radius) <= tolerance


def test_disc_on_a_white_surround_is_found():
    # some RetinaMNIST photos were padded with white, not black
    image = np.asarray(drawn_disc((120, 120), (60.0, 58.0), 50.0)).copy()
    yy, xx = np.mgrid[:120, :120]
    image[(xx - 60) ** 2 + (yy - 58) ** 2 > 50 ** 2] = 250
    disc = tlp.find_disc(image)
    assert disc is not None and abs(disc.x - 60) <= 2 and abs(disc.y - 58) <= 2 and abs(disc.radius - 50) <= 2


def test_disc_clipped_at_top_and_bottom_keeps_its_true_radius():
    # EyePACS-style: the circle is wider than the frame is tall
    disc = tlp.find_disc(drawn_disc((400, 260), (200.0, 130.0), 170.0))
    assert disc is not None
    assert abs(disc.radius - 170) <= 3 and abs(disc.x - 200) <= 3 and abs(disc.y - 130) <= 3


def test_real_fundus_photo(retina):
    disc = tlp.find_disc(retina)
    assert disc is not None
    assert abs(disc.x - 705) < 15 and abs(disc.y - 705) < 15 and 0.95 < disc.radius / 705 < 1.02
    crop = tlp.crop_to_disc(retina, disc, size=256)
    assert crop.size == (256, 256)
    again = tlp.find_disc(crop)  # the crop holds the disc centred, radius half the side
    assert again is not None and abs(again.x - 127.5) < 3 and abs(again.y - 127.5) < 3 and abs(again.radius - 128) < 4


def test_crop_rescales_to_a_common_radius():
    small = drawn_disc((200, 180), (90.0, 95.0), 60.0)
    large = drawn_disc((900, 700), (500.0, 330.0), 300.0)
    for image in (small, large):
        out = tlp.FundusCrop(size=128, margin=0.1)(image)
        disc = tlp.find_disc(out)
        assert out.size == (128, 128)
        assert abs(disc.radius - 128 / 2 / 1.1) < 3 and abs(disc.x - 63.5) < 3 and abs(disc.y - 63.5) < 3


def test_retinamnist_discs_are_found():
    import tutorial_lib as tl

    images = tl.data.load_dataset("retinamnist").train.images[:120]
    found = [tlp.find_disc(image) for image in images]
    assert sum(d is not None for d in found) >= 118
    assert all(abs(d.radius - 14) < 3 for d in found if d is not None)


@pytest.mark.parametrize("image", [
    Image.new("RGB", (200, 150), (120, 120, 120)),  # flat grey: no dark surround
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)),  # noise
    Image.new("RGB", (200, 150), (0, 0, 0)),  # black
])
def test_no_disc_falls_back_to_a_centre_crop_with_a_warning(image):
    assert tlp.find_disc(image) is None
    with pytest.warns(tlp.NoDiscFoundWarning, match="centre crop"):
        out = tlp.crop_to_disc(image, size=64)
    assert out.size == (64, 64)
    expected = image.crop((25, 0, 175, 150)).resize((64, 64), Image.BICUBIC)
    assert np.abs(np.asarray(out, float) - np.asarray(expected, float)).mean() < 3
    with pytest.raises(ValueError, match="No fundus disc"):
        tlp.crop_to_disc(image, fallback="error")


def test_clothing_photo_has_no_disc(clothing):
    photo = clothing.test.image(0)
    with pytest.warns(tlp.NoDiscFoundWarning):
        assert tlp.FundusCrop(size=48)(photo).size == (48, 48)


# --------------------------------------------------------------------------- normalisation


def test_ben_graham_flattens_illumination():
    ramp = np.linspace(40, 220, 200)[None, :, None].repeat(200, axis=0).repeat(3, axis=2)
    out = np.asarray(tlp.ben_graham(Image.fromarray(ramp.astype(np.uint8)), radius=100), float)
    assert np.abs(out[20:-20, 20:-20] - 128).max() <= 3  # a smooth gradient is removed entirely


def test_ben_graham_blur_scales_with_the_disc_not_the_image():
    image = drawn_disc((400, 400), (199.5, 199.5), 200.0)
    big = tlp.BenGraham()(image)  # radius 200 -> sigma 6.7 px
    small = tlp.BenGraham()(image.resize((100, 100), Image.LANCZOS))  # radius 50 -> sigma 1.7 px
    shrunk = np.asarray(big.resize((100, 100), Image.LANCZOS), float)
    fixed_sigma = tlp.ben_graham(image.resize((100, 100), Image.LANCZOS), radius=200)  # sigma not rescaled
    err_tied = np.abs(shrunk - np.asarray(small, float))[10:-10, 10:-10].mean()
    err_fixed = np.abs(shrunk - np.asarray(fixed_sigma, float))[10:-10, 10:-10].mean()
    assert err_tied < err_fixed


def test_ring_mask_and_clahe():
    image = drawn_disc((128, 128), (63.5, 63.5), 64.0)
    masked = np.asarray(tlp.RingMask(keep=0.9, fill=128)(image))
    assert (masked[0, 0] == 128).all() and (masked[63, 1] == 128).all()  # outside 0.9 R
    assert (masked[63, 63] == np.asarray(image)[63, 63]).all()  # centre untouched
    out = tlp.CLAHE()(image)
    assert out.size == image.size and out.mode == "RGB"


def test_fundus_pipeline_variants(retina):
    for normalise in ("ben_graham", "clahe", None):
        out = tlp.fundus_pipeline(96, normalise=normalise, margin=0.05)(retina)
        assert out.size == (96, 96) and out.mode == "RGB"
    with pytest.raises(ValueError, match="normalise"):
        tlp.fundus_pipeline(96, normalise="histogram")


# --------------------------------------------------------------------------- photos


def test_resize_pad_keeps_the_aspect_ratio():
    tall = Image.new("RGB", (50, 100), (250, 10, 10))
    out = np.asarray(tlp.ResizePad(64, fill=(0, 0, 255))(tall))
    assert out.shape == (64, 64, 3)
    assert (out[:, :14] == [0, 0, 255]).all() and (out[:, -14:] == [0, 0, 255]).all()  # side bars
    assert (out[:, 18:46, 0] > 200).all()  # the red content, 32 px wide, undistorted


def test_pad_colour_and_tensor_round_trip():
    config = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    assert tlp.pad_colour(config) == (124, 116, 104)
    image = drawn_disc((40, 30), (20.0, 15.0), 12.0)
    x = (torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255
         - torch.tensor(config["mean"])[:, None, None]) / torch.tensor(config["std"])[:, None, None]
    assert np.abs(np.asarray(tlp.tensor_to_image(x, config), int) - np.asarray(image, int)).max() <= 1


def test_backbone_preprocessing_after_our_transforms():
    from timm.data import create_transform

    backbone_transform = create_transform(input_size=(3, 64, 64), mean=(0.5,) * 3, std=(0.5,) * 3,
                                          interpolation="bicubic", crop_pct=1.0)
    pipeline = tlp.Compose((tlp.ToRGB(), tlp.ResizePad(64), backbone_transform))
    x = pipeline(Image.new("CMYK", (90, 40)))
    assert tuple(x.shape) == (3, 64, 64)


# --------------------------------------------------------------------------- augmentation


def test_augmentations_are_seeded_and_keep_the_disc():
    crop = tlp.FundusCrop(128)(drawn_disc())
    augment = tlp.fundus_augmentation()
    torch.manual_seed(0)
    first = [np.asarray(augment(crop)) for _ in range(4)]
    torch.manual_seed(0)
    second = [np.asarray(augment(crop)) for _ in range(4)]
    assert all((a == b).all() for a, b in zip(first, second))
    assert any((a != first[0]).any() for a in first[1:])
    for view in first:  # rotating a centred disc keeps it in the frame, centred
        disc = tlp.find_disc(view)
        assert disc is not None and abs(disc.x - 63.5) < 4 and abs(disc.y - 63.5) < 4


def test_clothing_augmentation_output_size(clothing):
    torch.manual_seed(0)
    out = tlp.clothing_pipeline(80, augment=True)(clothing.train.image(0))
    assert out.size == (80, 80) and out.mode == "RGB"


def test_exact_views():
    image = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3))
    assert (np.asarray(tlp.View("hflip")(image)) == np.asarray(image)[:, ::-1]).all()
    assert (np.asarray(tlp.View("vflip")(image)) == np.asarray(image)[::-1]).all()
    assert (np.asarray(tlp.View("rot90")(image)) == np.rot90(np.asarray(image))).all()
    assert tlp.View("identity")(image).size == image.size


def test_views_are_the_eight_symmetries_and_key_caches_by_name():
    image = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3))
    outputs = {np.asarray(tlp.View(name)(image)).tobytes() + bytes(tlp.View(name)(image).size) for name in tlp.VIEWS}
    assert len(outputs) == 8
    assert repr(tlp.View("hflip")) == "View('hflip')" and pickle.loads(pickle.dumps(tlp.View("rot90"))) == \
        tlp.View("rot90")
    with pytest.raises(ValueError, match="Unknown view 'flip'"):
        tlp.View("flip")


def test_disc_mask_is_what_the_ring_mask_keeps():
    image = Image.fromarray(np.full((30, 40, 3), 200, np.uint8))
    kept = (np.asarray(tlp.ring_mask(image, keep=0.8, fill=0)) > 0).all(axis=2)
    assert (kept == tlp.disc_mask((30, 40), 0.8)).all() and kept.sum() > 0 and not kept.all()
    assert (tlp.disc_mask((30, 40, 3), 1.0, radius=7.5) == tlp.disc_mask((30, 40), 0.5)).all()


# --------------------------------------------------------------------------- bad input


def _all_transforms():
    return [tlp.ToRGB(), tlp.Resize(32), tlp.ResizePad(32), tlp.FundusCrop(32), tlp.BenGraham(), tlp.RingMask(),
            tlp.CLAHE(), tlp.View("hflip"), tlp.View("rot90"), tlp.fundus_pipeline(32),
            tlp.fundus_pipeline(32, augment=True), tlp.fundus_pipeline(32, normalise="clahe"),
            tlp.clothing_pipeline(32, augment=True)]


def _synthetic(mode: str, size=(37, 23)) -> Image.Image:
    """A drawn disc in ``mode`` (16-bit modes hold 0..65535, as a scanner would write them)."""
    base = drawn_disc(size, (size[0] / 2, size[1] / 2), min(size) / 2.5)
    grey16 = np.asarray(base.convert("L"), dtype=np.uint16) * 257
    if mode == "I;16":
        return Image.fromarray(grey16)
    if mode == "I;16B":
        return Image.frombytes("I;16B", size, grey16.astype(">u2").tobytes())
    if mode in ("I", "F"):
        return base.convert("L").convert(mode)
    if mode in ("La", "PA", "RGBa"):
        return Image.new(mode, size)
    return base.convert("RGBA" if mode == "RGBA" else mode)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_goes_through_every_transform(mode):
    image = _synthetic(mode)
    assert image.mode == mode
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tlp.NoDiscFoundWarning)
        for transform in _all_transforms():
            out = transform(image)
            assert out.mode == "RGB", (mode, transform)


@pytest.mark.parametrize("array", [
    np.zeros((30, 20), np.uint8),
    (np.arange(600).reshape(30, 20) * 100).astype(np.uint16),
    np.random.default_rng(0).random((30, 20, 3)),
    np.random.default_rng(0).normal(size=(30, 20, 3)),
    np.ones((30, 20, 1), bool),
    np.full((30, 20, 4), 200, np.uint8),
    np.full((30, 20, 2), 7, np.int32),
])
def test_arrays_of_any_dtype_and_channels(array):
    rgb = tlp.as_rgb(array)
    assert rgb.mode == "RGB" and rgb.size == (20, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tlp.NoDiscFoundWarning)
        assert tlp.fundus_pipeline(24)(array).size == (24, 24)


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 2), (5000, 7)])
def test_extreme_sizes(size):
    image = Image.new("RGB", size, (90, 40, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tlp.NoDiscFoundWarning)
        for transform in _all_transforms():
            assert transform(image).mode == "RGB"


def test_empty_and_malformed_inputs_say_why():
    with pytest.raises(ValueError, match="Empty image"):
        tlp.as_rgb(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="Cannot read an array"):
        tlp.as_rgb(np.zeros((4, 4, 7)))


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    with Image.open(path) as opened:
        assert tlp.as_rgb(opened).size == (20, 60)
    assert tlp.as_rgb(path).size == (20, 60)


def test_transforms_pickle_and_have_full_reprs():
    pipeline = tlp.fundus_pipeline(64, margin=0.1)
    assert pickle.loads(pickle.dumps(pipeline)) == pipeline
    text = repr(pipeline)
    assert "FundusCrop(size=64, margin=0.1)" in text and "0x" not in text  # no memory addresses: a stable cache key


# --------------------------------------------------------------------------- photographs prepared once, pixels only


def _jpeg_with_personal_data(path, grade=1, seed=0):
    from conftest import write_fundus_photo

    exif = Image.Exif()
    exif[0x013B] = "Dr Jane Privatename"  # Artist
    exif[0x010E] = "patient 1234 DOB 1950-01-01"  # ImageDescription
    exif[0x0110] = "SecretCam 9000"  # Model
    return write_fundus_photo(path, (900, 600), grade, seed, exif=exif.tobytes(), comment=b"clinic comment xyz")


def test_prepared_photos_carry_no_exif_comment_or_file_name(tmp_path):
    import tutorial_lib.data as tld
    import tutorial_lib.plots as plots

    paths = [_jpeg_with_personal_data(tmp_path / "in" / f"Mrs_Confidential_{i}.jpg", i, i) for i in range(3)]
    with Image.open(paths[0]) as check:  # the test input really carries them
        assert "Privatename" in str(dict(check.getexif())) and check.info.get("comment") == b"clinic comment xyz"
    split = tld.ImageSplit(paths, np.array([0, 1, 2]))
    prepared = tlp.prepare_split(split, tlp.FundusCrop(64), 64, cache_dir=tmp_path / "cache")
    assert prepared.images.shape == (3, 64, 64, 3) and prepared.images.dtype == np.uint8
    plots.save_figure(plots.prediction_grid(prepared, np.array([0, 1, 2]), ["a", "b", "c"], n=3), "grid", tmp_path / "fig")
    written = list((tmp_path / "cache").iterdir()) + list((tmp_path / "fig").iterdir())
    assert len(written) == 3
    for path in written:
        data = path.read_bytes()
        assert "Confidential" not in path.name
        for secret in (b"Privatename", b"patient 1234", b"SecretCam", b"clinic comment", b"Confidential", b"Exif"):
            assert secret not in data, (path.name, secret)


def test_prepare_split_is_cached_and_counts_photos_without_a_disc(tmp_path, monkeypatch):
    import tutorial_lib.data as tld
    from conftest import write_fundus_photo

    paths = [write_fundus_photo(tmp_path / f"{i}.jpg", (800, 500), 1, i) for i in range(2)]
    paths.append(tmp_path / "grey.jpg")
    Image.new("RGB", (700, 500), (120, 120, 120)).save(paths[-1])
    split = tld.ImageSplit(paths, np.array([0, 1, 0]))
    with pytest.warns(tlp.NoDiscFoundWarning, match="no fundus disc found in 1 of 3 photographs"):
        first = tlp.prepare_split(split, tlp.FundusCrop(48), 48, cache_dir=tmp_path / "cache")
    centre = np.asarray(first.images[0], dtype=float)
    assert centre[24, 24].sum() > 3 * 60 and centre[1, 1].sum() < 30  # disc centred, black corner
    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached photo was decoded again")

    monkeypatch.setattr(tlp, "open_image", no_decoding)
    with pytest.warns(tlp.NoDiscFoundWarning, match="1 of 3"):  # the count comes back from the cache too
        again = tlp.prepare_split(split, tlp.FundusCrop(48), 48, cache_dir=tmp_path / "cache")
    assert np.array_equal(first.images, again.images)


def test_resolve_image_size_follows_the_data(tmp_path):
    import tutorial_lib.data as tld
    import tutorial_lib.models as tlm
    from conftest import write_fundus_photo

    backbone = tlm.load_backbone("efficientnet_lite0")
    small = tld.ImageSplit(np.zeros((4, 28, 28, 3), np.uint8), np.zeros(4, int))
    assert tlm.resolve_image_size("auto", small, backbone, small_size=96) == 96
    big = tld.ImageSplit([write_fundus_photo(tmp_path / f"{i}.jpg", (1300, 2000)) for i in range(2)], np.zeros(2, int))
    assert tlm.resolve_image_size("auto", big, backbone, small_size=96) == backbone.data_config["input_size"][-1] == 224
    assert tlm.resolve_image_size(0, big, backbone, small_size=96, profile_size=160) == 160
    assert tlm.resolve_image_size(128, big, backbone, small_size=96) == 128
    assert tlm.resolve_image_size("128", big, backbone, small_size=96) == 128  # papermill -p IMAGE_SIZE 128
    for bad in ("large", -1, 1.5):
        with pytest.raises(ValueError, match="IMAGE_SIZE must be"):
            tlm.resolve_image_size(bad, big, backbone, small_size=96)
