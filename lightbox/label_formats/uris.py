"""Photos named by URL in a labels file (a bucket's s3://, gs:// or https:// URL, an Azure ML datastore
URI), found in the source: the longest ending of the URL's key that is a file of the source (a bucket
synced to a folder keeps the keys below its prefix); else an s3:// URI is read from S3 itself, and
another key is matched by name like any other file name. Shared by the cloud services' manifests and the
labels tables, whose image column may hold URLs."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection, Sequence
from urllib.parse import unquote, urlsplit

from lightbox.imaging import is_image_name
from lightbox.label_formats.records import ref_of


def uri_key(uri: str) -> str | None:
    """The path of a stored object in its bucket or datastore (``s3://``, ``gs://``, ``http(s)://``; Azure
    ML's ``azureml://.../datastores/<store>/paths/<path>`` and ``AmlDatastore://<store>/<path>`` keep the
    datastore's name in front, as a copy of it keeps its folder); None for a plain path. ValueError for
    another scheme, or a URI naming a bucket or a folder."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs", "http", "https"):
        key = unquote(parts.path).lstrip("/")
    elif scheme == "amldatastore":
        key = f"{parts.netloc}/{unquote(parts.path).lstrip('/')}"
    elif scheme == "azureml":
        store, sep, path = unquote(parts.path).partition("/paths/")
        if not sep:
            raise ValueError(f"{uri[:80]!r} is an azureml:// URI without /paths/<path>")
        key = f"{store.rsplit('/', 1)[-1]}/{path.lstrip('/')}"
    elif scheme == "" or re.fullmatch(r"[a-z]", scheme):  # a path, or C:\ on Windows
        return None
    else:
        raise ValueError(f"{uri[:80]!r} is not an s3://, gs://, https:// or Azure ML datastore URI")
    if not key.strip("/") or key.endswith("/"):
        raise ValueError(f"{uri[:80]!r} names a bucket or a folder, not an image")
    return key


def source_ending(key: str, base: str, present: Collection[str]) -> str | None:
    """The longest ending of ``key`` that is a file of the source, below the labels file's folder ``base``
    first, else from the source's root (a bucket synced to a folder keeps the keys below its prefix);
    None when no ending is."""
    segments = key.replace("\\", "/").split("/")
    for i in range(len(segments)):
        ending = "/".join(segments[i:])
        for candidate in (posixpath.join(base, ending), ending) if base else (ending,):
            if candidate in present:
                return candidate
    return None


def bucket_ref(uri: str, base: str, present: Collection[str]) -> str:
    """Where the photo a manifest names is in the source: the longest ending of its bucket key that is a
    file of the source (below the manifest's folder ``base``, else the source's root); else the s3://
    URI itself (read from S3), or the key (matched by name later)."""
    key = uri_key(uri)
    if key is None:
        return ref_of(base, uri)
    found = source_ending(key, base, present)
    if found is not None:
        return found
    return uri if uri.lower().startswith("s3://") else key


def locate(names: Sequence[str], base: str, present: Collection[str]) -> str:
    """Where a photo known by several names (a URL, then the ids it was uploaded under) is in the source:
    the first name with an ending that is a file of the source; else read from S3 when one is an s3://
    URI; else the first name that looks like an image's (matched by name later, then reported missing),
    a plain name before a URL's key: a service stores an upload under a name of its own
    (``<org>/<uuid>-IMG_0007.jpg``), while the name it was uploaded under is the user's copy's.
    ValueError when no name can be read."""
    plain: list[str] = []
    keys: list[str] = []
    s3 = None
    for name in names:
        key = uri_key(name)
        found = source_ending(key if key is not None else name, base, present)
        if found is not None:
            return found
        if name.lower().startswith("s3://"):
            s3 = s3 or name
        if key is None:
            plain.append(ref_of(base, name))
        else:
            keys.append(key)
    if s3 is not None:
        return s3
    fallback = plain + keys
    if not fallback:
        raise ValueError("no image URL or name")
    return next((f for f in fallback if is_image_name(f)), keys[0] if keys else fallback[0])
