"""Unwrapping what clients wrap: compressed bodies within a limit, base64 images in their usual forms."""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest

from serving.body_codecs import BodyError, content_codings, image_from_base64, inflate

DATA = bytes(range(256)) * 40


def test_codings_in_order_less_identity_and_unknown_ones_refused() -> None:
    assert content_codings(None) == [] and content_codings("identity") == []
    assert content_codings("deflate, GZIP") == ["deflate", "gzip"]
    with pytest.raises(BodyError, match="unsupported Content-Encoding 'br'") as err:
        content_codings("gzip, br")
    assert err.value.status == 415


def test_inflate_every_usual_form() -> None:
    assert inflate(gzip.compress(DATA), ["gzip"], len(DATA)) == DATA
    assert inflate(gzip.compress(DATA[:100]) + gzip.compress(DATA[100:]), ["x-gzip"], len(DATA)) == DATA
    assert inflate(zlib.compress(DATA), ["deflate"], len(DATA)) == DATA
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert inflate(raw.compress(DATA) + raw.flush(), ["deflate"], len(DATA)) == DATA
    # Applied in order: deflate first, then gzip; undone last first.
    assert inflate(gzip.compress(zlib.compress(DATA)), ["deflate", "gzip"], len(DATA)) == DATA


def test_inflate_stops_at_the_limit_and_names_damage() -> None:
    with pytest.raises(BodyError, match="inflates past the limit of 1000") as err:
        inflate(gzip.compress(b"\0" * 10_000_000), ["gzip"], 1000)
    assert err.value.status == 413
    for body, words in (
        (DATA, "not valid gzip data"),
        (gzip.compress(DATA)[:-30], "cut short"),
        (gzip.compress(DATA) + b"junk", "not valid gzip data"),
    ):
        with pytest.raises(BodyError, match=words) as err:
            inflate(body, ["gzip"], 10 * len(DATA))
        assert err.value.status == 400
    with pytest.raises(BodyError, match="follow the end of the deflate stream"):
        inflate(zlib.compress(DATA) + b"junk", ["deflate"], 10 * len(DATA))


def test_base64_as_clients_write_it() -> None:
    text = base64.b64encode(DATA).decode()
    for sent in (
        text,
        "data:image/jpeg;base64," + text,
        "DATA:image/png;name=a.png;base64," + text,
        "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n",
        base64.urlsafe_b64encode(DATA).decode().rstrip("="),
    ):
        assert image_from_base64(sent) == DATA
    for sent, words in (
        ("data:image/jpeg,%FF%D8", "must carry the image as base64"),
        ("not base64!", "not valid base64"),
        ("A", "not valid base64"),
    ):
        with pytest.raises(BodyError, match=words):
            image_from_base64(sent)
