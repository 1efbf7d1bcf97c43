"""Named pretrained weights, the way torchvision's weights enums name theirs: one typed entry per model a user
can ask for, saying what it is, where it comes from, under which licence, and what it reaches.

Each package keeps its own table (this module: torchvision's ImageNet backbones; ssdlite/named_weights.py;
deeplab_mobile/named_weights.py) and registers it here when it is imported, so `resolve` turns a name from any
imported table into a checkpoint file without this layer importing the heads above it. A name whose source is
not a checkpoint yet (a TF frozen graph, a TFLite file) is converted on first use into
`$MNV2_CACHE/<name>.pt` (by default ~/.cache/mnv2-suite), written atomically; later uses read that file. The
files they are converted from are downloaded into `<cache>/downloads/`, where a user without internet may also put
them by hand; the real test assets (`$MNV2_ASSETS`, by default ../shared/assets beside the repository) stand in for
downloads they hold.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from torchvision.models import MobileNet_V2_Weights

from common.errors import WeightsError
from common.files import write_atomic, write_atomic_with

CACHE_ENV = "MNV2_CACHE"
ASSETS_ENV = "MNV2_ASSETS"


def cache_dir() -> Path:
    """$MNV2_CACHE, else ~/.cache/mnv2-suite (created by whoever writes into it)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mnv2-suite").expanduser()


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def assets_dir() -> Path:
    """$MNV2_ASSETS, else the shared/assets folder beside this repository (may not exist)."""
    default = Path(__file__).resolve().parents[2] / "shared" / "assets"
    return Path(os.environ.get(ASSETS_ENV) or default).expanduser()


DOWNLOAD_TIMEOUT_S = 60


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """`algorithm:hex` of a file's bytes, read in blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{algorithm}:{digest.hexdigest()}"


@dataclass(frozen=True)
class InstalledFile:
    """A file that an installed PyPI package ships (no network needed once `pip install` ran), and the digest
    (`algorithm:hex`) of the release this suite was checked with."""

    distribution: str  # what `pip install` takes
    package: str  # its import name
    file: str  # inside the package folder
    digest: str

    def locate(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        return path if path.is_file() else None

    def __str__(self) -> str:
        return f"PyPI package {self.distribution} ({self.package}/{self.file})"


@dataclass(frozen=True)
class Download:
    """A public https URL and the digest (`algorithm:hex`, sha256 unless only another one is published) its file
    must have; a copy in the real test assets (`assets_path` under $MNV2_ASSETS) or one put by hand into the cache's
    downloads folder is used instead of the network, after the same check."""

    url: str
    digest: str
    assets_path: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith("https://"):
            raise ValueError(f"{self.url}: weights are fetched over https only")

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url


Source = InstalledFile | Download
Converter = Callable[[Path, Path], object]  # (source file, checkpoint to write atomically)


@dataclass(frozen=True)
class PretrainedWeights:
    """One named model. `convert` is None for weights torchvision loads itself (`backbone.load_pretrained`)."""

    name: str
    arch: str  # the checkpoint family: "mobilenet_v2", "ssdlite" or "deeplab"
    description: str
    preset: str  # the preset it is built with (ssdlite/presets.py, deeplab_mobile/presets.py), "" for a backbone
    class_names: tuple[str, ...]
    licence: str
    source: Source
    figure: str  # what it reaches ...
    measured_by: str  # ... and how that was measured
    convert: Converter | None = None
    import_command: str = ""  # the command line doing `convert` by hand, with {file} and {out}

    @property
    def checkpoint_path(self) -> Path:
        return cache_dir() / f"{self.name}.pt"

    @property
    def digests_path(self) -> Path:
        """Beside the cached checkpoint: the digests of the checkpoint and of the file it was converted from."""
        return cache_dir() / f"{self.name}.pt.digests.json"

    def file(self) -> Path:
        """The suite checkpoint of these weights, converted from the (checked) source on first use, and converted
        again, with a note, when the cached file no longer matches its digests (damaged, made by an earlier
        version, or from another release of the source)."""
        if self.convert is None:
            raise WeightsError(f"{self.name}: torchvision weights, loaded by name by backbone.load_pretrained")
        out, source = self.checkpoint_path, self.source_file()
        expected = {"checkpoint": None, "source": self.source.digest}
        if out.is_file():
            problem = self._cache_problem(out)
            if problem is None:
                return out
            print(f"note: {out}: {problem}; converting {self.name} again", file=sys.stderr)
        self.convert(source, out)
        expected["checkpoint"] = file_digest(out)
        write_atomic(self.digests_path, json.dumps(expected, indent=1))
        return out

    def _cache_problem(self, out: Path) -> str | None:
        """Why the cached checkpoint cannot be used as it is, or None."""
        try:
            recorded = json.loads(self.digests_path.read_text())
        except (OSError, ValueError):
            return "no digest file beside it (converted by an earlier version?)"
        if recorded.get("source") != self.source.digest:
            return "converted from another release of its source"
        if recorded.get("checkpoint") != file_digest(out):
            return "its bytes no longer match the digest recorded when it was written (damaged?)"
        return None

    def source_file(self) -> Path:
        """The file the checkpoint is converted from (installed, in the assets, already downloaded, or fetched now),
        checked against its digest."""
        if isinstance(self.source, InstalledFile):
            path = self.source.locate()
            if path is None:
                raise WeightsError(f"{self.name}: needs the {self.source}: pip install {self.source.distribution}")
        elif self.source.assets_path and (assets_dir() / self.source.assets_path).is_file():
            path = assets_dir() / self.source.assets_path
        else:
            path = downloads_dir() / self.source.filename
            if not path.is_file():
                self._download(path)
        found = file_digest(path, self.source.digest.split(":", 1)[0])
        if found != self.source.digest:
            raise WeightsError(
                f"{path}: {found}, but {self.name} needs {self.source.digest}: a damaged download or "
                f"another file; delete it and run again (or fetch {self.source} by hand)"
            )
        return path

    def _download(self, target: Path) -> None:
        url = self.source.url
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                write_atomic_with(target, lambda f: shutil.copyfileobj(response, f))
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise WeightsError(
                f"{self.name}: cannot download {url} ({reason}); without internet, fetch that file elsewhere and "
                f"put it at {target}, or import it yourself: "
                + self.import_command.format(file=self.source.filename, out=self.checkpoint_path)
            ) from e


_REGISTERED: dict[str, PretrainedWeights] = {}


def register(entries: Iterable[PretrainedWeights]) -> tuple[PretrainedWeights, ...]:
    """Make a package's table resolvable by name; names are unique across tables."""
    entries = tuple(entries)
    for entry in entries:
        if _REGISTERED.setdefault(entry.name, entry) is not entry:
            raise ValueError(f"weights name {entry.name!r} is registered twice")
    return entries


