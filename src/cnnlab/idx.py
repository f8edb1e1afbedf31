"""The IDX files of Fashion-MNIST and MNIST: found, imported, downloaded and verified, apart from serving batches.

The files live where torchvision's ``FashionMNIST``/``MNIST`` expect them (``data_dir/FashionMNIST/raw/``).
They are found, in order: already in ``data_dir``; the Debian system copy (Fashion-MNIST only), imported into
``data_dir`` and checked by content md5; torchvision's own download. A file that is truncated, not IDX or not the
real data set is named, with the ways to get a good copy.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

from torchvision.datasets import MNIST, FashionMNIST

from cnnlab.errors import DataError

DATASETS: dict[str, type[MNIST]] = {"fashion_mnist": FashionMNIST, "mnist": MNIST}  # data.name -> its class
SYSTEM_COPIES = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
# md5 of the uncompressed IDX files (torchvision's list is of the .gz files, which other packagers recompress).
CONTENT_MD5 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x00000803 (uint8, 3 dims) and 0x00000801 (uint8, 1 dim)


def md5_of(path: Path) -> str:
    """md5 of a file's bytes, read in chunks; once per process for a file unchanged since (a reused worker of a
    sweep runs many jobs on the same files)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _md5s:
        _md5s[key] = _md5_of_bytes(path)
    return _md5s[key]


_md5s: dict[tuple[str, int, int], str] = {}


def _md5_of_bytes(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_idx(path: Path, how_to_fix: str) -> None:
    """Check an uncompressed IDX file's magic number and that its length matches its header."""
    kind = "images" if "images" in path.name else "labels"
    with open(path, "rb") as f:
        header = f.read(16 if kind == "images" else 8)
    size = path.stat().st_size
    if len(header) < (16 if kind == "images" else 8):
        raise DataError(f"{path} is truncated ({size} bytes, shorter than its IDX header). {how_to_fix}")
    magic, count = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    if magic != IDX_MAGIC[kind]:
        raise DataError(
            f"{path} has IDX magic number {magic}, expected {IDX_MAGIC[kind]} for {kind}: it is not an "
            f"uncompressed IDX {kind} file. {how_to_fix}"
        )
    expected = 8 + count
    if kind == "images":
        expected = 16 + count * int.from_bytes(header[8:12], "big") * int.from_bytes(header[12:16], "big")
    if size != expected:
        raise DataError(f"{path} is {size} bytes but its header promises {expected}: truncated. {how_to_fix}")


class IdxFiles:
    """The four IDX files of one data set (``name``) in ``data_dir``, made present and checked by ``ensure``."""

    def __init__(
        self, name: str, data_dir: Path, system_dir: str | Path | None = None, download: bool = True,
        verify_md5: bool = True,
    ) -> None:  # fmt: skip
        self.name, self.data_dir, self.download, self.verify_md5 = name, Path(data_dir), download, verify_md5
        self.dataset_cls = DATASETS[name]
        self.system_dir = Path(system_dir) if system_dir else SYSTEM_COPIES.get(name)

    @property
    def raw_folder(self) -> Path:
        """Where torchvision's dataset class reads the IDX files."""
        return self.data_dir / self.dataset_cls.__name__ / "raw"

    def how_to_get(self) -> str:
        """The ways to get good data files, for error messages."""
        ways = [f"put the four IDX files in {self.raw_folder}"]
        if self.name == "fashion_mnist":
            ways.append("install the Debian package: apt-get install -y dataset-fashion-mnist")
        ways.append("allow torchvision's download: data.download=true with network access")
        return "Get the data one of these ways: " + "; ".join(ways) + "."

    def ensure(self) -> None:
        """Make sure the four IDX files are in ``data_dir``: import the system copy or download them; verify them."""
        if not self.present():
            self._make_data_dir()
            if not self._import_system_copy() and not self._download():
                raise DataError(f"No {self.name} data found in {self.raw_folder}. {self.how_to_get()}")
        self._verify()

    def present(self) -> bool:
        return all((self.raw_folder / f).is_file() for f in IDX_FILES)

    def _make_data_dir(self) -> None:
        try:
            self.raw_folder.mkdir(parents=True, exist_ok=True)
            probe = self.raw_folder / ".write-test"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise DataError(
                f"data.data_dir={str(self.data_dir)!r} cannot be created or written ({err.strerror}); "
                f"point data.data_dir at a writable folder."
            ) from None

    def _import_system_copy(self) -> bool:
        """Decompress the Debian copy into ``data_dir``; its content md5 is checked by ``_verify``."""
        if self.system_dir is None or not all((self.system_dir / f"{f}.gz").is_file() for f in IDX_FILES):
            return False
        for name in IDX_FILES:
            target = self.raw_folder / name
            partial = target.with_suffix(f".{os.getpid()}.partial")  # parallel sweep jobs import at once
            try:
                with gzip.open(self.system_dir / f"{name}.gz", "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, EOFError) as err:
                partial.unlink(missing_ok=True)
                raise DataError(
                    f"{self.system_dir / (name + '.gz')} cannot be read ({err}); reinstall it with "
                    f"apt-get install --reinstall dataset-fashion-mnist."
                ) from None
            partial.replace(target)
        return True

    def _download(self) -> bool:
        if not self.download:
            return False
        try:
            for train in (True, False):
                self.dataset_cls(str(self.data_dir), train=train, download=True)
        except (RuntimeError, OSError) as err:
            first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise DataError(
                f"Downloading {self.name} into {self.raw_folder} failed ({first_line}). {self.how_to_get()}"
            ) from None
        return True

    def _verify(self) -> None:
        fix = f"Delete it and rerun to fetch a good copy. {self.how_to_get()}"
        known = CONTENT_MD5.get(self.name, {}) if self.verify_md5 else {}
        for name in IDX_FILES:
            path = self.raw_folder / name
            check_idx(path, fix)
            if name in known and md5_of(path) != known[name]:
                raise DataError(
                    f"{path} has the wrong md5 (expected {known[name]}): corrupt or not the real "
                    f"{self.name}. {fix} (data.verify_md5=false accepts custom files.)"
                )
