"""Where weights come from: a local path, a URL, or a Hugging Face hub id, resolved to a local
path (docs/checkpoints.md, "Published weights").

    resolve("runs/demo/model")                        -> the path itself
    resolve("https://host/dir/name-1a2b3c4d.pth")     -> $TORCH_HOME/hub/checkpoints/name-1a2b3c4d.pth
    resolve("IDEA-Research/dab-detr-resnet-50")       -> the model's snapshot in the Hugging Face cache
    resolve("IDEA-Research/dab-detr-resnet-50@v1.0")  -> the same at a revision (branch, tag or commit)

URLs are downloaded once into the cache torch keeps (torch.hub.get_dir(), under TORCH_HOME), so
a file torchvision fetched is found here and the other way round. As torch.hub does, a file name
carrying "-<hex>." must have a SHA-256 starting with those hex digits; beyond torch.hub, a
download shorter than its Content-Length is an error. A download that fails leaves nothing in
the cache. Hub ids go through huggingface_hub (its cache, HF_HUB_OFFLINE, HF_TOKEN).
"""

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request

import torch
from tqdm import tqdm

logger = logging.getLogger("dabdetr")

HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(@(?P<revision>[\w./-]+))?$")
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a model repository holds, preferred first
CHUNK = 1 << 20


def is_url(location):
    return location.startswith(("http://", "https://"))


def resolve(location, revision=None, hub_files=("config.json",), progress=True):
    """The local path of location: an existing file or directory as it is; a URL downloaded into
    torch's cache; a Hugging Face hub id ("org/name", or "org/name@revision"; revision= wins) as
    the directory of its snapshot in the hub's cache, holding hub_files and the first of
    model.safetensors and pytorch_model.bin the repository has."""
    if os.path.exists(location):
        return location
    if is_url(location):
        return download(location, progress=progress)
    match = HUB_ID.match(location)
    if match is None:
        raise FileNotFoundError(f"no file or directory at {location} (and it is not a URL or a Hugging Face hub id "
                                "'org/name')")
    return hub_snapshot(match["repo"], revision or match["revision"], hub_files)


def cache_path(url):
    """Where download(url) keeps the file: torch's hub cache, under the URL's file name."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise ValueError(f"{url}: the URL names no file")
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def download(url, progress=True):
    """The cached copy of url (cache_path), downloaded if missing: written to a temporary file
    beside it and renamed into place only once complete and, where the name carries a hash
    prefix, matching it."""
    path = cache_path(url)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    hash_match = torch.hub.HASH_REGEX.search(os.path.basename(path))
    expected_hash = hash_match.group(1) if hash_match else None
    partial = f"{path}.{os.getpid()}.partial"
    logger.info("downloading %s to %s", url, path)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "dabdetr"})
        with urllib.request.urlopen(request, timeout=60) as response, open(partial, "wb") as f:
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length is not None else None
            sha256, size = hashlib.sha256(), 0
            with tqdm(total=expected_size, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                      desc=os.path.basename(path)) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    sha256.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        if expected_size is not None and size != expected_size:
            raise ValueError(f"{url}: the download is truncated ({size} of {expected_size} bytes); "
                             "nothing was kept, try again")
        digest = sha256.hexdigest()
        if expected_hash and not digest.startswith(expected_hash):
            raise ValueError(f"{url}: the downloaded file's SHA-256 {digest} does not start with the "
                             f"{expected_hash!r} its name promises; nothing was kept")
        os.replace(partial, path)
    except urllib.error.HTTPError as error:
        raise ValueError(f"{url}: the server answered {error.code} {error.reason}") from error
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        raise ValueError(f"{url}: the download failed ({reason}); nothing was kept. On a machine without network, "
                         f"place the file at {path}") from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path


def hub_snapshot(repo_id, revision=None, files=("config.json",)):
    """The local directory holding `files` and the weights of a Hugging Face model repository,
    from the hub's cache or downloaded into it."""
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as error:
        raise ImportError(f"{repo_id}: a Hugging Face hub id needs the huggingface_hub package "
                          "(pip install 'dabdetr[hub]')") from error
    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    try:
        paths = [huggingface_hub.hf_hub_download(repo_id, name, revision=revision) for name in files]
        for name in HUB_WEIGHT_FILES:
            try:
                paths.append(huggingface_hub.hf_hub_download(repo_id, name, revision=revision))
                break
            except EntryNotFoundError:  # also LocalEntryNotFoundError: not in the cache, offline
                continue
        else:
            raise ValueError(f"{where}: found none of {HUB_WEIGHT_FILES} in the repository (or, offline, in the "
                             f"cache {constants.HF_HUB_CACHE})")
    except LocalEntryNotFoundError as error:
        raise ValueError(f"{where}: no such local path, and as a Hugging Face hub id it is not in the hub's cache "
                         f"({constants.HF_HUB_CACHE}) and cannot be downloaded now (no network, or "
                         "HF_HUB_OFFLINE=1)") from error
    except RepositoryNotFoundError as error:
        raise ValueError(f"{repo_id}: no such local path, and no Hugging Face model repository of that id "
                         "(or it is private: log in with `hf auth login`)") from error
    return os.path.dirname(paths[-1])
