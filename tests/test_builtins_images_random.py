"""The image-folder and random-number builtins, called directly on real files and generators."""

from pathlib import Path

import numpy as np
import pytest
from dioptra_builtins.data.images import describe, make_sample_images, resize, rotate
from dioptra_builtins.random.rng import init_rng
from dioptra_builtins.random.sample import draw_random_integer
from PIL import Image


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    return Path(make_sample_images(str(tmp_path / "samples"), count=4, size=[40, 30], seed=1))


def _sizes_and_formats(folder: str | Path) -> dict[str, tuple[tuple[int, int], str | None]]:
    found = {}
    for path in sorted(Path(folder).iterdir()):
        with Image.open(path) as image:
            found[path.name] = (image.size, image.format)
    return found


def test_sample_images_are_real_png_and_jpeg_files_of_the_given_size(samples: Path) -> None:
    assert _sizes_and_formats(samples) == {
        "sample-000.png": ((40, 30), "PNG"),
        "sample-001.jpg": ((40, 30), "JPEG"),
        "sample-002.png": ((40, 30), "PNG"),
        "sample-003.jpg": ((40, 30), "JPEG"),
    }


def test_sample_images_are_the_same_for_the_same_seed(tmp_path: Path, samples: Path) -> None:
    again = Path(make_sample_images(str(tmp_path / "again"), count=1, size=[40, 30], seed=1))
    other = Path(make_sample_images(str(tmp_path / "other"), count=1, size=[40, 30], seed=2))
    pixels = [np.asarray(Image.open(f / "sample-000.png")) for f in (samples, again, other)]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_resize_writes_every_image_at_the_requested_size_keeping_names_and_formats(
    tmp_path: Path, samples: Path
) -> None:
    output = resize(str(samples), image_size=[28, 20], output_dir=str(tmp_path / "resized"))
    assert output == str(tmp_path / "resized")
    resized = _sizes_and_formats(output)
    assert {name: size for name, (size, _) in resized.items()} == dict.fromkeys(
        _sizes_and_formats(samples), (28, 20)
    )
    assert [fmt for _, fmt in resized.values()] == ["PNG", "JPEG", "PNG", "JPEG"]
    assert all(size == (40, 30) for size, _ in _sizes_and_formats(samples).values())


def test_resize_without_an_output_dir_writes_to_a_new_temporary_folder(samples: Path) -> None:
    output = Path(resize(str(samples), image_size=[8, 8]))
    try:
        assert output != samples and output.name.startswith("dioptra-resized-")
        assert len(list(output.iterdir())) == 4
    finally:
        for path in output.iterdir():
            path.unlink()
        output.rmdir()


@pytest.mark.parametrize("image_size", [[28], [28, 0], [28, 2.5], ["a", "b"], "28x28", 28])
def test_resize_rejects_an_image_size_that_is_not_two_positive_integers(
    samples: Path, image_size: object
) -> None:
    with pytest.raises(ValueError, match="image_size"):
        resize(str(samples), image_size=image_size)  # type: ignore[arg-type]


def test_resize_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*nowhere"):
        resize(str(tmp_path / "nowhere"), image_size=[8, 8])


def test_resize_refuses_a_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="no PNG or JPEG images in"):
        resize(str(tmp_path), image_size=[8, 8])


def test_rotate_turns_resize_output_a_quarter_counter_clockwise(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    image = Image.new("L", (4, 4), 0)
    image.putpixel((3, 0), 255)  # top-right corner
    image.save(source / "corner.png")
    resized = resize(str(source), image_size=[4, 4], output_dir=str(tmp_path / "resized"))
    rotated = rotate(resized, image_size=[4, 4], output_dir=str(tmp_path / "rotated"))
    with Image.open(Path(rotated) / "corner.png") as result:
        assert result.size == (4, 4)
        assert result.getpixel((0, 0)) == 255  # top-right turns to top-left
        assert result.getpixel((3, 0)) == 0


def test_rotate_keeps_the_requested_size_for_a_non_square_image(
    tmp_path: Path, samples: Path
) -> None:
    rotated = rotate(str(samples), image_size=[40, 30], output_dir=str(tmp_path / "rotated"))
    assert {size for size, _ in _sizes_and_formats(rotated).values()} == {(40, 30)}


def test_rotate_accepts_a_list_of_image_paths(tmp_path: Path, samples: Path) -> None:
    paths = [str(samples / "sample-000.png"), str(samples / "sample-001.jpg")]
    rotated = rotate(paths, image_size=[16, 16], angle=45, output_dir=str(tmp_path / "out"))
    assert sorted(_sizes_and_formats(rotated)) == ["sample-000.png", "sample-001.jpg"]


def test_describe_summarises_a_folder_as_json_ready_values(samples: Path) -> None:
    assert describe(str(samples)) == {"count": 4, "sizes": [[40, 30]], "formats": ["JPEG", "PNG"]}


def test_init_rng_with_a_fixed_seed_is_reproducible() -> None:
    (seed_a, rng_a), (seed_b, rng_b) = init_rng(1234), init_rng(1234)
    assert seed_a == seed_b == 1234
    assert rng_a.integers(0, 10**9, size=5).tolist() == rng_b.integers(0, 10**9, size=5).tolist()


def test_init_rng_without_a_seed_reports_one_that_reproduces_the_stream() -> None:
    seed, rng = init_rng()
    assert seed >= 0
    _, replay = init_rng(seed)
    assert rng.random(3).tolist() == replay.random(3).tolist()


def test_draw_random_integer_returns_a_plain_int_within_the_bounds() -> None:
    _, rng = init_rng(0)
    draws = [draw_random_integer(rng, low=5, high=8) for _ in range(50)]
    assert {type(d) for d in draws} == {int}
    assert set(draws) == {5, 6, 7}


def test_draw_random_integer_is_reproducible_for_a_seed() -> None:
    assert draw_random_integer(init_rng(9)[1]) == draw_random_integer(init_rng(9)[1])


def test_draw_random_integer_rejects_an_empty_range() -> None:
    with pytest.raises(ValueError, match=r"high \(3\) must be greater than low \(3\)"):
        draw_random_integer(init_rng(0)[1], low=3, high=3)
