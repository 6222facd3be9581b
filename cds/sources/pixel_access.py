"""Where FHIR data may send cds for pixels: files under the cohort root, and allow-listed DICOMweb servers.

FHIR content names pixel locations (the instance-location extension, ``Endpoint.address``). Those
are data, not configuration: a hostile or mistaken record could point at ``/etc/passwd``, climb out
with ``../../``, or name any URL. :class:`PixelAccess` resolves them only

- to files (or folders) inside the **cohort root** (the folder loaded, or the folder of the file
  loaded) or the extra roots given as ``image_roots=`` / ``$CDS_IMAGE_ROOTS`` (``os.pathsep``
  separated); links are resolved first, so a link out of the root is refused too; and
- to URLs under an allow-listed **DICOMweb base** given as ``dicomweb_hosts=`` /
  ``$CDS_DICOMWEB_HOSTS`` (comma or space separated): a base URL (``http://127.0.0.1:8042/dicom-web``:
  same scheme, host, port and path prefix) or a bare ``host[:port]`` (any path on it, http or https).
  Nothing is allowed by default, loopback included: a test or a site names its server.

Anything else (other schemes such as ``ftp:`` or ``data:``, ``file://`` on another host, a FIFO or
device file) is refused with a reason; the table builder records it as a ``location-refused``
problem and leaves the row without pixels.

>>> from pathlib import Path
>>> acc = PixelAccess.build(Path("/data/cohort"), dicomweb_hosts=["http://127.0.0.1:8042/dicom-web"])
>>> acc.resolve("../dicom/a.dcm", "/data/cohort/bundles/p1.json")
('/data/cohort/dicom/a.dcm', None)
>>> acc.resolve("/etc/passwd", "/data/cohort/p1.json")[1]
'local path /etc/passwd resolves outside the cohort root and the allowed image roots'
>>> acc.resolve("http://127.0.0.1:8042/dicom-web/studies/1.2/series/3.4", "x.json")[0]
'http://127.0.0.1:8042/dicom-web/studies/1.2/series/3.4'
>>> acc.resolve("http://evil.example/studies/1.2/series/3.4", "x.json")[1]
'URL on evil.example is not under an allowed DICOMweb base (allow it with dicomweb_hosts= or $CDS_DICOMWEB_HOSTS)'
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from cds.errors import ParameterError
from cds.sources.safe_files import is_under

__all__ = ["PixelAccess", "ENV_DICOMWEB_HOSTS", "ENV_IMAGE_ROOTS", "is_dicom_uid"]

ENV_DICOMWEB_HOSTS = "CDS_DICOMWEB_HOSTS"
ENV_IMAGE_ROOTS = "CDS_IMAGE_ROOTS"

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # two letters at least: "C:" is a Windows drive
_BAD_URL_CHARS = re.compile(r"[\s\\\x00-\x1f\x7f]")


def is_dicom_uid(uid: object) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): safe to put into a DICOMweb URL path.

    >>> is_dicom_uid("1.2.840.10008"), is_dicom_uid("1.2/../../admin")
    (True, False)
    """
    return isinstance(uid, str) and len(uid) <= 64 and bool(_UID.match(uid))