def known_names() -> list[str]:
    return sorted(_REGISTERED)


def find_weights(name: str) -> PretrainedWeights | None:
    """The entry called `name`, None for a path or an unknown name."""
    return _REGISTERED.get(name)


def get_weights(name: str) -> PretrainedWeights:
    """The entry called `name`, or a WeightsError listing the known names."""
    try:
        return _REGISTERED[name]
    except KeyError:
        raise WeightsError(f"{name}: unknown weights name; known names: {', '.join(known_names())}") from None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file for a weights name (converted on first use) or a path; a string that is neither an
    existing file nor a path-like name (no folder, no suffix) is an unknown name, listing the known ones."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.exists():
        return path
    if text in _REGISTERED:
        return _REGISTERED[text].file()
    if os.sep not in text and "/" not in text and not path.suffix:
        raise WeightsError(f"{text}: neither an existing file nor a known weights name ({', '.join(known_names())})")
    return path


_IMAGENET_MEASURE = "torchvision's reference (ImageNet-1K val, resize 256, centre crop 224): acc@1"
BACKBONE_WEIGHTS = register(
    PretrainedWeights(
        name=w.name,
        arch="mobilenet_v2",
        description=f"torchvision MobileNet_V2_Weights.{w.name}: ImageNet-1K classifier, width 1.0, "
        f"recipe {w.meta['recipe']}",
        preset="",
        class_names=tuple(w.meta["categories"]),
        licence="BSD-3-Clause (torchvision)",
        source=Download(w.url, f"sha256-prefix:{w.url.rsplit('-', 1)[1].split('.')[0]}"),
        figure=f"ImageNet-1K top-1 {w.meta['_metrics']['ImageNet-1K']['acc@1']}%",
        measured_by=_IMAGENET_MEASURE,
    )
    for w in MobileNet_V2_Weights
)
