"""Product-image references stay confined: image roots for files, allow-listed public https hosts
for URLs; `synthcat validate` refuses every other reference with exit 2, naming row and reason."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from PIL import Image
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import ImageSources
from pipeline.errors import BadInputError
from pipeline.references import ImageReferences

PUBLIC = "93.184.215.14"


@pytest.fixture
def tree(tmp_path) -> Path:
    """catalog/ (the manifest's folder) with images, a shared folder, and a secret outside both."""
    (tmp_path / "catalog" / "images").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    for path in (tmp_path / "catalog" / "images" / "mug.png", tmp_path / "shared" / "tee.png"):
        cutout = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # a real cut-out: ingest opens it
        cutout.paste((200, 30, 30, 255), (2, 2, 6, 6))  # the product, transparent around it
        cutout.save(path)
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", tmp_path / "catalog" / "images" / "escape.png")
    os.symlink(tmp_path / "catalog" / "images" / "mug.png", tmp_path / "catalog" / "alias.png")
    os.symlink(tmp_path / "catalog" / "loop.png", tmp_path / "catalog" / "loop.png")  # a link to itself
    return tmp_path


def references(tree: Path, resolver=None, **sources) -> ImageReferences:
    fake = resolver or (lambda host, port: {"cdn.example.com": [PUBLIC], "a.img.example.com": [PUBLIC],
                                            "internal.example.com": ["10.0.0.7"],
                                            "metadata.example.com": ["169.254.169.254"],
                                            "mixed.example.com": [PUBLIC, "127.0.0.1"],
                                            "v6.example.com": ["::ffff:127.0.0.1"]}[host])
    return ImageReferences(ImageSources(**sources), tree / "catalog", resolver=fake)


def test_a_symlink_loop_among_the_roots_names_the_setting(tree):
    os.symlink(tree / "catalog" / "looping", tree / "catalog" / "looping")
    with pytest.raises(BadInputError, match="images.roots"):
        references(tree, roots=("looping",))


def test_local_paths_under_the_roots_are_resolved(tree):
    refs = references(tree, roots=("../shared",))
    assert refs.check("images/mug.png") == str(tree / "catalog" / "images" / "mug.png")
    assert refs.check("alias.png") == str(tree / "catalog" / "images" / "mug.png")  # a link inside a root
    assert refs.check(str(tree / "shared" / "tee.png")) == str(tree / "shared" / "tee.png")


@pytest.mark.parametrize("reference, reason", [
    ("../secret.txt", "'..' is not allowed"),
    ("images/../../secret.txt", "'..' is not allowed"),
    ("{tree}/secret.txt", "outside the image roots"),
    ("/etc/passwd", "outside the image roots"),
    ("images/escape.png", "resolves to"),  # a symlink out of the root
    ("images/none.png", "image file not found"),
    ("images", "image file not found"),
    ("[" * 5000, "not a usable image path"),  # a name the file system refuses (ENAMETOOLONG)
    ("loop.png", "not a usable image path"),  # a symlink loop (RuntimeError, not OSError, before 3.13)
    ("C:\\images\\mug.png", "Windows drive"),
    ("images\\mug.png", "backslashes"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("http://cdn.example.com/mug.png", "scheme 'http' is not allowed"),
    ("s3://bucket/mug.png", "scheme 's3' is not allowed"),
    ("https://cdn.example.com/mug.png", "image URLs are not allowed"),
])
def test_references_out_of_bounds_are_refused(tree, reference, reason):
    with pytest.raises(ValueError, match=reason):
        references(tree).check(reference.format(tree=tree))


@pytest.mark.parametrize("reference, reason", [
    ("https://cdn.example.com/mug.png", None),
    ("https://a.img.example.com/mug.png", None),
    ("https://img.example.com/mug.png", "not in images.allowed_hosts"),      # the wildcard's apex
    ("https://evil-example.com/mug.png", "not in images.allowed_hosts"),
    ("https://cdn.example.com.evil.net/mug.png", "not in images.allowed_hosts"),
    ("https://user:pw@cdn.example.com/mug.png", "credentials"),
    ("http://cdn.example.com/mug.png", "scheme 'http' is not allowed"),
    ("https://internal.example.com/x.png", "10.0.0.7, a private address"),
    ("https://metadata.example.com/latest", "169.254.169.254, a link-local address"),
    ("https://mixed.example.com/x.png", "127.0.0.1, a loopback address"),  # every address counts
    ("https://v6.example.com/x.png", "loopback"),
    ("https://cdn.example.com:99999/x.png", "not a valid URL"),
])
def test_urls_only_to_allowed_public_https_hosts(tree, reference, reason):
    refs = references(tree, allow_urls=True, allowed_hosts=(
        "cdn.example.com", "*.img.example.com", "internal.example.com", "metadata.example.com",
        "mixed.example.com", "v6.example.com"))
    if reason is None:
        assert refs.check(reference) == reference
    else:
        with pytest.raises(ValueError, match=reason):
            refs.check(reference)


@pytest.mark.parametrize("host, reason", [("127.0.0.1", "loopback"), ("localhost", "loopback"),
                                          ("10.1.2.3", "private"), ("169.254.169.254", "link-local"),
                                          ("[::1]", "loopback"), ("no-such-host.invalid", "cannot be resolved")])
def test_real_resolution_refuses_internal_hosts_even_when_listed(tree, host, reason):
    refs = ImageReferences(ImageSources(allow_urls=True, allowed_hosts=(host.strip("[]"),)), tree / "catalog")
    with pytest.raises(ValueError, match=reason):
        refs.check(f"https://{host}/x.png")


SEGMENT = st.sampled_from(["images", "mug.png", "escape.png", "..", ".", "", "alias.png", "secret.txt",
                           "catalog", "shared", "tee.png", "%2e%2e", "~", "\u2024\u2024"])


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(parts=st.lists(SEGMENT, min_size=1, max_size=5), absolute=st.booleans())
def test_whatever_the_path_an_accepted_one_is_a_file_under_a_root(tmp_path_factory, parts, absolute):
    tree = tmp_path_factory.getbasetemp() / "reference-tree"
    if not tree.exists():
        tree.mkdir()
        (tree / "catalog" / "images").mkdir(parents=True)
        (tree / "catalog" / "images" / "mug.png").write_bytes(b"png")
        (tree / "secret.txt").write_text("secret")
        os.symlink(tree / "secret.txt", tree / "catalog" / "images" / "escape.png")
    reference = ("/" if absolute else "") + "/".join(parts)
    refs = references(tree)
    try:
        resolved = Path(refs.check(reference))
    except ValueError:
        return
    assert resolved.is_file() and resolved.resolve().is_relative_to(tree / "catalog")


def test_validate_refuses_bad_references_with_exit_2_naming_row_and_reason(tree, capsys):
    manifest = tree / "catalog" / "catalog.csv"
    rows = [("OK-1", "images/mug.png"), ("BAD-1", "../secret.txt"), ("BAD-2", "images/escape.png"),
            ("BAD-3", str(tree / "secret.txt")), ("BAD-4", "http://169.254.169.254/latest/meta-data"),
            ("BAD-5", "https://127.0.0.1/x.png")]
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "category", "image"])
        writer.writerows([(sku, "Mug", "mug", image) for sku, image in rows])
    config = tree / "job.yaml"
    config.write_text("images: {allow_urls: true, allowed_hosts: ['127.0.0.1']}\n")
    assert main(["validate", str(manifest), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    for line, reason in [(3, "'..' is not allowed"), (4, "resolves to"), (5, "outside the image roots"),
                         (6, "scheme 'http' is not allowed"), (7, "loopback")]:
        assert f"{manifest}: line {line}, field 'image': " in err and reason in err, (line, err)
    assert "line 2," not in err and "5 of 6 rows are bad" in err and "Traceback" not in err