@dataclass(frozen=True)
class _Base:
    scheme: str | None  # None: http or https
    host: str
    port: int | None  # None: any port (a bare host entry) or the scheme's default
    path: str  # no trailing slash; "" for any path

    @classmethod
    def parse(cls, entry: str, name: str) -> _Base:
        text = entry.strip()
        bare = "://" not in text
        try:
            parts = urlsplit(("http://" if bare else "") + text)
            port = parts.port
        except ValueError as exc:
            raise ParameterError(name, f"{entry!r} is not a DICOMweb base URL or host[:port] ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query \
                or parts.fragment or _BAD_URL_CHARS.search(text):
            raise ParameterError(name, f"{entry!r} is not a DICOMweb base URL (http(s)://host[:port]/path) "
                                       "or host[:port]")
        if bare:
            if parts.path not in ("", "/"):
                raise ParameterError(name, f"{entry!r}: give a full URL (http://...) to allow a path only")
            return cls(None, parts.hostname, port, "")
        return cls(parts.scheme, parts.hostname, port if port is not None else _default_port(parts.scheme),
                   parts.path.rstrip("/"))

    def admits(self, url: SplitResult) -> bool:
        if self.scheme is not None and url.scheme != self.scheme:
            return False
        if url.hostname != self.host:
            return False
        port = url.port if url.port is not None else _default_port(url.scheme)
        if self.port is not None and port != self.port:
            return False
        return not self.path or url.path == self.path or url.path.startswith(self.path + "/")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _split_env(value: str, seps: str) -> list[str]:
    return [x for x in re.split(f"[{re.escape(seps)}]+", value) if x.strip()]


@dataclass(frozen=True)
class PixelAccess:
    """The roots local pixel paths may resolve into and the DICOMweb bases URLs may start with."""

    roots: tuple[Path, ...] = ()
    bases: tuple[_Base, ...] = ()

    @classmethod
    def build(cls, cohort_root: Path | None, image_roots: Iterable[str | Path] | None = None,
              dicomweb_hosts: Iterable[str] | None = None) -> PixelAccess:
        """The policy for one cohort: its root, plus ``image_roots`` and ``dicomweb_hosts`` (each also
        read from its environment variable, added to what is given).

        Raises :class:`cds.errors.ParameterError` for an allow-list entry that is no http(s) base or host.
        """
        if isinstance(image_roots, (str, Path)) or isinstance(dicomweb_hosts, str):
            raise ParameterError("image_roots" if isinstance(image_roots, (str, Path)) else "dicomweb_hosts",
                                 "give a list (e.g. [\"http://127.0.0.1:8042/dicom-web\"]), not one string")
        roots = [cohort_root] if cohort_root is not None else []
        roots += [Path(r) for r in image_roots or []]
        roots += [Path(r) for r in os.environ.get(ENV_IMAGE_ROOTS, "").split(os.pathsep) if r.strip()]
        bases = [_Base.parse(str(h), "dicomweb_hosts") for h in dicomweb_hosts or []]
        bases += [_Base.parse(h, ENV_DICOMWEB_HOSTS) for h in _split_env(os.environ.get(ENV_DICOMWEB_HOSTS, ""), ", ")]
        resolved = tuple(dict.fromkeys(Path(os.path.realpath(r)) for r in roots))
        return cls(resolved, tuple(bases))

    def resolve(self, location: str, bundle_source: str) -> tuple[str | None, str | None]:
        """``(resolved location, None)`` when allowed, else ``(None, reason)``.

        ``location`` is a path (relative to the folder of ``bundle_source``, the file it was read from),
        a ``file:`` URL, or an http(s) URL.
        """
        if not isinstance(location, str) or not location.strip():
            return None, "location is empty or not a string"
        if "\x00" in location:
            return None, "location holds a NUL character"
        m = _SCHEME.match(location)
        scheme = m.group(1).lower() if m else ""
        if scheme in ("http", "https"):
            return self.url(location)
        if scheme == "file":
            parts = urlsplit(location)
            if parts.netloc not in ("", "localhost"):
                return None, f"file URL on another host ({parts.netloc}) is not read"
            return self.local(unquote(parts.path), bundle_source)
        if scheme:
            return None, f"{scheme}: locations are not read (only files under the cohort root or DICOMweb URLs)"
        return self.local(location, bundle_source)

    def require(self, location: str) -> str:
        """``location`` checked again just before it is opened (a file swapped for a link out of the roots
        since loading is refused): the resolved location, or :class:`cds.errors.ImageReadError` naming it.
        A policy without roots (a cohort not loaded from files) checks nothing."""
        if not self.roots:
            return location
        resolved, why = self.resolve(location, "")
        if resolved is None:
            from cds.errors import ImageReadError

            raise ImageReadError(location, f"not read: {why}")
        return location

    def local(self, path: str, bundle_source: str) -> tuple[str | None, str | None]:
        """A local path, resolved (links too) and checked against the roots and the file type."""
        p = Path(path)
        if not p.is_absolute():
            if not bundle_source or "://" in bundle_source:
                return None, f"relative path {path} in data that came from a server has no folder to be relative to"
            p = Path(bundle_source).parent / p
        try:
            real = Path(os.path.realpath(p))
        except (OSError, ValueError) as exc:
            return None, f"local path cannot be resolved ({exc})"
        if not any(is_under(real, r) for r in self.roots):
            return None, f"local path {path} resolves outside the cohort root and the allowed image roots"
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return str(real), None  # a missing file: the image reader names it when a model asks
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return None, f"local path {path} is not a regular file or folder (a FIFO, device or socket)"
        return str(real), None

    def url(self, url: str) -> tuple[str | None, str | None]:
        """An http(s) URL, allowed only under a configured DICOMweb base."""
        if _BAD_URL_CHARS.search(url):
            return None, "URL holds spaces, backslashes or control characters"
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError as exc:
            return None, f"URL cannot be parsed ({exc})"
        if parts.username is not None or parts.password is not None:
            return None, "URL carries user credentials (user@host); not contacted"
        if parts.query or parts.fragment:
            return None, "URL has a query or fragment; a DICOMweb location has neither"
        if any(seg in (".", "..") for seg in unquote(parts.path).split("/")):
            return None, "URL path holds . or .. segments"
        if not any(b.admits(parts) for b in self.bases):
            return None, (f"URL on {parts.hostname}{':' + str(parts.port) if parts.port else ''} is not under an "
                          "allowed DICOMweb base (allow it with dicomweb_hosts= or $CDS_DICOMWEB_HOSTS)")
        return url, None
